"""Linear algebra on the blocked structure: cross-products of [Z X y] in one
pass over the rows, and small factorizations batched over levels."""

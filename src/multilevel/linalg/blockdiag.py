"""Block-diagonal Λ of the random-effects terms after the first: per term k,
one copy of its template T_k for each of its levels.

The sparsity pattern depends only on the levels and sizes, so it is built once;
each θ then fills the data array.  In CSR order the entries of one level's
q_k x q_k block are T_k row by row (upper zeros stored too), so a term's data
is T_k's entries tiled over its levels."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class BlockDiagonal:
    """Λ_R(T₁, …) = blockdiag_k(I_{n_k} ⊗ T_k) as a CSR matrix."""

    def __init__(self, nlevels: list[int], qs: list[int]):
        self.nlevels = [int(n) for n in nlevels]
        pairs = zip(nlevels, qs, strict=True)
        blocks = [sp.kron(sp.identity(n), np.ones((q, q))) for n, q in pairs]
        P = sp.block_diag(blocks, format="csr")
        P.sort_indices()
        self.indices, self.indptr, self.shape = P.indices, P.indptr, P.shape

    def __call__(self, T: list[np.ndarray]) -> sp.csr_matrix:
        data = np.concatenate([np.tile(t.ravel(), n) for n, t in zip(self.nlevels, T, strict=True)])
        return sp.csr_matrix((data, self.indices, self.indptr), shape=self.shape)

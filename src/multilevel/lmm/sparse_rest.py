"""The rest block M_RR by a sparse Cholesky factorization, where its factor
stays sparse.

Nested and partly nested designs (teachers within schools beside students,
classes within schools) leave after the first term a rest block whose
levels are linked within small clusters: ordered by minimum degree, its
Cholesky factor has hardly more entries than the matrix (mlmRev's star:
1,454 levels, 15,647 entries in L against 1.06 million in a dense factor).
Then one factorization and the selected inverse the gradient needs
(:mod:`multilevel.linalg.sparse_chol`) cost a millisecond where the dense
ones cost 0.2 s.  The choice is made once, from the symbolic factorization:
its multiplications at the compiled loops' speed against the dense
factorization's and inverse's at BLAS speed.

Same interface as :class:`multilevel.lmm.staged.StagedElimination` (values
at sorted lower-triangle keys r·Q + c, r ≥ c), so the rest block and the
gradient use either.
"""

from __future__ import annotations

import numpy as np

from multilevel.linalg.sparse_chol import SparseCholesky, available

# ns per multiplication measured on one core: the sparse loops (star's rest
# block: 3.7e5 in 0.9 ms) and LAPACK's dense factorization (~10 GFlop/s)
SPARSE_NS = 2.5
DENSE_NS = 0.1
PAYS = 0.5  # the sparse route is taken when it costs less than this share
MAX_LINKS = 16.0  # mean links per level above which the factor is taken to fill in


class SparseRest:
    """A fixed pattern's sparse factorization plan (see the module)."""

    def __init__(self, Q: int, keys: np.ndarray, chol: SparseCholesky):
        self.keys = keys
        self.chol = chol
        r, c = keys // Q, keys % Q
        self._pos = chol.positions(r, c)

    @classmethod
    def plan(cls, Q: int, keys: np.ndarray) -> SparseRest | None:
        """The plan when the sparse factorization pays (keys: sorted r·Q + c,
        r ≥ c, the diagonal included), else None."""
        if not available() or Q < 2:
            return None
        r, c = keys // Q, keys % Q
        # a random crossing links each level to dozens of others and its factor
        # fills in under any ordering; finding that out would cost an ordering
        # by a sparse LU (3.8 s on 5,000 x 5,000 random levels), so such
        # patterns are left to the dense factorization at once
        if 2.0 * float(np.count_nonzero(r != c)) / Q > MAX_LINKS:
            return None
        chol = SparseCholesky(Q, r, c)
        sparse = 2.0 * chol.flops * SPARSE_NS  # factorization and selected inverse
        dense = (Q**3 / 3.0) * 2.1 * DENSE_NS  # potrf and trtri/potri
        if sparse > PAYS * dense:
            return None
        return cls(Q, keys, chol)

    def factor(self, vals: np.ndarray, MRF: np.ndarray, keep: bool) -> SparseRestFactor | None:
        """The factor for these values at ``keys``; None if M_RR is not
        positive definite.  ``keep``: a copy that later factorizations leave alone."""
        if not self.chol.factor(vals):
            return None
        f = SparseRestFactor(self, self.chol.Lx.copy() if keep else self.chol.Lx)
        X = f.solve(MRF)
        f.quad = MRF.T @ X
        return f


class SparseRestFactor:
    """M_RR = LLᵀ at one θ: log-determinant, solves, M_RR⁻¹ at the keys."""

    def __init__(self, plan: SparseRest, Lx: np.ndarray):
        self.plan = plan
        self.Lx = Lx
        chol = plan.chol
        self.logdet = float(2.0 * np.log(Lx[chol.Lp[:-1]]).sum())
        self.quad: np.ndarray | None = None

    def solve(self, B: np.ndarray) -> np.ndarray:
        return self.plan.chol.solve(B, self.Lx)

    def selected_inverse(self) -> np.ndarray:
        """M_RR⁻¹ at the plan's keys."""
        return self.plan.chol.selected_inverse(self.Lx)[self.plan._pos]

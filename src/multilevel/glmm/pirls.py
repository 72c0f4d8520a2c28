"""Penalized iteratively reweighted least squares (PIRLS) for GLMMs.

With η = offset + Xβ + ZΛ(θ)u and spherical random effects u ~ N(0, I), the
conditional mode ũ(θ, β) minimises the penalized deviance

    pdev(u) = −2 Σᵢ log f(yᵢ | ηᵢ) + ‖u‖².

Each PIRLS step linearises around the current η: with working weights
Wᵢ = wᵢ (dμ/dη)²/V(μ) and working response zᵢ = ηᵢ − offsetᵢ + (yᵢ − μᵢ)/(dμ/dη)
it solves the penalized weighted least-squares problem

    min ‖W^½(z − Xβ − ZΛu)‖² + ‖u‖²

(over u with β fixed, or over (u, β) jointly as in lme4's first stage), and
moves towards the solution, halving the step while pdev does not decrease.
Where the family says so (``pirls_newton``: the binomial with a probit or
cloglog link, cumulative models) the weights are Newton's, −∂²log f/∂η², and
zᵢ = ηᵢ − offsetᵢ + (∂log f/∂η)/Wᵢ: scoring converges only linearly for a
non-canonical link; the factor at the mode is then formed again with the
curvature the Laplace approximation takes (Fisher's, lme4's, unless the
observed one is asked for).
At the mode, L Lᵀ = ΛᵀZᵀWZΛ + I and the Laplace approximation of the
marginal deviance is

    −2 log L(θ, β) ≈ pdev(ũ) + log|L|²

(lme4's definition; with the full log-density in pdev it is −2 × the full
marginal log-likelihood).

The cross-products ZᵀWZ, ZᵀWF change with W at every iteration: they are
formed in one vectorized pass over the rows (per pair of columns a weighted
bincount, or a sorted reduce), using index structures built once.  L is
blocked as in :mod:`multilevel.lmm.criterion`: the first (largest) grouping factor's
block is block diagonal — a batch of q₁ x q₁ Cholesky factors — and the other
terms form a dense Schur complement

    M_RR = Λ_Rᵀ A_RR Λ_R + I − C₁ᵣᵀC₁ᵣ,   C₁ᵣ = blockdiag(L₁⁻¹T₁ᵀ) A₁ᵣ Λ_R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

# LAPACK directly: scipy.linalg.cholesky's wrapper costs more than a small factorization
from scipy.linalg.lapack import dposv, dpotrf

from multilevel.compiled import kernel
from multilevel.glmm.families import Binomial, Family, GlmResponse, Poisson
from multilevel.linalg import batched
from multilevel.linalg.affine import triangular_solve
from multilevel.linalg.blockdiag import BlockDiagonal
from multilevel.linalg.crossprod import group_sums, level_crossprod

MAX_ITER = 200
MAX_HALVINGS = 30
STEP_TOL = 1e-10  # largest |change| of u (standard-normal scale) and β at convergence


IRLS_KERNEL_DISABLED = False  # tests switch the compiled GLM start off to check numpy's
MAX_KERNEL_P = 64  # fixed effects the compiled GLM start solves for (its Cholesky is unblocked)

SMALL_DENSE = 250_000  # entries: first x rest maps small enough to multiply densely


class PirlsError(ArithmeticError):
    """PIRLS did not converge (or a factor was not positive definite)."""


def halve_where_rising(u: np.ndarray, step: np.ndarray, f: np.ndarray, evaluate, tries: int = 40):
    """Groupwise Newton steps u − step, a group's step halved while its
    objective rises: ``evaluate(u)`` returns a state whose last entry is the
    objective per group (f has its shape).  Returns the new u and its state."""
    step = step.copy()
    for _ in range(tries):  # halvings, only where a group's objective rose
        un = u - step
        state = evaluate(un)
        bad = ~(state[-1] <= f + 1e-12 * (1.0 + np.abs(f)))
        if not bad.any():
            return un, state
        step[bad] *= 0.5
    raise PirlsError("step-halving failed in the conditional modes")


# --------------------------------------------------------------------------- structure


@dataclass
class _PairIndex:
    """Rows of two terms grouped by their pair of levels (built once)."""

    inv: np.ndarray  # (n,) pair of each row
    la: np.ndarray  # (npairs,) level of term a
    lb: np.ndarray  # (npairs,) level of term b

    @property
    def npairs(self) -> int:
        return self.la.size


def _pair_index(ca: np.ndarray, cb: np.ndarray, nb: int) -> _PairIndex:
    key = ca.astype(np.int64) * nb + cb
    uniq, inv = np.unique(key, return_inverse=True)
    return _PairIndex(inv.ravel(), uniq // nb, uniq % nb)


def _pair_values(pi: _PairIndex, Zwa: np.ndarray, Zb: np.ndarray) -> np.ndarray:
    """Σ over the rows of each pair of wᵢ zₐᵢ z_bᵢᵀ: (npairs, qa, qb)."""
    qa, qb = Zwa.shape[1], Zb.shape[1]
    out = np.empty((pi.npairs, qa, qb))
    for i in range(qa):  # columns, not rows
        for j in range(qb):
            out[:, i, j] = np.bincount(pi.inv, weights=Zwa[:, i] * Zb[:, j], minlength=pi.npairs)
    return out


@dataclass
class WeightedBlocks:
    """Blocks of [ZΛ-free Z  F]ᵀ W [Z  F] at one set of working weights."""

    D0: np.ndarray  # (q0, q0, n0) level-last: Z₁ᵀWZ₁ per level
    B0F: np.ndarray  # (n0, q0, m): Z₁ᵀWF per level
    A0R: sp.csr_matrix | np.ndarray | None  # (n0 q0, Qr); dense when small
    ARR: np.ndarray | None  # (Qr, Qr)
    ARF: np.ndarray | None  # (Qr, m)
    AFF: np.ndarray  # (m, m)


class RandomBlocks:
    """The random-effects terms (ordered by decreasing levels) with the index
    structures that turn working weights into cross-products in one pass."""

    _lam_rest: BlockDiagonal | None = None  # Λ of the terms after the first (vector terms)

    def __init__(self, Zs: list[np.ndarray], codes: list[np.ndarray], nlevels: list[int]):
        self.Zs = [np.ascontiguousarray(Z, dtype=float) for Z in Zs]
        self.codes = [np.asarray(c, dtype=np.int64) for c in codes]
        self.nlevels = [int(n) for n in nlevels]
        self.q = [Z.shape[1] for Z in Zs]
        self.K = len(Zs)
        self.n = self.Zs[0].shape[0]
        offsets = [0]
        for nl, q in zip(self.nlevels[1:], self.q[1:], strict=True):  # terms, not levels
            offsets.append(offsets[-1] + nl * q)
        self.rest_offsets = np.array(offsets, dtype=np.int64)
        self.Qr = int(self.rest_offsets[-1])
        self.Q0 = self.nlevels[0] * self.q[0]
        self.Q = self.Q0 + self.Qr
        c0 = self.codes[0]
        self.sorted0 = bool(np.all(c0[1:] >= c0[:-1]))
        # rows sorted by the first factor with every level present: its per-level
        # sums are one reduceat at these row offsets (found once, not per iteration)
        self._starts0 = None
        if self.sorted0 and self.n:
            starts = np.flatnonzero(c0[1:] != c0[:-1])
            if starts.size + 1 == self.nlevels[0]:
                self._starts0 = np.concatenate([np.zeros(1, dtype=starts.dtype), starts + 1])
        if self.K > 1:
            self._setup_rest()

    def _setup_rest(self) -> None:
        q0, Qr = self.q[0], self.Qr
        offs = self.rest_offsets
        # Z₁ᵀZ_k (k ≥ 2): a fixed sparsity pattern; values are refilled per iteration
        self._pairs0 = []
        rows, cols = [], []
        for k in range(1, self.K):
            pi = _pair_index(self.codes[0], self.codes[k], self.nlevels[k])
            self._pairs0.append(pi)
            qk = self.q[k]
            r = pi.la[:, None, None] * q0 + np.arange(q0)[None, :, None]
            c = offs[k - 1] + pi.lb[:, None, None] * qk + np.arange(qk)[None, None, :]
            rows.append(np.broadcast_to(r, (pi.npairs, q0, qk)).ravel())
            cols.append(np.broadcast_to(c, (pi.npairs, q0, qk)).ravel())
        rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
        order = np.arange(rows_a.size, dtype=float) + 1.0
        pattern = sp.csr_matrix((order, (rows_a, cols_a)), shape=(self.Q0, Qr))
        self._a0r_perm = pattern.data.astype(np.int64) - 1
        self._a0r_indptr = pattern.indptr
        self._a0r_indices = pattern.indices
        self._a0r_rows = np.repeat(np.arange(self.Q0), np.diff(pattern.indptr))
        # Z_RᵀZ_R: flat positions in the dense (Qr, Qr) block
        self._rr_diag = []
        for k in range(1, self.K):
            nk, qk = self.nlevels[k], self.q[k]
            base = offs[k - 1] + np.arange(nk)[:, None, None] * qk
            r = base + np.arange(qk)[None, :, None]
            c = base + np.arange(qk)[None, None, :]
            self._rr_diag.append((r * Qr + c).ravel())
        self._rr_pairs = []
        for a in range(1, self.K):
            for b in range(a + 1, self.K):
                pi = _pair_index(self.codes[a], self.codes[b], self.nlevels[b])
                qa, qb = self.q[a], self.q[b]
                r = offs[a - 1] + pi.la[:, None, None] * qa + np.arange(qa)[None, :, None]
                c = offs[b - 1] + pi.lb[:, None, None] * qb + np.arange(qb)[None, None, :]
                r, c = (np.broadcast_to(x, (pi.npairs, qa, qb)).ravel() for x in (r, c))
                self._rr_pairs.append((a, b, pi, r * Qr + c, c * Qr + r))

    def crossprods(self, w: np.ndarray, F: np.ndarray) -> WeightedBlocks:
        """Cross-products with weights w (n,) of Z and F (n, m), one pass over rows."""
        Z0 = self.Zs[0]
        Zw0 = Z0 * w[:, None]
        n0, q0 = self.nlevels[0], self.q[0]
        if self._starts0 is not None:
            outer = np.concatenate(
                [Zw0[:, :, None] * Z0[:, None, :], Zw0[:, :, None] * F[:, None, :]], axis=2
            )
            S = np.add.reduceat(outer.reshape(self.n, -1), self._starts0, axis=0)
            S = S.reshape(n0, q0, q0 + F.shape[1])
            D0 = np.moveaxis(S[:, :, :q0], 0, -1)
            B0F = S[:, :, q0:]
        else:
            D0 = np.moveaxis(level_crossprod(self.codes[0], Zw0, Z0, n0), 0, -1)
            B0F = level_crossprod(self.codes[0], Zw0, F, n0)
        Fw = F * w[:, None]
        AFF = F.T @ Fw
        if self.K == 1:
            return WeightedBlocks(np.ascontiguousarray(D0), B0F, None, None, None, AFF)
        Qr, m = self.Qr, F.shape[1]
        Zws = [Zw0] + [Z * w[:, None] for Z in self.Zs[1:]]
        data = np.concatenate(
            [
                _pair_values(pi, Zw0, self.Zs[k]).ravel()
                for k, pi in zip(range(1, self.K), self._pairs0, strict=True)
            ]
        )
        if self.Q0 * Qr <= SMALL_DENSE:
            # small blocks dense: scipy's sparse construction and dispatch cost
            # more than the arithmetic there
            A0R = np.zeros((self.Q0, Qr))
            A0R[self._a0r_rows, self._a0r_indices] = data[self._a0r_perm]
        else:
            A0R = sp.csr_matrix(
                (data[self._a0r_perm], self._a0r_indices, self._a0r_indptr), shape=(self.Q0, Qr)
            )
        ARR = np.zeros(Qr * Qr)
        ARF = np.empty((Qr, m))
        offs = self.rest_offsets
        for k in range(1, self.K):  # terms, not levels
            nk = self.nlevels[k]
            ARR[self._rr_diag[k - 1]] = level_crossprod(
                self.codes[k], Zws[k], self.Zs[k], nk
            ).ravel()
            ARF[offs[k - 1] : offs[k]] = level_crossprod(self.codes[k], Zws[k], F, nk).reshape(
                -1, m
            )
        for a, b, pi, pos, pos_t in self._rr_pairs:
            vals = _pair_values(pi, Zws[a], self.Zs[b]).ravel()
            ARR[pos] = vals
            ARR[pos_t] = vals
        return WeightedBlocks(np.ascontiguousarray(D0), B0F, A0R, ARR.reshape(Qr, Qr), ARF, AFF)

    # -- u ↔ b ↔ Zb ---------------------------------------------------------------
    def split(self, u: np.ndarray) -> list[np.ndarray]:
        """Flat u (Q,) -> per term (n_k, q_k)."""
        out = [u[: self.Q0].reshape(self.nlevels[0], self.q[0])]
        for k in range(1, self.K):
            s = slice(self.Q0 + self.rest_offsets[k - 1], self.Q0 + self.rest_offsets[k])
            out.append(u[s].reshape(self.nlevels[k], self.q[k]))
        return out

    def zb(self, u: np.ndarray, T: list[np.ndarray]) -> np.ndarray:
        """Z Λ(θ) u, row by row (n,)."""
        out = np.zeros(self.n)
        for Z, c, uk, Tk in zip(self.Zs, self.codes, self.split(u), T, strict=True):
            b = uk @ Tk.T
            if Z.shape[1] == 1:
                out += Z[:, 0] * b[c, 0]
            else:
                out += np.einsum("nq,nq->n", Z, b[c])
        return out


# --------------------------------------------------------------------------- factor


def lower_t_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """X with Lᵢᵀ Xᵢ = Bᵢ for a batch of lower-triangular L (q, q, n) and
    B (q, n, ...) (trailing axes broadcast: several right-hand sides per level)."""
    q = L.shape[0]
    X = np.empty(B.shape, dtype=float)
    extra = (1,) * (B.ndim - 2)
    for i in range(q - 1, -1, -1):  # q is 1-3: a loop over template rows
        acc = np.array(B[i], dtype=float, copy=True)
        for k in range(i + 1, q):
            acc = acc - L[k, i].reshape(L.shape[2:] + extra) * X[k]
        X[i] = acc / L[i, i].reshape(L.shape[2:] + extra)
    return X


@dataclass
class Factor:
    """Blocked Cholesky factor of ΛᵀZᵀWZΛ + I (and of the fixed block)."""

    T: list[np.ndarray]
    L0: np.ndarray  # (q0, q0, n0) level-last
    W0: np.ndarray  # (q0, q0, n0): L₀⁻¹T₀ᵀ
    C0F: np.ndarray  # (n0 q0, m)
    C0R: sp.csr_matrix | np.ndarray | None  # dense when small
    LR: np.ndarray | None  # (Qr, Qr) lower
    CRF: np.ndarray | None  # (Qr, m)
    logdet0: np.ndarray  # (n0,) log|L₀ᵢ|² per level
    logdet: float  # log|L|²
    LFF: np.ndarray | None = None  # (m, m) lower, joint (u, β) solves only


def factor(
    rb: RandomBlocks, blocks: WeightedBlocks, T: list[np.ndarray], joint: bool
) -> Factor | None:
    """Factor at templates T; ``joint`` also factors F's Schur complement (F = [X z])."""
    T0 = T[0]
    q0, n0 = rb.q[0], rb.nlevels[0]
    m = blocks.AFF.shape[0]
    if q0 == 1:
        t = T0[0, 0]
        l0 = np.sqrt(t * t * blocks.D0[0, 0] + 1.0)
        w0 = t / l0
        L0 = l0[None, None, :]
        W0 = w0[None, None, :]
        C0F = w0[:, None] * blocks.B0F[:, 0, :]
        logdet0 = 2.0 * np.log(l0)
    else:
        factored = batched.factor_levels(T0, blocks.D0)
        if factored is None:
            return None
        L0, W0 = factored
        C0F = np.einsum("abn,nbm->nam", W0, blocks.B0F).reshape(n0 * q0, m)
        logdet0 = 2.0 * np.log(np.diagonal(L0)).sum(axis=1)
    logdet = float(logdet0.sum())
    C0R = LR = CRF = None
    MFF = None
    if joint:
        MFF = blocks.AFF - C0F.T @ C0F
    if rb.K > 1:
        lam, lam_sparse = _lambda_rest(rb, T)
        rest = _dense_rest if isinstance(blocks.A0R, np.ndarray) else _sparse_rest
        C0R, MRR, MRF = rest(rb, blocks, W0, lam, lam_sparse)
        MRR.flat[:: MRR.shape[0] + 1] += 1.0
        LR, info = dpotrf(MRR, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            return None
        logdet += 2.0 * float(np.log(np.diag(LR)).sum())
        CRF = triangular_solve(LR, MRF - C0R.T @ C0F)
        if joint:
            MFF = MFF - CRF.T @ CRF
    LFF = None
    if joint:
        try:
            LFF = np.linalg.cholesky(MFF[:-1, :-1])
        except np.linalg.LinAlgError:
            return None
    return Factor(T, L0, W0, C0F, C0R, LR, CRF, logdet0, logdet, LFF)


def _sparse_rest(rb: RandomBlocks, blocks: WeightedBlocks, W0: np.ndarray, lam, lam_sparse):
    """C₀ᵣ = W₀A₀ᵣΛ_R (sparse; the levels' blocks W₀ᵢ), M_RR = Λ_RᵀA_RRΛ_R − C₀ᵣᵀC₀ᵣ
    (dense; its identity added by the caller) and M_RF = Λ_RᵀA_RF."""
    A0R = blocks.A0R
    q0, n0 = W0.shape[0], W0.shape[2]
    if q0 == 1:
        data = A0R.data * W0[0, 0][rb._a0r_rows]
        C0R = sp.csr_matrix((data, A0R.indices, A0R.indptr), shape=A0R.shape)
    else:
        Wb = sp.bsr_matrix(
            (np.moveaxis(W0, -1, 0), np.arange(n0), np.arange(n0 + 1)),
            shape=(n0 * q0, n0 * q0),
        )
        C0R = (Wb @ A0R).tocsr()
    if lam_sparse is None:
        C0R = sp.csr_matrix((C0R.data * lam[C0R.indices], C0R.indices, C0R.indptr), shape=C0R.shape)
        MRR = blocks.ARR * lam[:, None] * lam[None, :]
        MRF = blocks.ARF * lam[:, None]
    else:
        C0R = (C0R @ lam_sparse).tocsr()
        MRR = (lam_sparse.T @ (lam_sparse.T @ blocks.ARR).T).T
        MRF = lam_sparse.T @ blocks.ARF
    return C0R, MRR - (C0R.T @ C0R).toarray(), MRF


def _dense_rest(rb: RandomBlocks, blocks: WeightedBlocks, W0: np.ndarray, lam, lam_sparse):
    """:func:`_sparse_rest` for small blocks, dense throughout (scipy's sparse
    construction and dispatch cost more than the arithmetic there)."""
    A0R = blocks.A0R
    q0, n0 = W0.shape[0], W0.shape[2]
    if q0 == 1:
        C0R = A0R * W0[0, 0][:, None]
    else:
        C0R = np.einsum("abn,nbr->nar", W0, A0R.reshape(n0, q0, -1)).reshape(n0 * q0, -1)
    if lam_sparse is None:  # scalar rest terms: Λ_R diagonal
        C0R *= lam[None, :]
        MRR = blocks.ARR * lam[:, None] * lam[None, :]
        MRF = blocks.ARF * lam[:, None]
    else:
        lam_d = lam_sparse.toarray()
        C0R = C0R @ lam_d
        MRR = lam_d.T @ blocks.ARR @ lam_d
        MRF = lam_d.T @ blocks.ARF
    return C0R, MRR - C0R.T @ C0R, MRF


def _lambda_rest(rb: RandomBlocks, T: list[np.ndarray]):
    """Λ of the terms after the first: a vector when all are scalar, else sparse."""
    if all(q == 1 for q in rb.q[1:]):
        lam = np.concatenate(
            [np.full(nl, t[0, 0]) for nl, t in zip(rb.nlevels[1:], T[1:], strict=True)]
        )
        return lam, None
    if rb._lam_rest is None:
        rb._lam_rest = BlockDiagonal(rb.nlevels[1:], rb.q[1:])
    return None, rb._lam_rest(T[1:])


def back_solve(rb: RandomBlocks, f: Factor, c0: np.ndarray, cR: np.ndarray | None) -> np.ndarray:
    """u with Lᵀu = c (c split as c₀ (Q0, ...) and c_R (Qr, ...)); columns of c are
    solved together."""
    q0, n0 = rb.q[0], rb.nlevels[0]
    extra = c0.shape[1:]
    if f.LR is not None:
        uR = triangular_solve(f.LR, cR, trans=True)
        c0 = c0 - f.C0R @ uR
    B = np.moveaxis(c0.reshape((n0, q0) + extra), 1, 0)  # (q0, n0, ...)
    u0 = np.moveaxis(lower_t_solve(f.L0, B), 0, 1).reshape((n0 * q0,) + extra)
    if f.LR is not None:
        return np.concatenate([u0, uR], axis=0)
    return u0


# --------------------------------------------------------------------------- PIRLS


@dataclass
class Mode:
    """PIRLS result at (θ, β): conditional mode and the factor at it."""

    theta: np.ndarray
    beta: np.ndarray
    u: np.ndarray  # (Q,)
    eta: np.ndarray  # (n,) including the offset
    loglik: float  # Σ log f(yᵢ | ηᵢ), full
    pdev: float  # −2 loglik + ‖u‖²
    factor: Factor
    weights: np.ndarray  # working weights at the mode
    iterations: int

    @property
    def laplace(self) -> float:
        """Laplace approximation of −2 × marginal log-likelihood."""
        return self.pdev + self.factor.logdet

    @property
    def LFF(self) -> np.ndarray:
        """Lower Cholesky factor of R_XᵀR_X (the fixed-effects block)."""
        return self.factor.LFF


class PirlsProblem:
    """Everything PIRLS needs: family, response, fixed and random design."""

    def __init__(
        self,
        family: Family,
        resp: GlmResponse,
        X: np.ndarray,
        offset: np.ndarray | None,
        rb: RandomBlocks,
        templates,
        hessian: str = "fisher",
    ):
        self.family = family
        self.hessian = hessian
        self.nre = sum(t.size for t in templates)
        self.resp = resp
        self.X = np.ascontiguousarray(X, dtype=float)
        self.offset = np.zeros(X.shape[0]) if offset is None else np.asarray(offset, float)
        self.rb = rb
        self.tmpl = templates
        self.n, self.p = X.shape
        self._const = float(resp.const.sum())
        self._glm_info: tuple | None = None  # (family, β, XᵀWX) of the compiled GLM start

    def templates(self, theta: np.ndarray) -> list[np.ndarray]:
        return [t.matrix(theta) for t in self.tmpl]

    def set_params(self, theta: np.ndarray) -> None:
        """The family's estimated parameter from θ's entries after the random
        effects' (its logarithm), when the search carries it."""
        k = self.family.nfree
        if k and theta.size >= self.nre + k:
            self.family = self.family.with_free(theta[self.nre : self.nre + k])

    @property
    def observed(self) -> bool:
        """Whether the Laplace curvature is the observed one and differs from Fisher's."""
        return self.hessian == "observed" and not self.family.canonical

    def loglik_eta(self, eta: np.ndarray) -> float:
        r = self.resp
        return float(self.family.loglik_kernel(r.y, eta, r.weights).sum()) + self._const

    def eta(self, beta: np.ndarray, u: np.ndarray, T: list[np.ndarray]) -> np.ndarray:
        return self.offset + self.X @ beta + self.rb.zb(u, T)

    def start_family(self) -> float | None:
        """Set a starting value of the family's estimated parameter (moments
        of a GLM fit without random effects, iterated twice since the negative
        binomial's GLM depends on θ) and return it; None without one."""
        if not self.family.nfree:
            return None
        if self.family.value is None:
            self.family = self.family.with_value(1.0)
        for _ in range(3):
            mu = self.family.linkinv(self.offset + self.X @ self.initial_beta())
            self.family = self.family.with_value(self.family.param_start(self.resp, mu))
        return self.family.value

    def initial_beta(self) -> np.ndarray:
        """β of the GLM without random effects (IRLS from the family's starting μ)."""
        fam, r = self.family, self.resp
        mu = fam.initial_mu(r)
        eta = fam.linkfun(mu)
        beta = self._compiled_irls(eta)
        if beta is not None:
            return beta
        beta = np.zeros(self.p)
        dev = np.inf
        X = self.X
        for _ in range(50):  # IRLS iterations
            w, resid = fam.score_weights(r.y, eta, r.weights)
            z = eta - self.offset + resid
            # the normal equations by Cholesky (X is centred and scaled: well
            # conditioned); least squares where XᵀWX is singular or not finite
            Xw = X.T * w
            info = 1
            if self.p:
                _, beta_new, info = dposv(Xw @ X, Xw @ z, lower=1)
            if info != 0 or not np.all(np.isfinite(beta_new)):
                sw = np.sqrt(w)
                beta_new = np.linalg.lstsq(X * sw[:, None], z * sw, rcond=None)[0]
            eta_new = self.offset + self.X @ beta_new
            dev_new = -2 * self.loglik_eta(eta_new)
            if not np.isfinite(dev_new):
                break
            beta, eta = beta_new, eta_new
            if abs(dev - dev_new) < 1e-10 * (1 + abs(dev_new)):
                break
            dev = dev_new
        return beta

    def _compiled_irls(self, eta: np.ndarray) -> np.ndarray | None:
        """:meth:`initial_beta`'s IRLS by the compiled kernel (binomial-logit and
        Poisson-log), which also leaves XᵀWX at the fit for
        :meth:`glm_information`; None where numpy's loop must run (no kernel,
        another family, or a singular or non-finite step, which numpy answers
        by least squares)."""
        fam, r = self.family, self.resp
        irls = None if IRLS_KERNEL_DISABLED else kernel("_glmm_kernels", "glm_irls")
        plain = type(fam) in (Binomial, Poisson) and fam.canonical
        if irls is None or not plain or not 0 < self.p <= MAX_KERNEL_P:
            return None
        beta = np.empty(self.p)
        info = np.empty((self.p, self.p))
        as_f = np.ascontiguousarray
        status = irls(
            self.X, as_f(self.offset, dtype=float), as_f(r.y, dtype=float),
            as_f(r.weights, dtype=float), np.array(eta, dtype=float), beta, info,
            int(type(fam) is Binomial), self._const, 50,
        )  # fmt: skip
        if status < 0:
            return None
        self._glm_info = (fam, beta.copy(), info)
        return beta

    def glm_information(self, beta: np.ndarray) -> np.ndarray:
        """XᵀWX of the GLM without random effects at β (Fisher weights): the
        compiled IRLS start's when β is its result, else formed here."""
        info = self._glm_info
        if info is not None and info[0] is self.family and np.array_equal(info[1], beta):
            return info[2]
        eta = self.offset + self.X @ beta
        w = self.family.irls_terms(eta, self.resp.weights)[2]
        return (self.X.T * w) @ self.X

    def mode(
        self,
        theta: np.ndarray,
        beta: np.ndarray,
        u_start: np.ndarray | None = None,
        joint: bool = False,
    ) -> Mode:
        """Conditional mode by PIRLS at θ for fixed β, or jointly over (u, β).

        Raises PirlsError when the penalized deviance cannot be decreased and
        the iteration has not converged, or after MAX_ITER iterations."""
        self.set_params(theta)
        fam, r, rb = self.family, self.resp, self.rb
        T = self.templates(theta)
        u = np.zeros(rb.Q) if u_start is None else np.array(u_start, dtype=float)
        beta = np.array(beta, dtype=float)
        eta = self.eta(beta, u, T)
        ll = self.loglik_eta(eta)
        pdev = -2.0 * ll + u @ u
        if not np.isfinite(pdev):
            raise PirlsError("the starting linear predictor gives an infinite deviance")
        for it in range(1, MAX_ITER + 1):
            w, resid = fam.pirls_weights(r.y, eta, r.weights)
            z = eta - self.offset + resid
            F = np.column_stack([self.X, z]) if joint else (z - self.X @ beta)[:, None]
            blocks = rb.crossprods(w, F)
            f = factor(rb, blocks, T, joint)
            if f is None:
                raise PirlsError("the penalized weighted cross-product is not positive definite")
            if joint:
                p = self.p
                LXX = f.LFF
                rhs = blocks.AFF[:p, p] - f.C0F[:, :p].T @ f.C0F[:, p]
                if f.CRF is not None:
                    rhs = rhs - f.CRF[:, :p].T @ f.CRF[:, p]
                beta_new = sla.cho_solve((LXX, True), rhs, check_finite=False)
                zvec = np.append(-beta_new, 1.0)
                c0 = f.C0F @ zvec
                cR = None if f.CRF is None else f.CRF @ zvec
            else:
                beta_new = beta
                c0 = f.C0F[:, 0]
                cR = None if f.CRF is None else f.CRF[:, 0]
            u_new = back_solve(rb, f, c0, cR)
            du = u_new - u
            db = beta_new - beta
            step = max(np.max(np.abs(du), initial=0.0), np.max(np.abs(db), initial=0.0))
            if step < STEP_TOL:
                if self.observed:
                    w = fam.observed_weights(r.y, eta, r.weights)
                    f = factor(rb, rb.crossprods(w, F), T, joint)
                    if f is None:
                        raise PirlsError(
                            "the observed information of the conditional density is not "
                            "positive definite at the mode"
                        )
                elif fam.pirls_newton:  # the steps' weights were Newton's: the curvature Fisher's
                    w = fam.irls_terms(eta, r.weights)[2]
                    f = factor(rb, rb.crossprods(w, F), T, joint)
                    if f is None:
                        raise PirlsError(
                            "the penalized weighted cross-product is not positive definite"
                        )
                return Mode(theta, beta, u, eta, ll, pdev, f, w, it)
            # rounding of a sum over n rows: changes below this are not decreases
            slack = 1e-12 * (1.0 + abs(pdev))
            t = 1.0
            for _ in range(MAX_HALVINGS):
                u_c = u + t * du
                b_c = beta + t * db
                eta_c = self.eta(b_c, u_c, T)
                ll_c = self.loglik_eta(eta_c)
                pdev_c = -2.0 * ll_c + u_c @ u_c
                if pdev_c <= pdev + slack:
                    break
                t *= 0.5
            else:
                raise PirlsError(
                    f"step-halving failed to reduce the penalized deviance ({pdev:.6g}) "
                    f"at iteration {it}"
                )
            u, beta, eta, ll, pdev = u_c, b_c, eta_c, ll_c, pdev_c
        raise PirlsError(f"PIRLS did not converge in {MAX_ITER} iterations")

    def group_loglik(self, eta: np.ndarray) -> np.ndarray:
        """Per level of the first term: Σ log f(yᵢ | ηᵢ) over its rows; eta (n, k)."""
        r = self.resp
        ll = self.family.loglik_kernel(r.y[:, None], eta, r.weights[:, None]) + r.const[:, None]
        return group_sums(self.rb.codes[0], ll, self.rb.nlevels[0])


def conditional_variances(rb: RandomBlocks, f: Factor, chunk: int = 4096) -> list[np.ndarray]:
    """Per term (n_k, q_k, q_k): diagonal blocks of Λ(ΛᵀZᵀWZΛ + I)⁻¹Λᵀ (lme4's
    ``postVar`` at the mode).

    With L = [L₀ 0; C₀ᵣᵀ L_R], (LLᵀ)⁻¹ has first-term blocks
    L₀ᵢ⁻ᵀ(I + Yᵢᵀ Yᵢ)L₀ᵢ⁻¹, Y = L_R⁻¹C₀ᵣᵀ, so that with W₀ᵢ = L₀ᵢ⁻¹T₀ᵀ the
    first term's blocks are W₀ᵢᵀW₀ᵢ + (YᵢW₀ᵢ)ᵀ(YᵢW₀ᵢ); the other terms' are
    T_k [L_R⁻ᵀL_R⁻¹]_kk T_kᵀ.  Y is formed in chunks of levels."""
    q0, n0 = rb.q[0], rb.nlevels[0]
    W0 = f.W0  # (q0, q0, n0)
    V0 = np.einsum("can,cbn->nab", W0, W0)
    out = [V0]
    if f.LR is None:
        return out
    Wb = sp.bsr_matrix(
        (
            np.ascontiguousarray(np.swapaxes(np.moveaxis(W0, -1, 0), 1, 2)),
            np.arange(n0),
            np.arange(n0 + 1),
        ),
        shape=(n0 * q0, n0 * q0),
    )
    B = Wb @ f.C0R  # rows: W₀ᵢᵀ C₀ᵣ per level (dense where C₀ᵣ is)
    B = B if isinstance(B, np.ndarray) else B.tocsr()
    step = max(1, chunk // q0) * q0
    for start in range(0, n0 * q0, step):  # chunks of levels, bounded memory
        rows = B[start : start + step]
        rows = rows if isinstance(rows, np.ndarray) else rows.toarray()  # (k q0, Qr)
        Y = sla.solve_triangular(f.LR, rows.T, lower=True, check_finite=False)  # (Qr, k q0)
        Yl = Y.reshape(Y.shape[0], -1, q0)
        V0[start // q0 : start // q0 + Yl.shape[1]] += np.einsum("rna,rnb->nab", Yl, Yl)
    LRinv = sla.solve_triangular(f.LR, np.eye(f.LR.shape[0]), lower=True, check_finite=False)
    offs = rb.rest_offsets
    for k in range(1, rb.K):  # terms, not levels
        nk, qk = rb.nlevels[k], rb.q[k]
        cols = LRinv[:, offs[k - 1] : offs[k]].reshape(-1, nk, qk)
        Mk = np.einsum("rna,rnb->nab", cols, cols)
        Tk = f.T[k]
        out.append(Tk @ Mk @ Tk.T)
    return out

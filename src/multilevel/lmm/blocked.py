"""What the blocked compiled criterion (``_kernels.blocked_terms``, see
:func:`multilevel.lmm.criterion._blocked_terms_kernel`) reads besides the
cross-products: Z₁ᵀZ_R by level of the first term on the rest columns each
level meets, the column ranges of A_RR's rows, and an order of the rest's
levels that keeps the envelope of their Schur complement narrow.

The kernel factors S = Λ_Rᵀ(A_RR − A_R1 V A_1R)Λ_R + I within its envelope
(row i zero before some column f_i, and so is row i of its factor) and forms
S⁻¹ on that envelope only (Takahashi's equations): work Σᵢ wᵢ²/2 for the
factor and about as much for the inverse, wᵢ = i − f_i.  Two rest levels are
coupled in S when A_RR couples them or a first-term level meets both; nested
levels (each first-term level meeting one rest level) leave S block diagonal,
levels of a loosely crossed design (pupils who changed school) a sparse S
whose envelope depends on the order of its rows: reverse Cuthill–McKee on
the levels' graph narrows it (STAR's 80 schools: Σw²/2 from 1.5·10⁶ to
1.8·10⁵).  A dense S goes to LAPACK instead.
"""

from __future__ import annotations

import numpy as np

from multilevel.linalg.crossprod import CrossProducts

REORDER_WORK = 100_000  # envelope work above which an ordering is sought


def _rest_levels(cp: CrossProducts) -> tuple[np.ndarray, np.ndarray]:
    """Each rest level's number of columns and first column."""
    qs = np.repeat(np.asarray(cp.q[1:], dtype=np.int64), cp.nlevels[1:])
    return qs, np.concatenate([[0], np.cumsum(qs)[:-1]]).astype(np.int64)


def level_pattern(cp: CrossProducts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z₁ᵀZ_R by level of the first term, as the blocked kernel reads it: the
    rest columns level i meets, Ai[Ap[i]:Ap[i+1]] (whole rest levels,
    ascending), and its q₁ rows of them, row-major, from Ax[q₁Ap[i]]."""
    q1, n1, Qr = cp.q[0], cp.nlevels[0], cp.Qr
    qs, lstart = _rest_levels(cp)
    if cp.dense is not None:
        A = cp.dense[0].reshape(n1, q1, Qr)
        met = np.logical_or.reduceat((A != 0).any(axis=1), lstart, axis=1)  # (n1, rest levels)
        lev, rl = np.nonzero(met)
    else:
        indptr, indices, values = cp.A1R_csr64
        rows = np.repeat(np.arange(n1 * q1, dtype=np.int64), np.diff(indptr))
        rlev = np.repeat(np.arange(qs.size, dtype=np.int64), qs)  # per rest column
        pairs = np.unique((rows // q1) * qs.size + rlev[indices])
        lev, rl = pairs // qs.size, pairs % qs.size
    size = qs[rl]
    total = int(size.sum())
    cols = np.repeat(lstart[rl], size) + np.arange(total) - np.repeat(np.cumsum(size) - size, size)
    levs = np.repeat(lev, size)
    counts = np.bincount(levs, minlength=n1)
    Ap = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if cp.dense is not None:
        vals = A[levs, :, cols]  # (total, q1)
    else:
        # by lookup in the sorted (row, column) keys of A_1R's entries
        keys = rows * Qr + indices
        vals = np.zeros((total, q1))
        for j in range(q1):  # the first term's columns
            want = (levs * q1 + j) * Qr + cols
            at = np.minimum(np.searchsorted(keys, want), keys.size - 1)
            hit = keys[at] == want
            vals[hit, j] = values[at[hit]]
    Ax = np.empty(total * q1)
    pos = Ap[levs] * q1 + (np.arange(total) - Ap[levs])
    for j in range(q1):
        Ax[pos + j * counts[levs]] = vals[:, j]
    return Ap, np.ascontiguousarray(cols, dtype=np.int64), Ax


def row_ranges(ARR: np.ndarray, cp: CrossProducts) -> np.ndarray:
    """(2, Q_R): A_RR's row a is zero outside columns [lo_a, hi_a), both at
    whole rest levels and the same for a level's rows (nested rest terms
    leave a few levels per row: the kernel's Q_R² loops shrink to these)."""
    Qr = ARR.shape[0]
    qs, lstart = _rest_levels(cp)
    start = np.repeat(lstart, qs)  # each column's level's first column
    end = start + np.repeat(qs, qs)
    nonzero = ARR != 0
    cols = np.arange(Qr)
    lo = start[np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), cols)]
    hi = end[np.where(nonzero.any(axis=1), Qr - 1 - nonzero[:, ::-1].argmax(axis=1), cols)]
    lo = np.minimum(np.repeat(np.minimum.reduceat(lo, lstart), qs), start)
    hi = np.maximum(np.repeat(np.maximum.reduceat(hi, lstart), qs), end)
    return np.ascontiguousarray(np.stack([lo, hi]), dtype=np.int64)


def envelope_work(ARR: np.ndarray, Ap: np.ndarray, Ai: np.ndarray, pos: np.ndarray) -> float:
    """Multiplications of the envelope factorization and inverse of S with
    rest column c at row pos[c]: 1.5 Σ_i w_i², row i's first nonzero the
    least row of a column coupled with it (A_RR, or a first-term level
    meeting both)."""
    first = pos.copy()
    r, c = np.nonzero(ARR)
    np.minimum.at(first, r, pos[c])
    counts = np.diff(Ap)
    met = counts > 0
    if met.any():
        least = np.minimum.reduceat(pos[Ai], Ap[:-1][met])  # per first-term level
        np.minimum.at(first, Ai, np.repeat(least, counts[met]))
    w = (pos - first).astype(float)
    return 1.5 * float(w @ w)


def rest_order(
    cp: CrossProducts, ARR: np.ndarray, Ap: np.ndarray, Ai: np.ndarray, lapack: bool
) -> tuple[np.ndarray, float]:
    """The row of S for each rest column (levels kept whole) and the work of
    factoring and inverting S so: the identity, or the reverse Cuthill–McKee
    order of the levels where that narrows a wide envelope; with ``lapack``
    a dense S costs about Q_R³/4 in the kernel's terms."""
    Qr = ARR.shape[0]
    pos = np.arange(Qr, dtype=np.int64)
    work = envelope_work(ARR, Ap, Ai, pos)
    if work > REORDER_WORK:
        alt = _rcm_positions(cp, ARR, Ap, Ai)
        alt_work = envelope_work(ARR, Ap, Ai, alt)
        if alt_work < work:
            pos, work = alt, alt_work
    if lapack:
        work = min(work, 0.25 * float(Qr) ** 3)
    return pos, work


def _rcm_positions(
    cp: CrossProducts, ARR: np.ndarray, Ap: np.ndarray, Ai: np.ndarray
) -> np.ndarray:
    """Rest columns' rows in S with the levels in reverse Cuthill–McKee order
    of their graph (levels adjacent when A_RR or a first-term level couples them)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    qs, lstart = _rest_levels(cp)
    nl = qs.size
    level = np.repeat(np.arange(nl, dtype=np.int64), qs)  # of each rest column
    r, c = np.nonzero(ARR)
    # the levels each first-term level meets (its pattern's first columns)
    heads = Ai[Ai == lstart[level[Ai]]]
    group = np.repeat(np.arange(Ap.size - 1), np.diff(Ap))[Ai == lstart[level[Ai]]]
    cnt = np.bincount(group, minlength=Ap.size - 1)
    gstart = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    reps = cnt[group]
    e = np.repeat(np.arange(heads.size), reps)
    partner = gstart[group[e]] + np.arange(e.size) - np.repeat(np.cumsum(reps) - reps, reps)
    rows = np.concatenate([level[r], level[heads[e]]])
    cols = np.concatenate([level[c], level[heads[partner]]])
    G = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(nl, nl))
    order = reverse_cuthill_mckee(G, symmetric_mode=True)
    new_start = np.empty(nl, dtype=np.int64)
    new_start[order] = np.concatenate([[0], np.cumsum(qs[order])[:-1]])
    return new_start[level] + (np.arange(level.size) - lstart[level])

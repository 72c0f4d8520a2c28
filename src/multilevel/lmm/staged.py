"""Dense Cholesky of a sparse symmetric positive definite matrix after
eliminating independent sets of its nodes.

A random crossing of two factors leaves, after the first factor is
eliminated, a rest block M_RR that is thin (a few dozen nonzeros per row)
but whose Cholesky factor fills in: it is factored dense.  Yet some of its
nodes (levels with few observations) have few neighbours.  A set E of nodes
no two of which are neighbours has a diagonal block D = M_EE, so it is
eliminated exactly and cheaply:

    M = [D  Bᵀ]      S = M_SS − B D⁻¹ Bᵀ      (B = M_SE, sparse)
        [B  M_SS]

and S is again sparse: only the neighbours of each eliminated node fill in
(a clique each).  Repeating this while the independent sets stay large, the
dense factorization is left with a smaller S (on 5,000 x 5,000 random
levels: 4,987 → about 3,850, less than half the flops).

Everything an evaluation needs follows by block elimination:
log|M| = Σ log dₑ + log|S|; solves go forward through the stages, through
the dense factor and back; and entries of M⁻¹ on M's pattern (its diagonal
and the pairs the gradient reads) come backwards from S⁻¹ (a selected
inverse): with Z = M⁻¹, for an eliminated node e and its neighbours b,

    Z_eb = −(1/dₑ) Σ_a m_ea Z_ab,        Z_ee = 1/dₑ − (1/dₑ) Σ_b m_eb Z_eb,

which read Z only between neighbours of e: entries of the next stage's
pattern (the clique its elimination filled in).

At the dense block S = LLᵀ those entries are a small share of S⁻¹ (5 % on
5,000 x 5,000 random levels), so S⁻¹ is not formed: with W = L⁻¹ (LAPACK
``trtri``, half the work of ``potri``, which goes on to form all of WᵀW),

    (S⁻¹)_ab = Σ_{k ≥ max(a,b)} W_ka W_kb,

one short product of two columns of W per entry (compiled:
``multilevel._sparse_chol.gram_entries``).  Its cost is Σ (n − max(a,b))
over the entries, so the dense block's levels are ordered by their number
of entries, the most connected last.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# LAPACK directly: scipy.linalg's wrappers cost more than small solves
from scipy.linalg.blas import dtpmv, dtrmm
from scipy.linalg.lapack import dpotrf, dpotri, dpotrs, dpptrs, dtpttr, dtrtri, dtrtrs

from multilevel.linalg.sparse_chol import gram_available, lower_gram_entries
from multilevel.threads import threads_for_order

MIN_FRACTION = 0.05  # stop when an independent set would remove fewer nodes
MAX_TERMS = 20_000_000  # neighbour pairs per stage (memory of the maps)
# per-evaluation costs in ns, measured on one core (AVX-512 OpenBLAS): potrf
# and trtri per multiply-add (n³/6 each), the compiled entries of WᵀW per
# multiply-add, the stages' numpy passes per neighbour pair term
BLAS_NS = 0.025
GRAM_NS = 0.35
STAGE_NS = 50.0
# a kept factor holding W = L⁻¹ packed solves this many columns by packed
# products (2n² each), more by unpacking W for BLAS-3 products
PACKED_COLUMNS = 8


def _independent_set(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A maximal set of nodes no two of which share an edge, chosen greedily
    from the lowest degree up (those eliminate with the least fill)."""
    adj = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    adj = (adj + adj.T).tocsr()
    deg = np.diff(adj.indptr)
    order = np.argsort(deg, kind="stable")
    blocked = np.zeros(n, dtype=bool)
    chosen = np.zeros(n, dtype=bool)
    indptr, indices = adj.indptr, adj.indices
    for v in order:  # one pass over nodes, at set-up only
        if not blocked[v]:
            chosen[v] = True
            blocked[v] = True
            blocked[indices[indptr[v] : indptr[v + 1]]] = True
    return np.flatnonzero(chosen)


def zero_lower(A: np.ndarray, block: int = 256) -> None:
    """Zero the lower triangle (diagonal included) of a Fortran-ordered square
    array, column block by column block: half the writes of A.fill(0)."""
    n = A.shape[0]
    for lo in range(0, n, block):
        A[lo:, lo : min(n, lo + block)] = 0.0


def invert_factor(L: np.ndarray, work: bool, routine) -> np.ndarray:
    """``routine`` (LAPACK's ``dtrtri``: L⁻¹, or ``dpotri``: (LLᵀ)⁻¹'s lower
    triangle) of a lower Cholesky factor in Fortran order, with the BLAS
    threads its order warrants.  In place when ``work`` (a work buffer: the
    factor is gone afterwards), else on a copy."""
    if not work:
        L = L.copy(order="F")
    with threads_for_order(L.shape[0]):
        X, info = routine(L, lower=1, overwrite_c=1)
    if info != 0:  # pragma: no cover - L came from a successful potrf
        raise np.linalg.LinAlgError("the inversion of a Cholesky factor failed")
    return X


def pack_lower(A: np.ndarray) -> np.ndarray:
    """A's lower triangle (square, Fortran order, owning its memory) packed
    column by column (LAPACK's 'L' layout, n(n+1)/2 values) in A's own memory:
    the columns move forward and the array shrinks (a copy would hold both at
    once).  A is the returned 1-d array."""
    n = A.shape[0]
    flat = A.reshape(-1, order="F")  # a view of the same memory
    off = 0
    for j in range(n):  # numpy copies overlapping slices through a temporary
        flat[off : off + n - j] = flat[j * n + j : (j + 1) * n]
        off += n - j
    del flat
    A.resize((off,), refcheck=False)  # realloc: the tail goes back to the system
    return A


def _unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(x, return_inverse=True) by one sort (numpy's hashing unique
    and a search of millions of keys cost several times more)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.concatenate([[True], xs[1:] != xs[:-1]])
    inv = np.empty(x.size, dtype=np.int64)
    inv[order] = np.cumsum(first) - 1
    return xs[first], inv


def _dense_order(n: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An order of the dense block's n levels (old index per new one), least
    entries first, and the new (row ≥ column) of each key r·n + c."""
    r, c = keys // n, keys % n
    count = np.bincount(r, minlength=n) + np.bincount(c, minlength=n)
    perm = np.argsort(count, kind="stable")
    new = np.empty(n, dtype=np.int64)
    new[perm] = np.arange(n)
    nr, nc = new[r], new[c]
    return perm, np.maximum(nr, nc), np.minimum(nr, nc)


def cost(n: int, keys: np.ndarray, terms: int) -> float:
    """Estimated ns of one evaluation (factorization and the entries of the
    inverse) with a dense block of order n whose lower-triangle keys are these,
    after stages of ``terms`` neighbour pair terms: potrf and trtri, and the
    entries' column products (without stages, this stands for the unstaged
    block's product of L⁻¹ with the first term's sparse cross block, of
    similar cost).  Without the compiled products a staged block reads its
    entries from the full inverse (potri: twice trtri's work)."""
    dense = n**3 / 6.0 * BLAS_NS
    if terms and not gram_available():
        return 3.0 * dense + terms * STAGE_NS
    _, a, _ = _dense_order(n, keys)
    return 2.0 * dense + float((n - a).sum()) * GRAM_NS + terms * STAGE_NS


class _Stage:
    """One elimination of an independent set E from a sparse symmetric matrix
    given by its lower-triangle entries (keys r·n + c, r ≥ c, sorted; the
    diagonal included)."""

    def __init__(self, n: int, keys: np.ndarray, E: np.ndarray):
        r, c = keys // n, keys % n
        inE = np.zeros(n, dtype=bool)
        inE[E] = True
        S = np.flatnonzero(~inE)
        new = np.full(n, -1, dtype=np.int64)
        new[S] = np.arange(S.size)
        self.n, self.nS = n, S.size
        self.E, self.S = E, S
        diag = r == c
        self.n_keys = keys.size
        # d: the diagonal at E, in E's order (keys sort the diagonal by node)
        self.d_idx = np.flatnonzero(diag & inE[r])
        # edges between E and S (no edge joins two nodes of E)
        es = ~diag & (inE[r] | inE[c])
        self.es_idx = np.flatnonzero(es)
        e_node = np.where(inE[r], r, c)[es]
        s_node = np.where(inE[r], c, r)[es]
        epos = np.full(n, -1, dtype=np.int64)
        epos[E] = np.arange(E.size)
        self.es_e = epos[e_node]  # which eliminated node
        self.es_s = new[s_node]  # its neighbour, in S's numbering
        # entries within S carry over
        ss = ~(inE[r] | inE[c])
        self.ss_idx = np.flatnonzero(ss)
        ss_keys = new[r[ss]] * self.nS + new[c[ss]]
        # neighbour pairs (a, b) of each e, in both orders: edges i, j of one e
        order = np.argsort(self.es_e, kind="stable")
        cnt = np.bincount(self.es_e, minlength=E.size)
        start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        per = cnt[self.es_e[order]]
        ti = np.repeat(order, per)  # edge (e, a)
        blk = np.repeat(np.cumsum(per) - per, per)
        tj = order[start[self.es_e[ti]] + (np.arange(ti.size) - blk)]  # edge (e, b)
        a, b = self.es_s[ti], self.es_s[tj]
        ab_keys = np.maximum(a, b) * self.nS + np.minimum(a, b)
        self.next_keys, inv = _unique_inverse(np.concatenate([ss_keys, ab_keys]))
        self.ss_to = inv[: ss_keys.size].copy()  # a view would hold all of inv
        # the maps of neighbour pairs are the bulk of the memory: 32-bit indices
        i32 = np.int32
        self.t_ea, self.t_eb = ti.astype(i32), tj.astype(i32)
        self.t_ab = inv[ss_keys.size :].astype(i32)
        lower = a >= b  # the fill, once per unordered pair (a > b: one of its two orders)
        self.f_ea, self.f_eb, self.f_ab = self.t_ea[lower], self.t_eb[lower], self.t_ab[lower]
        self.f_e = self.es_e[ti[lower]].astype(i32)
        self.nterms = ti.size

    def forward(self, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(d, the E-S edge values, the next stage's values), or None when a
        pivot is not positive."""
        d = vals[self.d_idx]
        if not np.all(d > 0):
            return None
        m = vals[self.es_idx]
        nxt = np.zeros(self.next_keys.size)
        nxt[self.ss_to] = vals[self.ss_idx]
        w = m[self.f_ea] * m[self.f_eb] / d[self.f_e]
        nxt -= np.bincount(self.f_ab, weights=w, minlength=nxt.size)
        return d, m, nxt

    def backward(self, d: np.ndarray, m: np.ndarray, znext: np.ndarray) -> np.ndarray:
        """Z = M⁻¹ at this stage's keys from Z at the next stage's keys."""
        out = np.empty(self.n_keys)
        out[self.ss_idx] = znext[self.ss_to]
        # Z_eb = −(1/dₑ) Σ_a m_ea Z_ab
        zeb = (
            -np.bincount(self.t_eb, weights=m[self.t_ea] * znext[self.t_ab], minlength=m.size)
            / d[self.es_e]
        )
        out[self.es_idx] = zeb
        # Z_ee = 1/dₑ − (1/dₑ) Σ_b m_eb Z_eb
        s = np.bincount(self.es_e, weights=m * zeb, minlength=d.size)
        out[self.d_idx] = (1.0 - s) / d
        return out

    def F(self, d: np.ndarray, m: np.ndarray) -> sp.csr_matrix:
        """B D⁻¹ (S x E), the multipliers of the elimination."""
        return sp.csr_matrix(
            (m / d[self.es_e], (self.es_s, self.es_e)), shape=(self.nS, self.E.size)
        )


class StagedElimination:
    """The stages for a fixed pattern (lower-triangle keys r·Q + c, r ≥ c,
    sorted, the diagonal included), and the dense order left at the end."""

    def __init__(self, Q: int, keys: np.ndarray, stages: list[_Stage]):
        self.Q = Q
        self.keys = keys
        self.stages = stages
        nS = self.nS = stages[-1].nS
        # the dense block's order: its levels by number of entries, so that the
        # entries of S⁻¹ read (Σ (n − max(a,b)) multiply-adds) cost least
        self.perm, a, b = _dense_order(nS, stages[-1].next_keys)
        self.dense_pos = a + b * nS  # column-major positions in the dense block
        # the entries in gram_entries' order (by column a, then b)
        self._gram_order = np.lexsort((b, a))
        self._gram_a = a[self._gram_order]
        self._gram_b = b[self._gram_order]
        self.buf = np.empty((nS, nS), order="F")

    @classmethod
    def plan(cls, Q: int, keys: np.ndarray) -> StagedElimination | None:
        """Stages while each removes at least MIN_FRACTION of the nodes, kept up
        to the one after which an evaluation costs least (:func:`cost`); None
        if no number of stages costs less than the unstaged dense block."""
        stages: list[_Stage] = []
        n, k = Q, keys
        best, best_cost = 0, cost(Q, keys, 0)
        while True:
            r, c = k // n, k % n
            off = r != c
            E = _independent_set(n, r[off], c[off])
            if E.size == n:  # no edges left: one node stays for the dense block
                E = E[:-1]
            if E.size < MIN_FRACTION * n:
                break
            deg = np.bincount(np.concatenate([r[off], c[off]]), minlength=n)
            if float((deg[E].astype(np.float64) ** 2).sum()) > MAX_TERMS:
                break
            st = _Stage(n, k, E)
            stages.append(st)
            n, k = st.nS, st.next_keys
            c_now = cost(n, k, sum(s.nterms for s in stages))
            if c_now < best_cost:
                best, best_cost = len(stages), c_now
        if best == 0:
            return None
        return cls(Q, keys, stages[:best])

    def factor(self, vals: np.ndarray, MRF: np.ndarray, keep: bool) -> StagedFactor | None:
        """Factor the matrix with these values at ``keys``; None if it is not
        positive definite.

        A kept factor at the values of the last work factorization, whose
        gradient left W = L⁻¹ in the work buffer (a fit's estimates are taken
        at the point its search evaluated last), is that one: W packed, no
        second factorization."""
        last, self._last = self._last, None
        if keep and last is not None and last[2].W is not None:
            lv, lm, lf = last
            if np.array_equal(lv, vals) and np.array_equal(lm, MRF):
                lf.keep_inverse()
                self.buf = None
                return lf
        if last is not None:
            last[2].W = None  # the buffer it points to is about to be overwritten
        parts = []
        v = vals
        for st in self.stages:
            res = st.forward(v)
            if res is None:
                return None
            d, m, v = res
            parts.append((d, m, st.F(d, m)))
        if self.buf is None:  # handed to a kept factor: a new one
            self.buf = np.empty((self.nS, self.nS), order="F")
        A = self.buf
        zero_lower(A)  # potrf reads no more
        A.reshape(-1, order="F")[self.dense_pos] = v
        with threads_for_order(self.nS):
            L, info = dpotrf(A, lower=1, clean=0, overwrite_a=1)
        if info != 0:
            return None
        f = StagedFactor(self, parts, L, work=not keep)
        logdet = 2.0 * float(np.log(np.diag(L)).sum())
        logdet += sum(float(np.log(d).sum()) for d, _, _ in parts)
        f.logdet = logdet
        # MRFᵀ M⁻¹ MRF = Σ_stages bₑᵀ D⁻¹ bₑ + cᵀc, c = L⁻¹ b_S after the stages
        b = MRF
        quad = np.zeros((MRF.shape[1], MRF.shape[1]))
        for st, (d, _, F) in zip(self.stages, parts, strict=True):
            bE = b[st.E]
            quad += bE.T @ (bE / d[:, None])
            b = b[st.S] - F @ bE
        C, info = dtrtrs(L, b[self.perm], lower=1)
        if info != 0:
            return None
        f.quad = quad + C.T @ C
        if keep:
            # a kept factor (a fit holds it for its lifetime) packed: half the
            # memory, and the work buffer goes (the next evaluation makes one)
            f.pack()
            self.buf = None
        else:
            self._last = (vals, MRF, f)
        return f

    _last: tuple[np.ndarray, np.ndarray, StagedFactor] | None = None

    def dense_inverse_entries(
        self, L: np.ndarray, work: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """S⁻¹ at the last stage's keys, from S's factor L (in place when
        ``work``), and W = L⁻¹ where it was formed: by the compiled column
        products of W where built, else from the full inverse (and None)."""
        if not gram_available():
            Sinv = invert_factor(L, work, dpotri)
            return Sinv.reshape(-1, order="F")[self.dense_pos], None
        W = invert_factor(L, work, dtrtri)  # lower triangle only: trtri reads no more
        return self.entries_from_inverse_factor(W), W

    def entries_from_inverse_factor(self, W: np.ndarray) -> np.ndarray:
        """S⁻¹ = WᵀW at the last stage's keys (W = L⁻¹, Fortran order)."""
        out = lower_gram_entries(W, self._gram_a, self._gram_b)
        z = np.empty_like(out)
        z[self._gram_order] = out
        return z


class StagedFactor:
    """A staged factorization at one θ: solves and a selected inverse."""

    def __init__(self, plan: StagedElimination, parts, L: np.ndarray, work: bool):
        self.plan = plan
        self.parts = parts  # per stage: (d, E-S edge values, B D⁻¹)
        # the dense block's factor L (Fortran order), or W = L⁻¹ after a work
        # factor was inverted in place (valid until the next factorization), or
        # either packed (kept factors: LAPACK's 'L' layout, n(n+1)/2 values)
        self.L: np.ndarray | None = L
        self.W: np.ndarray | None = None
        self._packed: np.ndarray | None = None
        self._packed_inverse = False  # the packed triangle is W, not L
        self._work = work
        self.logdet = 0.0
        self.quad = None

    def pack(self) -> None:
        """Hold the dense factor packed, in its own memory (:func:`pack_lower`)."""
        self._packed, self.L = pack_lower(self.L), None

    def keep_inverse(self) -> None:
        """A work factor inverted in place becomes a kept one holding W packed."""
        self._packed, self.W = pack_lower(self.W), None
        self._packed_inverse = True
        self._work = False

    def _unpacked(self) -> np.ndarray:
        A, info = dtpttr(self.plan.nS, self._packed, uplo="L")
        if info != 0:  # pragma: no cover - a packed triangle of order nS
            raise np.linalg.LinAlgError("tpttr failed")
        return np.asfortranarray(A)

    def _dense_solve(self, b: np.ndarray) -> np.ndarray:
        """S⁻¹ b in the dense block's order."""
        n = self.plan.nS
        if self._packed is None:
            x, info = dpotrs(self.L, b, lower=1)
        elif not self._packed_inverse:
            x, info = dpptrs(n, self._packed, b, lower=1)
        elif b.shape[1] <= PACKED_COLUMNS:  # WᵀW b, one column at a time
            x = np.empty_like(b)
            for j in range(b.shape[1]):
                y = dtpmv(n, self._packed, b[:, j], lower=1)
                x[:, j] = dtpmv(n, self._packed, y, lower=1, trans=1)
            info = 0
        else:
            W = self._unpacked()
            x = dtrmm(1.0, W, dtrmm(1.0, W, b, lower=1), lower=1, trans_a=1)
            info = 0
        if info != 0:  # pragma: no cover - L came from a successful potrf
            raise np.linalg.LinAlgError("potrs failed")
        return x

    def solve(self, B: np.ndarray) -> np.ndarray:
        """M⁻¹ B: forward through the stages, the dense factor, and back."""
        if self.L is None and self._packed is None:  # pragma: no cover - programming error
            raise RuntimeError("the work factor was inverted in place")
        stages = self.plan.stages
        vec = B.ndim == 1
        b = B[:, None] if vec else B
        saved = []
        for st, (_, _, F) in zip(stages, self.parts, strict=True):
            bE = b[st.E]
            saved.append(bE)
            b = b[st.S] - F @ bE
        perm = self.plan.perm
        xp = self._dense_solve(np.asarray(b[perm], order="F"))
        x = np.empty_like(xp)
        x[perm] = xp
        for st, (d, _, F), bE in zip(stages[::-1], self.parts[::-1], saved[::-1], strict=True):
            full = np.empty((st.n, b.shape[1]))
            full[st.S] = x
            full[st.E] = bE / d[:, None] - F.T @ x
            x = full
        return x[:, 0] if vec else x

    def selected_inverse(self) -> np.ndarray:
        """M⁻¹ at the pattern's keys (lower triangle and diagonal).  The dense
        factor is inverted in place when it is the work buffer; a packed one is
        unpacked into a temporary array."""
        plan = self.plan
        if self.W is not None:
            z = plan.entries_from_inverse_factor(self.W)
        elif self._packed is not None and self._packed_inverse:
            z = plan.entries_from_inverse_factor(self._unpacked())
        elif self._packed is not None:
            z, _ = plan.dense_inverse_entries(self._unpacked(), True)
        else:
            z, W = plan.dense_inverse_entries(self.L, self._work)
            if self._work:
                self.L, self.W = None, W
        for st, (d, m, _) in zip(self.plan.stages[::-1], self.parts[::-1], strict=True):
            z = st.backward(d, m, z)
        return z

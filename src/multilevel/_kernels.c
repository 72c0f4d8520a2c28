/*
 * Compiled kernel of the profiled REML/ML criterion of a linear mixed model
 * with ONE random-effects term, and its exact gradient (multilevel.lmm gives
 * the same computation in numpy; this file only removes the per-call
 * overhead that dominates small models).
 *
 * Inputs (C-contiguous float64, level-first):
 *   D    (nlev, q, q)  Z_i^T Z_i per level
 *   B    (nlev, q, m)  Z_i^T [X y] per level, m = p + 1
 *   AFF  (m, m)        [X y]^T [X y]
 *   theta              lower triangle of T by columns, q(q+1)/2 entries
 * Per level S_i = T^T D_i T + I = L_i L_i^T, W_i = L_i^{-1} T^T,
 * C_i = W_i B_i; M = AFF - sum_i C_i^T C_i = L_F L_F^T gives r^2 = L_F[p,p]^2
 * and log|R_X|^2; the criterion follows DESIGN.md / multilevel.lmm.
 * Gradient (entry (r, c) of T), with R_i = S_i^{-1} T^T, z = [-beta; 1],
 * u_i = R_i B_i z, Zr_i = B_i z - D_i T u_i, Q_i = B_Xi P B_Xi^T:
 *   d log|L_Z|^2 = 2 [sum R_i D_i]_{c,r}
 *   d log|R_X|^2 = -2 [sum R_i Q_i - R_i Q_i R_i^T T^T D_i]_{c,r}
 *   d r^2        = -2 [sum u_i Zr_i^T]_{c,r}
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_lapack.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>

/* PyBuffer_Release on each of n Py_buffer pointers */
static void release(int n, ...) {
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) PyBuffer_Release(va_arg(ap, Py_buffer *));
    va_end(ap);
}

/* lower Cholesky of the n x n matrix a (row-major) in place; 0 if not PD */
__attribute__((always_inline)) static inline int chol(double *a, int n) {
    for (int j = 0; j < n; j++) {
        double d = a[j * n + j];
        for (int k = 0; k < j; k++) d -= a[j * n + k] * a[j * n + k];
        if (!(d > 0.0)) return 0;
        d = sqrt(d);
        a[j * n + j] = d;
        for (int i = j + 1; i < n; i++) {
            double s = a[i * n + j];
            for (int k = 0; k < j; k++) s -= a[i * n + k] * a[j * n + k];
            a[i * n + j] = s / d;
        }
        for (int i = 0; i < j; i++) a[i * n + j] = 0.0;
    }
    return 1;
}

/* inverse of the lower-triangular n x n matrix l into out (lower) */
__attribute__((always_inline)) static inline void tri_inv(const double *l, double *out, int n) {
    memset(out, 0, sizeof(double) * n * n);
    for (int c = 0; c < n; c++) {
        out[c * n + c] = 1.0 / l[c * n + c];
        for (int i = c + 1; i < n; i++) {
            double s = 0.0;
            for (int k = c; k < i; k++) s += l[i * n + k] * out[k * n + c];
            out[i * n + c] = -s / l[i * n + i];
        }
    }
}

/* y = A x for A (rows x cols, row-major) */
static void mat_vec(const double *A, const double *x, double *y, int rows, int cols) {
    for (int a = 0; a < rows; a++) {
        double s = 0.0;
        for (int c = 0; c < cols; c++) s += A[a * cols + c] * x[c];
        y[a] = s;
    }
}

/* The profiled criterion from the factored [X y] block L_FF (m x m, lower,
 * row-major): r^2 = L_FF[p,p]^2, log|R_X|^2 from its first p pivots. */
static double profiled_value(const double *LFF, int m, double logdet, double nobs, int reml,
                             double *r2_out) {
    int p = m - 1;
    double r2 = LFF[p * m + p] * LFF[p * m + p];
    double logdetX = 0.0;
    for (int a = 0; a < p; a++) logdetX += 2.0 * log(LFF[a * m + a]);
    const double log2pi = 1.8378770664093453;
    *r2_out = r2;
    if (reml) {
        double dof = nobs - p;
        return logdet + logdetX + dof * (1.0 + log2pi + log(r2 / dof));
    }
    return logdet + nobs * (1.0 + log2pi + log(r2 / nobs));
}

/* From L_FF: z = (-beta, 1) with L_XX^T beta = L_FF[p, :p], and
 * P = (L_XX L_XX^T)^{-1}; LX and LXinv (p x p) are work space. */
static void beta_and_P(const double *LFF, int m, double *LX, double *LXinv, double *z, double *P) {
    int p = m - 1;
    for (int a = 0; a < p; a++)
        for (int b = 0; b < p; b++) LX[a * p + b] = LFF[a * m + b];
    tri_inv(LX, LXinv, p);
    for (int a = 0; a < p; a++) {
        double x = 0.0;
        for (int k = a; k < p; k++) x += LXinv[k * p + a] * LFF[p * m + k];
        z[a] = -x;
    }
    z[p] = 1.0;
    for (int a = 0; a < p; a++)
        for (int b = 0; b < p; b++) {
            double x = 0.0;
            for (int k = (a > b ? a : b); k < p; k++) x += LXinv[k * p + a] * LXinv[k * p + b];
            P[a * p + b] = x;
        }
}

/* S = T^T D T + I (lower triangle) factored in place, Linv = L^{-1} and
 * W = L^{-1} T^T (T lower); 0 if S is not positive definite.  Inlined, so
 * that a q known at the call unrolls the loops. */
__attribute__((always_inline)) static inline int level_chol(
    const double *restrict D, const double *restrict T, int q, double *restrict S,
    double *restrict DT, double *restrict W, double *restrict Linv) {
    for (int a = 0; a < q; a++)
        for (int b = 0; b < q; b++) {
            double s = 0.0;
            for (int j = b; j < q; j++) s += D[a * q + j] * T[j * q + b];
            DT[a * q + b] = s;
        }
    for (int a = 0; a < q; a++)
        for (int b = 0; b <= a; b++) {
            double s = (a == b) ? 1.0 : 0.0;
            for (int i = a; i < q; i++) s += T[i * q + a] * DT[i * q + b];
            S[a * q + b] = s;
        }
    if (!chol(S, q)) return 0;
    tri_inv(S, Linv, q);
    /* W = Linv T^T (lower triangular times upper) */
    for (int a = 0; a < q; a++)
        for (int b = 0; b < q; b++) {
            double s = 0.0;
            int top = a < b ? a : b;
            for (int k = 0; k <= top; k++) s += Linv[a * q + k] * T[b * q + k];
            W[a * q + b] = s;
        }
    return 1;
}

/* level_chol, adding log|S| to *logdet */
static int level_factor(const double *D, const double *T, int q, double *S,
                        double *DT, double *W, double *Linv, double *logdet) {
    if (!level_chol(D, T, q, S, DT, W, Linv)) return 0;
    for (int a = 0; a < q; a++) *logdet += 2.0 * log(S[a * q + a]);
    return 1;
}

/* C = A B (r x k times k x c), row-major; inlined, so that sizes known at
 * the call unroll */
__attribute__((always_inline)) static inline void mat_mul(const double *restrict A,
                                                          const double *restrict B,
                                                          double *restrict C, int r, int k, int c) {
    for (int a = 0; a < r; a++)
        for (int b = 0; b < c; b++) {
            double s = 0.0;
            for (int e = 0; e < k; e++) s += A[a * k + e] * B[e * c + b];
            C[a * c + b] = s;
        }
}

#define CHUNK 128 /* levels whose C_i^T C_i are summed into M at once */

/* x . y with four running sums (independent additions pipeline) */
static inline double dot(const double *restrict x, const double *restrict y, size_t n) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += x[i] * y[i];
        s1 += x[i + 1] * y[i + 1];
        s2 += x[i + 2] * y[i + 2];
        s3 += x[i + 3] * y[i + 3];
    }
    for (; i < n; i++) s0 += x[i] * y[i];
    return (s0 + s1) + (s2 + s3);
}

/* One level's value pass, for a q known at the call (the dispatch below
 * passes small q as constants, so that these loops unroll): S = T^T D T + I
 * = L L^T and C = L^{-1} T^T B, its q rows stored as columns of Ct (leading
 * dimension ld: M -= Ct Ct^T is formed after a chunk of levels, as dot
 * products along contiguous rows); the product of L's pivots goes to
 * *pivots (each pivot is at least 1: S is I plus a positive semi-definite
 * matrix); R = S^{-1} T^T to R if R is not NULL.  work holds 4 q^2
 * doubles.  0 if S is not PD. */
__attribute__((always_inline)) static inline int level_value(
    const int q, const int m, const double *restrict D, const double *restrict B,
    const double *restrict T, double *restrict Ct, size_t ld, double *restrict R,
    double *restrict work, double *restrict pivots) {
    double *DT = work, *S = DT + q * q, *Linv = S + q * q, *W = Linv + q * q;
    if (!level_chol(D, T, q, S, DT, W, Linv)) return 0;
    double prod = 1.0;
    for (int a = 0; a < q; a++) prod *= S[a * q + a];
    *pivots = prod;
    for (int a = 0; a < q; a++)
        for (int c = 0; c < m; c++) {
            double s = 0.0;
            for (int b = 0; b < q; b++) s += W[a * q + b] * B[b * m + c];
            Ct[c * ld + a] = s;
        }
    if (R)
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double s = 0.0;
                for (int k = a; k < q; k++) s += Linv[k * q + a] * W[k * q + b];
                R[a * q + b] = s;
            }
    return 1;
}

/* One level's share of the gradient (DESIGN.md; entry (r, c) of T is read
 * at acc[c, r]).  With c = B z, H = B_X P B_X^T + k c c^T (the B_X P B_X^T
 * part for REML only; P = LXinv^T LXinv, k = (n - p)/r^2 for REML, n/r^2 for
 * ML), the three terms of the gradient
 *   sum R D,  sum R B_X P B_X^T (I - R^T T^T D),  k sum u Zr^T = k sum R c c^T (I - R^T T^T D)
 * (u = R c, Zr = c - D T u) combine into
 *   acc += (R + R H R^T T^T) D - R H,
 * the gradient being 2 acc.  F = B_X LXinv^T comes by columns (F[j * ld + a],
 * formed for a chunk of levels at once), so B_X P B_X^T = F F^T.  work holds
 * 4 q^2 + q doubles. */
__attribute__((always_inline)) static inline void level_gradient(
    const int q, const int m, const double *restrict D, const double *restrict B,
    const double *restrict T, const double *restrict R, const double *restrict z,
    const double *restrict F, size_t ld, int reml, double k, double *restrict acc,
    double *restrict work) {
    const int p = m - 1;
    double *H = work, *Y = H + q * q, *V = Y + q * q, *E = V + q * q, *c = E + q * q;
    /* loops over the q rows innermost: q independent sums per step */
    for (int a = 0; a < q; a++) c[a] = 0.0;
    for (int j = 0; j < m; j++)
        for (int a = 0; a < q; a++) c[a] += B[a * m + j] * z[j];
    for (int a = 0; a < q; a++)
        for (int b = 0; b <= a; b++) H[a * q + b] = k * c[a] * c[b];
    if (reml)
        for (int j = 0; j < p; j++) {
            const double *Fj = F + j * ld;
            for (int a = 0; a < q; a++)
                for (int b = 0; b <= a; b++) H[a * q + b] += Fj[a] * Fj[b];
        }
    for (int a = 0; a < q; a++)
        for (int b = 0; b < a; b++) H[b * q + a] = H[a * q + b];
    for (int a = 0; a < q; a++)
        for (int b = 0; b < q; b++) {
            double s = 0.0;
            for (int e = 0; e < q; e++) s += R[a * q + e] * H[e * q + b];
            Y[a * q + b] = s;
        }
    for (int a = 0; a < q; a++)
        for (int b = 0; b < q; b++) {
            double s = 0.0;
            for (int e = 0; e < q; e++) s += Y[a * q + e] * R[b * q + e];
            V[a * q + b] = s;
        }
    for (int a = 0; a < q; a++)
        for (int b = 0; b < q; b++) {
            double s = R[a * q + b];
            for (int d = 0; d <= b; d++) s += V[a * q + d] * T[b * q + d];
            E[a * q + b] = s;
        }
    for (int a = 0; a < q; a++)
        for (int b = 0; b < q; b++) {
            double s = -Y[a * q + b];
            for (int e = 0; e < q; e++) s += E[a * q + e] * D[e * q + b];
            acc[a * q + b] += s;
        }
}

/* Both passes over the levels for one q: the criterion, and the gradient if
 * grad is not NULL.  T (q x q, lower) and buffers come from one_term. */
__attribute__((always_inline)) static inline double one_term_passes(
    const int q, const int m, int nlev, const double *D, const double *B, const double *AFF,
    const double *T, double nobs, int reml, double *grad, double *keepR, double *M,
    double *LXinv, double *Ct, double *work) {
    const int p = m - 1;
    const size_t qq = (size_t)q * q;
    double logdet = 0.0;
    memcpy(M, AFF, sizeof(double) * m * m);
    const size_t ld = (size_t)CHUNK * q;
    for (int lo = 0; lo < nlev; lo += CHUNK) {
        int hi = lo + CHUNK < nlev ? lo + CHUNK : nlev;
        for (int lev = lo; lev < hi; lev++) {
            double pivots;
            if (!level_value(q, m, D + lev * qq, B + (size_t)lev * q * m, T,
                             Ct + (size_t)(lev - lo) * q, ld, keepR ? keepR + lev * qq : NULL,
                             work, &pivots))
                return INFINITY;
            double l = log(pivots);
            if (!isfinite(l)) return INFINITY;
            logdet += 2.0 * l;
        }
        size_t len = (size_t)(hi - lo) * q;
        for (int r = 0; r < m; r++)
            for (int c = 0; c <= r; c++) M[r * m + c] -= dot(Ct + r * ld, Ct + c * ld, len);
    }
    if (!chol(M, m)) return INFINITY;
    double r2;
    double value = profiled_value(M, m, logdet, nobs, reml, &r2);
    if (!grad || !(r2 > 0)) return value;
    double *LX = work, *P = LX + (size_t)p * p, *z = P + (size_t)p * p;
    beta_and_P(M, m, LX, LXinv, z, P);
    double *LT = P; /* P itself is not needed: LXinv^T, read by rows */
    for (int a = 0; a < p; a++)
        for (int b = 0; b < p; b++) LT[a * p + b] = b >= a ? LXinv[b * p + a] : 0.0;
    double *acc = z + m, *lw = acc + qq;
    memset(acc, 0, sizeof(double) * qq);
    double k = (reml ? nobs - p : nobs) / r2;
    /* F = B_X LXinv^T for a chunk of levels as updates along whole columns
     * (BT: B_X's columns; one per level and row would chain each update
     * through memory) */
    double *BT = Ct, *FT = Ct + (size_t)p * ld;
    for (int lo = 0; lo < nlev; lo += CHUNK) {
        int hi = lo + CHUNK < nlev ? lo + CHUNK : nlev;
        size_t len = (size_t)(hi - lo) * q;
        const double *Bc = B + (size_t)lo * q * m;
        if (reml) {
            for (size_t r = 0; r < len; r++)
                for (int j = 0; j < p; j++) BT[j * ld + r] = Bc[r * m + j];
            for (int j = 0; j < p; j++) {
                double *restrict Fj = FT + j * ld;
                for (size_t r = 0; r < len; r++) Fj[r] = 0.0;
                for (int kk = 0; kk <= j; kk++) {
                    const double *restrict Bk = BT + kk * ld;
                    double l = LT[kk * p + j];
                    for (size_t r = 0; r < len; r++) Fj[r] += l * Bk[r];
                }
            }
        }
        for (int lev = lo; lev < hi; lev++)
            level_gradient(q, m, D + lev * qq, B + (size_t)lev * q * m, T, keepR + lev * qq, z,
                           FT + (size_t)(lev - lo) * q, ld, reml, k, acc, lw);
    }
    int e = 0;
    for (int j = 0; j < q; j++)
        for (int i = j; i < q; i++) grad[e++] = 2.0 * acc[j * q + i];
    return value;
}

static PyObject *one_term(PyObject *self, PyObject *args) {
    Py_buffer bD, bB, bA, bth, bg;
    int q, m, nlev, reml, want_grad;
    double nobs;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*iiidii", &bD, &bB, &bA, &bth, &bg, &q, &m, &nlev,
                          &nobs, &reml, &want_grad))
        return NULL;
    const double *D = bD.buf, *B = bB.buf, *AFF = bA.buf, *theta = bth.buf;
    double *grad = want_grad ? bg.buf : NULL;
    size_t qq = (size_t)q * q, mm = (size_t)m * m;
    /* T, M, LXinv, then work enough for either pass: 4 q^2 + q m (value),
     * 2 p^2 + m + q^2 + 5 q^2 + q (1 + p) (gradient) */
    size_t nwork = 10 * qq + (size_t)q * (m + 1) + 2 * mm + m;
    size_t nct = 2 * (size_t)m * CHUNK * q; /* C^T (value), B_X^T and F^T (gradient) */
    double *buf = calloc(qq + 2 * mm + nwork + nct, sizeof(double));
    double *keepR = want_grad ? malloc(sizeof(double) * qq * (size_t)(nlev > 0 ? nlev : 1)) : NULL;
    if (!buf || (want_grad && !keepR)) {
        free(buf);
        free(keepR);
        release(5, &bD, &bB, &bA, &bth, &bg);
        return PyErr_NoMemory();
    }
    double *T = buf, *M = T + qq, *LXinv = M + mm, *Ct = LXinv + mm, *work = Ct + nct;
    int e = 0;
    for (int j = 0; j < q; j++)
        for (int i = j; i < q; i++) T[i * q + j] = theta[e++];
    double value;
    /* small q as constants: the per-level loops unroll */
#define PASSES(Q) \
    one_term_passes(Q, m, nlev, D, B, AFF, T, nobs, reml, grad, keepR, M, LXinv, Ct, work)
    switch (q) {
    case 1: value = PASSES(1); break;
    case 2: value = PASSES(2); break;
    case 3: value = PASSES(3); break;
    case 4: value = PASSES(4); break;
    default: value = PASSES(q);
    }
#undef PASSES
    free(buf);
    free(keepR);
    release(5, &bD, &bB, &bA, &bth, &bg);
    return PyFloat_FromDouble(value);
}

/* lower-triangular solve in place: L x = b (forward) or L^T x = b (back),
 * L row-major n x n, b with r columns (row-major n x r) */
static void tri_solve(const double *L, double *X, int n, int r, int transpose) {
    if (!transpose) {
        for (int i = 0; i < n; i++) {
            for (int k = 0; k < i; k++) {
                double l = L[i * n + k];
                if (l != 0.0)
                    for (int c = 0; c < r; c++) X[i * r + c] -= l * X[k * r + c];
            }
            for (int c = 0; c < r; c++) X[i * r + c] /= L[i * n + i];
        }
    } else {
        for (int i = n - 1; i >= 0; i--) {
            for (int k = i + 1; k < n; k++) {
                double l = L[k * n + i];
                if (l != 0.0)
                    for (int c = 0; c < r; c++) X[i * r + c] -= l * X[k * r + c];
            }
            for (int c = 0; c < r; c++) X[i * r + c] /= L[i * n + i];
        }
    }
}

/*
 * Several scalar random-effects terms (intercepts, nested or crossed) with a
 * small rest block, dense: the criterion and its exact gradient, the same
 * computation as multilevel.lmm.criterion (ProfiledCriterion with its rest
 * block, _gradient_scalar_terms) without numpy's per-call costs.
 *   d (n1)        Z_1^T Z_1 per level of the first term
 *   B (n1, m)     Z_1^T [X y]
 *   Ap, Ai, Ax    Z_1^T Z_R in CSR (n1 rows, Q columns; int64 indices, sorted)
 *   ARR (Q, Q)    Z_R^T Z_R, dense
 *   ARF (Q, m)    Z_R^T [X y]
 *   AFF (m, m)    [X y]^T [X y]
 *   term (Q)      the term (1 .. K-1) of each rest level
 * With s_i = l1^2 d_i + 1, w_i = l1^2 / s_i and Lam_R = diag(theta[term]):
 *   M = Lam_R (ARR - A_R1 diag(w) A_1R) Lam_R + I,  G = Lam_R (ARF - A_R1 diag(w) B)
 *   MFF = AFF - B^T diag(w) B - G^T M^{-1} G;  log|L_Z|^2 = sum log s_i + log|M|.
 * Gradient: d log|M_full| = 2 (n_k - tr_k M_full^{-1}) / theta_k, where
 * tr over the first term is sum 1/s_i + sum_i (l1^2/s_i^2) a_i' Lam M^{-1} Lam a_i
 * (a_i the row of A_1R); the log|R_X|^2 and r^2 terms from U = M_full^{-1} Lam Z^T [X y].
 * Work per evaluation: O(sum_i nnz_i^2 + Q^3 + (n1 + Q^2) m).
 */

/* The rest block of several scalar terms at theta (see scalar_terms):
 * s_i = l1^2 d_i + 1, w_i = l1^2 / s_i, lamR, the lower triangle of
 * M = Lam_R (ARR - A_R1 diag(w) A_1R) Lam_R + I factored in place (row-major,
 * the upper triangle zeroed), G = Lam_R (ARF - A_R1 diag(w) B), and
 * logdet1 += sum log s_i, logdetR += log|M|.  Returns 0 if M is not positive
 * definite. */
static int scalar_rest(const double *d, const double *B, const int64_t *Ap, const int64_t *Ai,
                       const double *Ax, const double *ARR, const double *ARF,
                       const int64_t *term, const double *theta, int n1, int Q, int m,
                       double *s, double *w, double *lamR, double *M, double *G,
                       double *logdet1, double *logdetR) {
    double l1 = theta[0];
    for (int i = 0; i < n1; i++) {
        s[i] = l1 * l1 * d[i] + 1.0;
        w[i] = l1 * l1 / s[i];
        *logdet1 += log(s[i]);
    }
    for (int a = 0; a < Q; a++) lamR[a] = theta[term[a]];
    for (int a = 0; a < Q; a++)
        for (int b = 0; b <= a; b++) M[a * Q + b] = ARR[a * Q + b];
    memcpy(G, ARF, sizeof(double) * (size_t)Q * m);
    for (int i = 0; i < n1; i++) {
        const double *bi = B + (size_t)i * m;
        for (int64_t pa = Ap[i]; pa < Ap[i + 1]; pa++) {
            int a = (int)Ai[pa];
            double x = w[i] * Ax[pa];
            for (int64_t pb = Ap[i]; pb <= pa; pb++) M[a * Q + Ai[pb]] -= x * Ax[pb];
            for (int c = 0; c < m; c++) G[a * m + c] -= x * bi[c];
        }
    }
    for (int a = 0; a < Q; a++) {
        for (int b = 0; b <= a; b++) M[a * Q + b] *= lamR[a] * lamR[b];
        M[a * Q + a] += 1.0;
        for (int c = 0; c < m; c++) G[a * m + c] *= lamR[a];
    }
    if (!chol(M, Q)) return 0;
    for (int a = 0; a < Q; a++) *logdetR += 2.0 * log(M[a * Q + a]);
    return 1;
}

/*
 * Several random-effects terms of any size, blockwise: the first term (the
 * most levels) per level, the rest's Schur complement dense
 * (multilevel.lmm.criterion's layout, for a small or middling rest block).
 *   D1 (n1, q1, q1), B1 (n1, q1, m)  the first term's Z_i^T Z_i, Z_i^T [X y]
 *   Ap (n1 + 1), Ai, Ax              Z_1^T Z_R by level of the first term: level
 *                                    i meets the rest columns Ai[Ap[i] .. Ap[i+1])
 *                                    (whole rest levels, ascending); its q1 rows
 *                                    of them, row-major, from Ax + q1 Ap[i]
 *   ARR (Qr, Qr), ARF (Qr, m), AFF (m, m)
 *   Rr (2, Qr)                       A_RR's row a is zero outside [Rr[0, a], Rr[1, a])
 *                                    (whole rest levels)
 *   perm (Qr)                        rest column a is row perm[a] of the Schur
 *                                    complement S below (an ordering that keeps its
 *                                    envelope narrow; the kept factorization is
 *                                    asked for in the identity's)
 *   qk, nk (K)                       each term's columns and levels (int64)
 * With S_i = T1^T D_i T1 + I = L_i L_i^T, W_i = L_i^{-1} T1^T, C1_i = W_i B_i,
 * Y_i = A_R1,i T1 (Qr x q1), MR1_i = Lam_R^T Y_i, L21_i = MR1_i L_i^{-T}:
 *   S = Lam_R^T ARR Lam_R + I - sum L21_i L21_i^T = L22 L22^T,
 *   MRF = Lam_R^T ARF - sum L21_i C1_i,  C_R = L22^{-1} MRF,
 *   MFF = AFF - sum C1_i^T C1_i - C_R^T C_R = L_F L_F^T,
 * the blocked Cholesky factor of M = Lam^T A Lam + I and [X y]'s.  Y_i,
 * MR1_i and L21_i are nonzero only on level i's rest columns (Lam_R keeps
 * each rest level's columns together), so a level costs O(nz_i^2 q1) and a
 * nested rest (each level meeting one rest level) stays cheap however many
 * rest columns there are.  For theta_j, an entry (r, c) of T_k, dCrit = sum
 * over the levels of Gam[o + r, o + c] with Gam = 2 A Lam M^{-1} + 2 H Om
 * U^T (G = Lam^T A_ZF, U = M^{-1} G, H = A Lam U - A_ZF, Om = (n - p)/r^2
 * z z^T + [P 0; 0 0] for REML, n/r^2 z z^T for ML, z = (-beta, 1), P =
 * (L_X L_X^T)^{-1}: d log|M| = 2 <A Lam M^{-1}, dLam>, tr(Om dMFF) = 2 <H
 * Om U^T, dLam>), formed on Lam's diagonal blocks only, from the blocks of
 * K = M^{-1}: K_RR = S^{-1}, K_Ri = -X_i with X_i = S^{-1} MR1_i S_i^{-1},
 * K_ii = S_i^{-1} + S_i^{-1} MR1_i^T X_i; so for level i of the first term
 *   (A Lam K)_ii = D_i T1 K_ii - A_1R,i Lam_R X_i,
 * and on the rest's diagonal (A Lam K)_RR = -sum Y_i X_i^T + ARR Lam_R S^{-1}.
 * Each of these reads X_i only on level i's rest columns.  With U = M^{-1} G
 * (U_R = L22^{-T} C_R, U1_i = L_i^{-T}(C1_i - L21_i^T U_R)), H1_i = D_i T1
 * U1_i + A_1R,i Lam_R U_R - B_i and H_R = sum Y_i U1_i + ARR Lam_R U_R - ARF.
 * Work per evaluation O(sum_i nz_i^2 q1 + Qr^3 + Qr^2 (q + m)).
 */
/* A kept factorization's result: (log|S_1|, log|M_RR|), None where a block
 * was not positive definite, MemoryError where work space was not had. */
static PyObject *kept_result(int nomem, int ok, double logdet1, double logdetR) {
    if (nomem) return PyErr_NoMemory();
    if (!ok) Py_RETURN_NONE;
    return Py_BuildValue("(dd)", logdet1, logdetR);
}

typedef struct {
    int n1, q1, Qr, m, K;
    const double *D1, *B1;
    const int64_t *Ap, *Ai;
    const double *Ax, *ARR;
    const int64_t *Rlo, *Rhi; /* A_RR's row a is zero outside [Rlo[a], Rhi[a]) (whole rest levels) */
    const int64_t *perm;      /* rest column a is row perm[a] of S, MRF, CR and their factor */
    const double *ARF, *AFF;
    const int64_t *qk, *nk;
    /* filled by blocked_factor; Y, L21 (nz_i x q1 per level) from q1 Ap[i] */
    double *T1, *LamR, *L, *W, *C1, *Y, *L21, *S, *MRF, *CR, *MFF;
    int64_t *rblk, *rsz; /* each rest column's block start and size */
    int64_t *first;      /* S's envelope (Qr), and its inverse factor's (Qr) */
    int lapack;          /* S factored by LAPACK (its envelope was wide) */
    double logdet1, logdetR;
} Blocked;

/* The rest block's Schur complement is factored within its envelope: row
 * i of a matrix and of its Cholesky factor are zero before the same column
 * first[i] (nested rest levels make it block diagonal, and then these cost
 * O(n q^2) where the dense loops cost O(n^3)). */

/* lower Cholesky of the n x n matrix a (row-major, lower triangle read) in
 * place within its envelope first (row i zero before column first[i]); 0 if
 * not positive definite */
static int env_chol(double *a, int n, const int64_t *first) {
    for (int j = 0; j < n; j++) {
        double *aj = a + (size_t)j * n;
        int fj = (int)first[j];
        double d = aj[j] - dot(aj + fj, aj + fj, (size_t)(j - fj));
        if (!(d > 0.0)) return 0;
        d = sqrt(d);
        aj[j] = d;
        for (int i = j + 1; i < n; i++) {
            if (first[i] > j) continue;
            double *ai = a + (size_t)i * n;
            int k0 = first[i] > fj ? (int)first[i] : fj;
            ai[j] = (ai[j] - dot(ai + k0, aj + k0, (size_t)(j - k0))) / d;
        }
    }
    return 1;
}

/* L X = B (forward) or L^T X = B (back) in place, L from env_chol, X with r
 * columns (row-major n x r); both read L by rows */
static void env_solve(const double *L, const int64_t *first, double *X, int n, int r,
                      int transpose) {
    if (!transpose) {
        for (int i = 0; i < n; i++) {
            const double *li = L + (size_t)i * n;
            double *xi = X + (size_t)i * r;
            for (int k = (int)first[i]; k < i; k++) {
                double l = li[k];
                const double *xk = X + (size_t)k * r;
                for (int c = 0; c < r; c++) xi[c] -= l * xk[c];
            }
            for (int c = 0; c < r; c++) xi[c] /= li[i];
        }
    } else {
        for (int i = n - 1; i >= 0; i--) {
            const double *li = L + (size_t)i * n;
            double *xi = X + (size_t)i * r;
            for (int c = 0; c < r; c++) xi[c] /= li[i];
            for (int k = (int)first[i]; k < i; k++) {
                double l = li[k];
                double *xk = X + (size_t)k * r;
                for (int c = 0; c < r; c++) xk[c] -= l * xi[c];
            }
        }
    }
}

/* S^{-1} on the envelope of L = env_chol(S), both triangles, by
 * Takahashi's equations: for i >= j, Z_ij = (delta_ij / L_jj - sum_{k > j}
 * L_kj Z_ik) / L_jj over the rows k of column j (first[k] <= j), columns from
 * the last; every Z_ik they read lies in the envelope and is already formed.
 * Entries outside the envelope are set to 0: the kernel reads S^{-1} only
 * where S itself is nonzero.  rows: n work. */
static void env_selected_inverse(const double *L, const int64_t *first, int64_t *rows, double *Z,
                                 int n) {
    memset(Z, 0, sizeof(double) * (size_t)n * n);
    for (int j = n - 1; j >= 0; j--) {
        int nk = 0;
        for (int k = j + 1; k < n; k++)
            if (first[k] <= j) rows[nk++] = k;
        double ljj = L[(size_t)j * n + j];
        /* the column's entries below the diagonal first: the diagonal reads them */
        for (int t = nk - 1; t >= -1; t--) {
            int64_t i = t >= 0 ? rows[t] : j;
            double s = 0.0;
            for (int u = 0; u < nk; u++) {
                int64_t k = rows[u];
                s += L[(size_t)k * n + j] * Z[i > k ? (size_t)i * n + k : (size_t)k * n + i];
            }
            Z[(size_t)i * n + j] = ((i == j ? 1.0 / ljj : 0.0) - s) / ljj;
        }
    }
    for (int i = 0; i < n; i++)
        for (int64_t j = first[i]; j < i; j++) Z[(size_t)j * n + i] = Z[(size_t)i * n + j];
}

/* S = L22 L22^T in place: within its envelope, or by LAPACK where the
 * envelope's work (the factor's sum w_i^2 / 2 and about as much for the
 * inverse on it) exceeds a fifth of LAPACK's Qr^3 for both (a crossed or
 * loosely nested rest, where blocked BLAS is several times these loops).  LAPACK's factor keeps the envelope's zeros too, so the
 * solves read both alike.  0 if S is not positive definite. */
static int rest_chol(Blocked *b) {
    int n = b->Qr;
    double work = 0.0;
    for (int i = 0; i < n; i++) {
        const double *si = b->S + (size_t)i * n;
        int f = 0;
        while (f < i && si[f] == 0.0) f++;
        b->first[i] = f;
        work += (double)(i - f) * (i - f);
    }
    b->lapack = lapack_potrf != NULL && lapack_potri != NULL && n >= 64 &&
                work > (double)n * n * n / 8.0;
    if (!b->lapack) return env_chol(b->S, n, b->first);
    char up = 'U'; /* row-major lower is column-major upper */
    int info = 0;
    lapack_potrf(&up, &n, b->S, &n, &info);
    return info == 0;
}

/* S^{-1} from rest_chol's factor: within the envelope, or (LAPACK) whole */
static void rest_inverse(Blocked *b, double *Sinv) {
    int n = b->Qr;
    if (!b->lapack) {
        env_selected_inverse(b->S, b->first, b->first + n, Sinv, n);
        return;
    }
    memcpy(Sinv, b->S, sizeof(double) * (size_t)n * n);
    char up = 'U';
    int info = 0;
    lapack_potri(&up, &n, Sinv, &n, &info);
    for (int a = 0; a < n; a++)
        for (int c = 0; c < a; c++) Sinv[(size_t)c * n + a] = Sinv[(size_t)a * n + c];
}

/* The first term's levels in blocked_factor: each level's factor, C1, Y and
 * L21 on its rest columns, and their updates of S, MRF and MFF.  Inlined
 * with q1 known at the call (the dispatch passes small q1 as constants, so
 * that the loops over q1 unroll).  0 if some S_i is not positive definite. */
__attribute__((always_inline)) static inline int blocked_levels(Blocked *b, const int q1) {
    int n1 = b->n1, Qr = b->Qr, m = b->m;
    size_t qq = (size_t)q1 * q1;
    const double *T1 = b->T1, *LamR = b->LamR;
    double Li[64 * 64], DT[64 * 64];
    for (int lev = 0; lev < n1; lev++) {
        const double *D = b->D1 + lev * qq, *B = b->B1 + (size_t)lev * q1 * m;
        double *L = b->L + lev * qq, *W = b->W + lev * qq, *C1 = b->C1 + (size_t)lev * q1 * m;
        int64_t o = b->Ap[lev];
        int nz = (int)(b->Ap[lev + 1] - o);
        const int64_t *ci = b->Ai + o;
        const double *Ai = b->Ax + o * q1; /* q1 rows of nz */
        double *Y = b->Y + o * q1, *L21 = b->L21 + o * q1;
        double ld = 0.0;
        if (!level_factor(D, T1, q1, L, DT, W, Li, &ld)) return 0;
        b->logdet1 += ld;
        for (int a = 0; a < q1; a++)
            for (int c = 0; c < m; c++) {
                double s = 0.0;
                for (int k = 0; k < q1; k++) s += W[a * q1 + k] * B[k * m + c];
                C1[a * m + c] = s;
            }
        /* Y = A_R1,i T1; L21 = Lam_R^T A_R1,i W^T, on the level's rest columns */
        for (int pa = 0; pa < nz; pa++)
            for (int c = 0; c < q1; c++) {
                double s = 0.0;
                for (int j = c; j < q1; j++) s += Ai[(size_t)j * nz + pa] * T1[j * q1 + c];
                Y[(size_t)pa * q1 + c] = s;
            }
        for (int pa = 0; pa < nz; pa++) {
            int64_t ga = ci[pa], ea = b->rblk[ga] + b->rsz[ga];
            for (int c = 0; c < q1; c++) {
                double s = 0.0;
                for (int j = 0; j < q1; j++) {
                    double aw = 0.0; /* (Lam_R^T A_R1,i)[ga, j] */
                    for (int64_t g = ga; g < ea; g++)
                        aw += LamR[(size_t)g * Qr + ga] * Ai[(size_t)j * nz + pa + (g - ga)];
                    s += aw * W[c * q1 + j];
                }
                L21[(size_t)pa * q1 + c] = s;
            }
        }
        for (int pa = 0; pa < nz; pa++) {
            const double *la = L21 + (size_t)pa * q1;
            int64_t sa = b->perm[ci[pa]];
            for (int pc = 0; pc <= pa; pc++) {
                const double *lc = L21 + (size_t)pc * q1;
                double s = 0.0;
                for (int j = 0; j < q1; j++) s += la[j] * lc[j];
                int64_t sc = b->perm[ci[pc]];
                b->S[sa > sc ? (size_t)sa * Qr + sc : (size_t)sc * Qr + sa] -= s;
            }
            for (int j = 0; j < m; j++) {
                double s = 0.0;
                for (int k = 0; k < q1; k++) s += la[k] * C1[k * m + j];
                b->MRF[(size_t)sa * m + j] -= s;
            }
        }
        for (int r = 0; r < m; r++)
            for (int c = 0; c <= r; c++) {
                double s = 0.0;
                for (int a = 0; a < q1; a++) s += C1[a * m + r] * C1[a * m + c];
                b->MFF[r * m + c] -= s;
            }
    }
    return 1;
}

static int blocked_factor(Blocked *b, const double *theta) {
    int q1 = b->q1, Qr = b->Qr, m = b->m;
    size_t qq = (size_t)q1 * q1;
    memset(b->T1, 0, sizeof(double) * qq);
    int e = 0;
    for (int c = 0; c < q1; c++)
        for (int r = c; r < q1; r++) b->T1[r * q1 + c] = theta[e++];
    memset(b->LamR, 0, sizeof(double) * (size_t)Qr * Qr);
    int col = 0;
    for (int k = 1; k < b->K; k++) {
        int q = (int)b->qk[k];
        for (int64_t l = 0; l < b->nk[k]; l++) {
            int t = e;
            for (int c = 0; c < q; c++)
                for (int r = c; r < q; r++) b->LamR[(size_t)(col + r) * Qr + col + c] = theta[t++];
            for (int a = 0; a < q; a++) {
                b->rblk[col + a] = col;
                b->rsz[col + a] = q;
            }
            col += q;
        }
        e += q * (q + 1) / 2;
    }
    const double *LamR = b->LamR;
    if (q1 > 64) return 0;
    b->logdet1 = 0.0;
    /* S = Lam_R^T ARR Lam_R + I (lower), MRF = Lam_R^T ARF */
    for (int a = 0; a < Qr; a++) {
        int64_t ea = b->rblk[a] + b->rsz[a];
        int64_t pa = b->perm[a];
        for (int c = (int)b->Rlo[a]; c <= a; c++) {
            int64_t ec = b->rblk[c] + b->rsz[c];
            double s = a == c ? 1.0 : 0.0;
            for (int64_t i = a; i < ea; i++)
                for (int64_t j = c; j < ec; j++)
                    s += LamR[(size_t)i * Qr + a] * b->ARR[(size_t)i * Qr + j] * LamR[(size_t)j * Qr + c];
            int64_t pc = b->perm[c];
            b->S[pa > pc ? (size_t)pa * Qr + pc : (size_t)pc * Qr + pa] = s;
        }
        for (int j = 0; j < m; j++) {
            double s = 0.0;
            for (int64_t i = a; i < ea; i++) s += LamR[(size_t)i * Qr + a] * b->ARF[(size_t)i * m + j];
            b->MRF[(size_t)pa * m + j] = s;
        }
    }
    memcpy(b->MFF, b->AFF, sizeof(double) * (size_t)m * m);
    int ok = q1 == 1   ? blocked_levels(b, 1)
             : q1 == 2 ? blocked_levels(b, 2)
             : q1 == 3 ? blocked_levels(b, 3)
                       : blocked_levels(b, q1);
    if (!ok) return 0;
    if (!rest_chol(b)) return 0;
    b->logdetR = 0.0;
    for (int a = 0; a < Qr; a++) b->logdetR += 2.0 * log(b->S[(size_t)a * Qr + a]);
    memcpy(b->CR, b->MRF, sizeof(double) * (size_t)Qr * m);
    env_solve(b->S, b->first, b->CR, Qr, m, 0);
    for (int r = 0; r < m; r++)
        for (int c = 0; c <= r; c++) {
            double s = 0.0;
            for (int a = 0; a < Qr; a++) s += b->CR[(size_t)a * m + r] * b->CR[(size_t)a * m + c];
            b->MFF[r * m + c] -= s;
        }
    return chol(b->MFF, m);
}

/* the buffers of a Blocked problem, in one allocation (NULL if none) */
static double *blocked_alloc(Blocked *b, size_t extra) {
    size_t n1 = b->n1, q1 = b->q1, Qr = b->Qr, m = b->m, nnz = (size_t)b->Ap[n1];
    size_t total = q1 * q1 + Qr * Qr + 2 * n1 * q1 * q1 + n1 * q1 * m + 2 * nnz * q1 +
                   Qr * Qr + 2 * Qr * m + m * m + extra + 1;
    double *w = calloc(total, sizeof(double));
    int64_t *ib = malloc(sizeof(int64_t) * (4 * Qr + 1));
    if (!w || !ib) {
        free(w);
        free(ib);
        return NULL;
    }
    b->rblk = ib;
    b->rsz = ib + Qr;
    b->first = ib + 2 * Qr;
    b->T1 = w;
    b->LamR = b->T1 + q1 * q1;
    b->L = b->LamR + Qr * Qr;
    b->W = b->L + n1 * q1 * q1;
    b->C1 = b->W + n1 * q1 * q1;
    b->Y = b->C1 + n1 * q1 * m;
    b->L21 = b->Y + nnz * q1;
    b->S = b->L21 + nnz * q1;
    b->MRF = b->S + Qr * Qr;
    b->CR = b->MRF + Qr * m;
    b->MFF = b->CR + Qr * m;
    return b->MFF + m * m; /* the extra space */
}

static void blocked_free(Blocked *b) {
    free(b->T1);
    free(b->rblk);
}

/* the most rest columns one level of the first term meets */
static int blocked_nzmax(const Blocked *b) {
    int64_t mx = 0;
    for (int lev = 0; lev < b->n1; lev++) {
        int64_t nz = b->Ap[lev + 1] - b->Ap[lev];
        if (nz > mx) mx = nz;
    }
    return (int)mx;
}

/* Work space and results of the gradient's pass over the first term's
 * levels (blocked_terms): U1 and U_R, H_R and the rest's (Y_i X_i^T)
 * diagonal blocks YX accumulated, the first term's gradient sums g0. */
typedef struct {
    double *U1, *UR, *HR, *Sinv, *YX, *Om, *Si, *Kii, *G1, *DT, *V, *Z, *X, *H1, *tq, *g0;
    int qmax;
} GradWork;

/* The gradient's pass over the first term's levels, inlined with q1 known
 * at the call (as blocked_levels). */
__attribute__((always_inline)) static inline void blocked_grad_levels(const Blocked *b,
                                                                       const int q1,
                                                                       GradWork *w) {
    int n1 = b->n1, Qr = b->Qr, m = b->m, qmax = w->qmax;
    double *U1 = w->U1, *HR = w->HR, *YX = w->YX, *Si = w->Si, *Kii = w->Kii, *G1 = w->G1;
    double *DT = w->DT, *V = w->V, *Z = w->Z, *X = w->X, *H1 = w->H1, *tq = w->tq, *g0 = w->g0;
    const double *UR = w->UR, *Sinv = w->Sinv, *Om = w->Om;
    for (int lev = 0; lev < n1; lev++) {
        const double *D = b->D1 + (size_t)lev * q1 * q1, *B = b->B1 + (size_t)lev * q1 * m;
        const double *L = b->L + (size_t)lev * q1 * q1, *C1 = b->C1 + (size_t)lev * q1 * m;
        int64_t o = b->Ap[lev];
        int nz = (int)(b->Ap[lev + 1] - o);
        const int64_t *ci = b->Ai + o;
        const double *Ai = b->Ax + o * q1;
        const double *Y = b->Y + o * q1, *L21 = b->L21 + o * q1;
        double *u1 = U1 + (size_t)lev * q1 * m;
        /* U1_i = L_i^{-T}(C1_i - L21_i^T U_R) */
        for (int a = 0; a < q1; a++)
            for (int j = 0; j < m; j++) {
                double s = C1[a * m + j];
                for (int pc = 0; pc < nz; pc++)
                    s -= L21[(size_t)pc * q1 + a] * UR[(size_t)ci[pc] * m + j];
                u1[a * m + j] = s;
            }
        tri_solve(L, u1, q1, m, 1);
        /* S_i^{-1} = L^{-T} L^{-1} */
        memset(Si, 0, sizeof(double) * (size_t)q1 * q1);
        for (int a = 0; a < q1; a++) Si[a * q1 + a] = 1.0;
        tri_solve(L, Si, q1, q1, 0);
        tri_solve(L, Si, q1, q1, 1);
        /* Z = MR1_i S_i^{-1} = L21_i L_i^{-1}; X_i = S^{-1} Z on the level's columns */
        for (int pa = 0; pa < nz; pa++)
            for (int c = 0; c < q1; c++) {
                double s = 0.0;
                for (int j = 0; j < q1; j++) {
                    double mr = 0.0; /* MR1_i[ga, j] = (L21_i L_i^T)[ga, j] */
                    for (int k = 0; k <= j; k++) mr += L21[(size_t)pa * q1 + k] * L[j * q1 + k];
                    s += mr * Si[j * q1 + c];
                }
                Z[(size_t)pa * q1 + c] = s;
            }
        for (int pa = 0; pa < nz; pa++) {
            const double *Sa = Sinv + (size_t)b->perm[ci[pa]] * Qr;
            for (int c = 0; c < q1; c++) {
                double s = 0.0;
                for (int pk = 0; pk < nz; pk++) s += Sa[b->perm[ci[pk]]] * Z[(size_t)pk * q1 + c];
                X[(size_t)pa * q1 + c] = s;
            }
        }
        /* K_ii = S_i^{-1} + Z^T X_i (Z^T = S_i^{-1} MR1_i^T) */
        for (int a = 0; a < q1; a++)
            for (int c = 0; c < q1; c++) {
                double s = Si[a * q1 + c];
                for (int pk = 0; pk < nz; pk++) s += Z[(size_t)pk * q1 + a] * X[(size_t)pk * q1 + c];
                Kii[a * q1 + c] = s;
            }
        /* V = A_1R,i Lam_R (q1 x nz) */
        for (int a = 0; a < q1; a++)
            for (int pc = 0; pc < nz; pc++) {
                int64_t gc = ci[pc], ec = b->rblk[gc] + b->rsz[gc];
                double s = 0.0;
                for (int64_t g = gc; g < ec; g++)
                    s += Ai[(size_t)a * nz + pc + (g - gc)] * b->LamR[(size_t)g * Qr + gc];
                V[(size_t)a * nz + pc] = s;
            }
        /* DT = D_i T1 */
        for (int a = 0; a < q1; a++)
            for (int c = 0; c < q1; c++) {
                double s = 0.0;
                for (int j = c; j < q1; j++) s += D[a * q1 + j] * b->T1[j * q1 + c];
                DT[a * q1 + c] = s;
            }
        /* H1 = DT U1 + V U_R - B; Gam_i = DT K_ii - V X_i + H1 Om U1^T */
        for (int a = 0; a < q1; a++)
            for (int j = 0; j < m; j++) {
                double s = -B[a * m + j];
                for (int c = 0; c < q1; c++) s += DT[a * q1 + c] * u1[c * m + j];
                for (int pc = 0; pc < nz; pc++)
                    s += V[(size_t)a * nz + pc] * UR[(size_t)ci[pc] * m + j];
                H1[a * m + j] = s;
            }
        mat_mul(H1, Om, tq, q1, m, m);
        for (int a = 0; a < q1; a++)
            for (int c = 0; c < q1; c++) {
                double s = 0.0;
                for (int k = 0; k < q1; k++) s += DT[a * q1 + k] * Kii[k * q1 + c];
                for (int pk = 0; pk < nz; pk++) s -= V[(size_t)a * nz + pk] * X[(size_t)pk * q1 + c];
                for (int j = 0; j < m; j++) s += tq[a * m + j] * u1[c * m + j];
                G1[a * q1 + c] = s;
            }
        int t = 0;
        for (int c = 0; c < q1; c++)
            for (int r = c; r < q1; r++) g0[t++] += G1[r * q1 + c];
        /* H_R += Y_i U1_i; (Y_i X_i^T) on the rest's diagonal blocks */
        for (int pa = 0; pa < nz; pa++) {
            int64_t ga = ci[pa], lo = pa - (ga - b->rblk[ga]);
            for (int j = 0; j < m; j++) {
                double s = 0.0;
                for (int c = 0; c < q1; c++) s += Y[(size_t)pa * q1 + c] * u1[c * m + j];
                HR[(size_t)ga * m + j] += s;
            }
            for (int64_t t2 = 0; t2 < b->rsz[ga]; t2++) {
                const double *xb = X + (size_t)(lo + t2) * q1;
                double s = 0.0;
                for (int c = 0; c < q1; c++) s += Y[(size_t)pa * q1 + c] * xb[c];
                YX[(size_t)ga * qmax + t2] += s;
            }
        }
    }
}

#define BLOCKED_ARGS "y*y*y*y*y*y*y*y*y*y*y*y*"
#define BLOCKED_BUFS &bD, &bB, &bAp, &bAi, &bAx, &bARR, &bRr, &bperm, &bARF, &bAFF, &bq, &bn
#define BLOCKED_INIT(b)                                                                    \
    Blocked b = {n1, q1, Qr, m, K, bD.buf, bB.buf, bAp.buf, bAi.buf, bAx.buf, bARR.buf,   \
                 bRr.buf, (const int64_t *)bRr.buf + Qr, bperm.buf, bARF.buf, bAFF.buf,   \
                 bq.buf, bn.buf}

static PyObject *blocked_terms(PyObject *self, PyObject *args) {
    Py_buffer bD, bB, bAp, bAi, bAx, bARR, bRr, bperm, bARF, bAFF, bq, bn, bth, bg;
    int n1, q1, Qr, m, K, reml, want_grad;
    double nobs;
    if (!PyArg_ParseTuple(args, BLOCKED_ARGS "y*w*iiiiidii", BLOCKED_BUFS, &bth, &bg, &n1, &q1,
                          &Qr, &m, &K, &nobs, &reml, &want_grad))
        return NULL;
    BLOCKED_INIT(b);
    const double *theta = bth.buf;
    double *grad = bg.buf;
    int p = m - 1, qmax = q1;
    for (int k = 1; k < K; k++)
        if (b.qk[k] > qmax) qmax = (int)b.qk[k];
    int nzmax = blocked_nzmax(&b);
    size_t nq = (size_t)n1 * q1, Zq = (size_t)nzmax * q1, mm = (size_t)m * m;
    size_t extra = 5 * mm + (size_t)m + (size_t)Qr * m * 3 + nq * m + 2 * (size_t)Qr * Qr +
                   (size_t)Qr * qmax + 4 * (size_t)q1 * q1 + 3 * Zq + (size_t)q1 * m * 2;
    double *x = blocked_alloc(&b, extra), value = INFINITY;
    if (!x) {
        release(14, BLOCKED_BUFS, &bth, &bg);
        return PyErr_NoMemory();
    }
    if (blocked_factor(&b, theta)) {
        double r2;
        value = profiled_value(b.MFF, m, b.logdet1 + b.logdetR, nobs, reml, &r2);
        if (want_grad && r2 > 0) {
            double *LX = x, *LXinv = LX + mm, *P = LXinv + mm, *Om = P + mm, *z = Om + mm;
            double *UR = z + m, *HR = UR + (size_t)Qr * m, *U1 = HR + (size_t)Qr * m;
            double *Sinv = U1 + nq * m, *ARL = Sinv + (size_t)Qr * Qr, *Lwork = ARL + (size_t)Qr * Qr;
            double *YX = Lwork + (size_t)Qr * m, *Si = YX + (size_t)Qr * qmax;
            double *Kii = Si + (size_t)q1 * q1, *G1 = Kii + (size_t)q1 * q1;
            double *DT = G1 + (size_t)q1 * q1, *V = DT + (size_t)q1 * q1, *Z = V + Zq;
            double *X = Z + Zq, *H1 = X + Zq, *tq = H1 + (size_t)q1 * m;
            beta_and_P(b.MFF, m, LX, LXinv, z, P);
            double kk = (reml ? nobs - p : nobs) / r2;
            for (int r = 0; r < m; r++)
                for (int c = 0; c < m; c++)
                    Om[r * m + c] = kk * z[r] * z[c] + (reml && r < p && c < p ? P[r * p + c] : 0.0);
            /* U_R = L22^{-T} C_R, S^{-1} */
            memcpy(Lwork, b.CR, sizeof(double) * (size_t)Qr * m);
            env_solve(b.S, b.first, Lwork, Qr, m, 1);
            for (int a = 0; a < Qr; a++)
                memcpy(UR + (size_t)a * m, Lwork + (size_t)b.perm[a] * m, sizeof(double) * m);
            rest_inverse(&b, Sinv);
            /* ARL = ARR Lam_R; H_R starts at ARR Lam_R U_R - ARF */
            memset(ARL, 0, sizeof(double) * (size_t)Qr * Qr);
            for (int a = 0; a < Qr; a++)
                for (int c = (int)b.Rlo[a]; c < b.Rhi[a]; c++) {
                    int64_t ec = b.rblk[c] + b.rsz[c];
                    double s = 0.0;
                    for (int64_t i = c; i < ec; i++) s += b.ARR[(size_t)a * Qr + i] * b.LamR[(size_t)i * Qr + c];
                    ARL[(size_t)a * Qr + c] = s;
                }
            for (int a = 0; a < Qr; a++)
                for (int j = 0; j < m; j++) {
                    double s = -b.ARF[(size_t)a * m + j];
                    for (int c = (int)b.Rlo[a]; c < b.Rhi[a]; c++) s += ARL[(size_t)a * Qr + c] * UR[(size_t)c * m + j];
                    HR[(size_t)a * m + j] = s;
                }
            memset(YX, 0, sizeof(double) * (size_t)Qr * qmax);
            int npar0 = q1 * (q1 + 1) / 2;
            double g0[64 * 65 / 2];
            for (int t = 0; t < npar0; t++) g0[t] = 0.0;
            GradWork gw = {U1, UR, HR, Sinv, YX, Om, Si, Kii, G1, DT, V, Z, X, H1, tq, g0, qmax};
            if (q1 == 1)
                blocked_grad_levels(&b, 1, &gw);
            else if (q1 == 2)
                blocked_grad_levels(&b, 2, &gw);
            else if (q1 == 3)
                blocked_grad_levels(&b, 3, &gw);
            else
                blocked_grad_levels(&b, q1, &gw);
            for (int t = 0; t < npar0; t++) grad[t] = 2.0 * g0[t];
            /* the rest terms' diagonal blocks */
            int gk = npar0, col = 0;
            for (int k = 1; k < K; k++) {
                int q = (int)b.qk[k], e = 0;
                for (int c = 0; c < q; c++)
                    for (int r = c; r < q; r++) {
                        double s = 0.0;
                        for (int64_t l = 0; l < b.nk[k]; l++) {
                            size_t a = (size_t)col + (size_t)l * q + r, bb = (size_t)col + (size_t)l * q + c;
                            double g1 = -YX[a * qmax + c], g2 = 0.0;
                            const double *Sb = Sinv + (size_t)b.perm[bb] * Qr;
                            for (int64_t i = b.Rlo[a]; i < b.Rhi[a]; i++) g1 += ARL[a * Qr + i] * Sb[b.perm[i]];
                            for (int j = 0; j < m; j++) {
                                double ho = 0.0;
                                for (int i = 0; i < m; i++) ho += HR[a * m + i] * Om[i * m + j];
                                g2 += ho * UR[bb * m + j];
                            }
                            s += g1 + g2;
                        }
                        grad[gk + e++] = 2.0 * s;
                    }
                gk += q * (q + 1) / 2;
                col += q * (int)b.nk[k];
            }
        }
    }
    blocked_free(&b);
    release(14, BLOCKED_BUFS, &bth, &bg);
    return PyFloat_FromDouble(value);
}

/* The kept factorization of blocked_terms at theta in the blockwise layout
 * of multilevel.lmm.criterion, and its solution: L1, W (n1, q1, q1), C1F
 * (n1, q1, m), LR (Qr x Qr lower, column-major: L22), MRF (Qr, m), schur
 * (m, m: C_R^T C_R), LFF (m, m), beta (p), u (n1 q1 + Qr: u_R =
 * L22^{-T} C_R z, u1_i = L_i^{-T}(C1_i z - L21_i^T u_R)).  Returns
 * (log|S_1|, log|M_RR|), or None where a block is not positive definite. */
static PyObject *blocked_terms_factor(PyObject *self, PyObject *args) {
    Py_buffer bD, bB, bAp, bAi, bAx, bARR, bRr, bperm, bARF, bAFF, bq, bn, bth;
    Py_buffer bL1, bW, bC1, bLR, bMRF, bS, bLFF, bbeta, bu;
    int n1, q1, Qr, m, K;
    if (!PyArg_ParseTuple(args, BLOCKED_ARGS "y*w*w*w*w*w*w*w*w*w*iiiii", BLOCKED_BUFS, &bth,
                          &bL1, &bW, &bC1, &bLR, &bMRF, &bS, &bLFF, &bbeta, &bu, &n1, &q1, &Qr,
                          &m, &K))
        return NULL;
    BLOCKED_INIT(b);
    int p = m - 1;
    size_t mm = (size_t)m * m, nq = (size_t)n1 * q1;
    double *x = blocked_alloc(&b, 4 * mm + 2 * (size_t)m);
    int ok = 0;
    if (x && blocked_factor(&b, bth.buf)) {
        ok = 1;
        double *LX = x, *LXinv = LX + mm, *P = LXinv + mm, *z = P + mm;
        double *schur = bS.buf, *u = bu.buf, *LR = bLR.buf;
        memcpy(bL1.buf, b.L, sizeof(double) * nq * q1);
        memcpy(bW.buf, b.W, sizeof(double) * nq * q1);
        memcpy(bC1.buf, b.C1, sizeof(double) * nq * m);
        memcpy(bMRF.buf, b.MRF, sizeof(double) * (size_t)Qr * m);
        memcpy(bLFF.buf, b.MFF, sizeof(double) * mm);
        for (int a = 0; a < Qr; a++)
            for (int c = 0; c < Qr; c++) LR[(size_t)c * Qr + a] = c <= a ? b.S[(size_t)a * Qr + c] : 0.0;
        for (int r = 0; r < m; r++)
            for (int c = 0; c < m; c++) {
                double s = 0.0;
                for (int a = 0; a < Qr; a++) s += b.CR[(size_t)a * m + r] * b.CR[(size_t)a * m + c];
                schur[r * m + c] = s;
            }
        beta_and_P(b.MFF, m, LX, LXinv, z, P);
        for (int a = 0; a < p; a++) ((double *)bbeta.buf)[a] = -z[a];
        double *uR = u + nq;
        for (int a = 0; a < Qr; a++) {
            double s = 0.0;
            for (int j = 0; j < m; j++) s += b.CR[(size_t)a * m + j] * z[j];
            uR[a] = s;
        }
        env_solve(b.S, b.first, uR, Qr, 1, 1);
        for (int lev = 0; lev < n1; lev++) {
            const double *C1 = b.C1 + (size_t)lev * q1 * m;
            int64_t o = b.Ap[lev];
            int nz = (int)(b.Ap[lev + 1] - o);
            const int64_t *ci = b.Ai + o;
            const double *L21 = b.L21 + o * q1;
            double *ui = u + (size_t)lev * q1;
            for (int a = 0; a < q1; a++) {
                double s = 0.0;
                for (int j = 0; j < m; j++) s += C1[a * m + j] * z[j];
                for (int pc = 0; pc < nz; pc++) s -= L21[(size_t)pc * q1 + a] * uR[ci[pc]];
                ui[a] = s;
            }
            tri_solve(b.L + (size_t)lev * q1 * q1, ui, q1, 1, 1);
        }
    }
    double l1 = b.logdet1, lR = b.logdetR;
    if (x) blocked_free(&b);
    release(22, BLOCKED_BUFS, &bth, &bL1, &bW, &bC1, &bLR, &bMRF, &bS, &bLFF, &bbeta, &bu);
    return kept_result(!x, ok, l1, lR);
}

/* Everything the estimates at one theta need from several scalar terms (see
 * scalar_terms), for the kept factorization after the optimum: the first
 * term's pivots l1 (n1: sqrt(s_i)) and C1F (n1 x m: (t / l1_i) B_i), the
 * rest block's factor L (Q x Q, lower, column-major: the layout LAPACK
 * reads) with G (Q x m) and schur = G^T M^{-1} G (m x m), the [X y] factor
 * LFF (m x m, lower, row-major), and the solution: beta (p) and the
 * spherical modes u (n1 + Q; rest modes u_R = M^{-1} G z, z = (-beta, 1);
 * first term's u_i = (t / s_i)(B_i z - (A_1R Lam_R u_R)_i)).  C1F is
 * written column by column (m x n1: the level-last layout of the numpy
 * code), L as its transpose (L^T row-major is L column-major).  Returns
 * (log|S_1|, log|M|), or None where a block is not positive definite. */
static PyObject *scalar_terms_factor(PyObject *self, PyObject *args) {
    Py_buffer bd, bB, bAp, bAi, bAx, bARR, bARF, bAFF, bterm, bth;
    Py_buffer bl1, bC1, bL, bG, bS, bLFF, bbeta, bu;
    int n1, Q, m;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*w*w*w*w*w*w*w*w*iii", &bd, &bB, &bAp, &bAi,
                          &bAx, &bARR, &bARF, &bAFF, &bterm, &bth, &bl1, &bC1, &bL, &bG, &bS,
                          &bLFF, &bbeta, &bu, &n1, &Q, &m))
        return NULL;
    const double *d = bd.buf, *B = bB.buf, *Ax = bAx.buf, *AFF = bAFF.buf, *theta = bth.buf;
    const int64_t *Ap = bAp.buf, *Ai = bAi.buf;
    double *l1o = bl1.buf, *C1F = bC1.buf, *Lc = bL.buf, *G = bG.buf, *schur = bS.buf;
    double *LFF = bLFF.buf, *beta = bbeta.buf, *u = bu.buf;
    int p = m - 1;
    size_t QQ = (size_t)Q * Q, Qm = (size_t)Q * m, mm = (size_t)m * m;
    double *work = calloc(2 * (size_t)n1 + 2 * (size_t)Q + QQ + Qm + 3 * mm + (size_t)m + 1,
                          sizeof(double));
    int ok = 0;
    double logdet1 = 0.0, logdetR = 0.0;
    if (work) {
        double *s = work, *w = s + n1, *lamR = w + n1, *v = lamR + Q, *M = v + Q, *C = M + QQ;
        double *LX = C + Qm, *LXinv = LX + mm, *P = LXinv + mm, *z = P + mm;
        double t = theta[0];
        ok = scalar_rest(d, B, Ap, Ai, Ax, bARR.buf, bARF.buf, bterm.buf, theta, n1, Q, m, s, w,
                         lamR, M, G, &logdet1, &logdetR);
        if (ok) {
            for (int a = 0; a < Q; a++)
                for (int b = 0; b < Q; b++) Lc[b * Q + a] = M[a * Q + b];
            memcpy(C, G, sizeof(double) * Qm);
            tri_solve(M, C, Q, m, 0); /* C = L^{-1} G: schur = C^T C */
            for (int r = 0; r < m; r++)
                for (int c = 0; c <= r; c++) {
                    double x = 0.0;
                    for (int a = 0; a < Q; a++) x += C[a * m + r] * C[a * m + c];
                    schur[r * m + c] = schur[c * m + r] = x;
                }
            for (int i = 0; i < n1; i++) {
                double l = sqrt(s[i]), wi = t / l;
                l1o[i] = l;
                for (int c = 0; c < m; c++) C1F[(size_t)c * n1 + i] = wi * B[(size_t)i * m + c];
            }
            /* MFF = AFF - C1F^T C1F - schur (lower triangle), factored */
            memset(LFF, 0, sizeof(double) * mm);
            for (int r = 0; r < m; r++)
                for (int c = 0; c <= r; c++) {
                    double x = AFF[r * m + c] - schur[r * m + c];
                    for (int i = 0; i < n1; i++)
                        x -= C1F[(size_t)r * n1 + i] * C1F[(size_t)c * n1 + i];
                    LFF[r * m + c] = x;
                }
            ok = chol(LFF, m);
        }
        if (ok) {
            beta_and_P(LFF, m, LX, LXinv, z, P);
            for (int a = 0; a < p; a++) beta[a] = -z[a];
            /* u_R = M^{-1} G z */
            double *uR = u + n1;
            for (int a = 0; a < Q; a++) {
                double x = 0.0;
                for (int c = 0; c < m; c++) x += G[a * m + c] * z[c];
                uR[a] = x;
            }
            tri_solve(M, uR, Q, 1, 0);
            tri_solve(M, uR, Q, 1, 1);
            for (int a = 0; a < Q; a++) v[a] = lamR[a] * uR[a];
            for (int i = 0; i < n1; i++) {
                double x = 0.0;
                for (int c = 0; c < m; c++) x += B[(size_t)i * m + c] * z[c];
                for (int64_t pa = Ap[i]; pa < Ap[i + 1]; pa++) x -= Ax[pa] * v[Ai[pa]];
                u[i] = t * x / s[i];
            }
        }
    }
    free(work);
    release(18, &bd, &bB, &bAp, &bAi, &bAx, &bARR, &bARF, &bAFF, &bterm, &bth, &bl1, &bC1, &bL,
            &bG, &bS, &bLFF, &bbeta, &bu);
    return kept_result(!work, ok, logdet1, logdetR);
}

static PyObject *scalar_terms(PyObject *self, PyObject *args) {
    Py_buffer bd, bB, bAp, bAi, bAx, bARR, bARF, bAFF, bterm, bth, bg;
    int n1, Q, m, K, reml, want_grad;
    double nobs;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*w*iiiidii", &bd, &bB, &bAp, &bAi, &bAx, &bARR,
                          &bARF, &bAFF, &bterm, &bth, &bg, &n1, &Q, &m, &K, &nobs, &reml,
                          &want_grad))
        return NULL;
    const double *d = bd.buf, *B = bB.buf, *Ax = bAx.buf, *ARR = bARR.buf, *ARF = bARF.buf;
    const int64_t *Ap = bAp.buf, *Ai = bAi.buf;
    const double *AFF = bAFF.buf, *theta = bth.buf;
    const int64_t *term = bterm.buf;
    double *grad = bg.buf;
    int p = m - 1;
    double value = INFINITY;
    size_t QQ = (size_t)Q * Q, Qm = (size_t)Q * m, n1m = (size_t)n1 * m, mm = (size_t)m * m;
    size_t total = 3 * QQ + 4 * Qm + 2 * n1m + 4 * mm + 3 * (size_t)n1 + 6 * (size_t)Q + 3 * (size_t)m;
    double *work = calloc(total > 0 ? total : 1, sizeof(double));
    if (!work) {
        PyBuffer_Release(&bd); PyBuffer_Release(&bB); PyBuffer_Release(&bAp);
        PyBuffer_Release(&bAi); PyBuffer_Release(&bAx); PyBuffer_Release(&bARR);
        PyBuffer_Release(&bARF); PyBuffer_Release(&bAFF); PyBuffer_Release(&bterm);
        PyBuffer_Release(&bth); PyBuffer_Release(&bg);
        return PyErr_NoMemory();
    }
    double *M = work, *Minv = M + QQ, *AL = Minv + QQ;                 /* Q x Q each */
    double *G = AL + QQ, *UR = G + Qm, *abR = UR + Qm, *tmpQ = abR + Qm; /* Q x m each */
    double *U1 = tmpQ + Qm, *ab1 = U1 + n1m;                            /* n1 x m each */
    double *MFF = ab1 + n1m, *LXinv = MFF + mm, *P = LXinv + mm, *LX = P + mm;
    double *s = LX + mm, *w = s + n1;
    double *lamR = w + 2 * (size_t)n1, *diagR = lamR + Q, *avR = diagR + 2 * (size_t)Q;
    double *z = avR + 3 * (size_t)Q;
    double l1 = theta[0];
    double logdet1 = 0.0, logdetR = 0.0;
    int ok = scalar_rest(d, B, Ap, Ai, Ax, ARR, ARF, term, theta, n1, Q, m, s, w, lamR, M, G,
                         &logdet1, &logdetR);
    double logdet = logdet1 + logdetR;
    if (ok) {
        memcpy(UR, G, sizeof(double) * Qm);
        tri_solve(M, UR, Q, m, 0);
        tri_solve(M, UR, Q, m, 1); /* UR = M^{-1} G */
        /* MFF = AFF - sum_i w_i b_i b_i^T - G^T UR (lower triangle) */
        for (int r = 0; r < m; r++)
            for (int c = 0; c <= r; c++) {
                double x = AFF[r * m + c];
                for (int i = 0; i < n1; i++) x -= w[i] * B[(size_t)i * m + r] * B[(size_t)i * m + c];
                for (int a = 0; a < Q; a++) x -= G[a * m + r] * UR[a * m + c];
                MFF[r * m + c] = x;
            }
        ok = chol(MFF, m);
    }
    if (ok) {
        double r2;
        value = profiled_value(MFF, m, logdet, nobs, reml, &r2);
        if (want_grad && r2 > 0) {
            beta_and_P(MFF, m, LX, LXinv, z, P);
            /* M^{-1}: solve against the identity */
            memset(Minv, 0, sizeof(double) * QQ);
            for (int a = 0; a < Q; a++) Minv[a * Q + a] = 1.0;
            tri_solve(M, Minv, Q, Q, 0);
            tri_solve(M, Minv, Q, Q, 1);
            for (int a = 0; a < Q; a++) diagR[a] = Minv[a * Q + a];
            /* AL = Lam M^{-1} Lam; tr_cross = sum_i (l1^2/s_i^2) a_i' AL a_i */
            for (int a = 0; a < Q; a++)
                for (int b = 0; b < Q; b++) AL[a * Q + b] = lamR[a] * Minv[a * Q + b] * lamR[b];
            double tr1 = 0.0;
            for (int i = 0; i < n1; i++) {
                double q2 = 0.0;
                for (int64_t pa = Ap[i]; pa < Ap[i + 1]; pa++) {
                    double x = 0.0;
                    for (int64_t pb = Ap[i]; pb < Ap[i + 1]; pb++) x += AL[Ai[pa] * Q + Ai[pb]] * Ax[pb];
                    q2 += Ax[pa] * x;
                }
                tr1 += 1.0 / s[i] + l1 * l1 / (s[i] * s[i]) * q2;
            }
            /* U1 = (l1 B - l1 A1R (lam_R UR)) / s */
            for (int a = 0; a < Q; a++)
                for (int c = 0; c < m; c++) tmpQ[a * m + c] = lamR[a] * UR[a * m + c];
            for (int i = 0; i < n1; i++) {
                for (int c = 0; c < m; c++) {
                    double x = B[(size_t)i * m + c];
                    for (int64_t pa = Ap[i]; pa < Ap[i + 1]; pa++) x -= Ax[pa] * tmpQ[Ai[pa] * m + c];
                    U1[(size_t)i * m + c] = l1 * x / s[i];
                }
            }
            /* A Lam U for every column: (d l1 U1 + A1R lam UR, A_R1 l1 U1 + ARR lam UR) */
            for (int a = 0; a < Q; a++)
                for (int c = 0; c < m; c++) {
                    double x = 0.0;
                    for (int b = 0; b < Q; b++) x += ARR[a * Q + b] * tmpQ[b * m + c];
                    abR[a * m + c] = x;
                }
            for (int i = 0; i < n1; i++) {
                for (int c = 0; c < m; c++) {
                    double lv = l1 * U1[(size_t)i * m + c];
                    double x = d[i] * lv;
                    for (int64_t pa = Ap[i]; pa < Ap[i + 1]; pa++) {
                        x += Ax[pa] * tmpQ[Ai[pa] * m + c];
                        abR[Ai[pa] * m + c] += Ax[pa] * lv;
                    }
                    ab1[(size_t)i * m + c] = x;
                }
            }
            /* u = U z, Z^T r = Z^T [X y] z - A Lam u (the columns' combination) */
            double dr2_0 = 0.0, e_0 = 0.0;
            for (int i = 0; i < n1; i++) {
                double ui = 0.0, zr = 0.0, ei = 0.0;
                const double *bi = B + (size_t)i * m, *u1i = U1 + (size_t)i * m, *abi = ab1 + (size_t)i * m;
                for (int c = 0; c < m; c++) {
                    ui += u1i[c] * z[c];
                    zr += (bi[c] - abi[c]) * z[c];
                }
                for (int a = 0; a < p; a++) {
                    double x = 0.0;
                    for (int b = 0; b < p; b++) x += (bi[b] - abi[b]) * P[b * p + a];
                    ei += x * u1i[a];
                }
                dr2_0 += -2.0 * zr * ui;
                e_0 += ei;
            }
            for (int k = 0; k < K; k++) {
                double lam_k = theta[k], trk = 0.0, dr2 = 0.0, ee = 0.0;
                int nk = 0;
                if (k == 0) {
                    trk = tr1;
                    nk = n1;
                    dr2 = dr2_0;
                    ee = e_0;
                } else {
                    for (int a = 0; a < Q; a++) {
                        if (term[a] != k) continue;
                        nk++;
                        trk += diagR[a];
                        double ua = 0.0, zr = 0.0, ea = 0.0;
                        for (int c = 0; c < m; c++) {
                            ua += UR[a * m + c] * z[c];
                            zr += (ARF[a * m + c] - abR[a * m + c]) * z[c];
                        }
                        for (int c2 = 0; c2 < p; c2++) {
                            double x = 0.0;
                            for (int b = 0; b < p; b++) x += (ARF[a * m + b] - abR[a * m + b]) * P[b * p + c2];
                            ea += x * UR[a * m + c2];
                        }
                        dr2 += -2.0 * zr * ua;
                        ee += ea;
                    }
                }
                double dZ = lam_k != 0.0 ? 2.0 * (nk - trk) / lam_k : 0.0;
                grad[k] = reml ? dZ - 2.0 * ee + (nobs - p) * dr2 / r2 : dZ + nobs * dr2 / r2;
            }
        }
    }
    free(work);
    PyBuffer_Release(&bd); PyBuffer_Release(&bB); PyBuffer_Release(&bAp);
    PyBuffer_Release(&bAi); PyBuffer_Release(&bAx); PyBuffer_Release(&bARR);
    PyBuffer_Release(&bARF); PyBuffer_Release(&bAFF); PyBuffer_Release(&bterm);
    PyBuffer_Release(&bth); PyBuffer_Release(&bg);
    return PyFloat_FromDouble(value);
}

/* The first term's blocks at theta, kept for the estimates after the optimum
 * (the value pass of one_term, with its per-level results written out):
 * L_i (chol of S_i = T^T D_i T + I), W_i = L_i^{-1} T^T and C_i = W_i B_i,
 * level-first, into L (nlev, q, q), W (nlev, q, q), C (nlev, q, m).
 * Returns sum_i log|S_i|, or None where some S_i is not positive definite. */
/* The per-level pass of level_factors into Lo, Wo, Co (level-first);
 * 0 where some S_i is not positive definite. */
static int levels_pass(const double *D, const double *B, const double *theta, int q, int m,
                       int nlev, double *Lo, double *Wo, double *Co, double *logdet) {
    size_t qq = (size_t)q * q;
    double *work = malloc(sizeof(double) * (3 * qq + 1));
    if (!work) return -1;
    double *T = work, *DT = T + qq, *Linv = DT + qq;
    memset(T, 0, sizeof(double) * qq);
    int k = 0;
    for (int j = 0; j < q; j++)
        for (int i = j; i < q; i++) T[i * q + j] = theta[k++];
    int ok = 1;
    for (int lev = 0; lev < nlev && ok; lev++) {
        double *S = Lo + qq * (size_t)lev, *W = Wo + qq * (size_t)lev;
        double *C = Co + (size_t)q * m * lev;
        const double *Bi = B + (size_t)q * m * lev;
        if (!level_factor(D + qq * (size_t)lev, T, q, S, DT, W, Linv, logdet)) {
            ok = 0;
            break;
        }
        for (int a = 0; a < q; a++)
            for (int c = 0; c < m; c++) {
                double s = 0.0;
                for (int b = 0; b < q; b++) s += W[a * q + b] * Bi[b * m + c];
                C[a * m + c] = s;
            }
    }
    free(work);
    return ok;
}

static PyObject *level_factors(PyObject *self, PyObject *args) {
    Py_buffer bD, bB, bth, bL, bW, bC;
    int q, m, nlev;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*w*iii", &bD, &bB, &bth, &bL, &bW, &bC, &q, &m, &nlev))
        return NULL;
    double logdet = 0.0;
    int ok = levels_pass(bD.buf, bB.buf, bth.buf, q, m, nlev, bL.buf, bW.buf, bC.buf, &logdet);
    release(6, &bD, &bB, &bth, &bL, &bW, &bC);
    if (ok < 0) return PyErr_NoMemory();
    if (!ok) Py_RETURN_NONE;
    return PyFloat_FromDouble(logdet);
}

/* One term's kept factorization at theta and its solution: the per-level
 * blocks of level_factors, the [X y] factor LFF of AFF - sum C_i^T C_i
 * (m x m, lower, the upper triangle zeroed), beta (p) and the spherical
 * modes u_i = L_i^{-T} C_i z (nlev x q), z = (-beta, 1).  Returns
 * sum_i log|S_i|, or None where a block is not positive definite. */
static PyObject *one_term_factor(PyObject *self, PyObject *args) {
    Py_buffer bD, bB, bA, bth, bL, bW, bC, bLFF, bbeta, bu;
    int q, m, nlev;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*w*w*w*w*w*iii", &bD, &bB, &bA, &bth, &bL, &bW, &bC,
                          &bLFF, &bbeta, &bu, &q, &m, &nlev))
        return NULL;
    double logdet = 0.0;
    int ok = levels_pass(bD.buf, bB.buf, bth.buf, q, m, nlev, bL.buf, bW.buf, bC.buf, &logdet);
    int p = m - 1;
    size_t mm = (size_t)m * m;
    double *LFF = bLFF.buf, *u = bu.buf, *beta = bbeta.buf;
    const double *C = bC.buf, *L = bL.buf, *AFF = bA.buf;
    double *work = ok > 0 ? malloc(sizeof(double) * (3 * mm + (size_t)m + 1)) : NULL;
    if (ok > 0 && !work) ok = -1;
    if (ok > 0) {
        for (int r = 0; r < m; r++)
            for (int c = 0; c < m; c++) {
                double s = c <= r ? AFF[r * m + c] : 0.0;
                if (c <= r)
                    for (size_t i = 0; i < (size_t)nlev * q; i++) s -= C[i * m + r] * C[i * m + c];
                LFF[r * m + c] = s;
            }
        ok = chol(LFF, m);
    }
    if (ok > 0) {
        double *LX = work, *LXinv = LX + mm, *P = LXinv + mm, *z = P + mm;
        beta_and_P(LFF, m, LX, LXinv, z, P);
        for (int a = 0; a < p; a++) beta[a] = -z[a];
        for (int lev = 0; lev < nlev; lev++) {
            double *ui = u + (size_t)lev * q;
            for (int a = 0; a < q; a++) {
                double s = 0.0;
                for (int c = 0; c < m; c++) s += C[((size_t)lev * q + a) * m + c] * z[c];
                ui[a] = s;
            }
            tri_solve(L + (size_t)lev * q * q, ui, q, 1, 1);
        }
    }
    free(work);
    release(10, &bD, &bB, &bA, &bth, &bL, &bW, &bC, &bLFF, &bbeta, &bu);
    if (ok < 0) return PyErr_NoMemory();
    if (!ok) Py_RETURN_NONE;
    return PyFloat_FromDouble(logdet);
}

/* In place, per level: X_i <- L_i^{-T} X_i with L (nlev, q, q) lower and
 * X (nlev, q, r), both level-first (the conditional modes from the factor). */
static PyObject *level_solve_t(PyObject *self, PyObject *args) {
    Py_buffer bL, bX;
    int q, r, nlev;
    if (!PyArg_ParseTuple(args, "y*w*iii", &bL, &bX, &q, &r, &nlev)) return NULL;
    const double *L = bL.buf;
    double *X = bX.buf;
    for (int lev = 0; lev < nlev; lev++)
        tri_solve(L + (size_t)q * q * lev, X + (size_t)q * r * lev, q, r, 1);
    PyBuffer_Release(&bL); PyBuffer_Release(&bX);
    Py_RETURN_NONE;
}

/* The sums behind one term's moment start (multilevel.lmm.start): with
 * zr_i = B_i z (Z_i^T r), over the levels whose D_i - c_i I is positive
 * definite (c_i = 1e-8 max(tr D_i, 1e-300): the smallest eigenvalue clears
 * it), b_i = D_i^{-1} zr_i, weighted by w_i = tr D_i:  bb = sum w_i b_i b_i^T,
 * Dinv = sum w_i D_i^{-1} (q x q, row-major, zeroed by the caller).  Returns
 * (levels used, sum b_i . zr_i, sum w_i). */
static PyObject *one_term_moments(PyObject *self, PyObject *args) {
    Py_buffer bD, bB, bz, bbb, bDi;
    int q, m, nlev;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*iii", &bD, &bB, &bz, &bbb, &bDi, &q, &m, &nlev))
        return NULL;
    const double *D = bD.buf, *B = bB.buf, *z = bz.buf;
    double *bb = bbb.buf, *Dsum = bDi.buf;
    size_t qq = (size_t)q * q;
    double *work = malloc(sizeof(double) * (3 * qq + 2 * q + 1));
    if (!work) {
        PyBuffer_Release(&bD); PyBuffer_Release(&bB); PyBuffer_Release(&bz);
        PyBuffer_Release(&bbb); PyBuffer_Release(&bDi);
        return PyErr_NoMemory();
    }
    double *A = work, *Linv = A + qq, *Di = Linv + qq, *zr = Di + qq, *b = zr + q;
    long used = 0;
    double fitted = 0.0, wsum = 0.0;
    for (int lev = 0; lev < nlev; lev++) {
        const double *Dl = D + qq * (size_t)lev, *Bl = B + (size_t)q * m * lev;
        double tr = 0.0;
        for (int a = 0; a < q; a++) tr += Dl[a * q + a];
        double c = 1e-8 * (tr > 1e-300 ? tr : 1e-300);
        memcpy(A, Dl, sizeof(double) * qq);
        for (int a = 0; a < q; a++) A[a * q + a] -= c;
        if (!chol(A, q)) continue;
        memcpy(A, Dl, sizeof(double) * qq);
        if (!chol(A, q)) continue;
        tri_inv(A, Linv, q);
        for (int a = 0; a < q; a++)
            for (int e = 0; e < q; e++) {
                double s = 0.0;
                for (int k = (a > e ? a : e); k < q; k++) s += Linv[k * q + a] * Linv[k * q + e];
                Di[a * q + e] = s;
            }
        mat_vec(Bl, z, zr, q, m);
        mat_vec(Di, zr, b, q, q);
        for (int a = 0; a < q; a++) fitted += b[a] * zr[a];
        for (int a = 0; a < q; a++)
            for (int e = 0; e < q; e++) {
                bb[a * q + e] += tr * (b[a] * b[e]);
                Dsum[a * q + e] += tr * Di[a * q + e];
            }
        wsum += tr;
        used++;
    }
    free(work);
    PyBuffer_Release(&bD); PyBuffer_Release(&bB); PyBuffer_Release(&bz);
    PyBuffer_Release(&bbb); PyBuffer_Release(&bDi);
    return Py_BuildValue("ldd", used, fitted, wsum);
}

/* The moment equations of several scalar terms (multilevel.lmm.start,
 * moment_start_scalar), from the data of scalar_terms: with zr = Z^T r
 * (r = [X y] z), d the diagonal of Z^T Z (A_1R and A_RR in CSR, int64
 * indices), inv = 1/d where d is clearly
 * positive (0 elsewhere), t(.) the term of a level and c_j = 1^T Z_j's entries:
 *   S[k, j] = sum over levels l of k, m of j of A_lm^2 inv_l  - |c_j|^2/n  (k, j < K)
 *   S[K, j] = tr Z_j^T Z_j - |c_j|^2/n,  S[k, K] = (usable levels of k) - 1
 *   rhs[k]  = sum_{l in k} zr_l^2 inv_l
 * S ((K+1) x (K+1)) and rhs (K+1) zeroed by the caller; S[K, K] and rhs[K]
 * are the caller's.  Returns the fewest usable levels of a term. */
static PyObject *scalar_moments(PyObject *self, PyObject *args) {
    Py_buffer bd, bB, bAp, bAi, bAx, bRp, bRi, bRx, bARF, bterm, bz, bS, brhs;
    int n1, Q, m, K;
    double nobs;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*w*w*iiiid", &bd, &bB, &bAp, &bAi, &bAx,
                          &bRp, &bRi, &bRx, &bARF, &bterm, &bz, &bS, &brhs, &n1, &Q, &m, &K,
                          &nobs))
        return NULL;
    const double *d1 = bd.buf, *B = bB.buf, *Ax = bAx.buf, *Rx = bRx.buf, *ARF = bARF.buf;
    const double *z = bz.buf;
    const int64_t *Ap = bAp.buf, *Ai = bAi.buf, *Rp = bRp.buf, *Ri = bRi.buf, *term = bterm.buf;
    double *S = bS.buf, *rhs = brhs.buf;
    int K1 = K + 1;
    double *work = malloc(sizeof(double) * (3 * (size_t)Q + 2 * (size_t)n1 + 2 * (size_t)K + 2));
    long *used = calloc((size_t)K + 1, sizeof(long));
    int nomem = !work || !used;
    long fewest = 0;
    if (!nomem) {
        double *invR = work, *colR = invR + Q, *dR = colR + Q, *inv1 = dR + Q;
        double *csq = inv1 + n1, *dsum = csq + K;
        double max1 = 1e-300, maxR = 1e-300;
        for (int i = 0; i < n1; i++) if (d1[i] > max1) max1 = d1[i];
        for (int r = 0; r < Q; r++) {
            dR[r] = 0.0;
            for (int64_t e = Rp[r]; e < Rp[r + 1]; e++)
                if (Ri[e] == r) dR[r] += Rx[e];
            if (dR[r] > maxR) maxR = dR[r];
            colR[r] = 0.0;
        }
        for (int k = 0; k < K; k++) csq[k] = dsum[k] = 0.0;
        for (int i = 0; i < n1; i++) {
            int ok = d1[i] > 1e-12 * max1;
            inv1[i] = ok ? 1.0 / d1[i] : 0.0;
            if (ok) { S[0] += d1[i]; used[0]++; }
            double zr = 0.0;
            for (int c = 0; c < m; c++) zr += B[(size_t)i * m + c] * z[c];
            rhs[0] += zr * zr * inv1[i];
            csq[0] += d1[i] * d1[i];
            dsum[0] += d1[i];
        }
        for (int r = 0; r < Q; r++) {
            int ok = dR[r] > 1e-12 * maxR;
            invR[r] = ok ? 1.0 / dR[r] : 0.0;
            int k = (int)term[r];
            if (ok) used[k]++;
            double zr = 0.0;
            for (int c = 0; c < m; c++) zr += ARF[(size_t)r * m + c] * z[c];
            rhs[k] += zr * zr * invR[r];
            dsum[k] += dR[r];
        }
        for (int i = 0; i < n1; i++)
            for (int64_t e = Ap[i]; e < Ap[i + 1]; e++) {
                int64_t r = Ai[e];
                double a2 = Ax[e] * Ax[e];
                int k = (int)term[r];
                S[0 * K1 + k] += a2 * inv1[i];
                S[k * K1 + 0] += a2 * invR[r];
                colR[r] += Ax[e];
            }
        for (int r = 0; r < Q; r++) {
            int kr = (int)term[r];
            csq[kr] += colR[r] * colR[r];
            for (int64_t e = Rp[r]; e < Rp[r + 1]; e++)
                S[kr * K1 + (int)term[Ri[e]]] += Rx[e] * Rx[e] * invR[r];
        }
        fewest = used[0];
        for (int j = 0; j < K; j++) {
            double common = csq[j] / nobs;
            for (int k = 0; k < K; k++) S[k * K1 + j] -= common;
            S[K * K1 + j] = dsum[j] - common;
            S[j * K1 + K] = (double)used[j] - 1.0;
            if (used[j] < fewest) fewest = used[j];
        }
    }
    free(work); free(used);
    PyBuffer_Release(&bd); PyBuffer_Release(&bB); PyBuffer_Release(&bAp);
    PyBuffer_Release(&bAi); PyBuffer_Release(&bAx); PyBuffer_Release(&bRp);
    PyBuffer_Release(&bRi); PyBuffer_Release(&bRx); PyBuffer_Release(&bARF);
    PyBuffer_Release(&bterm); PyBuffer_Release(&bz); PyBuffer_Release(&bS);
    PyBuffer_Release(&brhs);
    if (nomem) return PyErr_NoMemory();
    return PyLong_FromLong(fewest);
}

/* The scalar terms' moment equations with X's whole projection H taken out
 * (multilevel.lmm.start._project_out_x): with R = Z^T (I - H) Z = A - W^T W,
 * W = L^{-1} C^T (L the Cholesky factor of X^T X, C = Z^T X, rows c_l),
 * w_l = 1/d_l over the usable levels (d_l above 1e-12 of its term's largest),
 *   S[k, j] = sum_{l in k, m in j} w_l R_lm^2,
 *   S[k, K] = sum_{l in k} (usable_l - w_l |W_l|^2),  S[K, j] = sum_{m in j} R_mm.
 * A = [diag(d1) A1R; A1R^T ARR] from the small model's dense blocks; starts
 * (K + 1, int64): each term's first level and the end.  S[K, K] is left as
 * it is.  O(Q^2 p). */
static PyObject *project_moments(PyObject *self, PyObject *args) {
    Py_buffer bd, bB, bA1R, bARR, bARF, bL, bst, bS;
    int n1, Qr, m, p, K;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*iiiii", &bd, &bB, &bA1R, &bARR, &bARF, &bL, &bst,
                          &bS, &n1, &Qr, &m, &p, &K))
        return NULL;
    const double *d1 = bd.buf, *B = bB.buf, *A1R = bA1R.buf, *ARR = bARR.buf, *ARF = bARF.buf;
    const double *L = bL.buf;
    const int64_t *st = bst.buf;
    double *S = bS.buf;
    int Q = n1 + Qr, K1 = K + 1;
    double *work = malloc(sizeof(double) * ((size_t)Q * (p + 2) + 1));
    int *term = malloc(sizeof(int) * (size_t)(Q > 0 ? Q : 1));
    if (work && term) {
        double *W = work, *w = W + (size_t)Q * p, *d = w + Q;
        for (int k = 0; k < K; k++) {
            double big = 1e-300;
            for (int64_t l = st[k]; l < st[k + 1]; l++) {
                term[l] = k;
                d[l] = l < n1 ? d1[l] : ARR[(size_t)(l - n1) * Qr + (l - n1)];
                if (d[l] > big) big = d[l];
            }
            for (int64_t l = st[k]; l < st[k + 1]; l++) w[l] = d[l] > 1e-12 * big ? 1.0 / d[l] : 0.0;
        }
        for (int l = 0; l < Q; l++) {
            const double *c = l < n1 ? B + (size_t)l * m : ARF + (size_t)(l - n1) * m;
            double *Wl = W + (size_t)l * p;
            for (int a = 0; a < p; a++) {
                double s = c[a];
                for (int b = 0; b < a; b++) s -= L[a * p + b] * Wl[b];
                Wl[a] = s / L[a * p + a];
            }
        }
        for (int i = 0; i < K1 * K1 - 1; i++) S[i] = 0.0; /* S[K, K] is the caller's */
        /* S[k, j] = sum_{l in k, mm in j} w_l (A_l,mm - h_l,mm)^2 with h = W W^T
         * of rank p, expanded: the h^2 part is sum_l w_l W_l^T G_j W_l with
         * G_j = sum_{mm in j} W_mm W_mm^T (O(Q p^2)); the A parts run over A's
         * nonzeros only (the first term's levels never share a row) */
        double *G = malloc(sizeof(double) * (size_t)K * p * p + 1);
        if (!G) {
            free(work);
            work = NULL;
        } else {
            memset(G, 0, sizeof(double) * (size_t)K * p * p);
            for (int l = 0; l < Q; l++) {
                const double *Wl = W + (size_t)l * p;
                double *Gk = G + (size_t)term[l] * p * p;
                for (int a = 0; a < p; a++)
                    for (int c = 0; c <= a; c++) Gk[a * p + c] += Wl[a] * Wl[c];
            }
            for (int k = 0; k < K; k++) {
                double *Gk = G + (size_t)k * p * p;
                for (int a = 0; a < p; a++)
                    for (int c = a + 1; c < p; c++) Gk[a * p + c] = Gk[c * p + a];
            }
            for (int l = 0; l < Q; l++) {
                const double *Wl = W + (size_t)l * p;
                int tl = term[l];
                if (w[l] != 0.0)
                    for (int k = 0; k < K; k++) {
                        const double *Gk = G + (size_t)k * p * p;
                        double qf = 0.0;
                        for (int a = 0; a < p; a++) qf += Wl[a] * dot(Gk + (size_t)a * p, Wl, p);
                        S[tl * K1 + k] += w[l] * qf;
                    }
                /* the diagonal cell: A_ll = d_l */
                double h = dot(Wl, Wl, p), al = l < n1 ? d1[l] : ARR[(size_t)(l - n1) * Qr + (l - n1)];
                S[tl * K1 + tl] += w[l] * (al * al - 2.0 * al * h);
                S[tl * K1 + K] += (w[l] > 0.0 ? 1.0 : 0.0) - w[l] * h;
                S[K * K1 + tl] += al - h;
            }
            /* off-diagonal nonzeros of A, each pair (l, mm) once for both cells */
            for (int l = n1; l < Q; l++) {
                const double *Wl = W + (size_t)l * p;
                int tl = term[l];
                for (int mm = 0; mm < l; mm++) {
                    double a = mm < n1 ? A1R[(size_t)mm * Qr + (l - n1)]
                                       : ARR[(size_t)(l - n1) * Qr + (mm - n1)];
                    if (a == 0.0) continue;
                    double h = dot(Wl, W + (size_t)mm * p, p), t = a * a - 2.0 * a * h;
                    S[tl * K1 + term[mm]] += w[l] * t;
                    S[term[mm] * K1 + tl] += w[mm] * t;
                }
            }
            free(G);
        }
    }
    free(work);
    free(term);
    release(8, &bd, &bB, &bA1R, &bARR, &bARF, &bL, &bst, &bS);
    if (!work || !term) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Per-level cross-products in one pass over the rows, in any row order:
 * out[l] += a_i b_i^T for the rows i of level l.  A (n, a), B (n, b) and
 * out (nlev, a, b) C-contiguous; out must be zeroed by the caller. */
static PyObject *level_crossprod(PyObject *self, PyObject *args) {
    Py_buffer bc, bA, bB, bo;
    int a, b;
    if (!PyArg_ParseTuple(args, "y*y*y*w*ii", &bc, &bA, &bB, &bo, &a, &b)) return NULL;
    const int64_t *codes = bc.buf;
    const double *A = bA.buf, *B = bB.buf;
    double *out = bo.buf;
    Py_ssize_t n = bc.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t nlev = bo.len / (Py_ssize_t)(sizeof(double) * a * b);
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t l = codes[i];
        if (l < 0 || l >= nlev) { bad = 1; break; }
        const double *ai = A + i * a, *bi = B + i * b;
        double *o = out + l * a * b;
        for (int r = 0; r < a; r++) {
            double v = ai[r];
            double *orow = o + r * b;
            for (int c = 0; c < b; c++) orow[c] += v * bi[c];
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&bc); PyBuffer_Release(&bA); PyBuffer_Release(&bB); PyBuffer_Release(&bo);
    if (bad) {
        PyErr_SetString(PyExc_IndexError, "level code out of range");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* One term's blocks of the mapped columns in one pass over the rows:
 * z~ = (z - sz) * rz and f~ = (f - sf) * rf per row (a centring and scaling,
 * with no mapped copy of all rows: a block of ROWS rows at a time, by
 * columns), then D[l] += z~ z~^T, B[l] += z~ f~^T for the row's level l and
 * AFF += f~ f~^T, as dot products of the block's columns (independent sums,
 * where row-by-row updates chain each entry through memory).  Z (n, q),
 * F (n, m) C-contiguous; D (nlev, q, q), B (nlev, q, m), AFF (m, m) zeroed. */
#define ROWS 256 /* rows mapped at a time into column buffers */
#define RUN 8    /* a run of rows of one level at least this long is summed by columns */

static PyObject *one_term_crossprod(PyObject *self, PyObject *args) {
    Py_buffer bc, bZ, bF, bD, bB, bA, bsz, brz, bsf, brf;
    int q, m;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*w*iiy*y*y*y*", &bc, &bZ, &bF, &bD, &bB, &bA, &q, &m,
                          &bsz, &brz, &bsf, &brf))
        return NULL;
    const int64_t *codes = bc.buf;
    const double *Z = bZ.buf, *F = bF.buf;
    const double *sz = bsz.buf, *rz = brz.buf, *sf = bsf.buf, *rf = brf.buf;
    double *D = bD.buf, *B = bB.buf, *AFF = bA.buf;
    Py_ssize_t n = bc.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t nlev = bD.len / (Py_ssize_t)(sizeof(double) * q * q);
    int bad = q > 64 || m > 64 || q < 1 || m < 1;
    /* the mapped rows of a block, by columns: ZT[r * ROWS + i], FT[c * ROWS + i] */
    double *ZT = bad ? NULL : malloc(sizeof(double) * ROWS * (size_t)(q + m));
    if (!bad && !ZT) {
        PyBuffer_Release(&bc); PyBuffer_Release(&bZ); PyBuffer_Release(&bF);
        PyBuffer_Release(&bD); PyBuffer_Release(&bB); PyBuffer_Release(&bA);
        PyBuffer_Release(&bsz); PyBuffer_Release(&brz); PyBuffer_Release(&bsf);
        PyBuffer_Release(&brf);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    double *FT = ZT + (size_t)ROWS * q;
    for (Py_ssize_t lo = 0; lo < n && !bad; lo += ROWS) {
        Py_ssize_t len = n - lo < ROWS ? n - lo : ROWS;
        for (Py_ssize_t i = 0; i < len; i++) {
            int64_t l = codes[lo + i];
            if (l < 0 || l >= nlev) { bad = 1; break; }
            const double *zi = Z + (lo + i) * q, *fi = F + (lo + i) * m;
            for (int r = 0; r < q; r++) ZT[r * ROWS + i] = (zi[r] - sz[r]) * rz[r];
            for (int c = 0; c < m; c++) FT[c * ROWS + i] = (fi[c] - sf[c]) * rf[c];
        }
        if (bad) break;
        /* [X y]'s block: one dot product of whole columns per entry */
        for (int r = 0; r < m; r++)
            for (int c = 0; c <= r; c++) AFF[r * m + c] += dot(FT + r * ROWS, FT + c * ROWS, len);
        /* the levels' blocks: a run of rows of one level (sorted data) by
         * columns, isolated rows one at a time */
        for (Py_ssize_t a = 0; a < len;) {
            int64_t l = codes[lo + a];
            Py_ssize_t e = a + 1;
            while (e < len && codes[lo + e] == l) e++;
            double *Dl = D + l * q * q, *Bl = B + l * q * m;
            if (e - a >= RUN) {
                size_t L = (size_t)(e - a);
                for (int r = 0; r < q; r++) {
                    const double *zr = ZT + r * ROWS + a;
                    for (int c = 0; c < q; c++) Dl[r * q + c] += dot(zr, ZT + c * ROWS + a, L);
                    for (int c = 0; c < m; c++) Bl[r * m + c] += dot(zr, FT + c * ROWS + a, L);
                }
            } else {
                for (Py_ssize_t i = a; i < e; i++)
                    for (int r = 0; r < q; r++) {
                        double v = ZT[r * ROWS + i];
                        for (int c = 0; c < q; c++) Dl[r * q + c] += v * ZT[c * ROWS + i];
                        for (int c = 0; c < m; c++) Bl[r * m + c] += v * FT[c * ROWS + i];
                    }
            }
            a = e;
        }
    }
    Py_END_ALLOW_THREADS
    free(ZT);
    if (!bad)
        for (int r = 0; r < m; r++)
            for (int c = r + 1; c < m; c++) AFF[r * m + c] = AFF[c * m + r];
    PyBuffer_Release(&bc); PyBuffer_Release(&bZ); PyBuffer_Release(&bF);
    PyBuffer_Release(&bD); PyBuffer_Release(&bB); PyBuffer_Release(&bA);
    PyBuffer_Release(&bsz); PyBuffer_Release(&brz); PyBuffer_Release(&bsf); PyBuffer_Release(&brf);
    if (bad) {
        PyErr_SetString(PyExc_IndexError, "level code out of range, or more than 64 columns");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Several scalar terms' cross-products of [Z~ F~] in one pass, each row
 * mapped as it is read (z~_k = (z_k - sz_k) rz_k, F~ = (F - sf) rf): with
 * l = codes[0][i] and r_k = offs[k] + codes[k][i] (k >= 1, the rest's
 * columns), d1[l] += z~0^2, B1[l] += z~0 F~, AFF += F~ F~^T,
 * A1R[l, r_k] += z~0 z~k, ARF[r_k] += z~k F~, ARR[r_a, r_b] += z~a z~b
 * (dense, zeroed by the caller; AFF's upper triangle copied at the end).
 * codes and Z are (K, n), row-major. */
static PyObject *scalar_crossprod(PyObject *self, PyObject *args) {
    Py_buffer bc, bZ, bF, bo, bsz, brz, bsf, brf, bd, bB, bA, b1R, bRR, bRF;
    int K, m, n1, Qr;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*w*w*w*w*w*w*iiii", &bc, &bZ, &bF, &bo, &bsz, &brz,
                          &bsf, &brf, &bd, &bB, &bA, &b1R, &bRR, &bRF, &K, &m, &n1, &Qr))
        return NULL;
    const int64_t *codes = bc.buf, *offs = bo.buf;
    const double *Z = bZ.buf, *F = bF.buf, *sz = bsz.buf, *rz = brz.buf, *sf = bsf.buf,
                 *rf = brf.buf;
    double *d1 = bd.buf, *B1 = bB.buf, *AFF = bA.buf, *A1R = b1R.buf, *ARR = bRR.buf,
           *ARF = bRF.buf;
    Py_ssize_t n = bc.len / (Py_ssize_t)(sizeof(int64_t) * (K > 0 ? K : 1));
    int bad = K < 2 || K > 64 || m > 64 || m < 1;
    Py_BEGIN_ALLOW_THREADS
    double zt[64], ft[64];
    int64_t r[64];
    for (Py_ssize_t i = 0; i < n && !bad; i++) {
        int64_t l = codes[i];
        if (l < 0 || l >= n1) { bad = 1; break; }
        for (int k = 0; k < K; k++) zt[k] = (Z[(Py_ssize_t)k * n + i] - sz[k]) * rz[k];
        for (int k = 1; k < K; k++) {
            r[k] = offs[k] + codes[(Py_ssize_t)k * n + i];
            if (r[k] < offs[k] || r[k] >= (k + 1 < K ? offs[k + 1] : Qr)) bad = 1;
        }
        if (bad) break;
        const double *fi = F + i * m;
        for (int c = 0; c < m; c++) ft[c] = (fi[c] - sf[c]) * rf[c];
        double z0 = zt[0];
        d1[l] += z0 * z0;
        for (int c = 0; c < m; c++) B1[l * m + c] += z0 * ft[c];
        for (int a = 0; a < m; a++) {
            double v = ft[a];
            for (int c = 0; c <= a; c++) AFF[a * m + c] += v * ft[c];
        }
        for (int k = 1; k < K; k++) {
            double v = zt[k];
            A1R[l * Qr + r[k]] += z0 * v;
            for (int c = 0; c < m; c++) ARF[r[k] * m + c] += v * ft[c];
            for (int j = 1; j < K; j++) ARR[r[k] * Qr + r[j]] += v * zt[j];
        }
    }
    Py_END_ALLOW_THREADS
    if (!bad)
        for (int a = 0; a < m; a++)
            for (int c = a + 1; c < m; c++) AFF[a * m + c] = AFF[c * m + a];
    PyBuffer_Release(&bc); PyBuffer_Release(&bZ); PyBuffer_Release(&bF); PyBuffer_Release(&bo);
    PyBuffer_Release(&bsz); PyBuffer_Release(&brz); PyBuffer_Release(&bsf); PyBuffer_Release(&brf);
    PyBuffer_Release(&bd); PyBuffer_Release(&bB); PyBuffer_Release(&bA); PyBuffer_Release(&b1R);
    PyBuffer_Release(&bRR); PyBuffer_Release(&bRF);
    if (bad) {
        PyErr_SetString(PyExc_IndexError, "level code out of range, or too many terms or columns");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The aliasing screen of a model matrix (multilevel.formula.design's
 * _gram_screen, the same steps): G = X^T X (X n x p, row-major); undecided
 * (0) if a diagonal entry is not finite; with an all-ones first column, G
 * centred on it (G - n m m^T, m = G[0]/n, its first row and column zeroed,
 * G[0,0] = n); undecided if a nonzero column lost all but 1e-8 of its length
 * to the centring; zero[j] = 1 for the all-zero columns; then the other
 * columns' correlation matrix G_ij / s_i / s_j (s = sqrt of the centred
 * diagonal) must have Cholesky pivots all above 1e-4 (decided, 1: no column
 * aliased but the zero ones), else undecided.  Returns 1 or 0. */
static PyObject *gram_screen(PyObject *self, PyObject *args) {
    Py_buffer bX, bz;
    int n, p;
    if (!PyArg_ParseTuple(args, "y*w*ii", &bX, &bz, &n, &p)) return NULL;
    const double *X = bX.buf;
    char *zero = bz.buf;
    size_t pp = (size_t)p * p;
    double *G = calloc(2 * pp + 3 * (size_t)p, sizeof(double));
    int *kept_at = malloc(sizeof(int) * (size_t)(p > 0 ? p : 1));
    if (!G || !kept_at) {
        free(G);
        free(kept_at);
        PyBuffer_Release(&bX); PyBuffer_Release(&bz);
        return PyErr_NoMemory();
    }
    double *R = G + pp, *raw = R + pp, *s = raw + p, *m0 = s + p;
    int decided = 0;
    for (int i = 0; i < n; i++) { /* the upper triangle, row by row */
        const double *x = X + (size_t)i * p;
        for (int a = 0; a < p; a++) {
            double xa = x[a];
            if (xa == 0.0) continue;
            for (int b = a; b < p; b++) G[a * p + b] += xa * x[b];
        }
    }
    for (int a = 0; a < p; a++)
        for (int b = a + 1; b < p; b++) G[b * p + a] = G[a * p + b];
    for (int a = 0; a < p; a++) {
        raw[a] = G[a * p + a];
        if (!isfinite(raw[a])) goto done;
    }
    int ones = X[0] == 1.0;
    for (int i = 1; i < n && ones; i++) ones = X[(size_t)i * p] == 1.0;
    if (ones) {
        for (int a = 0; a < p; a++) m0[a] = G[a] / n;
        for (int a = 0; a < p; a++)
            for (int b = 0; b < p; b++) G[a * p + b] -= n * (m0[a] * m0[b]);
        for (int a = 0; a < p; a++) G[a] = G[a * p] = 0.0;
        G[0] = n;
    }
    int kept = 0;
    for (int a = 0; a < p; a++) {
        double d = G[a * p + a];
        zero[a] = raw[a] == 0.0;
        if (!zero[a] && d <= 1e-8 * raw[a]) goto done;
        if (!zero[a]) {
            s[kept] = sqrt(d);
            kept_at[kept++] = a;
        }
    }
    if (kept == 0) {
        decided = 1;
        goto done;
    }
    for (int a = 0; a < kept; a++)
        for (int b = 0; b < kept; b++)
            R[a * kept + b] = G[kept_at[a] * p + kept_at[b]] / s[a] / s[b];
    if (!chol(R, kept)) goto done;
    decided = 1;
    for (int a = 0; a < kept; a++) decided &= R[a * kept + a] > 1e-4;
done:
    free(G);
    free(kept_at);
    PyBuffer_Release(&bX); PyBuffer_Release(&bz);
    return PyBool_FromLong(decided);
}

static PyMethodDef methods[] = {
    {"one_term", one_term, METH_VARARGS,
     "one_term(D, B, AFF, theta, grad_out, q, m, nlev, nobs, reml, want_grad) -> criterion"},
    {"scalar_terms", scalar_terms, METH_VARARGS,
     "scalar_terms(d, B, Ap, Ai, Ax, ARR, ARF, AFF, term, theta, grad_out, n1, Q, m, K, nobs, reml, "
     "want_grad) -> criterion (several scalar terms, small dense rest block)"},
    {"level_crossprod", level_crossprod, METH_VARARGS,
     "level_crossprod(codes, A, B, out, a, b): out[l] += a_i b_i^T over the rows of level l"},
    {"one_term_crossprod", one_term_crossprod, METH_VARARGS,
     "one_term_crossprod(codes, Z, F, D, B, AFF, q, m, sz, rz, sf, rf): one term's blocks "
     "of (Z - sz) * rz and (F - sf) * rf in one pass"},
    {"level_factors", level_factors, METH_VARARGS,
     "level_factors(D, B, theta, L, W, C, q, m, nlev) -> sum log|S_i| or None"},
    {"one_term_factor", one_term_factor, METH_VARARGS,
     "one_term_factor(D, B, AFF, theta, L, W, C, LFF, beta, u, q, m, nlev) -> sum log|S_i| or "
     "None (one term's kept factorization and its solution)"},
    {"level_solve_t", level_solve_t, METH_VARARGS,
     "level_solve_t(L, X, q, r, nlev): X_i <- L_i^-T X_i in place"},
    {"one_term_moments", one_term_moments, METH_VARARGS,
     "one_term_moments(D, B, z, bb, Dinv, q, m, nlev) -> (levels used, sum b_i . zr_i, sum w_i)"},
    {"scalar_moments", scalar_moments, METH_VARARGS,
     "scalar_moments(d, B, Ap, Ai, Ax, Rp, Ri, Rx, ARF, term, z, S, rhs, n1, Q, m, K, nobs) -> fewest "
     "usable levels of a term (moment equations of several scalar terms)"},
    {"set_lapack", set_lapack, METH_VARARGS, "set_lapack(dpotrf, dtrtri, dpotri capsules)"},
    {"blocked_terms", blocked_terms, METH_VARARGS,
     "blocked_terms(D1, B1, Ap, Ai, Ax, ARR, Rr, perm, ARF, AFF, qk, nk, theta, grad_out, n1, q1, Qr, m, K, nobs, "
     "reml, want_grad) -> criterion (several terms of any size, the first per level, the rest "
     "dense)"},
    {"blocked_terms_factor", blocked_terms_factor, METH_VARARGS,
     "blocked_terms_factor(D1, B1, Ap, Ai, Ax, ARR, Rr, perm, ARF, AFF, qk, nk, theta, L1, W, C1F, LR, MRF, schur, "
     "LFF, beta, u, n1, q1, Qr, m, K) -> (log|S_1|, log|M_RR|) or None (the kept factorization "
     "and its solution)"},
    {"project_moments", project_moments, METH_VARARGS,
     "project_moments(d1, B1, A1R, ARR, ARF, L, starts, S, n1, Qr, m, p, K): the scalar terms' "
     "moment equations with X's projection taken out (S (K+1, K+1) except S[K, K])"},
    {"scalar_terms_factor", scalar_terms_factor, METH_VARARGS,
     "scalar_terms_factor(d, B, Ap, Ai, Ax, ARR, ARF, AFF, term, theta, l1, C1F, L, G, schur, LFF, "
     "beta, u, n1, Q, m) -> (log|S_1|, log|M|) or None (the kept factorization and its "
     "solution)"},
    {"scalar_crossprod", scalar_crossprod, METH_VARARGS,
     "scalar_crossprod(codes, Z, F, offs, sz, rz, sf, rf, d1, B1, AFF, A1R, ARR, ARF, K, m, n1, Qr): "
     "several scalar terms' dense cross-products in one pass, rows mapped as read"},
    {"gram_screen", gram_screen, METH_VARARGS,
     "gram_screen(X, zero, n, p) -> decided (the aliasing screen of a model matrix; zero[j] "
     "set for all-zero columns)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Compiled LMM criterion kernels.", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }

/*
 * Compiled kernel of multilevel.scalar_glmm: the Laplace / adaptive
 * Gauss-Hermite deviance of a GLMM with one scalar random effect and a
 * canonical link (binomial-logit, Poisson-log), and its exact gradient in
 * phi = (theta, beta).  scalar_glmm.ScalarGLMM gives the same computation in
 * numpy (formulas in its module docstring); here each group is done in turn,
 * its Newton iterations and quadrature nodes in cache, without temporaries.
 *
 * Inputs (C-contiguous float64 unless said):
 *   X (n, p), z, offset, y, wt (n,)   rows sorted by group
 *   starts (J + 1,) int64             first row of each group, then n
 *   t, logw (K,)                       nodes and log weights (weight e^{-t^2/2});
 *                                      K = 1, t = 0, logw = log sqrt(2 pi): Laplace
 *   phi (p + 1,)                       theta, beta
 *   u (J,)                             in: starting modes; out: the modes
 *   grad (p + 1,)                      out (if want_grad)
 *   scratch (max group size * (K + 4),)
 * Returns the deviance without the response's constants (the caller adds
 * -2 sum c_i), or raises ArithmeticError when a group's Newton iteration fails.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_lapack.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_NEWTON 100
#define MAX_HALVINGS 40
#define MAX_TERMS 64 /* random-effects terms in laplace_terms */

/* b(eta), and when mu != NULL: mu, b'' and b''' at eta */
static inline double cumulant(int logit, double eta, double *mu, double *v, double *v3) {
    if (logit) {
        double e = exp(-fabs(eta));
        double b = (eta > 0 ? eta : 0.0) + log1p(e);
        if (mu) {
            double r = 1.0 / (1.0 + e);
            double m = eta >= 0 ? r : e * r;
            double vv = e * r * r;
            *mu = m;
            *v = vv;
            *v3 = vv * (1.0 - 2.0 * m);
        }
        return b;
    }
    double m = exp(eta < 700.0 ? eta : 700.0);
    if (mu) {
        *mu = m;
        *v = m;
        *v3 = m;
    }
    return m;
}

/* At u, over the rows of one group: f(u) = u^2/2 - sum wt (y eta - b(eta)),
 * sum z wt (y - mu) and sum z^2 wt b'' (one pass, one exp and one log1p a row) */
static double group_point(int logit, const double *base, const double *z, const double *y,
                          const double *wt, int64_t m, double theta, double u, double *Szlp,
                          double *Sz2w) {
    double s = 0.0, a = 0.0, c = 0.0;
    for (int64_t i = 0; i < m; i++) {
        double eta = base[i] + theta * z[i] * u;
        double mu, v, v3;
        double b = cumulant(logit, eta, &mu, &v, &v3);
        s += wt[i] * (y[i] * eta - b);
        a += z[i] * wt[i] * (y[i] - mu);
        c += z[i] * z[i] * wt[i] * v;
    }
    *Szlp = a;
    *Sz2w = c;
    return 0.5 * u * u - s;
}


static double link_point(int cloglog, const double *base, const double *z, const double *y,
                         const double *wt, int64_t m, double theta, double u, double *lp,
                         double *obs, double *W, double *W1, double *Szlp, double *Sz2W);
static inline double link_row(int cloglog, double eta, double y, double wt, double *lp,
                              double *obs, double *W, double *W1, double *O1);

/* A group's linear predictor without its random effect: base_i = off_i + x_i beta
 * over its m rows (X row-major, p columns). */
static void group_base(const double *X, const double *off, const double *beta, int64_t m, int p,
                       double *base) {
    for (int64_t i = 0; i < m; i++) {
        double s = off[i];
        for (int a = 0; a < p; a++) s += X[i * p + a] * beta[a];
        base[i] = s;
    }
}

/* One group's rows for the penalized deviance f(u) of its scalar random
 * effect: group_point (canonical links; no row terms kept) or link_point
 * (probit/cloglog, the row terms lp, obs, W, W1 of the last point kept) */
typedef struct {
    int flag; /* logit (group_point) or cloglog (link_point) */
    const double *base, *z, *y, *wt;
    int64_t m;
    double theta;
    double *lp, *obs, *W, *W1; /* NULL: group_point */
} GroupRows;

static double rows_point(const GroupRows *g, double u, double *Szlp, double *Sz2) {
    if (g->W)
        return link_point(g->flag, g->base, g->z, g->y, g->wt, g->m, g->theta, u, g->lp, g->obs,
                          g->W, g->W1, Szlp, Sz2);
    return group_point(g->flag, g->base, g->z, g->y, g->wt, g->m, g->theta, u, Szlp, Sz2);
}

/* The group's mode from *u: steps (u - theta Szlp)/(1 + theta^2 Sz2),
 * halved while f rises.  Returns 1 when a step fell below step_tol, with
 * *u, *f, *Szlp and *Sz2 at that point (and link_point's row terms there:
 * the last point evaluated is the accepted one); 0 if no step lowers f,
 * a step is not finite or maxit steps pass (canonical links: *u has the
 * last, unevaluated step and *Szlp, *Sz2 are those before it). */
static int group_mode(const GroupRows *g, double step_tol, int maxit, double *u, double *f,
                      double *Szlp, double *Sz2) {
    double theta = g->theta;
    *f = rows_point(g, *u, Szlp, Sz2);
    for (int it = 0; it < maxit; it++) {
        double step = (*u - theta * *Szlp) / (1.0 + theta * theta * *Sz2);
        if (!isfinite(step)) return 0;
        if (fabs(step) < step_tol) {
            /* the last step taken without evaluating it (canonical links: the
             * callers form the terms at the mode afresh, and f moves by
             * O(step^2)): log h, not stationary in u, then has the mode's
             * error squared, not step_tol, and the deviance is smooth to
             * rounding for Newton steps with the exact Hessian */
            if (!g->W) *u -= step;
            return 1;
        }
        int ok = 0;
        for (int k = 0; k < MAX_HALVINGS && !ok; k++) {
            double un = *u - step, a, b;
            double fn = rows_point(g, un, &a, &b);
            if (fn <= *f + 1e-12 * (1.0 + fabs(*f))) {
                *u = un;
                *f = fn;
                *Szlp = a;
                *Sz2 = b;
                ok = 1;
            }
            step *= 0.5;
        }
        if (!ok) return 0;
    }
    return 0;
}

static PyObject *scalar_glmm(PyObject *self, PyObject *args) {
    Py_buffer bX, bz, bo, by, bw, bs, bt, blw, bphi, bu, bg, bsc;
    int p, logit, want_grad;
    double step_tol;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*w*w*w*iiid", &bX, &bz, &bo, &by, &bw, &bs,
                          &bt, &blw, &bphi, &bu, &bg, &bsc, &p, &logit, &want_grad, &step_tol))
        return NULL;
    const double *X = bX.buf, *z = bz.buf, *off = bo.buf, *y = by.buf, *wt = bw.buf;
    const int64_t *starts = bs.buf;
    const double *t = bt.buf, *logw = blw.buf, *phi = bphi.buf;
    double *U = bu.buf, *grad = bg.buf, *scratch = bsc.buf;
    int64_t J = (int64_t)(bu.len / sizeof(double));
    int K = (int)(bt.len / sizeof(double));
    double theta = phi[0];
    const double *beta = phi + 1;
    double dev = 0.0;
    int failed = 0;
    double gtheta = 0.0;
    if (want_grad)
        for (int a = 0; a <= p; a++) grad[a] = 0.0;
    double P[64], F[64];
    double *Pk = K <= 64 ? P : malloc(sizeof(double) * 2 * K);
    if (!Pk) {
        failed = 2;
        goto done;
    }
    double *Fk = K <= 64 ? F : Pk + K;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t j = 0; j < J && !failed; j++) {
        int64_t r0 = starts[j], m = starts[j + 1] - r0;
        const double *zj = z + r0, *yj = y + r0, *wj = wt + r0;
        /* scratch: base, w (=wt b''), w3 (=wt b'''), lp (=wt (y - mu)), then K columns */
        double *base = scratch, *w = base + m, *w3 = w + m, *lp = w3 + m, *lpk = lp + m;
        group_base(X + r0 * p, off + r0, beta, m, p, base);
        /* Newton iterations on u, halving while f rises */
        double u = U[j], f, Sz2w, Szlp;
        GroupRows rows = {logit, base, zj, yj, wj, m, theta, NULL, NULL, NULL, NULL};
        if (!group_mode(&rows, step_tol, MAX_NEWTON, &u, &f, &Szlp, &Sz2w)) {
            failed = 1;
            break;
        }
        U[j] = u;
        /* pieces at the mode */
        double Sz3w3 = 0.0;
        Sz2w = 0.0;
        Szlp = 0.0;
        for (int64_t i = 0; i < m; i++) {
            double mu, v, v3;
            cumulant(logit, base[i] + theta * zj[i] * u, &mu, &v, &v3);
            w[i] = wj[i] * v;
            w3[i] = wj[i] * v3;
            lp[i] = wj[i] * (yj[i] - mu);
            Sz2w += zj[i] * zj[i] * w[i];
            Sz3w3 += zj[i] * zj[i] * zj[i] * w3[i];
            Szlp += zj[i] * lp[i];
        }
        double h = 1.0 + theta * theta * Sz2w;
        double s = 1.0 / sqrt(h);
        /* nodes: a_k = log w_k - f(u_k) + t_k^2/2, F_k = f'(u_k) */
        double amax = -INFINITY;
        if (K == 1 && t[0] == 0.0) { /* the node is the mode: its pieces are known */
            Pk[0] = amax = logw[0] - f;
            Fk[0] = u - theta * Szlp;
            if (want_grad) memcpy(lpk, lp, sizeof(double) * m);
        }
        for (int k = 0; k < K && !(K == 1 && t[0] == 0.0); k++) {
            double uk = u + s * t[k];
            double ll = 0.0, szl = 0.0;
            for (int64_t i = 0; i < m; i++) {
                double eta = base[i] + theta * zj[i] * uk;
                double mu, v, v3;
                double b = cumulant(logit, eta, want_grad ? &mu : NULL, &v, &v3);
                ll += wj[i] * (yj[i] * eta - b);
                if (want_grad) {
                    double l1 = wj[i] * (yj[i] - mu);
                    lpk[(int64_t)k * m + i] = l1;
                    szl += zj[i] * l1;
                }
            }
            Pk[k] = logw[k] - (0.5 * uk * uk - ll) + 0.5 * t[k] * t[k];
            Fk[k] = uk - theta * szl;
            if (Pk[k] > amax) amax = Pk[k];
        }
        double tot = 0.0;
        for (int k = 0; k < K; k++) {
            Pk[k] = exp(Pk[k] - amax);
            tot += Pk[k];
        }
        double lse = amax + log(tot);
        dev += 2.0 * (0.5 * log(2.0 * M_PI) + 0.5 * log(h) - lse);
        if (!want_grad || !isfinite(dev)) continue;
        double E = 0.0, D = 0.0;
        for (int k = 0; k < K; k++) {
            Pk[k] /= tot;
            E += Pk[k] * Fk[k] * t[k];
            D += Pk[k] * Fk[k];
        }
        if (K == 1) E = D = 0.0; /* Laplace: f'(u_hat) = 0 exactly, not to STEP_TOL */
        double alpha = (1.0 - s * E) / h;
        double gamma = 2.0 * D + alpha * theta * theta * theta * Sz3w3;
        for (int64_t i = 0; i < m; i++) {
            double lbar = 0.0, lbaru = 0.0;
            for (int k = 0; k < K; k++) {
                double l1 = lpk[(int64_t)k * m + i];
                lbar += Pk[k] * l1;
                lbaru += Pk[k] * (u + s * t[k]) * l1;
            }
            double r = -2.0 * lbar + theta * theta * alpha * zj[i] * zj[i] * w3[i] -
                       theta * gamma / h * zj[i] * w[i];
            const double *xi = X + (r0 + i) * p;
            for (int a = 0; a < p; a++) grad[1 + a] += r * xi[a];
            gtheta += -2.0 * zj[i] * lbaru;
        }
        gtheta += alpha * (2.0 * theta * Sz2w + theta * theta * u * Sz3w3) +
                  gamma * (Szlp - theta * u * Sz2w) / h;
    }
    Py_END_ALLOW_THREADS
    if (want_grad) grad[0] = gtheta;
    if (Pk != P) free(Pk);
done:
    PyBuffer_Release(&bX); PyBuffer_Release(&bz); PyBuffer_Release(&bo);
    PyBuffer_Release(&by); PyBuffer_Release(&bw); PyBuffer_Release(&bs);
    PyBuffer_Release(&bt); PyBuffer_Release(&blw); PyBuffer_Release(&bphi);
    PyBuffer_Release(&bu); PyBuffer_Release(&bg); PyBuffer_Release(&bsc);
    if (failed == 2) return PyErr_NoMemory();
    if (failed) {
        PyErr_SetString(PyExc_ArithmeticError, "the conditional mode of a group did not converge");
        return NULL;
    }
    return PyFloat_FromDouble(dev);
}

/* The Laplace deviance (without constants), its gradient and its exact
 * Hessian in phi = (theta, beta) for one scalar term with a canonical link
 * (formulas: glmm/exact/scalar_hessian.py).  Over the D = p + 2 variables
 * (theta, beta, u), per group: the first pass over its rows keeps each row's
 * s, w, w3, w4 and sums the u-rows of F2 = f_AB, F3 = f_uAB, F4 = f_uuAB
 * (O(D) a row); the Hessian's parts in g_a g_b, whose group constants (h,
 * f_uuu) the first pass gives, are then one weighted outer product a row,
 * c_i = 2 w + w4 g_u^2 / h - f_uuu w3 g_u / h^2, over the parameters only;
 * the rest is a few rank-one terms per group. */
static PyObject *scalar_laplace_hessian(PyObject *self, PyObject *args) {
    Py_buffer bX, bz, bo, by, bw, bs, bphi, bu, bg, bh, bsc;
    int p, logit;
    double step_tol;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*w*w*w*iid", &bX, &bz, &bo, &by, &bw, &bs, &bphi,
                          &bu, &bg, &bh, &bsc, &p, &logit, &step_tol))
        return NULL;
    const double *X = bX.buf, *z = bz.buf, *off = bo.buf, *y = by.buf, *wt = bw.buf;
    const int64_t *starts = bs.buf;
    const double *phi = bphi.buf;
    double *U = bu.buf, *grad = bg.buf, *H = bh.buf, *scratch = bsc.buf;
    int64_t J = (int64_t)(bu.len / sizeof(double));
    int d = p + 1, D = p + 2;
    double theta = phi[0];
    const double *beta = phi + 1;
    double dev = 0.0;
    int failed = 0;
    /* per variable: the u-rows of F2, F3, F4, Σ w z g, Σ w3 g_u z g, and per
     * parameter û_A, k_A */
    double *work = malloc(sizeof(double) * (5 * (size_t)D + 2 * (size_t)d + (size_t)D));
    if (!work) {
        failed = 2;
        goto done;
    }
    double *f2u = work, *f3u = f2u + D, *f4u = f3u + D, *Swzg = f4u + D, *Sw3g = Swzg + D;
    double *ua = Sw3g + D, *kk = ua + d, *G = kk + d;
    for (int a = 0; a < d; a++) grad[a] = 0.0;
    for (int a = 0; a < d * d; a++) H[a] = 0.0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t j = 0; j < J && !failed; j++) {
        int64_t r0 = starts[j], m = starts[j + 1] - r0;
        const double *zj = z + r0, *yj = y + r0, *wj = wt + r0, *Xj = X + r0 * p;
        /* scratch: base, then each row's w, w3, w4 */
        double *base = scratch, *rw = base + m, *rw3 = rw + m, *rw4 = rw3 + m;
        group_base(Xj, off + r0, beta, m, p, base);
        double u = U[j], f, Sz2w, Szlp;
        GroupRows rows = {logit, base, zj, yj, wj, m, theta, NULL, NULL, NULL, NULL};
        if (!group_mode(&rows, step_tol, MAX_NEWTON, &u, &f, &Szlp, &Sz2w)) {
            failed = 1;
            break;
        }
        U[j] = u;
        memset(work, 0, sizeof(double) * 5 * (size_t)D);
        double Ssz = 0.0, Swguz = 0.0, Sw3gu2z = 0.0, Swz2 = 0.0;
        for (int64_t i = 0; i < m; i++) {
            double mu, v, v3;
            cumulant(logit, base[i] + theta * zj[i] * u, &mu, &v, &v3);
            double v4 = logit ? v * (1.0 - 6.0 * v) : v;
            double s = wj[i] * (yj[i] - mu), w = wj[i] * v, w3 = wj[i] * v3, w4 = wj[i] * v4;
            rw[i] = w;
            rw3[i] = w3;
            rw4[i] = w4;
            double zi = zj[i], gu = theta * zi;
            G[0] = zi * u;
            memcpy(G + 1, Xj + i * p, sizeof(double) * p);
            G[d] = gu;
            double b2 = w * gu, b3 = w3 * gu * gu, b4 = w4 * gu * gu * gu;
            double cz = w * zi, c3 = w3 * gu * zi;
            for (int a = 0; a < D; a++) {
                f2u[a] += b2 * G[a];
                f3u[a] += b3 * G[a];
                f4u[a] += b4 * G[a];
                Swzg[a] += cz * G[a];
                Sw3g[a] += c3 * G[a];
            }
            for (int a = 0; a < d; a++) grad[a] -= 2.0 * s * G[a];
            Ssz += s * zi;
            Swguz += w * gu * zi;
            Sw3gu2z += w3 * gu * gu * zi;
            Swz2 += w * zi * zi;
        }
        /* the terms in E (d2 eta / d theta du = z) on the u-rows */
        f2u[0] -= Ssz;
        f2u[d] += 1.0;
        f3u[0] += Swzg[d] + Swguz;
        f4u[0] += 2.0 * Sw3g[d] + Sw3gu2z;
        double h = f2u[d];
        if (!(h > 0.0) || !isfinite(h)) {
            failed = 1;
            break;
        }
        double f3uu = f3u[d], f4uu = f4u[d];
        for (int a = 0; a < d; a++) {
            ua[a] = -f2u[a] / h;
            kk[a] = f3u[a] + f3uu * ua[a];
            grad[a] += kk[a] / h;
        }
        /* the parts in g_a g_b: one weighted outer product a row */
        double ih = 1.0 / h, c3h = f3uu * ih * ih;
        for (int64_t i = 0; i < m; i++) {
            double gu = theta * zj[i];
            double c = 2.0 * rw[i] + rw4[i] * gu * gu * ih - c3h * rw3[i] * gu;
            G[0] = zj[i] * u;
            memcpy(G + 1, Xj + i * p, sizeof(double) * p);
            for (int a = 0; a < d; a++) {
                double ca = c * G[a];
                double *Ha = H + a * d;
                for (int b = 0; b <= a; b++) Ha[b] += ca * G[b];
            }
        }
        /* the rest: E's terms in F3, F4 (row and column 0) and rank-one terms */
        for (int a = 0; a < d; a++)
            for (int b = 0; b <= a; b++) {
                double uu = ua[a] * ua[b];
                double e3 = (a == 0 ? Swzg[b] : 0.0) + (b == 0 ? Swzg[a] : 0.0);
                double e4 = (a == 0 ? 2.0 * Sw3g[b] : 0.0) + (b == 0 ? 2.0 * Sw3g[a] : 0.0) +
                            (a == 0 && b == 0 ? 2.0 * Swz2 : 0.0);
                double r3 = e3 + f3u[a] * ua[b] + ua[a] * f3u[b] + f3uu * uu;
                double r4 = e4 + f4u[a] * ua[b] + ua[a] * f4u[b] + f4uu * uu;
                H[a * d + b] += 2.0 * f2u[a] * ua[b] + r4 * ih - f3uu * r3 * ih * ih -
                                kk[a] * kk[b] * ih * ih;
            }
        dev += 2.0 * f + log(h);
    }
    Py_END_ALLOW_THREADS
    for (int a = 0; a < d; a++)
        for (int b = 0; b < a; b++) H[b * d + a] = H[a * d + b];
done:
    free(work);
    PyBuffer_Release(&bX); PyBuffer_Release(&bz); PyBuffer_Release(&bo);
    PyBuffer_Release(&by); PyBuffer_Release(&bw); PyBuffer_Release(&bs);
    PyBuffer_Release(&bphi); PyBuffer_Release(&bu); PyBuffer_Release(&bg);
    PyBuffer_Release(&bh); PyBuffer_Release(&bsc);
    if (failed == 2) return PyErr_NoMemory();
    if (failed) {
        PyErr_SetString(PyExc_ArithmeticError, "the conditional mode of a group did not converge");
        return NULL;
    }
    return PyFloat_FromDouble(dev);
}

/* ------------------------------------------------------------------------
 * Several scalar random-effects terms (multilevel.laplace_gradient): PIRLS for
 * the conditional modes on the blocked factor of M = Lambda Z'WZ Lambda + I
 * (first term diagonal, the rest a dense Schur complement factored by
 * LAPACK's dpotrf, _lapack.h), the Laplace deviance and its
 * exact gradient in (theta, beta).  Formulas: laplace_gradient.py.
 * ------------------------------------------------------------------------ */
typedef struct {
    int64_t n, p, K, n0, Qr, nnz, npairs;
    const double *X, *y, *wt, *off, *z;         /* z: K x n */
    const int64_t *pos;                         /* K x n: level (k = 0) or rest index */
    const int64_t *slot;                        /* (K-1) x n: entry of the first x rest block */
    const int64_t *erow, *ecol;                 /* entries: first level, rest index */
    const int64_t *pe1, *pe2;                   /* pairs of entries of one first level */
    const int64_t *term;                        /* rest index -> term */
    int logit;
} Design;

/* b(eta), with the exponential it needs kept in *ex: exp(-|eta|) for the
 * logit, exp(eta) (capped) for the log link */
static inline double cumulant_ex(int logit, double eta, double *ex) {
    if (logit) {
        double e = exp(-fabs(eta));
        *ex = e;
        return (eta > 0 ? eta : 0.0) + log1p(e);
    }
    double m = exp(eta < 700.0 ? eta : 700.0);
    *ex = m;
    return m;
}

/* mu, b'' and b''' at eta from cumulant_ex's exponential (cumulant's values,
 * without a second exp and log1p per row) */
static inline void moments_ex(int logit, double eta, double ex, double *mu, double *v,
                              double *v3) {
    if (logit) {
        double r = 1.0 / (1.0 + ex);
        double m = eta >= 0 ? r : ex * r;
        double vv = ex * r * r;
        *mu = m;
        *v = vv;
        *v3 = vv * (1.0 - 2.0 * m);
        return;
    }
    *mu = ex;
    *v = ex;
    *v3 = ex;
}

/* The family's kind (Design.logit): 0 Poisson-log, 1 binomial-logit; the
 * binomial with the probit and cloglog links: 2 and 3 with lme4's (Fisher's)
 * curvature, 4 and 5 with the observed one (link_row's terms).  PIRLS takes
 * Newton steps with the observed curvature O = -l'' for all four; with
 * Fisher's the Laplace determinant, h and the traces are those of M at W,
 * the adjoint's solve stays with M at O (docs/glmm.md). */
#define LINK_KIND(kind) ((kind) >= 2)
#define FISHER_KIND(kind) ((kind) == 2 || (kind) == 3)

/* l' and the curvature w at eta (w3 = w' as well when w3 != NULL), from
 * cumulant_ex's exponential for the canonical links */
static inline void row_terms(int kind, double eta, double ex, double y, double wt, double *lp,
                             double *w, double *w3) {
    if (LINK_KIND(kind)) { /* l' and O, and O' (requested by the observed kinds only) */
        double Wf, W1;
        link_row(kind & 1, eta, y, wt, lp, w, &Wf, &W1, w3);
        return;
    }
    double mu, v, v3;
    moments_ex(kind, eta, ex, &mu, &v, &v3);
    *lp = wt * (y - mu);
    *w = wt * v;
    if (w3) *w3 = wt * v3;
}

/* eta = base + sum_k theta_k z_k u[pos_k] and its exponentials (ex, see
 * cumulant_ex); returns the log-likelihood, sum wt (y eta - b) for the
 * canonical links */
static double eta_loglik(const Design *D, const double *base, const double *theta,
                         const double *u, double *eta, double *ex) {
    double ll = 0.0;
    for (int64_t i = 0; i < D->n; i++) {
        double e = base[i];
        for (int64_t k = 0; k < D->K; k++) {
            int64_t q = D->pos[k * D->n + i];
            e += theta[k] * D->z[k * D->n + i] * u[k == 0 ? q : D->n0 + q];
        }
        eta[i] = e;
        if (LINK_KIND(D->logit))
            ll += link_row(D->logit & 1, e, D->y[i], D->wt[i], NULL, NULL, NULL, NULL, NULL);
        else
            ll += D->wt[i] * (D->y[i] * e - cumulant_ex(D->logit, e, ex + i));
    }
    return ll;
}

/* Factor M at the weights w: Dg = sqrt(M00) (n0), Cd = C0R entries (nnz),
 * S = L_R (Qr x Qr, column-major lower).  0 if not positive definite. */
static int factor_m(const Design *D, const double *theta, const double *w, double *Dg,
                    double *Cd, double *S) {
    int64_t n = D->n, n0 = D->n0, Qr = D->Qr;
    memset(Dg, 0, sizeof(double) * n0);
    memset(Cd, 0, sizeof(double) * D->nnz);
    memset(S, 0, sizeof(double) * Qr * Qr);
    for (int64_t i = 0; i < n; i++) {
        double z0 = D->z[i], wi = w[i];
        Dg[D->pos[i]] += wi * z0 * z0;
        for (int64_t a = 1; a < D->K; a++) {
            double za = D->z[a * n + i];
            int64_t ra = D->pos[a * n + i];
            Cd[D->slot[(a - 1) * n + i]] += wi * z0 * za;
            for (int64_t b = 1; b <= a; b++) {
                int64_t rb = D->pos[b * n + i];
                int64_t r = ra > rb ? ra : rb, c = ra > rb ? rb : ra;
                S[r + c * Qr] += wi * za * D->z[b * n + i];
            }
        }
    }
    double t0 = theta[0];
    for (int64_t l = 0; l < n0; l++) Dg[l] = sqrt(t0 * t0 * Dg[l] + 1.0);
    for (int64_t e = 0; e < D->nnz; e++)
        Cd[e] *= t0 * theta[D->term[D->ecol[e]]] / Dg[D->erow[e]];
    for (int64_t c = 0; c < Qr; c++)
        for (int64_t r = c; r < Qr; r++)
            S[r + c * Qr] *= theta[D->term[r]] * theta[D->term[c]];
    for (int64_t r = 0; r < Qr; r++) S[r + r * Qr] += 1.0;
    for (int64_t q = 0; q < D->npairs; q++) {
        int64_t e1 = D->pe1[q], e2 = D->pe2[q];
        S[D->ecol[e1] + D->ecol[e2] * Qr] -= Cd[e1] * Cd[e2];
    }
    int nn = (int)Qr, info = 0;
    char lo = 'L';
    if (Qr > 0) lapack_potrf(&lo, &nn, S, &nn, &info);
    return info == 0;
}

/* x = M^{-1} r (Q = n0 + Qr) with L = [[Dg, 0], [C0R', L_R]] */
static void solve_m(const Design *D, const double *Dg, const double *Cd, const double *S,
                    const double *r, double *x) {
    int64_t n0 = D->n0, Qr = D->Qr;
    double *x0 = x, *xR = x + n0;
    for (int64_t l = 0; l < n0; l++) x0[l] = r[l] / Dg[l];
    for (int64_t j = 0; j < Qr; j++) xR[j] = r[n0 + j];
    for (int64_t e = 0; e < D->nnz; e++) xR[D->ecol[e]] -= Cd[e] * x0[D->erow[e]];
    for (int64_t j = 0; j < Qr; j++) { /* forward with L_R, by columns (contiguous) */
        double v = xR[j] / S[j + j * Qr];
        xR[j] = v;
        const double *col = S + j * Qr;
        for (int64_t k = j + 1; k < Qr; k++) xR[k] -= col[k] * v;
    }
    for (int64_t j = Qr - 1; j >= 0; j--) { /* back with L_R' */
        double v = xR[j];
        for (int64_t k = j + 1; k < Qr; k++) v -= S[k + j * Qr] * xR[k];
        xR[j] = v / S[j + j * Qr];
    }
    for (int64_t e = 0; e < D->nnz; e++) x0[D->erow[e]] -= Cd[e] * xR[D->ecol[e]];
    for (int64_t l = 0; l < n0; l++) x0[l] /= Dg[l];
}

/* Lambda Z' v for a per-row vector v, into out (Q) */
static void zt_rows(const Design *D, const double *theta, const double *v, double *out) {
    memset(out, 0, sizeof(double) * (D->n0 + D->Qr));
    for (int64_t k = 0; k < D->K; k++)
        for (int64_t i = 0; i < D->n; i++) {
            int64_t q = D->pos[k * D->n + i];
            out[k == 0 ? q : D->n0 + q] += theta[k] * D->z[k * D->n + i] * v[i];
        }
}

static PyObject *laplace_terms(PyObject *self, PyObject *args) {
    Py_buffer b[16];
    int64_t n0, Qr;
    int logit, want_grad;
    double step_tol;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*y*w*w*w*LLiid", &b[0], &b[1], &b[2],
                          &b[3], &b[4], &b[5], &b[6], &b[7], &b[8], &b[9], &b[10], &b[11],
                          &b[12], &b[13], &b[14], &b[15], &n0, &Qr, &logit, &want_grad,
                          &step_tol))
        return NULL;
    if (!lapack_potrf || !lapack_trtri) {
        for (int j = 0; j < 16; j++) PyBuffer_Release(&b[j]);
        PyErr_SetString(PyExc_RuntimeError, "set_lapack() was not called");
        return NULL;
    }
    Design D;
    D.X = b[0].buf; D.y = b[1].buf; D.wt = b[2].buf; D.off = b[3].buf; D.z = b[4].buf;
    D.pos = b[5].buf; D.slot = b[6].buf; D.erow = b[7].buf; D.ecol = b[8].buf;
    D.pe1 = b[9].buf; D.pe2 = b[10].buf; D.term = b[11].buf;
    const double *phi = b[12].buf;
    double *U = b[13].buf, *grad = b[14].buf, *work = b[15].buf;
    D.n = (int64_t)(b[1].len / sizeof(double));
    D.K = (int64_t)(b[5].len / sizeof(int64_t)) / (D.n ? D.n : 1);
    D.p = (int64_t)(b[0].len / sizeof(double)) / (D.n ? D.n : 1);
    D.nnz = (int64_t)(b[7].len / sizeof(int64_t));
    D.npairs = (int64_t)(b[9].len / sizeof(int64_t));
    D.n0 = n0; D.Qr = Qr; D.logit = logit;
    int64_t n = D.n, K = D.K, p = D.p, Q = n0 + Qr;
    if (K < 1 || K > MAX_TERMS) {
        for (int j = 0; j < 16; j++) PyBuffer_Release(&b[j]);
        PyErr_SetString(PyExc_ValueError, "laplace_terms takes 1 to 64 terms");
        return NULL;
    }
    const double *theta = phi, *beta = phi + K;
    /* work layout */
    double *base = work, *eta = base + n, *etac = eta + n, *w = etac + n, *lp = w + n;
    double *w3 = lp + n, *Dg = w3 + n, *Cd = Dg + n0, *S = Cd + D.nnz, *r = S + Qr * Qr;
    double *du = r + Q, *uc = du + Q, *vs = uc + Q, *h = vs + Q, *KmT = h + n;
    double *Li = KmT + n0 * Qr; /* L_R^{-1}, beside the factor (which the solves need) */
    double *ex = Li + Qr * Qr, *exc = ex + n; /* the rows' exponentials at eta, etac */
    /* Fisher's curvature (kinds 2, 3): M at W and its factor */
    double *wF = exc + n, *DgF = wF + n, *CdF = DgF + n0, *SF = CdF + D.nnz;
    int fisher = FISHER_KIND(logit);
    int failed = 0;
    double laplace = 0.0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < n; i++) {
        double s = D.off[i];
        for (int64_t a = 0; a < p; a++) s += D.X[i * p + a] * beta[a];
        base[i] = s;
    }
    double ll = eta_loglik(&D, base, theta, U, eta, ex);
    double uu = 0.0;
    for (int64_t q = 0; q < Q; q++) uu += U[q] * U[q];
    double pdev = -2.0 * ll + uu;
    int converged = 0;
    for (int it = 0; it < 200 && isfinite(pdev); it++) {
        for (int64_t i = 0; i < n; i++)
            row_terms(logit, eta[i], ex[i], D.y[i], D.wt[i], lp + i, w + i, NULL);
        if (!factor_m(&D, theta, w, Dg, Cd, S)) break;
        zt_rows(&D, theta, lp, r);
        for (int64_t q = 0; q < Q; q++) r[q] -= U[q];
        solve_m(&D, Dg, Cd, S, r, du);
        double step = 0.0;
        int finite = 1;
        for (int64_t q = 0; q < Q; q++) {
            if (!isfinite(du[q])) finite = 0;
            step = fmax(step, fabs(du[q]));
        }
        if (!finite) break; /* fmax would skip a NaN: a failed step, not a converged one */
        if (step < step_tol) {
            converged = 1;
            break;
        }
        double slack = 1e-12 * (1.0 + fabs(pdev)), t = 1.0;
        int ok = 0;
        for (int hv = 0; hv < 30; hv++) {
            double ucu = 0.0;
            for (int64_t q = 0; q < Q; q++) {
                uc[q] = U[q] + t * du[q];
                ucu += uc[q] * uc[q];
            }
            double llc = eta_loglik(&D, base, theta, uc, etac, exc);
            double pc = -2.0 * llc + ucu;
            if (pc <= pdev + slack) {
                memcpy(U, uc, sizeof(double) * Q);
                memcpy(eta, etac, sizeof(double) * n);
                memcpy(ex, exc, sizeof(double) * n);
                pdev = pc;
                ok = 1;
                break;
            }
            t *= 0.5;
        }
        if (!ok) break;
    }
    if (!converged) failed = 1;
    if (!failed && fisher) {
        for (int64_t i = 0; i < n; i++) {
            double l1, o, W1;
            link_row(logit & 1, eta[i], D.y[i], D.wt[i], &l1, &o, wF + i, &W1, NULL);
            w3[i] = W1; /* W' for the gradient */
        }
        if (!factor_m(&D, theta, wF, DgF, CdF, SF)) failed = 3;
    }
    /* the Laplace curvature's factor: M at the Newton weights, or at Fisher's */
    const double *hDg = fisher ? DgF : Dg, *hCd = fisher ? CdF : Cd, *hS = fisher ? SF : S;
    if (!failed) {
        double logdet = 0.0;
        for (int64_t l = 0; l < n0; l++) logdet += 2.0 * log(hDg[l]);
        for (int64_t j = 0; j < Qr; j++) logdet += 2.0 * log(hS[j + j * Qr]);
        laplace = pdev + logdet;
    }
    if (!failed && want_grad) {
        if (!fisher)
            for (int64_t i = 0; i < n; i++) {
                double lp_, w_;
                row_terms(logit, eta[i], ex[i], D.y[i], D.wt[i], &lp_, &w_, w3 + i);
            }
        /* L_R^{-1} (column-major lower) in Li; S keeps L_R */
        int nn = (int)Qr, info = 0;
        char lo = 'L', nd = 'N';
        memcpy(Li, hS, sizeof(double) * Qr * Qr);
        if (Qr > 0) lapack_trtri(&lo, &nd, &nn, Li, &nn, &info);
        if (info != 0) failed = 2;
        if (!failed) {
            /* KmT (n0 x Qr, row-major) = D0^{-1} C0R L_R^{-T} / ...: row l = sum_e c_e col_e(Linv) / Dg[l] */
            memset(KmT, 0, sizeof(double) * n0 * Qr);
            for (int64_t e = 0; e < D.nnz; e++) {
                int64_t l = D.erow[e], c = D.ecol[e];
                double ce = hCd[e] / hDg[l];
                double *row = KmT + l * Qr;
                for (int64_t j = c; j < Qr; j++) row[j] += ce * Li[j + c * Qr];
            }
            double tr0 = 0.0;
            double trk[MAX_TERMS] = {0.0}; /* K <= MAX_TERMS: the caller checks */
            int64_t nk[MAX_TERMS] = {0};
            double *dM = vs; /* reuse: dMRR (Qr) first, then the solve */
            for (int64_t c = 0; c < Qr; c++) {
                double s2 = 0.0;
                for (int64_t j = c; j < Qr; j++) s2 += Li[j + c * Qr] * Li[j + c * Qr];
                dM[c] = s2;
                trk[D.term[c]] += s2;
            }
            for (int64_t l = 0; l < n0; l++) {
                double s2 = 1.0 / (hDg[l] * hDg[l]);
                const double *row = KmT + l * Qr;
                for (int64_t j = 0; j < Qr; j++) s2 += row[j] * row[j];
                tr0 += s2;
                du[l] = s2; /* d00 */
            }
            trk[0] = tr0;
            for (int64_t i = 0; i < n; i++) {
                int64_t l = D.pos[i];
                double zt0 = theta[0] * D.z[i];
                double hi = zt0 * zt0 * du[l];
                const double *row = KmT + l * Qr;
                for (int64_t a = 1; a < K; a++) {
                    int64_t ra = D.pos[a * n + i];
                    double zta = theta[a] * D.z[a * n + i];
                    double dot = 0.0;
                    for (int64_t j = ra; j < Qr; j++) dot += row[j] * Li[j + ra * Qr];
                    hi -= 2.0 * zt0 * zta * dot;
                    hi += zta * zta * dM[ra];
                    for (int64_t bb = a + 1; bb < K; bb++) {
                        int64_t rb = D.pos[bb * n + i];
                        double ztb = theta[bb] * D.z[bb * n + i];
                        int64_t j0 = ra > rb ? ra : rb;
                        double d2 = 0.0;
                        for (int64_t j = j0; j < Qr; j++) d2 += Li[j + ra * Qr] * Li[j + rb * Qr];
                        hi += 2.0 * zta * ztb * d2;
                    }
                }
                h[i] = w3[i] * hi; /* c_i */
            }
            /* v = M^{-1} Lambda Z' c */
            {
                zt_rows(&D, theta, h, r);
                solve_m(&D, Dg, Cd, S, r, vs);
                for (int64_t a = 0; a < K + p; a++) grad[a] = 0.0;
                for (int64_t i = 0; i < n; i++) {
                    double zlv = 0.0;
                    for (int64_t k = 0; k < K; k++) {
                        int64_t q = D.pos[k * n + i];
                        zlv += theta[k] * D.z[k * n + i] * vs[k == 0 ? q : n0 + q];
                    }
                    double common = h[i] - 2.0 * lp[i] - w[i] * zlv;
                    for (int64_t a = 0; a < p; a++) grad[K + a] += D.X[i * p + a] * common;
                    for (int64_t k = 0; k < K; k++) {
                        int64_t q = D.pos[k * n + i];
                        int64_t qq = k == 0 ? q : n0 + q;
                        double zk = D.z[k * n + i];
                        grad[k] += common * zk * U[qq] + lp[i] * zk * vs[qq];
                    }
                }
                nk[0] = n0;
                for (int64_t c = 0; c < Qr; c++) nk[D.term[c]] += 1;
                for (int64_t k = 0; k < K; k++)
                    grad[k] = theta[k] == 0.0 ? 0.0
                                              : grad[k] + 2.0 * ((double)nk[k] - trk[k]) / theta[k];
            }
        }
    }
    Py_END_ALLOW_THREADS
    for (int j = 0; j < 16; j++) PyBuffer_Release(&b[j]);
    if (failed) {
        PyErr_SetString(PyExc_ArithmeticError,
                        failed == 1 ? "PIRLS did not converge" : "a factor was not positive definite");
        return NULL;
    }
    return PyFloat_FromDouble(laplace);
}

/* ------------------------------------------------------------------------
 * One vector-valued random-effects term (multilevel.glmm.exact.vector):
 * the Laplace deviance of binomial-logit or Poisson-log and its exact
 * gradient in phi = (theta, beta), group by group.  Row i of group j has
 * eta_i = base_i + z_i'T u_j (base = o + X beta, T lower triangular, q x q,
 * theta its lower triangle by columns).  Per group, with A = sum w z z',
 * H = I + T'AT: Newton steps s = H^{-1}(u - T' sum l' z) on u, halved while f
 * rises; at the mode 2 f + log|H| and (P = H^{-1}, h_i = z_i'TPT'z_i,
 * c = sum w' h z, v = P T'c, g = sum l' z)
 *   r_i = -2 l'_i + w'_i h_i - w_i z_i'T v      (dD/dbeta = X'r, by the caller)
 *   dD/dT += (c - A T v - 2 g) u' + g v' + 2 A T P.
 * The formulas are those of vector.py (its module docstring).  The binomial
 * with a probit or cloglog link and lme4's curvature (kind 2, 3): w is the
 * observed curvature O (Newton steps, the adjoint: A, v and the r_i term in
 * w), the determinant Fisher's W (A_F, H_F, P = H_F^{-1}, h, 2 A_F T P) and
 * w' = dW/deta (docs/glmm.md).
 *
 * f is needed only to refuse a step that raises it.  For the canonical
 * families
 * |w'| <= w, so along u - ts the curvature s'H(t)s is at most e^{tD} s'H(0)s,
 * D = max_i |z_i'T s|, and with Q = s'H(0)s
 *   f(u - s) - f(u) <= -Q + Q (e^D - 1 - D)/D^2 <= -0.28 Q < 0  for D <= 1:
 * such a step is taken without evaluating f (no log per row);
 * f is evaluated where it is needed, at the mode for the deviance.  The
 * iterates are those of the numpy path, which would accept the step too.
 *
 * Inputs (C-contiguous float64 unless said):
 *   base, Z (n, q), y, wt (n,)    rows sorted by group
 *   starts (J + 1,) int64         first row of each group, then n
 *   zmax (J, q)                   max_i |z_ia| over each group's rows
 *   theta (q(q+1)/2,)
 *   u (J, q)                      in: starting modes; out: the modes
 *   scratch (12 * max group size,)
 *   state (J, 2q^2 + q)           per group P, A and g at the mode (written when
 *                                 want_grad), and wrow (n,): w at the mode
 *   dbase (n,), prev_theta        base and theta minus those state belongs to
 *   r (n,), gtheta (q(q+1)/2,)    out (if want_grad)
 *   predict                       1: state is valid
 * With a valid state each group's Newton iteration starts from the first-order
 * prediction of its mode (implicit differentiation of u = T'g at the previous
 * mode): du = P [dT'g - T'(sum w z dbase + A dT u)], taken when every
 * |du_a| <= 1 (else the previous mode): a search's nearby points (the
 * differences of a Hessian, short steps) need one Newton step less.
 * Returns the deviance without the response's constants, or raises
 * ArithmeticError when a group's Newton iteration fails.
 * ------------------------------------------------------------------------ */
#define VEC_MAXQ 16
#define VEC_SAFE_D 1.0 /* max |z'T s| up to which a Newton step surely lowers f */

/* The rows' eta = base + z'b, w = wt b'', w3 = wt b''', lp = wt (y - mu), sum l' z
 * and the lower triangle of A = sum w z z'; with want_f also returns
 * sum wt (y eta - b(eta)) (else 0).  The expressions are cumulant()'s. */
static inline __attribute__((always_inline)) double
vec_point_q(int logit, int want_f, const double *base, const double *Z, const double *y,
            const double *wt, int64_t m, int q, const double *bvec, double *gz, double *A,
            double *eta_out, double *w, double *w3, double *lp) {
    double ll = 0.0;
    /* local sums (registers when q is a constant) */
    double g_[VEC_MAXQ] = {0.0}, A_[VEC_MAXQ * VEC_MAXQ] = {0.0};
    for (int64_t i = 0; i < m; i++) {
        const double *zi = Z + i * q;
        double eta = base[i];
        for (int a = 0; a < q; a++) eta += zi[a] * bvec[a];
        double mu, v, v3, l1, wi;
        if (logit >= 2) { /* probit, cloglog: l', the observed curvature, W' (or O') */
            double Wf, o1;
            ll += link_row(logit & 1, eta, y[i], wt[i], &l1, &wi, &Wf, &v3, logit >= 4 ? &o1 : NULL);
            w3[i] = logit >= 4 ? o1 : v3;
        } else {
            if (logit) {
                double e = exp(-fabs(eta));
                double rr = 1.0 / (1.0 + e);
                mu = eta >= 0 ? rr : e * rr;
                v = e * rr * rr;
                v3 = v * (1.0 - 2.0 * mu);
                if (want_f) ll += wt[i] * (y[i] * eta - ((eta > 0 ? eta : 0.0) + log1p(e)));
            } else {
                mu = exp(eta < 700.0 ? eta : 700.0);
                v = v3 = mu;
                ll += wt[i] * (y[i] * eta - mu);
            }
            l1 = wt[i] * (y[i] - mu);
            wi = wt[i] * v;
            w3[i] = wt[i] * v3;
        }
        eta_out[i] = eta;
        w[i] = wi;
        lp[i] = l1;
        for (int a = 0; a < q; a++) {
            g_[a] += l1 * zi[a];
            double wa = wi * zi[a];
            for (int c = 0; c <= a; c++) A_[a * q + c] += wa * zi[c];
        }
    }
    memcpy(gz, g_, sizeof(double) * q);
    memcpy(A, A_, sizeof(double) * q * q);
    return ll;
}

/* vec_point_q with q = 2 and 3 compiled apart (the common random slopes) */
static double vec_point(int logit, int want_f, const double *base, const double *Z,
                        const double *y, const double *wt, int64_t m, int q,
                        const double *bvec, double *gz, double *A, double *eta_out, double *w,
                        double *w3, double *lp) {
    if (q == 2)
        return vec_point_q(logit, want_f, base, Z, y, wt, m, 2, bvec, gz, A, eta_out, w, w3, lp);
    if (q == 3)
        return vec_point_q(logit, want_f, base, Z, y, wt, m, 3, bvec, gz, A, eta_out, w, w3, lp);
    return vec_point_q(logit, want_f, base, Z, y, wt, m, q, bvec, gz, A, eta_out, w, w3, lp);
}

/* sum wt (y eta - b(eta)) at stored eta */
static double vec_loglik(int logit, const double *eta, const double *y, const double *wt,
                         int64_t m) {
    double ll = 0.0;
    for (int64_t i = 0; i < m; i++)
        ll += logit >= 2 ? link_row(logit & 1, eta[i], y[i], wt[i], NULL, NULL, NULL, NULL, NULL)
                         : wt[i] * (y[i] * eta[i] - cumulant(logit, eta[i], NULL, NULL, NULL));
    return ll;
}

/* H = I + T'AT from the lower triangle of A (filled in symmetrically) */
static void vec_curvature(int q, const double *T, double *A, double *AT, double *H) {
    for (int a = 0; a < q; a++)
        for (int c = a + 1; c < q; c++) A[a * q + c] = A[c * q + a];
    for (int a = 0; a < q; a++)
        for (int c = 0; c < q; c++) {
            double s = 0.0;
            for (int k = c; k < q; k++) s += A[a * q + k] * T[k * q + c]; /* T lower */
            AT[a * q + c] = s;
        }
    for (int a = 0; a < q; a++)
        for (int c = 0; c <= a; c++) {
            double s = 0.0;
            for (int k = a; k < q; k++) s += T[k * q + a] * AT[k * q + c];
            H[a * q + c] = H[c * q + a] = s + (a == c ? 1.0 : 0.0);
        }
}

/* Cholesky H = LL' in place (lower triangle, row-major); 0 if not positive definite */
static int vec_chol(double *H, int q) {
    for (int c = 0; c < q; c++) {
        double d = H[c * q + c];
        for (int k = 0; k < c; k++) d -= H[c * q + k] * H[c * q + k];
        if (!(d > 0.0) || !isfinite(d)) return 0;
        d = sqrt(d);
        H[c * q + c] = d;
        for (int r = c + 1; r < q; r++) {
            double s = H[r * q + c];
            for (int k = 0; k < c; k++) s -= H[r * q + k] * H[c * q + k];
            H[r * q + c] = s / d;
        }
    }
    return 1;
}

/* x = (LL')^{-1} g */
static void vec_solve(const double *L, int q, const double *g, double *x) {
    for (int a = 0; a < q; a++) {
        double s = g[a];
        for (int k = 0; k < a; k++) s -= L[a * q + k] * x[k];
        x[a] = s / L[a * q + a];
    }
    for (int a = q - 1; a >= 0; a--) {
        double s = x[a];
        for (int k = a + 1; k < q; k++) s -= L[k * q + a] * x[k];
        x[a] = s / L[a * q + a];
    }
}

/* out = T x (T lower triangular) */
static inline void vec_tmul(const double *T, int q, const double *x, double *out) {
    for (int a = 0; a < q; a++) {
        double s = 0.0;
        for (int k = 0; k <= a; k++) s += T[a * q + k] * x[k];
        out[a] = s;
    }
}

/* out = T'x (T lower triangular) */
static inline void vec_ttmul(const double *T, int q, const double *x, double *out) {
    for (int a = 0; a < q; a++) {
        double s = 0.0;
        for (int k = a; k < q; k++) s += T[k * q + a] * x[k];
        out[a] = s;
    }
}

static PyObject *vector_glmm(PyObject *self, PyObject *args) {
    Py_buffer bb, bZ, by, bw, bs, bzm, bth, bu, bsc, bst, bwr, bdb, bprev, br, bgt;
    int q, logit, want_grad, predict;
    double step_tol;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*w*w*w*y*y*w*w*iiidi", &bb, &bZ, &by, &bw, &bs,
                          &bzm, &bth, &bu, &bsc, &bst, &bwr, &bdb, &bprev, &br, &bgt, &q, &logit,
                          &want_grad, &step_tol, &predict))
        return NULL;
    const double *zmax_all = bzm.buf;
    const double *baseall = bb.buf, *Zall = bZ.buf, *y = by.buf, *wt = bw.buf;
    const int64_t *starts = bs.buf;
    const double *theta = bth.buf, *dbase = bdb.buf, *prev = bprev.buf;
    double *U = bu.buf, *scratch = bsc.buf, *state = bst.buf, *wrow = bwr.buf;
    double *rrow = br.buf, *gtheta = bgt.buf;
    int failed = 0;
    double dev = 0.0;
    int64_t n = (int64_t)(by.len / sizeof(double));
    int nt = q * (q + 1) / 2;
    int64_t J = q >= 1 ? (int64_t)(bu.len / sizeof(double)) / q : 0;
    int64_t ns = 2 * q * q + q; /* state per group */
    if (q < 1 || q > VEC_MAXQ) {
        failed = 3;
        goto done;
    }
    if ((int64_t)(bst.len / sizeof(double)) < J * ns || (int64_t)(bwr.len / sizeof(double)) < n ||
        (int64_t)(bdb.len / sizeof(double)) < n || (int64_t)(br.len / sizeof(double)) < n ||
        (int64_t)(bprev.len / sizeof(double)) < nt || (int64_t)(bgt.len / sizeof(double)) < nt ||
        (int64_t)(bb.len / sizeof(double)) < n || (int64_t)(bZ.len / sizeof(double)) < n * q ||
        (int64_t)(bs.len / sizeof(int64_t)) < J + 1 || starts[J] > n ||
        (int64_t)(bzm.len / sizeof(double)) < J * q) {
        failed = 4;
        goto done;
    }
    double T[VEC_MAXQ * VEC_MAXQ] = {0.0}, Tp[VEC_MAXQ * VEC_MAXQ] = {0.0};
    double dT[VEC_MAXQ * VEC_MAXQ] = {0.0}, GT[VEC_MAXQ * VEC_MAXQ] = {0.0};
    for (int c = 0, k = 0; c < q; c++)
        for (int r = c; r < q; r++, k++) {
            T[r * q + c] = theta[k];
            Tp[r * q + c] = prev[k];
            dT[r * q + c] = theta[k] - prev[k];
        }
    Py_BEGIN_ALLOW_THREADS
    double A[VEC_MAXQ * VEC_MAXQ], AT[VEC_MAXQ * VEC_MAXQ], H[VEC_MAXQ * VEC_MAXQ];
    double P[VEC_MAXQ * VEC_MAXQ], M[VEC_MAXQ * VEC_MAXQ], TP[VEC_MAXQ * VEC_MAXQ];
    double gz[VEC_MAXQ], bvec[VEC_MAXQ], gvec[VEC_MAXQ], step[VEC_MAXQ], un[VEC_MAXQ];
    double gn[VEC_MAXQ], An[VEC_MAXQ * VEC_MAXQ], cvec[VEC_MAXQ], tc[VEC_MAXQ];
    double vj[VEC_MAXQ], Tv[VEC_MAXQ], ATv[VEC_MAXQ], Ts[VEC_MAXQ];
    double AF[VEC_MAXQ * VEC_MAXQ], ATF[VEC_MAXQ * VEC_MAXQ], HF[VEC_MAXQ * VEC_MAXQ];
    double PO[VEC_MAXQ * VEC_MAXQ];
    for (int64_t j = 0; j < J && !failed; j++) {
        int64_t r0 = starts[j], m = starts[j + 1] - r0;
        const double *Z = Zall + r0 * q, *yj = y + r0, *wj = wt + r0, *base = baseall + r0;
        double *u = U + j * q;
        /* scratch: h, then the rows' eta, w, w3, lp at the current point and at a
         * trial point (swapped when the trial is taken) */
        double *hrow = scratch;
        double *eta = hrow + m, *w = eta + m, *w3 = w + m, *lp = w3 + m;
        double *etan = lp + m, *wn = etan + m, *w3n = wn + m, *lpn = w3n + m;
        double *sP = state + j * ns, *sA = sP + q * q, *sg = sA + q * q;
        const double *zmax = zmax_all + j * q;
        if (predict) { /* the first-order prediction of the mode */
            double sv[VEC_MAXQ], rv[VEC_MAXQ], du[VEC_MAXQ], dTu[VEC_MAXQ];
            vec_tmul(dT, q, u, dTu);
            for (int a = 0; a < q; a++) sv[a] = 0.0;
            if (q == 2) { /* the common case, in registers */
                double s0 = 0.0, s1 = 0.0;
                for (int64_t i = 0; i < m; i++) {
                    double wd = wrow[r0 + i] * dbase[r0 + i];
                    s0 += wd * Z[2 * i];
                    s1 += wd * Z[2 * i + 1];
                }
                sv[0] = s0;
                sv[1] = s1;
            } else
                for (int64_t i = 0; i < m; i++) {
                    double wd = wrow[r0 + i] * dbase[r0 + i];
                    for (int a = 0; a < q; a++) sv[a] += wd * Z[i * q + a];
                }
            for (int a = 0; a < q; a++)
                for (int k = 0; k < q; k++) sv[a] += sA[a * q + k] * dTu[k];
            for (int a = 0; a < q; a++) {
                double s_ = 0.0;
                for (int k = a; k < q; k++) s_ += dT[k * q + a] * sg[k] - Tp[k * q + a] * sv[k];
                rv[a] = s_;
            }
            int take = 1; /* every |du_a| <= 1, NaN refused */
            for (int a = 0; a < q; a++) {
                double s_ = 0.0;
                for (int k = 0; k < q; k++) s_ += sP[a * q + k] * rv[k];
                du[a] = s_;
                if (!(fabs(s_) <= 1.0)) take = 0;
            }
            if (take)
                for (int a = 0; a < q; a++) u[a] += du[a];
        }
        /* Newton iterations on u, a step halved while f rises */
        vec_tmul(T, q, u, bvec);
        double uu = 0.0;
        for (int a = 0; a < q; a++) uu += u[a] * u[a];
        /* f (a log per row for the logit) only where a step needs it, or at the mode */
        double f = 0.5 * uu - vec_point(logit, 0, base, Z, yj, wj, m, q, bvec, gz, A, eta, w, w3, lp);
        int f_known = logit != 1, converged = 0; /* the logit's f is formed lazily */
        for (int it = 0; it < MAX_NEWTON && (!f_known || isfinite(f)); it++) {
            vec_curvature(q, T, A, AT, H);
            if (!vec_chol(H, q)) break;
            vec_ttmul(T, q, gz, gvec);
            for (int a = 0; a < q; a++) gvec[a] = u[a] - gvec[a]; /* u - T'g */
            vec_solve(H, q, gvec, step);
            double smax = 0.0;
            int finite = 1;
            for (int a = 0; a < q; a++) {
                if (!isfinite(step[a])) finite = 0;
                smax = fmax(smax, fabs(step[a]));
            }
            if (!finite) break;
            if (smax < step_tol) {
                converged = 1;
                break;
            }
            vec_tmul(T, q, step, Ts);
            double D = 0.0; /* a bound on max_i |z_i'T s| */
            for (int a = 0; a < q; a++) D += zmax[a] * fabs(Ts[a]);
            int safe = D <= VEC_SAFE_D && logit < 2; /* non-canonical: f decides */
            if (!safe && !f_known) {
                f = 0.5 * uu - vec_loglik(logit, eta, yj, wj, m);
                f_known = 1;
            }
            int ok = 0;
            for (int hv = 0; hv < MAX_HALVINGS; hv++) {
                double uun = 0.0;
                for (int a = 0; a < q; a++) {
                    un[a] = u[a] - step[a];
                    uun += un[a] * un[a];
                }
                vec_tmul(T, q, un, bvec);
                double fn = 0.5 * uun - vec_point(logit, !safe, base, Z, yj, wj, m, q, bvec, gn,
                                                  An, etan, wn, w3n, lpn);
                if (safe || fn <= f + 1e-12 * (1.0 + fabs(f))) {
                    double *sw;
                    sw = eta, eta = etan, etan = sw;
                    sw = w, w = wn, wn = sw;
                    sw = w3, w3 = w3n, w3n = sw;
                    sw = lp, lp = lpn, lpn = sw;
                    memcpy(u, un, sizeof(double) * q);
                    memcpy(gz, gn, sizeof(double) * q);
                    memcpy(A, An, sizeof(double) * q * q);
                    uu = uun;
                    f = fn;
                    f_known = !safe || logit != 1; /* others' f comes with the pass */
                    ok = 1;
                    break;
                }
                for (int a = 0; a < q; a++) step[a] *= 0.5;
            }
            if (!ok) break;
        }
        if (!converged) {
            failed = 1;
            break;
        }
        if (!f_known) f = 0.5 * uu - vec_loglik(logit, eta, yj, wj, m);
        if (!isfinite(f)) {
            failed = 1;
            break;
        }
        /* at the mode: eta, w, w3, lp, g and A are those of the last point taken
         * (w: the Newton curvature; for probit and cloglog the observed one) */
        vec_curvature(q, T, A, AT, H);
        if (!vec_chol(H, q)) {
            failed = 1;
            break;
        }
        /* the Laplace curvature: the Newton one for canonical links; lme4's,
         * Fisher's, for probit and cloglog (W, and its derivative W' in w3) */
        double *HL = H, *ATL = AT;
        if (logit == 2 || logit == 3) {
            memset(AF, 0, sizeof(double) * q * q);
            for (int64_t i = 0; i < m; i++) {
                const double *zi = Z + i * q;
                double l1_, o_, Wf, W1;
                link_row(logit == 3, eta[i], yj[i], wj[i], &l1_, &o_, &Wf, &W1, NULL);
                for (int a = 0; a < q; a++)
                    for (int c = 0; c <= a; c++) AF[a * q + c] += Wf * zi[a] * zi[c];
            }
            vec_curvature(q, T, AF, ATF, HF);
            if (!vec_chol(HF, q)) {
                failed = 1;
                break;
            }
            HL = HF;
            ATL = ATF;
        }
        double logdet = 0.0;
        for (int a = 0; a < q; a++) logdet += 2.0 * log(HL[a * q + a]);
        dev += 2.0 * f + logdet;
        if (!want_grad) continue;
        /* P = HL^{-1} and the adjoint's PO = H^{-1} (the same for canonical
         * links), column by column */
        for (int c = 0; c < q; c++) {
            for (int a = 0; a < q; a++) gvec[a] = a == c ? 1.0 : 0.0;
            vec_solve(HL, q, gvec, step);
            for (int a = 0; a < q; a++) P[a * q + c] = step[a];
            if (HL != H) {
                vec_solve(H, q, gvec, step);
                for (int a = 0; a < q; a++) PO[a * q + c] = step[a];
            }
        }
        const double *Pv = HL != H ? PO : P;
        /* TP = T P, M = T P T' */
        for (int a = 0; a < q; a++)
            for (int c = 0; c < q; c++) {
                double s = 0.0;
                for (int k = 0; k <= a; k++) s += T[a * q + k] * P[k * q + c];
                TP[a * q + c] = s;
            }
        for (int a = 0; a < q; a++)
            for (int c = 0; c <= a; c++) {
                double s = 0.0;
                for (int k = 0; k <= c; k++) s += TP[a * q + k] * T[c * q + k];
                M[a * q + c] = M[c * q + a] = s;
            }
        /* h_i = z_i'M z_i, c = sum w' h z */
        memset(cvec, 0, sizeof(double) * q);
        for (int64_t i = 0; i < m; i++) {
            const double *zi = Z + i * q;
            double hi = 0.0;
            for (int a = 0; a < q; a++) {
                double s = 0.0;
                for (int c = 0; c < q; c++) s += M[a * q + c] * zi[c];
                hi += zi[a] * s;
            }
            hrow[i] = hi;
            double wh = w3[i] * hi;
            for (int a = 0; a < q; a++) cvec[a] += wh * zi[a];
        }
        /* v = PO T'c (the adjoint of the modes), Tv = T v, ATv = A T v */
        vec_ttmul(T, q, cvec, tc);
        for (int a = 0; a < q; a++) {
            double s = 0.0;
            for (int c = 0; c < q; c++) s += Pv[a * q + c] * tc[c];
            vj[a] = s;
        }
        vec_tmul(T, q, vj, Tv);
        for (int a = 0; a < q; a++) {
            double s = 0.0;
            for (int c = 0; c < q; c++) s += A[a * q + c] * Tv[c];
            ATv[a] = s;
        }
        for (int64_t i = 0; i < m; i++) {
            const double *zi = Z + i * q;
            double ztv = 0.0;
            for (int a = 0; a < q; a++) ztv += zi[a] * Tv[a];
            rrow[r0 + i] = -2.0 * lp[i] + w3[i] * hrow[i] - w[i] * ztv;
            wrow[r0 + i] = w[i];
        }
        /* dD/dT: (c - ATv - 2g) u' + g v' + 2 (A_L T) P */
        for (int a = 0; a < q; a++) {
            double ca = cvec[a] - ATv[a] - 2.0 * gz[a];
            for (int c = 0; c <= a; c++) {
                double s = 0.0;
                for (int k = 0; k < q; k++) s += ATL[a * q + k] * P[k * q + c];
                GT[a * q + c] += ca * u[c] + gz[a] * vj[c] + 2.0 * s;
            }
        }
        /* the next evaluation's prediction: the Newton curvature's */
        memcpy(sP, Pv, sizeof(double) * q * q);
        memcpy(sA, A, sizeof(double) * q * q);
        memcpy(sg, gz, sizeof(double) * q);
    }
    Py_END_ALLOW_THREADS
    if (!failed && want_grad)
        for (int c = 0, k = 0; c < q; c++)
            for (int r = c; r < q; r++) gtheta[k++] = GT[r * q + c];
done:
    PyBuffer_Release(&bb); PyBuffer_Release(&bZ); PyBuffer_Release(&by);
    PyBuffer_Release(&bw); PyBuffer_Release(&bs); PyBuffer_Release(&bth);
    PyBuffer_Release(&bzm);
    PyBuffer_Release(&bu); PyBuffer_Release(&bsc); PyBuffer_Release(&bst);
    PyBuffer_Release(&bwr); PyBuffer_Release(&bdb); PyBuffer_Release(&bprev);
    PyBuffer_Release(&br); PyBuffer_Release(&bgt);
    if (failed == 4) {
        PyErr_SetString(PyExc_ValueError, "vector_glmm: an array has the wrong length");
        return NULL;
    }
    if (failed == 3) {
        PyErr_SetString(PyExc_ValueError, "vector_glmm takes 1 to 16 random effects per level");
        return NULL;
    }
    if (failed) {
        PyErr_SetString(PyExc_ArithmeticError,
                        "the conditional modes of a group did not converge");
        return NULL;
    }
    return PyFloat_FromDouble(dev);
}

/* ------------------------------------------------------------------------
 * One scalar term, binomial with a probit or cloglog link, Laplace
 * (multilevel.glmm.exact.link): Fisher scoring for each group's mode (halved
 * while f rises), the Laplace deviance with Fisher's curvature and its exact
 * gradient in (theta, beta).  Formulas: link.py.
 * ------------------------------------------------------------------------ */
#define LN_SQRT_2PI 0.91893853320467274178

/* Row terms at eta: the log-likelihood, and when lp != NULL also l', O = -l'',
 * W and W' (and O' = dO/deta where O1 != NULL).  Probit: one erfc gives the smaller tail probability c (Phi of
 * -|eta|), log1p(-c) the larger one's logarithm, and the Mills ratios
 * A(+-eta) = phi(eta)/Phi(+-eta) share one exp (the series where c underflows). */
static inline double link_row(int cloglog, double eta, double y, double wt, double *lp,
                              double *obs, double *W, double *W1, double *O1) {
    double ll;
    if (cloglog) {
        double t = exp(eta < 700.0 ? eta : 700.0);
        double lm = log(-expm1(-t)), l1m = -t;
        ll = wt * ((y > 0 ? y * lm : 0.0) + (y < 1 ? (1.0 - y) * l1m : 0.0));
        if (lp) {
            double B = t > 1e-300 ? t / expm1(t < 700.0 ? t : 700.0) : 1.0;
            double dB = B * (1.0 - t - B);
            *lp = wt * (y * B - (1.0 - y) * t);
            *obs = -wt * (y * dB - (1.0 - y) * t);
            *W = wt * t * B;
            *W1 = wt * t * B * (2.0 - t - B);
            if (O1) *O1 = -wt * (y * (dB * (1.0 - t - B) - B * (t + dB)) - (1.0 - y) * t);
        }
        return ll;
    }
    double a = fabs(eta), c, lsmall, Asmall;
    double ph = exp(-0.5 * eta * eta - LN_SQRT_2PI);
    if (a <= 30.0) {
        c = 0.5 * erfc(a / M_SQRT2);
        lsmall = log(c);
        Asmall = ph / c;
    } else {
        double r = 1.0 / (a * a), term = 1.0, sr = 1.0;
        for (int k = 1; k <= 6; k++) {
            term *= -(2.0 * k - 1.0) * r;
            sr += term;
        }
        lsmall = -0.5 * a * a - log(a) - LN_SQRT_2PI + log(sr);
        Asmall = a / sr;
        c = exp(lsmall);
    }
    double llarge = log1p(-c), Alarge = ph / (1.0 - c);
    double lm = eta >= 0 ? llarge : lsmall, l1m = eta >= 0 ? lsmall : llarge;
    ll = wt * ((y > 0 ? y * lm : 0.0) + (y < 1 ? (1.0 - y) * l1m : 0.0));
    if (lp) {
        double Ap = eta >= 0 ? Alarge : Asmall, Am = eta >= 0 ? Asmall : Alarge;
        double dAp = -Ap * (eta + Ap), dAm = -Am * (-eta + Am);
        *lp = wt * (y * Ap - (1.0 - y) * Am);
        *obs = -wt * (y * dAp + (1.0 - y) * dAm);
        *W = wt * Ap * Am;
        *W1 = wt * (dAp * Am - Ap * dAm);
        if (O1) { /* O' = -(third derivative of l): A'' = -A'(x + A) - A(1 + A') */
            double ddAp = -dAp * (eta + Ap) - Ap * (1.0 + dAp);
            double ddAm = -dAm * (-eta + Am) - Am * (1.0 + dAm);
            *O1 = -wt * (y * ddAp - (1.0 - y) * ddAm);
        }
    }
    return ll;
}

/* f(u) = u^2/2 - sum l over a group's rows, with the row terms at u and the
 * sums the scoring step needs (one pass: an accepted step's terms are the
 * next step's) */
static double link_point(int cloglog, const double *base, const double *z, const double *y,
                         const double *wt, int64_t m, double theta, double u, double *lp,
                         double *obs, double *W, double *W1, double *Szlp, double *Sz2W) {
    double s = 0.0, a = 0.0, b = 0.0;
    for (int64_t i = 0; i < m; i++) {
        s += link_row(cloglog, base[i] + theta * z[i] * u, y[i], wt[i], lp + i, obs + i, W + i,
                      W1 + i, NULL);
        a += z[i] * lp[i];
        b += z[i] * z[i] * W[i];
    }
    *Szlp = a;
    *Sz2W = b;
    return 0.5 * u * u - s;
}


static PyObject *link_glmm(PyObject *self, PyObject *args) {
    Py_buffer bX, bz, bo, by, bw, bs, bphi, bu, bg, bsc;
    int p, cloglog, want_grad;
    double step_tol;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*w*w*iiid", &bX, &bz, &bo, &by, &bw, &bs, &bphi,
                          &bu, &bg, &bsc, &p, &cloglog, &want_grad, &step_tol))
        return NULL;
    const double *X = bX.buf, *z = bz.buf, *off = bo.buf, *y = by.buf, *wt = bw.buf;
    const int64_t *starts = bs.buf;
    const double *phi = bphi.buf;
    double *U = bu.buf, *grad = bg.buf, *scratch = bsc.buf;
    int64_t J = (int64_t)(bu.len / sizeof(double));
    double theta = phi[0];
    const double *beta = phi + 1;
    double dev = 0.0, gtheta = 0.0;
    int failed = 0;
    if (want_grad)
        for (int a = 0; a <= p; a++) grad[a] = 0.0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t j = 0; j < J && !failed; j++) {
        int64_t r0 = starts[j], m = starts[j + 1] - r0;
        const double *zj = z + r0, *yj = y + r0, *wj = wt + r0;
        double *base = scratch, *lp = base + m, *obs = lp + m, *W = obs + m, *W1 = W + m;
        group_base(X + r0 * p, off + r0, beta, m, p, base);
        /* Fisher scoring on u, halving while f rises */
        double u = U[j], f, Szlp, Sz2W;
        GroupRows rows = {cloglog, base, zj, yj, wj, m, theta, lp, obs, W, W1};
        if (!group_mode(&rows, step_tol, 200, &u, &f, &Szlp, &Sz2W)) {
            failed = 1;
            break;
        }
        U[j] = u;
        double h = 1.0 + theta * theta * Sz2W;
        dev += 2.0 * f + log(h);
        if (!want_grad || !isfinite(dev)) continue;
        double Sz3W1 = 0.0, Sz2O = 0.0;
        for (int64_t i = 0; i < m; i++) {
            Sz3W1 += zj[i] * zj[i] * zj[i] * W1[i];
            Sz2O += zj[i] * zj[i] * obs[i];
        }
        double hO = 1.0 + theta * theta * Sz2O;
        double alpha = 1.0 / h;
        double gamma = alpha * theta * theta * theta * Sz3W1;
        for (int64_t i = 0; i < m; i++) {
            double r = -2.0 * lp[i] + theta * theta * alpha * zj[i] * zj[i] * W1[i] -
                       theta * (gamma / hO) * zj[i] * obs[i];
            const double *xi = X + (r0 + i) * p;
            for (int a = 0; a < p; a++) grad[1 + a] += r * xi[a];
            gtheta += -2.0 * lp[i] * zj[i] * u;
        }
        gtheta += alpha * (2.0 * theta * Sz2W + theta * theta * u * Sz3W1) +
                  gamma * (Szlp - theta * u * Sz2O) / hO;
    }
    Py_END_ALLOW_THREADS
    if (want_grad) grad[0] = gtheta;
    PyBuffer_Release(&bX); PyBuffer_Release(&bz); PyBuffer_Release(&bo);
    PyBuffer_Release(&by); PyBuffer_Release(&bw); PyBuffer_Release(&bs);
    PyBuffer_Release(&bphi); PyBuffer_Release(&bu); PyBuffer_Release(&bg);
    PyBuffer_Release(&bsc);
    if (failed) {
        PyErr_SetString(PyExc_ArithmeticError, "the conditional mode of a group did not converge");
        return NULL;
    }
    return PyFloat_FromDouble(dev);
}

/* ------------------------------------------------------------------------
 * The GLM without random effects (binomial-logit, Poisson-log) by IRLS, the
 * start of every search: PirlsProblem.initial_beta does the same in numpy
 * (the same weights, clamps and stopping rule), and this removes its ~25
 * numpy calls per iteration.
 * ------------------------------------------------------------------------ */

/* Fisher weight and working residual (y - mu)/mu' at eta, clamped as the
 * families' irls_terms are (EPS: machine epsilon, TINY: smallest normal). */
static inline void irls_row(int logit, double eta, double y, double wt, double *w, double *res) {
    const double EPS = 2.220446049250313e-16, TINY = 2.2250738585072014e-308;
    double mu, d;
    if (logit) {
        double e = exp(-(eta > -700.0 ? eta : -700.0));
        mu = 1.0 / (1.0 + e);
        d = e * mu * mu;
        if (d < EPS) d = EPS;
        double v = mu * (1.0 - mu);
        *w = wt * d * d / (v > TINY ? v : TINY);
    } else {
        mu = exp(eta);
        d = mu > EPS ? mu : EPS;
        *w = wt * d * (d / (mu > TINY ? mu : TINY));
    }
    *res = (y - mu) / d;
}

/* A row's log-density without its constant, as the families' loglik_kernel. */
static inline double glm_loglik_row(int logit, double eta, double y, double wt) {
    if (logit) {
        double sp = log(1.0 + exp(-fabs(eta))) + (eta > 0.0 ? eta : 0.0);
        return wt * (y * eta - sp);
    }
    double e = eta < 700.0 ? eta : 700.0;
    return wt * ((y > 0.0 ? y * e : 0.0) - exp(e));
}

/* X'WX (lower and upper) and X'Wz over the rows, W = diag(w). */
static void weighted_normal(const double *X, const double *w, const double *z, int64_t n, int p,
                            double *A, double *b) {
    memset(A, 0, sizeof(double) * p * p);
    if (b) memset(b, 0, sizeof(double) * p);
    for (int64_t i = 0; i < n; i++) {
        const double *xi = X + i * p;
        for (int a = 0; a < p; a++) {
            double wa = w[i] * xi[a];
            for (int c = 0; c <= a; c++) A[a * p + c] += wa * xi[c];
            if (b) b[a] += wa * z[i];
        }
    }
    for (int a = 0; a < p; a++)
        for (int c = 0; c < a; c++) A[c * p + a] = A[a * p + c];
}

static PyObject *glm_irls(PyObject *self, PyObject *args) {
    Py_buffer bX, bo, by, bw, be, bb, bc;
    int logit, maxit;
    double cnst;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*w*w*idi", &bX, &bo, &by, &bw, &be, &bb, &bc, &logit,
                          &cnst, &maxit))
        return NULL;
    const double *X = bX.buf, *off = bo.buf, *y = by.buf, *wt = bw.buf;
    double *eta = be.buf, *beta = bb.buf, *curv = bc.buf;
    int64_t n = (int64_t)(by.len / sizeof(double));
    int p = (int)(bb.len / sizeof(double));
    long status = -1; /* -1: fall back to numpy (a singular X'WX, a step not finite) */
    double *work = malloc(sizeof(double) * (2 * n + p * p + 2 * p + 1));
    if (!work) goto done;
    double *w = work, *zz = w + n, *A = zz + n, *bn = A + p * p;
    double dev = INFINITY;
    int it = 0;
    for (int a = 0; a < p; a++) beta[a] = 0.0;
    for (; it < maxit; it++) {
        for (int64_t i = 0; i < n; i++) {
            double res;
            irls_row(logit, eta[i], y[i], wt[i], &w[i], &res);
            zz[i] = eta[i] - off[i] + res;
        }
        weighted_normal(X, w, zz, n, p, A, bn);
        if (!vec_chol(A, p)) goto done;
        vec_solve(A, p, bn, bn);
        for (int a = 0; a < p; a++)
            if (!isfinite(bn[a])) goto done;
        /* the new eta in zz (the working response is not needed any more) */
        double ll = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double s = off[i];
            for (int a = 0; a < p; a++) s += X[i * p + a] * bn[a];
            zz[i] = s;
            ll += glm_loglik_row(logit, s, y[i], wt[i]);
        }
        double dev_new = -2.0 * (ll + cnst);
        if (!isfinite(dev_new)) break;
        memcpy(beta, bn, sizeof(double) * p);
        memcpy(eta, zz, sizeof(double) * n);
        if (fabs(dev - dev_new) < 1e-10 * (1.0 + fabs(dev_new))) {
            it++;
            break;
        }
        dev = dev_new;
    }
    /* X'WX at offset + X beta (the fit's curvature, for the search's whitening) */
    for (int64_t i = 0; i < n; i++) {
        double s = off[i], res;
        for (int a = 0; a < p; a++) s += X[i * p + a] * beta[a];
        irls_row(logit, s, y[i], wt[i], &w[i], &res);
    }
    weighted_normal(X, w, NULL, n, p, curv, NULL);
    status = it;
done:
    free(work);
    PyBuffer_Release(&bX); PyBuffer_Release(&bo); PyBuffer_Release(&by);
    PyBuffer_Release(&bw); PyBuffer_Release(&be); PyBuffer_Release(&bb);
    PyBuffer_Release(&bc);
    return PyLong_FromLong(status);
}

static PyMethodDef methods[] = {
    {"scalar_glmm", scalar_glmm, METH_VARARGS,
     "scalar_glmm(X, z, offset, y, wt, starts, t, logw, phi, u, grad, scratch, p, logit, "
     "want_grad, step_tol) -> deviance without constants"},
    {"scalar_laplace_hessian", scalar_laplace_hessian, METH_VARARGS,
     "scalar_laplace_hessian(X, z, offset, y, wt, starts, phi, u, grad, hess, scratch, p, logit, "
     "step_tol) -> Laplace deviance without constants, with its gradient and Hessian"},
    {"glm_irls", glm_irls, METH_VARARGS,
     "glm_irls(X, offset, y, wt, eta, beta, curv, logit, const, maxit) -> iterations, "
     "or -1 where numpy's IRLS must decide"},
    {"set_lapack", set_lapack, METH_VARARGS, "set_lapack(dpotrf, dtrtri, dpotri capsules)"},
    {"laplace_terms", laplace_terms, METH_VARARGS,
     "laplace_terms(X, y, wt, offset, z, pos, slot, erow, ecol, pe1, pe2, term, phi, "
     "u, grad, work, n0, Qr, logit, want_grad, step_tol) -> Laplace deviance without constants"},
    {"vector_glmm", vector_glmm, METH_VARARGS,
     "vector_glmm(base, Z, y, wt, starts, zmax, theta, u, scratch, state, wrow, dbase, prev_theta, r, "
     "gtheta, q, logit, want_grad, step_tol, predict) -> Laplace deviance without constants "
     "(one vector term)"},
    {"link_glmm", link_glmm, METH_VARARGS,
     "link_glmm(X, z, offset, y, wt, starts, phi, u, grad, scratch, p, cloglog, want_grad, "
     "step_tol) -> Laplace deviance without constants (probit or cloglog, one scalar term)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_glmm_kernels",
                                    "Compiled GLMM deviance kernel (one scalar random effect).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__glmm_kernels(void) { return PyModule_Create(&module); }

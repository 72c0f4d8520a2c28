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
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_NEWTON 100
#define MAX_HALVINGS 40

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
    double *Fk = K <= 64 ? F : Pk + K;
    if (!Pk) {
        failed = 2;
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (int64_t j = 0; j < J && !failed; j++) {
        int64_t r0 = starts[j], m = starts[j + 1] - r0;
        const double *zj = z + r0, *yj = y + r0, *wj = wt + r0;
        /* scratch: base, w (=wt b''), w3 (=wt b'''), lp (=wt (y - mu)), then K columns */
        double *base = scratch, *w = base + m, *w3 = w + m, *lp = w3 + m, *lpk = lp + m;
        for (int64_t i = 0; i < m; i++) {
            const double *xi = X + (r0 + i) * p;
            double s = off[r0 + i];
            for (int a = 0; a < p; a++) s += xi[a] * beta[a];
            base[i] = s;
        }
        /* Newton iterations on u, halving while f rises */
        double u = U[j];
        double Sz2w, Szlp;
        double f = group_point(logit, base, zj, yj, wj, m, theta, u, &Szlp, &Sz2w);
        int converged = 0;
        for (int it = 0; it < MAX_NEWTON; it++) {
            double h = 1.0 + theta * theta * Sz2w;
            double step = (u - theta * Szlp) / h;
            if (!isfinite(step)) break;
            if (fabs(step) < step_tol) {
                converged = 1;
                break;
            }
            int ok = 0;
            for (int k = 0; k < MAX_HALVINGS; k++) {
                double un = u - step, a, c;
                double fn = group_point(logit, base, zj, yj, wj, m, theta, un, &a, &c);
                if (fn <= f + 1e-12 * (1.0 + fabs(f))) {
                    u = un;
                    f = fn;
                    Szlp = a;
                    Sz2w = c;
                    ok = 1;
                    break;
                }
                step *= 0.5;
            }
            if (!ok) break;
        }
        if (!converged) {
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

static PyMethodDef methods[] = {
    {"scalar_glmm", scalar_glmm, METH_VARARGS,
     "scalar_glmm(X, z, offset, y, wt, starts, t, logw, phi, u, grad, scratch, p, logit, "
     "want_grad, step_tol) -> deviance without constants"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_glmm_kernels",
                                    "Compiled GLMM deviance kernel (one scalar random effect).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__glmm_kernels(void) { return PyModule_Create(&module); }

/*
 * The bounded BFGS search over theta, compiled as a whole
 * (multilevel.optimize.theta._bfgs is the same search in Python and the
 * fallback).  The criterion stays a Python callable; what this removes is the
 * search's own bookkeeping (small numpy operations on vectors of a few
 * entries), which on a small model costs several times the evaluations.
 *
 * bfgs_search(fg, x, lower, maxeval, Hinv0, hessian_start, newton_polish, max_step)
 *   fg(x) -> (value, gradient) evaluates (and logs) the criterion at a new
 *   float64 array x (n); x is updated in place to the optimum; lower (n)
 *   holds the bounds (-inf where none); Hinv0 is None or the caller's
 *   inverse Hessian approximation at x (n x n, C order).
 *   Returns (f, g, status, evals, hessian, snapped): status 0 converged,
 *   1 evaluation limit; hessian the last (x, coordinates, H) formed or None, in
 *   order; snapped whether parameters were put on their bound at the end.
 *
 * The steps, as _bfgs documents them:
 *   1. the value and gradient at x; the inverse Hessian approximation
 *      Hinv0, else I / max(1, |g|), or with hessian_start the inverse of the Hessian
 *      from forward differences of the gradient (steps 1e-4 max(1, |x|)),
 *      when that is clearly positive definite;
 *   2. iterations of a projected quasi-Newton step with an Armijo line search
 *      until the free gradient is below 1e-3 (1e-6 without the polish):
 *      free gradient pg (zero where theta sits on its bound and g >= 0);
 *      d = -Hinv pg on the free coordinates (steepest descent if not
 *      downhill), cut to length max_step; a trial that would reach a bound
 *      stops at a tenth of the remaining distance; the step length shrinks to
 *      the minimum of the parabola through f, its slope and the trial value,
 *      within [0.1, 0.5]; the BFGS update
 *      H + rho^2 (s'y + y'Hy) ss' - rho (Hy s' + s (Hy)'), rho = 1/s'y, when
 *      s'y > 1e-12 |s| |y|;
 *   3. with newton_polish, up to four Newton steps on the free coordinates
 *      with the Hessian from forward differences of the gradient (steps
 *      1e-5 max(1, |x|)), each no longer than 0.1 max(1, max |x|) and kept
 *      while the gradient halves;
 *   4. parameters within 1e-4 above their bound put on it when that does not
 *      raise the criterion.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Evaluate fg at xn (copied into a new array built by np_empty): value into *fv,
 * gradient into gv.  Returns 0 on a Python error. */
static int evaluate(PyObject *fg, PyObject *np_empty, const double *xn, int n,
                    double *fv, double *gv) {
    PyObject *arr = PyObject_CallFunction(np_empty, "i", n);
    if (!arr) return 0;
    Py_buffer b;
    if (PyObject_GetBuffer(arr, &b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(arr);
        return 0;
    }
    memcpy(b.buf, xn, sizeof(double) * n);
    PyBuffer_Release(&b);
    PyObject *res = PyObject_CallOneArg(fg, arr);
    Py_DECREF(arr);
    if (!res) return 0;
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_TypeError, "fg must return (value, gradient)");
        return 0;
    }
    double v = PyFloat_AsDouble(PyTuple_GET_ITEM(res, 0));
    if (v == -1.0 && PyErr_Occurred()) {
        Py_DECREF(res);
        return 0;
    }
    Py_buffer gb;
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(res, 1), &gb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        Py_DECREF(res);
        return 0;
    }
    int ok = gb.len == (Py_ssize_t)(sizeof(double) * n) && gb.format && strcmp(gb.format, "d") == 0;
    if (ok) memcpy(gv, gb.buf, sizeof(double) * n);
    PyBuffer_Release(&gb);
    Py_DECREF(res);
    if (!ok) {
        PyErr_SetString(PyExc_TypeError, "the gradient must be n float64 values");
        return 0;
    }
    *fv = v;
    return 1;
}

static double dot(const double *a, const double *b, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void scaled_identity(double *H, int n, double c) {
    memset(H, 0, sizeof(double) * n * n);
    for (int i = 0; i < n; i++) H[i * n + i] = c;
}

/* The buffers of one search: n-vectors and n x n matrices. */
typedef struct {
    PyObject *fg, *np_empty;
    int n;
    long evals;
} Search;

static int call(Search *S, const double *xn, double *fv, double *gv) {
    if (!evaluate(S->fg, S->np_empty, xn, S->n, fv, gv)) return 0;
    S->evals++;
    return 1;
}

/* A new float64 array of shape (r, c) (c == 0: a vector of r) holding v. */
static PyObject *new_array(Search *S, const double *v, int r, int c) {
    PyObject *shape = c ? Py_BuildValue("(ii)", r, c) : Py_BuildValue("i", r);
    if (!shape) return NULL;
    PyObject *arr = PyObject_CallOneArg(S->np_empty, shape);
    Py_DECREF(shape);
    if (!arr) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(arr, &b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    memcpy(b.buf, v, sizeof(double) * (size_t)r * (c ? c : 1));
    PyBuffer_Release(&b);
    return arr;
}

/* The Hessian in the coordinates idx (k of them) from forward differences of
 * the gradient from g at x, steps h (k), symmetrised, into H (k x k); xe and
 * ge are n-vectors of scratch. */
static int gradient_hessian(Search *S, const double *x, const double *g, const int *idx, int k,
                            const double *h, double *H, double *xe, double *ge) {
    int n = S->n;
    for (int a = 0; a < k; a++) {
        memcpy(xe, x, sizeof(double) * n);
        xe[idx[a]] = x[idx[a]] + h[a];
        double fe;
        if (!call(S, xe, &fe, ge)) return 0;
        for (int b = 0; b < k; b++) H[a * k + b] = (ge[idx[b]] - g[idx[b]]) / h[a];
    }
    for (int a = 0; a < k; a++)
        for (int b = a + 1; b < k; b++) {
            double m = 0.5 * (H[a * k + b] + H[b * k + a]);
            H[a * k + b] = H[b * k + a] = m;
        }
    return 1;
}

/* Eigenvalues of a symmetric k x k matrix (cyclic Jacobi rotations) into lam,
 * ascending; A is overwritten. */
static void eigenvalues(double *A, int k, double *lam) {
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0, diag = 0.0;
        for (int i = 0; i < k; i++) {
            diag += A[i * k + i] * A[i * k + i];
            for (int j = i + 1; j < k; j++) off += A[i * k + j] * A[i * k + j];
        }
        if (off <= 1e-32 * diag || off == 0.0) break;
        for (int p = 0; p < k; p++)
            for (int q = p + 1; q < k; q++) {
                double apq = A[p * k + q];
                if (apq == 0.0) continue;
                double tau = (A[q * k + q] - A[p * k + p]) / (2.0 * apq);
                double t = (tau >= 0 ? 1.0 : -1.0) / (fabs(tau) + sqrt(1.0 + tau * tau));
                double c = 1.0 / sqrt(1.0 + t * t), s = t * c;
                for (int r = 0; r < k; r++) { /* columns p and q */
                    double arp = A[r * k + p], arq = A[r * k + q];
                    A[r * k + p] = c * arp - s * arq;
                    A[r * k + q] = s * arp + c * arq;
                }
                for (int r = 0; r < k; r++) { /* rows p and q */
                    double apr = A[p * k + r], aqr = A[q * k + r];
                    A[p * k + r] = c * apr - s * aqr;
                    A[q * k + r] = s * apr + c * aqr;
                }
            }
    }
    for (int i = 0; i < k; i++) lam[i] = A[i * k + i];
    for (int i = 1; i < k; i++) { /* insertion sort: k is a handful */
        double v = lam[i];
        int j = i - 1;
        while (j >= 0 && lam[j] > v) {
            lam[j + 1] = lam[j];
            j--;
        }
        lam[j + 1] = v;
    }
}

/* Whether symmetric H (k x k) is clearly positive definite: finite, its
 * smallest eigenvalue above rtol times its largest (hessian.py's
 * clearly_positive_definite); scratch k*k + k. */
static int clearly_pd(const double *H, int k, double rtol, double *scratch) {
    if (k == 0) return 1;
    if (k == 1) return isfinite(H[0]) && H[0] > 0.0;
    for (int i = 0; i < k * k; i++)
        if (!isfinite(H[i])) return 0;
    double *A = scratch, *lam = scratch + k * k;
    memcpy(A, H, sizeof(double) * k * k);
    eigenvalues(A, k, lam);
    return lam[0] > rtol * fmax(lam[k - 1], 0.0);
}

/* Solve A z = b (k x k, LU with partial pivoting; A and b overwritten, z in b).
 * Returns 0 where A is exactly singular (as numpy's solve refuses). */
static int lu_solve(double *A, double *b, int k) {
    for (int c = 0; c < k; c++) {
        int piv = c;
        for (int r = c + 1; r < k; r++)
            if (fabs(A[r * k + c]) > fabs(A[piv * k + c])) piv = r;
        if (A[piv * k + c] == 0.0) return 0;
        if (piv != c) {
            for (int j = 0; j < k; j++) {
                double t = A[c * k + j];
                A[c * k + j] = A[piv * k + j];
                A[piv * k + j] = t;
            }
            double t = b[c];
            b[c] = b[piv];
            b[piv] = t;
        }
        for (int r = c + 1; r < k; r++) {
            double m = A[r * k + c] / A[c * k + c];
            if (m == 0.0) continue;
            for (int j = c; j < k; j++) A[r * k + j] -= m * A[c * k + j];
            b[r] -= m * b[c];
        }
    }
    for (int c = k - 1; c >= 0; c--) {
        double v = b[c];
        for (int j = c + 1; j < k; j++) v -= A[c * k + j] * b[j];
        b[c] = v / A[c * k + c];
    }
    return 1;
}

/* The inverse of A (k x k) into Ainv, column by column (A copied to scratch
 * k*k, b scratch k).  Returns 0 where A is singular. */
static int invert(const double *A, double *Ainv, int k, double *scratch, double *b) {
    for (int j = 0; j < k; j++) {
        memcpy(scratch, A, sizeof(double) * k * k);
        for (int i = 0; i < k; i++) b[i] = i == j;
        if (!lu_solve(scratch, b, k)) return 0;
        for (int i = 0; i < k; i++) Ainv[i * k + j] = b[i];
    }
    return 1;
}

/* Keeps (x, coordinates, H) in *kept as the last Hessian formed. */
static int keep_hessian(Search *S, PyObject **kept, const double *x, const int *idx, int k,
                        const double *H) {
    PyObject *ox = new_array(S, x, S->n, 0);
    PyObject *oi = PyList_New(k);
    PyObject *oH = new_array(S, H, k, k);
    if (!ox || !oi || !oH) {
        Py_XDECREF(ox); Py_XDECREF(oi); Py_XDECREF(oH);
        return 0;
    }
    for (int a = 0; a < k; a++) PyList_SET_ITEM(oi, a, PyLong_FromLong(idx[a]));
    PyObject *t = PyTuple_Pack(3, ox, oi, oH);
    Py_DECREF(ox); Py_DECREF(oi); Py_DECREF(oH);
    if (!t) return 0;
    Py_XSETREF(*kept, t);
    return 1;
}

/* Step 2: the quasi-Newton iterations from (x, f, g) with the inverse
 * Hessian approximation H; status 0 converged, 1 evaluation limit, -1 error. */
static int iterate(Search *S, double *x, double *f_io, double *g, double *H, const double *lo,
                   long maxeval, int scale_first, double max_step, double gtol, double *work) {
    int n = S->n;
    double f = *f_io;
    double *pg = work, *d = work + n, *xn = work + 2 * n, *gn = work + 3 * n;
    double *s = work + 4 * n, *y = work + 5 * n, *Hy = work + 6 * n;
    char *active = (char *)(work + 7 * n);
    int any_bounded = 0;
    for (int i = 0; i < n; i++) any_bounded |= isfinite(lo[i]) != 0;
    int status = 1, restarted = 0;
    for (long it = 0; it < maxeval; it++) {
        double pmax = 0.0;
        for (int i = 0; i < n; i++) {
            active[i] = isfinite(lo[i]) && x[i] <= lo[i] && g[i] >= 0.0;
            pg[i] = active[i] ? 0.0 : g[i];
            if (fabs(pg[i]) > pmax) pmax = fabs(pg[i]);
        }
        if (pmax < gtol) {
            status = 0;
            break;
        }
        for (int i = 0; i < n; i++) {
            d[i] = active[i] ? 0.0 : -dot(H + (size_t)i * n, pg, n);
        }
        if (dot(d, pg, n) >= 0.0) { /* curvature went bad: steepest descent */
            double c = 1.0 / fmax(1.0, sqrt(dot(pg, pg, n)));
            scaled_identity(H, n, c);
            for (int i = 0; i < n; i++) d[i] = active[i] ? 0.0 : -c * pg[i];
        }
        double length = sqrt(dot(d, d, n));
        if (length > max_step)
            for (int i = 0; i < n; i++) d[i] *= max_step / length;
        double t = 1.0, fn;
        for (;;) {
            for (int i = 0; i < n; i++) {
                xn[i] = x[i] + t * d[i];
                if (any_bounded && isfinite(lo[i]) && x[i] > lo[i] &&
                    xn[i] - lo[i] < 0.1 * (x[i] - lo[i]))
                    xn[i] = lo[i] + 0.1 * (x[i] - lo[i]);
            }
            if (!call(S, xn, &fn, gn)) return -1;
            double slope = 0.0;
            for (int i = 0; i < n; i++) slope += g[i] * (xn[i] - x[i]);
            if (fn <= f + 1e-4 * slope || t < 1e-3) break;
            if (fn - f < 1e-11 * (1.0 + fabs(f))) break;
            double curv = fn - f - slope;
            double tq = (curv > 0.0 && slope < 0.0) ? -slope / (2.0 * curv) : 0.5;
            t *= fmin(fmax(tq, 0.1), 0.5);
        }
        if (S->evals >= maxeval) {
            status = 1;
            break;
        }
        if (fn > f) {
            if (restarted || fn - f < 1e-11 * (1.0 + fabs(f))) {
                status = 0;
                break;
            }
            restarted = 1;
            scaled_identity(H, n, 1.0 / fmax(1.0, sqrt(dot(pg, pg, n))));
            continue;
        }
        restarted = 0;
        double smax = 0.0;
        for (int i = 0; i < n; i++) {
            s[i] = xn[i] - x[i];
            y[i] = gn[i] - g[i];
            if (fabs(s[i]) > smax) smax = fabs(s[i]);
        }
        double df = f - fn;
        memcpy(x, xn, sizeof(double) * n);
        memcpy(g, gn, sizeof(double) * n);
        f = fn;
        double sy = dot(s, y, n), yy = dot(y, y, n);
        if (sy > 1e-12 * sqrt(dot(s, s, n) * yy)) {
            if (it == 0 && scale_first) scaled_identity(H, n, sy / yy);
            double rho = 1.0 / sy;
            for (int i = 0; i < n; i++) Hy[i] = dot(H + (size_t)i * n, y, n);
            double c = rho * rho * (sy + dot(y, Hy, n));
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    H[i * n + j] += c * s[i] * s[j] - rho * (Hy[i] * s[j] + s[i] * Hy[j]);
        }
        if (df < 1e-13 * (1.0 + fabs(f)) && smax < 1e-8) {
            status = 0;
            break;
        }
    }
    *f_io = f;
    return status;
}

static PyObject *bfgs_search(PyObject *self, PyObject *args) {
    PyObject *fg, *ox, *olo, *oHinv;
    double max_step;
    long maxeval;
    int hessian_start, newton_polish;
    if (!PyArg_ParseTuple(args, "OOOlOppd", &fg, &ox, &olo, &maxeval, &oHinv, &hessian_start,
                          &newton_polish, &max_step))
        return NULL;
    Py_buffer bx, blo;
    if (PyObject_GetBuffer(ox, &bx, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(olo, &blo, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bx);
        return NULL;
    }
    int n = (int)(bx.len / sizeof(double));
    PyObject *result = NULL, *np = NULL, *hessian = NULL, *og = NULL;
    double *mem = NULL;
    Search S = {fg, NULL, n, 0};
    if (blo.len != bx.len) {
        PyErr_SetString(PyExc_ValueError, "x and lower must have the same length");
        goto done;
    }
    np = PyImport_ImportModule("numpy");
    if (!np) goto done;
    S.np_empty = PyObject_GetAttrString(np, "empty");
    if (!S.np_empty) goto done;
    size_t m = n > 0 ? (size_t)n : 1;
    mem = malloc(sizeof(double) * (17 * m + 4 * m * m)); /* scratch: m * m + m */
    if (!mem) {
        PyErr_NoMemory();
        goto done;
    }
    double *x = bx.buf;
    const double *lo = blo.buf;
    double *g = mem, *work = mem + m, *xe = mem + 9 * m, *ge = mem + 10 * m, *h = mem + 11 * m;
    double *vec = mem + 12 * m;
    int *idx = (int *)(mem + 13 * m); /* 2m doubles hold m ints */
    double *Hinv = mem + 16 * m, *Hd = Hinv + m * m, *A = Hd + m * m, *scratch = A + m * m;
    double f;
    if (!call(&S, x, &f, g)) goto done;
    double gg = sqrt(dot(g, g, n));
    scaled_identity(Hinv, n, 1.0 / fmax(1.0, gg));
    int have_start = 0;
    if (oHinv != Py_None) {
        Py_buffer bH;
        if (PyObject_GetBuffer(oHinv, &bH, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
        int ok = bH.len == (Py_ssize_t)(sizeof(double) * n * n) && bH.format &&
                 strcmp(bH.format, "d") == 0;
        if (ok) memcpy(Hinv, bH.buf, sizeof(double) * n * n);
        PyBuffer_Release(&bH);
        if (!ok) {
            PyErr_SetString(PyExc_ValueError, "Hinv0 must be n x n float64 values");
            goto done;
        }
        have_start = 1;
    } else if (hessian_start) {
        for (int i = 0; i < n; i++) {
            idx[i] = i;
            h[i] = 1e-4 * fmax(1.0, fabs(x[i]));
        }
        if (!gradient_hessian(&S, x, g, idx, n, h, Hd, xe, ge)) goto done;
        if (!keep_hessian(&S, &hessian, x, idx, n, Hd)) goto done;
        if (clearly_pd(Hd, n, 1e-8, scratch) && invert(Hd, A, n, scratch, vec)) {
            memcpy(Hinv, A, sizeof(double) * n * n);
            have_start = 1;
        }
    }
    /* with the Newton polish to follow, the iterations hand over once the
     * gradient is small: near the optimum BFGS closes in linearly, the
     * polish (whose Hessian the convergence check needs anyway) quadratically */
    double gtol = newton_polish ? 1e-3 : 1e-6;
    int status = iterate(&S, x, &f, g, Hinv, lo, maxeval, !have_start, max_step, gtol, work);
    if (status < 0) goto done;
    /* step 3: Newton steps on the free coordinates */
    int k = 0;
    double gmax = 0.0;
    for (int i = 0; i < n; i++)
        if (!(isfinite(lo[i]) && x[i] <= lo[i] && g[i] >= 0.0)) {
            idx[k++] = i;
            if (fabs(g[i]) > gmax) gmax = fabs(g[i]);
        }
    if (newton_polish && k && gmax > 1e-10 * (1.0 + fabs(f))) {
        for (int a = 0; a < k; a++) h[a] = 1e-5 * fmax(1.0, fabs(x[idx[a]]));
        if (!gradient_hessian(&S, x, g, idx, k, h, Hd, xe, ge)) goto done;
        if (!keep_hessian(&S, &hessian, x, idx, k, Hd)) goto done;
        double *xn = work, *gn = work + n, *step = vec;
        for (int it = 0; it < 4; it++) {
            double gnorm = 0.0;
            for (int a = 0; a < k; a++) gnorm += g[idx[a]] * g[idx[a]];
            gnorm = sqrt(gnorm);
            if (gnorm < 1e-10 * (1.0 + fabs(f))) break;
            memcpy(A, Hd, sizeof(double) * k * k);
            for (int a = 0; a < k; a++) step[a] = g[idx[a]];
            if (!lu_solve(A, step, k)) break;
            memcpy(xn, x, sizeof(double) * n);
            double slen = 0.0;
            for (int a = 0; a < k; a++) {
                xn[idx[a]] -= step[a];
                slen += step[a] * step[a];
            }
            /* a step longer than a tenth of theta's scale is not a polish */
            int hits = 0;
            double xmax = 1.0;
            for (int i = 0; i < n; i++) {
                hits |= isfinite(lo[i]) && xn[i] <= lo[i];
                xmax = fmax(xmax, fabs(x[i]));
            }
            if (hits || sqrt(slen) > 0.1 * xmax) break;
            double fn;
            if (!call(&S, xn, &fn, gn)) goto done;
            double gnn = 0.0;
            for (int a = 0; a < k; a++) gnn += gn[idx[a]] * gn[idx[a]];
            if (!(sqrt(gnn) < 0.5 * gnorm && fn <= f + 1e-11 * (1.0 + fabs(f)))) break;
            memcpy(x, xn, sizeof(double) * n);
            memcpy(g, gn, sizeof(double) * n);
            f = fn;
        }
    }
    /* step 4: onto the bound (bounds.py's snap_to_bounds) */
    int near = 0;
    for (int i = 0; i < n; i++) {
        int ni = isfinite(lo[i]) && x[i] > lo[i] && x[i] - lo[i] < 1e-4;
        xe[i] = ni ? lo[i] : x[i];
        near |= ni;
    }
    int snapped = 0;
    if (near) {
        double ft;
        if (!call(&S, xe, &ft, ge)) goto done;
        if (ft <= f) {
            memcpy(x, xe, sizeof(double) * n);
            f = ft;
            snapped = 1;
        }
    }
    og = new_array(&S, g, n, 0);
    if (!og) goto done;
    result = Py_BuildValue("dOilOO", f, og, status, S.evals, hessian ? hessian : Py_None,
                           snapped ? Py_True : Py_False);
done:
    free(mem);
    Py_XDECREF(og);
    Py_XDECREF(hessian);
    Py_XDECREF(S.np_empty);
    Py_XDECREF(np);
    PyBuffer_Release(&bx);
    PyBuffer_Release(&blo);
    return result;
}

static PyMethodDef methods[] = {
    {"bfgs_search", bfgs_search, METH_VARARGS,
     "bfgs_search(fg, x, lower, maxeval, Hinv0, hessian_start, newton_polish, max_step) "
     "-> (f, g, status, evals, hessian, snapped); x updated in place"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_optim",
                                    "The bounded BFGS search over theta, compiled.", -1, methods};

PyMODINIT_FUNC PyInit__optim(void) { return PyModule_Create(&module); }

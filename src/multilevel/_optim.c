/*
 * Compiled main loop of the bounded BFGS search over theta
 * (multilevel.optimize.theta._bfgs_loop is the same loop in Python and the
 * fallback).  The criterion stays a Python callable; what this removes is the
 * loop's own bookkeeping (small numpy operations on vectors of a few
 * entries), which on a small model costs several times the evaluations.
 *
 * bfgs_loop(fg, x, g, Hinv, lower, f, maxeval, evals, scale_first, max_step)
 *   fg(x) -> (value, gradient) evaluates (and logs) the criterion at a new
 *   float64 array x; x, g (n) and Hinv (n x n, C order) are updated in place;
 *   lower (n) holds the bounds (-inf where none); f is the value at x;
 *   evals is the number of evaluations already made (the search stops at
 *   maxeval in all); scale_first rescales the inverse Hessian at the first
 *   update (no initial Hessian was given).
 *   Returns (f, status, evals): status 0 converged, 1 evaluation limit.
 *
 * The iteration (a projected quasi-Newton step with an Armijo line search):
 *   free gradient pg (zero where theta sits on its bound and g >= 0);
 *   d = -Hinv pg on the free coordinates (steepest descent if not downhill),
 *   cut to length max_step; a trial that would reach a bound stops at a tenth
 *   of the remaining distance; the step length shrinks to the minimum of the
 *   parabola through f, its slope and the trial value, within [0.1, 0.5];
 *   the BFGS update H + rho^2 (s'y + y'Hy) ss' - rho (Hy s' + s (Hy)'),
 *   rho = 1/s'y, when s'y > 1e-12 |s| |y|.
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

static PyObject *bfgs_loop(PyObject *self, PyObject *args) {
    PyObject *fg, *ox, *og, *oH, *olo;
    double f, max_step;
    long maxeval, evals;
    int scale_first;
    if (!PyArg_ParseTuple(args, "OOOOOdllpd", &fg, &ox, &og, &oH, &olo, &f, &maxeval, &evals,
                          &scale_first, &max_step))
        return NULL;
    Py_buffer bx, bg, bH, blo;
    if (PyObject_GetBuffer(ox, &bx, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(og, &bg, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bx);
        return NULL;
    }
    if (PyObject_GetBuffer(oH, &bH, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bx); PyBuffer_Release(&bg);
        return NULL;
    }
    if (PyObject_GetBuffer(olo, &blo, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bx); PyBuffer_Release(&bg); PyBuffer_Release(&bH);
        return NULL;
    }
    int n = (int)(bx.len / sizeof(double));
    PyObject *result = NULL, *np = NULL, *np_empty = NULL;
    double *work = NULL;
    if (bg.len != bx.len || blo.len != bx.len || bH.len != (Py_ssize_t)(sizeof(double) * n * n)) {
        PyErr_SetString(PyExc_ValueError, "x, g, lower must have n entries and Hinv n x n");
        goto done;
    }
    np = PyImport_ImportModule("numpy");
    if (!np) goto done;
    np_empty = PyObject_GetAttrString(np, "empty");
    if (!np_empty) goto done;
    double *x = bx.buf, *g = bg.buf, *H = bH.buf;
    const double *lo = blo.buf;
    work = malloc(sizeof(double) * 8 * (size_t)(n > 0 ? n : 1));
    if (!work) {
        PyErr_NoMemory();
        goto done;
    }
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
        if (pmax < 1e-6) {
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
            if (!evaluate(fg, np_empty, xn, n, &fn, gn)) goto done;
            evals++;
            double slope = 0.0;
            for (int i = 0; i < n; i++) slope += g[i] * (xn[i] - x[i]);
            if (fn <= f + 1e-4 * slope || t < 1e-3) break;
            if (fn - f < 1e-11 * (1.0 + fabs(f))) break;
            double curv = fn - f - slope;
            double tq = (curv > 0.0 && slope < 0.0) ? -slope / (2.0 * curv) : 0.5;
            t *= fmin(fmax(tq, 0.1), 0.5);
        }
        if (evals >= maxeval) {
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
    result = Py_BuildValue("dil", f, status, evals);
done:
    free(work);
    Py_XDECREF(np_empty);
    Py_XDECREF(np);
    PyBuffer_Release(&bx); PyBuffer_Release(&bg); PyBuffer_Release(&bH); PyBuffer_Release(&blo);
    return result;
}

static PyMethodDef methods[] = {
    {"bfgs_loop", bfgs_loop, METH_VARARGS,
     "bfgs_loop(fg, x, g, Hinv, lower, f, maxeval, evals, scale_first, max_step) "
     "-> (f, status, evals); x, g, Hinv updated in place"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_optim",
                                    "Compiled loop of the bounded BFGS search.", -1, methods};

PyMODINIT_FUNC PyInit__optim(void) { return PyModule_Create(&module); }

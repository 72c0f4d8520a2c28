/*
 * Sparse Cholesky factorization M = L L^T of a symmetric positive definite
 * matrix whose pattern is fixed (the random-effects block that remains after
 * the first term is eliminated), and the entries of M^{-1} on the pattern of
 * L (the selected inverse), which the exact gradient of the profiled
 * criterion needs.  multilevel.linalg.sparse_chol drives it (ordering,
 * permutation, dense right-hand sides); every array is CSC with int64
 * indices, rows sorted within each column, the matrix already permuted.
 *
 * symbolic(Ap, Ai, n) -> (Lp, Li)
 *   The pattern of L from the upper triangle of M: the elimination tree
 *   (parent[i] = the first off-diagonal row of column i of L), then for each
 *   row k the columns of L's row k: the nodes met climbing the tree from
 *   every i < k with M[i, k] != 0 until an already visited node.
 * numeric(Ap, Ai, Ax, Lp, Li, Lx) -> ok
 *   Up-looking: row k of L solves L[:k,:k] l = M[:k, k] over the pattern of
 *   row k (in increasing column order, which is a topological order of the
 *   tree), then L[k,k] = sqrt(M[k,k] - l.l).  0 when a pivot is not positive.
 * selinv(Lp, Li, Lx, Zx) -> None
 *   Z = M^{-1} on L's pattern (lower triangle), columns from last to first:
 *     Z[i,j] = -(1/L[j,j]) sum_{k in S_j} L[k,j] Z[i,k]    (i in S_j)
 *     Z[j,j] = 1/L[j,j]^2 - (1/L[j,j]) sum_{k in S_j} L[k,j] Z[k,j]
 *   S_j the below-diagonal rows of column j; the needed Z[i,k] lie on the
 *   pattern because S_j minus its first row is inside the pattern of the
 *   column of that first row (the elimination tree's closure).
 * solve(Lp, Li, Lx, B) -> None
 *   B (n x r, C order) overwritten by M^{-1} B.
 * gram_entries(WT, a, b, out, block) -> None
 *   out[p] = sum_{k >= a[p]} W[k, a[p]] W[k, b[p]] for a lower triangular W
 *   (given as WT = W^T, C order: row j of WT is column j of W), pairs with
 *   a[p] >= b[p] sorted by a: the entries of W^T W = M^{-1} (W = L^{-1})
 *   at a sparse set of positions.  Row blocks of W (block rows at a time, a
 *   strip that stays in cache) are visited once each; every pair adds the
 *   products of its two columns' segments in the strip.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t idx;

static int get(PyObject *o, Py_buffer *b, int writable) {
    return PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0));
}

/* The buffers of n arrays, the last one writable; 0 (all released) on failure. */
static int get_all(PyObject **objs, int n, Py_buffer *b) {
    for (int got = 0; got < n; got++)
        if (get(objs[got], &b[got], got == n - 1) < 0) {
            for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
            return 0;
        }
    return 1;
}

static void release_all(Py_buffer *b, int n) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&b[i]);
}

static PyObject *symbolic(PyObject *self, PyObject *args) {
    PyObject *oAp, *oAi;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OOn", &oAp, &oAi, &n)) return NULL;
    Py_buffer bAp, bAi;
    if (get(oAp, &bAp, 0) < 0) return NULL;
    if (get(oAi, &bAi, 0) < 0) {
        PyBuffer_Release(&bAp);
        return NULL;
    }
    const idx *Ap = bAp.buf, *Ai = bAi.buf;
    PyObject *result = NULL;
    idx *parent = malloc(sizeof(idx) * (n + 1)), *anc = malloc(sizeof(idx) * (n + 1));
    idx *mark = malloc(sizeof(idx) * (n + 1)), *count = calloc(n + 1, sizeof(idx));
    idx *Lp = NULL, *Li = NULL, *next = NULL;
    if (!parent || !anc || !mark || !count) {
        PyErr_NoMemory();
        goto done;
    }
    /* elimination tree, with path compression through anc */
    for (idx k = 0; k < n; k++) {
        parent[k] = -1;
        anc[k] = -1;
        for (idx p = Ap[k]; p < Ap[k + 1]; p++) {
            idx i = Ai[p];
            while (i != -1 && i < k) {
                idx up = anc[i];
                anc[i] = k;
                if (up == -1) parent[i] = k;
                i = up;
            }
        }
    }
    /* column counts: walk each row's subtree once */
    for (idx k = 0; k < n; k++) mark[k] = -1;
    for (idx k = 0; k < n; k++) {
        mark[k] = k;
        count[k]++; /* the diagonal */
        for (idx p = Ap[k]; p < Ap[k + 1]; p++) {
            for (idx i = Ai[p]; i < k && i != -1 && mark[i] != k; i = parent[i]) {
                mark[i] = k;
                count[i]++; /* L[k, i] */
            }
        }
    }
    Lp = malloc(sizeof(idx) * (n + 1));
    next = malloc(sizeof(idx) * (n + 1));
    if (!Lp || !next) {
        PyErr_NoMemory();
        goto done;
    }
    Lp[0] = 0;
    for (idx k = 0; k < n; k++) Lp[k + 1] = Lp[k] + count[k];
    Li = malloc(sizeof(idx) * (Lp[n] > 0 ? Lp[n] : 1));
    if (!Li) {
        PyErr_NoMemory();
        goto done;
    }
    for (idx k = 0; k < n; k++) {
        Li[Lp[k]] = k; /* diagonal first */
        next[k] = Lp[k] + 1;
        mark[k] = -1;
    }
    /* rows k in increasing order: each column's rows come out sorted */
    for (idx k = 0; k < n; k++) {
        mark[k] = k;
        for (idx p = Ap[k]; p < Ap[k + 1]; p++) {
            for (idx i = Ai[p]; i < k && i != -1 && mark[i] != k; i = parent[i]) {
                mark[i] = k;
                Li[next[i]++] = k;
            }
        }
    }
    {
        PyObject *lp = PyByteArray_FromStringAndSize((const char *)Lp, sizeof(idx) * (n + 1));
        PyObject *li = PyByteArray_FromStringAndSize((const char *)Li, sizeof(idx) * Lp[n]);
        if (lp && li) result = Py_BuildValue("NN", lp, li);
        else {
            Py_XDECREF(lp);
            Py_XDECREF(li);
        }
    }
done:
    free(parent); free(anc); free(mark); free(count); free(Lp); free(Li); free(next);
    PyBuffer_Release(&bAp); PyBuffer_Release(&bAi);
    return result;
}

static PyObject *numeric(PyObject *self, PyObject *args) {
    PyObject *objs[6];
    if (!PyArg_ParseTuple(args, "OOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5]))
        return NULL;
    Py_buffer b[6];
    if (!get_all(objs, 6, b)) return NULL;
    const idx *Ap = b[0].buf, *Ai = b[1].buf, *Lp = b[3].buf, *Li = b[4].buf;
    const double *Ax = b[2].buf;
    double *Lx = b[5].buf;
    idx n = (idx)(b[3].len / sizeof(idx)) - 1;
    int ok = 1;
    double *x = calloc(n > 0 ? n : 1, sizeof(double));
    idx *fill = malloc(sizeof(idx) * (n > 0 ? n : 1)); /* next free slot per column */
    idx *mark = malloc(sizeof(idx) * (n > 0 ? n : 1));
    idx *rowpat = malloc(sizeof(idx) * (n > 0 ? n : 1));
    if (!x || !fill || !mark || !rowpat) {
        free(x); free(fill); free(mark); free(rowpat);
        release_all(b, 6);
        return PyErr_NoMemory();
    }
    for (idx k = 0; k < n; k++) {
        fill[k] = Lp[k] + 1;
        mark[k] = -1;
    }
    for (idx k = 0; k < n && ok; k++) {
        /* scatter the upper part of column k; the pattern of row k of L is
         * the set of columns i < k whose next free slot holds row k */
        double d = 0.0;
        idx nr = 0;
        for (idx p = Ap[k]; p < Ap[k + 1]; p++) {
            idx i = Ai[p];
            if (i < k) x[i] += Ax[p];
            else if (i == k) d += Ax[p];
        }
        /* the row pattern: every column whose next slot is row k, found by
         * climbing from the entries of column k (as in the symbolic pass) */
        mark[k] = k;
        for (idx p = Ap[k]; p < Ap[k + 1]; p++) {
            for (idx i = Ai[p]; i < k && mark[i] != k; ) {
                mark[i] = k;
                rowpat[nr++] = i;
                /* the parent of i: first off-diagonal row of column i */
                i = (Lp[i + 1] > Lp[i] + 1) ? Li[Lp[i] + 1] : k;
            }
        }
        /* increasing column order is a topological order of the tree */
        for (idx a = 1; a < nr; a++) { /* insertion sort: rows have few entries */
            idx v = rowpat[a], c = a;
            while (c > 0 && rowpat[c - 1] > v) {
                rowpat[c] = rowpat[c - 1];
                c--;
            }
            rowpat[c] = v;
        }
        for (idx a = 0; a < nr; a++) {
            idx i = rowpat[a];
            double lki = x[i] / Lx[Lp[i]];
            x[i] = 0.0;
            for (idx p = Lp[i] + 1; p < fill[i]; p++) x[Li[p]] -= Lx[p] * lki;
            d -= lki * lki;
            Lx[fill[i]++] = lki; /* Li[fill[i]] == k by the symbolic pattern */
        }
        if (!(d > 0.0)) {
            ok = 0;
            break;
        }
        Lx[Lp[k]] = sqrt(d);
    }
    free(x); free(fill); free(mark); free(rowpat);
    release_all(b, 6);
    return PyBool_FromLong(ok);
}

static PyObject *selinv(PyObject *self, PyObject *args) {
    PyObject *objs[4];
    if (!PyArg_ParseTuple(args, "OOOO", &objs[0], &objs[1], &objs[2], &objs[3])) return NULL;
    Py_buffer b[4];
    if (!get_all(objs, 4, b)) return NULL;
    const idx *Lp = b[0].buf, *Li = b[1].buf;
    const double *Lx = b[2].buf;
    double *Zx = b[3].buf;
    idx n = (idx)(b[0].len / sizeof(idx)) - 1;
    idx *pos = malloc(sizeof(idx) * (n > 0 ? n : 1)); /* row -> slot in column j, or -1 */
    double *acc = calloc(n > 0 ? n : 1, sizeof(double));
    if (!pos || !acc) {
        free(pos); free(acc);
        release_all(b, 4);
        return PyErr_NoMemory();
    }
    for (idx i = 0; i < n; i++) pos[i] = -1;
    for (idx j = n - 1; j >= 0; j--) {
        idx p0 = Lp[j], p1 = Lp[j + 1];
        double ljj = Lx[p0];
        for (idx p = p0 + 1; p < p1; p++) pos[Li[p]] = p;
        /* acc[i] = sum_{k in S_j} L[k,j] Z[i,k] for i in S_j */
        for (idx p = p0 + 1; p < p1; p++) {
            idx k = Li[p];
            double lkj = Lx[p];
            acc[k] += lkj * Zx[Lp[k]]; /* Z[k,k] */
            for (idx r = Lp[k] + 1; r < Lp[k + 1]; r++) {
                idx row = Li[r];
                if (pos[row] < 0) continue;
                double z = Zx[r]; /* Z[row, k], row > k */
                acc[row] += lkj * z;
                acc[k] += Lx[pos[row]] * z;
            }
        }
        double s = 0.0;
        for (idx p = p0 + 1; p < p1; p++) {
            idx i = Li[p];
            Zx[p] = -acc[i] / ljj;
            s += Lx[p] * Zx[p];
            acc[i] = 0.0;
            pos[i] = -1;
        }
        Zx[p0] = 1.0 / (ljj * ljj) - s / ljj;
    }
    free(pos); free(acc);
    release_all(b, 4);
    Py_RETURN_NONE;
}

static PyObject *solve(PyObject *self, PyObject *args) {
    PyObject *objs[4];
    if (!PyArg_ParseTuple(args, "OOOO", &objs[0], &objs[1], &objs[2], &objs[3])) return NULL;
    Py_buffer b[4];
    if (!get_all(objs, 4, b)) return NULL;
    const idx *Lp = b[0].buf, *Li = b[1].buf;
    const double *Lx = b[2].buf;
    double *B = b[3].buf;
    idx n = (idx)(b[0].len / sizeof(idx)) - 1;
    idx r = n > 0 ? (idx)(b[3].len / sizeof(double)) / n : 0;
    /* L y = b, then L^T x = y; rows of B are contiguous (C order) */
    for (idx j = 0; j < n; j++) {
        double *bj = B + j * r;
        double l = Lx[Lp[j]];
        for (idx c = 0; c < r; c++) bj[c] /= l;
        for (idx p = Lp[j] + 1; p < Lp[j + 1]; p++) {
            double *bi = B + Li[p] * r;
            double v = Lx[p];
            for (idx c = 0; c < r; c++) bi[c] -= v * bj[c];
        }
    }
    for (idx j = n - 1; j >= 0; j--) {
        double *bj = B + j * r;
        for (idx p = Lp[j] + 1; p < Lp[j + 1]; p++) {
            const double *bi = B + Li[p] * r;
            double v = Lx[p];
            for (idx c = 0; c < r; c++) bj[c] -= v * bi[c];
        }
        double l = Lx[Lp[j]];
        for (idx c = 0; c < r; c++) bj[c] /= l;
    }
    release_all(b, 4);
    Py_RETURN_NONE;
}

/* Vectors of four doubles (GCC/Clang vector extensions: two SSE2 registers by
 * default, one AVX register where the CPU has it); two accumulators, so that
 * the products are not serialised by one running sum. */
typedef double v4d __attribute__((vector_size(32)));
#define GRAM_KB 32 /* rows per strip: a strip of 4,000 columns stays in L2 */

/* The products of one strip (rows [k0, k1), columns side by side in S, kb
 * apart) for the pairs np_ of the prefix.  Inlined into one function per
 * instruction set below. */
static inline __attribute__((always_inline)) void gram_strip(const double *S, idx kb, const idx *a,
                                                             const idx *b, double *out, idx np_,
                                                             idx k0, idx k1) {
    k1 -= k0;
    idx p = 0;
    while (p < np_) {
        idx ap = a[p], q = p;
        while (q < np_ && a[q] == ap) q++; /* the pairs of column a[p] */
        idx lo = ap > k0 ? ap - k0 : 0;
        const double *x = S + ap * kb;
        if (lo == 0 && k1 == GRAM_KB) {
            /* a whole strip: fixed length, x held in registers for all its pairs */
            v4d xv[GRAM_KB / 4];
            memcpy(xv, x, sizeof(xv));
            for (; p < q; p++) {
                const double *y = S + b[p] * kb;
                v4d s0 = {0, 0, 0, 0}, s1 = s0;
                for (int c = 0; c < GRAM_KB / 4; c += 2) {
                    v4d y0, y1;
                    memcpy(&y0, y + 4 * c, 32);
                    memcpy(&y1, y + 4 * c + 4, 32);
                    s0 += xv[c] * y0;
                    s1 += xv[c + 1] * y1;
                }
                s0 += s1;
                out[p] += (s0[0] + s0[1]) + (s0[2] + s0[3]);
            }
            continue;
        }
        for (; p < q; p++) { /* the strip holding a's diagonal, or the last one */
            const double *y = S + b[p] * kb;
            double t = 0.0;
            for (idx k = lo; k < k1; k++) t += x[k] * y[k];
            out[p] += t;
        }
    }
}

/* Compiled for the baseline and, on x86-64 with GCC or Clang, for AVX2 with
 * FMA and for AVX-512, chosen by what the CPU reports (the compiler's own
 * clone dispatch keys on CPU models, which virtual machines often do not
 * name: it fell back to the baseline here, at half the speed). */
#define GRAM_ARGS                                                                             \
    const double *S, idx kb, const idx *a, const idx *b, double *out, idx np_, idx k0, idx k1
static void gram_strip_base(GRAM_ARGS) { gram_strip(S, kb, a, b, out, np_, k0, k1); }
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define GRAM_SIMD 1
__attribute__((target("avx2,fma"))) static void gram_strip_avx2(GRAM_ARGS) {
    gram_strip(S, kb, a, b, out, np_, k0, k1);
}
__attribute__((target("avx512f,avx512vl,avx2,fma"))) static void gram_strip_avx512(GRAM_ARGS) {
    gram_strip(S, kb, a, b, out, np_, k0, k1);
}
#endif

typedef void (*gram_strip_fn)(const double *, idx, const idx *, const idx *, double *, idx, idx,
                              idx);

static gram_strip_fn gram_strip_pick(void) {
#ifdef GRAM_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
        return gram_strip_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return gram_strip_avx2;
#endif
    return gram_strip_base;
}

static PyObject *gram_entries(PyObject *self, PyObject *args) {
    PyObject *objs[4];
    Py_ssize_t block;
    if (!PyArg_ParseTuple(args, "OOOOn", &objs[0], &objs[1], &objs[2], &objs[3], &block))
        return NULL;
    Py_buffer b[4];
    if (!get_all(objs, 4, b)) return NULL;
    const double *WT = b[0].buf;
    const idx *pa = b[1].buf, *pb = b[2].buf;
    double *out = b[3].buf;
    idx npairs = (idx)(b[1].len / sizeof(idx));
    if (b[0].ndim != 2 || b[0].shape[0] != b[0].shape[1] ||
        b[2].len != b[1].len || b[3].len != npairs * (Py_ssize_t)sizeof(double)) {
        release_all(b, 4);
        PyErr_SetString(PyExc_ValueError, "gram_entries: a square WT and pairs of one length");
        return NULL;
    }
    idx n = (idx)b[0].shape[0];
    for (idx p = 0; p < npairs; p++) /* every read stays inside W's lower triangle */
        if (pb[p] < 0 || pb[p] > pa[p] || pa[p] >= n || (p > 0 && pa[p] < pa[p - 1])) {
            release_all(b, 4);
            PyErr_SetString(PyExc_ValueError, "gram_entries: pairs need 0 <= b <= a < n, a sorted");
            return NULL;
        }
    if (block < 1) block = 1;
    /* the strip's column segments copied side by side: read in place they lie
     * a page apart each, and the lookups of so many pages cost more than the
     * products */
    double *S = malloc(sizeof(double) * (size_t)block * (size_t)(n > 0 ? n : 1));
    if (!S) {
        release_all(b, 4);
        return PyErr_NoMemory();
    }
    gram_strip_fn strip = gram_strip_pick();
    Py_BEGIN_ALLOW_THREADS
    memset(out, 0, sizeof(double) * npairs);
    /* pairs with a < k1 (a prefix, a sorted) meet the strip of rows [k0, k1) */
    idx upto = 0;
    for (idx k0 = 0; k0 < n; k0 += block) {
        idx k1 = k0 + block < n ? k0 + block : n;
        while (upto < npairs && pa[upto] < k1) upto++;
        for (idx j = 0; j < k1; j++)
            memcpy(S + j * block, WT + j * n + k0, sizeof(double) * (size_t)(k1 - k0));
        strip(S, block, pa, pb, out, upto, k0, k1);
    }
    Py_END_ALLOW_THREADS
    free(S);
    release_all(b, 4);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"symbolic", symbolic, METH_VARARGS, "symbolic(Ap, Ai, n) -> (Lp bytes, Li bytes)"},
    {"numeric", numeric, METH_VARARGS, "numeric(Ap, Ai, Ax, Lp, Li, Lx) -> positive definite"},
    {"selinv", selinv, METH_VARARGS, "selinv(Lp, Li, Lx, Zx): M^-1 on the pattern of L"},
    {"solve", solve, METH_VARARGS, "solve(Lp, Li, Lx, B): B <- M^-1 B in place"},
    {"gram_entries", gram_entries, METH_VARARGS,
     "gram_entries(WT, a, b, out, block): out <- (W^T W)[a, b], W lower triangular"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sparse_chol",
                                    "Sparse Cholesky and selected inverse.", -1, methods};

PyMODINIT_FUNC PyInit__sparse_chol(void) { return PyModule_Create(&module); }

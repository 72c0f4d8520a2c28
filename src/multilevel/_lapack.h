/*
 * LAPACK for the compiled kernels, through the addresses scipy exports
 * (scipy.linalg.cython_lapack's capsules): the kernels link no LAPACK of
 * their own and run the one numpy and scipy use.  multilevel.compiled's
 * lapack_kernel() calls set_lapack(dpotrf, dtrtri, dpotri) once per module
 * before a kernel that needs them is used; until then the pointers are NULL.
 */
#ifndef MULTILEVEL_LAPACK_H
#define MULTILEVEL_LAPACK_H

typedef void (*potrf_t)(char *, int *, double *, int *, int *);
typedef void (*trtri_t)(char *, char *, int *, double *, int *, int *);
typedef void (*potri_t)(char *, int *, double *, int *, int *);
static potrf_t lapack_potrf = NULL;
static trtri_t lapack_trtri = NULL;
static potri_t lapack_potri = NULL;

static PyObject *set_lapack(PyObject *self, PyObject *args) {
    PyObject *c[3];
    void *p[3];
    if (!PyArg_ParseTuple(args, "OOO", &c[0], &c[1], &c[2])) return NULL;
    for (int i = 0; i < 3; i++)
        if (!(p[i] = PyCapsule_GetPointer(c[i], PyCapsule_GetName(c[i])))) return NULL;
    lapack_potrf = (potrf_t)p[0];
    lapack_trtri = (trtri_t)p[1];
    lapack_potri = (potri_t)p[2];
    Py_RETURN_NONE;
}

#endif

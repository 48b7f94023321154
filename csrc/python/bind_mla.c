/* _dsv3 bindings of the attention leaf kernels (tests compare every ISA with the scalar reference). */
#include "bind.h"
#include "bind_mla.h"
#include "dsv3_mla.h"

static PyObject *new_f32(npy_intp d0, npy_intp d1)
{
    npy_intp dims[2] = {d0, d1};
    return PyArray_SimpleNew(2, dims, NPY_FLOAT32);
}

/* mla_dots(a float32 [na, n], b float32 [nb, n], isa=None) -> float32 [na, nb] */
PyObject *dsv3_py_mla_dots(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"a", "b", "isa", NULL};
    PyObject *ao, *bo, *isa_obj = NULL;
    int isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &ao, &bo, &isa_obj) || !dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    PyArrayObject *a = dsv3_py_check_array(ao, "a", DSV3_DT_F32, 2), *b = a ? dsv3_py_check_array(bo, "b", DSV3_DT_F32, 2) : NULL;
    if (!b)
        return NULL;
    const npy_intp na = PyArray_DIM(a, 0), n = PyArray_DIM(a, 1), nb = PyArray_DIM(b, 0);
    if (PyArray_DIM(b, 1) != n)
        return PyErr_Format(PyExc_ValueError, "mla_dots: a has %zd columns but b has %zd", (Py_ssize_t)n,
                            (Py_ssize_t)PyArray_DIM(b, 1));
    PyObject *out = new_f32(na, nb);
    if (!out)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_mla_dots(PyArray_DATA(a), na, n, PyArray_DATA(b), nb, n, n, PyArray_DATA((PyArrayObject *)out), nb,
                       isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

/* mla_wsum(p float32 [np, T], x float32 [T, n], isa=None) -> float32 [np, n] */
PyObject *dsv3_py_mla_wsum(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"p", "x", "isa", NULL};
    PyObject *po, *xo, *isa_obj = NULL;
    int isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &po, &xo, &isa_obj) || !dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    PyArrayObject *p = dsv3_py_check_array(po, "p", DSV3_DT_F32, 2), *x = p ? dsv3_py_check_array(xo, "x", DSV3_DT_F32, 2) : NULL;
    if (!x)
        return NULL;
    const npy_intp np_ = PyArray_DIM(p, 0), T = PyArray_DIM(p, 1), n = PyArray_DIM(x, 1);
    if (PyArray_DIM(x, 0) != T)
        return PyErr_Format(PyExc_ValueError, "mla_wsum: p has %zd columns but x has %zd rows", (Py_ssize_t)T,
                            (Py_ssize_t)PyArray_DIM(x, 0));
    PyObject *out = new_f32(np_, n);
    if (!out)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_mla_wsum(PyArray_DATA(p), np_, T, PyArray_DATA(x), n, T, n, PyArray_DATA((PyArrayObject *)out), n, isa,
                       &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

/* mla_expsum(x float32 [n], m, isa=None) -> (float32 [n] exp(x - m), their sum) in the kernels' order */
PyObject *dsv3_py_mla_expsum(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"x", "m", "isa", NULL};
    PyObject *xo, *isa_obj = NULL;
    float m;
    int isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Of|O", kwlist, &xo, &m, &isa_obj) || !dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    PyArrayObject *x = dsv3_py_check_array(xo, "x", DSV3_DT_F32, 1);
    if (!x)
        return NULL;
    const npy_intp n = PyArray_DIM(x, 0);
    npy_intp dims[1] = {n};
    PyObject *out = PyArray_SimpleNew(1, dims, NPY_FLOAT32);
    if (!out)
        return NULL;
    if (n > 0)
        memcpy(PyArray_DATA((PyArrayObject *)out), PyArray_DATA(x), (size_t)n * sizeof(float));
    dsv3_error err = {0};
    dsv3_status st;
    float sum = 0.f;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_mla_expsum(PyArray_DATA((PyArrayObject *)out), n, m, &sum, isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return Py_BuildValue("(Nd)", out, (double)sum);
}

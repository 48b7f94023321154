/* _dsv3 bindings: oneDNN loading and the plain matmul used by tests and benchmarks. */
#include "bind.h"

#include "dsv3_onednn.h"

static PyObject *onednn_load(PyObject *self, PyObject *arg)
{
    (void)self;
    PyObject *bytes = NULL;
    if (!PyUnicode_FSConverter(arg, &bytes))
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    const char *path = PyBytes_AS_STRING(bytes);
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_onednn_load(path, &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(bytes);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    char ver[64];
    dsv3_onednn_version(ver, sizeof ver);
    return PyUnicode_FromString(ver);
}

static PyObject *onednn_version(PyObject *self, PyObject *noargs)
{
    (void)self; (void)noargs;
    if (!dsv3_onednn_available())
        Py_RETURN_NONE;
    char ver[64];
    dsv3_onednn_version(ver, sizeof ver);
    return PyUnicode_FromString(ver);
}

/* onednn_supports("float32" | "bfloat16") -> bool: does the loaded oneDNN have that matmul here? */
static PyObject *onednn_supports(PyObject *self, PyObject *arg)
{
    (void)self;
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (!name) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "onednn_supports: dtype must be 'float32' or 'bfloat16', got %s",
                         Py_TYPE(arg)->tp_name);
        return NULL;
    }
    int bf16;
    if (strcmp(name, "float32") == 0)
        bf16 = 0;
    else if (strcmp(name, "bfloat16") == 0)
        bf16 = 1;
    else
        return PyErr_Format(PyExc_ValueError, "onednn_supports: dtype must be 'float32' or 'bfloat16', got '%s'",
                            name);
    int yes;
    Py_BEGIN_ALLOW_THREADS
    yes = dsv3_onednn_supports(bf16);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(yes);
}

static PyObject *onednn_isa(PyObject *self, PyObject *noargs)
{
    (void)self; (void)noargs;
    if (!dsv3_onednn_available())
        Py_RETURN_NONE;
    return PyUnicode_FromString(dsv3_onednn_isa());
}

/* onednn_linear(x [m, k] f32, w [n, k] f32|bf16, bias [n] f32 or None) -> y [m, n] f32 */
static PyObject *onednn_linear(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"x", "w", "bias", NULL};
    PyObject *xo, *wo, *bo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &xo, &wo, &bo))
        return NULL;
    PyArrayObject *x = dsv3_py_check_array(xo, "onednn_linear: x", DSV3_DT_F32, 2);
    if (!x)
        return NULL;
    dsv3_dt wdt;
    PyArrayObject *w = dsv3_py_check_array_any(wo, "onednn_linear: w", (1u << DSV3_DT_F32) | (1u << DSV3_DT_BF16), 2,
                                               &wdt);
    if (!w)
        return NULL;
    const npy_intp m = PyArray_DIM(x, 0), k = PyArray_DIM(x, 1), n = PyArray_DIM(w, 0);
    if (PyArray_DIM(w, 1) != k)
        return PyErr_Format(PyExc_ValueError, "onednn_linear: w must be [n, %lld] to match x [%lld, %lld], got [%lld, %lld]",
                            (long long)k, (long long)m, (long long)k, (long long)n, (long long)PyArray_DIM(w, 1));
    if (n == 0 || k == 0)
        return PyErr_Format(PyExc_ValueError, "onednn_linear: empty weight [%lld, %lld]", (long long)n, (long long)k);
    const float *bias = NULL;
    if (bo != Py_None) {
        PyArrayObject *b = dsv3_py_check_array(bo, "onednn_linear: bias", DSV3_DT_F32, 1);
        if (!b)
            return NULL;
        if (PyArray_DIM(b, 0) != n)
            return PyErr_Format(PyExc_ValueError, "onednn_linear: bias must have %lld elements, got %lld",
                                (long long)n, (long long)PyArray_DIM(b, 0));
        bias = (const float *)PyArray_DATA(b);
    }
    npy_intp dims[2] = {m, n};
    PyObject *y = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!y)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_onednn_linear((const float *)PyArray_DATA(x), m, PyArray_DATA(w), wdt == DSV3_DT_BF16, n, k, bias,
                            (float *)PyArray_DATA((PyArrayObject *)y), &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(y);
        return dsv3_py_raise(st, &err);
    }
    return y;
}

PyMethodDef dsv3_onednn_methods[] = {
    {"onednn_load", onednn_load, METH_O, "onednn_load(path) -> version: dlopen libdnnl.so.3 (once)."},
    {"onednn_version", onednn_version, METH_NOARGS, "Loaded oneDNN version string, or None."},
    {"onednn_supports", onednn_supports, METH_O,
     "onednn_supports(dtype) -> bool: the loaded oneDNN has a matmul for 'float32' / 'bfloat16' weights on this "
     "CPU (False when not loaded)."},
    {"onednn_isa", onednn_isa, METH_NOARGS, "The ISA oneDNN's kernels use ('avx2', 'avx512_core_bf16', ...), or None."},
    {"onednn_linear", (PyCFunction)(void (*)(void))onednn_linear, METH_VARARGS | METH_KEYWORDS,
     "onednn_linear(x, w, bias=None) -> x @ w.T (+ bias) through oneDNN (w float32 or bfloat16)."},
    {NULL, NULL, 0, NULL},
};

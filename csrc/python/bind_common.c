/* Error mapping, dtype registry and array argument checks for the binding layer. */
#include "bind.h"

#include <string.h>

PyObject *dsv3_py_raise(dsv3_status status, const dsv3_error *err)
{
    const char *msg = (err && err->msg[0]) ? err->msg : "dsv3: unknown error";
    PyObject *exc = PyExc_RuntimeError;
    switch (status) {
    case DSV3_E_VALUE: exc = PyExc_ValueError; break;
    case DSV3_E_TYPE: exc = PyExc_TypeError; break;
    case DSV3_E_NOMEM: exc = PyExc_MemoryError; break;
    case DSV3_E_IO: exc = PyExc_OSError; break;
    default: break;
    }
    PyErr_SetString(exc, msg);
    return NULL;
}

static PyArray_Descr *g_descr[DSV3_DT_COUNT];
static const char *const DT_NAMES[DSV3_DT_COUNT] = {
    "float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "uint8", "int8", "int32", "int64",
    "float8_e8m0fnu", "float4_e2m1fn",
};

const char *dsv3_py_dt_name(dsv3_dt dt) { return (dt < DSV3_DT_COUNT) ? DT_NAMES[dt] : "?"; }

PyArray_Descr *dsv3_py_descr(dsv3_dt dt)
{
    if (dt >= DSV3_DT_COUNT)
        return NULL;
    if (!g_descr[dt]) {
        int num = -1;
        switch (dt) {
        case DSV3_DT_F32: num = NPY_FLOAT32; break;
        case DSV3_DT_F16: num = NPY_FLOAT16; break;
        case DSV3_DT_U8: num = NPY_UINT8; break;
        case DSV3_DT_I8: num = NPY_INT8; break;
        case DSV3_DT_I32: num = NPY_INT32; break;
        case DSV3_DT_I64: num = NPY_INT64; break;
        default: return NULL; /* ml_dtypes types: registered from Python */
        }
        g_descr[dt] = PyArray_DescrFromType(num);
    }
    return g_descr[dt];
}

/* _register_dtypes(bfloat16=..., float8_e4m3fn=..., float8_e5m2=..., [float8_e8m0fnu=...,
 * float4_e2m1fn=...]): called once by dsv3/_native.py */
static PyObject *register_dtypes(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float4_e2m1fn", NULL};
    PyObject *o[5] = {NULL, NULL, NULL, NULL, NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OO", kwlist, &o[0], &o[1], &o[2], &o[3], &o[4]))
        return NULL;
    const dsv3_dt dts[5] = {DSV3_DT_BF16, DSV3_DT_F8E4M3, DSV3_DT_F8E5M2, DSV3_DT_F8E8M0, DSV3_DT_F4E2M1};
    const int sizes[5] = {2, 1, 1, 1, 1};
    for (int i = 0; i < 5; i++) {
        if (!o[i])
            continue;
        PyArray_Descr *d = NULL;
        if (!PyArray_DescrConverter(o[i], &d))
            return NULL;
        if (PyDataType_ELSIZE(d) != sizes[i]) {
            Py_DECREF(d);
            return PyErr_Format(PyExc_TypeError, "dtype for %s must have itemsize %d", kwlist[i], sizes[i]);
        }
        Py_XDECREF(g_descr[dts[i]]);
        g_descr[dts[i]] = d; /* owned */
    }
    Py_RETURN_NONE;
}

static int dt_matches(PyArrayObject *a, dsv3_dt dt)
{
    PyArray_Descr *d = dsv3_py_descr(dt);
    return d && PyArray_EquivTypes(PyArray_DESCR(a), d);
}

PyArrayObject *dsv3_py_check_array_any(PyObject *obj, const char *what, unsigned mask, int ndim,
                                       dsv3_dt *dt_out)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int found = -1;
    for (int i = 0; i < DSV3_DT_COUNT; i++)
        if ((mask >> i) & 1u && dt_matches(a, (dsv3_dt)i)) {
            found = i;
            break;
        }
    if (found < 0) {
        char want[256] = "";
        for (int i = 0; i < DSV3_DT_COUNT; i++)
            if ((mask >> i) & 1u) {
                if (want[0])
                    strncat(want, " or ", sizeof want - strlen(want) - 1);
                strncat(want, DT_NAMES[i], sizeof want - strlen(want) - 1);
            }
        PyObject *got = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s, got %S", what, want, got);
        Py_XDECREF(got);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got %d dimensions", what, ndim,
                     PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous (use numpy.ascontiguousarray)", what);
        return NULL;
    }
    if (!PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to its itemsize", what);
        return NULL;
    }
    if (dt_out)
        *dt_out = (dsv3_dt)found;
    return a;
}

PyArrayObject *dsv3_py_check_array(PyObject *obj, const char *what, dsv3_dt dt, int ndim)
{
    return dsv3_py_check_array_any(obj, what, 1u << dt, ndim, NULL);
}

int dsv3_py_isa_arg(PyObject *obj, int *out)
{
    if (!obj || obj == Py_None) {
        *out = -1;
        return 1;
    }
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (!s) {
        PyErr_SetString(PyExc_TypeError, "isa must be None or one of 'scalar', 'avx2', 'avx512'");
        return 0;
    }
    dsv3_error err = {0};
    dsv3_isa isa;
    dsv3_status st = dsv3_isa_parse(s, &isa, &err);
    if (st == DSV3_OK)
        st = dsv3_isa_resolve((int)isa, &isa, &err);
    if (st != DSV3_OK) {
        dsv3_py_raise(st, &err);
        return 0;
    }
    *out = (int)isa;
    return 1;
}

/* ---- cpu / threads ---- */
static PyObject *cpu_features(PyObject *self, PyObject *noargs)
{
    (void)self; (void)noargs;
    const dsv3_cpu_features *f = dsv3_cpu();
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
#define F(name) if (PyDict_SetItemString(d, #name, f->name ? Py_True : Py_False) < 0) goto fail;
    F(sse42) F(avx) F(avx2) F(fma) F(f16c) F(avx512f) F(avx512bw) F(avx512vl) F(avx512dq) F(avx512cd)
    F(avx512_bf16) F(avx512_vnni) F(avx512_vbmi) F(avx512_vbmi2) F(avx512_fp16) F(amx) F(os_avx) F(os_avx512)
#undef F
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

static PyObject *isa_info(PyObject *self, PyObject *noargs)
{
    (void)self; (void)noargs;
    PyObject *sup = PyList_New(0);
    if (!sup)
        return NULL;
    for (int i = 0; i < DSV3_ISA_COUNT; i++)
        if (dsv3_isa_supported((dsv3_isa)i)) {
            PyObject *s = PyUnicode_FromString(dsv3_isa_name((dsv3_isa)i));
            if (!s || PyList_Append(sup, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(sup);
                return NULL;
            }
            Py_DECREF(s);
        }
    return Py_BuildValue("(sN)", dsv3_isa_name(dsv3_isa_active()), sup);
}

static PyObject *set_isa(PyObject *self, PyObject *arg)
{
    (void)self;
    const char *s = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (!s)
        return PyErr_Format(PyExc_TypeError, "isa must be a str");
    dsv3_error err = {0};
    dsv3_isa isa;
    dsv3_status st = dsv3_isa_parse(s, &isa, &err);
    if (st == DSV3_OK)
        st = dsv3_isa_set(isa, &err);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    Py_RETURN_NONE;
}

static PyObject *get_threads(PyObject *self, PyObject *noargs)
{
    (void)self; (void)noargs;
    return PyLong_FromLong(dsv3_num_threads());
}

static PyObject *set_threads(PyObject *self, PyObject *arg)
{
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    dsv3_error err = {0};
    dsv3_status st = dsv3_set_num_threads(n > 1000000 ? 1000000 : (n < -1 ? -1 : (int)n), &err);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    Py_RETURN_NONE;
}

PyMethodDef dsv3_cpu_methods[] = {
    {"_register_dtypes", (PyCFunction)(void (*)(void))register_dtypes, METH_VARARGS | METH_KEYWORDS,
     "Register ml_dtypes' bfloat16/float8 dtypes (called once by dsv3)."},
    {"cpu_features", cpu_features, METH_NOARGS, "CPUID features as a dict."},
    {"isa_info", isa_info, METH_NOARGS, "(active ISA, list of supported ISAs)."},
    {"set_isa", set_isa, METH_O, "Force the kernel path: 'scalar', 'avx2' or 'avx512'."},
    {"num_threads", get_threads, METH_NOARGS, "Threads used by parallel regions."},
    {"set_num_threads", set_threads, METH_O, "Set the number of threads (>= 1)."},
    {NULL, NULL, 0, NULL},
};

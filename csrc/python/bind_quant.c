/* _dsv3 bindings: quantise / dequantise weights and the linear entry point. */
#include "bind.h"

#include <string.h>

#include "dsv3_quant.h"

/* quantize(w: float32 [n, k], fmt: str, group=0, ue8m0=False) -> {"data", "scale", "scale2"} */
static PyObject *py_quantize(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"w", "fmt", "group", "ue8m0", NULL};
    PyObject *wo;
    const char *fname;
    int group = 0, ue8m0 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os|ip", kwlist, &wo, &fname, &group, &ue8m0))
        return NULL;
    PyArrayObject *w = dsv3_py_check_array(wo, "w", DSV3_DT_F32, 2);
    if (!w)
        return NULL;
    dsv3_error err = {0};
    dsv3_format fmt;
    size_t bytes;
    int64_t sr, sc;
    const int64_t n = PyArray_DIMS(w)[0], k = PyArray_DIMS(w)[1];
    dsv3_status st = dsv3_format_parse(fname, &fmt, &err);
    if (st == DSV3_OK)
        st = dsv3_quant_layout(fmt, n, k, group, &bytes, &sr, &sc, &err);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    const dsv3_format_traits *t = &dsv3_formats[fmt];
    static const dsv3_dt data_dt[DSV3_FMT_COUNT] = {DSV3_DT_F32, DSV3_DT_BF16, DSV3_DT_F8E4M3,
                                                    DSV3_DT_U8, DSV3_DT_I8, DSV3_DT_U8};
    npy_intp ddims[2] = {n, t->code_bits == 4 ? k / 2 : k}, sdims[2] = {sr, sc};
    PyArray_Descr *dd = dsv3_py_descr(data_dt[fmt]);
    PyArray_Descr *sd = dsv3_py_descr(t->scale_kind == DSV3_SCALE_E4M3 ? DSV3_DT_F8E4M3 : DSV3_DT_F32);
    if (!dd || !sd)
        return PyErr_Format(PyExc_RuntimeError, "quantize: ml_dtypes dtypes are not registered");
    Py_INCREF(dd);
    PyObject *data = PyArray_NewFromDescr(&PyArray_Type, dd, 2, ddims, NULL, NULL, 0, NULL);
    PyObject *scale = NULL;
    if (data && sr) {
        Py_INCREF(sd);
        scale = PyArray_NewFromDescr(&PyArray_Type, sd, fmt == DSV3_FMT_INT8 ? 1 : 2, sdims, NULL, NULL, 0, NULL);
    }
    if (!data || (sr && !scale)) {
        Py_XDECREF(data);
        return NULL;
    }
    float scale2 = 1.0f;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_quantize(fmt, PyArray_DATA(w), n, k, group, ue8m0, PyArray_DATA((PyArrayObject *)data),
                       scale ? PyArray_DATA((PyArrayObject *)scale) : NULL, &scale2, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(data);
        Py_XDECREF(scale);
        return dsv3_py_raise(st, &err);
    }
    if (!scale) {
        scale = Py_None;
        Py_INCREF(scale);
    }
    return Py_BuildValue("{sNsNsd}", "data", data, "scale", scale, "scale2", (double)scale2);
}

/* dequantize(w: weight dict or array) -> float32 [n, k] */
static PyObject *py_dequantize(PyObject *self, PyObject *arg)
{
    (void)self;
    dsv3_weight w;
    if (!dsv3_py_weight(arg, "weight", -1, -1, &w))
        return NULL;
    npy_intp dims[2] = {w.n, w.k};
    PyObject *out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_dequantize(&w, PyArray_DATA((PyArrayObject *)out), &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

/* linear(x: float32|bfloat16 [m, k], w, bias=None, mode="weight_only", isa=None, precision=None)
 * -> float32 [m, n]; precision "exact"|"fast" overrides the weight's "act" (None keeps it). */
static PyObject *py_linear(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"x", "w", "bias", "mode", "isa", "precision", NULL};
    PyObject *xo, *wo, *bo = Py_None, *isao = Py_None, *prec = Py_None;
    const char *mode_s = "weight_only";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OsOO", kwlist, &xo, &wo, &bo, &mode_s, &isao, &prec))
        return NULL;
    dsv3_linear_mode mode;
    if (strcmp(mode_s, "weight_only") == 0)
        mode = DSV3_LINEAR_WEIGHT_ONLY;
    else if (strcmp(mode_s, "dynamic") == 0)
        mode = DSV3_LINEAR_DYNAMIC;
    else
        return PyErr_Format(PyExc_ValueError, "mode must be 'weight_only' or 'dynamic', got '%s'", mode_s);
    int isa;
    if (!dsv3_py_isa_arg(isao, &isa))
        return NULL;
    dsv3_dt xdt;
    PyArrayObject *x = dsv3_py_check_array_any(xo, "x", (1u << DSV3_DT_F32) | (1u << DSV3_DT_BF16), 2, &xdt);
    if (!x)
        return NULL;
    const int64_t m = PyArray_DIMS(x)[0], k = PyArray_DIMS(x)[1];
    dsv3_weight w;
    if (!dsv3_py_weight(wo, "weight", -1, -1, &w))
        return NULL;
    if (prec != Py_None && !dsv3_py_act_arg(prec, "precision", &w.act))
        return NULL;
    if (w.k != k)
        return PyErr_Format(PyExc_ValueError, "x has %lld columns but the weight has K = %lld", (long long)k,
                            (long long)w.k);
    const float *bias = NULL;
    if (bo != Py_None) {
        PyArrayObject *b = dsv3_py_check_array(bo, "bias", DSV3_DT_F32, 1);
        if (!b)
            return NULL;
        if (PyArray_DIMS(b)[0] != w.n)
            return PyErr_Format(PyExc_ValueError, "bias: expected shape [%lld], got [%lld]", (long long)w.n,
                                (long long)PyArray_DIMS(b)[0]);
        bias = PyArray_DATA(b);
    }
    npy_intp dims[2] = {m, w.n};
    PyObject *out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_linear_ex(PyArray_DATA(x), xdt == DSV3_DT_BF16, m, &w, bias, PyArray_DATA((PyArrayObject *)out),
                        mode, isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

/* pack_weight(w, isa=None) -> uint8 [bytes]: w's packed kernel layout (csrc/linear/int4p.h), for the dict key
 * "packed"; isa: the packer's row step (the same bytes on every ISA) */
static PyObject *py_pack_weight(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"weight", "isa", NULL};
    PyObject *wo, *isa_obj = NULL;
    int isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwlist, &wo, &isa_obj) || !dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    dsv3_weight w;
    if (!dsv3_py_weight(wo, "weight", -1, -1, &w))
        return NULL;
    w.packed = NULL;
    const size_t bytes = dsv3_weight_packed_bytes(&w);
    if (!bytes)
        return PyErr_Format(PyExc_ValueError, "pack_weight: %s weights have no packed layout",
                            dsv3_formats[w.fmt].name);
    /* DSV3_PACKED_ALIGN-aligned (the layout's contract): a view into a slightly larger owned array */
    npy_intp dims[1] = {(npy_intp)bytes}, rdims[1] = {(npy_intp)(bytes + DSV3_PACKED_ALIGN - 1)};
    PyObject *raw = PyArray_SimpleNew(1, rdims, NPY_UINT8);
    if (!raw)
        return NULL;
    char *p = PyArray_DATA((PyArrayObject *)raw);
    p += (DSV3_PACKED_ALIGN - (uintptr_t)p % DSV3_PACKED_ALIGN) % DSV3_PACKED_ALIGN;
    PyObject *out = PyArray_New(&PyArray_Type, 1, dims, NPY_UINT8, NULL, p, 0, NPY_ARRAY_CARRAY, NULL);
    if (!out || PyArray_SetBaseObject((PyArrayObject *)out, raw) < 0) { /* steals raw, also on failure */
        if (!out)
            Py_DECREF(raw);
        Py_XDECREF(out);
        return NULL;
    }
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_weight_pack(&w, PyArray_DATA((PyArrayObject *)out), isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

/* weight_nan_free(w) -> bool: w's codes hold no NaN code (dsv3_weight_rows_nan over every row), for the dict
 * key "nan_free" */
static PyObject *py_weight_nan_free(PyObject *self, PyObject *wo)
{
    (void)self;
    dsv3_weight w;
    if (!dsv3_py_weight(wo, "weight", -1, -1, &w))
        return NULL;
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = dsv3_weight_rows_nan(&w, 0, w.n);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(!bad);
}

PyMethodDef dsv3_quant_methods[] = {
    {"weight_nan_free", py_weight_nan_free, METH_O,
     "weight_nan_free(weight) -> bool (no NaN code in its data; fp8_block: e4m3 S.1111.111)"},
    {"pack_weight", (PyCFunction)(void (*)(void))py_pack_weight, METH_VARARGS | METH_KEYWORDS,
     "pack_weight(weight, isa=None) -> uint8 [bytes] (the packed kernel layout, 64-byte aligned)"},
    {"quantize", (PyCFunction)(void (*)(void))py_quantize, METH_VARARGS | METH_KEYWORDS,
     "quantize(w, fmt, group=0, ue8m0=False) -> dict(data, scale, scale2)"},
    {"dequantize", py_dequantize, METH_O, "dequantize(weight) -> float32 [n, k]"},
    {"linear", (PyCFunction)(void (*)(void))py_linear, METH_VARARGS | METH_KEYWORDS,
     "linear(x, weight, bias=None, mode='weight_only', isa=None, precision=None) -> float32 [m, n]"},
    {NULL, NULL, 0, NULL},
};

int dsv3_quant_init_types(PyObject *module)
{
    (void)module;
    return 0;
}

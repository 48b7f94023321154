/* Python objects -> dsv3_weight (see bind.h): a float32/bfloat16 array, or the dict form
 * {"format", "shape", "data", "scale", "scale2", "group", "ue8m0", "act", "packed", "nan_free"} returned by
 * dsv3.quant.QuantizedTensor.to_native(). Every array is checked against the format's layout
 * (dsv3_quant_layout): dtype, shape, contiguity and alignment, with errors naming the field.
 * "packed" (uint8 [dsv3_weight_packed_bytes], DSV3_PACKED_ALIGN-aligned: csrc/linear/int4p.h) may come
 * alone, with "data" and "scale" None: a weight stored only in the packed layout (dsv3 convert --pack),
 * which the fast kernels read in place. Also here: unpack_weight (that layout back to the stored one) and
 * tensor_packs (the one rule of which tensors take the packed layout). */
#include "bind.h"

#include <string.h>

#include "dsv3_model.h"
#include "dsv3_quant.h"

static int check_field(PyObject *d, const char *key, const char *what, unsigned mask, int64_t rows,
                       int64_t cols, int ndim, const void **out)
{
    char name[160];
    snprintf(name, sizeof name, "%s['%s']", what, key);
    PyObject *o = PyDict_GetItemString(d, key); /* borrowed */
    if (!o || o == Py_None) {
        PyErr_Format(PyExc_ValueError, "%s is missing", name);
        return 0;
    }
    PyArrayObject *a = dsv3_py_check_array_any(o, name, mask, ndim, NULL);
    if (!a)
        return 0;
    npy_intp *dm = PyArray_DIMS(a);
    if (dm[0] != rows || (ndim == 2 && dm[1] != cols)) {
        if (ndim == 2)
            PyErr_Format(PyExc_ValueError, "%s: expected shape [%lld, %lld], got [%lld, %lld]", name,
                         (long long)rows, (long long)cols, (long long)dm[0], (long long)dm[1]);
        else
            PyErr_Format(PyExc_ValueError, "%s: expected shape [%lld], got [%lld]", name, (long long)rows,
                         (long long)dm[0]);
        return 0;
    }
    *out = PyArray_DATA(a);
    return 1;
}

static int get_int(PyObject *d, const char *key, long dflt, long *out, const char *what)
{
    PyObject *o = PyDict_GetItemString(d, key);
    if (!o || o == Py_None) {
        *out = dflt;
        return 1;
    }
    *out = PyLong_AsLong(o);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s['%s'] must be an int", what, key);
        return 0;
    }
    return 1;
}

/* "act": "exact" (default) or "fast" -> dsv3_act */
int dsv3_py_act_arg(PyObject *o, const char *what, int *out)
{
    const char *s = o && PyUnicode_Check(o) ? PyUnicode_AsUTF8(o) : NULL;
    if (s && strcmp(s, "exact") == 0)
        *out = DSV3_ACT_EXACT;
    else if (s && strcmp(s, "fast") == 0)
        *out = DSV3_ACT_FAST;
    else {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be 'exact' or 'fast', got %R", what, o);
        return 0;
    }
    return 1;
}

static int weight_from_dict(PyObject *d, const char *what, dsv3_weight *out)
{
    PyObject *fo = PyDict_GetItemString(d, "format");
    const char *fname = fo && PyUnicode_Check(fo) ? PyUnicode_AsUTF8(fo) : NULL;
    if (!fname) {
        PyErr_Format(PyExc_ValueError, "%s['format'] must be a str", what);
        return 0;
    }
    dsv3_error err = {0};
    dsv3_format fmt;
    if (dsv3_format_parse(fname, &fmt, &err) != DSV3_OK) {
        PyErr_Format(PyExc_ValueError, "%s: %s", what, err.msg);
        return 0;
    }
    long long n, k;
    PyObject *sh = PyDict_GetItemString(d, "shape");
    if (!sh || !PyTuple_Check(sh) || !PyArg_ParseTuple(sh, "LL", &n, &k)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s['shape'] must be a tuple (n, k) of ints", what);
        return 0;
    }
    long group, ue8m0;
    if (!get_int(d, "group", 0, &group, what) || !get_int(d, "ue8m0", 0, &ue8m0, what))
        return 0;
    size_t bytes;
    int64_t sr, sc;
    if (dsv3_quant_layout(fmt, n, k, (int)group, &bytes, &sr, &sc, &err) != DSV3_OK) {
        PyErr_Format(PyExc_ValueError, "%s: %s", what, err.msg);
        return 0;
    }
    out->fmt = fmt;
    out->n = n;
    out->k = k;
    out->group = (int)group;
    out->ue8m0 = (int)ue8m0;
    const unsigned F32 = 1u << DSV3_DT_F32, U8 = 1u << DSV3_DT_U8, E4M3 = 1u << DSV3_DT_F8E4M3;
    PyObject *pk = PyDict_GetItemString(d, "packed"); /* the kernel layout (dsv3.quant.pack / packed_native) */
    if (pk == Py_None)
        pk = NULL;
    PyObject *data = PyDict_GetItemString(d, "data"), *scale = PyDict_GetItemString(d, "scale");
    const int packed_only = pk && (!data || data == Py_None) && (!scale || scale == Py_None);
    int ok = packed_only;
    switch (packed_only ? DSV3_FMT_COUNT : fmt) {
    case DSV3_FMT_F32: ok = check_field(d, "data", what, F32, n, k, 2, &out->data); break;
    case DSV3_FMT_BF16: ok = check_field(d, "data", what, 1u << DSV3_DT_BF16, n, k, 2, &out->data); break;
    case DSV3_FMT_FP8_BLOCK:
        ok = check_field(d, "data", what, E4M3 | U8, n, k, 2, &out->data) &&
             check_field(d, "scale", what, F32, sr, sc, 2, &out->scale);
        break;
    case DSV3_FMT_NVFP4:
        ok = check_field(d, "data", what, U8, n, k / 2, 2, &out->data) &&
             check_field(d, "scale", what, E4M3 | U8, sr, sc, 2, &out->scale);
        break;
    case DSV3_FMT_INT8:
        ok = check_field(d, "data", what, 1u << DSV3_DT_I8, n, k, 2, &out->data) &&
             check_field(d, "scale", what, F32, sr, 0, 1, &out->scale);
        break;
    case DSV3_FMT_INT4:
        ok = check_field(d, "data", what, U8, n, k / 2, 2, &out->data) &&
             check_field(d, "scale", what, F32, sr, sc, 2, &out->scale);
        break;
    default: break;
    }
    if (!ok)
        return 0;
    PyObject *act = PyDict_GetItemString(d, "act");
    if (act && act != Py_None) {
        char name[160];
        snprintf(name, sizeof name, "%s['act']", what);
        if (!dsv3_py_act_arg(act, name, &out->act))
            return 0;
    }
    PyObject *nf = PyDict_GetItemString(d, "nan_free"); /* the scan's verdict, from dsv3.quant.nan_scanned_native */
    if (nf && nf != Py_None) {
        const int v = PyObject_IsTrue(nf);
        if (v < 0)
            return 0;
        out->nan_free = v;
    }
    if (pk) {
        char name[160];
        snprintf(name, sizeof name, "%s['packed']", what);
        const size_t pb = dsv3_weight_packed_bytes(out);
        if (!pb) {
            PyErr_Format(PyExc_ValueError, "%s: %s weights have no packed layout", name, dsv3_formats[fmt].name);
            return 0;
        }
        PyArrayObject *a = dsv3_py_check_array_any(pk, name, U8, 1, NULL);
        if (!a)
            return 0;
        if ((size_t)PyArray_DIM(a, 0) != pb) {
            PyErr_Format(PyExc_ValueError, "%s: expected %zu bytes for shape [%lld, %lld] with group %ld "
                         "(csrc/linear/int4p.h), got %zd", name, pb, n, k, group, (Py_ssize_t)PyArray_DIM(a, 0));
            return 0;
        }
        const uintptr_t addr = (uintptr_t)PyArray_DATA(a);
        if (addr % DSV3_PACKED_ALIGN) {
            PyErr_Format(PyExc_ValueError, "%s: the packed layout must start at a multiple of %d bytes (its "
                         "64-byte vectors), but it starts %d bytes past one (address %p); a safetensors file "
                         "written by dsv3 convert --pack aligns it: was the file rewritten by another tool?",
                         name, DSV3_PACKED_ALIGN, (int)(addr % DSV3_PACKED_ALIGN), PyArray_DATA(a));
            return 0;
        }
        out->packed = PyArray_DATA(a);
    }
    PyObject *s2 = PyDict_GetItemString(d, "scale2");
    if (fmt == DSV3_FMT_NVFP4) {
        const double v = s2 && s2 != Py_None ? PyFloat_AsDouble(s2) : -1.0;
        if (!s2 || s2 == Py_None || (v == -1.0 && PyErr_Occurred())) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s['scale2'] must be a float (nvfp4 weight_scale_2)", what);
            return 0;
        }
        out->scale2 = (float)v;
    }
    return 1;
}

int dsv3_py_weight(PyObject *obj, const char *what, int64_t n, int64_t k, dsv3_weight *out)
{
    memset(out, 0, sizeof *out);
    out->scale2 = 1.0f;
    if (PyDict_Check(obj)) {
        if (!weight_from_dict(obj, what, out))
            return 0;
    } else {
        dsv3_dt dt;
        PyArrayObject *a = dsv3_py_check_array_any(obj, what, (1u << DSV3_DT_F32) | (1u << DSV3_DT_BF16), 2, &dt);
        if (!a)
            return 0;
        out->fmt = dt == DSV3_DT_F32 ? DSV3_FMT_F32 : DSV3_FMT_BF16;
        out->n = PyArray_DIMS(a)[0];
        out->k = PyArray_DIMS(a)[1];
        out->data = PyArray_DATA(a);
    }
    if ((n >= 0 && out->n != n) || (k >= 0 && out->k != k)) {
        PyErr_Format(PyExc_ValueError, "%s: expected shape [%lld, %lld], got [%lld, %lld]", what, (long long)n,
                     (long long)k, (long long)out->n, (long long)out->k);
        return 0;
    }
    return 1;
}

/* unpack_weight(weight) -> {"data", "scale"}: the stored layout (dsv3_quant_layout) of a weight given in its
 * packed layout ("packed", with or without data), owned arrays; the cost: one stored-size copy. */
static PyObject *py_unpack_weight(PyObject *self, PyObject *wo)
{
    (void)self;
    dsv3_weight w;
    if (!dsv3_py_weight(wo, "weight", -1, -1, &w))
        return NULL;
    if (!w.packed)
        return PyErr_Format(PyExc_ValueError, "unpack_weight: the weight has no 'packed' layout to unpack");
    size_t bytes;
    int64_t sr, sc;
    dsv3_error err = {0};
    if (dsv3_quant_layout(w.fmt, w.n, w.k, w.group, &bytes, &sr, &sc, &err) != DSV3_OK)
        return dsv3_py_raise(DSV3_E_VALUE, &err);
    npy_intp dd[2] = {(npy_intp)w.n, (npy_intp)(w.k / 2)}, ds[2] = {(npy_intp)sr, (npy_intp)sc};
    PyObject *data = PyArray_SimpleNew(2, dd, NPY_UINT8), *scale = data ? PyArray_SimpleNew(2, ds, NPY_FLOAT32) : NULL;
    if (!scale) {
        Py_XDECREF(data);
        return NULL;
    }
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_weight_unpack(&w, PyArray_DATA((PyArrayObject *)data), PyArray_DATA((PyArrayObject *)scale), &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(data);
        Py_DECREF(scale);
        return dsv3_py_raise(st, &err);
    }
    PyObject *out = Py_BuildValue("{sNsN}", "data", data, "scale", scale);
    return out;
}

/* tensor_packs(name) -> bool (dsv3_tensor_packs) */
static PyObject *py_tensor_packs(PyObject *self, PyObject *name)
{
    (void)self;
    const char *s = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (!s) {
        PyErr_Clear();
        return PyErr_Format(PyExc_TypeError, "tensor_packs: name must be a str, got %s", Py_TYPE(name)->tp_name);
    }
    return PyBool_FromLong(dsv3_tensor_packs(s));
}

/* packed_formats() -> tuple of the format names whose traits have a packed layout (dsv3_format_traits) */
static PyObject *py_packed_formats(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *out = PyList_New(0);
    for (int f = 0; out && f < DSV3_FMT_COUNT; f++) {
        if (!dsv3_formats[f].packed_bytes)
            continue;
        PyObject *s = PyUnicode_FromString(dsv3_formats[f].name);
        if (!s || PyList_Append(out, s) < 0)
            Py_CLEAR(out);
        Py_XDECREF(s);
    }
    if (!out)
        return NULL;
    PyObject *t = PyList_AsTuple(out);
    Py_DECREF(out);
    return t;
}

PyMethodDef dsv3_weight_methods[] = {
    {"packed_formats", py_packed_formats, METH_NOARGS,
     "packed_formats() -> names of the formats with a packed kernel layout (dsv3_format_traits.packed_bytes)"},
    {"unpack_weight", py_unpack_weight, METH_O,
     "unpack_weight(weight with 'packed') -> {'data', 'scale'}: the stored layout, owned (one stored-size copy)"},
    {"tensor_packs", py_tensor_packs, METH_O,
     "tensor_packs(name) -> whether the tensor of this canonical name takes the packed layout where its format "
     "has one (the rule of packing at load and of dsv3 convert --pack)"},
    {NULL, NULL, 0, NULL},
};

int dsv3_weight_init(PyObject *module) /* the packed layout's alignment, for the writers */
{
    return PyModule_AddIntConstant(module, "PACKED_ALIGN", DSV3_PACKED_ALIGN);
}

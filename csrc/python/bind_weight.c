/* Python objects -> dsv3_weight (see bind.h): a float32/bfloat16 array, or the dict form
 * {"format", "shape", "data", "scale", "scale2", "group", "ue8m0", "act", "packed", "nan_free"} returned by
 * dsv3.quant.QuantizedTensor.to_native(). Every array is checked against the format's layout
 * (dsv3_quant_layout): dtype, shape, contiguity and alignment, with errors naming the field. */
#include "bind.h"

#include <string.h>

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
    int ok = 0;
    switch (fmt) {
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
    PyObject *pk = PyDict_GetItemString(d, "packed"); /* the kernel layout from dsv3.quant.packed_native */
    if (pk && pk != Py_None) {
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
            PyErr_Format(PyExc_ValueError, "%s: expected %zu bytes for this shape and group, got %zd", name, pb,
                         (Py_ssize_t)PyArray_DIM(a, 0));
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

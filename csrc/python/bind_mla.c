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

/* ---- the latent cache's storage formats (dsv3_kv_cache.h) ---- */

/* kv_cache_formats() -> {name: {"latent_bytes", "scale_block", "rope_bytes"}}: the C table */
PyObject *dsv3_py_kv_cache_formats(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *d = PyDict_New();
    for (int t = 0; d && t < DSV3_KV_DTYPE_COUNT; t++) {
        const dsv3_kv_format *f = &dsv3_kv_formats[t];
        PyObject *v = Py_BuildValue("{s:i,s:i,s:i}", "latent_bytes", f->latent_bytes, "scale_block", f->scale_block,
                                    "rope_bytes", f->rope_bytes);
        if (!v || PyDict_SetItemString(d, f->name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

/* The layout for (dtype name, kv_lora, rope); 0 with ValueError when bad. */
static int layout_arg(const char *dtype, long long kv_lora, long long rope, dsv3_kv_layout *g)
{
    dsv3_kv_dtype t;
    dsv3_error err = {0};
    dsv3_status st = dsv3_kv_dtype_parse(dtype, &t, &err);
    if (st != DSV3_OK) {
        dsv3_py_raise(st, &err);
        return 0;
    }
    if (kv_lora < 1 || rope < 0 || kv_lora > (1 << 24) || rope > (1 << 24)) {
        PyErr_Format(PyExc_ValueError, "kv_lora must be in 1..2^24 and rope in 0..2^24, got %lld and %lld", kv_lora,
                     rope);
        return 0;
    }
    *g = dsv3_kv_layout_of(t, kv_lora, rope);
    return 1;
}

/* Checks that `rows` is uint8 [n, row_bytes] of layout g. */
static PyArrayObject *packed_arg(PyObject *obj, const char *what, const dsv3_kv_layout *g)
{
    PyArrayObject *a = dsv3_py_check_array(obj, what, DSV3_DT_U8, 2);
    if (a && PyArray_DIM(a, 1) != g->row_bytes) {
        PyErr_Format(PyExc_ValueError, "%s: rows of %lld bytes expected for this layout, got %zd", what,
                     (long long)g->row_bytes, (Py_ssize_t)PyArray_DIM(a, 1));
        return NULL;
    }
    return a;
}

/* kv_cache_pack(rows float32 [n, kv_lora+rope], kv_lora, dtype) -> uint8 [n, row_bytes] */
PyObject *dsv3_py_kv_cache_pack(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"rows", "kv_lora", "dtype", NULL};
    PyObject *ro;
    long long kv_lora;
    const char *dtype;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLs", kwlist, &ro, &kv_lora, &dtype))
        return NULL;
    PyArrayObject *r = dsv3_py_check_array(ro, "rows", DSV3_DT_F32, 2);
    dsv3_kv_layout g;
    if (!r || !layout_arg(dtype, kv_lora, (long long)PyArray_DIM(r, 1) - kv_lora, &g))
        return NULL;
    npy_intp dims[2] = {PyArray_DIM(r, 0), (npy_intp)g.row_bytes};
    PyObject *out = PyArray_SimpleNew(2, dims, NPY_UINT8);
    if (!out)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    dsv3_kv_store_rows(&g, PyArray_DATA(r), dims[0], PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
    return out;
}

/* kv_cache_unpack(packed uint8 [n, row_bytes], kv_lora, rope, dtype) -> float32 [n, kv_lora+rope] */
PyObject *dsv3_py_kv_cache_unpack(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"packed", "kv_lora", "rope", "dtype", NULL};
    PyObject *po;
    long long kv_lora, rope;
    const char *dtype;
    dsv3_kv_layout g;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLs", kwlist, &po, &kv_lora, &rope, &dtype) ||
        !layout_arg(dtype, kv_lora, rope, &g))
        return NULL;
    PyArrayObject *p = packed_arg(po, "packed", &g);
    if (!p)
        return NULL;
    const npy_intp n = PyArray_DIM(p, 0), w = (npy_intp)(g.R + g.P);
    PyObject *out = new_f32(n, w);
    if (!out)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp t = 0; t < n; t++)
        dsv3_kv_decode(&g, (const uint8_t *)PyArray_DATA(p) + t * g.row_bytes, 0, w,
                       (float *)PyArray_DATA((PyArrayObject *)out) + t * w);
    Py_END_ALLOW_THREADS
    return out;
}

/* mla_dots_kv(a float32 [na, kv_lora+rope], packed uint8 [nb, row_bytes], kv_lora, dtype, isa=None)
 *   -> float32 [na, nb] */
PyObject *dsv3_py_mla_dots_kv(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"a", "packed", "kv_lora", "dtype", "isa", NULL};
    PyObject *ao, *po, *isa_obj = NULL;
    long long kv_lora;
    const char *dtype;
    int isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLs|O", kwlist, &ao, &po, &kv_lora, &dtype, &isa_obj) ||
        !dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    PyArrayObject *a = dsv3_py_check_array(ao, "a", DSV3_DT_F32, 2);
    dsv3_kv_layout g;
    if (!a || !layout_arg(dtype, kv_lora, (long long)PyArray_DIM(a, 1) - kv_lora, &g))
        return NULL;
    PyArrayObject *p = packed_arg(po, "packed", &g);
    if (!p)
        return NULL;
    const npy_intp na = PyArray_DIM(a, 0), nb = PyArray_DIM(p, 0);
    PyObject *out = new_f32(na, nb);
    if (!out)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_mla_dots_kv(PyArray_DATA(a), na, g.R + g.P, &g, PyArray_DATA(p), nb, PyArray_DATA((PyArrayObject *)out),
                          nb, isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

/* mla_wsum_kv(p float32 [np, T], packed uint8 [T, row_bytes], kv_lora, rope, dtype, isa=None)
 *   -> float32 [np, kv_lora] */
PyObject *dsv3_py_mla_wsum_kv(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"p", "packed", "kv_lora", "rope", "dtype", "isa", NULL};
    PyObject *po, *xo, *isa_obj = NULL;
    long long kv_lora, rope;
    const char *dtype;
    int isa;
    dsv3_kv_layout g;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLLs|O", kwlist, &po, &xo, &kv_lora, &rope, &dtype, &isa_obj) ||
        !dsv3_py_isa_arg(isa_obj, &isa) || !layout_arg(dtype, kv_lora, rope, &g))
        return NULL;
    PyArrayObject *p = dsv3_py_check_array(po, "p", DSV3_DT_F32, 2), *x = p ? packed_arg(xo, "packed", &g) : NULL;
    if (!x)
        return NULL;
    const npy_intp np_ = PyArray_DIM(p, 0), T = PyArray_DIM(p, 1);
    if (PyArray_DIM(x, 0) != T)
        return PyErr_Format(PyExc_ValueError, "mla_wsum_kv: p has %zd columns but packed has %zd rows", (Py_ssize_t)T,
                            (Py_ssize_t)PyArray_DIM(x, 0));
    PyObject *out = new_f32(np_, (npy_intp)g.R);
    if (!out)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_mla_wsum_kv(PyArray_DATA(p), np_, T, &g, PyArray_DATA(x), T, PyArray_DATA((PyArrayObject *)out), g.R,
                          isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

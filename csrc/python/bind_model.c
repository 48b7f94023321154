/* _dsv3 bindings: the native model object (dsv3_model) and the sampler.
 *
 * Model(config: dict, tensors: dict, max_seq_len: int, attention: "absorbed"|"naive")
 *   config: DeepseekConfig.to_native() keys; tensors: canonical name -> numpy float32/bfloat16
 *   array or quantised weight dict (dsv3_py_weight). The object keeps a reference to a copy of
 *   the tensors dict, so every array outlives the C model, which reads them in place.
 */
#include "bind.h"
#include "bind_mla.h"
#include "dsv3_batch.h"
#include "dsv3_model.h"
#include "dsv3_mtp.h"

#include <stddef.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    dsv3_model *model;
    PyObject *tensors; /* dict copy: keeps every array alive */
    int busy;          /* a call is running with the GIL released */
} ModelObject;

/* ---- config dict -> dsv3_model_config ---- */
static PyObject *cfg_item(PyObject *d, const char *key)
{
    PyObject *v = PyDict_GetItemString(d, key); /* borrowed */
    if (!v)
        PyErr_Format(PyExc_ValueError, "config: missing key '%s'", key);
    return v;
}

static int cfg_int(PyObject *d, const char *key, int64_t *out)
{
    PyObject *v = cfg_item(d, key);
    if (!v)
        return 0;
    if (v == Py_None) { /* q_lora_rank None = plain q_proj; n_group None = no groups */
        *out = 0;
        return 1;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "config: '%s' must be an int, got %s", key, Py_TYPE(v)->tp_name);
        return 0;
    }
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return 0;
    *out = x;
    return 1;
}

static int cfg_flag(PyObject *d, const char *key, int *out)
{
    int64_t x;
    PyObject *v = cfg_item(d, key);
    if (!v)
        return 0;
    if (PyBool_Check(v)) {
        *out = v == Py_True;
        return 1;
    }
    if (!cfg_int(d, key, &x))
        return 0;
    *out = x != 0;
    return 1;
}

static int cfg_float(PyObject *d, const char *key, float *out)
{
    PyObject *v = cfg_item(d, key);
    if (!v)
        return 0;
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "config: '%s' must be a number", key);
        return 0;
    }
    *out = (float)x;
    return 1;
}

static int cfg_choice(PyObject *d, const char *key, const char *const *names, int count, int *out)
{
    PyObject *v = cfg_item(d, key);
    if (!v)
        return 0;
    const char *s = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
    for (int i = 0; s && i < count; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return 1;
        }
    PyErr_Format(PyExc_ValueError, "config: unsupported %s %R", key, v);
    return 0;
}

/* The native config's keys (DeepseekConfig.to_native() writes exactly these; _dsv3.config_keys() lists them). */
typedef enum { KEY_INT, KEY_FLAG, KEY_FLOAT } key_type;
#define K(type, field) {#field, type, offsetof(dsv3_model_config, field)}
static const struct {
    const char *name;
    key_type type;
    size_t offset;
} CONFIG_KEYS[] = {
    K(KEY_INT, vocab_size), K(KEY_INT, hidden_size), K(KEY_INT, intermediate_size), K(KEY_INT, moe_intermediate_size),
    K(KEY_INT, num_hidden_layers), K(KEY_INT, num_attention_heads), K(KEY_INT, q_lora_rank), K(KEY_INT, kv_lora_rank),
    K(KEY_INT, qk_nope_head_dim), K(KEY_INT, qk_rope_head_dim), K(KEY_INT, v_head_dim), K(KEY_INT, n_routed_experts),
    K(KEY_INT, n_shared_experts), K(KEY_INT, num_experts_per_tok), K(KEY_INT, n_group), K(KEY_INT, topk_group),
    K(KEY_INT, first_k_dense_replace), K(KEY_FLAG, norm_topk_prob), K(KEY_FLAG, rope_interleave),
    K(KEY_FLAG, attention_bias), K(KEY_FLAG, tie_word_embeddings), K(KEY_FLOAT, routed_scaling_factor),
    K(KEY_FLOAT, rms_norm_eps), K(KEY_FLOAT, group_mask_value), K(KEY_FLOAT, softmax_scale),
    K(KEY_FLOAT, rope_attention_scaling), K(KEY_INT, index_n_heads), K(KEY_INT, index_head_dim), K(KEY_INT, index_topk),
    K(KEY_FLAG, index_key_fp8),
};
#undef K
static const char *const OTHER_KEYS[] = {"scoring_func", "topk_method", "rope_inv_freq"};
#define N_CONFIG_KEYS (sizeof CONFIG_KEYS / sizeof CONFIG_KEYS[0])

static int parse_config(PyObject *d, dsv3_model_config *c, PyArrayObject **inv_freq)
{
    if (!PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "config must be a dict (DeepseekConfig.to_native()), got %s",
                     Py_TYPE(d)->tp_name);
        return 0;
    }
    int sf = 0, tm = 0;
    for (size_t i = 0; i < N_CONFIG_KEYS; i++) {
        char *at = (char *)c + CONFIG_KEYS[i].offset;
        const char *key = CONFIG_KEYS[i].name;
        const int ok = CONFIG_KEYS[i].type == KEY_INT ? cfg_int(d, key, (int64_t *)(void *)at)
                       : CONFIG_KEYS[i].type == KEY_FLAG ? cfg_flag(d, key, (int *)(void *)at)
                                                        : cfg_float(d, key, (float *)(void *)at);
        if (!ok)
            return 0;
    }
    if (!(cfg_choice(d, OTHER_KEYS[0], dsv3_score_func_names, DSV3_SCORE_COUNT, &sf) &&
          cfg_choice(d, OTHER_KEYS[1], dsv3_topk_method_names, DSV3_TOPK_COUNT, &tm)))
        return 0;
    c->scoring_func = (dsv3_score_func)sf;
    c->topk_method = (dsv3_topk_method)tm;
    PyObject *f = cfg_item(d, OTHER_KEYS[2]);
    if (!f)
        return 0;
    *inv_freq = (PyArrayObject *)PyArray_FROMANY(f, NPY_FLOAT32, 1, 1, NPY_ARRAY_IN_ARRAY);
    if (!*inv_freq)
        return 0;
    if (PyArray_DIM(*inv_freq, 0) * 2 != c->qk_rope_head_dim) {
        PyErr_Format(PyExc_ValueError, "config: rope_inv_freq has %lld values, expected qk_rope_head_dim/2 = %lld",
                     (long long)PyArray_DIM(*inv_freq, 0), (long long)(c->qk_rope_head_dim / 2));
        Py_CLEAR(*inv_freq);
        return 0;
    }
    c->rope_inv_freq = (const float *)PyArray_DATA(*inv_freq);
    return 1;
}

/* ---- tensors ---- */
static int fill_vector(PyObject *obj, const dsv3_tensor_slot *t)
{
    dsv3_dt dt;
    PyArrayObject *a = dsv3_py_check_array_any(obj, t->name, (1u << DSV3_DT_F32) | (1u << DSV3_DT_BF16), 1, &dt);
    if (!a)
        return 0;
    if (PyArray_DIM(a, 0) != t->k) {
        PyErr_Format(PyExc_ValueError, "%s: expected shape [%lld], got [%lld]", t->name, (long long)t->k,
                     (long long)PyArray_DIM(a, 0));
        return 0;
    }
    memset(t->weight, 0, sizeof *t->weight);
    t->weight->fmt = dt == DSV3_DT_F32 ? DSV3_FMT_F32 : DSV3_FMT_BF16;
    t->weight->n = 1;
    t->weight->k = t->k;
    t->weight->scale2 = 1.f;
    t->weight->data = PyArray_DATA(a);
    return 1;
}

static int fill_tensors(dsv3_model *m, PyObject *tensors)
{
    const int64_t count = dsv3_model_slots(m, NULL);
    dsv3_tensor_slot *slots = PyMem_Malloc((size_t)count * sizeof *slots);
    PyObject *known = PySet_New(NULL);
    int ok = slots && known;
    if (!ok)
        PyErr_NoMemory();
    if (ok)
        dsv3_model_slots(m, slots);
    for (int64_t i = 0; ok && i < count; i++) {
        const dsv3_tensor_slot *t = &slots[i];
        PyObject *name = PyUnicode_FromString(t->name);
        ok = name && PySet_Add(known, name) == 0;
        PyObject *obj = ok ? PyDict_GetItemWithError(tensors, name) : NULL; /* borrowed */
        Py_XDECREF(name);
        if (!ok || PyErr_Occurred()) {
            ok = 0;
        } else if (!obj) {
            if (!t->optional) {
                if (t->is_vector)
                    PyErr_Format(PyExc_ValueError, "missing tensor %s (expected shape [%lld])", t->name,
                                 (long long)t->k);
                else
                    PyErr_Format(PyExc_ValueError, "missing tensor %s (expected shape [%lld, %lld])", t->name,
                                 (long long)t->n, (long long)t->k);
                ok = 0;
            }
        } else {
            ok = t->is_vector ? fill_vector(obj, t) : dsv3_py_weight(obj, t->name, t->n, t->k, t->weight);
        }
    }
    if (ok) { /* every name must be one the model understands: catches mapping mistakes */
        PyObject *key, *val;
        Py_ssize_t pos = 0;
        while (PyDict_Next(tensors, &pos, &key, &val)) {
            int has = PySet_Contains(known, key);
            if (has != 1) {
                if (has == 0)
                    PyErr_Format(PyExc_ValueError, "unexpected tensor %R: not a canonical name for this config", key);
                ok = 0;
                break;
            }
        }
    }
    PyMem_Free(slots);
    Py_XDECREF(known);
    return ok;
}

static int Model_init(ModelObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"config", "tensors", "max_seq_len", "attention", "isa", "kv_cache_dtype", "mtp", "pack",
                             NULL};
    PyObject *config, *tensors, *isa_obj = NULL, *pack_obj = Py_None;
    long long cap = 4096;
    const char *attention = "absorbed", *kv_dtype = "f32";
    int mtp = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|LsOspO", kwlist, &config, &tensors, &cap, &attention, &isa_obj,
                                     &kv_dtype, &mtp, &pack_obj))
        return -1;
    if (pack_obj != Py_None && !PyBool_Check(pack_obj)) {
        PyErr_Format(PyExc_TypeError, "pack must be None, True or False, got %R", pack_obj);
        return -1;
    }
    const int pack = pack_obj == Py_None ? -1 : pack_obj == Py_True;
    if (self->model) {
        PyErr_SetString(PyExc_RuntimeError, "Model is already initialised");
        return -1;
    }
    int isa;
    if (!dsv3_py_isa_arg(isa_obj, &isa))
        return -1;
    if (!PyDict_Check(tensors)) {
        PyErr_Format(PyExc_TypeError, "tensors must be a dict of canonical name -> array, got %s",
                     Py_TYPE(tensors)->tp_name);
        return -1;
    }
    dsv3_attn_mode mode;
    if (strcmp(attention, "absorbed") == 0)
        mode = DSV3_ATTN_ABSORBED;
    else if (strcmp(attention, "naive") == 0)
        mode = DSV3_ATTN_NAIVE;
    else {
        PyErr_Format(PyExc_ValueError, "attention must be 'absorbed' or 'naive', got '%s'", attention);
        return -1;
    }
    dsv3_model_config c;
    memset(&c, 0, sizeof c);
    PyArrayObject *inv_freq = NULL;
    if (!parse_config(config, &c, &inv_freq))
        return -1;
    dsv3_error err = {0};
    if (dsv3_kv_dtype_parse(kv_dtype, &c.kv_cache_dtype, &err) != DSV3_OK) {
        Py_DECREF(inv_freq);
        dsv3_py_raise(DSV3_E_VALUE, &err);
        return -1;
    }
    dsv3_model *m = NULL;
    dsv3_status st = dsv3_model_create(&c, (int64_t)cap, mode, &m, &err);
    Py_DECREF(inv_freq); /* copied by create */
    if (st == DSV3_OK)
        m->pack = pack; /* packing at load (csrc/model/pack_weights.c) */
    if (st == DSV3_OK && mtp)
        st = dsv3_model_enable_mtp(m, &err);
    if (st != DSV3_OK) {
        dsv3_model_free(m);
        dsv3_py_raise(st, &err);
        return -1;
    }
    PyObject *copy = PyDict_Copy(tensors);
    if (!copy || !fill_tensors(m, copy)) {
        Py_XDECREF(copy);
        dsv3_model_free(m);
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_model_prepare(m, isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(copy);
        dsv3_model_free(m);
        dsv3_py_raise(st, &err);
        return -1;
    }
    self->model = m;
    self->tensors = copy;
    return 0;
}

static void Model_dealloc(ModelObject *self)
{
    dsv3_model_free(self->model);
    Py_XDECREF(self->tensors);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Claims the model for a GIL-free call; 0 with an exception when unusable. */
static int claim(ModelObject *self)
{
    if (!self->model) {
        PyErr_SetString(PyExc_RuntimeError, "Model is not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Model is in use by another thread");
        return 0;
    }
    self->busy = 1;
    return 1;
}

/* For the batched engine (bind_batch.c): the native model of a Model object, claimed like a forward. */
static PyTypeObject ModelType;

dsv3_model *dsv3_py_model_claim(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &ModelType)) {
        PyErr_Format(PyExc_TypeError, "expected a dsv3._dsv3.Model, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    ModelObject *self = (ModelObject *)obj;
    return claim(self) ? self->model : NULL;
}

void dsv3_py_model_release(PyObject *obj) { ((ModelObject *)obj)->busy = 0; }

static PyObject *new_f32(int nd, npy_intp d0, npy_intp d1)
{
    npy_intp dims[2] = {d0, d1};
    return PyArray_SimpleNew(nd, dims, NPY_FLOAT32);
}

static int parse_which(const char *which_s, dsv3_logits_mode *which)
{
    if (strcmp(which_s, "all") == 0)
        *which = DSV3_LOGITS_ALL;
    else if (strcmp(which_s, "last") == 0)
        *which = DSV3_LOGITS_LAST;
    else if (strcmp(which_s, "none") == 0)
        *which = DSV3_LOGITS_NONE;
    else {
        PyErr_Format(PyExc_ValueError, "logits must be 'all', 'last' or 'none', got '%s'", which_s);
        return 0;
    }
    return 1;
}

/* ids copied while the GIL is held (the caller's array may change once it is released); NULL + exception. */
static int64_t *copy_ids(PyArrayObject *ids)
{
    const npy_intp s = PyArray_DIM(ids, 0);
    int64_t *c = (int64_t *)PyMem_Malloc(s > 0 ? (size_t)s * sizeof(int64_t) : 1);
    if (!c)
        return (int64_t *)PyErr_NoMemory();
    if (s > 0)
        memcpy(c, PyArray_DATA(ids), (size_t)s * sizeof(int64_t));
    return c;
}

static PyObject *Model_forward(ModelObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"input_ids", "isa", "logits", "hidden", "step_attention", NULL};
    PyObject *ids_obj, *isa_obj = NULL;
    const char *which_s = "all";
    int isa, want_hidden = 0, step_attention = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|Ospp", kwlist, &ids_obj, &isa_obj, &which_s, &want_hidden,
                                     &step_attention) ||
        !dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    dsv3_logits_mode which;
    if (!parse_which(which_s, &which))
        return NULL;
    PyArrayObject *ids = dsv3_py_check_array(ids_obj, "input_ids", DSV3_DT_I64, 1);
    if (!ids || !claim(self))
        return NULL;
    const npy_intp s = PyArray_DIM(ids, 0);
    /* The core checks the ids before it reads them again (embedding rows): they are copied first. */
    int64_t *ids_copy = copy_ids(ids);
    /* all: [S, vocab]; last: [1, vocab] (S > 0); none: [0, vocab] */
    const npy_intp rows = which == DSV3_LOGITS_ALL ? s : (which == DSV3_LOGITS_LAST && s > 0 ? 1 : 0);
    PyObject *out = ids_copy ? new_f32(2, rows, (npy_intp)self->model->cfg.vocab_size) : NULL;
    PyObject *hid = out && want_hidden ? new_f32(2, s, (npy_intp)self->model->cfg.hidden_size) : NULL;
    if (!out || (want_hidden && !hid)) {
        Py_XDECREF(out);
        PyMem_Free(ids_copy);
        self->busy = 0;
        return NULL;
    }
    dsv3_error err = {0};
    dsv3_status st;
    float *hp = hid ? (float *)PyArray_DATA((PyArrayObject *)hid) : NULL;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_model_forward_hidden(self->model, ids_copy, s, (float *)PyArray_DATA((PyArrayObject *)out), which, hp,
                                   step_attention, isa, &err);
    Py_END_ALLOW_THREADS
    PyMem_Free(ids_copy);
    self->busy = 0;
    if (st != DSV3_OK) {
        Py_DECREF(out);
        Py_XDECREF(hid);
        return dsv3_py_raise(st, &err);
    }
    return hid ? Py_BuildValue("(NN)", out, hid) : out;
}

static PyObject *Model_mtp_forward(ModelObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"input_ids", "hidden", "logits", "isa", NULL};
    PyObject *ids_obj, *h_obj, *isa_obj = NULL;
    const char *which_s = "last";
    int isa;
    dsv3_logits_mode which;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|sO", kwlist, &ids_obj, &h_obj, &which_s, &isa_obj) ||
        !dsv3_py_isa_arg(isa_obj, &isa) || !parse_which(which_s, &which))
        return NULL;
    if (!self->model)
        return PyErr_Format(PyExc_RuntimeError, "Model is not initialised");
    PyArrayObject *ids = dsv3_py_check_array(ids_obj, "input_ids", DSV3_DT_I64, 1);
    PyArrayObject *h = ids ? dsv3_py_check_array(h_obj, "hidden", DSV3_DT_F32, 2) : NULL;
    if (!h)
        return NULL;
    const npy_intp s = PyArray_DIM(ids, 0), D = (npy_intp)self->model->cfg.hidden_size;
    if (PyArray_DIM(h, 0) != s || PyArray_DIM(h, 1) != D)
        return PyErr_Format(PyExc_ValueError, "hidden: expected shape [%lld, %lld] (one row per input id), got "
                            "[%lld, %lld]", (long long)s, (long long)D, (long long)PyArray_DIM(h, 0),
                            (long long)PyArray_DIM(h, 1));
    if (!claim(self))
        return NULL;
    int64_t *ids_copy = copy_ids(ids);
    const size_t hbytes = (size_t)(s * D) * sizeof(float);
    float *h_copy = ids_copy ? PyMem_Malloc(hbytes ? hbytes : 1) : NULL;
    const npy_intp rows = which == DSV3_LOGITS_ALL ? s : (which == DSV3_LOGITS_LAST && s > 0 ? 1 : 0);
    PyObject *out = h_copy ? new_f32(2, rows, (npy_intp)self->model->cfg.vocab_size) : NULL;
    PyObject *hid = out ? new_f32(2, s, D) : NULL;
    if (!hid) {
        if (ids_copy && !h_copy)
            PyErr_NoMemory();
        Py_XDECREF(out);
        PyMem_Free(ids_copy);
        PyMem_Free(h_copy);
        self->busy = 0;
        return NULL;
    }
    if (hbytes)
        memcpy(h_copy, PyArray_DATA(h), hbytes);
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_mtp_forward(self->model, ids_copy, h_copy, s, (float *)PyArray_DATA((PyArrayObject *)out), which,
                          (float *)PyArray_DATA((PyArrayObject *)hid), isa, &err);
    Py_END_ALLOW_THREADS
    PyMem_Free(ids_copy);
    PyMem_Free(h_copy);
    self->busy = 0;
    if (st != DSV3_OK) {
        Py_DECREF(out);
        Py_DECREF(hid);
        return dsv3_py_raise(st, &err);
    }
    return Py_BuildValue("(NN)", out, hid);
}

/* truncate(length) / mtp_truncate(length): cache rollback. */
static PyObject *truncate_with(ModelObject *self, PyObject *arg, dsv3_status (*fn)(dsv3_model *, int64_t, dsv3_error *))
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (!claim(self))
        return NULL;
    dsv3_error err = {0};
    dsv3_status st = fn(self->model, (int64_t)n, &err);
    self->busy = 0;
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    Py_RETURN_NONE;
}

static PyObject *Model_truncate(ModelObject *self, PyObject *arg) { return truncate_with(self, arg, dsv3_model_truncate); }
static PyObject *Model_mtp_truncate(ModelObject *self, PyObject *arg) { return truncate_with(self, arg, dsv3_mtp_truncate); }

static PyObject *Model_reset(ModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!claim(self))
        return NULL;
    dsv3_model_reset(self->model);
    self->busy = 0;
    Py_RETURN_NONE;
}

static const char *const KINDS[DSV3_MOD_COUNT] = {
    "input_layernorm", "post_attention_layernorm", "attention", "mlp", "shared_experts", "decoder_layer",
    "final_norm",
};

static PyObject *run_router(ModelObject *self, int64_t layer, PyArrayObject *x, int isa)
{
    const npy_intp s = PyArray_DIM(x, 0), k = (npy_intp)self->model->cfg.num_experts_per_tok;
    npy_intp dims[2] = {s, k};
    PyObject *w = PyArray_SimpleNew(2, dims, NPY_FLOAT32), *idx = PyArray_SimpleNew(2, dims, NPY_INT64);
    if (!w || !idx) {
        Py_XDECREF(w);
        Py_XDECREF(idx);
        return NULL;
    }
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_model_route(self->model, layer, (const float *)PyArray_DATA(x), s,
                          (float *)PyArray_DATA((PyArrayObject *)w), (int64_t *)PyArray_DATA((PyArrayObject *)idx),
                          isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(w);
        Py_DECREF(idx);
        return dsv3_py_raise(st, &err);
    }
    return Py_BuildValue("(NN)", w, idx);
}

static PyObject *run_experts(ModelObject *self, int64_t layer, PyArrayObject *x, PyObject *iobj, PyObject *wobj,
                             int isa)
{
    const npy_intp s = PyArray_DIM(x, 0), k = (npy_intp)self->model->cfg.num_experts_per_tok;
    if (!iobj || !wobj)
        return PyErr_Format(PyExc_ValueError, "run_module('experts') needs indices= and weights= ([S, %lld])",
                            (long long)k);
    PyArrayObject *idx = dsv3_py_check_array(iobj, "indices", DSV3_DT_I64, 2);
    PyArrayObject *w = idx ? dsv3_py_check_array(wobj, "weights", DSV3_DT_F32, 2) : NULL;
    if (!w)
        return NULL;
    for (int i = 0; i < 2; i++) {
        PyArrayObject *a = i ? w : idx;
        if (PyArray_DIM(a, 0) != s || PyArray_DIM(a, 1) != k)
            return PyErr_Format(PyExc_ValueError, "%s: expected shape [%lld, %lld], got [%lld, %lld]",
                                i ? "weights" : "indices", (long long)s, (long long)k, (long long)PyArray_DIM(a, 0),
                                (long long)PyArray_DIM(a, 1));
    }
    PyObject *out = new_f32(2, s, (npy_intp)self->model->cfg.hidden_size);
    if (!out)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_model_experts(self->model, layer, (const float *)PyArray_DATA(x), s,
                            (const int64_t *)PyArray_DATA(idx), (const float *)PyArray_DATA(w),
                            (float *)PyArray_DATA((PyArrayObject *)out), isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

static PyObject *run_indexer(ModelObject *self, int64_t layer, PyArrayObject *x, int isa)
{
    const npy_intp s = PyArray_DIM(x, 0), k = (npy_intp)self->model->cfg.index_topk;
    if (k <= 0)
        return PyErr_Format(PyExc_ValueError, "run_module('indexer'): this model has no indexer (deepseek_v32 only)");
    npy_intp ds[2] = {s, k}, dc[2] = {s, s};
    PyObject *sel = PyArray_SimpleNew(2, ds, NPY_INT64), *sc = PyArray_SimpleNew(2, dc, NPY_FLOAT32);
    if (!sel || !sc) {
        Py_XDECREF(sel);
        Py_XDECREF(sc);
        return NULL;
    }
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_model_indexer(self->model, layer, (const float *)PyArray_DATA(x), s,
                            (int64_t *)PyArray_DATA((PyArrayObject *)sel), (float *)PyArray_DATA((PyArrayObject *)sc),
                            isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(sel);
        Py_DECREF(sc);
        return dsv3_py_raise(st, &err);
    }
    return Py_BuildValue("(NN)", sel, sc);
}

static PyObject *run_kind(ModelObject *self, int kind, int64_t layer, PyArrayObject *x, long long start_pos,
                          int use_cache, int isa)
{
    const npy_intp s = PyArray_DIM(x, 0);
    PyObject *out = new_f32(2, s, (npy_intp)self->model->cfg.hidden_size);
    if (!out)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_model_run_module(self->model, (dsv3_module_kind)kind, layer, (const float *)PyArray_DATA(x), s,
                               (int64_t)start_pos, use_cache, (float *)PyArray_DATA((PyArrayObject *)out), isa, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

static PyObject *Model_run_module(ModelObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"kind", "layer", "x", "start_pos", "use_cache", "indices", "weights", "isa", NULL};
    const char *kind;
    long long layer, start_pos = 0;
    int use_cache = 0, isa;
    PyObject *x_obj, *iobj = NULL, *wobj = NULL, *isa_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sLO|LpOOO", kwlist, &kind, &layer, &x_obj, &start_pos, &use_cache,
                                     &iobj, &wobj, &isa_obj) ||
        !dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    if (!self->model)
        return PyErr_Format(PyExc_RuntimeError, "Model is not initialised");
    PyArrayObject *x = dsv3_py_check_array(x_obj, "x", DSV3_DT_F32, 2);
    if (!x)
        return NULL;
    if (PyArray_DIM(x, 1) != self->model->cfg.hidden_size)
        return PyErr_Format(PyExc_ValueError, "x: expected shape [S, %lld], got [%lld, %lld]",
                            (long long)self->model->cfg.hidden_size, (long long)PyArray_DIM(x, 0),
                            (long long)PyArray_DIM(x, 1));
    int k = -1;
    for (int i = 0; i < DSV3_MOD_COUNT; i++)
        if (strcmp(kind, KINDS[i]) == 0)
            k = i;
    const int is_router = strcmp(kind, "router") == 0, is_experts = strcmp(kind, "experts") == 0;
    const int is_indexer = strcmp(kind, "indexer") == 0;
    if (k < 0 && !is_router && !is_experts && !is_indexer)
        return PyErr_Format(PyExc_ValueError,
                            "unknown module kind '%s' (input_layernorm, post_attention_layernorm, attention, mlp, "
                            "router, experts, shared_experts, decoder_layer, final_norm, indexer)", kind);
    if (!claim(self))
        return NULL;
    PyObject *r = is_indexer ? run_indexer(self, (int64_t)layer, x, isa)
                  : is_router ? run_router(self, (int64_t)layer, x, isa)
                  : is_experts ? run_experts(self, (int64_t)layer, x, iobj, wobj, isa)
                               : run_kind(self, k, (int64_t)layer, x, start_pos, use_cache, isa);
    self->busy = 0;
    return r;
}

static PyObject *Model_rope_cos_sin(ModelObject *self, PyObject *arg)
{
    if (!self->model)
        return PyErr_Format(PyExc_RuntimeError, "Model is not initialised");
    PyArrayObject *pos = dsv3_py_check_array(arg, "positions", DSV3_DT_I64, 1);
    if (!pos)
        return NULL;
    const npy_intp n = PyArray_DIM(pos, 0), dim = (npy_intp)self->model->cfg.qk_rope_head_dim;
    PyObject *c = new_f32(2, n, dim), *s = new_f32(2, n, dim);
    if (!c || !s) {
        Py_XDECREF(c);
        Py_XDECREF(s);
        return NULL;
    }
    dsv3_error err = {0};
    dsv3_status st = dsv3_model_rope(self->model, (const int64_t *)PyArray_DATA(pos), n,
                                     (float *)PyArray_DATA((PyArrayObject *)c),
                                     (float *)PyArray_DATA((PyArrayObject *)s), &err);
    if (st != DSV3_OK) {
        Py_DECREF(c);
        Py_DECREF(s);
        return dsv3_py_raise(st, &err);
    }
    return Py_BuildValue("(NN)", c, s);
}

static PyObject *Model_cache_len(ModelObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(self->model ? (long long)self->model->cache_len : 0);
}

static PyObject *Model_kv_cache_dtype(ModelObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(dsv3_kv_formats[self->model ? self->model->mla.kv_dtype : DSV3_KV_F32].name);
}

static PyObject *Model_cache_bytes_per_token(ModelObject *self, void *closure)
{
    (void)closure;
    if (!self->model)
        return PyLong_FromLong(0);
    /* latent + V3.2 index keys + the MTP layer's latent (loaded with mtp=True) */
    return PyLong_FromLongLong((long long)dsv3_batch_token_bytes(self->model, 1));
}

static PyObject *Model_capacity(ModelObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong(self->model ? (long long)self->model->capacity : 0);
}

static PyObject *Model_attention(ModelObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(self->model && self->model->attn_mode == DSV3_ATTN_NAIVE ? "naive" : "absorbed");
}

/* Internal (tests): linear work items each thread ran in the last decode-path MoE block, one per thread. */
static PyObject *Model_moe_work(ModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!claim(self))
        return NULL;
    const dsv3_moe_scratch *sc = &self->model->ws.moe;
    PyObject *out = PyList_New(sc->work_team);
    for (int i = 0; out && i < sc->work_team; i++) {
        PyObject *v = PyLong_FromLongLong((long long)sc->work[i]);
        if (!v) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, v);
    }
    self->busy = 0;
    return out;
}

static PyMethodDef Model_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Model_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(input_ids int64 [S], isa=None, logits='all', hidden=False, step_attention=False) -> logits float32 "
     "[S, vocab] ('all'), [1, vocab] ('last': the last position only) or [0, vocab] ('none'), or (logits, hidden "
     "[S, hidden_size]: final-norm hidden states) with hidden=True; step_attention: each token's attention as a "
     "decode step (verification, dsv3_mtp.h); appends to the cache."},
    {"_moe_work", (PyCFunction)Model_moe_work, METH_NOARGS,
     "internal: linear work items per thread in the last decode-path MoE block (tests)"},
    {"reset", (PyCFunction)Model_reset, METH_NOARGS, "Empty the KV cache (and the MTP layer's)."},
    {"truncate", (PyCFunction)Model_truncate, METH_O, "truncate(length): keep the first length cached tokens."},
    {"mtp_truncate", (PyCFunction)Model_mtp_truncate, METH_O,
     "mtp_truncate(length): keep the first length positions of the MTP layer's cache."},
    {"mtp_forward", (PyCFunction)(void (*)(void))Model_mtp_forward, METH_VARARGS | METH_KEYWORDS,
     "mtp_forward(input_ids int64 [S], hidden float32 [S, hidden], logits='last', isa=None) -> (logits, hidden_out "
     "[S, hidden]): the MTP layer over S positions after its cached ones (dsv3_mtp.h)"},
    {"run_module", (PyCFunction)(void (*)(void))Model_run_module, METH_VARARGS | METH_KEYWORDS,
     "run_module(kind, layer, x float32 [S, hidden], start_pos=0, use_cache=False, indices=None, weights=None, "
     "isa=None)"},
    {"rope_cos_sin", (PyCFunction)Model_rope_cos_sin, METH_O,
     "rope_cos_sin(positions int64 [n]) -> (cos, sin) float32 [n, qk_rope_head_dim]"},
    {NULL, NULL, 0, NULL},
};

static PyObject *Model_mtp_cache_len(ModelObject *self, void *closure)
{
    (void)closure;
    if (!self->model || !self->model->mtp)
        Py_RETURN_NONE;
    return PyLong_FromLongLong((long long)self->model->mtp->cache_len);
}

static PyObject *Model_packed_at_load_bytes(ModelObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(self->model ? self->model->packed_bytes : 0);
}

static PyGetSetDef Model_getset[] = {
    {"packed_at_load_bytes", (getter)Model_packed_at_load_bytes, NULL,
     "bytes of the owned buffer holding the weights packed at load (0: none; stored-packed weights are read in "
     "place)", NULL},
    {"mtp_cache_len", (getter)Model_mtp_cache_len, NULL, "positions in the MTP layer's cache (None: no MTP layer)",
     NULL},
    {"cache_len", (getter)Model_cache_len, NULL, "tokens in the KV cache", NULL},
    {"capacity", (getter)Model_capacity, NULL, "maximum tokens in the KV cache (max_seq_len)", NULL},
    {"kv_cache_dtype", (getter)Model_kv_cache_dtype, NULL, "storage of the latent cache: 'f32', 'bf16' or 'fp8'", NULL},
    {"cache_bytes_per_token", (getter)Model_cache_bytes_per_token, NULL,
     "KV cache bytes per token over all layers: the latent row (the dtype's layout) plus, for V3.2, the "
     "index-key row, x layers", NULL},
    {"attention", (getter)Model_attention, NULL, "'absorbed' or 'naive'", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dsv3._dsv3.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Native DeepSeek model: Model(config_dict, tensors_dict, max_seq_len=4096, attention='absorbed')",
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
    .tp_init = (initproc)Model_init,
    .tp_new = PyType_GenericNew,
};

/* sample(logits float32 [V], temperature, top_k, top_p, state) -> (token, new_state) */
static PyObject *py_sample(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *lo;
    double temperature, top_p;
    long long top_k;
    unsigned long long state;
    if (!PyArg_ParseTuple(args, "OdLdK", &lo, &temperature, &top_k, &top_p, &state))
        return NULL;
    PyArrayObject *a = dsv3_py_check_array(lo, "logits", DSV3_DT_F32, 1);
    if (!a)
        return NULL;
    uint64_t rng = state;
    int64_t tok = 0;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_sample((const float *)PyArray_DATA(a), PyArray_DIM(a, 0), (float)temperature, top_k, (float)top_p,
                     &rng, &tok, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    return Py_BuildValue("(LK)", (long long)tok, (unsigned long long)rng);
}

/* ---- the tensor table (csrc/model/tensor_table.c) ---- */
/* A tuple of n items made by item(ctx, i); NULL with the exception of the first item that failed. */
static PyObject *build_tuple(Py_ssize_t n, PyObject *(*item)(const void *ctx, Py_ssize_t i), const void *ctx)
{
    PyObject *t = PyTuple_New(n);
    for (Py_ssize_t i = 0; t && i < n; i++) {
        PyObject *x = item(ctx, i);
        if (!x) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

static PyObject *name_item(const void *names, Py_ssize_t i)
{
    return PyUnicode_FromString(((const char *const *)names)[i]);
}

static PyObject *row_item(const void *ctx, Py_ssize_t i)
{
    (void)ctx;
    const dsv3_tensor_row *r = &dsv3_tensor_rows[i];
    return Py_BuildValue("{s:s,s:s,s:s,s:(ss),s:s,s:s}", "name", r->name, "scope", dsv3_tensor_scope_name(r->scope),
                         "kind", dsv3_tensor_kind_name(r->kind), "shape", dsv3_tensor_dim_name(r->rows),
                         dsv3_tensor_dim_name(r->cols), "present", dsv3_tensor_when_name(r->present), "optional",
                         dsv3_tensor_when_name(r->optional));
}

static PyObject *slot_item(const void *slots, Py_ssize_t i)
{
    const dsv3_tensor_slot *t = &((const dsv3_tensor_slot *)slots)[i];
    PyObject *opt = t->optional ? Py_True : Py_False;
    const char *kind = dsv3_tensor_kind_name(t->row->kind);
    return t->is_vector ? Py_BuildValue("(s(L)sO)", t->name, (long long)t->k, kind, opt)
                        : Py_BuildValue("(s(LL)sO)", t->name, (long long)t->n, (long long)t->k, kind, opt);
}

/* The sizes and flags of a native config dict, for the table (rope_inv_freq checked, then dropped). */
static int parse_config_sizes(PyObject *config, dsv3_model_config *c)
{
    memset(c, 0, sizeof *c);
    PyArrayObject *inv_freq = NULL;
    if (!parse_config(config, c, &inv_freq))
        return 0;
    Py_DECREF(inv_freq);
    c->rope_inv_freq = NULL;
    return 1;
}

/* tensor_table() -> tuple of dicts, one per row: name (pattern with {layer} / {expert}), scope, kind,
 * shape (dim names, 'one' for the rows of a 1-D parameter), present, optional (condition names). */
static PyObject *py_tensor_table(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return build_tuple(dsv3_tensor_row_count, row_item, NULL);
}

/* tensor_slots(config, part) -> tuple of (name, shape tuple, kind, optional) for one part of a model with
 * that config (DeepseekConfig.to_native()): 0 before the layers, 1 + l layer l, num_hidden_layers + 1
 * after. The config is parsed, not checked (shapes of a config the model would refuse are still listed). */
static PyObject *py_tensor_slots(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *config;
    long long part;
    if (!PyArg_ParseTuple(args, "OL", &config, &part))
        return NULL;
    dsv3_model_config c;
    if (!parse_config_sizes(config, &c))
        return NULL;
    const int64_t count = dsv3_tensor_slots(&c, (int64_t)part, NULL);
    if (count < 0)
        return PyErr_Format(PyExc_ValueError, "part must be in 0..%lld (num_hidden_layers + 2: the MTP layer), got %lld",
                            (long long)c.num_hidden_layers + 2, part);
    dsv3_tensor_slot *slots = PyMem_Malloc((size_t)(count ? count : 1) * sizeof *slots);
    if (!slots)
        return PyErr_NoMemory();
    dsv3_tensor_slots(&c, (int64_t)part, slots);
    PyObject *out = build_tuple((Py_ssize_t)count, slot_item, slots);
    PyMem_Free(slots);
    return out;
}

/* tensor_totals(config) -> (tensors, values) of a model with that config, counted without listing them. */
static PyObject *py_tensor_totals(PyObject *self, PyObject *config)
{
    (void)self;
    dsv3_model_config c;
    if (!parse_config_sizes(config, &c))
        return NULL;
    int64_t count, values;
    dsv3_tensor_totals(&c, &count, &values);
    return Py_BuildValue("(LL)", (long long)count, (long long)values);
}

/* config_keys() -> tuple of every key the native config dict must have. */
static PyObject *key_item(const void *ctx, Py_ssize_t i)
{
    (void)ctx;
    return PyUnicode_FromString((size_t)i < N_CONFIG_KEYS ? CONFIG_KEYS[i].name : OTHER_KEYS[(size_t)i - N_CONFIG_KEYS]);
}

static PyObject *py_config_keys(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return build_tuple((Py_ssize_t)(N_CONFIG_KEYS + sizeof OTHER_KEYS / sizeof OTHER_KEYS[0]), key_item, NULL);
}

/* config_choices() -> {"scoring_func": (...), "topk_method": (...)}: the config spellings the C enums
 * stand for, in enum order (dsv3.config validates against these). */
static PyObject *py_config_choices(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *sf = build_tuple(DSV3_SCORE_COUNT, name_item, dsv3_score_func_names);
    PyObject *tm = build_tuple(DSV3_TOPK_COUNT, name_item, dsv3_topk_method_names);
    PyObject *out = sf && tm ? Py_BuildValue("{s:O,s:O}", "scoring_func", sf, "topk_method", tm) : NULL;
    Py_XDECREF(sf);
    Py_XDECREF(tm);
    return out;
}

/* params float64 [5] (temperature, top_k, top_p, min_p, repetition_penalty) -> dsv3_sampling; 0 + exception. */
static int sampling_arg(PyObject *o, dsv3_sampling *sp)
{
    if (!PyArray_Check(o) || PyArray_TYPE((PyArrayObject *)o) != NPY_FLOAT64 || PyArray_NDIM((PyArrayObject *)o) != 1 ||
        PyArray_DIM((PyArrayObject *)o, 0) != 5 || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)o)) {
        PyErr_SetString(PyExc_TypeError, "params must be a C-contiguous float64 array [5] (temperature, top_k, top_p, "
                        "min_p, repetition_penalty)");
        return 0;
    }
    const double *d = (const double *)PyArray_DATA((PyArrayObject *)o);
    *sp = (dsv3_sampling){(float)d[0], d[1] > 9e18 || d[1] != d[1] ? 0 : (int64_t)d[1], (float)d[2], (float)d[3],
                          (float)d[4]};
    return 1;
}

/* sample_probs(logits float32 [V], params float64 [5], seen int64 [n]) -> float64 [V] */
static PyObject *py_sample_probs(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *lo_o, *par_o, *seen_o;
    dsv3_sampling sp;
    if (!PyArg_ParseTuple(args, "OOO", &lo_o, &par_o, &seen_o) || !sampling_arg(par_o, &sp))
        return NULL;
    PyArrayObject *lo = dsv3_py_check_array(lo_o, "logits", DSV3_DT_F32, 1);
    PyArrayObject *seen = lo ? dsv3_py_check_array(seen_o, "seen", DSV3_DT_I64, 1) : NULL;
    if (!seen)
        return NULL;
    npy_intp V = PyArray_DIM(lo, 0);
    PyObject *out = PyArray_SimpleNew(1, &V, NPY_FLOAT64);
    if (!out)
        return NULL;
    dsv3_error err = {0};
    dsv3_status st = dsv3_sample_probs((const float *)PyArray_DATA(lo), V, &sp, (const int64_t *)PyArray_DATA(seen),
                                       PyArray_DIM(seen, 0), (double *)PyArray_DATA((PyArrayObject *)out), &err);
    if (st != DSV3_OK) {
        Py_DECREF(out);
        return dsv3_py_raise(st, &err);
    }
    return out;
}

/* spec_accept(p float64 [V], q float64 [V], draft, rng int64 [1] (advanced in place)) -> (accepted, token) */
static PyObject *py_spec_accept(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *p_o, *q_o, *rng_o;
    long long draft;
    if (!PyArg_ParseTuple(args, "OOLO", &p_o, &q_o, &draft, &rng_o))
        return NULL;
    PyArrayObject *a[2] = {NULL, NULL};
    PyObject *objs[2] = {p_o, q_o};
    for (int i = 0; i < 2; i++)
        if (!PyArray_Check(objs[i]) || PyArray_TYPE((PyArrayObject *)objs[i]) != NPY_FLOAT64 ||
            PyArray_NDIM((PyArrayObject *)objs[i]) != 1 || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)objs[i]))
            return PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous float64 array [vocab]", i ? "q" : "p");
        else
            a[i] = (PyArrayObject *)objs[i];
    if (PyArray_DIM(a[0], 0) != PyArray_DIM(a[1], 0))
        return PyErr_Format(PyExc_ValueError, "p and q must have the same length, got %ld and %ld",
                            (long)PyArray_DIM(a[0], 0), (long)PyArray_DIM(a[1], 0));
    PyArrayObject *rng = dsv3_py_check_array(rng_o, "rng", DSV3_DT_I64, 1);
    if (!rng)
        return NULL;
    if (PyArray_DIM(rng, 0) != 1 || !PyArray_ISWRITEABLE(rng))
        return PyErr_Format(PyExc_ValueError, "rng must be a writeable int64 array [1]");
    int accepted = 0;
    int64_t tok = 0;
    dsv3_error err = {0};
    dsv3_status st = dsv3_spec_accept((const double *)PyArray_DATA(a[0]), (const double *)PyArray_DATA(a[1]),
                                      PyArray_DIM(a[0], 0), (int64_t)draft, (uint64_t *)PyArray_DATA(rng), &accepted,
                                      &tok, &err);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    return Py_BuildValue("(OL)", accepted ? Py_True : Py_False, (long long)tok);
}

/* token_logprobs(logits float32 [V], token, n_top) -> (logprob, top_ids int64 [n_top], top_logprobs float32) */
static PyObject *py_token_logprobs(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *lo_o;
    long long token, n_top;
    if (!PyArg_ParseTuple(args, "OLL", &lo_o, &token, &n_top))
        return NULL;
    PyArrayObject *lo = dsv3_py_check_array(lo_o, "logits", DSV3_DT_F32, 1);
    if (!lo)
        return NULL;
    if (n_top < 0 || n_top > PyArray_DIM(lo, 0))
        return PyErr_Format(PyExc_ValueError, "n_top must be in [0, %ld], got %lld", (long)PyArray_DIM(lo, 0), n_top);
    npy_intp k = (npy_intp)n_top;
    PyObject *ids = PyArray_SimpleNew(1, &k, NPY_INT64), *lps = PyArray_SimpleNew(1, &k, NPY_FLOAT32);
    if (!ids || !lps) {
        Py_XDECREF(ids);
        Py_XDECREF(lps);
        return NULL;
    }
    float lp = 0.f;
    dsv3_error err = {0};
    dsv3_status st = dsv3_token_logprobs((const float *)PyArray_DATA(lo), PyArray_DIM(lo, 0), (int64_t)token,
                                         (int64_t)n_top, &lp, (int64_t *)PyArray_DATA((PyArrayObject *)ids),
                                         (float *)PyArray_DATA((PyArrayObject *)lps), &err);
    if (st != DSV3_OK) {
        Py_DECREF(ids);
        Py_DECREF(lps);
        return dsv3_py_raise(st, &err);
    }
    return Py_BuildValue("(dNN)", (double)lp, ids, lps);
}

PyMethodDef dsv3_model_methods[] = {
    {"tensor_table", py_tensor_table, METH_NOARGS,
     "tensor_table() -> rows of the C tensor table (name pattern, scope, kind, shape dims, present, optional)"},
    {"tensor_slots", py_tensor_slots, METH_VARARGS,
     "tensor_slots(config, part) -> [(name, shape, kind, optional)] of part 0 (before the layers), 1 + l "
     "(layer l), num_hidden_layers + 1 (after) or num_hidden_layers + 2 (the MTP layer)"},
    {"tensor_totals", py_tensor_totals, METH_O,
     "tensor_totals(config) -> (number of tensors, number of values) of a model with that config (saturating)"},
    {"config_keys", py_config_keys, METH_NOARGS,
     "config_keys() -> every key of the native config dict (DeepseekConfig.to_native())"},
    {"config_choices", py_config_choices, METH_NOARGS,
     "config_choices() -> {'scoring_func': names, 'topk_method': names} in the C enums' order"},
    {"sample_probs", py_sample_probs, METH_VARARGS,
     "sample_probs(logits float32 [V], params float64 [5], seen int64 [n]) -> float64 [V]: the sampler's distribution"},
    {"spec_accept", py_spec_accept, METH_VARARGS,
     "spec_accept(p float64 [V], q float64 [V], draft, rng int64 [1]) -> (accepted, token): speculative sampling's "
     "rule (the rng is advanced in place)"},
    {"token_logprobs", py_token_logprobs, METH_VARARGS,
     "token_logprobs(logits float32 [V], token, n_top) -> (logprob, top_ids, top_logprobs) of the raw logits"},
    {"sample", py_sample, METH_VARARGS,
     "sample(logits float32 [V], temperature, top_k, top_p, rng_state) -> (token, rng_state)"},
    {"mla_dots", (PyCFunction)(void (*)(void))dsv3_py_mla_dots, METH_VARARGS | METH_KEYWORDS,
     "mla_dots(a float32 [na, n], b float32 [nb, n], isa=None) -> a @ b.T in the attention kernels' order"},
    {"mla_wsum", (PyCFunction)(void (*)(void))dsv3_py_mla_wsum, METH_VARARGS | METH_KEYWORDS,
     "mla_wsum(p float32 [np, T], x float32 [T, n], isa=None) -> p @ x in the attention kernels' order"},
    {"mla_expsum", (PyCFunction)(void (*)(void))dsv3_py_mla_expsum, METH_VARARGS | METH_KEYWORDS,
     "mla_expsum(x float32 [n], m, isa=None) -> (exp(x - m), sum) in the attention kernels' order"},
    {"kv_cache_formats", dsv3_py_kv_cache_formats, METH_NOARGS,
     "kv_cache_formats() -> {dtype: {latent_bytes, scale_block, rope_bytes}}: the latent cache row layouts"},
    {"kv_cache_pack", (PyCFunction)(void (*)(void))dsv3_py_kv_cache_pack, METH_VARARGS | METH_KEYWORDS,
     "kv_cache_pack(rows float32 [n, kv_lora+rope], kv_lora, dtype) -> uint8 [n, row_bytes] cache rows"},
    {"kv_cache_unpack", (PyCFunction)(void (*)(void))dsv3_py_kv_cache_unpack, METH_VARARGS | METH_KEYWORDS,
     "kv_cache_unpack(packed uint8 [n, row_bytes], kv_lora, rope, dtype) -> float32 [n, kv_lora+rope]"},
    {"mla_dots_kv", (PyCFunction)(void (*)(void))dsv3_py_mla_dots_kv, METH_VARARGS | METH_KEYWORDS,
     "mla_dots_kv(a float32 [na, kv_lora+rope], packed uint8 [nb, row_bytes], kv_lora, dtype, isa=None) -> [na, nb]"},
    {"mla_wsum_kv", (PyCFunction)(void (*)(void))dsv3_py_mla_wsum_kv, METH_VARARGS | METH_KEYWORDS,
     "mla_wsum_kv(p float32 [np, T], packed uint8 [T, row_bytes], kv_lora, rope, dtype, isa=None) -> [np, kv_lora]"},
    {NULL, NULL, 0, NULL},
};

int dsv3_model_init_types(PyObject *module)
{
    if (PyType_Ready(&ModelType) < 0)
        return -1;
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(module, "Model", (PyObject *)&ModelType) < 0) {
        Py_DECREF(&ModelType);
        return -1;
    }
    return 0;
}

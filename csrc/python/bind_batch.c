/* _dsv3 bindings of the batched engine (dsv3_batch) and the row sampler.
 *
 * Batch(model: dsv3._dsv3.Model, slots: int, capacity: int)
 *   forward(ids int64 [T], seqs int64 [n, 3] (slot, new tokens, logits mode 0 none / 1 last / 2 all /
 *           3 verify: all, each token's attention as its decode step / 4, 5: none, last with the hidden
 *           states of every new token, dsv3_batch.h), hidden=False, isa=None)
 *           -> logits float32 [R, vocab] (, hidden float32 [RH, hidden_size]: R rows, or n for modes 4 / 5)
 *   release(slot), truncate(slot, length), length(slot), copy_prefix(src, dst, n); slots, capacity.
 * batch_token_bytes(model, mtp=False) -> int: a slot's cache bytes per token (dsv3_batch_token_bytes).
 * sample_rows(logits float32 [R, V], params float64 [R, 5] (temperature, top_k, top_p, min_p,
 *             repetition_penalty), seen int64 [*], seen_off int64 [R + 1], rngs int64 [R] (uint64
 *             states, bit-cast), n_top[, want_logprobs=1]) -> (tokens int64 [R], logprobs float32 [R]
 *             (NaN when not wanted: no log-softmax), top_ids int64 [R, n_top], top_logprobs float32
 *             [R, n_top]); rngs advanced in place.
 */
#include <math.h>
#include "bind.h"
#include "dsv3_batch.h"

typedef struct {
    PyObject_HEAD
    dsv3_batch *batch;
    PyObject *model; /* the dsv3._dsv3.Model whose weights and workspace the batch uses */
} BatchObject;

static int Batch_init(BatchObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"model", "slots", "capacity", NULL};
    PyObject *model;
    long long slots, cap;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL", kwlist, &model, &slots, &cap))
        return -1;
    if (self->batch) {
        PyErr_SetString(PyExc_RuntimeError, "Batch is already initialised");
        return -1;
    }
    dsv3_model *m = dsv3_py_model_claim(model);
    if (!m)
        return -1;
    dsv3_error err = {0};
    dsv3_batch *b = NULL;
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_batch_create(m, (int64_t)slots, (int64_t)cap, &b, &err);
    Py_END_ALLOW_THREADS
    dsv3_py_model_release(model);
    if (st != DSV3_OK) {
        dsv3_py_raise(st, &err);
        return -1;
    }
    Py_INCREF(model);
    self->model = model;
    self->batch = b;
    return 0;
}

static void Batch_dealloc(BatchObject *self)
{
    dsv3_batch_free(self->batch);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(BatchObject *self)
{
    if (!self->batch)
        PyErr_SetString(PyExc_RuntimeError, "Batch is not initialised");
    return self->batch != NULL;
}

static PyObject *Batch_forward(BatchObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ids", "seqs", "hidden", "isa", NULL};
    PyObject *ids_obj, *seqs_obj, *isa_obj = NULL;
    int want_hidden = 0, isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|pO", kwlist, &ids_obj, &seqs_obj, &want_hidden, &isa_obj) ||
        !dsv3_py_isa_arg(isa_obj, &isa) || !ready(self))
        return NULL;
    PyArrayObject *ids = dsv3_py_check_array(ids_obj, "ids", DSV3_DT_I64, 1);
    PyArrayObject *seqs = ids ? dsv3_py_check_array(seqs_obj, "seqs", DSV3_DT_I64, 2) : NULL;
    if (!seqs)
        return NULL;
    if (PyArray_DIM(seqs, 1) != 3)
        return PyErr_Format(PyExc_ValueError, "seqs must be int64 [n, 3] (slot, tokens, logits mode), got [%ld, %ld]",
                            (long)PyArray_DIM(seqs, 0), (long)PyArray_DIM(seqs, 1));
    const dsv3_batch_seq *sq = (const dsv3_batch_seq *)PyArray_DATA(seqs);
    const npy_intp n = PyArray_DIM(seqs, 0);
    int64_t total = 0;
    for (npy_intp i = 0; i < n; i++) {
        if (sq[i].n < 0 || sq[i].n > PyArray_DIM(ids, 0))
            return PyErr_Format(PyExc_ValueError, "seqs[%ld]: %lld tokens (ids holds %ld)", (long)i,
                                (long long)sq[i].n, (long)PyArray_DIM(ids, 0));
        total += sq[i].n;
    }
    if (total != PyArray_DIM(ids, 0))
        return PyErr_Format(PyExc_ValueError, "seqs ask for %lld tokens but ids holds %ld", (long long)total,
                            (long)PyArray_DIM(ids, 0));
    for (npy_intp i = 0; i < n; i++)
        if (sq[i].logits < 0 || sq[i].logits > DSV3_BATCH_HIDDEN_ALL + DSV3_LOGITS_LAST)
            return PyErr_Format(PyExc_ValueError, "seqs[%ld]: logits mode %lld is not 0 (none), 1 (last), 2 (all), "
                                "3 (verify), 4 (none, hidden all) or 5 (last, hidden all)",
                                (long)i, (long long)sq[i].logits);
    dsv3_model *m = dsv3_py_model_claim(self->model);
    if (!m)
        return NULL;
    const npy_intp r = (npy_intp)dsv3_batch_out_rows(sq, n);
    npy_intp dl[2] = {r, (npy_intp)m->cfg.vocab_size};
    npy_intp dh[2] = {(npy_intp)dsv3_batch_hidden_rows(sq, n), (npy_intp)m->cfg.hidden_size};
    PyObject *lo = PyArray_SimpleNew(2, dl, NPY_FLOAT32);
    PyObject *hi = lo && want_hidden ? PyArray_SimpleNew(2, dh, NPY_FLOAT32) : NULL;
    if (!lo || (want_hidden && !hi)) {
        dsv3_py_model_release(self->model);
        Py_XDECREF(lo);
        return NULL;
    }
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_batch_forward(self->batch, (const int64_t *)PyArray_DATA(ids), sq, (int64_t)n,
                            r ? (float *)PyArray_DATA((PyArrayObject *)lo) : NULL,
                            hi ? (float *)PyArray_DATA((PyArrayObject *)hi) : NULL, isa, &err);
    Py_END_ALLOW_THREADS
    dsv3_py_model_release(self->model);
    if (st != DSV3_OK) {
        Py_DECREF(lo);
        Py_XDECREF(hi);
        return dsv3_py_raise(st, &err);
    }
    if (!want_hidden)
        return lo;
    PyObject *t = PyTuple_Pack(2, lo, hi);
    Py_DECREF(lo);
    Py_DECREF(hi);
    return t;
}

static PyObject *Batch_release(BatchObject *self, PyObject *arg)
{
    long long slot = PyLong_AsLongLong(arg);
    if ((slot == -1 && PyErr_Occurred()) || !ready(self))
        return NULL;
    if (!dsv3_py_model_claim(self->model)) /* never under a forward running on another thread */
        return NULL;
    dsv3_error err = {0};
    dsv3_status st = dsv3_batch_release(self->batch, (int64_t)slot, &err);
    dsv3_py_model_release(self->model);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    Py_RETURN_NONE;
}

static PyObject *Batch_truncate(BatchObject *self, PyObject *args)
{
    long long slot, length;
    if (!PyArg_ParseTuple(args, "LL", &slot, &length) || !ready(self))
        return NULL;
    if (!dsv3_py_model_claim(self->model))
        return NULL;
    dsv3_error err = {0};
    dsv3_status st = dsv3_batch_truncate(self->batch, (int64_t)slot, (int64_t)length, &err);
    dsv3_py_model_release(self->model);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    Py_RETURN_NONE;
}

static PyObject *Batch_length(BatchObject *self, PyObject *arg)
{
    long long slot = PyLong_AsLongLong(arg);
    if ((slot == -1 && PyErr_Occurred()) || !ready(self))
        return NULL;
    int64_t n = dsv3_batch_length(self->batch, (int64_t)slot);
    if (n < 0)
        return PyErr_Format(PyExc_ValueError, "slot %lld out of range [0, %lld)", slot,
                            (long long)dsv3_batch_slots(self->batch));
    return PyLong_FromLongLong((long long)n);
}

static PyObject *Batch_slots(BatchObject *self, void *c)
{
    (void)c;
    return ready(self) ? PyLong_FromLongLong((long long)dsv3_batch_slots(self->batch)) : NULL;
}

static PyObject *Batch_capacity(BatchObject *self, void *c)
{
    (void)c;
    return ready(self) ? PyLong_FromLongLong((long long)dsv3_batch_capacity(self->batch)) : NULL;
}

static PyObject *Batch_copy_prefix(BatchObject *self, PyObject *args)
{
    long long src, dst, n;
    if (!PyArg_ParseTuple(args, "LLL:copy_prefix", &src, &dst, &n) || !ready(self))
        return NULL;
    if (!dsv3_py_model_claim(self->model)) /* no forward of this model (and batch) meanwhile */
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_batch_copy_prefix(self->batch, (int64_t)src, (int64_t)dst, (int64_t)n, &err);
    Py_END_ALLOW_THREADS
    dsv3_py_model_release(self->model);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    Py_RETURN_NONE;
}

static PyMethodDef Batch_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Batch_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(ids int64 [T], seqs int64 [n, 3], hidden=False, isa=None) -> logits [R, vocab] (, hidden [RH, "
     "hidden_size]); modes 0 none / 1 last / 2 all / 3 verify / 4, 5 none, last with hidden of every token"},
    {"release", (PyCFunction)Batch_release, METH_O, "release(slot): forget the slot's tokens"},
    {"truncate", (PyCFunction)Batch_truncate, METH_VARARGS,
     "truncate(slot, length): keep the slot's first length tokens (cache rollback)"},
    {"length", (PyCFunction)Batch_length, METH_O, "length(slot) -> tokens cached in the slot"},
    {"copy_prefix", (PyCFunction)Batch_copy_prefix, METH_VARARGS,
     "copy_prefix(src, dst, n): slot dst holds the first n cached tokens of slot src (src == dst: truncate)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Batch_getset[] = {
    {"slots", (getter)Batch_slots, NULL, "number of sequence slots", NULL},
    {"capacity", (getter)Batch_capacity, NULL, "tokens per slot", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dsv3._dsv3.Batch",
    .tp_basicsize = sizeof(BatchObject),
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pool of sequence slots over a native Model: Batch(model, slots, capacity)",
    .tp_methods = Batch_methods,
    .tp_getset = Batch_getset,
    .tp_init = (initproc)Batch_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *py_sample_rows(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *lo_o, *par_o, *seen_o, *off_o, *rng_o;
    long long n_top;
    int want_lp = 1; /* 0: the chosen tokens' logprobs are not computed (NaN), saving a log-softmax per row */
    if (!PyArg_ParseTuple(args, "OOOOOL|p", &lo_o, &par_o, &seen_o, &off_o, &rng_o, &n_top, &want_lp))
        return NULL;
    PyArrayObject *lo = dsv3_py_check_array(lo_o, "logits", DSV3_DT_F32, 2);
    PyArrayObject *par;
    if (!lo)
        return NULL;
    if (!PyArray_Check(par_o) || PyArray_TYPE((PyArrayObject *)par_o) != NPY_FLOAT64 ||
        PyArray_NDIM((PyArrayObject *)par_o) != 2 || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)par_o))
        return PyErr_Format(PyExc_TypeError, "params must be a C-contiguous float64 array [rows, 5]");
    par = (PyArrayObject *)par_o;
    PyArrayObject *seen = dsv3_py_check_array(seen_o, "seen", DSV3_DT_I64, 1);
    PyArrayObject *off = seen ? dsv3_py_check_array(off_o, "seen_off", DSV3_DT_I64, 1) : NULL;
    PyArrayObject *rng = off ? dsv3_py_check_array(rng_o, "rngs", DSV3_DT_I64, 1) : NULL;
    if (!rng)
        return NULL;
    const npy_intp R = PyArray_DIM(lo, 0), V = PyArray_DIM(lo, 1);
    if (PyArray_DIM(par, 0) != R || PyArray_DIM(par, 1) != 5 || PyArray_DIM(off, 0) != R + 1 ||
        PyArray_DIM(rng, 0) != R)
        return PyErr_Format(PyExc_ValueError, "sample_rows: %ld rows need params [%ld, 5], seen_off [%ld], rngs [%ld]",
                            (long)R, (long)R, (long)R + 1, (long)R);
    if (n_top < 0 || n_top > V)
        return PyErr_Format(PyExc_ValueError, "n_top must be in [0, %ld], got %lld", (long)V, n_top);
    const int64_t *so = (const int64_t *)PyArray_DATA(off);
    for (npy_intp i = 0; i < R; i++)
        if (so[i] < 0 || so[i] > so[i + 1] || so[i + 1] > PyArray_DIM(seen, 0))
            return PyErr_Format(PyExc_ValueError, "seen_off must be non-decreasing within [0, %ld]",
                                (long)PyArray_DIM(seen, 0));
    dsv3_sampling *sp = PyMem_Malloc((size_t)(R ? R : 1) * sizeof *sp);
    if (!sp)
        return PyErr_NoMemory();
    const double *pd = (const double *)PyArray_DATA(par);
    for (npy_intp i = 0; i < R; i++) {
        const double k = pd[i * 5 + 1];
        sp[i] = (dsv3_sampling){(float)pd[i * 5], k > 9e18 || k != k ? 0 : (int64_t)k, (float)pd[i * 5 + 2],
                                (float)pd[i * 5 + 3], (float)pd[i * 5 + 4]};
    }
    npy_intp d1[1] = {R}, d2[2] = {R, (npy_intp)n_top};
    PyObject *tok = PyArray_SimpleNew(1, d1, NPY_INT64), *lp = PyArray_SimpleNew(1, d1, NPY_FLOAT32);
    PyObject *tid = PyArray_SimpleNew(2, d2, NPY_INT64), *tlp = PyArray_SimpleNew(2, d2, NPY_FLOAT32);
    if (!tok || !lp || !tid || !tlp) {
        PyMem_Free(sp);
        Py_XDECREF(tok);
        Py_XDECREF(lp);
        Py_XDECREF(tid);
        Py_XDECREF(tlp);
        return NULL;
    }
    float *lpd = (float *)PyArray_DATA((PyArrayObject *)lp);
    if (!want_lp)
        for (npy_intp i = 0; i < R; i++)
            lpd[i] = NAN;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_sample_rows((const float *)PyArray_DATA(lo), R, V, sp, (const int64_t *)PyArray_DATA(seen), so,
                          (uint64_t *)PyArray_DATA(rng), (int64_t *)PyArray_DATA((PyArrayObject *)tok),
                          want_lp ? lpd : NULL, n_top,
                          (int64_t *)PyArray_DATA((PyArrayObject *)tid), (float *)PyArray_DATA((PyArrayObject *)tlp),
                          &err);
    Py_END_ALLOW_THREADS
    PyMem_Free(sp);
    if (st != DSV3_OK) {
        Py_DECREF(tok);
        Py_DECREF(lp);
        Py_DECREF(tid);
        Py_DECREF(tlp);
        return dsv3_py_raise(st, &err);
    }
    PyObject *t = PyTuple_Pack(4, tok, lp, tid, tlp);
    Py_DECREF(tok);
    Py_DECREF(lp);
    Py_DECREF(tid);
    Py_DECREF(tlp);
    return t;
}

static PyObject *py_batch_token_bytes(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"model", "mtp", NULL};
    PyObject *model;
    int mtp = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p:batch_token_bytes", kwlist, &model, &mtp))
        return NULL;
    dsv3_model *m = dsv3_py_model_claim(model);
    if (!m)
        return NULL;
    const int64_t n = dsv3_batch_token_bytes(m, mtp);
    dsv3_py_model_release(model);
    return PyLong_FromLongLong((long long)n);
}

PyMethodDef dsv3_batch_methods[] = {
    {"batch_token_bytes", (PyCFunction)(void (*)(void))py_batch_token_bytes, METH_VARARGS | METH_KEYWORDS,
     "batch_token_bytes(model, mtp=False) -> cache bytes of one token in a Batch slot (all layers' latent rows, "
     "V3.2 index keys; mtp: plus the MTP layer's row of a speculative engine's BatchMTP slot)"},
    {"sample_rows", py_sample_rows, METH_VARARGS,
     "sample_rows(logits f32 [R, V], params f64 [R, 5], seen i64, seen_off i64 [R+1], rngs i64 [R] (advanced in "
     "place), n_top[, want_logprobs=True]) -> (tokens, logprobs (NaN unless wanted), top_ids, top_logprobs)"},
    {NULL, NULL, 0, NULL},
};

int dsv3_batch_init_types(PyObject *module)
{
    if (PyType_Ready(&BatchType) < 0)
        return -1;
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(module, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(&BatchType);
        return -1;
    }
    return 0;
}

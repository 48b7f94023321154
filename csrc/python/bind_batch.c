/* _dsv3 bindings of the batched engine (dsv3_batch) and the row sampler.
 *
 * Batch(model: dsv3._dsv3.Model, slots: int, capacity: int)
 *   forward(ids int64 [T], seqs int64 [n, 3] (slot, new tokens, logits mode 0 none / 1 last / 2 all /
 *           3 verify: all, each token's attention as its decode step / 4, 5: none, last with the hidden
 *           states of every new token, dsv3_batch.h), hidden=False, isa=None)
 *           -> logits float32 [R, vocab] (, hidden float32 [RH, hidden_size]: R rows, or n for modes 4 / 5)
 *   and the slot methods of its base SlotPool (bind_batch_slots.h).
 * batch_token_bytes(model, mtp=False) -> int: a slot's cache bytes per token (dsv3_batch_token_bytes).
 * sample_rows(logits float32 [R, V], params float64 [R, 5] (temperature, top_k, top_p, min_p,
 *             repetition_penalty), seen int64 [*], seen_off int64 [R + 1], rngs int64 [R] (uint64
 *             states, bit-cast), n_top[, want_logprobs=1]) -> (tokens int64 [R], logprobs float32 [R]
 *             (NaN when not wanted: no log-softmax), top_ids int64 [R, n_top], top_logprobs float32
 *             [R, n_top]); rngs advanced in place.
 */
#include <math.h>
#include "bind_batch_slots.h"

static int Batch_init(dsv3_py_slots *self, PyObject *args, PyObject *kw)
{
    return dsv3_py_slots_init(self, 0, args, kw);
}

static PyObject *Batch_forward(dsv3_py_slots *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ids", "seqs", "hidden", "isa", NULL};
    PyObject *ids_obj, *seqs_obj, *isa_obj = NULL;
    PyArrayObject *ids, *seqs;
    int want_hidden = 0, isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|pO", kwlist, &ids_obj, &seqs_obj, &want_hidden, &isa_obj) ||
        !dsv3_py_isa_arg(isa_obj, &isa) || !dsv3_py_slots_ready(self) ||
        !dsv3_py_step_args(ids_obj, seqs_obj, DSV3_BATCH_HIDDEN_ALL + DSV3_LOGITS_LAST,
                           "0 (none), 1 (last), 2 (all), 3 (verify), 4 (none, hidden all) or 5 (last, hidden all)",
                           &ids, &seqs))
        return NULL;
    const dsv3_batch_seq *sq = (const dsv3_batch_seq *)PyArray_DATA(seqs);
    const npy_intp n = PyArray_DIM(seqs, 0);
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
    return want_hidden ? Py_BuildValue("(NN)", lo, hi) : lo;
}

static PyMethodDef Batch_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Batch_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(ids int64 [T], seqs int64 [n, 3], hidden=False, isa=None) -> logits [R, vocab] (, hidden [RH, "
     "hidden_size]); modes 0 none / 1 last / 2 all / 3 verify / 4, 5 none, last with hidden of every token"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dsv3._dsv3.Batch",
    .tp_basicsize = sizeof(dsv3_py_slots),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pool of sequence slots over a native Model: Batch(model, slots, capacity)",
    .tp_methods = Batch_methods,
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
    return dsv3_py_slots_add_type(module, &BatchType, "Batch");
}

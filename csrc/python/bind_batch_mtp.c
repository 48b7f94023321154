/* _dsv3 binding of the batched engine's per-slot MTP caches (dsv3_batch_mtp.h).
 *
 * BatchMTP(model: dsv3._dsv3.Model loaded with mtp=True, slots: int, capacity: int)
 *   forward(ids int64 [T], hidden float32 [T, hidden_size], seqs int64 [n, 3] (slot, new positions, logits
 *           mode 0 none / 1 last / 2 all), isa=None) -> (logits float32 [R, vocab], g float32 [R, hidden_size])
 *   and the slot methods of its base SlotPool (bind_batch_slots.h): one position per token.
 */
#include "bind_batch_slots.h"

static int BatchMTP_init(dsv3_py_slots *self, PyObject *args, PyObject *kw)
{
    return dsv3_py_slots_init(self, 1, args, kw);
}

static PyObject *BatchMTP_forward(dsv3_py_slots *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ids", "hidden", "seqs", "isa", NULL};
    PyObject *ids_obj, *h_obj, *seqs_obj, *isa_obj = NULL;
    PyArrayObject *ids, *seqs;
    int isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|O", kwlist, &ids_obj, &h_obj, &seqs_obj, &isa_obj) ||
        !dsv3_py_isa_arg(isa_obj, &isa) || !dsv3_py_slots_ready(self) ||
        !dsv3_py_step_args(ids_obj, seqs_obj, DSV3_LOGITS_ALL, "0 (none), 1 (last) or 2 (all)", &ids, &seqs))
        return NULL;
    PyArrayObject *h = dsv3_py_check_array(h_obj, "hidden", DSV3_DT_F32, 2);
    if (!h)
        return NULL;
    const dsv3_batch_seq *sq = (const dsv3_batch_seq *)PyArray_DATA(seqs);
    const npy_intp n = PyArray_DIM(seqs, 0), T = PyArray_DIM(ids, 0);
    dsv3_model *m = dsv3_py_model_claim(self->model);
    if (!m)
        return NULL;
    const npy_intp D = (npy_intp)m->cfg.hidden_size;
    if (PyArray_DIM(h, 0) != T || PyArray_DIM(h, 1) != D) {
        dsv3_py_model_release(self->model);
        return PyErr_Format(PyExc_ValueError, "hidden: expected shape [%ld, %ld] (one row per id), got [%ld, %ld]",
                            (long)T, (long)D, (long)PyArray_DIM(h, 0), (long)PyArray_DIM(h, 1));
    }
    const npy_intp r = (npy_intp)dsv3_batch_out_rows(sq, n);
    npy_intp dl[2] = {r, (npy_intp)m->cfg.vocab_size}, dh[2] = {r, D};
    PyObject *lo = PyArray_SimpleNew(2, dl, NPY_FLOAT32);
    PyObject *g = lo ? PyArray_SimpleNew(2, dh, NPY_FLOAT32) : NULL;
    if (!g) {
        dsv3_py_model_release(self->model);
        Py_XDECREF(lo);
        return NULL;
    }
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_batch_mtp_forward(self->mtp, (const int64_t *)PyArray_DATA(ids), (const float *)PyArray_DATA(h), sq,
                                (int64_t)n, r ? (float *)PyArray_DATA((PyArrayObject *)lo) : NULL,
                                r ? (float *)PyArray_DATA((PyArrayObject *)g) : NULL, isa, &err);
    Py_END_ALLOW_THREADS
    dsv3_py_model_release(self->model);
    if (st != DSV3_OK) {
        Py_DECREF(lo);
        Py_DECREF(g);
        return dsv3_py_raise(st, &err);
    }
    return Py_BuildValue("(NN)", lo, g);
}

static PyMethodDef BatchMTP_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))BatchMTP_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(ids int64 [T], hidden float32 [T, hidden], seqs int64 [n, 3], isa=None) -> (logits [R, vocab], "
     "g [R, hidden])"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BatchMTPType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dsv3._dsv3.BatchMTP",
    .tp_basicsize = sizeof(dsv3_py_slots),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The MTP layer's caches of a Batch's slots: BatchMTP(model, slots, capacity) (model loaded with mtp)",
    .tp_methods = BatchMTP_methods,
    .tp_init = (initproc)BatchMTP_init,
    .tp_new = PyType_GenericNew,
};

int dsv3_batch_mtp_init_types(PyObject *module)
{
    return dsv3_py_slots_add_type(module, &BatchMTPType, "BatchMTP");
}

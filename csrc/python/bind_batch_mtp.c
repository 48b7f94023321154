/* _dsv3 binding of the batched engine's per-slot MTP caches (dsv3_batch_mtp.h).
 *
 * BatchMTP(model: dsv3._dsv3.Model loaded with mtp=True, slots: int, capacity: int)
 *   forward(ids int64 [T], hidden float32 [T, hidden_size], seqs int64 [n, 3] (slot, new positions, logits
 *           mode 0 none / 1 last / 2 all), isa=None) -> (logits float32 [R, vocab], g float32 [R, hidden_size])
 *   copy_prefix(src, dst, n), truncate(slot, length), release(slot), length(slot); slots, capacity.
 */
#include "bind.h"
#include "dsv3_batch_mtp.h"

typedef struct {
    PyObject_HEAD
    dsv3_batch_mtp *mtp;
    PyObject *model; /* the dsv3._dsv3.Model whose MTP layer and workspace it uses */
} BatchMTPObject;

static int BatchMTP_init(BatchMTPObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"model", "slots", "capacity", NULL};
    PyObject *model;
    long long slots, cap;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL", kwlist, &model, &slots, &cap))
        return -1;
    if (self->mtp) {
        PyErr_SetString(PyExc_RuntimeError, "BatchMTP is already initialised");
        return -1;
    }
    dsv3_model *m = dsv3_py_model_claim(model);
    if (!m)
        return -1;
    dsv3_error err = {0};
    dsv3_batch_mtp *b = NULL;
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_batch_mtp_create(m, (int64_t)slots, (int64_t)cap, &b, &err);
    Py_END_ALLOW_THREADS
    dsv3_py_model_release(model);
    if (st != DSV3_OK) {
        dsv3_py_raise(st, &err);
        return -1;
    }
    Py_INCREF(model);
    self->model = model;
    self->mtp = b;
    return 0;
}

static void BatchMTP_dealloc(BatchMTPObject *self)
{
    dsv3_batch_mtp_free(self->mtp);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(BatchMTPObject *self)
{
    if (!self->mtp)
        PyErr_SetString(PyExc_RuntimeError, "BatchMTP is not initialised");
    return self->mtp != NULL;
}

static PyObject *BatchMTP_forward(BatchMTPObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ids", "hidden", "seqs", "isa", NULL};
    PyObject *ids_obj, *h_obj, *seqs_obj, *isa_obj = NULL;
    int isa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|O", kwlist, &ids_obj, &h_obj, &seqs_obj, &isa_obj) ||
        !dsv3_py_isa_arg(isa_obj, &isa) || !ready(self))
        return NULL;
    PyArrayObject *ids = dsv3_py_check_array(ids_obj, "ids", DSV3_DT_I64, 1);
    PyArrayObject *h = ids ? dsv3_py_check_array(h_obj, "hidden", DSV3_DT_F32, 2) : NULL;
    PyArrayObject *seqs = h ? dsv3_py_check_array(seqs_obj, "seqs", DSV3_DT_I64, 2) : NULL;
    if (!seqs)
        return NULL;
    if (PyArray_DIM(seqs, 1) != 3)
        return PyErr_Format(PyExc_ValueError, "seqs must be int64 [n, 3] (slot, positions, logits mode), got [%ld, %ld]",
                            (long)PyArray_DIM(seqs, 0), (long)PyArray_DIM(seqs, 1));
    const dsv3_batch_seq *sq = (const dsv3_batch_seq *)PyArray_DATA(seqs);
    const npy_intp n = PyArray_DIM(seqs, 0), T = PyArray_DIM(ids, 0);
    int64_t total = 0;
    for (npy_intp i = 0; i < n; i++) {
        if (sq[i].n < 0 || sq[i].n > T)
            return PyErr_Format(PyExc_ValueError, "seqs[%ld]: %lld positions (ids holds %ld)", (long)i,
                                (long long)sq[i].n, (long)T);
        if (sq[i].logits < 0 || sq[i].logits > 2)
            return PyErr_Format(PyExc_ValueError, "seqs[%ld]: logits mode %lld is not 0 (none), 1 (last) or 2 (all)",
                                (long)i, (long long)sq[i].logits);
        total += sq[i].n;
    }
    if (total != T)
        return PyErr_Format(PyExc_ValueError, "seqs ask for %lld positions but ids holds %ld", (long long)total, (long)T);
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

static PyObject *copy_prefix(BatchMTPObject *self, long long src, long long dst, long long n)
{
    if (!ready(self) || !dsv3_py_model_claim(self->model)) /* never under a forward on another thread */
        return NULL;
    dsv3_error err = {0};
    dsv3_status st = dsv3_batch_mtp_copy_prefix(self->mtp, (int64_t)src, (int64_t)dst, (int64_t)n, &err);
    dsv3_py_model_release(self->model);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    Py_RETURN_NONE;
}

static PyObject *BatchMTP_copy_prefix(BatchMTPObject *self, PyObject *args)
{
    long long src, dst, n;
    if (!PyArg_ParseTuple(args, "LLL:copy_prefix", &src, &dst, &n))
        return NULL;
    return copy_prefix(self, src, dst, n);
}

static PyObject *BatchMTP_truncate(BatchMTPObject *self, PyObject *args)
{
    long long slot, length;
    if (!PyArg_ParseTuple(args, "LL:truncate", &slot, &length))
        return NULL;
    return copy_prefix(self, slot, slot, length);
}

static PyObject *BatchMTP_release(BatchMTPObject *self, PyObject *arg)
{
    long long slot = PyLong_AsLongLong(arg);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (ready(self) && (slot < 0 || slot >= dsv3_batch_mtp_slots(self->mtp)))
        return PyErr_Format(PyExc_ValueError, "slot %lld out of range [0, %lld)", slot,
                            (long long)dsv3_batch_mtp_slots(self->mtp));
    return copy_prefix(self, slot, slot, 0);
}

static PyObject *BatchMTP_length(BatchMTPObject *self, PyObject *arg)
{
    long long slot = PyLong_AsLongLong(arg);
    if ((slot == -1 && PyErr_Occurred()) || !ready(self))
        return NULL;
    int64_t n = dsv3_batch_mtp_length(self->mtp, (int64_t)slot);
    if (n < 0)
        return PyErr_Format(PyExc_ValueError, "slot %lld out of range [0, %lld)", slot,
                            (long long)dsv3_batch_mtp_slots(self->mtp));
    return PyLong_FromLongLong((long long)n);
}

static PyObject *BatchMTP_slots(BatchMTPObject *self, void *c)
{
    (void)c;
    return ready(self) ? PyLong_FromLongLong((long long)dsv3_batch_mtp_slots(self->mtp)) : NULL;
}

static PyObject *BatchMTP_capacity(BatchMTPObject *self, void *c)
{
    (void)c;
    return ready(self) ? PyLong_FromLongLong((long long)dsv3_batch_mtp_capacity(self->mtp)) : NULL;
}

static PyMethodDef BatchMTP_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))BatchMTP_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(ids int64 [T], hidden float32 [T, hidden], seqs int64 [n, 3], isa=None) -> (logits [R, vocab], "
     "g [R, hidden])"},
    {"copy_prefix", (PyCFunction)BatchMTP_copy_prefix, METH_VARARGS,
     "copy_prefix(src, dst, n): slot dst holds the first n cached positions of slot src"},
    {"truncate", (PyCFunction)BatchMTP_truncate, METH_VARARGS,
     "truncate(slot, length): keep the slot's first length positions"},
    {"release", (PyCFunction)BatchMTP_release, METH_O, "release(slot): forget the slot's positions"},
    {"length", (PyCFunction)BatchMTP_length, METH_O, "length(slot) -> positions cached in the slot"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef BatchMTP_getset[] = {
    {"slots", (getter)BatchMTP_slots, NULL, "number of slots", NULL},
    {"capacity", (getter)BatchMTP_capacity, NULL, "positions per slot", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchMTPType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dsv3._dsv3.BatchMTP",
    .tp_basicsize = sizeof(BatchMTPObject),
    .tp_dealloc = (destructor)BatchMTP_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The MTP layer's caches of a Batch's slots: BatchMTP(model, slots, capacity) (model loaded with mtp)",
    .tp_methods = BatchMTP_methods,
    .tp_getset = BatchMTP_getset,
    .tp_init = (initproc)BatchMTP_init,
    .tp_new = PyType_GenericNew,
};

int dsv3_batch_mtp_init_types(PyObject *module)
{
    if (PyType_Ready(&BatchMTPType) < 0)
        return -1;
    Py_INCREF(&BatchMTPType);
    if (PyModule_AddObject(module, "BatchMTP", (PyObject *)&BatchMTPType) < 0) {
        Py_DECREF(&BatchMTPType);
        return -1;
    }
    return 0;
}

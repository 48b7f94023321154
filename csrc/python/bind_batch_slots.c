/* The slot pool shared by the Batch and BatchMTP bindings (bind_batch_slots.h). */
#include "bind_batch_slots.h"

int dsv3_py_slots_init(dsv3_py_slots *self, int mtp, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"model", "slots", "capacity", NULL};
    PyObject *model;
    long long slots, cap;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL", kwlist, &model, &slots, &cap))
        return -1;
    if (self->batch || self->mtp) {
        PyErr_Format(PyExc_RuntimeError, "%s is already initialised", Py_TYPE(self)->tp_name);
        return -1;
    }
    dsv3_model *m = dsv3_py_model_claim(model);
    if (!m)
        return -1;
    dsv3_error err = {0};
    dsv3_batch *b = NULL;
    dsv3_batch_mtp *t = NULL;
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = mtp ? dsv3_batch_mtp_create(m, (int64_t)slots, (int64_t)cap, &t, &err)
             : dsv3_batch_create(m, (int64_t)slots, (int64_t)cap, &b, &err);
    Py_END_ALLOW_THREADS
    dsv3_py_model_release(model);
    if (st != DSV3_OK) {
        dsv3_py_raise(st, &err);
        return -1;
    }
    Py_INCREF(model);
    self->model = model;
    self->batch = b;
    self->mtp = t;
    return 0;
}

static void slots_dealloc(dsv3_py_slots *self)
{
    dsv3_batch_free(self->batch);
    dsv3_batch_mtp_free(self->mtp);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

int dsv3_py_slots_ready(dsv3_py_slots *self)
{
    if (!self->batch && !self->mtp)
        PyErr_Format(PyExc_RuntimeError, "%s is not initialised", Py_TYPE(self)->tp_name);
    return self->batch || self->mtp;
}

static int64_t pool_slots(const dsv3_py_slots *self)
{
    return self->mtp ? dsv3_batch_mtp_slots(self->mtp) : dsv3_batch_slots(self->batch);
}

/* src == dst: truncate (n = 0: release); under the model's claim (never beside a forward on another thread) */
static PyObject *copy_prefix(dsv3_py_slots *self, long long src, long long dst, long long n)
{
    if (!dsv3_py_slots_ready(self) || !dsv3_py_model_claim(self->model))
        return NULL;
    dsv3_error err = {0};
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = self->mtp ? dsv3_batch_mtp_copy_prefix(self->mtp, (int64_t)src, (int64_t)dst, (int64_t)n, &err)
                   : dsv3_batch_copy_prefix(self->batch, (int64_t)src, (int64_t)dst, (int64_t)n, &err);
    Py_END_ALLOW_THREADS
    dsv3_py_model_release(self->model);
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    Py_RETURN_NONE;
}

static PyObject *slots_copy_prefix(dsv3_py_slots *self, PyObject *args)
{
    long long src, dst, n;
    if (!PyArg_ParseTuple(args, "LLL:copy_prefix", &src, &dst, &n))
        return NULL;
    return copy_prefix(self, src, dst, n);
}

static PyObject *slots_truncate(dsv3_py_slots *self, PyObject *args)
{
    long long slot, length;
    if (!PyArg_ParseTuple(args, "LL:truncate", &slot, &length))
        return NULL;
    return copy_prefix(self, slot, slot, length);
}

/* A slot argument in range, or -1 with an exception. */
static long long slot_arg(dsv3_py_slots *self, PyObject *arg)
{
    long long slot = PyLong_AsLongLong(arg);
    if ((slot == -1 && PyErr_Occurred()) || !dsv3_py_slots_ready(self))
        return -1;
    if (slot < 0 || slot >= pool_slots(self)) {
        PyErr_Format(PyExc_ValueError, "slot %lld out of range [0, %lld)", slot, (long long)pool_slots(self));
        return -1;
    }
    return slot;
}

static PyObject *slots_release(dsv3_py_slots *self, PyObject *arg)
{
    const long long slot = slot_arg(self, arg);
    return slot < 0 ? NULL : copy_prefix(self, slot, slot, 0);
}

static PyObject *slots_length(dsv3_py_slots *self, PyObject *arg)
{
    const long long slot = slot_arg(self, arg);
    if (slot < 0)
        return NULL;
    return PyLong_FromLongLong((long long)(self->mtp ? dsv3_batch_mtp_length(self->mtp, slot)
                                                     : dsv3_batch_length(self->batch, slot)));
}

static PyObject *slots_slots(dsv3_py_slots *self, void *c)
{
    (void)c;
    return dsv3_py_slots_ready(self) ? PyLong_FromLongLong((long long)pool_slots(self)) : NULL;
}

static PyObject *slots_capacity(dsv3_py_slots *self, void *c)
{
    (void)c;
    if (!dsv3_py_slots_ready(self))
        return NULL;
    return PyLong_FromLongLong(
        (long long)(self->mtp ? dsv3_batch_mtp_capacity(self->mtp) : dsv3_batch_capacity(self->batch)));
}

int dsv3_py_step_args(PyObject *ids_obj, PyObject *seqs_obj, int64_t max_mode, const char *modes, PyArrayObject **ids,
                      PyArrayObject **seqs)
{
    PyArrayObject *i = dsv3_py_check_array(ids_obj, "ids", DSV3_DT_I64, 1);
    PyArrayObject *s = i ? dsv3_py_check_array(seqs_obj, "seqs", DSV3_DT_I64, 2) : NULL;
    if (!s)
        return 0;
    if (PyArray_DIM(s, 1) != 3) {
        PyErr_Format(PyExc_ValueError, "seqs must be int64 [n, 3] (slot, tokens, logits mode), got [%ld, %ld]",
                     (long)PyArray_DIM(s, 0), (long)PyArray_DIM(s, 1));
        return 0;
    }
    const dsv3_batch_seq *sq = (const dsv3_batch_seq *)PyArray_DATA(s);
    const npy_intp n = PyArray_DIM(s, 0), T = PyArray_DIM(i, 0);
    int64_t total = 0;
    for (npy_intp k = 0; k < n; k++) {
        if (sq[k].n < 0 || sq[k].n > T) {
            PyErr_Format(PyExc_ValueError, "seqs[%ld]: %lld tokens (ids holds %ld)", (long)k, (long long)sq[k].n,
                         (long)T);
            return 0;
        }
        if (sq[k].logits < 0 || sq[k].logits > max_mode) {
            PyErr_Format(PyExc_ValueError, "seqs[%ld]: logits mode %lld is not %s", (long)k, (long long)sq[k].logits,
                         modes);
            return 0;
        }
        total += sq[k].n;
    }
    if (total != T) {
        PyErr_Format(PyExc_ValueError, "seqs ask for %lld tokens but ids holds %ld", (long long)total, (long)T);
        return 0;
    }
    *ids = i;
    *seqs = s;
    return 1;
}

static PyMethodDef slots_methods[] = {
    {"release", (PyCFunction)slots_release, METH_O, "release(slot): forget the slot's tokens"},
    {"truncate", (PyCFunction)slots_truncate, METH_VARARGS,
     "truncate(slot, length): keep the slot's first length tokens (cache rollback)"},
    {"length", (PyCFunction)slots_length, METH_O, "length(slot) -> tokens cached in the slot"},
    {"copy_prefix", (PyCFunction)slots_copy_prefix, METH_VARARGS,
     "copy_prefix(src, dst, n): slot dst holds the first n cached tokens of slot src (src == dst: truncate)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef slots_getset[] = {
    {"slots", (getter)slots_slots, NULL, "number of sequence slots", NULL},
    {"capacity", (getter)slots_capacity, NULL, "tokens per slot", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject dsv3_py_slots_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dsv3._dsv3.SlotPool",
    .tp_basicsize = sizeof(dsv3_py_slots),
    .tp_dealloc = (destructor)slots_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Sequence slots over a native Model (the base of Batch and BatchMTP)",
    .tp_methods = slots_methods,
    .tp_getset = slots_getset,
};

int dsv3_py_slots_add_type(PyObject *module, PyTypeObject *type, const char *name)
{
    type->tp_base = &dsv3_py_slots_type;
    if (PyType_Ready(&dsv3_py_slots_type) < 0 || PyType_Ready(type) < 0)
        return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

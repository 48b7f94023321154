/* The part of the _dsv3 bindings Batch (bind_batch.c) and BatchMTP (bind_batch_mtp.c) share
 * (bind_batch_slots.c): one object layout over a pool of sequence slots of a native Model, its
 * construction and the slot methods, in a base type both derive from, and a step's argument checks.
 *
 * SlotPool (base of Batch and BatchMTP; not constructed itself):
 *   release(slot), truncate(slot, length), length(slot), copy_prefix(src, dst, n); slots, capacity.
 */
#ifndef DSV3_BIND_BATCH_SLOTS_H
#define DSV3_BIND_BATCH_SLOTS_H

#include "bind.h"
#include "dsv3_batch_mtp.h"

typedef struct {
    PyObject_HEAD
    dsv3_batch *batch;   /* a Batch's slots (NULL in a BatchMTP) */
    dsv3_batch_mtp *mtp; /* a BatchMTP's slots (NULL in a Batch) */
    PyObject *model;     /* the dsv3._dsv3.Model whose weights and workspace the slots use */
} dsv3_py_slots;

extern PyTypeObject dsv3_py_slots_type;

/* Readies type (a subtype of SlotPool) and adds it to module as `name`; -1 with an exception on failure. */
int dsv3_py_slots_add_type(PyObject *module, PyTypeObject *type, const char *name);
/* tp_init of Batch (mtp 0) and BatchMTP (mtp 1): (model, slots, capacity). */
int dsv3_py_slots_init(dsv3_py_slots *self, int mtp, PyObject *args, PyObject *kw);
/* RuntimeError and 0 before a successful init. */
int dsv3_py_slots_ready(dsv3_py_slots *self);

/* A forward's step arguments: ids int64 [T] and seqs int64 [n, 3] (slot, new tokens, logits mode in
 * [0, max_mode]; `modes` names them in the message) with the tokens adding up to T. Borrowed arrays, or
 * 0 with ValueError / TypeError. */
int dsv3_py_step_args(PyObject *ids_obj, PyObject *seqs_obj, int64_t max_mode, const char *modes, PyArrayObject **ids,
                      PyArrayObject **seqs);

#endif

/* Attention-kernel bindings (bind_mla.c), listed in bind_model.c's method table. */
#ifndef DSV3_BIND_MLA_H
#define DSV3_BIND_MLA_H

#include "bind.h"

PyObject *dsv3_py_mla_dots(PyObject *self, PyObject *args, PyObject *kw);
PyObject *dsv3_py_mla_wsum(PyObject *self, PyObject *args, PyObject *kw);
PyObject *dsv3_py_mla_expsum(PyObject *self, PyObject *args, PyObject *kw);
PyObject *dsv3_py_kv_cache_formats(PyObject *self, PyObject *unused);
PyObject *dsv3_py_kv_cache_pack(PyObject *self, PyObject *args, PyObject *kw);
PyObject *dsv3_py_kv_cache_unpack(PyObject *self, PyObject *args, PyObject *kw);
PyObject *dsv3_py_mla_dots_kv(PyObject *self, PyObject *args, PyObject *kw);
PyObject *dsv3_py_mla_wsum_kv(PyObject *self, PyObject *args, PyObject *kw);

#endif

/* Attention-kernel bindings (bind_mla.c), listed in bind_model.c's method table. */
#ifndef DSV3_BIND_MLA_H
#define DSV3_BIND_MLA_H

#include "bind.h"

PyObject *dsv3_py_mla_dots(PyObject *self, PyObject *args, PyObject *kw);
PyObject *dsv3_py_mla_wsum(PyObject *self, PyObject *args, PyObject *kw);
PyObject *dsv3_py_mla_expsum(PyObject *self, PyObject *args, PyObject *kw);

#endif

/* The _dsv3 extension module: collects each concern's method table; the only import_array(). */
#define DSV3_BIND_MODULE
#include "bind.h"

static PyMethodDef *const TABLES[] = {
    dsv3_cpu_methods, dsv3_dtype_methods, dsv3_onednn_methods, dsv3_probe_methods,
    dsv3_ops_methods, dsv3_model_methods, dsv3_quant_methods, dsv3_batch_methods, dsv3_weight_methods,
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "dsv3._dsv3", "dsv3 compute core (C99).", -1, NULL, NULL, NULL, NULL, NULL,
};

static int add_table(PyObject *m, PyMethodDef *t)
{
    PyObject *modname = PyModule_GetNameObject(m);
    if (!modname)
        return -1;
    for (; t->ml_name; t++) {
        PyObject *f = PyCFunction_NewEx(t, NULL, modname);
        if (!f) {
            Py_DECREF(modname);
            return -1;
        }
        if (PyModule_AddObject(m, t->ml_name, f) < 0) {
            Py_DECREF(f);
            Py_DECREF(modname);
            return -1;
        }
    }
    Py_DECREF(modname);
    return 0;
}

PyMODINIT_FUNC PyInit__dsv3(void)
{
    import_array();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    for (size_t i = 0; i < sizeof TABLES / sizeof TABLES[0]; i++)
        if (add_table(m, TABLES[i]) < 0)
            goto fail;
    if (dsv3_model_init_types(m) < 0 || dsv3_quant_init_types(m) < 0 || dsv3_batch_init_types(m) < 0 ||
        dsv3_batch_mtp_init_types(m) < 0 || dsv3_weight_init(m) < 0)
        goto fail;
    dsv3_error err = {0};
    dsv3_status s = dsv3_init(&err);
    if (s != DSV3_OK) {
        dsv3_py_raise(s, &err);
        goto fail;
    }
    if (PyModule_AddStringConstant(m, "__version__", DSV3_VERSION) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}

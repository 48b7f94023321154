/* _dsv3 bindings: model (filled by the model work). */
#include "bind.h"

PyMethodDef dsv3_model_methods[] = {
    {NULL, NULL, 0, NULL},
};

int dsv3_model_init_types(PyObject *module)
{
    (void)module;
    return 0;
}

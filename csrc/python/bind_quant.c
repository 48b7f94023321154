/* _dsv3 bindings: quant (filled by the quant work). */
#include "bind.h"

PyMethodDef dsv3_quant_methods[] = {
    {NULL, NULL, 0, NULL},
};

int dsv3_quant_init_types(PyObject *module)
{
    (void)module;
    return 0;
}

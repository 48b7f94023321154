/* _dsv3 bindings: dtype (filled by the dtype work). */
#include "bind.h"

PyMethodDef dsv3_dtype_methods[] = {
    {NULL, NULL, 0, NULL},
};

/* _dsv3 bindings: ops (filled by the ops work). */
#include "bind.h"

PyMethodDef dsv3_ops_methods[] = {
    {NULL, NULL, 0, NULL},
};

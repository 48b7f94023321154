/* _dsv3 bindings: onednn (filled by the onednn work). */
#include "bind.h"

PyMethodDef dsv3_onednn_methods[] = {
    {NULL, NULL, 0, NULL},
};

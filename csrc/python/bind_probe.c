/* _dsv3 bindings: probe (filled by the probe work). */
#include "bind.h"

PyMethodDef dsv3_probe_methods[] = {
    {NULL, NULL, 0, NULL},
};

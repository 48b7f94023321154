/* Python objects -> dsv3_weight (see bind.h). Only f32/bf16 arrays for now; the quantised-linear
 * work adds the dict form for every format in its format table. */
#include "bind.h"

#include <string.h>

int dsv3_py_weight(PyObject *obj, const char *what, int64_t n, int64_t k, dsv3_weight *out)
{
    memset(out, 0, sizeof *out);
    out->scale2 = 1.0f;
    if (PyDict_Check(obj)) {
        PyErr_Format(PyExc_NotImplementedError, "%s: quantised weight dicts are not supported yet", what);
        return 0;
    }
    dsv3_dt dt;
    PyArrayObject *a = dsv3_py_check_array_any(obj, what, (1u << DSV3_DT_F32) | (1u << DSV3_DT_BF16), 2, &dt);
    if (!a)
        return 0;
    npy_intp *d = PyArray_DIMS(a);
    if ((n >= 0 && d[0] != n) || (k >= 0 && d[1] != k)) {
        PyErr_Format(PyExc_ValueError, "%s: expected shape [%lld, %lld], got [%lld, %lld]", what,
                     (long long)n, (long long)k, (long long)d[0], (long long)d[1]);
        return 0;
    }
    out->fmt = dt == DSV3_DT_F32 ? DSV3_FMT_F32 : DSV3_FMT_BF16;
    out->n = d[0];
    out->k = d[1];
    out->data = PyArray_DATA(a);
    return 1;
}

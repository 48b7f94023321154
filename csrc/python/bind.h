/* Shared helpers of the _dsv3 binding layer. The binding holds no math: it checks arguments,
 * releases the GIL around C calls and maps dsv3_status to Python exceptions.
 * Only module.c calls import_array(); other files include this header, which sets NO_IMPORT_ARRAY.
 */
#ifndef DSV3_BIND_H
#define DSV3_BIND_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef DSV3_BIND_MODULE
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL dsv3_ARRAY_API
#include <numpy/arrayobject.h>

#include "dsv3.h"

/* Raise the Python exception for a failed status (ValueError, TypeError, MemoryError, OSError,
 * RuntimeError) with the recorded message. Always returns NULL. */
PyObject *dsv3_py_raise(dsv3_status status, const dsv3_error *err);

/* dtypes registered from Python at import (ml_dtypes), compared with PyArray_EquivTypes:
 * never by a hard-coded type number. */
typedef enum {
    DSV3_DT_F32, DSV3_DT_BF16, DSV3_DT_F16, DSV3_DT_F8E4M3, DSV3_DT_F8E5M2, DSV3_DT_U8,
    DSV3_DT_I8, DSV3_DT_I32, DSV3_DT_I64, DSV3_DT_F8E8M0, DSV3_DT_F4E2M1, DSV3_DT_COUNT
} dsv3_dt;
PyArray_Descr *dsv3_py_descr(dsv3_dt dt); /* borrowed; NULL if not registered */
const char *dsv3_py_dt_name(dsv3_dt dt);

/* Check that obj is a C-contiguous ndarray of dtype dt with ndim dimensions (ndim < 0: any),
 * aligned for its itemsize. On failure raises TypeError/ValueError naming `what` and returns NULL.
 * Returns a borrowed reference to obj cast to PyArrayObject*. */
PyArrayObject *dsv3_py_check_array(PyObject *obj, const char *what, dsv3_dt dt, int ndim);
/* Same, but accepts any of the dtypes in the bit mask (1 << dsv3_dt); *dt_out receives which. */
PyArrayObject *dsv3_py_check_array_any(PyObject *obj, const char *what, unsigned mask, int ndim,
                                       dsv3_dt *dt_out);
/* Optional ISA keyword: None -> -1 (active), "scalar"/"avx2"/"avx512" -> index. Returns 0 on error. */
int dsv3_py_isa_arg(PyObject *obj, int *out);

/* Each concern's binding file exports a method table (and optionally an init hook for types). */
extern PyMethodDef dsv3_cpu_methods[];
extern PyMethodDef dsv3_dtype_methods[];
extern PyMethodDef dsv3_onednn_methods[];
extern PyMethodDef dsv3_probe_methods[];
extern PyMethodDef dsv3_ops_methods[];
extern PyMethodDef dsv3_model_methods[];
extern PyMethodDef dsv3_quant_methods[];
extern PyMethodDef dsv3_weight_methods[]; /* bind_weight.c */
int dsv3_weight_init(PyObject *module);
int dsv3_model_init_types(PyObject *module);
extern PyMethodDef dsv3_batch_methods[];
int dsv3_batch_init_types(PyObject *module);
int dsv3_batch_mtp_init_types(PyObject *module); /* bind_batch_mtp.c */
/* bind_model.c: the dsv3_model of a dsv3._dsv3.Model, claimed for a GIL-free call (TypeError or
 * RuntimeError "in use" and NULL otherwise); release with dsv3_py_model_release. */
struct dsv3_model;
struct dsv3_model *dsv3_py_model_claim(PyObject *obj);
void dsv3_py_model_release(PyObject *obj);
int dsv3_quant_init_types(PyObject *module);

/* ---- weights (bind_weight.c, owned by the quantised-linear work) ----
 * Accepts a weight for dsv3_linear from Python:
 *   - a numpy float32 or bfloat16 array [n, k];
 *   - a dict {"format": "fp8_block"|"nvfp4"|"int8"|"int4"|"bf16"|"f32", "shape": (n, k),
 *             "data": array, "scale": array or None, "scale2": float, "group": int}
 *     (what dsv3.quant.QuantizedTensor.to_native() returns).
 * n, k: expected shape, -1 for any. The arrays must outlive the dsv3_weight: the caller keeps a
 * reference to obj. Returns 1 on success, 0 with a Python exception naming `what`. */
#include "dsv3_linear.h"
int dsv3_py_weight(PyObject *obj, const char *what, int64_t n, int64_t k, dsv3_weight *out);
/* "exact" / "fast" -> dsv3_act (dsv3_weight.act); 0 with ValueError naming `what` otherwise. */
int dsv3_py_act_arg(PyObject *o, const char *what, int *out);

#endif

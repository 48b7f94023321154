/* oneDNN (v3.2 C API, GNU OpenMP build from the onednn-cpu-gomp wheel), loaded at run time with
 * dlopen: the extension has no link-time dependency on it. Used for plain f32/bf16 matrix
 * multiplies. */
#ifndef DSV3_ONEDNN_H
#define DSV3_ONEDNN_H

#include "dsv3.h"

/* dlopen the library at path and resolve the C API. Idempotent: once a library is loaded, later
 * calls only check that their path opens. Fails (DSV3_E_IO / DSV3_E_UNSUPPORTED) without changing
 * the loaded state. Thread-safe. */
dsv3_status dsv3_onednn_load(const char *path, dsv3_error *err);
/* 1 once dsv3_onednn_load succeeded. */
int dsv3_onednn_available(void);
/* "3.2.0 (gomp)"; empty string when not loaded. */
void dsv3_onednn_version(char *buf, size_t size);

/* y[m, n] = x[m, k] W^T (+ bias[n]), W [n, k] row-major, float32 or (w_is_bf16) bf16 bits.
 * For bf16 weights x is rounded to bf16 first (oneDNN's bf16 matmul takes bf16 sources); the
 * accumulation and y are float32. Primitives are cached per (m, n, k, dtype, bias). Runs on
 * dsv3_num_threads() OpenMP threads (the GNU OpenMP runtime is shared with dsv3's kernels). */
dsv3_status dsv3_onednn_linear(const float *x, int64_t m, const void *w, int w_is_bf16, int64_t n, int64_t k,
                               const float *bias, float *y, dsv3_error *err);

#endif

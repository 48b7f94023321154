/* oneDNN (v3.2 C API, GNU OpenMP build from the onednn-cpu-gomp wheel), loaded at run time with
 * dlopen: the extension has no link-time dependency on it. Used for plain f32/bf16 matrix
 * multiplies. */
#ifndef DSV3_ONEDNN_H
#define DSV3_ONEDNN_H

#include "dsv3.h"

/* dlopen the library at path and resolve the C API. Idempotent: once a library is loaded, later
 * calls only check that their path opens. Fails (DSV3_E_IO / DSV3_E_UNSUPPORTED) without changing
 * the loaded state. Thread-safe. When dsv3's active ISA is forced below the CPU's best (DSV3_ISA),
 * oneDNN is limited to that ISA too (see onednn_load.c), unless ONEDNN_MAX_CPU_ISA is set. */
dsv3_status dsv3_onednn_load(const char *path, dsv3_error *err);
/* 1 once dsv3_onednn_load succeeded. */
int dsv3_onednn_available(void);
/* "3.2.0 (gomp)"; empty string when not loaded. */
void dsv3_onednn_version(char *buf, size_t size);
/* The ISA oneDNN's kernels use ("avx512_core_bf16", "avx2", ...); "" when not loaded. */
const char *dsv3_onednn_isa(void);
/* 1 when the loaded oneDNN has a matmul for weights of this kind (float32, or bf16 when w_is_bf16)
 * on this CPU, at the ISA it may use: oneDNN 3.2 has no bf16 matmul below AVX-512 (AMD Zen 3, or
 * ONEDNN_MAX_CPU_ISA=AVX2). Found out once per kind by creating a primitive descriptor, then
 * cached; 0 when oneDNN is not loaded. Callers route to oneDNN only when this is 1. Thread-safe. */
int dsv3_onednn_supports(int w_is_bf16);

/* y[m, n] = x[m, k] W^T (+ bias[n]), W [n, k] row-major, float32 or (w_is_bf16) bf16 bits.
 * For bf16 weights x is rounded to bf16 first (oneDNN's bf16 matmul takes bf16 sources); the
 * accumulation and y are float32. Primitives are cached per (m, n, k, dtype, bias). Runs on
 * dsv3_num_threads() OpenMP threads (the GNU OpenMP runtime is shared with dsv3's kernels). */
dsv3_status dsv3_onednn_linear(const float *x, int64_t m, const void *w, int w_is_bf16, int64_t n, int64_t k,
                               const float *bias, float *y, dsv3_error *err);

#endif

/* Fast-mode kernels of the floating-point weight formats (fp8_block, nvfp4), referenced by the format
 * table (csrc/quant/formats.c) only. dsv3_lin_kernel signature.
 *
 * fp8_block, AVX2 (dot_fp_avx2.c): the bf16-hi definition of the AVX-512 fast kernel (act_q8.h),
 * y = sum_g s(n, g) sum_{k in g} bf16(x[m, k]) e4m3(n, k) with f32 sums, x prepared once per call as bf16 in the
 * decoder's order (DSV3_X_F32_P32 up to K = 4096 as f32, DSV3_X_BF16_P32 above), e4m3 decoded with shifts and
 * masks, f32 FMA, without per-row NaN checks for a weight scanned once (dsv3_weight.nan_free); its scalar twin is
 * dsv3_fast_bf16hi_scalar (sums in another order: equal within 1e-5 * sum |x| |W|).
 *
 * nvfp4, every ISA: Q8 activations (act_q8.h; scalar DSV3_X_Q8, AVX2 DSV3_X_Q8_EO64C, AVX-512 DSV3_X_Q8_EO128)
 * times the e2m1 codes doubled (the integers -12..12) in exact int32 dots per 16-column block:
 *     y[m, n] = (sum_b  D(b) * d[m, b / 2] * e4m3(s[n, b]))  * scale2 / 2,  D(b) = sum_{k in b} q[m, k] * 2 e2m1(n, k)
 * (+ bias). The SIMD kernels sum 8- or 16-column lanes in another order (bound as above). */
#ifndef DSV3_DOT_FP_H
#define DSV3_DOT_FP_H

#include "dsv3_quant.h"
#include "linear/act_q8.h"

void dsv3_fast_fp8_block_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);

void dsv3_q8_nvfp4_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_q8_nvfp4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_q8_nvfp4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
/* sum over the natural-order blocks b >= k0 / 16 of D(b) * d * e4m3(s), times scale2 / 2, for one output
 * (k0 a multiple of 16): the scalar twin, and the SIMD kernels' K tail beyond their last full block */
float dsv3_q8_nvfp4_ref_dot(const dsv3_lin_args *a, int64_t m, int64_t n, int64_t k0);

#endif

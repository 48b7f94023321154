/* Fast activation mode: the Q8 activation quantiser (act_q8.c) and the fast kernels it feeds
 * (dot_q8_*.c: int8/int4 weights; dot_bf16hi_scalar.c: the scalar twin of the AVX-512 bf16-hi kernels).
 * Used by the dispatcher (linear.c) and the format table (formats.c) only. */
#ifndef DSV3_ACT_Q8_H
#define DSV3_ACT_Q8_H

#include <stddef.h>

#include "dsv3_quant.h"

#define DSV3_Q8_BLOCK 32 /* columns sharing one activation scale */

/* Bytes of the buffer dsv3_act_q8_describe carves for m rows of k columns in `layout` (a DSV3_X_Q8* value). */
size_t dsv3_act_q8_bytes(int64_t m, int64_t k, int layout);
/* Quantises x f32 [m, k] per block of 32 columns (the last block may be shorter):
 *     d = amax(|x| over the block) / 127 (f32),  q = round-half-to-even(x / d) in [-127, 127],
 * d = 0 (all-zero block) gives q = 0; a non-finite x gives a non-finite d and q = 0, so the output is
 * NaN, never silent garbage. In two halves, for the linear plan (linear.c): describe points *out at the
 * pieces of buf (64-byte aligned, dsv3_act_q8_bytes: codes, scales and the layout's lane arrays), then
 * fill_team writes them from inside a parallel region (orphaned worksharing over (row, 1024-column chunk),
 * no barrier; every element written once, so the result does not depend on the thread count), with the
 * block quantiser of `isa` (a dsv3_isa). */
void dsv3_act_q8_describe(int64_t m, int64_t k, int layout, void *buf, dsv3_act_q8 *out);
void dsv3_act_q8_fill_team(const float *x, int64_t m, int64_t k, int layout, int isa, const dsv3_act_q8 *out);
/* One full block of 32 columns by that rule: d (the codes in q); the AVX2 twin (act_q8_avx2.c, used on the
 * AVX2 and AVX-512 paths) gives the same bits as the scalar one. */
float dsv3_act_q8_block32_scalar(const float *x, int8_t *q);
float dsv3_act_q8_block32_avx2(const float *x, int8_t *q);
/* 1 for the Q8 layouts (DSV3_X_Q8*), 0 otherwise. */
int dsv3_act_layout_is_q8(int layout);

/* Fast kernels (dsv3_lin_kernel signature), referenced by the format table. Definition (every ISA):
 *     y[m, n] = sum over Q8 blocks b of  (sum_{k in b} q[m, k] * code(n, k)) * d[m, b] * s(n, 32b / G)
 * with the integer block dot exact in int32 (+ bias). G (int4 group, int8 whole row) is a multiple of 32. */
void dsv3_q8_int8_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_q8_int4_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_q8_int8_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_q8_int4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_q8_int8_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_q8_int4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
/* Large-M fast kernel (AVX2, int4 weights): Q8 activations in natural order (DSV3_X_Q8), integer dots on
 * weight tiles decoded per K block (gemm_q8_avx2.c); same definition as above. */
void dsv3_gemm_q8_int4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
/* Packed int4 (int4p.h, dsv3_weight.packed): the fast kernels on that layout (x in DSV3_X_Q8_O8; bitwise the
 * same on every ISA, see dot_q8_int4p_scalar.c), the buffer size and the packer (team-callable: orphaned
 * worksharing over row groups, no barrier; every byte of buf written). */
void dsv3_q8_int4p_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_q8_int4p_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_q8_int4p_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
size_t dsv3_int4_packed_bytes(int64_t n, int64_t k, int group);
void dsv3_int4_pack_team(const dsv3_weight *w, void *buf, dsv3_isa isa);
void dsv3_int4_unpack_team(const dsv3_weight *w, void *data, void *scale);
/* The reference for one output over the natural-order columns [k0, k) of row m (k0 a multiple of 32):
 * the SIMD kernels use it for their K tail beyond the last full layout block. */
float dsv3_q8_ref_dot(const dsv3_lin_args *a, int64_t m, int64_t n, int64_t k0);

/* bf16-hi kernels: y = sum_g s(n, g) sum_{k in g} bf16(x[m, k]) * code(n, k) (x rounded once, RNE).
 * AVX-512 versions in gemv_dot_avx512.c (its decoders with the lo part dropped); scalar twin here. */
void dsv3_fast_bf16hi_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemv_bf16_dot1_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
void dsv3_gemv_nvfp4_dot1_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);
/* fp8_block, AVX-512, small M (dot_fp8_avx512.c): the same definition with the e4m3 codes turned into bf16 by
 * shifts (a table path for groups with zero-exponent or NaN codes), x hi in DSV3_X_BF16X2_N128; its own sum order
 * (the twin: dsv3_fast_bf16hi_scalar, within 1e-5 * sum |x| |W|). */
void dsv3_fast_fp8_block_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1);

#endif

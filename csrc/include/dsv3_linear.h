/* Linear layers y = x W^T over weights in any supported storage format.
 * Owned by the quantised-linear work; other modules only call dsv3_linear(), or plan several linears
 * and run them inside one parallel region with dsv3_linear_plan.h.
 * Fields may be added, existing ones are not renamed. */
#ifndef DSV3_LINEAR_H
#define DSV3_LINEAR_H

#include "dsv3.h"

typedef enum {
    DSV3_FMT_F32 = 0,      /* data: float [n, k] */
    DSV3_FMT_BF16 = 1,     /* data: uint16 bf16 bits [n, k] */
    DSV3_FMT_FP8_BLOCK = 2,/* data: e4m3fn [n, k]; scale: float [ceil(n/128), ceil(k/128)] */
    DSV3_FMT_NVFP4 = 3,    /* data: u8 [n, k/2] (low nibble first); scale: e4m3 [n, k/16]; scale2 */
    DSV3_FMT_INT8 = 4,     /* data: int8 [n, k]; scale: float [n] */
    DSV3_FMT_INT4 = 5,     /* data: u8 [n, k/2] packed; scale: float [n, k/group] */
    DSV3_FMT_COUNT
} dsv3_format;

/* Activation precision of a weight's small-M kernels (dsv3_weight.act).
 * EXACT: f32-level (x kept in f32, or bf16 hi + lo); the parity mode.
 * FAST: the format's fast kernel where it has one (dsv3_format_traits.fast): int8/int4 weights take x
 *   quantised per block of 32 columns to int8 (Q8: d = amax/127, q = round-half-even(x/d)) and integer
 *   dots; fp8_block/nvfp4/bf16 on AVX-512 take x rounded once to bf16 (no lo part). Formats/ISAs
 *   without a fast kernel, and large M (the bf16 GEMM), run the exact kernels. */
typedef enum { DSV3_ACT_EXACT = 0, DSV3_ACT_FAST = 1 } dsv3_act;

typedef struct {
    dsv3_format fmt;
    int64_t n, k;       /* logical shape of W: [n, k] */
    const void *data;   /* codes, layout per fmt (see above) */
    const void *scale;  /* per-block / per-channel scales, or NULL */
    float scale2;       /* global scale (nvfp4), else 1 */
    int group;          /* block / group size along k where the format has one */
    int ue8m0;          /* fp8_block: scales are powers of two (informational) */
    const void *packed; /* optional kernel layout prepared by the linear module, or NULL */
    int act;            /* dsv3_act: activation precision the kernels may use for this weight */
    int nan_free;       /* 1: data was checked to hold no NaN code (fp8_block: e4m3 S.1111.111; the model loader's
                         * scan, dsv3_weight_scan_nan), so the fast kernels skip their per-row NaN checks; 0: not
                         * known (the kernels check). A wrong 1 turns NaN weights into finite ones. */
} dsv3_weight;

/* y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]); x float32 [m, k], y float32 [m, n].
 * isa: -1 for the active path. Deterministic: independent of the thread count. */
dsv3_status dsv3_linear(const float *x, int64_t m, const dsv3_weight *w, const float *bias, float *y,
                        int isa, dsv3_error *err);

/* Full entry point. x: float32 (x_bf16 = 0) or bf16 bits (x_bf16 = 1) [m, k].
 * mode DSV3_LINEAR_WEIGHT_ONLY: weights decoded in registers, activations kept in f32 (large M on
 * AVX-512: x and decoded weight tiles in bf16, vdpbf16ps, per-group scales in f32).
 * mode DSV3_LINEAR_DYNAMIC (fp8_block, int8): per-token activation quantisation, DeepSeek act_quant
 * + fp8_gemm for fp8_block (128-wide K groups), symmetric int8 per token with exact int32 dots for int8. */
typedef enum { DSV3_LINEAR_WEIGHT_ONLY = 0, DSV3_LINEAR_DYNAMIC = 1 } dsv3_linear_mode;
dsv3_status dsv3_linear_ex(const void *x, int x_bf16, int64_t m, const dsv3_weight *w, const float *bias,
                           float *y, dsv3_linear_mode mode, int isa, dsv3_error *err);

#endif

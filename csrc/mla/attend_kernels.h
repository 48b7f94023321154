/* Per-ISA leaf kernels of the latent attention (internal to csrc/mla/).
 *
 * Three shapes cover every loop of absorbed and expanded (flash) attention:
 *  - dots: out[i*ldo + j] = a_i . b_j over n values (attention scores: heads or queries x cached
 *    rows, so one loaded row serves several heads);
 *  - wsum: out[i*ldo + r] = sum_{t<T} p[i*ldp + t] * x[t*ldx + r] (q_nope -> latent with W_UK,
 *    the probability-weighted sum of cached rows or values, latent -> v with W_UV^T);
 *  - expsum: x[j] = dsv3_mla_exp(x[j] - m) in place, returning the sum of the new x[j].
 * The summation order is part of the contract, so every ISA gives bitwise identical results and
 * the split of work between threads cannot change them:
 *  - dots: 16 lanes, lane l accumulates elements l, l+16, l+32, ... with fused multiply-adds from
 *    +0, then lanes are added pairwise l + (l+8), l + (l+4), l + (l+2), l + (l+1);
 *  - wsum: each output is one fused multiply-add chain from +0 in ascending t;
 *  - expsum: the exponentials are dsv3_mla_exp below (same operations on every ISA); the sum is
 *    16 lanes of plain additions (lane l takes j = l, l+16, ...) reduced as in dots.
 * The scalar table is the reference (fmaf); SIMD tables must match it exactly. */
#ifndef DSV3_ATTEND_KERNELS_H
#define DSV3_ATTEND_KERNELS_H

#include "dsv3.h"
#include "dsv3_kv_cache.h"
#include "dsv3_linear.h"

#include <math.h>
#include <string.h>

typedef void (*dsv3_mla_dots_fn)(const float *a, int64_t na, int64_t lda, const float *b, int64_t nb,
                                 int64_t ldb, int64_t n, float *out, int64_t ldo);
typedef void (*dsv3_mla_wsum_fn)(const float *p, int64_t np, int64_t ldp, const float *x, int64_t ldx, int64_t T,
                                 int64_t n, float *out, int64_t ldo);
typedef float (*dsv3_mla_expsum_fn)(float *x, int64_t n, float m);
/* dots and wsum with b / x the rows of a bf16 or fp8 latent cache (layout g, rows at `rows`, stride
 * g->row_bytes), converted to f32 in registers: dots_kv over the whole row (n = R + P), wsum_kv over the
 * latent part (n = R). Bit for bit dots / wsum over the rows decoded by dsv3_kv_elem (kv_rows.h). */
typedef void (*dsv3_mla_dots_kv_fn)(const float *a, int64_t na, int64_t lda, const dsv3_kv_layout *g,
                                    const uint8_t *rows, int64_t nb, float *out, int64_t ldo);
typedef void (*dsv3_mla_wsum_kv_fn)(const float *p, int64_t np, int64_t ldp, const dsv3_kv_layout *g,
                                    const uint8_t *rows, int64_t T, float *out, int64_t ldo);

/* wsum over the rows [n0, n0+T) of a weight in its stored format (absorbed attention's W_UK product
 * q_lat = W_UK^T q_nope read from kv_b_proj directly):
 *   out[i*ldo + r] = sum_{t<T} p[i*ldp + t] * W[n0 + t, r]      (i < np, r < w->k)
 * W[n, r] = code(n, r) * group_scale(n, r / G) rounded once to f32 (the format table's scalar decode,
 * what dsv3_dequantize gives), each output one fused multiply-add chain from +0 in ascending t: bit
 * for bit wsum over the dequantised rows, on every ISA (csrc/mla/wsum_rows_*.c). */
typedef void (*dsv3_mla_wsum_rows_fn)(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0,
                                      int64_t T, float *out, int64_t ldo);
void dsv3_wsum_rows_scalar(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0, int64_t T,
                           float *out, int64_t ldo);
void dsv3_wsum_rows_avx2(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0, int64_t T,
                         float *out, int64_t ldo);
void dsv3_wsum_rows_avx512(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0, int64_t T,
                           float *out, int64_t ldo);
/* The scalar twin over columns [c0, c1) only (the SIMD kernels' column tail). */
void dsv3_wsum_rows_cols_scalar(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0,
                                int64_t T, int64_t c0, int64_t c1, float *out, int64_t ldo);

typedef struct {
    dsv3_mla_dots_fn dots;
    dsv3_mla_wsum_fn wsum;
    dsv3_mla_expsum_fn expsum;
    dsv3_mla_dots_kv_fn dots_kv;
    dsv3_mla_wsum_kv_fn wsum_kv;
    dsv3_mla_wsum_rows_fn wsum_rows;
} dsv3_attend_kernels;

extern const dsv3_attend_kernels dsv3_attend_scalar;
extern const dsv3_attend_kernels dsv3_attend_avx2;
extern const dsv3_attend_kernels dsv3_attend_avx512;

/* The table for a resolved ISA. */
const dsv3_attend_kernels *dsv3_attend_table(dsv3_isa isa);

/* exp(x) for x <= 0 (softmax arguments x - max), within 2 ulp of expf for x >= -87; below -87 it
 * returns exp(-87) (~1.6e-38, nothing next to the max term's 1). Cephes' expf reduction and
 * polynomial, written as one sequence of single-rounding operations that the SIMD twins repeat:
 * n = round(x log2 e) by the 1.5 * 2^23 shift, r = x - n ln2 in two fmas, p(r) by Horner in fmas,
 * scaled by 2^n built in the exponent bits. */
#define DSV3_EXP_MIN (-87.0f)
#define DSV3_EXP_LOG2E 1.44269504088896341f
#define DSV3_EXP_SHIFT 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer, to nearest even */
#define DSV3_EXP_LN2_HI 0.693359375f
#define DSV3_EXP_LN2_LO (-2.12194440e-4f)
#define DSV3_EXP_P0 1.9875691500e-4f
#define DSV3_EXP_P1 1.3981999507e-3f
#define DSV3_EXP_P2 8.3334519073e-3f
#define DSV3_EXP_P3 4.1665795894e-2f
#define DSV3_EXP_P4 1.6666665459e-1f
#define DSV3_EXP_P5 5.0000001201e-1f

static inline float dsv3_mla_exp(float x)
{
    x = x > DSV3_EXP_MIN ? x : DSV3_EXP_MIN;
    const float n = fmaf(x, DSV3_EXP_LOG2E, DSV3_EXP_SHIFT) - DSV3_EXP_SHIFT;
    float r = fmaf(n, -DSV3_EXP_LN2_HI, x);
    r = fmaf(n, -DSV3_EXP_LN2_LO, r);
    float p = DSV3_EXP_P0;
    p = fmaf(p, r, DSV3_EXP_P1);
    p = fmaf(p, r, DSV3_EXP_P2);
    p = fmaf(p, r, DSV3_EXP_P3);
    p = fmaf(p, r, DSV3_EXP_P4);
    p = fmaf(p, r, DSV3_EXP_P5);
    p = fmaf(p, r * r, r);
    p = p + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#endif

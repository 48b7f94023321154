/* Per-ISA leaf kernels of the latent attention (internal to csrc/mla/).
 *
 * Two shapes cover every loop of absorbed attention:
 *  - dots: out[i*ldo + j] = a_i . b_j over n values (attention scores; a = per-head queries in
 *    latent space, b = cached 576-wide rows, so one cached row serves all heads);
 *  - wsum: out[i*ldo + r] = sum_{t<T} p[i*ldp + t] * x[t*ldx + r] (q_nope -> latent with W_UK,
 *    the probability-weighted sum of cached rows, latent -> v with W_UV^T).
 * The summation order is part of the contract, so every ISA gives bitwise identical results and
 * the split of work between threads cannot change them:
 *  - dots: 16 lanes, lane l accumulates elements l, l+16, l+32, ... with fused multiply-adds from
 *    +0, then lanes are added pairwise l + (l+8), l + (l+4), l + (l+2), l + (l+1);
 *  - wsum: each output is one fused multiply-add chain from +0 in ascending t.
 * The scalar table is the reference (fmaf); SIMD tables must match it exactly. */
#ifndef DSV3_ATTEND_KERNELS_H
#define DSV3_ATTEND_KERNELS_H

#include "dsv3.h"

typedef void (*dsv3_mla_dots_fn)(const float *a, int64_t na, int64_t lda, const float *b, int64_t nb,
                                 int64_t ldb, int64_t n, float *out, int64_t ldo);
typedef void (*dsv3_mla_wsum_fn)(const float *p, int64_t np, int64_t ldp, const float *x, int64_t ldx, int64_t T,
                                 int64_t n, float *out, int64_t ldo);

typedef struct {
    dsv3_mla_dots_fn dots;
    dsv3_mla_wsum_fn wsum;
} dsv3_attend_kernels;

extern const dsv3_attend_kernels dsv3_attend_scalar;
extern const dsv3_attend_kernels dsv3_attend_avx512;

/* The table for a resolved ISA (avx2 runs the scalar reference for now). */
const dsv3_attend_kernels *dsv3_attend_table(dsv3_isa isa);

#endif

/* Elementwise and row ops of the DeepSeek forward pass, f32 activations (csrc/ops/).
 *
 * These are the building blocks the attention, MoE and model code call; they cannot fail, so they
 * return void (their callers validate shapes). Every reduction runs in a fixed order, so results do
 * not depend on the thread count. Semantics follow transformers (its fp32 RoPE/YaRN and RMSNorm).
 */
#ifndef DSV3_OPS_H
#define DSV3_OPS_H

#include "dsv3.h"

/* y[i] = w * (x[i] * rsqrt(mean(x[i]^2) + eps)) for m rows of n values; y may alias x. */
void dsv3_rmsnorm_f32(const float *x, int64_t m, int64_t n, const float *w, float eps, float *y);

/* cos/sin for s positions, `half` = rope_dim / 2 frequencies, as transformers' rotary embedding:
 * angle = (float)pos * inv_freq (f32), cos/sin in f32, then * scaling. Output [s, half] each (the
 * module returns cat(freqs, freqs); only the first half is stored). */
void dsv3_rope_cos_sin(const int64_t *pos, int64_t s, const float *inv_freq, int64_t half, float scaling,
                       float *cos_out, float *sin_out);

/* Rotate one vector t of 2*half values in place with per-frequency cos/sin [half].
 * interleave = 1: pairs (t[2j], t[2j+1]), written de-interleaved as transformers does:
 *   out[j] = t[2j] c - t[2j+1] s, out[half+j] = t[2j+1] c + t[2j] s;
 * interleave = 0: pairs (t[j], t[j+half]) (rotate_half form). tmp: 2*half floats of scratch. */
void dsv3_rope_apply(float *t, int64_t half, const float *cos_j, const float *sin_j, int interleave, float *tmp);

/* In-place softmax over n values (max-subtracted, f32). */
void dsv3_softmax_f32(float *x, int64_t n);

/* silu(x) = x / (1 + exp(-x)). */
float dsv3_silu_f32(float x);
/* g[i] = silu(g[i]) * u[i] for n values. */
void dsv3_silu_mul_f32(float *g, const float *u, int64_t n);

/* Fixed-order dot product of n floats (the scalar reference of attention dot products). */
float dsv3_dot_f32(const float *a, const float *b, int64_t n);

#endif

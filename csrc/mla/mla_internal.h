/* Attention cores shared inside csrc/mla/ (q already projected and rotated; cache already written). */
#ifndef DSV3_MLA_INTERNAL_H
#define DSV3_MLA_INTERNAL_H

#include "dsv3_mla.h"

/* Absorbed attention computes the probabilities of a block of tokens at a time so that they stay
 * within this many floats (16 MiB), or one token's [heads, rows] when that alone is larger. */
#define DSV3_MLA_P_BUDGET ((int64_t)1 << 22)

/* Tokens per probability block for s tokens over T cached rows. */
static inline int64_t dsv3_mla_token_block(int64_t heads, int64_t s, int64_t T)
{
    int64_t ib = DSV3_MLA_P_BUDGET / (heads * T);
    return ib < 1 ? 1 : ib > s ? s : ib;
}

/* q [s, heads, nope+rope]; cache rows [0, past+s); attn out [s, heads*v]; ws reserved for (s, past+s). */
dsv3_status dsv3_mla_attend_naive(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q, int64_t s,
                                  const float *cache, int64_t past, float *attn, dsv3_mla_scratch *ws, int isa,
                                  dsv3_error *err);
dsv3_status dsv3_mla_attend_absorbed(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q,
                                     int64_t s, const float *cache, int64_t past, float *attn,
                                     dsv3_mla_scratch *ws, int isa, dsv3_error *err);

/* The pieces of dsv3_mla_forward, for callers that project many sequences' tokens at once (the
 * batched engine, csrc/model/batch.c):
 *   project_q: q [s, heads*(nope+rope)] with the rope part of every head rotated; qa: [s, q_lora] scratch;
 *   finish_latent: rows [s, kv_lora+rope] holding kv_a_proj(x) (+ bias) become cache rows in place
 *   (kv_a_layernorm on c, rope on k_pe). */
dsv3_status dsv3_mla_project_q(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *x, int64_t s,
                               const float *cos_j, const float *sin_j, float *q, float *qa, int isa, dsv3_error *err);
void dsv3_mla_finish_latent(const dsv3_mla_dims *d, const dsv3_mla_weights *w, float *rows, int64_t s,
                            const float *cos_j, const float *sin_j);

#endif

/* Attention cores shared inside csrc/mla/ (q already projected and rotated; cache already written). */
#ifndef DSV3_MLA_INTERNAL_H
#define DSV3_MLA_INTERNAL_H

#include "dsv3_mla.h"

/* q [s, heads, nope+rope]; cache rows [0, past+s); attn out [s, heads*v]. */
dsv3_status dsv3_mla_attend_naive(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q, int64_t s,
                                  const float *cache, int64_t past, float *attn, int isa, dsv3_error *err);
dsv3_status dsv3_mla_attend_absorbed(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q,
                                     int64_t s, const float *cache, int64_t past, float *attn, int isa,
                                     dsv3_error *err);

#endif

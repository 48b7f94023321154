/* DeepSeek-V3.2 in the batched engine (csrc/model/batch_v32.c): each slot's index-key cache and the
 * sparse attention core of a step. Private to csrc/model/batch.c and batch_mtp.c, which own one
 * dsv3_batch_index per V3.2 batch (index_topk > 0; the main layers' / the MTP layer's) and call these beside
 * their latent caches. */
#ifndef DSV3_BATCH_V32_H
#define DSV3_BATCH_V32_H

#include "dsv3_batch.h"
#include "mla/mla_internal.h"

typedef struct dsv3_batch_index dsv3_batch_index;

/* The index-key caches of `slots` slots of `cap` rows for each of the nlayers layers [0, nlayers) of
 * `layers` (borrowed: the model's main layers, or its MTP layer alone; f32 or FP8 rows,
 * dsv3_indexer_key_row), plus the step's selection scratch. *out stays NULL for a model without an
 * indexer (index_topk 0). */
dsv3_status dsv3_batch_index_create(const dsv3_model *m, const dsv3_layer *layers, int64_t nlayers, int64_t slots,
                                    int64_t cap, dsv3_batch_index **out, dsv3_error *err);
void dsv3_batch_index_free(dsv3_batch_index *x);

/* Slot dst's first n index-key rows of every layer become slot src's (dsv3_batch_copy_prefix). */
void dsv3_batch_index_copy(dsv3_batch_index *x, int64_t src, int64_t dst, int64_t n);

/* The attention core of layer l (of the layers given at creation) for a step of V3.2 sparse attention, in place of dsv3_mla_attend_many:
 * x [t, hidden] the attention input, cs the step's cos | sin [t, rope/2] (batch.c step_rope), the q
 * projection done (m->ws.mla.q, and its LoRA latent m->ws.mla.qa), each sequence's latent rows stored and
 * segs[i] = {its slot's cache, past, n, off} for seqs[i] (one per sequence, a verification chunk's too).
 * Writes each sequence's index keys at rows [past, past+n) of its slot, then m->ws.mla.attn [t, heads*v]:
 * every token as dsv3_mla_forward_indexed computes it alone (dense causal while it sees at most index_topk
 * rows, else over the rows its indexer selects among its own slot's keys), the tokens of a
 * DSV3_BATCH_VERIFY chunk each as its one-token decode step does. */
dsv3_status dsv3_batch_index_attend(dsv3_batch_index *x, dsv3_model *m, int64_t l, const dsv3_batch_seq *seqs,
                                    const dsv3_mla_seg *segs, int64_t nseq, const float *xin, int64_t t,
                                    const float *cs, int isa, dsv3_error *err);

#endif

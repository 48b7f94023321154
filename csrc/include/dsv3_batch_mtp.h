/* The MTP layer's latent caches of the batched engine's slots (csrc/model/batch_mtp.c): speculative
 * decoding with DeepSeek's MTP layer as the draft model for many sequences (dsv3/engine_spec.py).
 *
 * A dsv3_batch_mtp is a pool of `slots` MTP caches of `slot_capacity` rows over a prepared model loaded
 * with its MTP layer (dsv3_model_enable_mtp); it borrows the layer's weights and the model's workspace, like
 * dsv3_batch. Slot i here goes with slot i of the engine's dsv3_batch; the engine keeps them in step
 * (release, truncate after a rejected draft, prefix copy). The layer's forward and its inputs are the ones
 * of dsv3_mtp_forward (dsv3_mtp.h): row j of a sequence is position p = length(slot) + j, with the token
 * t_{p+1} in ids and the main model's hidden state h_p (or a chained step's g) in hidden_in.
 *
 * One call runs the layer over every sequence of a step as dsv3_batch_forward runs the main layers: eh_proj,
 * norms, the attention projections, MoE / MLP and the head over all the step's rows at once (the layer's
 * weights read once for all sequences), the attention core of each sequence over its slot's cache in the
 * form it would take alone; a sequence's rows are bitwise those of dsv3_mtp_forward on it alone under the
 * same condition as dsv3_batch.h's (dsv3_linear's kernel not changing with the row count). The main
 * model's verification of every sequence's drafts is one ragged step (dsv3_batch.h, DSV3_BATCH_VERIFY). */
#ifndef DSV3_BATCH_MTP_H
#define DSV3_BATCH_MTP_H

#include "dsv3_batch.h"

typedef struct dsv3_batch_mtp dsv3_batch_mtp;

/* slots * slot_capacity rows of dsv3_model_kv_layout(m) (the MTP layer is one layer). DeepSeek-V3.2
 * (index_topk > 0): each slot also caches the MTP layer's index keys (kept in step with its latent rows by
 * copy_prefix / truncate / release) and the layer attends sparsely as a main V3.2 layer does (batch_v32.h). */
dsv3_status dsv3_batch_mtp_create(dsv3_model *m, int64_t slots, int64_t slot_capacity, dsv3_batch_mtp **out,
                                  dsv3_error *err);
void dsv3_batch_mtp_free(dsv3_batch_mtp *b);
int64_t dsv3_batch_mtp_slots(const dsv3_batch_mtp *b);
int64_t dsv3_batch_mtp_capacity(const dsv3_batch_mtp *b);
/* Positions cached in a slot (-1 for a bad slot). */
int64_t dsv3_batch_mtp_length(const dsv3_batch_mtp *b, int64_t slot);
/* Slot dst holds the first n cached positions of slot src (src == dst: truncate; n = 0: release). */
dsv3_status dsv3_batch_mtp_copy_prefix(dsv3_batch_mtp *b, int64_t src, int64_t dst, int64_t n, dsv3_error *err);

/* The MTP layer over each sequence's n new positions after its slot's cached ones (seqs as dsv3_batch_forward:
 * distinct slots, logits mode none / last / all; DSV3_BATCH_VERIFY is not accepted here). ids [sum n],
 * hidden_in [sum n, hidden]; logits [out_rows, vocab] (NULL when out_rows is 0); hidden_out (NULL: not asked)
 * [out_rows, hidden]: the g rows (shared_head.norm output, the input of a chained step) of the same rows.
 * On failure no slot's length changes. */
dsv3_status dsv3_batch_mtp_forward(dsv3_batch_mtp *b, const int64_t *ids, const float *hidden_in,
                                   const dsv3_batch_seq *seqs, int64_t nseq, float *logits, float *hidden_out,
                                   int isa, dsv3_error *err);

#endif

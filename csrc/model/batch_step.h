/* What the batched engine's two ragged forwards share (csrc/model/batch_step.c): the main model's step
 * (batch.c, dsv3_batch.h) and the MTP layer's (batch_mtp.c, dsv3_batch_mtp.h) both keep a pool of sequence
 * slots with latent caches, check a step's sequences the same way, give each token the rope of its own
 * position, run an MLA layer's attention with the projections over all the step's tokens and each
 * sequence's core over its own slot, and run a norm and a head over the rows asked. Private to those files. */
#ifndef DSV3_BATCH_STEP_H
#define DSV3_BATCH_STEP_H

#include "dsv3_batch.h"
#include "mla/mla_internal.h"
#include "model/batch_v32.h"

/* `slots` sequences, each with `layers` latent caches of `cap` rows of the model's kv layout and a length.
 * `what` names the owner in messages ("batch", "batch MTP"). */
typedef struct {
    const char *what;
    int64_t slots, layers, cap;
    dsv3_kv_layout kv;
    uint8_t *cache; /* owned: [slots, layers, cap] rows of kv.row_bytes */
    int64_t *len;   /* owned: [slots] tokens cached */
} dsv3_slot_pool;

/* The rows of m's kv layout; the pool is zeroed on failure (dsv3_slot_pool_free is safe either way). */
dsv3_status dsv3_slot_pool_init(dsv3_slot_pool *p, const dsv3_model *m, int64_t slots, int64_t layers, int64_t cap,
                                const char *what, dsv3_error *err);
void dsv3_slot_pool_free(dsv3_slot_pool *p);
/* Slot's length (-1 for a bad slot). */
int64_t dsv3_slot_pool_length(const dsv3_slot_pool *p, int64_t slot);
uint8_t *dsv3_slot_pool_rows(const dsv3_slot_pool *p, int64_t slot, int64_t layer);
/* Checks the slots and n (n <= length(src)), copies n rows of every layer, sets length(dst) = n. */
dsv3_status dsv3_slot_pool_copy_prefix(dsv3_slot_pool *p, int64_t src, int64_t dst, int64_t n, dsv3_error *err);

/* Output rows of one sequence: its last dsv3_batch_seq_logits_rows (logits) / _hidden_rows new tokens. */
int64_t dsv3_batch_seq_logits_rows(const dsv3_batch_seq *q);
int64_t dsv3_batch_seq_hidden_rows(const dsv3_batch_seq *q);

/* Scratch a step grows and keeps: the normed logits rows and the attention core's segments. */
typedef struct {
    float *sel;         /* [sel_cap, hidden] */
    int64_t sel_cap;
    dsv3_mla_seg *segs; /* [segs_cap] */
    int64_t segs_cap;
} dsv3_batch_scratch;

void dsv3_batch_scratch_free(dsv3_batch_scratch *s);

/* The start of a step, every argument checked before anything runs: slots distinct and in range, n >= 1 and
 * fitting, logits modes in [0, max_mode], ids in the vocabulary, a logits buffer when rows are asked; then
 * the model's workspace and s grown (one segment per sequence, one per token of a verification chunk) and
 * the rope tables of each token's own position (its slot's length + index) built. Returns the step's
 * tokens in *t and cos | sin [t, rope/2] in *cs. */
dsv3_status dsv3_batch_step_begin(dsv3_model *m, const dsv3_slot_pool *p, dsv3_batch_scratch *s, const int64_t *ids,
                                  const dsv3_batch_seq *seqs, int64_t nseq, int64_t max_mode, const float *logits,
                                  int64_t *t, const float **cs, dsv3_error *err);

/* The attention of one MLA layer over the step (dsv3_mla_forward's steps, csrc/mla/mla.c, with the
 * projections over all t tokens): each sequence's latent rows stored in its slot's cache of pool layer
 * `layer`, each sequence's core over that cache in the form it would take alone (a verification chunk's
 * tokens each as its decode step); index (V3.2, else NULL): the sparse core of model layer `layer`
 * (batch_v32.h). x, out [t, hidden]; cs: dsv3_batch_step_begin's. */
dsv3_status dsv3_batch_attention(dsv3_model *m, const dsv3_mla_weights *w, const dsv3_slot_pool *p, int64_t layer,
                                 dsv3_batch_index *index, dsv3_batch_scratch *s, const dsv3_batch_seq *seqs,
                                 int64_t nseq, const float *x, int64_t t, const float *cs, float *out, int isa,
                                 dsv3_error *err);

/* The end of a step: norm (weight norm_w) of the hidden rows of h [t, hidden] into hidden (NULL: not asked)
 * and of the logits rows through head into logits (dsv3_batch.h's row order). */
dsv3_status dsv3_batch_step_outputs(dsv3_model *m, dsv3_batch_scratch *s, const dsv3_batch_seq *seqs, int64_t nseq,
                                    const float *h, const float *norm_w, const dsv3_weight *head, float *logits,
                                    float *hidden, int isa, dsv3_error *err);

/* Each sequence's slot length += its n (after a successful step). */
void dsv3_slot_pool_advance(dsv3_slot_pool *p, const dsv3_batch_seq *seqs, int64_t nseq);

#endif

/* The batched engine (csrc/model/batch.c): one forward call over a ragged batch of sequences.
 *
 * A dsv3_batch is a pool of sequence slots over one prepared dsv3_model (it borrows the weights
 * and the model's workspace: do not run the model and its batch at the same time). Each slot owns a
 * latent KV cache of `slot_capacity` rows per layer and its length (the position of its next token).
 * A step lists sequences (slot, n new tokens, which logits to return); their tokens are concatenated
 * in the ids array. Sequences join (a free slot's first step is its prefill, possibly in chunks) and
 * leave (dsv3_batch_release) between steps, so prefill chunks and decode tokens share a step.
 *
 * Per layer: RMSNorm and the attention projections (q_a, q_b, kv_a, o_proj) over all the step's
 * tokens at once, the attention core of each sequence over its slot's cache and past in the form it
 * would take alone (the steps of dsv3_mla_forward, csrc/mla/mla_internal.h), the absorbed-form ones
 * (decode tokens) in one call that reads W_UK/W_UV once for all of them (dsv3_mla_attend_many), then
 * the dense MLP / MoE over all the step's tokens (each expert's weights read once for every sequence). Every operation works row by row in a fixed
 * order, so a sequence's results do not depend on the other sequences of the step: bitwise equal to
 * dsv3_model_forward where dsv3_linear's kernel choice does not change with the row count (f32
 * weights, or fewer rows than its GEMM threshold: on AVX-512 32 for bf16, 24 for fp8_block; on AVX2 12,
 * linear.c GEMM_MIN_M*; every small-M kernel computes a row the same way whatever the rows beside it).
 */
#ifndef DSV3_BATCH_H
#define DSV3_BATCH_H

#include "dsv3_model.h"

typedef struct {
    int64_t slot;    /* in [0, slots) */
    int64_t n;       /* new tokens (>= 1), appended at the slot's length */
    int64_t logits;  /* dsv3_logits_mode: output rows for none / the last / every new token; DSV3_BATCH_VERIFY;
                      * or none / last plus DSV3_BATCH_HIDDEN_ALL */
} dsv3_batch_seq;

/* logits mode of a speculative verification chunk (dsv3_batch_mtp.h): output rows for every new token, and
 * each token's attention core runs as the one-token decode step at its position computes it (as
 * dsv3_model_forward_hidden's step_attention; for V3.2 each token selects its own top-k over its own prefix),
 * so row j is bitwise the logits decoding would give there. */
#define DSV3_BATCH_VERIFY 3
/* added to DSV3_LOGITS_NONE or DSV3_LOGITS_LAST (modes 4 and 5): hidden rows for every new token while the logits
 * stay none / the last one (a speculative engine's prefill: the MTP layer reads the main model's hidden state at
 * every prompt position, the sampler only the last position's logits). */
#define DSV3_BATCH_HIDDEN_ALL 4

typedef struct dsv3_batch dsv3_batch;

/* A pool of `slots` sequences of up to `slot_capacity` tokens each over prepared model m (which
 * must outlive the batch). Allocates slots * slot_capacity * dsv3_batch_token_bytes(m) bytes of caches.
 * DeepSeek-V3.2 (index_topk > 0): each slot also caches its tokens' index keys, and each token attends
 * to the rows its indexer selects among its own sequence's, as dsv3_model_forward. */
dsv3_status dsv3_batch_create(dsv3_model *m, int64_t slots, int64_t slot_capacity, dsv3_batch **out,
                              dsv3_error *err);
void dsv3_batch_free(dsv3_batch *b);
/* Cache bytes of one token over all layers, in a slot as in the model's own cache: its latent row (the
 * kv_cache_dtype layout) plus, for V3.2, its index-key row (csrc/model/batch_v32.c); with_mtp also counts
 * the MTP layer's rows when the model has that layer (a speculative engine's per-slot MTP cache,
 * dsv3_batch_mtp.h, and the model's own MTP cache). The one count of a token's cache bytes. */
int64_t dsv3_batch_token_bytes(const dsv3_model *m, int with_mtp);

int64_t dsv3_batch_slots(const dsv3_batch *b);
int64_t dsv3_batch_capacity(const dsv3_batch *b);
/* Tokens cached in a slot (-1 for a bad slot). */
int64_t dsv3_batch_length(const dsv3_batch *b, int64_t slot);
/* Forget a slot's tokens (the sequence left); its cache rows are reused by the next one. */
dsv3_status dsv3_batch_release(dsv3_batch *b, int64_t slot, dsv3_error *err);

/* Slot dst holds the first n cached tokens of slot src (their cache rows, and V3.2 index keys, copied
 * for every layer; src == dst keeps the first n of its own): a prefix cache for prompts that start with
 * tokens another slot already holds. n in [0, length(src)]; dst's later rows are forgotten. */
dsv3_status dsv3_batch_copy_prefix(dsv3_batch *b, int64_t src, int64_t dst, int64_t n, dsv3_error *err);
/* Cache rollback: keep the first `length` (<= its length) tokens of a slot (rejected draft tokens);
 * dsv3_batch_copy_prefix(b, slot, slot, length). */
dsv3_status dsv3_batch_truncate(dsv3_batch *b, int64_t slot, int64_t length, dsv3_error *err);

/* Logits rows of a step: sum over sequences of 0 / 1 / n by their logits mode (modes 4 / 5: 0 / 1). */
int64_t dsv3_batch_out_rows(const dsv3_batch_seq *seqs, int64_t nseq);
/* Hidden rows of a step: a sequence's logits rows, or its n rows with DSV3_BATCH_HIDDEN_ALL. */
int64_t dsv3_batch_hidden_rows(const dsv3_batch_seq *seqs, int64_t nseq);

/* One step. ids [sum n]: the sequences' new tokens in order. logits [out_rows, vocab] (NULL when
 * out_rows is 0); hidden (NULL: not asked) [hidden_rows, hidden]: the final-norm hidden states of the
 * hidden rows (the logits rows, or every new token of a DSV3_BATCH_HIDDEN_ALL sequence); only the logits
 * rows go through the head. Slots must be distinct; each slot's length + n must fit in slot_capacity. On failure no
 * slot's length changes (cache rows past a length are never read). */
dsv3_status dsv3_batch_forward(dsv3_batch *b, const int64_t *ids, const dsv3_batch_seq *seqs, int64_t nseq,
                               float *logits, float *hidden, int isa, dsv3_error *err);

#endif

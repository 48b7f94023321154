/* Helpers shared inside csrc/model/ (the single-sequence forward and the batched engine). */
#ifndef DSV3_MODEL_INTERNAL_H
#define DSV3_MODEL_INTERNAL_H

#include "dsv3_model.h"

/* h [s, hidden] = the embedding rows of ids [s] (ids already checked against the vocabulary). */
void dsv3_model_embed_rows(const dsv3_model *m, const int64_t *ids, int64_t s, float *h);

/* The second half of a decoder layer, after its attention wrote o [s, hidden]: h += o, then
 * h += ffn(post_attention_layernorm(h)) (dense MLP or MoE). a, o: [s, hidden] temporaries. */
dsv3_status dsv3_model_residual_ffn(dsv3_model *m, dsv3_layer *ly, float *h, int64_t s, float *a, float *o, int isa,
                                    dsv3_error *err);

/* One call of the model (forward, a batch step, a probe): the thread count pinned and the workspace's
 * linear arena bound for its whole duration (issue 9 defect 1: scratch sized for one count is used
 * with that count); undone by dsv3_model_call_end. */
typedef struct {
    int pin;
    dsv3_lin_arena *prev;
} dsv3_model_call;
dsv3_model_call dsv3_model_call_begin(dsv3_model *m);
void dsv3_model_call_end(dsv3_model_call c);

#endif

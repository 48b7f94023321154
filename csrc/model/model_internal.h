/* Helpers shared inside csrc/model/ (the single-sequence forward and the batched engine). */
#ifndef DSV3_MODEL_INTERNAL_H
#define DSV3_MODEL_INTERNAL_H

#include "dsv3_model.h"

/* Repacks the fast-precision weights of slots that have a packed kernel layout into m->packed (pack_weights.c). */
dsv3_status dsv3_model_pack(dsv3_model *m, const dsv3_tensor_slot *slots, int64_t count, dsv3_error *err);
/* 1 when w's packed layout is one m packed at load (inside m->packed), 0 when it is absent or read from the
 * checkpoint (a dsv3 convert --pack checkpoint). */
static inline int dsv3_model_packed_at_load(const dsv3_model *m, const dsv3_weight *w)
{
    const unsigned char *own = (const unsigned char *)m->packed, *p = (const unsigned char *)w->packed;
    return own && p && p >= own && p < own + m->packed_bytes;
}
/* After packing: page tables of the weights read in place filled (populate_weights.c); advisory. */
void dsv3_model_populate(const dsv3_model *m, const dsv3_tensor_slot *slots, int64_t count);

/* h [s, hidden] = the embedding rows of ids [s] (ids already checked against the vocabulary). */
void dsv3_model_embed_rows(const dsv3_model *m, const int64_t *ids, int64_t s, float *h);
/* The same from embedding table e [vocab, D] (f32 or bf16). */
void dsv3_embed_rows(const dsv3_weight *e, int64_t D, const int64_t *ids, int64_t s, float *h);

/* The second half of a decoder layer, after its attention wrote o [s, hidden]: h += o, then
 * h += ffn(post_attention_layernorm(h)) (dense MLP or MoE). a, o: [s, hidden] temporaries. */
dsv3_status dsv3_model_residual_ffn(dsv3_model *m, dsv3_layer *ly, float *h, int64_t s, float *a, float *o, int isa,
                                    dsv3_error *err);

/* cos/sin [s, rope/2] for positions start.., in the workspace (reserved for s tokens). */
const float *dsv3_model_rope_tables(dsv3_model *m, int64_t start, int64_t s);

/* h [s, hidden] in place: h += attn(ln1(h)); h += ffn(ln2(h)). tmp: 2 * s * hidden floats; cs: rope tables of
 * the positions start... With use_cache the layer's cache rows [0, start) are read and [start, start+s) written. */
dsv3_status dsv3_model_decoder_layer(dsv3_model *m, dsv3_layer *ly, float *h, int64_t s, int64_t start, int use_cache,
                                     const float *cs, float *tmp, int isa, dsv3_error *err);

/* dsv3_mla_forward's steps with the attention core run once per token, each as the one-token decode step
 * at its position computes it (csrc/model/mtp.c): x, out [s, hidden]; cache rows [0, past) are read and
 * [past, past+s) written. (V3.2's sparse attention does the same in dsv3_mla_forward_indexed_steps.) */
dsv3_status dsv3_model_attention_per_token(dsv3_model *m, dsv3_layer *ly, const float *x, int64_t s,
                                           const float *cos_j, const float *sin_j, void *cache, int64_t past,
                                           float *out, int isa, dsv3_error *err);

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

/* The batched engine: a pool of sequence slots, each with its own latent cache, and one forward
 * call over a ragged batch (see dsv3_batch.h). The attention projections, norms, MLP/MoE and the head
 * run over all the step's tokens at once; the attention core runs each sequence over its own cache, the
 * decode tokens of all sequences in one call (W_UK / W_UV read once per step, dsv3_mla_attend_many). */
#include "dsv3_batch.h"
#include "dsv3_ops.h"
#include "model/batch_step.h"
#include "model/model_internal.h"

#include <string.h>

struct dsv3_batch {
    dsv3_model *m;           /* borrowed: weights and workspace */
    dsv3_slot_pool pool;     /* the slots' latent caches: [slots, layers, cap] rows, and their lengths */
    dsv3_batch_scratch step; /* the step's output rows and attention segments */
    dsv3_batch_index *index; /* owned, V3.2 only: the slots' index-key caches (csrc/model/batch_v32.c) */
};

dsv3_status dsv3_batch_create(dsv3_model *m, int64_t slots, int64_t slot_capacity, dsv3_batch **out,
                              dsv3_error *err)
{
    *out = NULL;
    if (!m || !m->prepared)
        return dsv3_fail(err, DSV3_E_VALUE, "batch: the model is not prepared");
    dsv3_batch *b = dsv3_alloc(sizeof *b);
    if (!b)
        return dsv3_fail(err, DSV3_E_NOMEM, "batch: out of memory");
    memset(b, 0, sizeof *b);
    b->m = m;
    dsv3_status st = dsv3_slot_pool_init(&b->pool, m, slots, m->cfg.num_hidden_layers, slot_capacity, "batch", err);
    if (st == DSV3_OK)
        st = dsv3_batch_index_create(m, m->layers, m->cfg.num_hidden_layers, slots, slot_capacity, &b->index,
                                     err); /* V3.2 */
    if (st != DSV3_OK) {
        dsv3_batch_free(b);
        return st;
    }
    *out = b;
    return DSV3_OK;
}

void dsv3_batch_free(dsv3_batch *b)
{
    if (!b)
        return;
    dsv3_slot_pool_free(&b->pool);
    dsv3_batch_scratch_free(&b->step);
    dsv3_batch_index_free(b->index);
    dsv3_free(b);
}

int64_t dsv3_batch_slots(const dsv3_batch *b) { return b->pool.slots; }
int64_t dsv3_batch_capacity(const dsv3_batch *b) { return b->pool.cap; }
int64_t dsv3_batch_length(const dsv3_batch *b, int64_t slot) { return dsv3_slot_pool_length(&b->pool, slot); }

dsv3_status dsv3_batch_release(dsv3_batch *b, int64_t slot, dsv3_error *err)
{
    if (slot < 0 || slot >= b->pool.slots)
        return dsv3_fail(err, DSV3_E_VALUE, "batch: slot %lld out of range [0, %lld)", (long long)slot,
                         (long long)b->pool.slots);
    b->pool.len[slot] = 0;
    return DSV3_OK;
}

dsv3_status dsv3_batch_copy_prefix(dsv3_batch *b, int64_t src, int64_t dst, int64_t n, dsv3_error *err)
{
    const dsv3_status st = dsv3_slot_pool_copy_prefix(&b->pool, src, dst, n, err);
    if (st == DSV3_OK)
        dsv3_batch_index_copy(b->index, src, dst, n); /* V3.2: the index keys of the same rows */
    return st;
}

dsv3_status dsv3_batch_truncate(dsv3_batch *b, int64_t slot, int64_t length, dsv3_error *err)
{
    return dsv3_batch_copy_prefix(b, slot, slot, length, err);
}

/* h [t, hidden] in place through one layer; a, o: [t, hidden] temporaries. */
static dsv3_status layer_step(dsv3_batch *b, int64_t l, const dsv3_batch_seq *seqs, int64_t nseq, float *h,
                              int64_t t, const float *cs, float *a, float *o, int isa, dsv3_error *err)
{
    dsv3_model *m = b->m;
    dsv3_layer *ly = &m->layers[l];
    const int64_t D = m->cfg.hidden_size;
    dsv3_rmsnorm_f32(h, t, D, ly->input_layernorm.f32, m->cfg.rms_norm_eps, a);
    const dsv3_status st = dsv3_batch_attention(m, &ly->attn, &b->pool, l, b->index, &b->step, seqs, nseq, a, t, cs,
                                                o, isa, err);
    return st == DSV3_OK ? dsv3_model_residual_ffn(m, ly, h, t, a, o, isa, err) : st; /* as forward's layer */
}

static dsv3_status batch_forward_pinned(dsv3_batch *b, const int64_t *ids, const dsv3_batch_seq *seqs, int64_t nseq,
                                       float *logits, float *hidden, int isa, dsv3_error *err)
{
    dsv3_model *m = b->m;
    const dsv3_model_config *c = &m->cfg;
    int64_t t = 0;
    const float *cs = NULL;
    dsv3_status st = dsv3_batch_step_begin(m, &b->pool, &b->step, ids, seqs, nseq,
                                           DSV3_BATCH_HIDDEN_ALL + DSV3_LOGITS_LAST, logits, &t, &cs, err);
    if (st != DSV3_OK)
        return st;
    const int64_t D = c->hidden_size;
    float *h = m->ws.h, *a = h + t * D, *o = a + t * D;
    dsv3_model_embed_rows(m, ids, t, h);
    for (int64_t l = 0; l < c->num_hidden_layers && st == DSV3_OK; l++)
        st = layer_step(b, l, seqs, nseq, h, t, cs, a, o, isa, err);
    if (st == DSV3_OK)
        st = dsv3_batch_step_outputs(m, &b->step, seqs, nseq, h, m->norm.f32,
                                     c->tie_word_embeddings ? &m->embed : &m->lm_head, logits, hidden, isa, err);
    if (st == DSV3_OK)
        dsv3_slot_pool_advance(&b->pool, seqs, nseq);
    return st;
}

dsv3_status dsv3_batch_forward(dsv3_batch *b, const int64_t *ids, const dsv3_batch_seq *seqs, int64_t nseq,
                               float *logits, float *hidden, int isa, dsv3_error *err)
{
    const dsv3_model_call scope = dsv3_model_call_begin(b->m);
    const dsv3_status st = batch_forward_pinned(b, ids, seqs, nseq, logits, hidden, isa, err);
    dsv3_model_call_end(scope);
    return st;
}

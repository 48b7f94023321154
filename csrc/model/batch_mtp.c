/* The batched engine's per-slot MTP caches and the MTP layer's forward over a ragged batch
 * (dsv3_batch_mtp.h): the operations of dsv3_mtp_forward (csrc/model/mtp.c) with the linears, norms and
 * MoE over all the step's rows at once and the attention core of each sequence over its slot's cache in
 * the form it would take alone (as csrc/model/batch.c runs the main layers). */
#include "dsv3_batch_mtp.h"
#include "dsv3_ops.h"
#include "model/batch_step.h"
#include "model/model_internal.h"

#include <string.h>

struct dsv3_batch_mtp {
    dsv3_model *m;           /* borrowed: the MTP layer's weights and the workspace */
    dsv3_slot_pool pool;     /* the slots' MTP latent caches: [slots, 1, cap] rows, and their lengths */
    dsv3_batch_index *index; /* owned, V3.2 only: the slots' MTP index-key caches, in step with pool's rows */
    dsv3_batch_scratch step; /* the step's output rows and attention segments */
};

dsv3_status dsv3_batch_mtp_create(dsv3_model *m, int64_t slots, int64_t slot_capacity, dsv3_batch_mtp **out,
                                  dsv3_error *err)
{
    *out = NULL;
    if (!m || !m->prepared)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: the model is not prepared");
    if (!m->mtp)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: the model has no MTP layer (load it with mtp=True)");
    dsv3_batch_mtp *b = dsv3_alloc(sizeof *b);
    if (!b)
        return dsv3_fail(err, DSV3_E_NOMEM, "batch MTP: out of memory");
    memset(b, 0, sizeof *b);
    b->m = m;
    dsv3_status st = dsv3_slot_pool_init(&b->pool, m, slots, 1, slot_capacity, "batch MTP", err);
    if (st == DSV3_OK) /* V3.2: the MTP layer attends over the rows its own indexer selects among its own keys */
        st = dsv3_batch_index_create(m, &m->mtp->layer, 1, slots, slot_capacity, &b->index, err);
    if (st != DSV3_OK) {
        dsv3_batch_mtp_free(b);
        return st;
    }
    *out = b;
    return DSV3_OK;
}

void dsv3_batch_mtp_free(dsv3_batch_mtp *b)
{
    if (!b)
        return;
    dsv3_slot_pool_free(&b->pool);
    dsv3_batch_index_free(b->index);
    dsv3_batch_scratch_free(&b->step);
    dsv3_free(b);
}

int64_t dsv3_batch_mtp_slots(const dsv3_batch_mtp *b) { return b->pool.slots; }
int64_t dsv3_batch_mtp_capacity(const dsv3_batch_mtp *b) { return b->pool.cap; }
int64_t dsv3_batch_mtp_length(const dsv3_batch_mtp *b, int64_t slot) { return dsv3_slot_pool_length(&b->pool, slot); }

dsv3_status dsv3_batch_mtp_copy_prefix(dsv3_batch_mtp *b, int64_t src, int64_t dst, int64_t n, dsv3_error *err)
{
    const dsv3_status st = dsv3_slot_pool_copy_prefix(&b->pool, src, dst, n, err);
    if (st == DSV3_OK)
        dsv3_batch_index_copy(b->index, src, dst, n); /* V3.2: the index keys of the same rows */
    return st;
}

static dsv3_status forward_pinned(dsv3_batch_mtp *b, const int64_t *ids, const float *hin, const dsv3_batch_seq *seqs,
                                  int64_t nseq, float *logits, float *hout, int isa, dsv3_error *err)
{
    dsv3_model *m = b->m;
    dsv3_mtp *mt = m->mtp;
    const dsv3_model_config *c = &m->cfg;
    const int64_t D = c->hidden_size;
    const float eps = c->rms_norm_eps;
    int64_t t = 0;
    const float *cs = NULL;
    dsv3_status st = dsv3_batch_step_begin(m, &b->pool, &b->step, ids, seqs, nseq, DSV3_LOGITS_ALL, logits, &t, &cs,
                                           err);
    if (st != DSV3_OK)
        return st;
    float *h = m->ws.h, *a = h + t * D, *o = a + t * D, *cat = a; /* ws.h: 3 t rows; cat [t, 2 hidden] over a, o */
    dsv3_embed_rows(mt->embed.data ? &mt->embed : &m->embed, D, ids, t, h);
    for (int64_t i = 0; i < t; i++) {
        dsv3_rmsnorm_f32(h + i * D, 1, D, mt->enorm.f32, eps, cat + i * 2 * D);
        dsv3_rmsnorm_f32(hin + i * D, 1, D, mt->hnorm.f32, eps, cat + i * 2 * D + D);
    }
    st = dsv3_linear(cat, t, &mt->eh_proj, NULL, h, isa, err);
    if (st == DSV3_OK) { /* the decoder block: h += attn(ln1(h)); h += ffn(ln2(h)) */
        dsv3_rmsnorm_f32(h, t, D, mt->layer.input_layernorm.f32, eps, a);
        st = dsv3_batch_attention(m, &mt->layer.attn, &b->pool, 0, b->index, &b->step, seqs, nseq, a, t, cs, o, isa,
                                  err);
    }
    if (st == DSV3_OK)
        st = dsv3_model_residual_ffn(m, &mt->layer, h, t, a, o, isa, err);
    if (st == DSV3_OK) /* shared_head.norm and the head over the rows asked */
        st = dsv3_batch_step_outputs(m, &b->step, seqs, nseq, h, mt->head_norm.f32,
                                     mt->head.data ? &mt->head : c->tie_word_embeddings ? &m->embed : &m->lm_head,
                                     logits, hout, isa, err);
    if (st == DSV3_OK) /* on failure no length moves (rows past a length are never read) */
        dsv3_slot_pool_advance(&b->pool, seqs, nseq);
    return st;
}

dsv3_status dsv3_batch_mtp_forward(dsv3_batch_mtp *b, const int64_t *ids, const float *hidden_in,
                                   const dsv3_batch_seq *seqs, int64_t nseq, float *logits, float *hidden_out,
                                   int isa, dsv3_error *err)
{
    if (!ids || !hidden_in)
        return dsv3_fail(err, DSV3_E_VALUE, "batch MTP: %s is NULL", ids ? "hidden_in" : "ids");
    const dsv3_model_call scope = dsv3_model_call_begin(b->m);
    const dsv3_status st = forward_pinned(b, ids, hidden_in, seqs, nseq, logits, hidden_out, isa, err);
    dsv3_model_call_end(scope);
    return st;
}

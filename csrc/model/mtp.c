/* DeepSeek's MTP layer as a draft model, and the verification forward's per-token attention
 * (dsv3_mtp.h). The layer's weights live in m->mtp (slots in model_build.c); its forward reuses the
 * model's decoder layer, workspace and rope tables. */
#include "dsv3_mtp.h"
#include "dsv3_ops.h"
#include "mla/mla_internal.h"
#include "model/model_internal.h"

#include <string.h>

dsv3_status dsv3_model_attention_per_token(dsv3_model *m, dsv3_layer *ly, const float *x, int64_t s,
                                           const float *cos_j, const float *sin_j, void *cache, int64_t past,
                                           float *out, int isa, dsv3_error *err)
{
    const dsv3_mla_dims *d = &m->mla;
    const dsv3_mla_weights *w = &ly->attn;
    dsv3_mla_scratch *ws = &m->ws.mla;
    const int64_t qk = d->nope + d->rope, H = d->heads;
    if (m->attn_mode == DSV3_ATTN_ABSORBED && !w->w_uv)
        return dsv3_fail(err, DSV3_E_VALUE, "attention: absorbed mode needs the W_UV views (dsv3_mla_absorb)");
    dsv3_status st = dsv3_mla_scratch_reserve(ws, d, m->attn_mode, s, past + s, err);
    if (st == DSV3_OK) /* the steps of dsv3_mla_forward (csrc/mla/mla.c), the projections over all s rows */
        st = dsv3_mla_project_q(d, w, x, s, cos_j, sin_j, ws->q, ws->qa, isa, err);
    if (st == DSV3_OK) /* rows in the cache's layout (f32 / bf16 / fp8) */
        st = dsv3_mla_write_latent(d, w, x, s, cos_j, sin_j, cache, past, ws->fresh, isa, err);
    for (int64_t i = 0; i < s && st == DSV3_OK; i++) /* token i attends rows [0, past + i] as a decode step */
        st = dsv3_mla_attend(d, w, m->attn_mode, ws->q + i * H * qk, 1, cache, past + i, ws->attn + i * H * d->v, ws,
                             isa, err);
    if (st == DSV3_OK)
        st = dsv3_linear(ws->attn, s, &w->o_proj, d->attention_bias ? w->o_bias.f32 : NULL, out, isa, err);
    return st;
}

static dsv3_status mtp_pinned(dsv3_model *m, const int64_t *ids, const float *hin, int64_t s, float *logits,
                              dsv3_logits_mode which, float *hout, int isa, dsv3_error *err)
{
    dsv3_mtp *t = m->mtp;
    const dsv3_model_config *c = &m->cfg;
    const int64_t D = c->hidden_size, start = t->cache_len;
    const float eps = c->rms_norm_eps;
    dsv3_status st = dsv3_model_reserve(m, s, start + s, err);
    if (st != DSV3_OK)
        return st;
    m->ws.lin.used = 0;
    float *h = m->ws.h, *cat = h + s * D; /* ws.h holds 3 s rows: h, then [s, 2 * hidden] */
    dsv3_embed_rows(t->embed.data ? &t->embed : &m->embed, D, ids, s, h);
    for (int64_t i = 0; i < s; i++) {
        dsv3_rmsnorm_f32(h + i * D, 1, D, t->enorm.f32, eps, cat + i * 2 * D);
        dsv3_rmsnorm_f32(hin + i * D, 1, D, t->hnorm.f32, eps, cat + i * 2 * D + D);
    }
    st = dsv3_linear(cat, s, &t->eh_proj, NULL, h, isa, err);
    if (st == DSV3_OK)
        st = dsv3_model_decoder_layer(m, &t->layer, h, s, start, 1, dsv3_model_rope_tables(m, start, s), h + s * D,
                                      isa, err);
    if (st != DSV3_OK || (which == DSV3_LOGITS_NONE && !hout))
        return st;
    const int64_t first = which == DSV3_LOGITS_LAST ? s - 1 : 0, from = hout ? 0 : first;
    float *normed = hout ? hout : h + s * D;
    dsv3_rmsnorm_f32(h + from * D, s - from, D, t->head_norm.f32, eps, normed);
    if (which == DSV3_LOGITS_NONE)
        return DSV3_OK;
    const dsv3_weight *head = t->head.data ? &t->head : c->tie_word_embeddings ? &m->embed : &m->lm_head;
    return dsv3_linear(normed + (first - from) * D, s - first, head, NULL, logits, isa, err);
}

dsv3_status dsv3_mtp_forward(dsv3_model *m, const int64_t *ids, const float *hidden_in, int64_t s, float *logits,
                             dsv3_logits_mode which, float *hidden_out, int isa, dsv3_error *err)
{
    if (!m->prepared)
        return dsv3_fail(err, DSV3_E_VALUE, "model is not prepared (missing weights)");
    if (!m->mtp)
        return dsv3_fail(err, DSV3_E_VALUE, "the model has no MTP layer (load it with mtp=True)");
    dsv3_mtp *t = m->mtp;
    if (s <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "MTP forward needs at least one token");
    if ((unsigned)which > DSV3_LOGITS_ALL)
        return dsv3_fail(err, DSV3_E_VALUE, "MTP forward: unknown logits mode %d (all, last or none)", (int)which);
    if ((which != DSV3_LOGITS_NONE && !logits) || !hidden_in)
        return dsv3_fail(err, DSV3_E_VALUE, "MTP forward: %s is NULL", hidden_in ? "logits" : "hidden_in");
    if (s > m->capacity - t->cache_len)
        return dsv3_fail(err, DSV3_E_VALUE, "%lld tokens do not fit in the MTP layer's cache: %lld of %lld positions "
                         "used (max_seq_len)", (long long)s, (long long)t->cache_len, (long long)m->capacity);
    for (int64_t i = 0; i < s; i++)
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
            return dsv3_fail(err, DSV3_E_VALUE, "token id %lld at position %lld is out of range [0, %lld)",
                             (long long)ids[i], (long long)i, (long long)m->cfg.vocab_size);
    const dsv3_model_call scope = dsv3_model_call_begin(m);
    dsv3_status st = mtp_pinned(m, ids, hidden_in, s, logits, which, hidden_out, isa, err);
    dsv3_model_call_end(scope);
    if (st == DSV3_OK)
        t->cache_len += s;
    t->layer.cache_rows = t->cache_len; /* a failed step leaves the cache as it was */
    return st;
}

dsv3_status dsv3_mtp_truncate(dsv3_model *m, int64_t length, dsv3_error *err)
{
    if (!m->mtp)
        return dsv3_fail(err, DSV3_E_VALUE, "the model has no MTP layer (load it with mtp=True)");
    if (length < 0 || length > m->mtp->cache_len)
        return dsv3_fail(err, DSV3_E_VALUE, "MTP truncate: length %lld is not in [0, %lld] (its cached positions)",
                         (long long)length, (long long)m->mtp->cache_len);
    m->mtp->cache_len = m->mtp->layer.cache_rows = length;
    return DSV3_OK;
}

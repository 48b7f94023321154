/* The V3.2 indexer of one layer as a probe (parity rows: selected rows and scores per query). */
#include "dsv3_model.h"
#include "dsv3_ops.h"
#include "mla/mla_internal.h"
#include "model/model_internal.h"

#include <math.h>
#include <string.h>

static dsv3_status indexer_pinned(dsv3_model *m, int64_t layer, const float *x, int64_t s, int64_t *sel,
                                  float *scores, int isa, dsv3_error *err)
{
    if (m->index.topk <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "this model has no indexer (only deepseek_v32 has one)");
    if (!m->prepared)
        return dsv3_fail(err, DSV3_E_VALUE, "model is not prepared (missing weights)");
    if (layer < 0 || layer >= m->cfg.num_hidden_layers)
        return dsv3_fail(err, DSV3_E_VALUE, "layer %lld out of range [0, %lld)", (long long)layer,
                         (long long)m->cfg.num_hidden_layers);
    if (s <= 0 || s > m->capacity)
        return dsv3_fail(err, DSV3_E_VALUE, "indexer probe: need 1..max_seq_len (%lld) tokens, got %lld",
                         (long long)m->capacity, (long long)s);
    dsv3_status st = dsv3_model_reserve(m, s, s, err);
    if (st != DSV3_OK)
        return st;
    m->ws.lin.used = 0;
    const dsv3_layer *ly = &m->layers[layer];
    const int64_t half = m->cfg.qk_rope_head_dim / 2, H = m->index.heads, hd = m->index.head_dim, k = m->index.topk;
    float *cs = m->ws.rope;
    int64_t *pos = (int64_t *)(void *)(cs + 2 * s * half);
    for (int64_t i = 0; i < s; i++)
        pos[i] = i;
    dsv3_rope_cos_sin(pos, s, m->inv_freq, half, m->cfg.rope_attention_scaling, cs, cs + s * half);
    dsv3_indexer_scratch *is = &m->ws.index;
    st = dsv3_mla_project_q(&m->mla, &ly->attn, x, s, cs, cs + s * half, m->ws.mla.q, m->ws.mla.qa, isa, err);
    if (st == DSV3_OK)
        st = dsv3_indexer_keys(&m->mla, &m->index, &ly->indexer, x, s, cs, cs + s * half, is->keys, is->kf, isa, err);
    if (st == DSV3_OK)
        st = dsv3_indexer_queries(&m->mla, &m->index, &ly->indexer, m->ws.mla.qa, x, s, cs, cs + s * half, is->q,
                                  is->w, isa, err);
    for (int64_t i = 0; i < s && st == DSV3_OK; i++) {
        float *sc = scores + i * s;
        dsv3_indexer_scores(&m->index, is->q + i * H * hd, is->w + i * H, is->keys, i + 1, sc, is->kblk);
        const int64_t n = dsv3_indexer_select(sc, i + 1, k, sel + i * k, is->order);
        for (int64_t j = n; j < k; j++)
            sel[i * k + j] = -1;
        for (int64_t t = i + 1; t < s; t++)
            sc[t] = -INFINITY;
    }
    return st;
}

dsv3_status dsv3_model_indexer(dsv3_model *m, int64_t layer, const float *x, int64_t s, int64_t *sel, float *scores,
                               int isa, dsv3_error *err)
{
    const dsv3_model_call scope = dsv3_model_call_begin(m);
    dsv3_status st = indexer_pinned(m, layer, x, s, sel, scores, isa, err);
    dsv3_model_call_end(scope);
    return st;
}

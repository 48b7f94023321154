/* The model's workspace (dsv3_workspace): the forward pass's own buffers plus the attention and MoE
 * scratch, reserved ahead of the layer loop so that no layer allocates. */
#include "dsv3_model.h"

#include <string.h>


/* Cached rows the attention scratch is reserved for. Absorbed attention needs [heads, rows]
 * probabilities per decoded token: reserve the whole capacity at once (smaller than one layer's
 * cache), so decoding never grows it. Naive attention expands K/V for every cached row
 * (heads * (nope + v) floats each): grow it by doubling, up to the capacity. */
static int64_t attention_rows(const dsv3_model *m, int64_t rows)
{
    if (m->attn_mode == DSV3_ATTN_ABSORBED)
        return m->capacity > rows ? m->capacity : rows;
    const int64_t have = m->ws.mla.rows;
    if (rows <= have)
        return have;
    int64_t r = 2 * have > rows ? 2 * have : rows;
    if (r > m->capacity)
        r = rows > m->capacity ? rows : m->capacity;
    return r;
}

static dsv3_status reserve_own(dsv3_model *m, int64_t tokens, dsv3_error *err)
{
    dsv3_workspace *ws = &m->ws;
    if (ws->block && tokens <= ws->tokens)
        return DSV3_OK;
    const dsv3_model_config *c = &m->cfg;
    const int64_t shared = c->n_shared_experts * c->moe_intermediate_size;
    const int64_t inter = c->intermediate_size > shared ? c->intermediate_size : shared;
    const int64_t n_h = 3 * tokens * c->hidden_size, n_rope = tokens * c->qk_rope_head_dim + tokens * 2,
                  n_mlp = tokens * 2 * inter, n_cache = tokens * (c->kv_lora_rank + c->qk_rope_head_dim);
    const int64_t f = (int64_t)sizeof(float), bytes[4] = {n_h * f, n_rope * f, n_mlp * f, n_cache * f};
    void *at[4];
    float *block = dsv3_alloc_carved(bytes, 4, at);
    if (!block)
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory for the forward workspace of %lld tokens",
                         (long long)tokens);
    dsv3_free(ws->block);
    ws->block = block;
    ws->tokens = tokens;
    ws->h = at[0];
    ws->rope = at[1];
    ws->mlp = at[2];
    ws->cache = at[3];
    return DSV3_OK;
}

static size_t most(size_t a, size_t b) { return a > b ? a : b; }

/* The largest plan of any linear of one decoder layer for up to tt rows. */
static size_t layer_plan_bytes(const dsv3_layer *ly, int64_t tt)
{
    size_t w = 0;
    const dsv3_weight *ws_[] = {&ly->attn.q_proj, &ly->attn.q_a_proj, &ly->attn.q_b_proj, &ly->attn.kv_a_proj,
                                &ly->attn.o_proj, &ly->mlp.gate, &ly->mlp.up, &ly->mlp.down, &ly->moe.gate,
                                &ly->moe.shared.gate, &ly->moe.shared.up, &ly->moe.shared.down,
                                &ly->indexer.wq_b, &ly->indexer.wk, &ly->indexer.weights_proj};
    for (size_t i = 0; i < sizeof ws_ / sizeof ws_[0]; i++)
        if (ws_[i]->data || ws_[i]->packed)
            w = most(w, dsv3_linear_plan_bytes_upto(ws_[i], tt));
    if (ly->is_moe && ly->moe.experts && (ly->moe.experts[0].gate.data || ly->moe.experts[0].gate.packed))
        for (int j = 0; j < 3; j++)
            w = most(w, dsv3_linear_plan_bytes_upto(j == 0 ? &ly->moe.experts[0].gate
                                                      : j == 1 ? &ly->moe.experts[0].up : &ly->moe.experts[0].down, tt));
    return w;
}

/* The linear arena: plans of up to DSV3_MOE_COLS_TOKENS rows of any of the model's weights, three live at
 * once (an MLP's gate, up, down), plus naive attention's kv_b_proj over all `rows` cached rows. */
static dsv3_status reserve_lin(dsv3_model *m, int64_t tokens, int64_t rows, dsv3_error *err)
{
    dsv3_workspace *ws = &m->ws;
    const int64_t t = tokens < DSV3_MOE_COLS_TOKENS ? tokens : DSV3_MOE_COLS_TOKENS;
    const int64_t r = m->attn_mode == DSV3_ATTN_NAIVE ? rows : 0;
    if (ws->lin.base && t <= ws->lin_tokens && r <= ws->lin_rows)
        return DSV3_OK;
    const int64_t tt = t > ws->lin_tokens ? t : ws->lin_tokens, rr = r > ws->lin_rows ? r : ws->lin_rows;
    size_t w = dsv3_linear_plan_bytes_upto(m->cfg.tie_word_embeddings ? &m->embed : &m->lm_head, tt);
    for (int64_t l = 0; l < m->cfg.num_hidden_layers; l++)
        w = most(w, layer_plan_bytes(&m->layers[l], tt));
    if (m->mtp) { /* the MTP layer's block, its input projection and its own head */
        w = most(w, layer_plan_bytes(&m->mtp->layer, tt));
        w = most(w, dsv3_linear_plan_bytes_upto(&m->mtp->eh_proj, tt));
        if (m->mtp->head.data || m->mtp->head.packed)
            w = most(w, dsv3_linear_plan_bytes_upto(&m->mtp->head, tt));
    }
    size_t need = 3 * w;
    if (rr > 0)
        need += dsv3_linear_plan_bytes_upto(&m->layers[0].attn.kv_b_proj, rr);
    unsigned char *base = dsv3_alloc(need ? need : 64);
    if (!base)
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory for the linear activation workspace (%zu bytes)", need);
    dsv3_free(ws->lin.base);
    ws->lin.base = base;
    ws->lin.size = need;
    ws->lin.used = 0;
    ws->lin_tokens = tt;
    ws->lin_rows = rr;
    return DSV3_OK;
}

dsv3_status dsv3_model_reserve(dsv3_model *m, int64_t tokens, int64_t rows, dsv3_error *err)
{
    dsv3_status st = reserve_own(m, tokens, err);
    if (st == DSV3_OK)
        st = dsv3_mla_scratch_reserve(&m->ws.mla, &m->mla, m->attn_mode, tokens, attention_rows(m, rows), err);
    if (st == DSV3_OK && m->index.topk > 0) /* V3.2: score rows for the whole capacity, as absorbed attention */
        st = dsv3_indexer_scratch_reserve(&m->ws.index, &m->mla, &m->index, tokens,
                                          m->capacity > rows ? m->capacity : rows, err);
    if (st == DSV3_OK)
        st = reserve_lin(m, tokens, m->ws.mla.rows, err);
    for (int64_t l = 0; l < m->cfg.num_hidden_layers && st == DSV3_OK; l++)
        if (m->layers[l].is_moe) { /* every MoE layer has the same shapes: the first one sizes the scratch */
            st = dsv3_moe_scratch_reserve(&m->ws.moe, &m->router, &m->layers[l].moe, m->cfg.hidden_size, tokens,
                                          err);
            break;
        }
    return st;
}

void dsv3_model_workspace_free(dsv3_workspace *ws)
{
    dsv3_free(ws->block);
    dsv3_free(ws->lin.base);
    dsv3_mla_scratch_free(&ws->mla);
    dsv3_moe_scratch_free(&ws->moe);
    dsv3_indexer_scratch_free(&ws->index);
    memset(ws, 0, sizeof *ws);
}

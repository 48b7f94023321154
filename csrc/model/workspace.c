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

dsv3_status dsv3_model_reserve(dsv3_model *m, int64_t tokens, int64_t rows, dsv3_error *err)
{
    dsv3_status st = reserve_own(m, tokens, err);
    if (st == DSV3_OK)
        st = dsv3_mla_scratch_reserve(&m->ws.mla, &m->mla, m->attn_mode, tokens, attention_rows(m, rows), err);
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
    dsv3_mla_scratch_free(&ws->mla);
    dsv3_moe_scratch_free(&ws->moe);
    memset(ws, 0, sizeof *ws);
}

/* The forward pass over all layers (one call: prefill or decode) and the per-module probes.
 *
 * Every entry point pins the thread count for the whole call (dsv3_threads_pin: the workspace is sized
 * for it and every region uses it, whatever another thread sets meanwhile) and binds the workspace's
 * linear arena to the calling thread (the linears of a decode step take their activation buffers from
 * it). Parallel regions: attention is one region for its core (csrc/mla), each linear one, the MoE block
 * at decode one (csrc/moe/experts.c), a dense MLP at decode one. */
#include "dsv3_dtypes.h"
#include "dsv3_model.h"
#include "dsv3_mtp.h"
#include "dsv3_ops.h"
#include "model/model_internal.h"

#include <string.h>

static dsv3_status need_prepared(const dsv3_model *m, dsv3_error *err)
{
    return m->prepared ? DSV3_OK : dsv3_fail(err, DSV3_E_VALUE, "model is not prepared (missing weights)");
}

const float *dsv3_model_rope_tables(dsv3_model *m, int64_t start, int64_t s)
{
    const int64_t half = m->cfg.qk_rope_head_dim / 2;
    float *cs = m->ws.rope;
    int64_t *pos = (int64_t *)(void *)(cs + 2 * s * half);
    for (int64_t i = 0; i < s; i++)
        pos[i] = start + i;
    dsv3_rope_cos_sin(pos, s, m->inv_freq, half, m->cfg.rope_attention_scaling, cs, cs + s * half);
    return cs;
}

/* Attention over the layer cache (use_cache) or a scratch cache of s rows; cs: rope_tables of the s positions. */
static dsv3_status attention(dsv3_model *m, dsv3_layer *ly, const float *x, int64_t s, int64_t start, int use_cache,
                             const float *cs, float *out, int isa, dsv3_error *err)
{
    const int64_t half = m->cfg.qk_rope_head_dim / 2;
    void *cache = use_cache ? ly->cache : (void *)m->ws.cache; /* without the cache: s workspace rows (f32-sized) */
    const int64_t past = use_cache ? start : 0;
    const int per_token = m->attn_per_token && s > 1; /* a verification forward (dsv3_model_forward_hidden) */
    dsv3_status st;
    if (m->index.topk > 0) /* V3.2: sparse attention over the rows the indexer selects (per token: its own top-k) */
        st = (per_token ? dsv3_mla_forward_indexed_steps : dsv3_mla_forward_indexed)(
            &m->mla, &ly->attn, &m->index, &ly->indexer, x, s, cs, cs + s * half, cache,
            use_cache ? ly->index_cache : m->ws.index.keys, past, m->attn_mode, out, &m->ws.mla, &m->ws.index, isa,
            err);
    else if (per_token)
        st = dsv3_model_attention_per_token(m, ly, x, s, cs, cs + s * half, cache, past, out, isa, err);
    else
        st = dsv3_mla_forward(&m->mla, &ly->attn, x, s, cs, cs + s * half, cache, past, m->attn_mode, out,
                              &m->ws.mla, isa, err);
    if (st == DSV3_OK && use_cache)
        ly->cache_rows = start + s;
    return st;
}

/* attention() for a probe: builds the rope tables of positions start.. itself. */
static dsv3_status attention_at(dsv3_model *m, dsv3_layer *ly, const float *x, int64_t s, int64_t start,
                                int use_cache, float *out, int isa, dsv3_error *err)
{
    return attention(m, ly, x, s, start, use_cache, dsv3_model_rope_tables(m, start, s), out, isa, err);
}

static dsv3_status ffn(dsv3_model *m, dsv3_layer *ly, const float *x, int64_t s, float *out, int isa,
                       dsv3_error *err)
{
    if (ly->is_moe)
        return dsv3_moe_forward(&m->router, &ly->moe, m->cfg.hidden_size, x, s, out, &m->ws.moe, isa, err);
    return dsv3_mlp_forward(&ly->mlp, x, s, out, m->ws.mlp, isa, err);
}

dsv3_status dsv3_model_residual_ffn(dsv3_model *m, dsv3_layer *ly, float *h, int64_t s, float *a, float *o, int isa,
                                    dsv3_error *err)
{
    const int64_t D = m->cfg.hidden_size, n = s * D;
    for (int64_t i = 0; i < n; i++)
        h[i] = h[i] + o[i];
    dsv3_rmsnorm_f32(h, s, D, ly->post_attention_layernorm.f32, m->cfg.rms_norm_eps, a);
    dsv3_status st = ffn(m, ly, a, s, o, isa, err);
    for (int64_t i = 0; st == DSV3_OK && i < n; i++)
        h[i] = h[i] + o[i];
    return st;
}

dsv3_status dsv3_model_decoder_layer(dsv3_model *m, dsv3_layer *ly, float *h, int64_t s, int64_t start, int use_cache,
                                 const float *cs, float *tmp, int isa, dsv3_error *err)
{
    const int64_t D = m->cfg.hidden_size, n = s * D;
    float *a = tmp, *b = tmp + n;
    dsv3_rmsnorm_f32(h, s, D, ly->input_layernorm.f32, m->cfg.rms_norm_eps, a);
    dsv3_status st = attention(m, ly, a, s, start, use_cache, cs, b, isa, err);
    return st == DSV3_OK ? dsv3_model_residual_ffn(m, ly, h, s, a, b, isa, err) : st;
}

void dsv3_embed_rows(const dsv3_weight *e, int64_t D, const int64_t *ids, int64_t s, float *h)
{
    for (int64_t i = 0; i < s; i++) {
        if (e->fmt == DSV3_FMT_F32) {
            memcpy(h + i * D, (const float *)e->data + ids[i] * D, (size_t)D * sizeof(float));
        } else {
            const uint16_t *r = (const uint16_t *)e->data + ids[i] * D;
            for (int64_t j = 0; j < D; j++)
                h[i * D + j] = dsv3_bf16_to_f32(r[j]);
        }
    }
}

void dsv3_model_embed_rows(const dsv3_model *m, const int64_t *ids, int64_t s, float *h)
{
    dsv3_embed_rows(&m->embed, m->cfg.hidden_size, ids, s, h);
}

dsv3_model_call dsv3_model_call_begin(dsv3_model *m)
{
    dsv3_model_call c;
    c.pin = dsv3_threads_pin();
    c.prev = dsv3_linear_bind_arena(&m->ws.lin);
    return c;
}

void dsv3_model_call_end(dsv3_model_call c)
{
    dsv3_linear_bind_arena(c.prev);
    dsv3_threads_unpin(c.pin);
}

static dsv3_status forward_pinned(dsv3_model *m, const int64_t *ids, int64_t s, float *logits,
                                  dsv3_logits_mode which, float *hidden, int isa, dsv3_error *err)
{
    const dsv3_model_config *c = &m->cfg;
    const int64_t D = c->hidden_size;
    dsv3_status st = dsv3_model_reserve(m, s, m->cache_len + s, err); /* grown here, once, for a longer prefill */
    if (st != DSV3_OK)
        return st;
    m->ws.lin.used = 0;
    const float *cs = dsv3_model_rope_tables(m, m->cache_len, s); /* the same positions in every layer */
    float *h = m->ws.h;
    dsv3_model_embed_rows(m, ids, s, h);
    for (int64_t l = 0; l < c->num_hidden_layers && st == DSV3_OK; l++)
        st = dsv3_model_decoder_layer(m, &m->layers[l], h, s, m->cache_len, 1, cs, h + s * D, isa, err);
    if (st != DSV3_OK || (which == DSV3_LOGITS_NONE && !hidden))
        return st;
    const int64_t first = which == DSV3_LOGITS_LAST ? s - 1 : 0; /* rows that get logits: [first, s) */
    const int64_t from = hidden ? 0 : first;                      /* rows through the final norm: [from, s) */
    float *normed = hidden ? hidden : h + s * D;                  /* row `from` first */
    dsv3_rmsnorm_f32(h + from * D, s - from, D, m->norm.f32, c->rms_norm_eps, normed);
    if (which != DSV3_LOGITS_NONE)
        st = dsv3_linear(normed + (first - from) * D, s - first, c->tie_word_embeddings ? &m->embed : &m->lm_head,
                         NULL, logits, isa, err);
    return st;
}

dsv3_status dsv3_model_forward_ex(dsv3_model *m, const int64_t *ids, int64_t s, float *logits, dsv3_logits_mode which,
                                  int isa, dsv3_error *err)
{
    return dsv3_model_forward_hidden(m, ids, s, logits, which, NULL, 0, isa, err);
}

dsv3_status dsv3_model_forward_hidden(dsv3_model *m, const int64_t *ids, int64_t s, float *logits,
                                      dsv3_logits_mode which, float *hidden, int step_attention, int isa,
                                      dsv3_error *err)
{
    dsv3_status st = need_prepared(m, err);
    if (st != DSV3_OK)
        return st;
    const dsv3_model_config *c = &m->cfg;
    if (s <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "forward needs at least one token");
    if ((unsigned)which > DSV3_LOGITS_ALL)
        return dsv3_fail(err, DSV3_E_VALUE, "forward: unknown logits mode %d (all, last or none)", (int)which);
    if (which != DSV3_LOGITS_NONE && !logits)
        return dsv3_fail(err, DSV3_E_VALUE, "forward: logits is NULL");
    if (s > m->capacity - m->cache_len)
        return dsv3_fail(err, DSV3_E_VALUE,
                         "%lld tokens do not fit in the cache: %lld of %lld positions used (max_seq_len); "
                         "call reset() or build the model with a larger max_seq_len",
                         (long long)s, (long long)m->cache_len, (long long)m->capacity);
    for (int64_t i = 0; i < s; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return dsv3_fail(err, DSV3_E_VALUE, "token id %lld at position %lld is out of range [0, %lld)",
                             (long long)ids[i], (long long)i, (long long)c->vocab_size);
    for (int64_t l = 0; l < c->num_hidden_layers; l++)
        if (m->layers[l].cache_rows != m->cache_len)
            return dsv3_fail(err, DSV3_E_VALUE, "the cache of layer %lld was changed by run_module(use_cache=True); "
                             "call reset() before forward", (long long)l);
    const dsv3_model_call scope = dsv3_model_call_begin(m);
    m->attn_per_token = step_attention != 0;
    st = forward_pinned(m, ids, s, logits, which, hidden, isa, err);
    m->attn_per_token = 0;
    dsv3_model_call_end(scope);
    if (st == DSV3_OK) {
        m->cache_len += s;
    } else { /* a failed step leaves the cache as it was */
        for (int64_t l = 0; l < c->num_hidden_layers; l++)
            m->layers[l].cache_rows = m->cache_len;
    }
    return st;
}

dsv3_status dsv3_model_forward(dsv3_model *m, const int64_t *ids, int64_t s, float *logits, int isa,
                               dsv3_error *err)
{
    return dsv3_model_forward_ex(m, ids, s, logits, DSV3_LOGITS_ALL, isa, err);
}

void dsv3_model_reset(dsv3_model *m)
{
    m->cache_len = 0;
    for (int64_t l = 0; l < m->cfg.num_hidden_layers; l++)
        m->layers[l].cache_rows = 0;
    if (m->mtp)
        m->mtp->cache_len = m->mtp->layer.cache_rows = 0;
}

dsv3_status dsv3_model_truncate(dsv3_model *m, int64_t length, dsv3_error *err)
{
    if (length < 0 || length > m->cache_len)
        return dsv3_fail(err, DSV3_E_VALUE, "truncate: length %lld is not in [0, %lld] (the tokens in the cache)",
                         (long long)length, (long long)m->cache_len);
    m->cache_len = length; /* rows past the length are never read: the next forward overwrites them */
    for (int64_t l = 0; l < m->cfg.num_hidden_layers; l++)
        m->layers[l].cache_rows = length;
    return DSV3_OK;
}

/* ---- probes ---- */
static dsv3_status probe_layer(dsv3_model *m, int64_t layer, int need_moe, dsv3_layer **out, dsv3_error *err)
{
    dsv3_status st = need_prepared(m, err);
    if (st != DSV3_OK)
        return st;
    if (layer < 0 || layer >= m->cfg.num_hidden_layers)
        return dsv3_fail(err, DSV3_E_VALUE, "layer %lld out of range [0, %lld)", (long long)layer,
                         (long long)m->cfg.num_hidden_layers);
    if (need_moe && !m->layers[layer].is_moe)
        return dsv3_fail(err, DSV3_E_VALUE, "layer %lld is dense (first_k_dense_replace = %lld): no router or experts",
                         (long long)layer, (long long)m->cfg.first_k_dense_replace);
    *out = &m->layers[layer];
    return DSV3_OK;
}

static dsv3_status run_module_pinned(dsv3_model *m, dsv3_module_kind kind, int64_t layer, const float *x, int64_t s,
                                     int64_t start_pos, int use_cache, float *out, int isa, dsv3_error *err)
{
    const int64_t D = m->cfg.hidden_size;
    dsv3_layer *ly = NULL;
    if (s <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "run_module needs at least one token");
    if (kind == DSV3_MOD_FINAL_NORM) {
        dsv3_status st = need_prepared(m, err);
        if (st == DSV3_OK)
            dsv3_rmsnorm_f32(x, s, D, m->norm.f32, m->cfg.rms_norm_eps, out);
        return st;
    }
    dsv3_status st = probe_layer(m, layer, kind == DSV3_MOD_SHARED_EXPERTS, &ly, err);
    if (st != DSV3_OK)
        return st;
    if (kind == DSV3_MOD_ATTENTION || kind == DSV3_MOD_DECODER_LAYER) {
        if (start_pos < 0 || (use_cache && start_pos > ly->cache_rows))
            return dsv3_fail(err, DSV3_E_VALUE, "start_pos %lld: layer %lld has %lld cached tokens%s",
                             (long long)start_pos, (long long)layer, (long long)ly->cache_rows,
                             use_cache ? " (start_pos must not exceed them)" : "");
        if (start_pos > m->capacity - s)
            return dsv3_fail(err, DSV3_E_VALUE, "start_pos %lld + %lld tokens exceeds max_seq_len %lld",
                             (long long)start_pos, (long long)s, (long long)m->capacity);
    }
    if (kind != DSV3_MOD_INPUT_LAYERNORM && kind != DSV3_MOD_POST_ATTENTION_LAYERNORM) {
        const int attends = kind == DSV3_MOD_ATTENTION || kind == DSV3_MOD_DECODER_LAYER;
        st = dsv3_model_reserve(m, s, attends ? (use_cache ? start_pos : 0) + s : 1, err); /* shared with forward */
        if (st != DSV3_OK)
            return st;
    }
    switch (kind) {
    case DSV3_MOD_INPUT_LAYERNORM:
        dsv3_rmsnorm_f32(x, s, D, ly->input_layernorm.f32, m->cfg.rms_norm_eps, out);
        return DSV3_OK;
    case DSV3_MOD_POST_ATTENTION_LAYERNORM:
        dsv3_rmsnorm_f32(x, s, D, ly->post_attention_layernorm.f32, m->cfg.rms_norm_eps, out);
        return DSV3_OK;
    case DSV3_MOD_ATTENTION:
        return attention_at(m, ly, x, s, start_pos, use_cache, out, isa, err);
    case DSV3_MOD_MLP:
        return ffn(m, ly, x, s, out, isa, err);
    case DSV3_MOD_SHARED_EXPERTS:
        if (!ly->moe.has_shared) {
            memset(out, 0, (size_t)(s * D) * sizeof(float));
            return DSV3_OK;
        }
        return dsv3_mlp_forward(&ly->moe.shared, x, s, out, m->ws.mlp, isa, err);
    case DSV3_MOD_DECODER_LAYER:
        memcpy(out, x, (size_t)(s * D) * sizeof(float));
        return dsv3_model_decoder_layer(m, ly, out, s, start_pos, use_cache, dsv3_model_rope_tables(m, start_pos, s), m->ws.h, isa, err);
    default:
        return dsv3_fail(err, DSV3_E_VALUE, "unknown module kind %d", (int)kind);
    }
}

dsv3_status dsv3_model_run_module(dsv3_model *m, dsv3_module_kind kind, int64_t layer, const float *x,
                                  int64_t s, int64_t start_pos, int use_cache, float *out, int isa,
                                  dsv3_error *err)
{
    const dsv3_model_call scope = dsv3_model_call_begin(m);
    dsv3_status st = run_module_pinned(m, kind, layer, x, s, start_pos, use_cache, out, isa, err);
    dsv3_model_call_end(scope);
    return st;
}

dsv3_status dsv3_model_route(dsv3_model *m, int64_t layer, const float *x, int64_t s, float *weights,
                             int64_t *indices, int isa, dsv3_error *err)
{
    dsv3_layer *ly = NULL;
    dsv3_status st = probe_layer(m, layer, 1, &ly, err);
    if (st != DSV3_OK)
        return st;
    const dsv3_model_call scope = dsv3_model_call_begin(m);
    st = dsv3_moe_route(&m->router, &ly->moe, x, s, weights, indices, &m->ws.moe, isa, err);
    dsv3_model_call_end(scope);
    return st;
}

dsv3_status dsv3_model_experts(dsv3_model *m, int64_t layer, const float *x, int64_t s, const int64_t *indices,
                               const float *weights, float *out, int isa, dsv3_error *err)
{
    dsv3_layer *ly = NULL;
    dsv3_status st = probe_layer(m, layer, 1, &ly, err);
    if (st != DSV3_OK)
        return st;
    const dsv3_model_call scope = dsv3_model_call_begin(m);
    st = dsv3_moe_experts(&m->router, &ly->moe, m->cfg.hidden_size, x, s, indices, weights, out, &m->ws.moe, isa,
                          err);
    dsv3_model_call_end(scope);
    return st;
}

dsv3_status dsv3_model_rope(const dsv3_model *m, const int64_t *pos, int64_t n, float *cos_out, float *sin_out,
                            dsv3_error *err)
{
    const int64_t half = m->cfg.qk_rope_head_dim / 2, dim = 2 * half;
    if (n < 0 || n > ((int64_t)1 << 32) || (n > 0 && (!pos || !cos_out || !sin_out))) /* sizes below stay in int64 */
        return dsv3_fail(err, DSV3_E_VALUE, "rope: bad positions (n = %lld, pointers must not be NULL)", (long long)n);
    float *cs = dsv3_alloc((size_t)(2 * n * half + 1) * sizeof(float));
    if (!cs)
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory for rope tables");
    dsv3_rope_cos_sin(pos, n, m->inv_freq, half, m->cfg.rope_attention_scaling, cs, cs + n * half);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < dim; j++) {
            cos_out[i * dim + j] = cs[i * half + j % half];
            sin_out[i * dim + j] = cs[n * half + i * half + j % half];
        }
    dsv3_free(cs);
    return DSV3_OK;
}

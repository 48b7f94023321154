/* The tensor table: every tensor a DeepSeek-V3-family model reads, one row each, in the canonical order
 * (the order checkpoints are read and converted in). Python derives its tensor lists from it
 * (_dsv3.tensor_table / _dsv3.tensor_slots -> dsv3.checkpoint.canonical_shapes).
 *
 * Adding a tensor: one row below (name pattern, scope, kind, shape as two dims, when it is present, when it
 * may be absent, where its dsv3_weight lives), plus the member in the weight structs. */
#include "dsv3_model.h"
#include "dsv3_mtp.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define L(member) offsetof(dsv3_layer, member)
#define V(member) offsetof(dsv3_layer, member.src)
#define X(member) offsetof(dsv3_mlp_weights, member)
#define T(member) offsetof(dsv3_mtp, member)
#define P "model.layers.{layer}."
#define ALWAYS DSV3_WHEN_ALWAYS
#define NEVER DSV3_WHEN_NEVER

const dsv3_tensor_row dsv3_tensor_rows[] = {
    /* name                                  scope              kind              rows                   cols                  present                    optional  offset */
    {"model.embed_tokens.weight",            DSV3_SCOPE_INPUT,  DSV3_KIND_VECTOR, DSV3_DIM_VOCAB,        DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, offsetof(dsv3_model, embed)},
    {P "input_layernorm.weight",             DSV3_SCOPE_LAYER,  DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, V(input_layernorm)},
    {P "post_attention_layernorm.weight",    DSV3_SCOPE_LAYER,  DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, V(post_attention_layernorm)},
    {P "self_attn.q_a_proj.weight",          DSV3_SCOPE_LAYER,  DSV3_KIND_LINEAR, DSV3_DIM_Q_LORA,       DSV3_DIM_HIDDEN,      DSV3_WHEN_Q_LORA,          NEVER, L(attn.q_a_proj)},
    {P "self_attn.q_a_layernorm.weight",     DSV3_SCOPE_LAYER,  DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_Q_LORA,      DSV3_WHEN_Q_LORA,          NEVER, V(attn.q_a_layernorm)},
    {P "self_attn.q_b_proj.weight",          DSV3_SCOPE_LAYER,  DSV3_KIND_LINEAR, DSV3_DIM_Q_HEADS,      DSV3_DIM_Q_LORA,      DSV3_WHEN_Q_LORA,          NEVER, L(attn.q_b_proj)},
    {P "self_attn.q_a_proj.bias",            DSV3_SCOPE_LAYER,  DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_Q_LORA,      DSV3_WHEN_Q_LORA_BIAS,     NEVER, V(attn.q_a_bias)},
    {P "self_attn.q_proj.weight",            DSV3_SCOPE_LAYER,  DSV3_KIND_LINEAR, DSV3_DIM_Q_HEADS,      DSV3_DIM_HIDDEN,      DSV3_WHEN_NO_Q_LORA,       NEVER, L(attn.q_proj)},
    {P "self_attn.kv_a_proj_with_mqa.weight",DSV3_SCOPE_LAYER,  DSV3_KIND_LINEAR, DSV3_DIM_KV_A,         DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, L(attn.kv_a_proj)},
    {P "self_attn.kv_a_layernorm.weight",    DSV3_SCOPE_LAYER,  DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_KV_LORA,     ALWAYS,                    NEVER, V(attn.kv_a_layernorm)},
    {P "self_attn.kv_b_proj.weight",         DSV3_SCOPE_LAYER,  DSV3_KIND_LINEAR, DSV3_DIM_KV_B,         DSV3_DIM_KV_LORA,     ALWAYS,                    NEVER, L(attn.kv_b_proj)},
    {P "self_attn.o_proj.weight",            DSV3_SCOPE_LAYER,  DSV3_KIND_LINEAR, DSV3_DIM_HIDDEN,       DSV3_DIM_O_IN,        ALWAYS,                    NEVER, L(attn.o_proj)},
    {P "self_attn.kv_a_proj_with_mqa.bias",  DSV3_SCOPE_LAYER,  DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_KV_A,        DSV3_WHEN_ATTN_BIAS,       NEVER, V(attn.kv_a_bias)},
    {P "self_attn.o_proj.bias",              DSV3_SCOPE_LAYER,  DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_HIDDEN,      DSV3_WHEN_ATTN_BIAS,       NEVER, V(attn.o_bias)},
    {P "self_attn.indexer.wq_b.weight",      DSV3_SCOPE_LAYER,  DSV3_KIND_LINEAR, DSV3_DIM_INDEX_Q,      DSV3_DIM_Q_LORA,      DSV3_WHEN_INDEXER,         NEVER, L(indexer.wq_b)},
    {P "self_attn.indexer.wk.weight",        DSV3_SCOPE_LAYER,  DSV3_KIND_LINEAR, DSV3_DIM_INDEX_HEAD,   DSV3_DIM_HIDDEN,      DSV3_WHEN_INDEXER,         NEVER, L(indexer.wk)},
    {P "self_attn.indexer.k_norm.weight",    DSV3_SCOPE_LAYER,  DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_INDEX_HEAD,  DSV3_WHEN_INDEXER,         NEVER, V(indexer.k_norm)},
    {P "self_attn.indexer.k_norm.bias",      DSV3_SCOPE_LAYER,  DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_INDEX_HEAD,  DSV3_WHEN_INDEXER,         NEVER, V(indexer.k_norm_bias)},
    {P "self_attn.indexer.weights_proj.weight", DSV3_SCOPE_LAYER, DSV3_KIND_ROUTER, DSV3_DIM_INDEX_HEADS, DSV3_DIM_HIDDEN,    DSV3_WHEN_INDEXER,         NEVER, L(indexer.weights_proj)},
    {P "mlp.gate_proj.weight",               DSV3_SCOPE_DENSE,  DSV3_KIND_LINEAR, DSV3_DIM_INTER,        DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, L(mlp.gate)},
    {P "mlp.up_proj.weight",                 DSV3_SCOPE_DENSE,  DSV3_KIND_LINEAR, DSV3_DIM_INTER,        DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, L(mlp.up)},
    {P "mlp.down_proj.weight",               DSV3_SCOPE_DENSE,  DSV3_KIND_LINEAR, DSV3_DIM_HIDDEN,       DSV3_DIM_INTER,       ALWAYS,                    NEVER, L(mlp.down)},
    {P "mlp.gate.weight",                    DSV3_SCOPE_MOE,    DSV3_KIND_ROUTER, DSV3_DIM_EXPERTS,      DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, L(moe.gate)},
    {P "mlp.gate.e_score_correction_bias",   DSV3_SCOPE_MOE,    DSV3_KIND_ROUTER, DSV3_DIM_ONE,          DSV3_DIM_EXPERTS,     DSV3_WHEN_CORRECTION_BIAS, NEVER, V(moe.bias)},
    {P "mlp.experts.{expert}.gate_proj.weight", DSV3_SCOPE_EXPERT, DSV3_KIND_LINEAR, DSV3_DIM_MOE_INTER, DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, X(gate)},
    {P "mlp.experts.{expert}.up_proj.weight",   DSV3_SCOPE_EXPERT, DSV3_KIND_LINEAR, DSV3_DIM_MOE_INTER, DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, X(up)},
    {P "mlp.experts.{expert}.down_proj.weight", DSV3_SCOPE_EXPERT, DSV3_KIND_LINEAR, DSV3_DIM_HIDDEN,    DSV3_DIM_MOE_INTER,   ALWAYS,                    NEVER, X(down)},
    {P "mlp.shared_experts.gate_proj.weight",DSV3_SCOPE_MOE,    DSV3_KIND_LINEAR, DSV3_DIM_SHARED_INTER, DSV3_DIM_HIDDEN,      DSV3_WHEN_SHARED,          NEVER, L(moe.shared.gate)},
    {P "mlp.shared_experts.up_proj.weight",  DSV3_SCOPE_MOE,    DSV3_KIND_LINEAR, DSV3_DIM_SHARED_INTER, DSV3_DIM_HIDDEN,      DSV3_WHEN_SHARED,          NEVER, L(moe.shared.up)},
    {P "mlp.shared_experts.down_proj.weight",DSV3_SCOPE_MOE,    DSV3_KIND_LINEAR, DSV3_DIM_HIDDEN,       DSV3_DIM_SHARED_INTER,DSV3_WHEN_SHARED,          NEVER, L(moe.shared.down)},
    {"model.norm.weight",                    DSV3_SCOPE_OUTPUT, DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, offsetof(dsv3_model, norm.src)},
    {"lm_head.weight",                       DSV3_SCOPE_OUTPUT, DSV3_KIND_VECTOR, DSV3_DIM_VOCAB,        DSV3_DIM_HIDDEN,      ALWAYS,                    DSV3_WHEN_TIED, offsetof(dsv3_model, lm_head)},
    /* the MTP layer (layer index num_hidden_layers; csrc/model/mtp.c): these, then its decoder block */
    {P "enorm.weight",                       DSV3_SCOPE_MTP,    DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, T(enorm.src)},
    {P "hnorm.weight",                       DSV3_SCOPE_MTP,    DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, T(hnorm.src)},
    {P "eh_proj.weight",                     DSV3_SCOPE_MTP,    DSV3_KIND_LINEAR, DSV3_DIM_HIDDEN,       DSV3_DIM_EH_IN,       ALWAYS,                    NEVER, T(eh_proj)},
    {P "shared_head.norm.weight",            DSV3_SCOPE_MTP,    DSV3_KIND_VECTOR, DSV3_DIM_ONE,          DSV3_DIM_HIDDEN,      ALWAYS,                    NEVER, T(head_norm.src)},
    {P "shared_head.head.weight",            DSV3_SCOPE_MTP,    DSV3_KIND_VECTOR, DSV3_DIM_VOCAB,        DSV3_DIM_HIDDEN,      ALWAYS,                    ALWAYS, T(head)},  /* absent: lm_head */
    {P "embed_tokens.weight",                DSV3_SCOPE_MTP,    DSV3_KIND_VECTOR, DSV3_DIM_VOCAB,        DSV3_DIM_HIDDEN,      ALWAYS,                    ALWAYS, T(embed)}, /* absent: the model's */
};
const int dsv3_tensor_row_count = (int)(sizeof dsv3_tensor_rows / sizeof dsv3_tensor_rows[0]);

#undef L
#undef V
#undef X
#undef T
#undef P
#undef ALWAYS
#undef NEVER

/* ---- names of the enums (what Python sees) ---- */
static const char *const scope_names[DSV3_SCOPE_COUNT] = {"input", "layer", "dense", "moe", "expert", "output",
                                                          "mtp"};
static const char *const kind_names[DSV3_KIND_COUNT] = {"linear", "router", "vector"};
static const char *const dim_names[DSV3_DIM_COUNT] = {
    "one", "hidden", "vocab", "q_lora", "q_heads", "kv_a", "kv_lora", "kv_b", "o_in", "inter", "moe_inter",
    "shared_inter", "experts", "index_q", "index_head", "index_heads", "eh_in"};
static const char *const when_names[DSV3_WHEN_COUNT] = {
    "always", "never", "q_lora", "no_q_lora", "q_lora_bias", "attention_bias", "correction_bias", "shared_experts",
    "tied", "indexer"};

const char *dsv3_tensor_scope_name(dsv3_tensor_scope s) { return (unsigned)s < DSV3_SCOPE_COUNT ? scope_names[s] : "?"; }
const char *dsv3_tensor_kind_name(dsv3_tensor_kind k) { return (unsigned)k < DSV3_KIND_COUNT ? kind_names[k] : "?"; }
const char *dsv3_tensor_dim_name(dsv3_tensor_dim d) { return (unsigned)d < DSV3_DIM_COUNT ? dim_names[d] : "?"; }
const char *dsv3_tensor_when_name(dsv3_tensor_when w) { return (unsigned)w < DSV3_WHEN_COUNT ? when_names[w] : "?"; }

/* ---- shapes and conditions for a config ---- */
static int64_t mul_sat(int64_t a, int64_t b)
{
    if (a <= 0 || b <= 0)
        return 0; /* sizes are >= 0 (a config's are checked before use) */
    return a > INT64_MAX / b ? INT64_MAX : a * b;
}

static int64_t add_sat(int64_t a, int64_t b)
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

void dsv3_tensor_dims(const dsv3_model_config *c, int64_t *d)
{
    const int64_t H = c->num_attention_heads;
    d[DSV3_DIM_ONE] = 1;
    d[DSV3_DIM_HIDDEN] = c->hidden_size;
    d[DSV3_DIM_VOCAB] = c->vocab_size;
    d[DSV3_DIM_Q_LORA] = c->q_lora_rank;
    d[DSV3_DIM_Q_HEADS] = mul_sat(H, add_sat(c->qk_nope_head_dim, c->qk_rope_head_dim));
    d[DSV3_DIM_KV_A] = add_sat(c->kv_lora_rank, c->qk_rope_head_dim);
    d[DSV3_DIM_KV_LORA] = c->kv_lora_rank;
    d[DSV3_DIM_KV_B] = mul_sat(H, add_sat(c->qk_nope_head_dim, c->v_head_dim));
    d[DSV3_DIM_O_IN] = mul_sat(H, c->v_head_dim);
    d[DSV3_DIM_INTER] = c->intermediate_size;
    d[DSV3_DIM_MOE_INTER] = c->moe_intermediate_size;
    d[DSV3_DIM_SHARED_INTER] = mul_sat(c->moe_intermediate_size, c->n_shared_experts);
    d[DSV3_DIM_EXPERTS] = c->n_routed_experts;
    d[DSV3_DIM_INDEX_Q] = mul_sat(c->index_n_heads, c->index_head_dim);
    d[DSV3_DIM_INDEX_HEAD] = c->index_head_dim;
    d[DSV3_DIM_INDEX_HEADS] = c->index_n_heads;
    d[DSV3_DIM_EH_IN] = mul_sat(2, c->hidden_size);
}

int dsv3_tensor_when_holds(const dsv3_model_config *c, dsv3_tensor_when w)
{
    switch (w) {
    case DSV3_WHEN_ALWAYS: return 1;
    case DSV3_WHEN_NEVER: return 0;
    case DSV3_WHEN_Q_LORA: return c->q_lora_rank > 0;
    case DSV3_WHEN_NO_Q_LORA: return c->q_lora_rank <= 0;
    case DSV3_WHEN_Q_LORA_BIAS: return c->q_lora_rank > 0 && c->attention_bias;
    case DSV3_WHEN_ATTN_BIAS: return c->attention_bias != 0;
    case DSV3_WHEN_CORRECTION_BIAS: return c->topk_method == DSV3_TOPK_NOAUX_TC || c->topk_method == DSV3_TOPK_NOAUX;
    case DSV3_WHEN_SHARED: return c->n_shared_experts > 0;
    case DSV3_WHEN_TIED: return c->tie_word_embeddings != 0;
    case DSV3_WHEN_INDEXER: return c->index_topk > 0;
    default: return 0;
    }
}

int dsv3_layer_is_moe(const dsv3_model_config *c, int64_t l)
{
    return l >= c->first_k_dense_replace;
}

/* ---- expansion ---- */
static void expand_name(char *out, size_t cap, const char *pattern, int64_t layer, int64_t expert)
{
    size_t o = 0;
    for (const char *p = pattern; *p && o + 1 < cap;) {
        const char *key = *p == '{' ? (strncmp(p, "{layer}", 7) == 0 ? "{layer}" : strncmp(p, "{expert}", 8) == 0
                                                                                  ? "{expert}" : NULL) : NULL;
        if (key) {
            int w = snprintf(out + o, cap - o, "%lld", (long long)(key[1] == 'l' ? layer : expert));
            o = w < 0 ? o : o + (size_t)w >= cap ? cap - 1 : o + (size_t)w;
            p += strlen(key);
        } else {
            out[o++] = *p++;
        }
    }
    out[o < cap ? o : cap - 1] = '\0';
}

static void put(dsv3_tensor_slot *out, int64_t *n, const dsv3_model_config *c, const int64_t *dims,
                const dsv3_tensor_row *r, int64_t layer, int64_t expert)
{
    if (out) {
        dsv3_tensor_slot *t = &out[*n];
        memset(t, 0, sizeof *t);
        expand_name(t->name, sizeof t->name, r->name, layer, expert);
        t->n = dims[r->rows];
        t->k = dims[r->cols];
        t->is_vector = r->rows == DSV3_DIM_ONE;
        t->optional = dsv3_tensor_when_holds(c, r->optional);
        t->row = r;
        t->layer = layer;
        t->expert = expert;
    }
    (*n)++;
}

int64_t dsv3_tensor_slots(const dsv3_model_config *c, int64_t part, dsv3_tensor_slot *out)
{
    const int64_t L = c->num_hidden_layers;
    if (part < 0 || part > L + 2)
        return -1;
    int64_t dims[DSV3_DIM_COUNT], n = 0;
    dsv3_tensor_dims(c, dims);
    const int64_t layer = part >= 1 && part <= L ? part - 1 : part == L + 2 ? L : -1;
    const int moe = layer >= 0 && dsv3_layer_is_moe(c, layer);
    for (int i = 0; i < dsv3_tensor_row_count; i++) {
        const dsv3_tensor_row *r = &dsv3_tensor_rows[i];
        if (r->scope != DSV3_SCOPE_EXPERT && !dsv3_tensor_when_holds(c, r->present))
            continue;
        switch (r->scope) {
        case DSV3_SCOPE_INPUT:
            if (part == 0)
                put(out, &n, c, dims, r, -1, -1);
            break;
        case DSV3_SCOPE_OUTPUT:
            if (part == L + 1)
                put(out, &n, c, dims, r, -1, -1);
            break;
        case DSV3_SCOPE_MTP:
            if (part == L + 2)
                put(out, &n, c, dims, r, L, -1);
            break;
        case DSV3_SCOPE_LAYER:
        case DSV3_SCOPE_DENSE:
        case DSV3_SCOPE_MOE:
            if (layer >= 0 && (r->scope == DSV3_SCOPE_LAYER || (r->scope == DSV3_SCOPE_MOE) == moe))
                put(out, &n, c, dims, r, layer, -1);
            break;
        case DSV3_SCOPE_EXPERT: { /* a run of expert rows: all of them for expert 0, then expert 1, ... */
            int j = i;
            while (j < dsv3_tensor_row_count && dsv3_tensor_rows[j].scope == DSV3_SCOPE_EXPERT)
                j++;
            for (int64_t e = 0; moe && e < c->n_routed_experts; e++)
                for (int k = i; k < j; k++)
                    if (dsv3_tensor_when_holds(c, dsv3_tensor_rows[k].present))
                        put(out, &n, c, dims, &dsv3_tensor_rows[k], layer, e);
            i = j - 1;
            break;
        }
        default:
            break;
        }
    }
    return n;
}

void dsv3_tensor_totals(const dsv3_model_config *c, int64_t *count, int64_t *values)
{
    int64_t dims[DSV3_DIM_COUNT];
    dsv3_tensor_dims(c, dims);
    const int64_t L = c->num_hidden_layers > 0 ? c->num_hidden_layers : 0;
    const int64_t dense = c->first_k_dense_replace < 0 ? 0 : c->first_k_dense_replace < L ? c->first_k_dense_replace : L;
    const int64_t per_scope[DSV3_SCOPE_COUNT] = {1, L, dense, L - dense, mul_sat(L - dense, c->n_routed_experts), 1,
                                                 0 /* the MTP layer: not a tensor the model needs */};
    *count = *values = 0;
    for (int i = 0; i < dsv3_tensor_row_count; i++) {
        const dsv3_tensor_row *r = &dsv3_tensor_rows[i];
        if (!dsv3_tensor_when_holds(c, r->present) || dsv3_tensor_when_holds(c, r->optional))
            continue;
        const int64_t times = per_scope[r->scope];
        *count = add_sat(*count, times);
        *values = add_sat(*values, mul_sat(times, mul_sat(dims[r->rows], dims[r->cols])));
    }
}

int64_t dsv3_model_slots(dsv3_model *m, dsv3_tensor_slot *out)
{
    const dsv3_model_config *c = &m->cfg;
    const int64_t L = c->num_hidden_layers;
    int64_t n = 0;
    for (int64_t part = 0; part <= L + (m->mtp ? 2 : 1); part++) {
        dsv3_tensor_slot *at = out ? out + n : NULL;
        const int64_t k = dsv3_tensor_slots(c, part, at);
        for (int64_t i = 0; at && i < k; i++) {
            const dsv3_tensor_slot *t = &at[i];
            dsv3_layer *ly = t->layer == L ? &m->mtp->layer : t->layer >= 0 ? &m->layers[t->layer] : NULL;
            char *base = t->row->scope == DSV3_SCOPE_EXPERT ? (char *)&ly->moe.experts[t->expert]
                         : t->row->scope == DSV3_SCOPE_MTP ? (char *)m->mtp
                         : ly ? (char *)ly : (char *)m;
            at[i].weight = (dsv3_weight *)(void *)(base + t->row->offset);
        }
        n += k;
    }
    return n;
}

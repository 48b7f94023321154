/* Model construction: config checks, preparation and teardown (the tensor table: tensor_table.c). */
#include "dsv3_model.h"
#include "dsv3_mtp.h"
#include "dsv3_dtypes.h"
#include "model_internal.h"

#include <string.h>

static dsv3_status check_config(const dsv3_model_config *c, dsv3_error *err)
{
#define POS(f) if (c->f <= 0) return dsv3_fail(err, DSV3_E_VALUE, #f " must be positive, got %lld", (long long)c->f)
#define NONNEG(f) if (c->f < 0) return dsv3_fail(err, DSV3_E_VALUE, #f " must be >= 0, got %lld", (long long)c->f)
    POS(vocab_size); POS(hidden_size); POS(num_hidden_layers); POS(num_attention_heads); POS(kv_lora_rank);
    POS(qk_rope_head_dim); POS(v_head_dim); NONNEG(qk_nope_head_dim); NONNEG(q_lora_rank);
    NONNEG(first_k_dense_replace); NONNEG(n_shared_experts);
#undef POS
#undef NONNEG
    if (c->qk_rope_head_dim % 2 || c->qk_rope_head_dim > 512)
        return dsv3_fail(err, DSV3_E_VALUE, "qk_rope_head_dim must be even and <= 512, got %lld",
                         (long long)c->qk_rope_head_dim);
    if (c->first_k_dense_replace > 0 && c->intermediate_size <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "intermediate_size must be positive, got %lld",
                         (long long)c->intermediate_size);
    if (!c->rope_inv_freq)
        return dsv3_fail(err, DSV3_E_VALUE, "rope_inv_freq is missing");
    if ((unsigned)c->kv_cache_dtype >= DSV3_KV_DTYPE_COUNT)
        return dsv3_fail(err, DSV3_E_VALUE, "kv_cache_dtype must be f32, bf16 or fp8 (0..2), got %d",
                         (int)c->kv_cache_dtype);
    /* Bounds that keep every size computed from the config (and s <= max_seq_len <= 2^32 tokens) in int64:
     * each dimension <= 2^24, per-token widths <= 2^28 values, weight matrices <= 2^40 values. */
    const int64_t max_dim = (int64_t)1 << 24;
#define DIM(f) if (c->f > max_dim) return dsv3_fail(err, DSV3_E_VALUE, #f " must be <= 2^24, got %lld", (long long)c->f)
    DIM(vocab_size); DIM(hidden_size); DIM(intermediate_size); DIM(moe_intermediate_size); DIM(num_hidden_layers);
    DIM(num_attention_heads); DIM(q_lora_rank); DIM(kv_lora_rank); DIM(qk_nope_head_dim); DIM(v_head_dim);
    DIM(n_routed_experts); DIM(n_shared_experts); DIM(num_experts_per_tok); DIM(n_group); DIM(topk_group);
#undef DIM
    const int64_t heads_width = c->num_attention_heads * (c->qk_nope_head_dim + c->qk_rope_head_dim + c->v_head_dim);
    if (heads_width > ((int64_t)1 << 28) || c->moe_intermediate_size * c->n_shared_experts > max_dim)
        return dsv3_fail(err, DSV3_E_VALUE, "config dimensions too large: num_attention_heads * (qk_nope_head_dim + "
                         "qk_rope_head_dim + v_head_dim) = %lld (max 2^28) or moe_intermediate_size * "
                         "n_shared_experts = %lld (max 2^24)", (long long)heads_width,
                         (long long)(c->moe_intermediate_size * c->n_shared_experts));
    if (c->vocab_size * c->hidden_size > ((int64_t)1 << 40))
        return dsv3_fail(err, DSV3_E_VALUE, "config dimensions too large: vocab_size * hidden_size = %lld (max 2^40)",
                         (long long)(c->vocab_size * c->hidden_size));
    if (c->index_topk < 0 || c->index_n_heads < 0 || c->index_head_dim < 0)
        return dsv3_fail(err, DSV3_E_VALUE, "index_topk, index_n_heads and index_head_dim must be >= 0 (got %lld, "
                         "%lld, %lld)", (long long)c->index_topk, (long long)c->index_n_heads,
                         (long long)c->index_head_dim);
    if (c->index_topk > 0) {
        const dsv3_mla_dims d = {c->hidden_size, c->num_attention_heads, c->q_lora_rank, c->kv_lora_rank,
                                 c->qk_nope_head_dim, c->qk_rope_head_dim, c->v_head_dim, 0.f, 0, 0, DSV3_KV_F32};
        const dsv3_indexer_dims ix = {c->index_n_heads, c->index_head_dim, c->index_topk, 0};
        dsv3_status st = dsv3_indexer_check(&d, &ix, err);
        if (st != DSV3_OK)
            return st;
    }
    if (c->first_k_dense_replace < c->num_hidden_layers) {
        if (c->moe_intermediate_size <= 0)
            return dsv3_fail(err, DSV3_E_VALUE, "moe_intermediate_size must be positive, got %lld",
                             (long long)c->moe_intermediate_size);
        dsv3_router_spec r = {c->n_routed_experts, c->num_experts_per_tok, c->n_group, c->topk_group,
                              c->scoring_func, c->topk_method, c->norm_topk_prob, c->routed_scaling_factor,
                              c->group_mask_value};
        return dsv3_router_check(&r, err);
    }
    return DSV3_OK;
}

dsv3_kv_layout dsv3_model_kv_layout(const dsv3_model *m)
{
    return dsv3_kv_layout_of(m->mla.kv_dtype, m->cfg.kv_lora_rank, m->cfg.qk_rope_head_dim);
}

/* Layer l's kind (dense or MoE) and its table of routed experts; 0 when out of memory. */
static int layer_init(dsv3_layer *ly, const dsv3_model_config *cfg, int64_t l)
{
    memset(ly, 0, sizeof *ly);
    ly->is_moe = dsv3_layer_is_moe(cfg, l);
    if (!ly->is_moe)
        return 1;
    ly->moe.experts = dsv3_alloc((size_t)cfg->n_routed_experts * sizeof(dsv3_mlp_weights));
    if (!ly->moe.experts)
        return 0;
    memset(ly->moe.experts, 0, (size_t)cfg->n_routed_experts * sizeof(dsv3_mlp_weights));
    ly->moe.has_shared = cfg->n_shared_experts > 0;
    return 1;
}

dsv3_status dsv3_model_create(const dsv3_model_config *cfg, int64_t capacity, dsv3_attn_mode mode,
                              dsv3_model **out, dsv3_error *err)
{
    *out = NULL;
    dsv3_status st = check_config(cfg, err);
    if (st != DSV3_OK)
        return st;
    if (capacity <= 0 || capacity > ((int64_t)1 << 32))
        return dsv3_fail(err, DSV3_E_VALUE, "max_seq_len must be in 1..2^32, got %lld", (long long)capacity);
    if (mode != DSV3_ATTN_ABSORBED && mode != DSV3_ATTN_NAIVE)
        return dsv3_fail(err, DSV3_E_VALUE, "attention mode must be absorbed or naive");
    dsv3_model *m = dsv3_alloc(sizeof *m);
    if (!m)
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory for the model");
    memset(m, 0, sizeof *m);
    m->pack = -1;
    m->cfg = *cfg;
    m->capacity = capacity;
    m->attn_mode = mode;
    const int64_t L = cfg->num_hidden_layers, half = cfg->qk_rope_head_dim / 2;
    m->inv_freq = dsv3_alloc((size_t)half * sizeof(float));
    m->layers = dsv3_alloc((size_t)L * sizeof(dsv3_layer));
    if (!m->inv_freq || !m->layers)
        goto nomem;
    memcpy(m->inv_freq, cfg->rope_inv_freq, (size_t)half * sizeof(float));
    m->cfg.rope_inv_freq = m->inv_freq;
    memset(m->layers, 0, (size_t)L * sizeof(dsv3_layer));
    for (int64_t l = 0; l < L; l++)
        if (!layer_init(&m->layers[l], cfg, l))
            goto nomem;
    m->mla = (dsv3_mla_dims){cfg->hidden_size, cfg->num_attention_heads, cfg->q_lora_rank, cfg->kv_lora_rank,
                             cfg->qk_nope_head_dim, cfg->qk_rope_head_dim, cfg->v_head_dim, cfg->softmax_scale,
                             cfg->rope_interleave, cfg->attention_bias, cfg->kv_cache_dtype};
    m->index = (dsv3_indexer_dims){cfg->index_n_heads, cfg->index_head_dim, cfg->index_topk, cfg->index_key_fp8 != 0};
    m->router = (dsv3_router_spec){cfg->n_routed_experts, cfg->num_experts_per_tok, cfg->n_group, cfg->topk_group,
                                   cfg->scoring_func, cfg->topk_method, cfg->norm_topk_prob,
                                   cfg->routed_scaling_factor, cfg->group_mask_value};
    *out = m;
    return DSV3_OK;
nomem:
    dsv3_model_free(m);
    return dsv3_fail(err, DSV3_E_NOMEM, "out of memory for the model's layer table");
}

static void free_vec(dsv3_vec *v)
{
    dsv3_free(v->f32);
    v->f32 = NULL;
}

static void layer_free(dsv3_layer *ly)
{
    dsv3_vec *vecs[] = {&ly->input_layernorm, &ly->post_attention_layernorm, &ly->attn.q_a_layernorm,
                        &ly->attn.kv_a_layernorm, &ly->attn.q_a_bias, &ly->attn.kv_a_bias, &ly->attn.o_bias,
                        &ly->moe.bias, &ly->indexer.k_norm, &ly->indexer.k_norm_bias};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++)
        free_vec(vecs[i]);
    dsv3_mla_absorb_free(&ly->attn);
    dsv3_free(ly->moe.experts);
    dsv3_free(ly->cache);
    dsv3_free(ly->index_cache);
}

static void mtp_free(dsv3_mtp *t)
{
    if (!t)
        return;
    layer_free(&t->layer);
    free_vec(&t->enorm);
    free_vec(&t->hnorm);
    free_vec(&t->head_norm);
    dsv3_free(t);
}

void dsv3_model_free(dsv3_model *m)
{
    if (!m)
        return;
    for (int64_t l = 0; m->layers && l < m->cfg.num_hidden_layers; l++)
        layer_free(&m->layers[l]);
    mtp_free(m->mtp);
    free_vec(&m->norm);
    dsv3_model_workspace_free(&m->ws);
    dsv3_free(m->packed);
    dsv3_free(m->layers);
    dsv3_free(m->inv_freq);
    dsv3_free(m);
}

dsv3_status dsv3_model_enable_mtp(dsv3_model *m, dsv3_error *err)
{
    if (m->prepared)
        return dsv3_fail(err, DSV3_E_VALUE, "MTP: enable it before the weights are loaded (the model is prepared)");
    if (m->mtp)
        return DSV3_OK;
    const dsv3_model_config *c = &m->cfg;
    if (c->num_hidden_layers >= c->first_k_dense_replace) { /* the MTP layer is MoE: checked like a main one */
        if (c->moe_intermediate_size <= 0)
            return dsv3_fail(err, DSV3_E_VALUE, "moe_intermediate_size must be positive, got %lld",
                             (long long)c->moe_intermediate_size);
        dsv3_status st = dsv3_router_check(&m->router, err);
        if (st != DSV3_OK)
            return st;
    } else if (c->intermediate_size <= 0) {
        return dsv3_fail(err, DSV3_E_VALUE, "intermediate_size must be positive, got %lld",
                         (long long)c->intermediate_size);
    }
    dsv3_mtp *t = dsv3_alloc(sizeof *t);
    if (!t)
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory for the MTP layer");
    memset(t, 0, sizeof *t);
    if (!layer_init(&t->layer, c, c->num_hidden_layers)) {
        dsv3_free(t);
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory for the MTP layer's expert table");
    }
    m->mtp = t;
    return DSV3_OK;
}

/* ---- preparation ---- */
static dsv3_status vec_to_f32(dsv3_vec *v, dsv3_error *err)
{
    if (!v->src.data)
        return DSV3_OK;
    const int64_t n = v->src.k;
    float *f = dsv3_alloc((size_t)n * sizeof(float));
    if (!f)
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory converting a 1-D parameter");
    for (int64_t i = 0; i < n; i++)
        f[i] = v->src.fmt == DSV3_FMT_BF16 ? dsv3_bf16_to_f32(((const uint16_t *)v->src.data)[i])
                                           : ((const float *)v->src.data)[i];
    dsv3_free(v->f32);
    v->f32 = f;
    return DSV3_OK;
}

/* Absorbed attention's per-head W_UV row views of kv_b_proj (dsv3_mla_absorb: no dequantised copies) and
 * the layer's latent cache (capacity rows). */
static dsv3_status layer_prepare(dsv3_model *m, dsv3_layer *ly, int isa, dsv3_error *err)
{
    const int64_t row = dsv3_model_kv_layout(m).row_bytes;
    if (m->attn_mode == DSV3_ATTN_ABSORBED) {
        dsv3_status st = dsv3_mla_absorb(&m->mla, &ly->attn, isa, err);
        if (st != DSV3_OK)
            return st;
    }
    dsv3_free(ly->cache);
    ly->cache = NULL;
    size_t bytes;
    if (!dsv3_mul_size((size_t)m->capacity, (size_t)row, &bytes) || !(ly->cache = dsv3_alloc(bytes)))
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory for the latent cache (%lld tokens x %lld bytes)",
                         (long long)m->capacity, (long long)row);
    dsv3_free(ly->index_cache);
    ly->index_cache = NULL;
    if (m->index.topk > 0 &&
        (!dsv3_mul_size((size_t)m->capacity, (size_t)dsv3_indexer_key_row(&m->index) * sizeof(float), &bytes) ||
         !(ly->index_cache = dsv3_alloc(bytes))))
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory for the index-key cache (%lld tokens x %lld values)",
                         (long long)m->capacity, (long long)m->index.head_dim);
    ly->cache_rows = 0;
    return DSV3_OK;
}

dsv3_status dsv3_model_prepare(dsv3_model *m, int isa, dsv3_error *err)
{
    const int64_t count = dsv3_model_slots(m, NULL);
    dsv3_tensor_slot *slots = dsv3_alloc((size_t)count * sizeof *slots);
    if (!slots)
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory listing %lld tensors", (long long)count);
    dsv3_model_slots(m, slots);
    dsv3_status st = DSV3_OK;
    for (int64_t i = 0; i < count && st == DSV3_OK; i++) {
        const dsv3_tensor_slot *t = &slots[i];
        const dsv3_weight *w = t->weight;
        if (!w->data && !w->packed) { /* packed only: a dsv3 convert --pack checkpoint */
            if (!t->optional)
                st = dsv3_fail(err, DSV3_E_VALUE, "missing tensor %s", t->name);
        } else if (w->n != t->n || w->k != t->k) {
            st = dsv3_fail(err, DSV3_E_VALUE, "tensor %s: expected shape [%lld, %lld], got [%lld, %lld]", t->name,
                           (long long)t->n, (long long)t->k, (long long)w->n, (long long)w->k);
        } else if ((t->is_vector || w == &m->embed || (m->mtp && w == &m->mtp->embed)) && w->fmt != DSV3_FMT_F32 && w->fmt != DSV3_FMT_BF16) {
            st = dsv3_fail(err, DSV3_E_TYPE, "tensor %s must be float32 or bfloat16", t->name);
        } else if (t->is_vector) {
            st = vec_to_f32((dsv3_vec *)(void *)w, err); /* src is the first member of dsv3_vec */
        }
    }
    if (st == DSV3_OK) /* before the absorbed views of kv_b_proj are taken (it is never packed anyway) */
        st = dsv3_model_pack(m, slots, count, err);
    if (st == DSV3_OK)
        dsv3_model_populate(m, slots, count);
    dsv3_free(slots);
    for (int64_t l = 0; l < m->cfg.num_hidden_layers && st == DSV3_OK; l++)
        st = layer_prepare(m, &m->layers[l], isa, err);
    if (st == DSV3_OK && m->mtp) {
        st = layer_prepare(m, &m->mtp->layer, isa, err);
        m->mtp->cache_len = 0;
    }
    if (st == DSV3_OK) /* a decode step (one token over up to the whole cache) allocates nothing */
        st = dsv3_model_reserve(m, 1, 1, err);
    m->cache_len = 0;
    m->prepared = st == DSV3_OK;
    return st;
}

/* The DeepSeek-V3-family causal LM (csrc/model/): config, weights, latent KV cache, forward,
 * per-module probes and the sampler; semantics of transformers' DeepseekV3ForCausalLM.
 *
 * Life cycle (build/free in pairs):
 *   dsv3_model_create(cfg, capacity, mode)    validates the config, allocates the weight slots;
 *   dsv3_model_slots(m, ...)                  lists every tensor slot by canonical name and shape,
 *                                             the loader fills slot->weight (no copies: the caller
 *                                             keeps the memory alive for the model's lifetime);
 *   dsv3_model_prepare(m)                     checks every slot, converts 1-D params to f32, makes
 *                                             the per-head W_UV views of kv_b_proj (no copies),
 *                                             allocates the latent cache and
 *                                             the workspace for decode;
 *   dsv3_model_forward(m, ids, s, logits)     prefill or decode: appends s tokens to the cache
 *                                             (a decode step allocates nothing);
 *   dsv3_model_free(m).
 */
#ifndef DSV3_MODEL_H
#define DSV3_MODEL_H

#include "dsv3_linear_plan.h"
#include "dsv3_indexer.h"
#include "dsv3_mla.h"
#include "dsv3_moe.h"

typedef struct {
    int64_t vocab_size, hidden_size, intermediate_size, moe_intermediate_size, num_hidden_layers,
        num_attention_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim,
        n_routed_experts, n_shared_experts, num_experts_per_tok, n_group, topk_group, first_k_dense_replace;
    int norm_topk_prob, rope_interleave, attention_bias, tie_word_embeddings;
    float routed_scaling_factor, rms_norm_eps, group_mask_value, softmax_scale, rope_attention_scaling;
    dsv3_score_func scoring_func;
    dsv3_topk_method topk_method;
    const float *rope_inv_freq; /* [qk_rope_head_dim / 2]; copied by dsv3_model_create */
    int64_t index_n_heads, index_head_dim, index_topk; /* V3.2 lightning indexer (dsv3_indexer.h); topk 0: none */
    int index_key_fp8; /* V3.2: FP8 index keys as DeepSeek's reference stores them (0: f32, exact mode) */
    dsv3_kv_dtype kv_cache_dtype; /* storage of the latent cache (dsv3_kv_cache.h); 0: f32 */
} dsv3_model_config;

typedef struct {
    dsv3_vec input_layernorm, post_attention_layernorm; /* [hidden] */
    dsv3_mla_weights attn;
    int is_moe;
    dsv3_mlp_weights mlp; /* dense layers */
    dsv3_moe_weights moe; /* MoE layers */
    void *cache;          /* owned: capacity rows of dsv3_model_kv_layout(m) */
    int64_t cache_rows;   /* rows written (run_module may write one layer alone) */
    dsv3_indexer_weights indexer; /* V3.2 only (cfg.index_topk > 0) */
    float *index_cache;   /* owned, V3.2 only: [capacity, index_head_dim] index keys */
} dsv3_layer;

/* Scratch of the forward pass and the probes, owned by the model: sized for decode (one token) by
 * dsv3_model_prepare and grown (once per call, before the first layer, never per layer) when a
 * longer prefill or probe arrives, so a decode step allocates nothing. Freed by dsv3_model_free. */
typedef struct {
    int64_t tokens;   /* capacity of the buffers below, in tokens */
    float *h;         /* [3, tokens, hidden]: residual stream and two temporaries */
    float *rope;      /* [2, tokens, rope/2]: cos | sin of the tokens' positions, then int64 positions [tokens] */
    float *mlp;       /* [tokens, 2 * max(intermediate, shared experts' width)]: dense / shared gate | up */
    float *cache;     /* [tokens, kv_lora + rope]: the latent rows of a probe without the cache */
    void *block;      /* owned: the four above */
    dsv3_lin_arena lin; /* owned base: prepared activations of the linears of a decode-sized call (bound to the
                         * calling thread during forward / probes, dsv3_linear_bind_arena) */
    int64_t lin_tokens, lin_rows; /* what `lin` was sized for */
    dsv3_mla_scratch mla;
    dsv3_moe_scratch moe;
    dsv3_indexer_scratch index; /* V3.2 only */
} dsv3_workspace;

/* Grow m->ws to hold `tokens` new tokens attending to `rows` cached rows (past + tokens); no-op when
 * it already does. On failure (DSV3_E_NOMEM) the workspace keeps its previous buffers. */
/* DeepSeek's multi-token-prediction (MTP, "nextn") layer: layer index num_hidden_layers of the checkpoint,
 * loaded only after dsv3_model_enable_mtp (csrc/model/mtp.c; the API in dsv3_mtp.h). */
typedef struct {
    dsv3_vec enorm, hnorm;  /* [hidden] */
    dsv3_weight eh_proj;    /* [hidden, 2 * hidden]: input [enorm(embed(next token)) | hnorm(hidden)] */
    dsv3_layer layer;       /* the decoder block (MLA + dense MLP or MoE), with its own latent cache */
    dsv3_vec head_norm;     /* shared_head.norm [hidden] */
    dsv3_weight head;       /* shared_head.head [vocab, hidden]; absent: the model's lm_head (embed when tied) */
    dsv3_weight embed;      /* the layer's own embed_tokens copy; absent: the model's embed_tokens */
    int64_t cache_len;      /* positions in the MTP layer's cache */
} dsv3_mtp;

typedef struct dsv3_model dsv3_model;
dsv3_status dsv3_model_reserve(dsv3_model *m, int64_t tokens, int64_t rows, dsv3_error *err);
void dsv3_model_workspace_free(dsv3_workspace *ws);

struct dsv3_model {
    dsv3_model_config cfg;
    float *inv_freq;       /* owned copy of cfg.rope_inv_freq */
    dsv3_mla_dims mla;
    dsv3_indexer_dims index; /* topk 0: dense attention (every model but V3.2) */
    dsv3_router_spec router;
    dsv3_attn_mode attn_mode;
    dsv3_weight embed;     /* [vocab, hidden], f32 or bf16 */
    dsv3_vec norm;         /* [hidden] */
    dsv3_weight lm_head;   /* [vocab, hidden]; unused when tied */
    dsv3_layer *layers;    /* [num_hidden_layers] */
    int64_t capacity;      /* cache rows per layer */
    int64_t cache_len;     /* tokens in the cache */
    int prepared;
    dsv3_workspace ws;     /* scratch of forward and the probes */
    dsv3_mtp *mtp;         /* owned; NULL unless dsv3_model_enable_mtp */
    void *packed;          /* owned: the packed kernel layouts of the fast-precision int4 weights (their
                            * dsv3_weight.packed point here; csrc/model/pack_weights.c), or NULL */
    size_t packed_bytes;
    int pack;              /* packing at load of the fast-precision int4 weights: -1 unless DSV3_PACK=0 (the
                            * default), 0 never, 1 always (pack_weights.c); set before dsv3_model_prepare */
    int attn_per_token;    /* set during dsv3_model_forward_hidden(step_attention): each token's attention core
                            * runs as its own decode step (csrc/model/mtp.c) */
};

/* The latent cache's row layout of a model (its kv_cache_dtype); bytes per token = layers * row_bytes. */
dsv3_kv_layout dsv3_model_kv_layout(const dsv3_model *m);

dsv3_status dsv3_model_create(const dsv3_model_config *cfg, int64_t capacity, dsv3_attn_mode mode,
                              dsv3_model **out, dsv3_error *err);
void dsv3_model_free(dsv3_model *m);

/* ---- the tensor table (csrc/model/tensor_table.c): every tensor the model reads, one row each ----
 * The one description of the canonical tensors (names, shapes per config, which format rules apply):
 * dsv3_model_slots expands it for a model, and Python reads it through _dsv3.tensor_table() and
 * _dsv3.tensor_slots(config, part) (dsv3.checkpoint.canonical_shapes). A new tensor is one row there
 * (plus its member in the weight structs). */
typedef enum {
    DSV3_SCOPE_INPUT,  /* once, before the layers (embed_tokens) */
    DSV3_SCOPE_LAYER,  /* every decoder layer */
    DSV3_SCOPE_DENSE,  /* layers < first_k_dense_replace */
    DSV3_SCOPE_MOE,    /* layers >= first_k_dense_replace */
    DSV3_SCOPE_EXPERT, /* each routed expert of a MoE layer (a run of rows is expanded expert by expert) */
    DSV3_SCOPE_OUTPUT, /* once, after the layers (final norm, lm_head) */
    DSV3_SCOPE_MTP,    /* the MTP layer's own tensors (part num_hidden_layers + 2, with its decoder block) */
    DSV3_SCOPE_COUNT
} dsv3_tensor_scope;
/* linear: a matmul weight (any storage format); router: read as float32 (the router's math);
 * vector: stored float in every source checkpoint (norms, biases, embeddings, lm_head). */
typedef enum { DSV3_KIND_LINEAR, DSV3_KIND_ROUTER, DSV3_KIND_VECTOR, DSV3_KIND_COUNT } dsv3_tensor_kind;
/* Sizes the table's shapes are made of (dsv3_tensor_dims computes them from a config). */
typedef enum {
    DSV3_DIM_ONE,          /* rows of a 1-D parameter */
    DSV3_DIM_HIDDEN, DSV3_DIM_VOCAB, DSV3_DIM_Q_LORA,
    DSV3_DIM_Q_HEADS,      /* heads * (qk_nope + qk_rope) */
    DSV3_DIM_KV_A,         /* kv_lora + qk_rope */
    DSV3_DIM_KV_LORA,
    DSV3_DIM_KV_B,         /* heads * (qk_nope + v) */
    DSV3_DIM_O_IN,         /* heads * v */
    DSV3_DIM_INTER, DSV3_DIM_MOE_INTER,
    DSV3_DIM_SHARED_INTER, /* moe_intermediate * n_shared_experts */
    DSV3_DIM_EXPERTS,
    DSV3_DIM_INDEX_Q,      /* V3.2 indexer: index_n_heads * index_head_dim */
    DSV3_DIM_INDEX_HEAD,   /* index_head_dim */
    DSV3_DIM_INDEX_HEADS,  /* index_n_heads */
    DSV3_DIM_EH_IN,        /* 2 * hidden: the MTP layer's eh_proj input */
    DSV3_DIM_COUNT
} dsv3_tensor_dim;
/* Config conditions: when a row is present, when it may be absent. */
typedef enum {
    DSV3_WHEN_ALWAYS, DSV3_WHEN_NEVER,
    DSV3_WHEN_Q_LORA,          /* q_lora_rank > 0 */
    DSV3_WHEN_NO_Q_LORA,       /* q_lora_rank == 0 (plain q_proj) */
    DSV3_WHEN_Q_LORA_BIAS,     /* q_lora_rank > 0 and attention_bias */
    DSV3_WHEN_ATTN_BIAS,       /* attention_bias */
    DSV3_WHEN_CORRECTION_BIAS, /* topk_method noaux_tc or noaux */
    DSV3_WHEN_SHARED,          /* n_shared_experts > 0 */
    DSV3_WHEN_TIED,            /* tie_word_embeddings */
    DSV3_WHEN_INDEXER,         /* index_topk > 0 (V3.2's lightning indexer) */
    DSV3_WHEN_COUNT
} dsv3_tensor_when;
typedef struct {
    const char *name;            /* "model.layers.{layer}.mlp.experts.{expert}.gate_proj.weight" */
    dsv3_tensor_scope scope;
    dsv3_tensor_kind kind;
    dsv3_tensor_dim rows, cols;  /* rows DSV3_DIM_ONE: a 1-D [cols] parameter */
    dsv3_tensor_when present, optional;
    size_t offset;               /* of its dsv3_weight in dsv3_model (input/output), dsv3_layer (layer, dense,
                                  * moe) or dsv3_mlp_weights (expert) */
} dsv3_tensor_row;

extern const dsv3_tensor_row dsv3_tensor_rows[];
extern const int dsv3_tensor_row_count;
const char *dsv3_tensor_scope_name(dsv3_tensor_scope s);
const char *dsv3_tensor_kind_name(dsv3_tensor_kind k);
const char *dsv3_tensor_dim_name(dsv3_tensor_dim d);
const char *dsv3_tensor_when_name(dsv3_tensor_when w);
/* dims[DSV3_DIM_COUNT] for config c (products saturate at INT64_MAX; c is not checked here). */
void dsv3_tensor_dims(const dsv3_model_config *c, int64_t *dims);
int dsv3_tensor_when_holds(const dsv3_model_config *c, dsv3_tensor_when w);
/* Whether decoder layer l has a routed-expert MLP. */
int dsv3_layer_is_moe(const dsv3_model_config *c, int64_t l);

/* One tensor the model needs: canonical name, expected shape ([1, n] for 1-D params, which set
 * is_vector), whether it may be absent, its table row, and the slot to fill (NULL from
 * dsv3_tensor_slots). */
typedef struct {
    char name[112];
    int64_t n, k;
    int is_vector, optional;
    const dsv3_tensor_row *row;
    int64_t layer, expert;       /* -1 where the row has none */
    dsv3_weight *weight;
} dsv3_tensor_slot;

/* The tensors of one part of a model with config c, in the canonical order: part 0 is before the
 * layers, part 1 + l decoder layer l, part num_hidden_layers + 1 after the layers, part
 * num_hidden_layers + 2 the MTP layer (its own tensors, then its decoder block as layer num_hidden_layers;
 * loaded only by a model with dsv3_model_enable_mtp). Returns the count
 * (-1 for a part out of range) and fills out[0..count) when out is not NULL (weight = NULL). */
int64_t dsv3_tensor_slots(const dsv3_model_config *c, int64_t part, dsv3_tensor_slot *out);
/* Totals over every part without listing them (a config may call for billions of tensors): the number of
 * tensors the model needs (optional ones left out) and of their values, each saturating at INT64_MAX. */
void dsv3_tensor_totals(const dsv3_model_config *c, int64_t *count, int64_t *values);
/* Every slot of model m (all parts), weight pointing into m; fills out[0..count) when out is not NULL. */
int64_t dsv3_model_slots(dsv3_model *m, dsv3_tensor_slot *out);

dsv3_status dsv3_model_prepare(dsv3_model *m, int isa, dsv3_error *err);
/* Whether the tensor of this canonical name takes the packed kernel layout when its format has one (the one
 * rule: packing at load, csrc/model/pack_weights.c, and dsv3 convert --pack follow it). kv_b_proj does not:
 * absorbed attention reads its stored rows directly. */
int dsv3_tensor_packs(const char *name);

/* Run s tokens (ids [s]) after the cached ones; logits [s, vocab]. */
dsv3_status dsv3_model_forward(dsv3_model *m, const int64_t *ids, int64_t s, float *logits, int isa,
                               dsv3_error *err);
/* Which positions get logits: all s ([s, vocab]), the last one ([1, vocab]: lm_head on one row), none
 * (logits may be NULL: the call only fills the cache, e.g. a prompt before decoding). Also the batched
 * engine's per-sequence codes (dsv3_batch_seq.logits, 0/1/2 from Python). */
typedef enum { DSV3_LOGITS_NONE = 0, DSV3_LOGITS_LAST = 1, DSV3_LOGITS_ALL = 2 } dsv3_logits_mode;
dsv3_status dsv3_model_forward_ex(dsv3_model *m, const int64_t *ids, int64_t s, float *logits, dsv3_logits_mode which,
                                  int isa, dsv3_error *err);
void dsv3_model_reset(dsv3_model *m);

/* ---- per-module probes (parity checks against transformers' modules) ---- */
typedef enum {
    DSV3_MOD_INPUT_LAYERNORM = 0,
    DSV3_MOD_POST_ATTENTION_LAYERNORM,
    DSV3_MOD_ATTENTION,      /* start_pos, use_cache */
    DSV3_MOD_MLP,            /* dense MLP, or whole MoE (routed + shared) */
    DSV3_MOD_SHARED_EXPERTS,
    DSV3_MOD_DECODER_LAYER,  /* start_pos, use_cache */
    DSV3_MOD_FINAL_NORM,     /* layer ignored */
    DSV3_MOD_COUNT
} dsv3_module_kind;

/* x, out [s, hidden]. With use_cache the layer's own cache rows [0, start_pos) are read and rows
 * [start_pos, start_pos+s) written (start_pos <= rows already written); without it the s tokens
 * attend only to each other, at positions start_pos.. */
dsv3_status dsv3_model_run_module(dsv3_model *m, dsv3_module_kind kind, int64_t layer, const float *x,
                                  int64_t s, int64_t start_pos, int use_cache, float *out, int isa,
                                  dsv3_error *err);
/* The V3.2 indexer of `layer` on x [s, hidden] at positions 0..s-1 (no cache; the attention input, i.e. after
 * input_layernorm): sel [s, index_topk] the rows each query keeps, ascending, -1 after the first min(topk, i+1);
 * scores [s, s] the index scores, -inf above the diagonal. Fails on a model without an indexer. */
dsv3_status dsv3_model_indexer(dsv3_model *m, int64_t layer, const float *x, int64_t s, int64_t *sel, float *scores,
                               int isa, dsv3_error *err);
/* Router of MoE layer `layer`: weights [s, k], indices [s, k]. */
dsv3_status dsv3_model_route(dsv3_model *m, int64_t layer, const float *x, int64_t s, float *weights,
                             int64_t *indices, int isa, dsv3_error *err);
/* Routed experts of MoE layer `layer` for given indices/weights [s, k]. */
dsv3_status dsv3_model_experts(dsv3_model *m, int64_t layer, const float *x, int64_t s, const int64_t *indices,
                               const float *weights, float *out, int isa, dsv3_error *err);
/* cos, sin [n, rope_dim] exactly as transformers' rotary embedding returns them (cat(f, f)). */
dsv3_status dsv3_model_rope(const dsv3_model *m, const int64_t *pos, int64_t n, float *cos_out, float *sin_out,
                            dsv3_error *err);

/* ---- sampling ---- */
/* temperature <= 0: argmax (first maximum). Else softmax(logits / temperature) restricted to the
 * top_k largest (top_k <= 0: all) and to the smallest set of most likely tokens whose probability
 * reaches top_p (top_p >= 1: all), drawn with a splitmix64 stream whose state *rng is advanced. */
dsv3_status dsv3_sample(const float *logits, int64_t vocab, float temperature, int64_t top_k, float top_p,
                        uint64_t *rng, int64_t *token, dsv3_error *err);

/* Sampling parameters of one sequence (transformers' generate arguments). */
typedef struct {
    float temperature;        /* <= 0: greedy (argmax of the penalised logits, first maximum) */
    int64_t top_k;            /* <= 0 or >= vocab: all */
    float top_p;              /* in (0, 1]; 1: all */
    float min_p;              /* in [0, 1]; 0: off */
    float repetition_penalty; /* > 0; 1: off */
} dsv3_sampling;

/* One token from logits [vocab] (not modified). seen [n_seen]: the ids the repetition penalty applies
 * to (prompt and generated; ids outside the vocabulary are ignored). Order as transformers: penalty,
 * temperature, top-k (the first k by (value desc, id asc)), top-p, min-p; the draw walks the kept
 * tokens in id order (no top-k/top-p) or sorted order. logprob (may be NULL): log-softmax of the raw
 * logits at *token; n_top > 0: top_ids / top_logprobs [n_top] get the n_top most likely raw tokens. */
dsv3_status dsv3_sample_ex(const float *logits, int64_t vocab, const dsv3_sampling *p, const int64_t *seen,
                           int64_t n_seen, uint64_t *rng, int64_t *token, float *logprob, int64_t n_top,
                           int64_t *top_ids, float *top_logprobs, dsv3_error *err);

/* dsv3_sample_ex over rows: logits [rows, vocab], params/rngs/tokens/logprobs [rows], the seen ids of row
 * r are seen[seen_off[r] .. seen_off[r+1]) (seen_off NULL: none), top_* [rows, n_top]. Each row is
 * sampled alone, so a row's token does not depend on the other rows. */
dsv3_status dsv3_sample_rows(const float *logits, int64_t rows, int64_t vocab, const dsv3_sampling *params,
                             const int64_t *seen, const int64_t *seen_off, uint64_t *rngs, int64_t *tokens,
                             float *logprobs, int64_t n_top, int64_t *top_ids, float *top_logprobs,
                             dsv3_error *err);

#endif

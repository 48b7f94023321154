/* DeepSeek-V3.2 sparse attention (DSA): the lightning indexer and MLA over the selected rows
 * (csrc/mla/indexer.c, csrc/mla/sparse.c). Parity target: transformers'
 * DeepseekV32Indexer / DeepseekV32Attention (5.24), fp32.
 *
 * Per token, from the attention input x [hidden] and the q LoRA latent qa = q_a_layernorm(q_a_proj(x)):
 *   q_h = wq_b(qa)_h                       [heads, head_dim]
 *   k   = LayerNorm(wk(x)) (weight + bias, eps 1e-6)       [head_dim]
 *   RoPE on the first qk_rope_head_dim values of q_h and k, half-split pairs (t[j], t[j+rope/2]), with
 *   the main attention's cos/sin (attention scaling included): transformers' apply_rotary_pos_emb.
 *   w_h = weights_proj(x)_h * heads^-0.5
 *   score[i, t] = sum_h w_h[i] * relu((q_h[i] . k[t]) * head_dim^-0.5), for t <= position of i.
 * Query i keeps the topk rows with the largest scores; MLA attends only to them. When a query sees
 * at most topk rows (position + 1 <= topk) all of them are kept, which is exactly dense causal
 * attention (transformers' mask gives the same: its extra picks are causally masked rows).
 *
 * Tie rule (a total order, so the selected set is unique): larger score first; equal scores: the
 * earlier position first. torch.topk does not define its order among ties; the parity tests use
 * configurations whose scores have no tie at the top-k boundary (and check that they have none).
 * NaN scores sort below every number (never selected ahead of one).
 *
 * Index keys are cached per position beside the latent cache (the "index-key cache"), as
 * transformers' DynamicIndexedLayer does: f32 [capacity, head_dim] by default (exact mode), or, with
 * key_fp8, as DeepSeek's reference stores them: q and k Hadamard-rotated (H/sqrt(head_dim), when
 * head_dim is a power of two; dot products are unchanged), keys quantised to e4m3 with one power-of-two
 * (ue8m0) scale per 128 values, s = 2^ceil(log2(max(amax, 1e-4)/448)) (act_quant). Each row is then
 * head_dim code bytes followed by ceil(head_dim/128) f32 scales (dsv3_indexer_key_row floats); the
 * queries stay f32 (DeepSeek also quantises them). Scores read the keys dequantised.
 */
#ifndef DSV3_INDEXER_H
#define DSV3_INDEXER_H

#include "dsv3_mla.h"

typedef struct {
    int64_t heads, head_dim, topk; /* index_n_heads, index_head_dim, index_topk (topk 0: no indexer) */
    int key_fp8;                   /* 1: FP8 index keys (see above); 0: f32 */
} dsv3_indexer_dims;

/* Floats per cached index-key row: head_dim (f32 keys) or head_dim/4 code words + the block scales. */
static inline int64_t dsv3_indexer_key_row(const dsv3_indexer_dims *ix)
{
    return ix->key_fp8 ? (ix->head_dim + 3) / 4 + (ix->head_dim + 127) / 128 : ix->head_dim;
}

typedef struct {
    dsv3_weight wq_b;         /* [heads*head_dim, q_lora] */
    dsv3_weight wk;           /* [head_dim, hidden] */
    dsv3_vec k_norm;          /* [head_dim] LayerNorm weight */
    dsv3_vec k_norm_bias;     /* [head_dim] LayerNorm bias */
    dsv3_weight weights_proj; /* [heads, hidden] */
} dsv3_indexer_weights;

/* Scratch of dsv3_mla_forward_indexed, reserved for up to `tokens` new tokens over up to `rows`
 * cached rows on `threads` threads; grows, never shrinks; zero-initialise before the first reserve. */
typedef struct {
    int64_t tokens, rows;
    int threads;
    float *q;        /* [tokens, heads*head_dim]: index queries, rope part rotated */
    float *w;        /* [tokens, heads]: per-head weights (times heads^-0.5) */
    float *keys;     /* [tokens, key_row]: index keys of a call without a cache */
    float *kf;       /* [tokens, head_dim]: f32 keys before FP8 packing */
    float *kblk;     /* [threads, DSV3_INDEXER_SCORE_BLOCK * head_dim]: FP8 keys of one block dequantised */
    float *score;    /* [threads, rows]: one query's scores */
    uint64_t *order; /* [threads, rows]: sortable (score, position) keys of one query */
    int64_t *sel;    /* [DSV3_INDEXER_CHUNK, topk]: selected rows of a chunk of queries, ascending */
    float *gather;   /* [topk, kv_lora+rope]: the selected latent rows of one query */
    void *block;     /* owned */
} dsv3_indexer_scratch;

#define DSV3_INDEXER_CHUNK 32 /* queries whose selections are computed in one parallel region */
#define DSV3_INDEXER_SCORE_BLOCK 64 /* keys per block of dot products in dsv3_indexer_scores (kblk rows) */

dsv3_status dsv3_indexer_scratch_reserve(dsv3_indexer_scratch *ws, const dsv3_mla_dims *d,
                                         const dsv3_indexer_dims *ix, int64_t tokens, int64_t rows, dsv3_error *err);
void dsv3_indexer_scratch_free(dsv3_indexer_scratch *ws);

/* Shape checks of an indexer against its attention (q LoRA needed, head_dim >= qk_rope_head_dim). */
dsv3_status dsv3_indexer_check(const dsv3_mla_dims *d, const dsv3_indexer_dims *ix, dsv3_error *err);

/* keys [s, key_row] = rope(LayerNorm(wk(x))) for s tokens (FP8: rotated and packed; kf [s, head_dim] is
 * scratch); cos/sin [s, rope/2] of their positions. */
dsv3_status dsv3_indexer_keys(const dsv3_mla_dims *d, const dsv3_indexer_dims *ix, const dsv3_indexer_weights *w,
                              const float *x, int64_t s, const float *cos_j, const float *sin_j, float *keys,
                              float *kf, int isa, dsv3_error *err);
/* q [s, heads*head_dim] = rope(wq_b(qa)); wts [s, heads] = weights_proj(x) * heads^-0.5. */
dsv3_status dsv3_indexer_queries(const dsv3_mla_dims *d, const dsv3_indexer_dims *ix, const dsv3_indexer_weights *w,
                                 const float *qa, const float *x, int64_t s, const float *cos_j, const float *sin_j,
                                 float *q, float *wts, int isa, dsv3_error *err);
/* score[t] for t < T of one query (q [heads*head_dim], wts [heads]) against keys [T, key_row];
 * kblk: [64 * head_dim] scratch (FP8 keys). */
void dsv3_indexer_scores(const dsv3_indexer_dims *ix, const float *q, const float *wts, const float *keys, int64_t T,
                         float *score, float *kblk);
/* sel[0..k) = the k = min(topk, T) rows of score [T] first by the tie rule above, in ascending order;
 * order: [T] scratch. Returns k. */
int64_t dsv3_indexer_select(const float *score, int64_t T, int64_t topk, int64_t *sel, uint64_t *order);

/* dsv3_mla_forward with DeepSeek sparse attention: as dsv3_mla_forward, plus index_cache
 * [>= past+s, key_row] whose rows [0, past) hold earlier tokens' index keys and rows [past, past+s)
 * are written here. Token i attends to the rows its indexer selects among [0, past+i]. */
dsv3_status dsv3_mla_forward_indexed(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const dsv3_indexer_dims *ix,
                                     const dsv3_indexer_weights *iw, const float *x, int64_t s, const float *cos_j,
                                     const float *sin_j, void *cache, float *index_cache, int64_t past,
                                     dsv3_attn_mode mode, float *out, dsv3_mla_scratch *ws, dsv3_indexer_scratch *iws,
                                     int isa, dsv3_error *err);
/* dsv3_mla_forward_indexed for a verification forward (speculative decoding): token i attends as its own
 * one-token decode step would (dense over rows [0, past+i] while they are at most topk, else over its own
 * top-k among them), so each row is bitwise that step's. The projections run over all s rows at once. */
dsv3_status dsv3_mla_forward_indexed_steps(const dsv3_mla_dims *d, const dsv3_mla_weights *w,
                                           const dsv3_indexer_dims *ix, const dsv3_indexer_weights *iw, const float *x,
                                           int64_t s, const float *cos_j, const float *sin_j, void *cache,
                                           float *index_cache, int64_t past, dsv3_attn_mode mode, float *out,
                                           dsv3_mla_scratch *ws, dsv3_indexer_scratch *iws, int isa, dsv3_error *err);

#endif

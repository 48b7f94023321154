/* Multi-head latent attention (MLA), f32 activations (csrc/mla/): transformers' DeepseekV3Attention.
 *
 * The latent cache of one layer holds, per token, [c (kv_lora_rank) | k_pe (rope dim)]: the
 * normalised compressed KV and the rotated shared rope key, in the order transformers stores it
 * (de-interleaved when rope_interleave). Both attention modes read the same cache:
 *  - naive: expand K/V for every cached token with kv_b_proj (transformers' formulation);
 *  - absorbed: fold W_UK into the query and W_UV after the weighted sum, per head, so attention
 *    runs over the 576-wide latent rows (DeepSeek's decode formulation). In this mode prompts run in
 *    the expanded flash form (K/V per head from the latent in chunks, blocked online softmax;
 *    csrc/mla/flash.c) when a cost model says it is cheaper (csrc/mla/attend.c); the environment
 *    variable DSV3_MLA_FORM=absorbed|expanded forces one form (benchmarks and tests).
 */
#ifndef DSV3_MLA_H
#define DSV3_MLA_H

#include "dsv3_kv_cache.h"
#include "dsv3_linear.h"

typedef enum { DSV3_ATTN_ABSORBED = 0, DSV3_ATTN_NAIVE = 1 } dsv3_attn_mode;

typedef struct {
    int64_t hidden, heads, q_lora, kv_lora, nope, rope, v; /* q_lora 0: plain q_proj */
    float softmax_scale;
    int rope_interleave;
    int attention_bias;
    dsv3_kv_dtype kv_dtype; /* storage of the latent cache rows (dsv3_kv_cache.h); 0: f32 */
} dsv3_mla_dims;

/* A 1-D parameter: the source as given (f32 or bf16, shape [1, n]) and its f32 copy made at build. */
typedef struct {
    dsv3_weight src;
    float *f32; /* owned */
} dsv3_vec;

typedef struct {
    dsv3_weight q_proj;      /* [heads*(nope+rope), hidden] when q_lora == 0 */
    dsv3_weight q_a_proj;    /* [q_lora, hidden] */
    dsv3_vec q_a_layernorm;  /* [q_lora] */
    dsv3_weight q_b_proj;    /* [heads*(nope+rope), q_lora] */
    dsv3_weight kv_a_proj;   /* [kv_lora+rope, hidden] */
    dsv3_vec kv_a_layernorm; /* [kv_lora] */
    dsv3_weight kv_b_proj;   /* [heads*(nope+v), kv_lora] */
    dsv3_weight o_proj;      /* [hidden, heads*v] */
    dsv3_vec q_a_bias, kv_a_bias, o_bias; /* attention_bias only: [q_lora], [kv_lora+rope], [hidden] */
    /* Absorbed mode reads W_UK / W_UV from kv_b_proj in its stored format (no dequantised copies):
     * W_UK_h = rows [h(nope+v), +nope) through the weighted-row-sum kernels (dsv3_mla_wsum_rows);
     * W_UV_h = rows [h(nope+v)+nope, +v) as a linear over the latent (K = kv_lora), run by the linear
     * plans (csrc/linear/) on w_uv[h], a row view of kv_b_proj (or of uv_f32, below). */
    dsv3_weight *w_uv;       /* owned, absorbed mode (dsv3_mla_absorb): [heads] row views; NULL before */
    float *uv_f32;           /* owned fallback, NULL unless kv_b_proj is fp8_block with head rows that do not
                              * start on its 128-row scale blocks (small configs): the W_UV rows in f32
                              * [heads*v, kv_lora] (a row view would read another block's scale) */
} dsv3_mla_weights;

/* Prepare absorbed mode: the per-head W_UV row views of kv_b_proj (any format dsv3_linear reads; the
 * view keeps its act precision), and the f32 fallback rows where a view cannot be taken. Nothing is
 * dequantised otherwise. isa: the path the fallback's dequantisation runs on. */
dsv3_status dsv3_mla_absorb(const dsv3_mla_dims *d, dsv3_mla_weights *w, int isa, dsv3_error *err);
/* Frees what dsv3_mla_absorb made (w_uv, uv_f32); safe on weights never absorbed. */
void dsv3_mla_absorb_free(dsv3_mla_weights *w);
/* Bytes dsv3_mla_absorb holds for these weights (views + fallback rows; 0 when not absorbed): the
 * memory absorbed mode costs beyond the checkpoint's own arrays. */
size_t dsv3_mla_absorbed_bytes(const dsv3_mla_dims *d, const dsv3_mla_weights *w);

/* Scratch of dsv3_mla_forward, reserved for up to `tokens` new tokens over up to `rows` cached rows
 * (past + s) on `threads` threads in one mode. All buffers live in one owned block; reserving grows
 * it (never shrinks), so a caller that reserves ahead (the model, once per forward) makes every
 * attention call of that forward allocation-free. Zero-initialise before the first reserve.
 * Mode DSV3_ATTN_ABSORBED runs decode (and short prompts after a long past) in the absorbed form and
 * prompts in the expanded flash form, as a cost model picks (csrc/mla/attend.c); the expanded
 * buffers are reserved only when tokens > 1 and do not grow with rows. */
typedef struct {
    int64_t tokens, rows;
    int threads;
    dsv3_attn_mode mode;
    float *q;     /* [tokens, heads*(nope+rope)]: queries, rope part rotated */
    float *qa;    /* [tokens, q_lora]: compressed queries (q_lora > 0) */
    float *attn;  /* [tokens, heads*v]: per-head attention outputs before o_proj */
    float *qc;    /* absorbed: [tokens, heads, kv_lora+rope] latent queries */
    float *lat;   /* absorbed: [heads, tokens, kv_lora] weighted latent sums (the W_UV linears' x, one
                   * head's tokens contiguous); naive: [rows, kv_lora] */
    float *probs; /* absorbed: [threads, head group, block rows] scores; naive: [threads, rows] */
    float *kv;    /* naive: [rows, heads, nope+v] expanded K | V */
    float *part;  /* absorbed: per-block partials of a token chunk: [chunk, heads, blocks, kv_lora], then
                   * [chunk, heads, blocks, 2] (max, sum) */
    float *ex;    /* expanded (tokens > 1): one chunk of rows: latent [chunk, kv_lora], kv_b output
                   * [chunk, heads*(nope+v)], K [heads, chunk, nope+rope], V [heads, chunk, v] */
    float *fstate; /* expanded: [tokens, heads, 2] running (max, sum) of the online softmax */
    float *fthr;  /* expanded: [threads, FLASH_Q, FLASH_KV + v] scores and P.V of one block */
    float *fresh; /* [tokens, kv_lora+rope]: new latent rows in f32 before a bf16/fp8 cache stores them */
    float *uvy;   /* absorbed: W_UV outputs of one token chunk [heads, chunk, v] (DSV3_MLA_UV_TOKENS) */
    float *uvplan; /* absorbed: [heads] dsv3_lin_plan of the W_UV linears of one chunk (bytes) */
    float *uvarena; /* absorbed: their activation arena (uvarena_bytes): no allocation in the pass */
    size_t uvarena_bytes;
    void *block;  /* owned */
} dsv3_mla_scratch;

/* Make `ws` hold at least (tokens, rows, dsv3_num_threads()) for `mode`; on failure (DSV3_E_NOMEM)
 * `ws` is left as it was. */
dsv3_status dsv3_mla_scratch_reserve(dsv3_mla_scratch *ws, const dsv3_mla_dims *d, dsv3_attn_mode mode,
                                     int64_t tokens, int64_t rows, dsv3_error *err);
void dsv3_mla_scratch_free(dsv3_mla_scratch *ws);

/* One attention call over s new tokens.
 * x [s, hidden]; cos/sin [s, rope/2] for the tokens' positions; cache: >= past+s rows in the layout
 * dsv3_kv_layout_of(d->kv_dtype, kv_lora, rope) (f32: [rows, kv_lora+rope] floats):
 * rows [0, past) hold earlier tokens, rows [past, past+s) are written here; token i attends to
 * rows [0, past+i] (causal). out [s, hidden]. ws: scratch, reserved here for (s, past+s) when it is
 * smaller (no allocation when already large enough); NULL: a temporary one is made and freed. */
dsv3_status dsv3_mla_forward(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *x, int64_t s,
                             const float *cos_j, const float *sin_j, void *cache, int64_t past,
                             dsv3_attn_mode mode, float *out, dsv3_mla_scratch *ws, int isa, dsv3_error *err);

/* The attention leaf kernels on ISA `isa` (exposed for tests; summation order in
 * csrc/mla/attend_kernels.h, identical on every ISA):
 *   dots: out[i*ldo + j] = a[i*lda : +n] . b[j*ldb : +n]                 (i < na, j < nb)
 *   wsum: out[i*ldo + r] = sum_{t<T} p[i*ldp + t] * x[t*ldx + r]         (i < np, r < n)
 *   expsum: x[j] = exp(x[j] - m) in place (the kernels' exp, <= 2 ulp), *sum = their sum */
dsv3_status dsv3_mla_dots(const float *a, int64_t na, int64_t lda, const float *b, int64_t nb, int64_t ldb,
                          int64_t n, float *out, int64_t ldo, int isa, dsv3_error *err);
dsv3_status dsv3_mla_wsum(const float *p, int64_t np, int64_t ldp, const float *x, int64_t ldx, int64_t T,
                          int64_t n, float *out, int64_t ldo, int isa, dsv3_error *err);

dsv3_status dsv3_mla_expsum(float *x, int64_t n, float m, float *sum, int isa, dsv3_error *err);
/* wsum over rows [n0, n0+T) of a weight in its stored format (absorbed attention's W_UK product):
 *   out[i*ldo + r] = sum_{t<T} p[i*ldp + t] * W[n0 + t, r]   (i < np, r < w->k)
 * bit for bit dsv3_mla_wsum over the rows as dsv3_dequantize gives them, on every ISA. */
dsv3_status dsv3_mla_wsum_rows(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0, int64_t T,
                               float *out, int64_t ldo, int isa, dsv3_error *err);

/* dots / wsum with b / x the cache rows `rows` in layout g (any dtype; bf16/fp8 converted in registers):
 *   dots_kv: out[i*ldo + j] = a[i*lda : +R+P] . row_j          (j < nb)
 *   wsum_kv: out[i*ldo + r] = sum_{t<T} p[i*ldp + t] row_t[r]    (r < R: the latent part)
 * bit for bit dots / wsum over the rows decoded to f32 (dsv3_kv_decode). */
dsv3_status dsv3_mla_dots_kv(const float *a, int64_t na, int64_t lda, const dsv3_kv_layout *g, const void *rows,
                             int64_t nb, float *out, int64_t ldo, int isa, dsv3_error *err);
dsv3_status dsv3_mla_wsum_kv(const float *p, int64_t np, int64_t ldp, const dsv3_kv_layout *g, const void *rows,
                             int64_t T, float *out, int64_t ldo, int isa, dsv3_error *err);

#endif

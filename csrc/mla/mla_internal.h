/* Attention cores shared inside csrc/mla/ (q already projected and rotated; cache already written),
 * and the block geometry they share with the scratch (one description: scratch.c sizes buffers
 * from these functions, the cores walk them). */
#ifndef DSV3_MLA_INTERNAL_H
#define DSV3_MLA_INTERNAL_H

#include "dsv3_mla.h"

/* ---- absorbed attention (decode): split-KV over latent rows ----
 * Token i attends to T_i = past + i + 1 rows, cut into nb(T_i) blocks of bl(T_i) rows; each
 * (token, head group, block) task writes a partial (max, sum, weighted latent sum) and a fixed-order
 * reduction over the blocks combines them. The cut depends on T_i and the dims only, never on the
 * thread count. */
#define DSV3_MLA_KV_BLOCK 64      /* rows per block while there are at most nb_max blocks */
#define DSV3_MLA_HEAD_GROUP 8     /* heads per task: one loaded cached row serves these heads */
#define DSV3_MLA_PART_BUDGET ((int64_t)1 << 22) /* floats of partials per token chunk (16 MiB) */

static inline int64_t dsv3_mla_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* At most this many KV blocks per token, so that one token's partials (heads x blocks x kv_lora)
 * stay near 4 MiB: 64 for 16 heads, 16 for 128 heads (kv_lora 512). */
static inline int64_t dsv3_mla_nb_max(const dsv3_mla_dims *d)
{
    int64_t n = ((int64_t)1 << 20) / (d->heads * d->kv_lora);
    return n < 4 ? 4 : n > 64 ? 64 : n;
}

/* Rows per block for a token attending to T rows (a multiple of 16). */
static inline int64_t dsv3_mla_block_rows(const dsv3_mla_dims *d, int64_t T)
{
    int64_t nb = dsv3_mla_ceil_div(T, DSV3_MLA_KV_BLOCK), nbm = dsv3_mla_nb_max(d);
    nb = nb > nbm ? nbm : nb < 1 ? 1 : nb;
    return dsv3_mla_ceil_div(dsv3_mla_ceil_div(T, nb), 16) * 16;
}

/* Tokens per chunk of partials for s tokens (at least one). */
static inline int64_t dsv3_mla_part_tokens(const dsv3_mla_dims *d, int64_t s)
{
    int64_t ib = DSV3_MLA_PART_BUDGET / (d->heads * dsv3_mla_nb_max(d) * (d->kv_lora + 2));
    return ib < 1 ? 1 : ib > s ? s : ib;
}

/* W_UV runs as one linear per head (csrc/linear/ plans over row views of kv_b_proj) on chunks of at most
 * this many tokens: below every ISA's GEMM threshold, so a token's W_UV output never depends on how many
 * tokens (sequences of a batch) share its chunk. */
#define DSV3_MLA_UV_TOKENS 8

/* Bytes of the W_UV plans' arena for chunks of up to m tokens (any format, mode and ISA). */
size_t dsv3_mla_uv_arena_bytes(const dsv3_mla_dims *d, int64_t m);

/* ---- expanded attention (prefill): flash-style over K/V expanded from the latent ----
 * The cached rows are expanded with kv_b_proj in chunks of flash_chunk rows (one GEMM each); every
 * (head, block of FLASH_Q queries) task walks the chunk's rows in blocks of FLASH_KV with an online
 * softmax, in ascending row order, so each output has one fixed order. */
#define DSV3_MLA_FLASH_Q 16
#define DSV3_MLA_FLASH_KV 64

/* Rows per expansion chunk: about 8192 head-rows (512 rows for 16 heads, 64 for 128). */
static inline int64_t dsv3_mla_flash_chunk(const dsv3_mla_dims *d)
{
    int64_t c = 8192 / d->heads;
    c = c < DSV3_MLA_FLASH_KV ? DSV3_MLA_FLASH_KV : c > 512 ? 512 : c;
    return c / DSV3_MLA_FLASH_KV * DSV3_MLA_FLASH_KV;
}

/* Whether s new tokens after past cached rows run in the expanded form on `isa` (cost model in attend.c). */
int dsv3_mla_prefer_expanded(const dsv3_mla_dims *d, int64_t s, int64_t past, dsv3_isa isa);

/* q [s, heads, nope+rope]; cache rows [0, past+s); attn out [s, heads*v]; ws reserved for (s, past+s). */
dsv3_status dsv3_mla_attend_naive(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q, int64_t s,
                                  const void *cache, int64_t past, float *attn, dsv3_mla_scratch *ws, int isa,
                                  dsv3_error *err);
dsv3_status dsv3_mla_attend_absorbed(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q,
                                     int64_t s, const void *cache, int64_t past, float *attn,
                                     dsv3_mla_scratch *ws, int isa, dsv3_error *err);
dsv3_status dsv3_mla_attend_expanded(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q,
                                     int64_t s, const void *cache, int64_t past, float *attn,
                                     dsv3_mla_scratch *ws, int isa, dsv3_error *err);
/* Tokens [off, off+n) of q / attn, one sequence's, after `past` rows of its own latent cache (rows
 * [past, past+n) already written): token j attends to rows [0, past+j]. */
typedef struct {
    const void *cache; /* rows in the layout of dims.kv_dtype */
    int64_t past, n, off;
} dsv3_mla_seg;

/* Absorbed attention of several sequences' tokens in one call (one team): W_UK / W_UV are read once
 * per token tile over all segments (adjacent segments share tiles), the KV blocks of each token run
 * over its own cache. Every token's latent query and latent sum are bitwise the ones a single-sequence
 * call gives (wsum rows do not depend on their tile); its W_UV output is one row of a linear call over the
 * chunk's tokens (DSV3_MLA_UV_TOKENS), so it is bitwise the single-sequence one wherever the linear
 * layer's small-M kernel gives rows independently of the row count (dsv3_batch.h's contract for every
 * linear). ws reserved for (sum of n, max past+n). */
dsv3_status dsv3_mla_attend_absorbed_segs(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q,
                                          const dsv3_mla_seg *segs, int64_t nseg, float *attn, dsv3_mla_scratch *ws,
                                          int isa, dsv3_error *err);
/* dsv3_mla_attend over many sequences at once (the batched engine): each segment takes the form
 * dsv3_mla_attend would give it alone; the absorbed ones run together (dsv3_mla_attend_absorbed_segs),
 * the others one by one. */
dsv3_status dsv3_mla_attend_many(const dsv3_mla_dims *d, const dsv3_mla_weights *w, dsv3_attn_mode mode,
                                 const float *q, dsv3_mla_seg *segs, int64_t nseg, float *attn,
                                 dsv3_mla_scratch *ws, int isa, dsv3_error *err);
/* The attention core of s tokens after past cached rows, in the form dsv3_mla_forward uses: naive in
 * naive mode, else expanded or absorbed by dsv3_mla_prefer_expanded (or DSV3_MLA_FORM). The batched
 * engine calls it per sequence so a sequence's form never depends on the rest of the batch. */
dsv3_status dsv3_mla_attend(const dsv3_mla_dims *d, const dsv3_mla_weights *w, dsv3_attn_mode mode, const float *q,
                            int64_t s, const void *cache, int64_t past, float *out, dsv3_mla_scratch *ws, int isa,
                            dsv3_error *err);

/* The pieces of dsv3_mla_forward, for callers that project many sequences' tokens at once (the
 * batched engine, csrc/model/batch.c):
 *   project_q: q [s, heads*(nope+rope)] with the rope part of every head rotated; qa: [s, q_lora] scratch;
 *   finish_latent: rows [s, kv_lora+rope] holding kv_a_proj(x) (+ bias) become cache rows in place
 *   (kv_a_layernorm on c, rope on k_pe). */
dsv3_status dsv3_mla_project_q(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *x, int64_t s,
                               const float *cos_j, const float *sin_j, float *q, float *qa, int isa, dsv3_error *err);
/* The argument checks of dsv3_mla_forward (and the indexed forward). */
dsv3_status dsv3_mla_check_call(const dsv3_mla_dims *d, const dsv3_mla_weights *w, int64_t s, int64_t past,
                                dsv3_attn_mode mode, dsv3_error *err);
/* Rows [past, past+s) of the latent cache from x [s, hidden]: kv_a_proj, then finish_latent. */
dsv3_status dsv3_mla_write_latent(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *x, int64_t s,
                                  const float *cos_j, const float *sin_j, void *cache, int64_t past, float *fresh,
                                  int isa, dsv3_error *err);
void dsv3_mla_finish_latent(const dsv3_mla_dims *d, const dsv3_mla_weights *w, float *rows, int64_t s,
                            const float *cos_j, const float *sin_j);

#endif

/* The DeepSeek-V3.2 lightning indexer: index keys and queries, scores, top-k selection
 * (dsv3_indexer.h has the math and the tie rule). */
#include "dsv3_indexer.h"
#include "dsv3_dtypes.h"
#include "dsv3_ops.h"
#include "attend_kernels.h"

#include <math.h>
#include <string.h>

#define INDEX_NORM_EPS 1e-6 /* transformers: nn.LayerNorm(index_head_dim, eps=1e-6) */
#define SCORE_BLOCK DSV3_INDEXER_SCORE_BLOCK /* keys per block of dot products in dsv3_indexer_scores */

dsv3_status dsv3_indexer_check(const dsv3_mla_dims *d, const dsv3_indexer_dims *ix, dsv3_error *err)
{
    if (ix->heads <= 0 || ix->head_dim <= 0 || ix->topk <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "indexer: index_n_heads, index_head_dim and index_topk must be positive "
                         "(got %lld, %lld, %lld)", (long long)ix->heads, (long long)ix->head_dim, (long long)ix->topk);
    if (d->q_lora <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "indexer: needs q LoRA (q_lora_rank > 0): its queries read the q latent");
    if (ix->head_dim < d->rope || ix->head_dim > ((int64_t)1 << 16) || ix->heads > ((int64_t)1 << 16))
        return dsv3_fail(err, DSV3_E_VALUE, "indexer: index_head_dim %lld must be in [qk_rope_head_dim = %lld, 65536] "
                         "and index_n_heads %lld <= 65536", (long long)ix->head_dim, (long long)d->rope,
                         (long long)ix->heads);
    return DSV3_OK;
}

/* y = (x - mean) / sqrt(var + eps) * w + b over n values (biased variance, as torch's LayerNorm). */
static void layernorm(float *x, int64_t n, const float *w, const float *b)
{
    double mean = 0.0, var = 0.0;
    for (int64_t j = 0; j < n; j++)
        mean += x[j];
    mean /= (double)n;
    for (int64_t j = 0; j < n; j++)
        var += ((double)x[j] - mean) * ((double)x[j] - mean);
    const float rstd = (float)(1.0 / sqrt(var / (double)n + INDEX_NORM_EPS)), mu = (float)mean;
    for (int64_t j = 0; j < n; j++)
        x[j] = (x[j] - mu) * rstd * w[j] + b[j];
}

/* In place: x = H x / sqrt(n) (Walsh-Hadamard, n a power of two): DeepSeek's rotate_activation. */
static void hadamard(float *x, int64_t n)
{
    for (int64_t h = 1; h < n; h *= 2)
        for (int64_t i = 0; i < n; i += 2 * h)
            for (int64_t j = i; j < i + h; j++) {
                const float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    const float sc = 1.f / sqrtf((float)n);
    for (int64_t j = 0; j < n; j++)
        x[j] *= sc;
}

static int rotates(const dsv3_indexer_dims *ix)
{
    return ix->key_fp8 && (ix->head_dim & (ix->head_dim - 1)) == 0;
}

/* One FP8 key row: codes [hd] bytes, then ceil(hd/128) ue8m0-valued f32 scales (act_quant). */
static void pack_fp8(const float *k, int64_t hd, float *row)
{
    uint8_t *code = (uint8_t *)(void *)row;
    float *scale = row + (hd + 3) / 4;
    for (int64_t b0 = 0, b = 0; b0 < hd; b0 += 128, b++) {
        const int64_t n = hd - b0 < 128 ? hd - b0 : 128;
        float amax = 1e-4f;
        for (int64_t j = 0; j < n; j++)
            amax = fmaxf(amax, fabsf(k[b0 + j]));
        const float sc = exp2f(ceilf(log2f(amax / 448.f)));
        scale[b] = sc;
        for (int64_t j = 0; j < n; j++)
            code[b0 + j] = dsv3_f32_to_e4m3(k[b0 + j] / sc);
    }
}

static void unpack_fp8(const float *row, int64_t hd, float *k)
{
    const uint8_t *code = (const uint8_t *)(const void *)row;
    const float *scale = row + (hd + 3) / 4;
    for (int64_t j = 0; j < hd; j++)
        k[j] = dsv3_e4m3_to_f32(code[j]) * scale[j / 128];
}

dsv3_status dsv3_indexer_keys(const dsv3_mla_dims *d, const dsv3_indexer_dims *ix, const dsv3_indexer_weights *w,
                              const float *x, int64_t s, const float *cos_j, const float *sin_j, float *keys,
                              float *kf, int isa, dsv3_error *err)
{
    float *k = ix->key_fp8 ? kf : keys;
    dsv3_status st = dsv3_linear(x, s, &w->wk, NULL, k, isa, err);
    if (st != DSV3_OK)
        return st;
    const int64_t half = d->rope / 2, hd = ix->head_dim, row = dsv3_indexer_key_row(ix);
    float tmp[512];
    for (int64_t i = 0; i < s; i++) {
        layernorm(k + i * hd, hd, w->k_norm.f32, w->k_norm_bias.f32);
        dsv3_rope_apply(k + i * hd, half, cos_j + i * half, sin_j + i * half, 0, tmp); /* half-split */
        if (rotates(ix))
            hadamard(k + i * hd, hd);
        if (ix->key_fp8)
            pack_fp8(k + i * hd, hd, keys + i * row);
    }
    return DSV3_OK;
}

dsv3_status dsv3_indexer_queries(const dsv3_mla_dims *d, const dsv3_indexer_dims *ix, const dsv3_indexer_weights *w,
                                 const float *qa, const float *x, int64_t s, const float *cos_j, const float *sin_j,
                                 float *q, float *wts, int isa, dsv3_error *err)
{
    dsv3_status st = dsv3_linear(qa, s, &w->wq_b, NULL, q, isa, err);
    if (st == DSV3_OK)
        st = dsv3_linear(x, s, &w->weights_proj, NULL, wts, isa, err);
    if (st != DSV3_OK)
        return st;
    const int64_t half = d->rope / 2, hd = ix->head_dim, H = ix->heads;
    const float wscale = powf((float)H, -0.5f); /* self.n_heads ** -0.5 */
    float tmp[512];
    for (int64_t i = 0; i < s; i++) {
        for (int64_t h = 0; h < H; h++) {
            dsv3_rope_apply(q + (i * H + h) * hd, half, cos_j + i * half, sin_j + i * half, 0, tmp);
            if (rotates(ix))
                hadamard(q + (i * H + h) * hd, hd);
        }
        for (int64_t h = 0; h < H; h++)
            wts[i * H + h] *= wscale;
    }
    return DSV3_OK;
}

void dsv3_indexer_scores(const dsv3_indexer_dims *ix, const float *q, const float *wts, const float *keys, int64_t T,
                         float *score, float *kblk)
{
    const int64_t row = dsv3_indexer_key_row(ix);
    const int64_t H = ix->heads, hd = ix->head_dim;
    const float scale = powf((float)hd, -0.5f); /* self.softmax_scale = head_dim ** -0.5 */
    dsv3_isa isa;
    dsv3_isa_resolve(-1, &isa, NULL);
    const dsv3_attend_kernels *k = dsv3_attend_table(isa); /* bitwise the same on every ISA */
    float dots[SCORE_BLOCK];
    for (int64_t t0 = 0; t0 < T; t0 += SCORE_BLOCK) {
        const int64_t nb = T - t0 < SCORE_BLOCK ? T - t0 : SCORE_BLOCK;
        for (int64_t j = 0; j < nb; j++)
            score[t0 + j] = 0.f;
        const float *kb = keys + t0 * row;
        if (ix->key_fp8) {
            for (int64_t j = 0; j < nb; j++)
                unpack_fp8(keys + (t0 + j) * row, hd, kblk + j * hd);
            kb = kblk;
        }
        for (int64_t h = 0; h < H; h++) {
            k->dots(q + h * hd, 1, hd, kb, nb, hd, hd, dots, SCORE_BLOCK);
            for (int64_t j = 0; j < nb; j++) {
                const float v = dots[j] * scale;
                score[t0 + j] += wts[h] * (v > 0.f ? v : 0.f); /* relu, then the head's weight; heads in order */
            }
        }
    }
}

/* A key whose unsigned order is (score ascending, position descending): the largest keys are the
 * rows first by the tie rule. -0 counts as +0; NaN as the smallest. */
static uint64_t order_key(float f, int64_t t)
{
    uint32_t u;
    if (f == 0.f)
        f = 0.f;
    memcpy(&u, &f, sizeof u);
    u = f != f ? 0u : (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t)u << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)t);
}

/* The k-th largest of a[0..n) (1 <= k <= n); a is permuted. Iterative quickselect, median of three. */
static uint64_t kth_largest(uint64_t *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1, want = k - 1; /* index in descending order */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        uint64_t x = a[lo], y = a[mid], z = a[hi], p;
        p = (x > y) ? ((y > z) ? y : (x > z ? z : x)) : ((x > z) ? x : (y > z ? z : y)); /* median */
        int64_t i = lo, j = hi;
        while (i <= j) { /* descending partition */
            while (a[i] > p)
                i++;
            while (a[j] < p)
                j--;
            if (i <= j) {
                const uint64_t tmp = a[i];
                a[i] = a[j];
                a[j] = tmp;
                i++;
                j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return a[want];
    }
    return a[want];
}

int64_t dsv3_indexer_select(const float *score, int64_t T, int64_t topk, int64_t *sel, uint64_t *order)
{
    const int64_t k = topk < T ? topk : T;
    if (k <= 0)
        return 0;
    int64_t n = 0;
    if (k < T) {
        for (int64_t t = 0; t < T; t++)
            order[t] = order_key(score[t], t);
        const uint64_t cut = kth_largest(order, T, k); /* keys are distinct: exactly k are >= cut */
        for (int64_t t = 0; t < T; t++)
            if (order_key(score[t], t) >= cut)
                sel[n++] = t;
    } else {
        for (int64_t t = 0; t < T; t++)
            sel[n++] = t;
    }
    return n;
}

/* ---- scratch ---- */
dsv3_status dsv3_indexer_scratch_reserve(dsv3_indexer_scratch *ws, const dsv3_mla_dims *d,
                                         const dsv3_indexer_dims *ix, int64_t tokens, int64_t rows, dsv3_error *err)
{
    const int threads = dsv3_num_threads();
    if (ws->block && tokens <= ws->tokens && rows <= ws->rows && threads <= ws->threads)
        return DSV3_OK;
    if (ws->block) {
        tokens = tokens > ws->tokens ? tokens : ws->tokens;
        rows = rows > ws->rows ? rows : ws->rows;
    }
    const int nt = ws->block && ws->threads > threads ? ws->threads : threads;
    const int64_t f = (int64_t)sizeof(float), topk = ix->topk < rows ? ix->topk : rows;
    const int64_t bytes[9] = {tokens * ix->heads * ix->head_dim * f, tokens * ix->heads * f, tokens * ix->head_dim * f,
                              (int64_t)nt * rows * f, (int64_t)nt * rows * (int64_t)sizeof(uint64_t),
                              DSV3_INDEXER_CHUNK * topk * (int64_t)sizeof(int64_t),
                              topk * (d->kv_lora + d->rope) * f, tokens * ix->head_dim * f,
                              (int64_t)nt * SCORE_BLOCK * ix->head_dim * f};
    void *at[9];
    void *block = dsv3_alloc_carved(bytes, 9, at);
    if (!block)
        return dsv3_fail(err, DSV3_E_NOMEM, "indexer: out of memory for the scratch of %lld tokens over %lld rows",
                         (long long)tokens, (long long)rows);
    dsv3_free(ws->block);
    ws->block = block;
    ws->q = at[0];
    ws->w = at[1];
    ws->keys = at[2];
    ws->score = at[3];
    ws->order = at[4];
    ws->sel = at[5];
    ws->gather = at[6];
    ws->kf = at[7];
    ws->kblk = at[8];
    ws->tokens = tokens;
    ws->rows = rows;
    ws->threads = nt;
    return DSV3_OK;
}

void dsv3_indexer_scratch_free(dsv3_indexer_scratch *ws)
{
    dsv3_free(ws->block);
    memset(ws, 0, sizeof *ws);
}

/* The two attention formulations over the latent cache. Work is split over (token, head) pairs;
 * every pair is computed by one thread in a fixed order, so results do not depend on threads. */
#include "dsv3_dtypes.h"
#include "dsv3_linear_plan.h"
#include "dsv3_ops.h"
#include "attend_kernels.h"
#include "kv_rows.h"
#include "mla_internal.h"

#include <math.h>
#include <omp.h>
#include <string.h>

dsv3_status dsv3_mla_attend_naive(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q, int64_t s,
                                  const void *cache, int64_t past, float *attn, dsv3_mla_scratch *ws, int isa,
                                  dsv3_error *err)
{
    const int64_t T = past + s, qk = d->nope + d->rope, kvw = d->nope + d->v;
    const dsv3_kv_layout g = dsv3_kv_layout_of(d->kv_dtype, d->kv_lora, d->rope);
    const uint8_t *rows = cache;
    const int64_t H = d->heads;
    float *lat = ws->lat, *kv = ws->kv, *scr = ws->probs; /* scr: one row of T per thread */
    const int nt = dsv3_num_threads();                    /* <= ws->threads (reserved by the caller) */
    dsv3_status st;
    dsv3_kv_decode_latent(&g, rows, T, lat);
    st = dsv3_linear(lat, T, &w->kv_b_proj, NULL, kv, isa, err); /* [T, H, nope | v] */
    if (st != DSV3_OK)
        return st;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t ih = 0; ih < s * H; ih++) {
        const int64_t i = ih / H, h = ih % H, n = past + i + 1;
        const float *qh = q + ih * qk;
        float *p = scr + (int64_t)omp_get_thread_num() * T, kbuf[512]; /* rope <= 512 (dsv3_mla_forward) */
        for (int64_t t = 0; t < n; t++) {
            const float *k = kv + (t * H + h) * kvw, *kpe = kbuf;
            if (g.dtype == DSV3_KV_F32)
                kpe = (const float *)(const void *)(rows + t * g.row_bytes + g.rope_off);
            else
                dsv3_kv_decode(&g, rows + t * g.row_bytes, d->kv_lora, d->rope, kbuf);
            float acc = 0.f;
            for (int64_t e = 0; e < d->nope; e++)
                acc += qh[e] * k[e];
            for (int64_t e = 0; e < d->rope; e++)
                acc += qh[d->nope + e] * kpe[e];
            p[t] = acc * d->softmax_scale;
        }
        dsv3_softmax_f32(p, n);
        float *o = attn + ih * d->v;
        for (int64_t j = 0; j < d->v; j++)
            o[j] = 0.f;
        for (int64_t t = 0; t < n; t++) {
            const float *vv = kv + (t * H + h) * kvw + d->nope;
            for (int64_t j = 0; j < d->v; j++)
                o[j] += p[t] * vv[j];
        }
    }
    return DSV3_OK;
}

/* Absorbed attention over latent space (DeepSeek's decode formulation):
 *   qc[i,h]  = [W_UK_h^T q_nope[i,h] | q_pe[i,h]]          (576 wide: the cached row's layout)
 *   per KV block b of token i's rows (mla_internal.h), for a group of heads at a time (the heads
 *   are the M dimension of the block's products, so each cached row is read once per group):
 *     s_t = scale * qc[i,h] . cache[t];  m_b = max_t s_t;  p_t = exp(s_t - m_b);  l_b = sum_t p_t;
 *     acc_b[i,h] = sum_t p_t cache[t][:R]
 *   lat[h,i] = sum_b w_b acc_b[i,h] with w_b = exp(m_b - max_b m_b) / sum_b exp(m_b - max m) l_b
 *   out[i,h] = W_UV_h lat[h,i]                              (a linear over the latent, K = kv_lora)
 * W_UK and W_UV are read from kv_b_proj in its stored format: W_UK_h's rows by the weighted-row-sum
 * kernels (wsum_rows: each row decoded in registers once per token tile, the order of the f32 wsum, so
 * exact mode is bit for bit the product with the dequantised rows), W_UV_h by the linear layer's plans
 * over its row view (dsv3_mla_absorb), prepared and run inside this region (the activation layout,
 * Q8 or bf16 in the fast precision mode, follows the plan as for every linear).
 * Every pass is split over outputs (qc: (head, token tile); blocks: (token, head group, block);
 * reduction: (token, head); out: the plans' fixed column items) and every output has one fixed
 * summation order, so results do not depend on the thread count. */
#define TOKEN_TILE 8 /* rows per wsum call over tokens (the kernel's register tile) */

static void absorbed_block(const dsv3_attend_kernels *K, const dsv3_mla_dims *d, const float *qc_i,
                           const dsv3_kv_layout *g, const uint8_t *cache, int64_t Ti, int64_t bl, int64_t b,
                           int64_t h0, int64_t nh, float *sc, float *acc, int64_t acc_ld, float *stat)
{
    const int64_t R = d->kv_lora, row = R + d->rope, t0 = b * bl, n = Ti - t0 < bl ? Ti - t0 : bl;
    const uint8_t *rows = cache + t0 * g->row_bytes;
    if (g->dtype == DSV3_KV_F32)
        K->dots(qc_i + h0 * row, nh, row, (const float *)(const void *)rows, n, row, row, sc, bl);
    else
        K->dots_kv(qc_i + h0 * row, nh, row, g, rows, n, sc, bl);
    for (int64_t h = 0; h < nh; h++) {
        float *p = sc + h * bl, mx = -INFINITY;
        for (int64_t t = 0; t < n; t++) {
            p[t] = p[t] * d->softmax_scale;
            mx = p[t] > mx ? p[t] : mx;
        }
        stat[h * 2 * dsv3_mla_nb_max(d)] = mx;
        stat[h * 2 * dsv3_mla_nb_max(d) + 1] = K->expsum(p, n, mx);
    }
    if (g->dtype == DSV3_KV_F32)
        K->wsum(sc, nh, bl, (const float *)(const void *)rows, row, n, R, acc, acc_ld);
    else
        K->wsum_kv(sc, nh, bl, g, rows, n, acc, acc_ld);
}

/* lat = sum_b w_b acc_b over the nb blocks of one (token, head); stat: (max, sum) per block. */
static void absorbed_reduce(const dsv3_attend_kernels *K, const float *acc, const float *stat, int64_t nb,
                            int64_t R, float *lat)
{
    float wgt[64], mx = -INFINITY, l = 0.f;
    for (int64_t b = 0; b < nb; b++)
        mx = stat[2 * b] > mx ? stat[2 * b] : mx;
    for (int64_t b = 0; b < nb; b++) {
        wgt[b] = dsv3_mla_exp(stat[2 * b] - mx);
        l = l + wgt[b] * stat[2 * b + 1];
    }
    for (int64_t b = 0; b < nb; b++)
        wgt[b] = wgt[b] / l;
    K->wsum(wgt, 1, nb, acc, R, nb, R, lat, R);
}

/* Token tiles of the qc and out passes: runs of segments whose tokens are adjacent in q / attn (a
 * pure decode step of many sequences is one run) cut into TOKEN_TILE tokens. The tile-th tile: first
 * token row and count; 0 past the last tile. */
static int64_t seg_tile(const dsv3_mla_seg *segs, int64_t nseg, int64_t tile, int64_t *i0)
{
    for (int64_t i = 0; i < nseg;) {
        int64_t j = i + 1, n = segs[i].n;
        while (j < nseg && segs[j].off == segs[j - 1].off + segs[j - 1].n)
            n += segs[j++].n;
        const int64_t tiles = dsv3_mla_ceil_div(n, TOKEN_TILE);
        if (tile < tiles) {
            *i0 = segs[i].off + tile * TOKEN_TILE;
            return n - tile * TOKEN_TILE < TOKEN_TILE ? n - tile * TOKEN_TILE : TOKEN_TILE;
        }
        tile -= tiles;
        i = j;
    }
    return 0;
}

/* The k-th token over all segments: its segment and its index in it. */
static const dsv3_mla_seg *seg_token(const dsv3_mla_seg *segs, int64_t k, int64_t *j)
{
    while (k >= segs->n)
        k -= (segs++)->n;
    *j = k;
    return segs;
}

/* The W_UV linears of one chunk of m tokens: plan h reads lat rows [m, R] of head h (lat: [H, s, R],
 * already offset to the chunk) and writes ws->uvy [h, m, V]; activation buffers from ws's arena. */
static dsv3_status uv_plan(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *lat, int64_t s, int64_t m,
                           dsv3_mla_scratch *ws, dsv3_isa isa, dsv3_lin_plan *plans, dsv3_error *err)
{
    dsv3_lin_arena arena = {(unsigned char *)(void *)ws->uvarena, ws->uvarena_bytes, 0};
    const int64_t H = d->heads, R = d->kv_lora, V = d->v;
    dsv3_status st = DSV3_OK;
    int64_t h = 0;
    for (; h < H && st == DSV3_OK; h++)
        st = dsv3_linear_plan(&plans[h], lat + h * s * R, 0, m, &w->w_uv[h], NULL, ws->uvy + h * m * V,
                              DSV3_LINEAR_WEIGHT_ONLY, (int)isa, &arena, err);
    if (st != DSV3_OK)
        while (--h >= 0)
            dsv3_linear_plan_release(&plans[h]);
    return st;
}

dsv3_status dsv3_mla_attend_absorbed(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q,
                                     int64_t s, const void *cache, int64_t past, float *attn,
                                     dsv3_mla_scratch *ws, int isa, dsv3_error *err)
{
    const dsv3_mla_seg one = {cache, past, s, 0};
    return dsv3_mla_attend_absorbed_segs(d, w, q, &one, 1, attn, ws, isa, err);
}

dsv3_status dsv3_mla_attend_absorbed_segs(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q,
                                          const dsv3_mla_seg *segs, int64_t nseg, float *attn, dsv3_mla_scratch *ws,
                                          int isa, dsv3_error *err)
{
    dsv3_isa which;
    dsv3_status st = dsv3_isa_resolve(isa, &which, err);
    if (st != DSV3_OK)
        return st;
    const dsv3_attend_kernels *K = dsv3_attend_table(which);
    const dsv3_kv_layout kvl = dsv3_kv_layout_of(d->kv_dtype, d->kv_lora, d->rope);
    const int64_t R = d->kv_lora, row = R + d->rope, qk = d->nope + d->rope, H = d->heads;
    const int64_t V = d->v, nope = d->nope, rope = d->rope, HG = DSV3_MLA_HEAD_GROUP;
    int64_t s = 0, rows = 0, tiles = 0, i0 = 0;
    for (int64_t i = 0; i < nseg; i++) {
        s += segs[i].n;
        rows = segs[i].past + segs[i].n > rows ? segs[i].past + segs[i].n : rows;
    }
    while (seg_tile(segs, nseg, tiles, &i0) > 0)
        tiles++;
    const int64_t nbm = dsv3_mla_nb_max(d), groups = dsv3_mla_ceil_div(H, HG), ib = dsv3_mla_part_tokens(d, s);
    const int64_t bl_max = dsv3_mla_block_rows(d, rows) > DSV3_MLA_KV_BLOCK ? dsv3_mla_block_rows(d, rows)
                                                                          : DSV3_MLA_KV_BLOCK;
    float *qc = ws->qc, *lat = ws->lat, *acc = ws->part, *stat = ws->part + ib * H * nbm * R;
    const int nt = dsv3_num_threads();
    dsv3_lin_plan *plans = (dsv3_lin_plan *)(void *)ws->uvplan;
    dsv3_status uv_st = DSV3_OK;
#pragma omp parallel num_threads(nt) /* one team for all passes */
    {
        float *sc = ws->probs + (int64_t)omp_get_thread_num() * HG * bl_max;
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < H * tiles; it++) { /* qc: latent query and rope part per (head, token tile) */
            int64_t i0 = 0;
            const int64_t h = it % H, ni = seg_tile(segs, nseg, it / H, &i0);
            K->wsum_rows(q + (i0 * H + h) * qk, ni, H * qk, &w->kv_b_proj, h * (nope + V), nope,
                         qc + (i0 * H + h) * row, H * row);
            for (int64_t i = i0; i < i0 + ni; i++)
                for (int64_t e = 0; e < rope; e++)
                    qc[(i * H + h) * row + R + e] = q[(i * H + h) * qk + nope + e];
        }
        for (int64_t b0 = 0; b0 < s; b0 += ib) { /* chunks of ib tokens over all segments */
            const int64_t nbk = s - b0 < ib ? s - b0 : ib;
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < nbk * groups * nbm; it++) { /* (token, block, head group) */
                const int64_t ii = it / (groups * nbm), b = (it / groups) % nbm, g = it % groups;
                int64_t j;
                const dsv3_mla_seg *sg = seg_token(segs, b0 + ii, &j);
                const int64_t Ti = sg->past + j + 1, bl = dsv3_mla_block_rows(d, Ti);
                if (b * bl >= Ti)
                    continue;
                const int64_t h0 = g * HG, nh = H - h0 < HG ? H - h0 : HG, first = (ii * H + h0) * nbm + b;
                absorbed_block(K, d, qc + (sg->off + j) * H * row, &kvl, sg->cache, Ti, bl, b, h0, nh, sc, acc + first * R,
                               nbm * R, stat + 2 * first);
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t ih = 0; ih < nbk * H; ih++) { /* reduce the blocks of (token, head) */
                int64_t j;
                const dsv3_mla_seg *sg = seg_token(segs, b0 + ih / H, &j);
                const int64_t Ti = sg->past + j + 1;
                const int64_t nb = dsv3_mla_ceil_div(Ti, dsv3_mla_block_rows(d, Ti));
                absorbed_reduce(K, acc + ih * nbm * R, stat + 2 * ih * nbm, nb, R,
                                lat + ((ih % H) * s + b0 + ih / H) * R);
            }
        }
        for (int64_t c0 = 0; c0 < s; c0 += DSV3_MLA_UV_TOKENS) { /* out: W_UV per head, chunks of tokens */
            const int64_t m = s - c0 < DSV3_MLA_UV_TOKENS ? s - c0 : DSV3_MLA_UV_TOKENS;
#pragma omp single
            uv_st = uv_plan(d, w, lat + c0 * R, s, m, ws, which, plans, err);
            if (uv_st == DSV3_OK) { /* the same value on every thread (read after the single's barrier) */
                dsv3_linear_prepare_team(plans, (int)H);
                dsv3_linear_run_team(plans, (int)H, NULL);
#pragma omp barrier
#pragma omp for schedule(static)
                for (int64_t ih = 0; ih < m * H; ih++) { /* [head, token] -> attn rows */
                    int64_t j;
                    const int64_t i = ih / H, h = ih % H;
                    const dsv3_mla_seg *sg = seg_token(segs, c0 + i, &j);
                    memcpy(attn + ((sg->off + j) * H + h) * V, ws->uvy + (h * m + i) * V, (size_t)V * sizeof(float));
                }
#pragma omp single
                for (int64_t h = 0; h < H; h++)
                    dsv3_linear_plan_release(&plans[h]);
            }
        }
    }
    return uv_st;
}

/* Expanded (flash) vs absorbed for s new tokens after past rows. Prompts (past < s) always run
 * expanded: measured 1.4-2.7x faster from s = 2 (when the absorbed form read f32 W_UK/W_UV, twice the
 * bf16 kv_b_proj, and does 1088 FMAs per (query, row, head) against 320). With a long past, by FMAs,
 * the kv_b GEMM over every cached row weighted by gemm_weight (its cost per FMA relative to the
 * attention kernels: measured crossovers s ~ 128 at past 1024-2048 on AVX-512, s ~ 256 on AVX2,
 * where there is no GEMM; benchmarks/bench_attention.py --crossover, BENCHMARKS.md):
 *   expanded: w (past + s) heads (nope + v) kv_lora [kv_b] + s T_avg heads (qk + v)
 *   absorbed: s heads (nope + v) kv_lora [W_UK, W_UV]      + s T_avg heads (2 kv_lora + rope) */
int dsv3_mla_prefer_expanded(const dsv3_mla_dims *d, int64_t s, int64_t past, dsv3_isa isa)
{
    if (s < 2)
        return 0;
    if (past < s)
        return 1;
    const double gemm_weight = isa == DSV3_ISA_AVX512 ? 0.75 : 1.5;
    const double H = (double)d->heads, R = (double)d->kv_lora, uv = (double)(d->nope + d->v);
    const double tavg = (double)past + (double)(s + 1) / 2.0;
    const double expanded = gemm_weight * (double)(past + s) * H * uv * R +
                            (double)s * tavg * H * (double)(d->nope + d->rope + d->v);
    const double absorbed = (double)s * H * uv * R + (double)s * tavg * H * (2.0 * R + (double)d->rope);
    return expanded < absorbed;
}

/* Whether rows [n0, n0+n) of w can be viewed as a weight of their own: every format whose scales are per
 * row (or none) can; fp8_block shares one scale per 128 rows, so only at a multiple of 128. */
static int row_view_ok(const dsv3_weight *w, int64_t n0)
{
    const int bn = dsv3_formats[w->fmt].block_n;
    return bn <= 1 || n0 % bn == 0;
}

/* Rows [n0, n0+n) of w as a weight of their own (codes and scales are row-major). */
static dsv3_weight row_view(const dsv3_weight *w, int64_t n0, int64_t n)
{
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    dsv3_weight v = *w;
    v.n = n;
    v.data = (const uint8_t *)w->data + (size_t)(n0 * w->k * t->code_bits / 8);
    if (t->scale_kind != DSV3_SCALE_NONE) {
        size_t bytes;
        int64_t sr, sc;
        dsv3_error e;
        (void)dsv3_quant_layout(w->fmt, w->n, w->k, w->group, &bytes, &sr, &sc, &e);
        const int64_t bn = t->block_n > 1 ? t->block_n : 1;
        const size_t es = t->scale_kind == DSV3_SCALE_E4M3 ? 1 : sizeof(float);
        v.scale = (const uint8_t *)w->scale + (size_t)(n0 / bn * sc) * es;
    }
    v.packed = NULL;
    return v;
}

void dsv3_mla_absorb_free(dsv3_mla_weights *w)
{
    dsv3_free(w->w_uv);
    dsv3_free(w->uv_f32);
    w->w_uv = NULL;
    w->uv_f32 = NULL;
}

size_t dsv3_mla_absorbed_bytes(const dsv3_mla_dims *d, const dsv3_mla_weights *w)
{
    if (!w->w_uv)
        return 0;
    return (size_t)d->heads * sizeof(dsv3_weight) +
           (w->uv_f32 ? (size_t)(d->heads * d->v * d->kv_lora) * sizeof(float) : 0);
}

/* The f32 fallback rows (see dsv3_mla_weights.uv_f32): kv_b_proj dequantised (dsv3_dequantize, the
 * values every kernel decodes) and its W_UV rows kept. */
static dsv3_status uv_f32_rows(const dsv3_mla_dims *d, const dsv3_weight *kvb, float **out, dsv3_error *err)
{
    const int64_t R = d->kv_lora, H = d->heads, kvw = d->nope + d->v;
    float *all = dsv3_alloc((size_t)(kvb->n * R) * sizeof(float));
    float *uv = dsv3_alloc((size_t)(H * d->v * R) * sizeof(float));
    dsv3_status st = (!all || !uv) ? dsv3_fail(err, DSV3_E_NOMEM, "attention: out of memory for the W_UV rows")
                                   : dsv3_dequantize(kvb, all, err);
    if (st == DSV3_OK)
        for (int64_t h = 0; h < H; h++)
            memcpy(uv + h * d->v * R, all + (h * kvw + d->nope) * R, (size_t)(d->v * R) * sizeof(float));
    dsv3_free(all);
    if (st != DSV3_OK) {
        dsv3_free(uv);
        uv = NULL;
    }
    *out = uv;
    return st;
}

dsv3_status dsv3_mla_absorb(const dsv3_mla_dims *d, dsv3_mla_weights *w, int isa, dsv3_error *err)
{
    const int64_t R = d->kv_lora, H = d->heads, kvw = d->nope + d->v;
    const dsv3_weight *kvb = &w->kv_b_proj;
    dsv3_isa which;
    dsv3_status st = dsv3_isa_resolve(isa, &which, err);
    if (st == DSV3_OK)
        st = dsv3_weight_validate(kvb, err);
    if (st == DSV3_OK && (kvb->n != H * kvw || kvb->k != R))
        st = dsv3_fail(err, DSV3_E_VALUE, "attention: kv_b_proj is [%lld, %lld], expected [%lld, %lld]",
                       (long long)kvb->n, (long long)kvb->k, (long long)(H * kvw), (long long)R);
    if (st != DSV3_OK)
        return st;
    int views = 1;
    for (int64_t h = 0; h < H; h++)
        views &= row_view_ok(kvb, h * kvw + d->nope);
    float *f32 = NULL;
    dsv3_weight *uv = dsv3_alloc((size_t)H * sizeof(dsv3_weight));
    if (!uv)
        return dsv3_fail(err, DSV3_E_NOMEM, "attention: out of memory for the W_UV views");
    if (!views && (st = uv_f32_rows(d, kvb, &f32, err)) != DSV3_OK) {
        dsv3_free(uv);
        return st;
    }
    for (int64_t h = 0; h < H; h++) {
        if (views) {
            uv[h] = row_view(kvb, h * kvw + d->nope, d->v);
        } else {
            memset(&uv[h], 0, sizeof uv[h]);
            uv[h].fmt = DSV3_FMT_F32;
            uv[h].n = d->v;
            uv[h].k = R;
            uv[h].data = f32 + h * d->v * R;
            uv[h].scale2 = 1.f;
            uv[h].act = kvb->act;
        }
    }
    dsv3_mla_absorb_free(w);
    w->w_uv = uv;
    w->uv_f32 = f32;
    return DSV3_OK;
}

dsv3_status dsv3_mla_dots(const float *a, int64_t na, int64_t lda, const float *b, int64_t nb, int64_t ldb,
                          int64_t n, float *out, int64_t ldo, int isa, dsv3_error *err)
{
    dsv3_isa which;
    dsv3_status st = dsv3_isa_resolve(isa, &which, err);
    if (st == DSV3_OK && (na < 0 || nb < 0 || n < 0 || lda < n || ldb < n || ldo < nb))
        st = dsv3_fail(err, DSV3_E_VALUE, "mla dots: bad sizes");
    if (st == DSV3_OK)
        dsv3_attend_table(which)->dots(a, na, lda, b, nb, ldb, n, out, ldo);
    return st;
}

dsv3_status dsv3_mla_wsum(const float *p, int64_t np, int64_t ldp, const float *x, int64_t ldx, int64_t T,
                          int64_t n, float *out, int64_t ldo, int isa, dsv3_error *err)
{
    dsv3_isa which;
    dsv3_status st = dsv3_isa_resolve(isa, &which, err);
    if (st == DSV3_OK && (np < 0 || T < 0 || n < 0 || ldp < T || ldx < n || ldo < n))
        st = dsv3_fail(err, DSV3_E_VALUE, "mla wsum: bad sizes");
    if (st == DSV3_OK)
        dsv3_attend_table(which)->wsum(p, np, ldp, x, ldx, T, n, out, ldo);
    return st;
}

dsv3_status dsv3_mla_wsum_rows(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0, int64_t T,
                               float *out, int64_t ldo, int isa, dsv3_error *err)
{
    dsv3_isa which;
    dsv3_status st = dsv3_isa_resolve(isa, &which, err);
    if (st == DSV3_OK)
        st = dsv3_weight_validate(w, err);
    if (st == DSV3_OK && (np < 0 || T < 0 || n0 < 0 || n0 > w->n - T || ldp < T || ldo < w->k))
        st = dsv3_fail(err, DSV3_E_VALUE, "mla wsum_rows: bad sizes");
    if (st == DSV3_OK)
        dsv3_attend_table(which)->wsum_rows(p, np, ldp, w, n0, T, out, ldo);
    return st;
}

dsv3_status dsv3_mla_expsum(float *x, int64_t n, float m, float *sum, int isa, dsv3_error *err)
{
    dsv3_isa which;
    dsv3_status st = dsv3_isa_resolve(isa, &which, err);
    if (st == DSV3_OK && n < 0)
        st = dsv3_fail(err, DSV3_E_VALUE, "mla expsum: bad size");
    if (st == DSV3_OK)
        *sum = dsv3_attend_table(which)->expsum(x, n, m);
    return st;
}

dsv3_status dsv3_mla_dots_kv(const float *a, int64_t na, int64_t lda, const dsv3_kv_layout *g, const void *rows,
                             int64_t nb, float *out, int64_t ldo, int isa, dsv3_error *err)
{
    dsv3_isa which;
    const int64_t n = g->R + g->P;
    dsv3_status st = dsv3_isa_resolve(isa, &which, err);
    if (st == DSV3_OK && (na < 0 || nb < 0 || lda < n || ldo < nb || (unsigned)g->dtype >= DSV3_KV_DTYPE_COUNT))
        st = dsv3_fail(err, DSV3_E_VALUE, "mla dots_kv: bad sizes");
    if (st != DSV3_OK)
        return st;
    const dsv3_attend_kernels *K = dsv3_attend_table(which);
    if (g->dtype == DSV3_KV_F32)
        K->dots(a, na, lda, rows, nb, n, n, out, ldo);
    else
        K->dots_kv(a, na, lda, g, rows, nb, out, ldo);
    return DSV3_OK;
}

dsv3_status dsv3_mla_wsum_kv(const float *p, int64_t np, int64_t ldp, const dsv3_kv_layout *g, const void *rows,
                             int64_t T, float *out, int64_t ldo, int isa, dsv3_error *err)
{
    dsv3_isa which;
    dsv3_status st = dsv3_isa_resolve(isa, &which, err);
    if (st == DSV3_OK && (np < 0 || T < 0 || ldp < T || ldo < g->R || (unsigned)g->dtype >= DSV3_KV_DTYPE_COUNT))
        st = dsv3_fail(err, DSV3_E_VALUE, "mla wsum_kv: bad sizes");
    if (st != DSV3_OK)
        return st;
    const dsv3_attend_kernels *K = dsv3_attend_table(which);
    if (g->dtype == DSV3_KV_F32)
        K->wsum(p, np, ldp, rows, g->R + g->P, T, g->R, out, ldo);
    else
        K->wsum_kv(p, np, ldp, g, rows, T, out, ldo);
    return DSV3_OK;
}

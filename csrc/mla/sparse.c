/* MLA with DeepSeek sparse attention (dsv3_indexer.h): the indexer picks each query's rows, then
 * the ordinary attention core (dsv3_mla_attend: naive, absorbed or expanded) runs over them.
 *
 * Queries that see at most index_topk rows keep all of them: they run as one dense causal call.
 * Every other query gets its selected latent rows gathered (ascending positions, in the cache's own row
 * layout: f32, bf16 or fp8, dsv3_kv_cache.h) into a buffer and
 * attends to that buffer as one token over topk rows (the rows keep their rotated k_pe, so the
 * result is the attention restricted to the selection). Selections are computed for a chunk of
 * queries in one parallel region, one query per thread in a fixed order, so they do not depend on
 * the thread count. */
#include "dsv3_indexer.h"
#include "mla_internal.h"

#include <omp.h>
#include <string.h>

/* Rows selected by queries [i0, i0+n) (absolute positions past+i): sel [n, topk], counts [n]. */
static void select_chunk(const dsv3_indexer_dims *ix, dsv3_indexer_scratch *iws, const float *keys, int64_t past,
                         int64_t i0, int64_t n, int64_t *counts)
{
    const int nt = dsv3_num_threads();
    const int64_t H = ix->heads, hd = ix->head_dim;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t j = 0; j < n; j++) {
        const int64_t i = i0 + j, T = past + i + 1;
        const int me = omp_get_thread_num();
        float *score = iws->score + (int64_t)me * iws->rows;
        dsv3_indexer_scores(ix, iws->q + i * H * hd, iws->w + i * H, keys, T, score,
                            iws->kblk + (int64_t)me * DSV3_INDEXER_SCORE_BLOCK * hd);
        counts[j] = dsv3_indexer_select(score, T, ix->topk, iws->sel + j * ix->topk,
                                        iws->order + (int64_t)me * iws->rows);
    }
}

/* dsv3_mla_forward_indexed (per_token 0) and dsv3_mla_forward_indexed_steps (per_token 1: the queries that
 * see at most topk rows attend one by one, each as its one-token decode step, instead of as one causal call). */
static dsv3_status forward_indexed(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const dsv3_indexer_dims *ix,
                                   const dsv3_indexer_weights *iw, const float *x, int64_t s, const float *cos_j,
                                   const float *sin_j, void *cache, float *index_cache, int64_t past,
                                   dsv3_attn_mode mode, float *out, dsv3_mla_scratch *ws, dsv3_indexer_scratch *iws,
                                   int per_token, int isa, dsv3_error *err)
{
    dsv3_status st = dsv3_mla_check_call(d, w, s, past, mode, err);
    if (st == DSV3_OK)
        st = dsv3_indexer_check(d, ix, err);
    if (st != DSV3_OK)
        return st;
    dsv3_mla_scratch local = {0};
    dsv3_indexer_scratch ilocal = {0};
    dsv3_mla_scratch *sc = ws ? ws : &local;
    dsv3_indexer_scratch *is = iws ? iws : &ilocal;
    const int64_t qk = d->nope + d->rope, H = d->heads;
    const int64_t row_bytes = dsv3_kv_layout_of(d->kv_dtype, d->kv_lora, d->rope).row_bytes;
    st = dsv3_mla_scratch_reserve(sc, d, mode, s, past + s, err);
    if (st == DSV3_OK)
        st = dsv3_indexer_scratch_reserve(is, d, ix, s, past + s, err);
    if (st == DSV3_OK)
        st = dsv3_mla_project_q(d, w, x, s, cos_j, sin_j, sc->q, sc->qa, isa, err);
    if (st == DSV3_OK)
        st = dsv3_mla_write_latent(d, w, x, s, cos_j, sin_j, cache, past, sc->fresh, isa, err);
    if (st == DSV3_OK)
        st = dsv3_indexer_keys(d, ix, iw, x, s, cos_j, sin_j, index_cache + past * dsv3_indexer_key_row(ix), is->kf,
                               isa, err);
    /* queries [0, n_dense) see at most topk rows: dense attention is exactly the selection */
    const int64_t n_dense = ix->topk - past >= s ? s : ix->topk - past > 0 ? ix->topk - past : 0;
    if (st == DSV3_OK && n_dense < s)
        st = dsv3_indexer_queries(d, ix, iw, sc->qa, x, s, cos_j, sin_j, is->q, is->w, isa, err);
    if (st == DSV3_OK && n_dense > 0 && !per_token)
        st = dsv3_mla_attend(d, w, mode, sc->q, n_dense, cache, past, sc->attn, sc, isa, err);
    for (int64_t i = 0; per_token && i < n_dense && st == DSV3_OK; i++) /* token i over rows [0, past + i] */
        st = dsv3_mla_attend(d, w, mode, sc->q + i * H * qk, 1, cache, past + i, sc->attn + i * H * d->v, sc, isa,
                             err);
    int64_t counts[DSV3_INDEXER_CHUNK];
    for (int64_t i0 = n_dense; i0 < s && st == DSV3_OK; i0 += DSV3_INDEXER_CHUNK) {
        const int64_t n = s - i0 < DSV3_INDEXER_CHUNK ? s - i0 : DSV3_INDEXER_CHUNK;
        select_chunk(ix, is, index_cache, past, i0, n, counts);
        for (int64_t j = 0; j < n && st == DSV3_OK; j++) {
            const int64_t *sel = is->sel + j * ix->topk;
            for (int64_t r = 0; r < counts[j]; r++)
                memcpy((uint8_t *)is->gather + r * row_bytes, (const uint8_t *)cache + sel[r] * row_bytes, (size_t)row_bytes);
            st = dsv3_mla_attend(d, w, mode, sc->q + (i0 + j) * H * qk, 1, is->gather, counts[j] - 1,
                                 sc->attn + (i0 + j) * H * d->v, sc, isa, err);
        }
    }
    if (st == DSV3_OK)
        st = dsv3_linear(sc->attn, s, &w->o_proj, d->attention_bias ? w->o_bias.f32 : NULL, out, isa, err);
    dsv3_mla_scratch_free(&local);
    dsv3_indexer_scratch_free(&ilocal);
    return st;
}

dsv3_status dsv3_mla_forward_indexed(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const dsv3_indexer_dims *ix,
                                     const dsv3_indexer_weights *iw, const float *x, int64_t s, const float *cos_j,
                                     const float *sin_j, void *cache, float *index_cache, int64_t past,
                                     dsv3_attn_mode mode, float *out, dsv3_mla_scratch *ws, dsv3_indexer_scratch *iws,
                                     int isa, dsv3_error *err)
{
    return forward_indexed(d, w, ix, iw, x, s, cos_j, sin_j, cache, index_cache, past, mode, out, ws, iws, 0, isa,
                           err);
}

dsv3_status dsv3_mla_forward_indexed_steps(const dsv3_mla_dims *d, const dsv3_mla_weights *w,
                                           const dsv3_indexer_dims *ix, const dsv3_indexer_weights *iw, const float *x,
                                           int64_t s, const float *cos_j, const float *sin_j, void *cache,
                                           float *index_cache, int64_t past, dsv3_attn_mode mode, float *out,
                                           dsv3_mla_scratch *ws, dsv3_indexer_scratch *iws, int isa, dsv3_error *err)
{
    return forward_indexed(d, w, ix, iw, x, s, cos_j, sin_j, cache, index_cache, past, mode, out, ws, iws, 1, isa,
                           err);
}

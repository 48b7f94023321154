/* Expanded attention for prompts (transformers' formulation, blocked flash-style):
 *   K_h[t] = [W_UK_h c_t | k_pe_t] (nope + rope), V_h[t] = W_UV_h c_t (v), from one kv_b_proj GEMM
 *   over a chunk of cached rows at a time (dsv3_mla_flash_chunk rows, so the buffers do not grow
 *   with the context); then per (head, block of FLASH_Q queries), over the chunk's rows in blocks
 *   of FLASH_KV, ascending, causal:
 *     s = scale q.K_h[t];  m' = max(m, max_t s);  a = exp(m - m');  p_t = exp(s - m');
 *     l = a l + sum_t p_t;  O = a O + sum_t p_t V_h[t]                 (O lives in attn)
 *   and finally O /= l. 320 FMAs per (query, row, head) against 1088 in the absorbed form, plus
 *   the GEMM, which the cost model in attend.c weighs. Each (head, query block) is one task with a
 *   fixed order, so results do not depend on the thread count; kernels are the per-ISA table. */
#include "attend_kernels.h"
#include "kv_rows.h"
#include "mla_internal.h"

#include <math.h>
#include <omp.h>
#include <string.h>

/* One FLASH_KV block [t0, t0+kb) of head h for queries [i0, i0+nq) (absolute rows; k/v point at the
 * chunk's row c0). sc: [FLASH_Q, FLASH_KV], pv: [FLASH_Q, v]. */
static void flash_block(const dsv3_attend_kernels *K, const dsv3_mla_dims *d, const float *q, int64_t past,
                        int64_t h, int64_t i0, int64_t nq, const float *k, const float *v, int64_t c0, int64_t t0,
                        int64_t kb, float *state, float *attn, float *sc, float *pv)
{
    const int64_t H = d->heads, qk = d->nope + d->rope, V = d->v, KV = DSV3_MLA_FLASH_KV;
    K->dots(q + (i0 * H + h) * qk, nq, H * qk, k + (t0 - c0) * qk, kb, qk, qk, sc, KV);
    for (int64_t r = 0; r < nq; r++) {
        const int64_t i = i0 + r, n = past + i + 1 - t0 < kb ? past + i + 1 - t0 : kb; /* causal: t <= past+i */
        float *p = sc + r * KV, *st = state + (i * H + h) * 2;
        if (n <= 0) {
            memset(p, 0, (size_t)kb * sizeof(float));
            continue;
        }
        float mx = st[0];
        for (int64_t t = 0; t < n; t++) {
            p[t] = p[t] * d->softmax_scale;
            mx = p[t] > mx ? p[t] : mx;
        }
        for (int64_t t = n; t < kb; t++)
            p[t] = 0.f;
        const float a = st[0] == -INFINITY ? 0.f : dsv3_mla_exp(st[0] - mx);
        st[1] = a * st[1] + K->expsum(p, n, mx);
        st[0] = mx;
        float *o = attn + (i * H + h) * V;
        for (int64_t e = 0; e < V; e++)
            o[e] = a * o[e];
    }
    /* rows with n <= 0 have all-zero p and contribute nothing; the others add P.V */
    K->wsum(sc, nq, KV, v + (t0 - c0) * V, V, kb, V, pv, V);
    for (int64_t r = 0; r < nq; r++) {
        const int64_t i = i0 + r;
        if (past + i + 1 - t0 <= 0)
            continue;
        float *o = attn + (i * H + h) * V;
        const float *x = pv + r * V;
        for (int64_t e = 0; e < V; e++)
            o[e] = o[e] + x[e];
    }
}

dsv3_status dsv3_mla_attend_expanded(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q,
                                     int64_t s, const void *cache, int64_t past, float *attn,
                                     dsv3_mla_scratch *ws, int isa, dsv3_error *err)
{
    dsv3_isa which;
    dsv3_status st = dsv3_isa_resolve(isa, &which, err);
    if (st != DSV3_OK)
        return st;
    const dsv3_attend_kernels *K = dsv3_attend_table(which);
    const dsv3_kv_layout g = dsv3_kv_layout_of(d->kv_dtype, d->kv_lora, d->rope);
    const uint8_t *rows = cache;
    const int64_t H = d->heads, R = d->kv_lora, qk = d->nope + d->rope, V = d->v;
    const int64_t kvw = d->nope + d->v, T = past + s, C = dsv3_mla_flash_chunk(d);
    const int64_t QB = DSV3_MLA_FLASH_Q, KV = DSV3_MLA_FLASH_KV, qblocks = dsv3_mla_ceil_div(s, QB);
    float *lat = ws->ex, *kvx = lat + C * R, *kh = kvx + C * H * kvw, *vh = kh + H * C * qk;
    float *state = ws->fstate;
    const int nt = dsv3_num_threads();
    for (int64_t ih = 0; ih < s * H; ih++) {
        state[2 * ih] = -INFINITY;
        state[2 * ih + 1] = 0.f;
    }
    memset(attn, 0, (size_t)(s * H * V) * sizeof(float));
    for (int64_t c0 = 0; c0 < T && st == DSV3_OK; c0 += C) {
        const int64_t n = T - c0 < C ? T - c0 : C;
        dsv3_kv_decode_latent(&g, rows + c0 * g.row_bytes, n, lat); /* the chunk's latent, f32, contiguous */
        st = dsv3_linear(lat, n, &w->kv_b_proj, NULL, kvx, isa, err); /* [n, H, nope | v] */
        if (st != DSV3_OK)
            break;
#pragma omp parallel num_threads(nt)
        {
#pragma omp for schedule(static)
            for (int64_t ht = 0; ht < H * n; ht++) { /* per-head contiguous K = [k_nope | k_pe] and V */
                const int64_t h = ht / n, t = ht % n;
                const float *src = kvx + (t * H + h) * kvw;
                memcpy(kh + (h * C + t) * qk, src, (size_t)d->nope * sizeof(float));
                dsv3_kv_decode(&g, rows + (c0 + t) * g.row_bytes, R, d->rope, kh + (h * C + t) * qk + d->nope);
                memcpy(vh + (h * C + t) * V, src + d->nope, (size_t)V * sizeof(float));
            }
            float *sc = ws->fthr + (int64_t)omp_get_thread_num() * QB * (KV + V), *pv = sc + QB * KV;
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < H * qblocks; it++) {
                const int64_t h = it % H, i0 = (it / H) * QB, nq = s - i0 < QB ? s - i0 : QB;
                const int64_t last = past + i0 + nq; /* rows [0, last) are visible to some query */
                for (int64_t t0 = c0; t0 < c0 + n && t0 < last; t0 += KV) {
                    const int64_t kb = c0 + n - t0 < KV ? c0 + n - t0 : KV;
                    flash_block(K, d, q, past, h, i0, nq, kh + h * C * qk, vh + h * C * V, c0, t0, kb, state, attn,
                                sc, pv);
                }
            }
        }
    }
    if (st != DSV3_OK)
        return st;
    for (int64_t ih = 0; ih < s * H; ih++) {
        float *o = attn + ih * V;
        for (int64_t e = 0; e < V; e++)
            o[e] = o[e] / state[2 * ih + 1];
    }
    return DSV3_OK;
}

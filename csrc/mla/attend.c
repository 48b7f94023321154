/* The two attention formulations over the latent cache. Work is split over (token, head) pairs;
 * every pair is computed by one thread in a fixed order, so results do not depend on threads. */
#include "dsv3_dtypes.h"
#include "dsv3_ops.h"
#include "mla_internal.h"

#include <omp.h>
#include <string.h>

/* Per-thread scratch: nthreads blocks of `per` floats. */
static float *thread_scratch(int64_t per, int *nthreads)
{
    *nthreads = dsv3_num_threads();
    return dsv3_alloc((size_t)(*nthreads) * (size_t)per * sizeof(float));
}

dsv3_status dsv3_mla_attend_naive(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q, int64_t s,
                                  const float *cache, int64_t past, float *attn, int isa, dsv3_error *err)
{
    const int64_t T = past + s, row = d->kv_lora + d->rope, qk = d->nope + d->rope, kvw = d->nope + d->v;
    const int64_t H = d->heads;
    float *lat = dsv3_alloc((size_t)(T * d->kv_lora) * sizeof(float));
    float *kv = dsv3_alloc((size_t)(T * H * kvw) * sizeof(float));
    int nt = 1;
    float *scr = thread_scratch(T, &nt);
    dsv3_status st = DSV3_OK;
    if (!lat || !kv || !scr) {
        st = dsv3_fail(err, DSV3_E_NOMEM, "attention: out of memory expanding %lld cached tokens", (long long)T);
        goto done;
    }
    for (int64_t t = 0; t < T; t++)
        memcpy(lat + t * d->kv_lora, cache + t * row, (size_t)d->kv_lora * sizeof(float));
    st = dsv3_linear(lat, T, &w->kv_b_proj, NULL, kv, isa, err); /* [T, H, nope | v] */
    if (st != DSV3_OK)
        goto done;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t ih = 0; ih < s * H; ih++) {
        const int64_t i = ih / H, h = ih % H, n = past + i + 1;
        const float *qh = q + ih * qk;
        float *p = scr + (int64_t)omp_get_thread_num() * T;
        for (int64_t t = 0; t < n; t++) {
            const float *k = kv + (t * H + h) * kvw, *kpe = cache + t * row + d->kv_lora;
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
done:
    dsv3_free(lat);
    dsv3_free(kv);
    dsv3_free(scr);
    return st;
}

dsv3_status dsv3_mla_attend_absorbed(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *q,
                                     int64_t s, const float *cache, int64_t past, float *attn, dsv3_error *err)
{
    const int64_t T = past + s, R = d->kv_lora, row = R + d->rope, qk = d->nope + d->rope, H = d->heads;
    const int64_t per = T + 2 * R;
    int nt = 1;
    float *scr = thread_scratch(per, &nt);
    if (!scr)
        return dsv3_fail(err, DSV3_E_NOMEM, "attention: out of memory for %lld cached tokens", (long long)T);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t ih = 0; ih < s * H; ih++) {
        const int64_t i = ih / H, h = ih % H, n = past + i + 1;
        const float *qh = q + ih * qk, *uk = w->w_uk + h * d->nope * R, *uv = w->w_uv + h * d->v * R;
        float *p = scr + (int64_t)omp_get_thread_num() * per, *qlat = p + T, *lat = qlat + R;
        for (int64_t r = 0; r < R; r++) /* q_lat = W_UK_h^T q_nope */
            qlat[r] = 0.f;
        for (int64_t e = 0; e < d->nope; e++)
            for (int64_t r = 0; r < R; r++)
                qlat[r] += qh[e] * uk[e * R + r];
        for (int64_t t = 0; t < n; t++) {
            const float *c = cache + t * row;
            float acc = dsv3_dot_f32(qlat, c, R);
            for (int64_t e = 0; e < d->rope; e++)
                acc += qh[d->nope + e] * c[R + e];
            p[t] = acc * d->softmax_scale;
        }
        dsv3_softmax_f32(p, n);
        for (int64_t r = 0; r < R; r++)
            lat[r] = 0.f;
        for (int64_t t = 0; t < n; t++) {
            const float *c = cache + t * row;
            for (int64_t r = 0; r < R; r++)
                lat[r] += p[t] * c[r];
        }
        float *o = attn + ih * d->v;
        for (int64_t j = 0; j < d->v; j++) /* out_h = W_UV_h lat */
            o[j] = dsv3_dot_f32(uv + j * R, lat, R);
    }
    dsv3_free(scr);
    return DSV3_OK;
}

/* W[n, r] of kv_b_proj as f32: read directly for f32/bf16, otherwise dequantised once through
 * dsv3_linear against the identity (wt[r, n] = W[n, r]), so any format the linear module reads works. */
static dsv3_status kv_b_element_source(const dsv3_weight *w, int isa, float **wt, dsv3_error *err)
{
    const int64_t R = w->k, N = w->n;
    *wt = NULL;
    if (w->fmt == DSV3_FMT_F32 || w->fmt == DSV3_FMT_BF16)
        return DSV3_OK;
    float *eye = dsv3_alloc((size_t)(R * R) * sizeof(float));
    *wt = dsv3_alloc((size_t)(R * N) * sizeof(float));
    dsv3_status st = DSV3_OK;
    if (!eye || !*wt) {
        st = dsv3_fail(err, DSV3_E_NOMEM, "attention: out of memory dequantising kv_b_proj");
    } else {
        memset(eye, 0, (size_t)(R * R) * sizeof(float));
        for (int64_t r = 0; r < R; r++)
            eye[r * R + r] = 1.f;
        st = dsv3_linear(eye, R, w, NULL, *wt, isa, err);
    }
    dsv3_free(eye);
    if (st != DSV3_OK) {
        dsv3_free(*wt);
        *wt = NULL;
    }
    return st;
}

static float kv_b_at(const dsv3_weight *w, const float *wt, int64_t n, int64_t r)
{
    if (wt)
        return wt[r * w->n + n];
    if (w->fmt == DSV3_FMT_F32)
        return ((const float *)w->data)[n * w->k + r];
    return dsv3_bf16_to_f32(((const uint16_t *)w->data)[n * w->k + r]);
}

dsv3_status dsv3_mla_absorb(const dsv3_mla_dims *d, dsv3_mla_weights *w, int isa, dsv3_error *err)
{
    const int64_t R = d->kv_lora, H = d->heads, kvw = d->nope + d->v;
    float *wt = NULL;
    float *uk = dsv3_alloc((size_t)(H * d->nope * R) * sizeof(float));
    float *uv = dsv3_alloc((size_t)(H * d->v * R) * sizeof(float));
    dsv3_status st = (!uk || !uv) ? dsv3_fail(err, DSV3_E_NOMEM, "attention: out of memory for W_UK/W_UV")
                                  : kv_b_element_source(&w->kv_b_proj, isa, &wt, err);
    if (st != DSV3_OK) {
        dsv3_free(uk);
        dsv3_free(uv);
        return st;
    }
    for (int64_t h = 0; h < H; h++)
        for (int64_t e = 0; e < kvw; e++) {
            float *dst = e < d->nope ? uk + (h * d->nope + e) * R : uv + (h * d->v + e - d->nope) * R;
            for (int64_t r = 0; r < R; r++)
                dst[r] = kv_b_at(&w->kv_b_proj, wt, h * kvw + e, r);
        }
    dsv3_free(wt);
    dsv3_free(w->w_uk);
    dsv3_free(w->w_uv);
    w->w_uk = uk;
    w->w_uv = uv;
    return DSV3_OK;
}

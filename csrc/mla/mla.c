/* MLA attention: projections, latent cache write, then naive or absorbed attention (attend.c). */
#include "dsv3_mla.h"
#include "dsv3_ops.h"
#include "mla_internal.h"

#include <stdlib.h>
#include <string.h>

#define QA_NORM_EPS 1e-6f /* transformers fixes the q_a / kv_a layernorm eps at 1e-6 */

static const float *bias_of(const dsv3_vec *v, int enabled) { return enabled ? v->f32 : NULL; }

dsv3_status dsv3_mla_project_q(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *x, int64_t s,
                               const float *cos_j, const float *sin_j, float *q, float *qa, int isa, dsv3_error *err)
{
    dsv3_status st;
    if (d->q_lora > 0) {
        st = dsv3_linear(x, s, &w->q_a_proj, bias_of(&w->q_a_bias, d->attention_bias), qa, isa, err);
        if (st == DSV3_OK) {
            dsv3_rmsnorm_f32(qa, s, d->q_lora, w->q_a_layernorm.f32, QA_NORM_EPS, qa);
            st = dsv3_linear(qa, s, &w->q_b_proj, NULL, q, isa, err);
        }
    } else {
        st = dsv3_linear(x, s, &w->q_proj, NULL, q, isa, err);
    }
    if (st != DSV3_OK)
        return st;
    const int64_t qk = d->nope + d->rope, half = d->rope / 2;
    float tmp[512];
    for (int64_t i = 0; i < s; i++)
        for (int64_t h = 0; h < d->heads; h++)
            dsv3_rope_apply(q + (i * d->heads + h) * qk + d->nope, half, cos_j + i * half, sin_j + i * half,
                            d->rope_interleave, tmp);
    return DSV3_OK;
}

/* Write rows [past, past+s) of the latent cache: c = kv_a_layernorm(ckv[:R]), k_pe = rope(ckv[R:]).
 * fresh [s, kv_lora+rope]: the f32 rows before a bf16/fp8 cache stores them. */
dsv3_status dsv3_mla_write_latent(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *x, int64_t s,
                                  const float *cos_j, const float *sin_j, void *cache, int64_t past, float *fresh,
                                  int isa, dsv3_error *err)
{
    const dsv3_kv_layout g = dsv3_kv_layout_of(d->kv_dtype, d->kv_lora, d->rope);
    uint8_t *dst = (uint8_t *)cache + past * g.row_bytes;
    float *ckv = g.dtype == DSV3_KV_F32 ? (float *)(void *)dst : fresh; /* f32: the projection lands in place */
    dsv3_status st = dsv3_linear(x, s, &w->kv_a_proj, bias_of(&w->kv_a_bias, d->attention_bias), ckv, isa, err);
    if (st == DSV3_OK) {
        dsv3_mla_finish_latent(d, w, ckv, s, cos_j, sin_j);
        if (g.dtype != DSV3_KV_F32)
            dsv3_kv_store_rows(&g, ckv, s, dst);
    }
    return st;
}

void dsv3_mla_finish_latent(const dsv3_mla_dims *d, const dsv3_mla_weights *w, float *rows, int64_t s,
                            const float *cos_j, const float *sin_j)
{
    const int64_t row = d->kv_lora + d->rope, half = d->rope / 2;
    float tmp[512];
    for (int64_t i = 0; i < s; i++) {
        float *r = rows + i * row;
        dsv3_rmsnorm_f32(r, 1, d->kv_lora, w->kv_a_layernorm.f32, QA_NORM_EPS, r);
        dsv3_rope_apply(r + d->kv_lora, half, cos_j + i * half, sin_j + i * half, d->rope_interleave, tmp);
    }
}

/* Absorbed mode's form for s tokens after past rows: the cost model, unless DSV3_MLA_FORM says
 * "absorbed" or "expanded" (benchmarks and tests compare the two; expanded needs s > 1). */
static int use_expanded(const dsv3_mla_dims *d, int64_t s, int64_t past, int isa)
{
    const char *f = getenv("DSV3_MLA_FORM");
    if (s > 1 && f && strcmp(f, "expanded") == 0)
        return 1;
    if (f && strcmp(f, "absorbed") == 0)
        return 0;
    dsv3_isa which;
    return dsv3_isa_resolve(isa, &which, NULL) == DSV3_OK && dsv3_mla_prefer_expanded(d, s, past, which);
}

dsv3_status dsv3_mla_attend(const dsv3_mla_dims *d, const dsv3_mla_weights *w, dsv3_attn_mode mode, const float *q,
                            int64_t s, const void *cache, int64_t past, float *out, dsv3_mla_scratch *ws, int isa,
                            dsv3_error *err)
{
    if (mode == DSV3_ATTN_NAIVE)
        return dsv3_mla_attend_naive(d, w, q, s, cache, past, out, ws, isa, err);
    if (use_expanded(d, s, past, isa))
        return dsv3_mla_attend_expanded(d, w, q, s, cache, past, out, ws, isa, err);
    return dsv3_mla_attend_absorbed(d, w, q, s, cache, past, out, ws, isa, err);
}

dsv3_status dsv3_mla_attend_many(const dsv3_mla_dims *d, const dsv3_mla_weights *w, dsv3_attn_mode mode,
                                 const float *q, dsv3_mla_seg *segs, int64_t nseg, float *attn,
                                 dsv3_mla_scratch *ws, int isa, dsv3_error *err)
{
    dsv3_status st = DSV3_OK;
    int64_t na = 0; /* the absorbed segments, moved to the front in order */
    for (int64_t i = 0; i < nseg && st == DSV3_OK; i++) {
        const dsv3_mla_seg g = segs[i];
        const int64_t qk = d->nope + d->rope;
        if (mode == DSV3_ATTN_NAIVE || use_expanded(d, g.n, g.past, isa))
            st = dsv3_mla_attend(d, w, mode, q + g.off * d->heads * qk, g.n, g.cache, g.past,
                                 attn + g.off * d->heads * d->v, ws, isa, err);
        else
            segs[na++] = g;
    }
    return st == DSV3_OK && na > 0 ? dsv3_mla_attend_absorbed_segs(d, w, q, segs, na, attn, ws, isa, err) : st;
}

dsv3_status dsv3_mla_check_call(const dsv3_mla_dims *d, const dsv3_mla_weights *w, int64_t s, int64_t past,
                                dsv3_attn_mode mode, dsv3_error *err)
{
    if (s <= 0 || past < 0)
        return dsv3_fail(err, DSV3_E_VALUE, "attention: need at least one token (got %lld, past %lld)",
                         (long long)s, (long long)past);
    if (d->rope % 2 != 0 || d->rope > 512)
        return dsv3_fail(err, DSV3_E_VALUE, "attention: qk_rope_head_dim must be even and <= 512, got %lld",
                         (long long)d->rope);
    if (mode == DSV3_ATTN_ABSORBED && !w->w_uv)
        return dsv3_fail(err, DSV3_E_VALUE, "attention: absorbed mode needs the W_UV views (dsv3_mla_absorb)");
    if ((unsigned)d->kv_dtype >= DSV3_KV_DTYPE_COUNT)
        return dsv3_fail(err, DSV3_E_VALUE, "attention: unknown kv cache dtype %d", (int)d->kv_dtype);
    return DSV3_OK;
}

dsv3_status dsv3_mla_forward(const dsv3_mla_dims *d, const dsv3_mla_weights *w, const float *x, int64_t s,
                             const float *cos_j, const float *sin_j, void *cache, int64_t past,
                             dsv3_attn_mode mode, float *out, dsv3_mla_scratch *ws, int isa, dsv3_error *err)
{
    dsv3_status st = dsv3_mla_check_call(d, w, s, past, mode, err);
    if (st != DSV3_OK)
        return st;
    dsv3_mla_scratch local = {0}; /* no caller scratch: a temporary one for this call */
    dsv3_mla_scratch *sc = ws ? ws : &local;
    st = dsv3_mla_scratch_reserve(sc, d, mode, s, past + s, err);
    if (st == DSV3_OK)
        st = dsv3_mla_project_q(d, w, x, s, cos_j, sin_j, sc->q, sc->qa, isa, err);
    if (st == DSV3_OK)
        st = dsv3_mla_write_latent(d, w, x, s, cos_j, sin_j, cache, past, sc->fresh, isa, err);
    if (st == DSV3_OK)
        st = dsv3_mla_attend(d, w, mode, sc->q, s, cache, past, sc->attn, sc, isa, err);
    if (st == DSV3_OK)
        st = dsv3_linear(sc->attn, s, &w->o_proj, bias_of(&w->o_bias, d->attention_bias), out, isa, err);
    dsv3_mla_scratch_free(&local);
    return st;
}

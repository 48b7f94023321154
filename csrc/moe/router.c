/* Routers: score -> (group-limited) top-k -> weights. One implementation for V2, V3 and V4 styles. */
#include "dsv3_moe.h"
#include "dsv3_ops.h"

#include <omp.h>

#include <math.h>

const char *const dsv3_score_func_names[DSV3_SCORE_COUNT] = {"sigmoid", "softmax", "sqrtsoftplus"};
const char *const dsv3_topk_method_names[DSV3_TOPK_COUNT] = {"noaux_tc", "greedy", "group_limited_greedy", "noaux"};

dsv3_status dsv3_router_check(const dsv3_router_spec *r, dsv3_error *err)
{
    if (r->n_experts <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "n_routed_experts must be positive, got %lld", (long long)r->n_experts);
    if (r->top_k <= 0 || r->top_k > r->n_experts)
        return dsv3_fail(err, DSV3_E_VALUE, "num_experts_per_tok must be in 1..n_routed_experts (%lld), got %lld",
                         (long long)r->n_experts, (long long)r->top_k);
    if ((unsigned)r->scoring >= DSV3_SCORE_COUNT)
        return dsv3_fail(err, DSV3_E_VALUE, "scoring_func: unknown value %d", (int)r->scoring);
    if ((unsigned)r->method >= DSV3_TOPK_COUNT)
        return dsv3_fail(err, DSV3_E_VALUE, "topk_method: unknown value %d", (int)r->method);
    if (r->method == DSV3_TOPK_NOAUX_TC || r->method == DSV3_TOPK_GROUP_LIMITED_GREEDY) {
        if (r->n_group <= 0 || r->n_experts % r->n_group != 0)
            return dsv3_fail(err, DSV3_E_VALUE, "n_group (%lld) must divide n_routed_experts (%lld)",
                             (long long)r->n_group, (long long)r->n_experts);
        if (r->topk_group <= 0 || r->topk_group > r->n_group)
            return dsv3_fail(err, DSV3_E_VALUE, "topk_group must be in 1..n_group (%lld), got %lld",
                             (long long)r->n_group, (long long)r->topk_group);
        if (r->method == DSV3_TOPK_NOAUX_TC && r->n_experts / r->n_group < 2)
            return dsv3_fail(err, DSV3_E_VALUE, "noaux_tc needs at least 2 experts per group (n_group %lld)",
                             (long long)r->n_group);
    }
    return DSV3_OK;
}

static float score_of(dsv3_score_func f, float x)
{
    switch (f) {
    case DSV3_SCORE_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case DSV3_SCORE_SQRTSOFTPLUS: return sqrtf(x > 20.0f ? x : log1pf(expf(x)));
    default: return x; /* softmax: done over the row */
    }
}

/* Index of the largest v[i] not yet taken (ties: lowest index; -inf and NaN still selectable). */
static int64_t argmax_free(const float *v, const unsigned char *taken, int64_t n)
{
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++)
        if (!taken[i] && (best < 0 || v[i] > v[best]))
            best = i;
    return best;
}

/* Keep the topk_group best groups of `sel` (scored by top-2 sum or max); others get mask_value. */
static void mask_groups(const dsv3_router_spec *r, float *sel, float *gscore, unsigned char *taken)
{
    const int64_t G = r->n_group, per = r->n_experts / G;
    for (int64_t g = 0; g < G; g++) {
        const float *v = sel + g * per;
        int64_t ia = 0, ib = -1; /* best, second best */
        for (int64_t e = 1; e < per; e++)
            if (v[e] > v[ia])
                ia = e;
        for (int64_t e = 0; e < per; e++)
            if (e != ia && (ib < 0 || v[e] > v[ib]))
                ib = e;
        const float a = v[ia], b = ib >= 0 ? v[ib] : 0.f;
        gscore[g] = r->method == DSV3_TOPK_NOAUX_TC ? a + b : a;
        taken[g] = 0;
    }
    for (int64_t j = 0; j < r->topk_group; j++)
        taken[argmax_free(gscore, taken, G)] = 1;
    for (int64_t g = 0; g < G; g++)
        if (!taken[g])
            for (int64_t e = 0; e < per; e++)
                sel[g * per + e] = r->group_mask_value;
}

static void route_row(const dsv3_router_spec *r, const float *logits, const float *bias, float *w, int64_t *idx,
                      float *s, float *sel, float *gscore, unsigned char *taken)
{
    const int64_t E = r->n_experts, k = r->top_k;
    const int with_bias = r->method == DSV3_TOPK_NOAUX_TC || r->method == DSV3_TOPK_NOAUX;
    for (int64_t e = 0; e < E; e++)
        s[e] = score_of(r->scoring, logits[e]);
    if (r->scoring == DSV3_SCORE_SOFTMAX)
        dsv3_softmax_f32(s, E);
    for (int64_t e = 0; e < E; e++)
        sel[e] = with_bias && bias ? s[e] + bias[e] : s[e];
    if (r->method == DSV3_TOPK_NOAUX_TC || r->method == DSV3_TOPK_GROUP_LIMITED_GREEDY)
        mask_groups(r, sel, gscore, taken);
    for (int64_t e = 0; e < E; e++)
        taken[e] = 0;
    float sum = 0.f;
    for (int64_t j = 0; j < k; j++) {
        const int64_t e = argmax_free(sel, taken, E);
        taken[e] = 1;
        idx[j] = e;
        /* V3/V4 weight by the unbiased score; V2 takes the (masked) selection value itself */
        w[j] = with_bias ? s[e] : sel[e];
        sum += w[j];
    }
    const float denom = sum + 1e-20f;
    for (int64_t j = 0; j < k; j++) {
        if (r->norm_topk_prob)
            w[j] /= denom;
        w[j] *= r->routed_scaling_factor;
    }
}

/* Per thread: scores, selection values, group scores [E] floats each, taken flags [E] bytes; 64-byte blocks. */
static size_t route_thread_bytes(int64_t E) { return ((size_t)(3 * E) * sizeof(float) + (size_t)E + 63) & ~(size_t)63; }

size_t dsv3_route_scratch_bytes(const dsv3_router_spec *r, int threads)
{
    return (size_t)threads * route_thread_bytes(r->n_experts);
}

dsv3_status dsv3_route(const dsv3_router_spec *r, const float *logits, int64_t s, const float *bias,
                       float *weights, int64_t *indices, void *scratch, dsv3_error *err)
{
    const int64_t E = r->n_experts, k = r->top_k;
    const int nt = dsv3_num_threads();
    const size_t per = route_thread_bytes(E);
    unsigned char *scr = scratch ? scratch : dsv3_alloc(dsv3_route_scratch_bytes(r, nt));
    if (!scr)
        return dsv3_fail(err, DSV3_E_NOMEM, "router: out of memory for %lld experts", (long long)E);
#pragma omp parallel for schedule(static) num_threads(nt) if (s > 1)
    for (int64_t i = 0; i < s; i++) {
        float *buf = (float *)(void *)(scr + (size_t)omp_get_thread_num() * per);
        route_row(r, logits + i * E, bias, weights + i * k, indices + i * k, buf, buf + E, buf + 2 * E,
                  (unsigned char *)(buf + 3 * E));
    }
    if (!scratch)
        dsv3_free(scr);
    return DSV3_OK;
}

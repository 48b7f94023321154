/* Routed experts and the MoE block. Tokens are grouped per expert ("align": count, prefix sum,
 * gather), each expert runs once over its rows, and each token's results are summed in ascending
 * expert order (as transformers' index_add loop does), so results do not depend on threads. */
#include "dsv3_moe.h"

#include <string.h>

dsv3_status dsv3_moe_route(const dsv3_router_spec *r, const dsv3_moe_weights *w, const float *x, int64_t s,
                           float *weights, int64_t *indices, int isa, dsv3_error *err)
{
    float *logits = dsv3_alloc((size_t)(s * r->n_experts) * sizeof(float));
    if (!logits)
        return dsv3_fail(err, DSV3_E_NOMEM, "router: out of memory for logits");
    dsv3_status st = dsv3_linear(x, s, &w->gate, NULL, logits, isa, err);
    if (st == DSV3_OK)
        st = dsv3_route(r, logits, s, w->bias.f32, weights, indices, err);
    dsv3_free(logits);
    return st;
}

typedef struct {
    int64_t *offset; /* [E + 1]: rows of expert e are [offset[e], offset[e+1]) */
    int64_t *slot;   /* [s*k]: row -> token*k + choice */
    int64_t *row_of; /* [s*k]: token*k + choice -> row */
} expert_plan;

static dsv3_status plan_rows(int64_t E, const int64_t *idx, int64_t n, expert_plan *p, dsv3_error *err)
{
    int64_t *fill = p->offset + E + 1; /* scratch after offset: [E] */
    memset(p->offset, 0, (size_t)(2 * E + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= E)
            return dsv3_fail(err, DSV3_E_VALUE, "experts: expert index %lld out of range [0, %lld)",
                             (long long)idx[i], (long long)E);
        p->offset[idx[i] + 1]++;
    }
    for (int64_t e = 0; e < E; e++)
        p->offset[e + 1] += p->offset[e];
    for (int64_t i = 0; i < n; i++) {
        const int64_t row = p->offset[idx[i]] + fill[idx[i]]++;
        p->slot[row] = i;
        p->row_of[i] = row;
    }
    return DSV3_OK;
}

/* out[t] = sum over the token's choices in ascending expert order of w * y[row]. */
static void scatter_rows(const int64_t *idx, const float *wts, int64_t s, int64_t k, int64_t H, const float *y,
                         const int64_t *row_of, float *out)
{
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads()) if (s > 1)
    for (int64_t t = 0; t < s; t++) {
        float *o = out + t * H;
        memset(o, 0, (size_t)H * sizeof(float));
        int64_t last_e = -1, last_c = -1;
        for (int64_t done = 0; done < k; done++) {
            int64_t j = -1; /* next choice in (expert, choice) order after (last_e, last_c) */
            for (int64_t c = 0; c < k; c++) {
                const int64_t e = idx[t * k + c];
                if ((e > last_e || (e == last_e && c > last_c)) && (j < 0 || e < idx[t * k + j]))
                    j = c;
            }
            last_e = idx[t * k + j];
            last_c = j;
            const float *yr = y + row_of[t * k + j] * H;
            const float wj = wts[t * k + j];
            for (int64_t h = 0; h < H; h++)
                o[h] += yr[h] * wj;
        }
    }
}

/* One SwiGLU MLP over a block of rows: the unit of work of the MoE block. */
typedef struct {
    const dsv3_mlp_weights *w;
    const float *x;
    int64_t m;
    float *y;
} mlp_task;

/* Expert-parallel when every task is small (decode: one row each) or there are many tasks: each
 * thread runs whole MLPs, taking the next task when it finishes one (dynamic), and the linear layers
 * inside run on that thread alone. This replaces 3 parallel regions per expert by one per MoE block
 * and keeps the other thread busy when one is preempted. Otherwise experts run one after another,
 * each with all threads. Either way every row has the same result (dsv3_linear does not depend
 * on the thread count). */
#define SMALL_TASK_ROWS 8

static dsv3_status run_mlps(const mlp_task *tasks, int64_t n, int isa, dsv3_error *err)
{
    const int nt = dsv3_num_threads();
    int64_t biggest = 0;
    for (int64_t i = 0; i < n; i++)
        biggest = tasks[i].m > biggest ? tasks[i].m : biggest;
    if (nt == 1 || n < 2 || (biggest > SMALL_TASK_ROWS && n < 4 * (int64_t)nt)) {
        dsv3_status st = DSV3_OK;
        for (int64_t i = 0; i < n && st == DSV3_OK; i++)
            st = dsv3_mlp_forward(tasks[i].w, tasks[i].x, tasks[i].m, tasks[i].y, isa, err);
        return st;
    }
    dsv3_error *errs = dsv3_alloc((size_t)n * sizeof(dsv3_error));
    dsv3_status *sts = dsv3_alloc((size_t)n * sizeof(dsv3_status));
    if (!errs || !sts) {
        dsv3_free(errs);
        dsv3_free(sts);
        return dsv3_fail(err, DSV3_E_NOMEM, "experts: out of memory for %lld tasks", (long long)n);
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t i = 0; i < n; i++)
        sts[i] = dsv3_mlp_forward(tasks[i].w, tasks[i].x, tasks[i].m, tasks[i].y, isa, &errs[i]);
    dsv3_status st = DSV3_OK;
    for (int64_t i = 0; i < n && st == DSV3_OK; i++)
        if (sts[i] != DSV3_OK) {
            st = sts[i];
            *err = errs[i];
        }
    dsv3_free(errs);
    dsv3_free(sts);
    return st;
}

/* Routed experts (+ the shared MLP over all s rows when shared is not NULL, into shared_out). */
static dsv3_status experts_and_shared(const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden,
                                      const float *x, int64_t s, const int64_t *indices, const float *weights,
                                      float *out, const dsv3_mlp_weights *shared, float *shared_out, int isa,
                                      dsv3_error *err)
{
    const int64_t E = r->n_experts, k = r->top_k, n = s * k;
    expert_plan p;
    p.offset = dsv3_alloc((size_t)(2 * E + 1 + 2 * n) * sizeof(int64_t));
    float *xg = dsv3_alloc((size_t)(2 * n * hidden) * sizeof(float));
    mlp_task *tasks = dsv3_alloc((size_t)(E + 1) * sizeof(mlp_task));
    dsv3_status st = DSV3_OK;
    if (!p.offset || !xg || !tasks) {
        st = dsv3_fail(err, DSV3_E_NOMEM, "experts: out of memory for %lld tokens", (long long)s);
        goto done;
    }
    p.slot = p.offset + 2 * E + 1;
    p.row_of = p.slot + n;
    st = plan_rows(E, indices, n, &p, err);
    if (st != DSV3_OK)
        goto done;
    float *yg = xg + n * hidden;
    for (int64_t row = 0; row < n; row++) /* gather */
        memcpy(xg + row * hidden, x + (p.slot[row] / k) * hidden, (size_t)hidden * sizeof(float));
    int64_t nt = 0;
    if (shared)
        tasks[nt++] = (mlp_task){shared, x, s, shared_out};
    for (int64_t e = 0; e < E; e++) {
        const int64_t m = p.offset[e + 1] - p.offset[e];
        if (m > 0)
            tasks[nt++] = (mlp_task){&w->experts[e], xg + p.offset[e] * hidden, m, yg + p.offset[e] * hidden};
    }
    st = run_mlps(tasks, nt, isa, err);
    if (st == DSV3_OK)
        scatter_rows(indices, weights, s, k, hidden, yg, p.row_of, out);
done:
    dsv3_free(p.offset);
    dsv3_free(xg);
    dsv3_free(tasks);
    return st;
}

dsv3_status dsv3_moe_experts(const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden,
                             const float *x, int64_t s, const int64_t *indices, const float *weights, float *out,
                             int isa, dsv3_error *err)
{
    return experts_and_shared(r, w, hidden, x, s, indices, weights, out, NULL, NULL, isa, err);
}

dsv3_status dsv3_moe_forward(const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden,
                             const float *x, int64_t s, float *out, int isa, dsv3_error *err)
{
    const int64_t k = r->top_k;
    float *wts = dsv3_alloc((size_t)(s * k) * sizeof(float) + (size_t)(s * hidden) * sizeof(float));
    int64_t *idx = dsv3_alloc((size_t)(s * k) * sizeof(int64_t));
    dsv3_status st = DSV3_OK;
    if (!wts || !idx) {
        st = dsv3_fail(err, DSV3_E_NOMEM, "moe: out of memory for %lld tokens", (long long)s);
        goto done;
    }
    float *shared = wts + s * k;
    st = dsv3_moe_route(r, w, x, s, wts, idx, isa, err);
    if (st == DSV3_OK) /* the shared MLP is one more task beside the routed experts */
        st = experts_and_shared(r, w, hidden, x, s, idx, wts, out, w->has_shared ? &w->shared : NULL, shared, isa,
                                err);
    for (int64_t i = 0; st == DSV3_OK && w->has_shared && i < s * hidden; i++)
        out[i] = out[i] + shared[i];
done:
    dsv3_free(wts);
    dsv3_free(idx);
    return st;
}

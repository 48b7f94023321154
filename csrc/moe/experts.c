/* Routed experts and the MoE block. Tokens are grouped per expert ("align": count, prefix sum,
 * gather), each expert runs once over its rows, and each token's results are summed in ascending
 * expert order (as transformers' index_add loop does), so results do not depend on threads.
 * Decode (s <= DSV3_MOE_COLS_TOKENS) runs the whole block in one parallel region with every expert's
 * output columns split over all threads (experts_cols); prefill runs experts over their grouped rows
 * (run_mlps). All scratch comes from a dsv3_moe_scratch (the caller's, or a temporary one per call). */
#include "moe_internal.h"
#include "dsv3_linear_plan.h"
#include "dsv3_ops.h"

#include <omp.h>
#include <string.h>

/* The caller's scratch reserved for s tokens, or `local` (freed by the caller) when ws is NULL. */
static dsv3_status scratch_for(dsv3_moe_scratch *ws, dsv3_moe_scratch *local, const dsv3_router_spec *r,
                               const dsv3_moe_weights *w, int64_t hidden, int64_t s, dsv3_moe_scratch **out,
                               dsv3_error *err)
{
    *out = ws ? ws : local;
    return dsv3_moe_scratch_reserve(*out, r, w, hidden, s, err);
}

static dsv3_status route_with(const dsv3_router_spec *r, const dsv3_moe_weights *w, const float *x, int64_t s,
                              float *weights, int64_t *indices, dsv3_moe_scratch *sc, int isa, dsv3_error *err)
{
    dsv3_status st = dsv3_linear(x, s, &w->gate, NULL, sc->logits, isa, err);
    if (st == DSV3_OK)
        st = dsv3_route(r, sc->logits, s, w->bias.f32, weights, indices, sc->route, err);
    return st;
}

dsv3_status dsv3_moe_route(const dsv3_router_spec *r, const dsv3_moe_weights *w, const float *x, int64_t s,
                           float *weights, int64_t *indices, dsv3_moe_scratch *ws, int isa, dsv3_error *err)
{
    dsv3_moe_scratch local = {0}, *sc;
    const int pin = dsv3_threads_pin(); /* scratch sized for the thread count the regions use */
    dsv3_status st = scratch_for(ws, &local, r, w, w->gate.k, s, &sc, err);
    if (st == DSV3_OK)
        st = route_with(r, w, x, s, weights, indices, sc, isa, err);
    dsv3_moe_scratch_free(&local);
    dsv3_threads_unpin(pin);
    return st;
}

/* Rows grouped per expert for n = s*k choices (dsv3_moe_plan_len entries): rows of expert e are
 * [offset[e], offset[e+1]), in ascending choice order (token*k + choice) within an expert. */
typedef struct {
    int64_t *offset;   /* [E + 1] */
    int64_t *slot;     /* [n]: row -> token*k + choice */
    int64_t *by_token; /* [n]: token t's rows in ascending order at [t*k, t*k + k) */
} expert_plan;

static dsv3_status plan_rows(int64_t E, const int64_t *idx, int64_t s, int64_t k, int64_t *buf, expert_plan *p,
                             dsv3_error *err)
{
    const int64_t n = s * k;
    int64_t *fill = buf + E + 1, *seen = buf + 2 * E + 1 + 2 * n;
    p->offset = buf;
    p->slot = buf + 2 * E + 1;
    p->by_token = p->slot + n;
    memset(buf, 0, (size_t)(2 * E + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= E)
            return dsv3_fail(err, DSV3_E_VALUE, "experts: expert index %lld out of range [0, %lld)",
                             (long long)idx[i], (long long)E);
        p->offset[idx[i] + 1]++;
    }
    for (int64_t e = 0; e < E; e++)
        p->offset[e + 1] += p->offset[e];
    for (int64_t i = 0; i < n; i++)
        p->slot[p->offset[idx[i]] + fill[idx[i]]++] = i;
    /* Rows ascend in (expert, choice) order, so listing each token's rows as they come gives the
     * fixed summation order of scatter_rows. */
    memset(seen, 0, (size_t)s * sizeof(int64_t));
    for (int64_t row = 0; row < n; row++) {
        const int64_t t = p->slot[row] / k;
        p->by_token[t * k + seen[t]++] = row;
    }
    return DSV3_OK;
}

/* out[t, h0:h1] = sum over the token's choices in ascending (expert, choice) order of w * y[row]
 * (+ shared[t, h0:h1] after the sum when shared is not NULL). */
static void scatter_token(const expert_plan *p, const float *wts, int64_t t, int64_t k, int64_t H, int64_t h0,
                          int64_t h1, const float *y, const float *shared, float *out)
{
    float *o = out + t * H;
    for (int64_t h = h0; h < h1; h++)
        o[h] = 0.0f;
    for (int64_t j = 0; j < k; j++) {
        const int64_t row = p->by_token[t * k + j];
        const float *yr = y + row * H;
        const float wj = wts[p->slot[row]];
        for (int64_t h = h0; h < h1; h++)
            o[h] += yr[h] * wj;
    }
    if (shared)
        for (int64_t h = h0; h < h1; h++)
            o[h] = o[h] + shared[t * H + h];
}

static void scatter_rows(const expert_plan *p, const float *wts, int64_t s, int64_t k, int64_t H, const float *y,
                         float *out)
{
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads()) if (s > 1)
    for (int64_t t = 0; t < s; t++)
        scatter_token(p, wts, t, k, H, 0, H, y, NULL, out);
}

/* Expert-parallel when every task is small (decode: one row each) or there are many tasks: each
 * thread runs whole MLPs, taking the next task when it finishes one (dynamic), and the linear layers
 * inside run on that thread alone. This replaces 3 parallel regions per expert by one per MoE block
 * and keeps the other thread busy when one is preempted. Otherwise experts run one after another,
 * each with all threads. Either way every row has the same result (dsv3_linear does not depend
 * on the thread count). errs/sts: [n] per-task results. */
#define SMALL_TASK_ROWS 8

static dsv3_status run_mlps(const dsv3_mlp_task *tasks, int64_t n, dsv3_error *errs, dsv3_status *sts, int isa,
                            dsv3_error *err)
{
    const int nt = dsv3_num_threads();
    int64_t biggest = 0;
    for (int64_t i = 0; i < n; i++)
        biggest = tasks[i].m > biggest ? tasks[i].m : biggest;
    if (nt == 1 || n < 2 || (biggest > SMALL_TASK_ROWS && n < 4 * (int64_t)nt)) {
        dsv3_status st = DSV3_OK;
        for (int64_t i = 0; i < n && st == DSV3_OK; i++)
            st = dsv3_mlp_forward(tasks[i].w, tasks[i].x, tasks[i].m, tasks[i].y, tasks[i].gate_up, isa, err);
        return st;
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t i = 0; i < n; i++)
        sts[i] = dsv3_mlp_forward(tasks[i].w, tasks[i].x, tasks[i].m, tasks[i].y, tasks[i].gate_up, isa, &errs[i]);
    dsv3_status st = DSV3_OK;
    for (int64_t i = 0; i < n && st == DSV3_OK; i++)
        if (sts[i] != DSV3_OK) {
            st = sts[i];
            *err = errs[i];
        }
    return st;
}

#define SCATTER_COLS 256 /* hidden columns per scatter item of the decode path */

/* One MoE block of the decode path: the tasks (shared MLP first, then the routed experts with rows) and
 * their linear plans in sc->plans: gate, up of task i at [2i, 2i+1], down at [2n + i]. */
typedef struct {
    expert_plan p;
    const dsv3_mlp_task *tasks;
    int64_t n, made; /* tasks; tasks whose plans were made (to release) */
    const float *wts, *shared;
    int64_t s, k, H;
    float *out;
} cols_block;

/* Serial: group rows per expert, gather, list the tasks and plan their linears (activation buffers from
 * sc->arena, after what `arena` already holds). */
static dsv3_status cols_setup(cols_block *b, const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden,
                              const float *x, int64_t s, const int64_t *indices, const float *weights, float *out,
                              int with_shared, dsv3_moe_scratch *sc, dsv3_lin_arena *arena, int isa, dsv3_error *err)
{
    const int64_t E = r->n_experts, k = r->top_k;
    memset(b, 0, sizeof *b);
    dsv3_status st = plan_rows(E, indices, s, k, sc->plan, &b->p, err);
    if (st != DSV3_OK)
        return st;
    for (int64_t row = 0; row < s * k; row++) /* gather */
        memcpy(sc->xg + row * hidden, x + (b->p.slot[row] / k) * hidden, (size_t)hidden * sizeof(float));
    dsv3_mlp_task *tasks = sc->tasks;
    int64_t n = 0;
    if (with_shared)
        tasks[n++] = (dsv3_mlp_task){&w->shared, x, s, sc->shared_out, sc->shared_gu};
    for (int64_t e = 0; e < E; e++) {
        const int64_t m = b->p.offset[e + 1] - b->p.offset[e];
        if (m > 0)
            tasks[n++] = (dsv3_mlp_task){&w->experts[e], sc->xg + b->p.offset[e] * hidden, m,
                                         sc->yg + b->p.offset[e] * hidden, sc->gate_up + b->p.offset[e] * 2 * sc->inter};
    }
    *b = (cols_block){b->p, tasks, n, 0, weights, with_shared ? sc->shared_out : NULL, s, k, hidden, out};
    dsv3_lin_plan *gu = sc->plans, *dn = gu + 2 * n;
    for (int64_t i = 0; i < n && st == DSV3_OK; i++, b->made++) {
        const dsv3_mlp_task *t = &tasks[i];
        float *g = t->gate_up, *u = g + t->m * t->w->gate.n;
        memset(&gu[2 * i + 1], 0, sizeof gu[0]);
        memset(&dn[i], 0, sizeof dn[0]);
        st = dsv3_linear_plan(&gu[2 * i], t->x, 0, t->m, &t->w->gate, NULL, g, DSV3_LINEAR_WEIGHT_ONLY, isa, arena,
                              err);
        if (st == DSV3_OK)
            st = dsv3_linear_plan(&gu[2 * i + 1], t->x, 0, t->m, &t->w->up, NULL, u, DSV3_LINEAR_WEIGHT_ONLY, isa,
                                  arena, err);
        if (st == DSV3_OK)
            dsv3_linear_plan_share_x(&gu[2 * i + 1], &gu[2 * i]); /* gate and up read the same prepared x */
        if (st == DSV3_OK)
            st = dsv3_linear_plan(&dn[i], g, 0, t->m, &t->w->down, NULL, t->y, DSV3_LINEAR_WEIGHT_ONLY, isa, arena,
                                  err);
        if (st == DSV3_OK && t->w->up.n != t->w->gate.n)
            st = dsv3_fail(err, DSV3_E_VALUE, "mlp: gate has %lld rows, up %lld", (long long)t->w->gate.n,
                           (long long)t->w->up.n);
    }
    return st;
}

/* Called by every thread of the team: phase 1, the gate and up projections of every task as one list of
 * plans, their output columns split in a fixed partition over all threads (so with fewer experts than
 * threads every thread still works); barrier; SiLU * up; phase 2, the down projections the same way;
 * barrier; the weighted scatter (+ the shared output) split over (token, column block). Every element is
 * computed by the same kernel call whatever the team size, so results are bitwise independent of it. */
static void cols_run_team(const cols_block *b, dsv3_moe_scratch *sc)
{
    dsv3_lin_plan *gu = sc->plans, *dn = gu + 2 * b->n;
    const int64_t n = b->n, H = b->H, hb = (H + SCATTER_COLS - 1) / SCATTER_COLS;
    dsv3_linear_prepare_team(gu, (int)(2 * n)); /* ends with a barrier */
    dsv3_linear_run_team(gu, (int)(2 * n), sc->work);
#pragma omp barrier
    for (int64_t i = 0; i < n; i++) {
        const int64_t mi = b->tasks[i].m * b->tasks[i].w->gate.n;
        float *g = b->tasks[i].gate_up, *u = g + mi;
#pragma omp for schedule(static) nowait
        for (int64_t j = 0; j < mi; j++)
            g[j] = dsv3_silu_f32(g[j]) * u[j];
    }
#pragma omp barrier
    dsv3_linear_prepare_team(dn, (int)n);
    dsv3_linear_run_team(dn, (int)n, sc->work);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < b->s * hb; c++) {
        const int64_t h0 = c % hb * SCATTER_COLS;
        scatter_token(&b->p, b->wts, c / hb, b->k, H, h0, h0 + SCATTER_COLS < H ? h0 + SCATTER_COLS : H, sc->yg,
                      b->shared, b->out);
    }
}

static void cols_release(const cols_block *b, dsv3_moe_scratch *sc)
{
    dsv3_lin_plan *gu = sc->plans, *dn = gu + 2 * b->n;
    for (int64_t i = 0; i < b->made; i++) {
        dsv3_linear_plan_release(&gu[2 * i]);
        dsv3_linear_plan_release(&gu[2 * i + 1]);
        dsv3_linear_plan_release(&dn[i]);
    }
}

/* Team size of the decode path: the pinned thread count, within what the scratch was sized for. */
static int cols_team(dsv3_moe_scratch *sc)
{
    const int nt = dsv3_num_threads() < sc->threads ? dsv3_num_threads() : sc->threads;
    memset(sc->work, 0, (size_t)nt * sizeof(int64_t));
    sc->work_team = nt;
    return nt;
}

/* Routed experts (+ the shared MLP over all s rows, added to out, when with_shared). */
static dsv3_status experts_and_shared(const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden,
                                      const float *x, int64_t s, const int64_t *indices, const float *weights,
                                      float *out, int with_shared, dsv3_moe_scratch *sc, int isa, dsv3_error *err)
{
    if (s <= DSV3_MOE_COLS_TOKENS && s <= sc->tokens) { /* decode: one region */
        cols_block b;
        dsv3_lin_arena arena = {sc->arena, sc->arena_bytes, 0};
        dsv3_status st = cols_setup(&b, r, w, hidden, x, s, indices, weights, out, with_shared, sc, &arena, isa, err);
        if (st == DSV3_OK) {
#pragma omp parallel num_threads(cols_team(sc))
            cols_run_team(&b, sc);
        }
        cols_release(&b, sc);
        return st;
    }
    const int64_t E = r->n_experts, k = r->top_k;
    expert_plan p;
    dsv3_status st = plan_rows(E, indices, s, k, sc->plan, &p, err);
    if (st != DSV3_OK)
        return st;
    for (int64_t row = 0; row < s * k; row++) /* gather */
        memcpy(sc->xg + row * hidden, x + (p.slot[row] / k) * hidden, (size_t)hidden * sizeof(float));
    dsv3_mlp_task *tasks = sc->tasks;
    int64_t nt = 0;
    if (with_shared)
        tasks[nt++] = (dsv3_mlp_task){&w->shared, x, s, sc->shared_out, sc->shared_gu};
    for (int64_t e = 0; e < E; e++) {
        const int64_t m = p.offset[e + 1] - p.offset[e];
        if (m > 0)
            tasks[nt++] = (dsv3_mlp_task){&w->experts[e], sc->xg + p.offset[e] * hidden, m,
                                          sc->yg + p.offset[e] * hidden,
                                          sc->gate_up + p.offset[e] * 2 * sc->inter};
    }
    st = run_mlps(tasks, nt, sc->errs, sc->sts, isa, err);
    if (st == DSV3_OK)
        scatter_rows(&p, weights, s, k, hidden, sc->yg, out);
    for (int64_t i = 0; st == DSV3_OK && with_shared && i < s * hidden; i++)
        out[i] = out[i] + sc->shared_out[i];
    return st;
}

/* The whole MoE block at decode in ONE parallel region: the router's linear split over the team, then one
 * thread routes, groups and plans (a few microseconds) while the others wait, then cols_run_team. */
static dsv3_status moe_decode(const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden, const float *x,
                              int64_t s, float *out, dsv3_moe_scratch *sc, int isa, dsv3_error *err)
{
    dsv3_lin_arena arena = {sc->arena, sc->arena_bytes, 0};
    dsv3_lin_plan gate;
    dsv3_status st = dsv3_linear_plan(&gate, x, 0, s, &w->gate, NULL, sc->logits, DSV3_LINEAR_WEIGHT_ONLY, isa,
                                      &arena, err);
    if (st != DSV3_OK)
        return st;
    cols_block b;
    memset(&b, 0, sizeof b);
#pragma omp parallel num_threads(cols_team(sc))
    {
        dsv3_linear_prepare_team(&gate, 1);
        dsv3_linear_run_team(&gate, 1, NULL);
#pragma omp barrier
#pragma omp single
        { /* dsv3_route's own region is nested here: it runs on this thread, with scratch slot 0 */
            st = dsv3_route(r, sc->logits, s, w->bias.f32, sc->weights, sc->indices, sc->route, err);
            if (st == DSV3_OK)
                st = cols_setup(&b, r, w, hidden, x, s, sc->indices, sc->weights, out, w->has_shared, sc, &arena, isa,
                                err);
        } /* implicit barrier: every thread sees st and the plans */
        if (st == DSV3_OK)
            cols_run_team(&b, sc);
    }
    cols_release(&b, sc);
    dsv3_linear_plan_release(&gate);
    return st;
}

dsv3_status dsv3_moe_experts(const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden,
                             const float *x, int64_t s, const int64_t *indices, const float *weights, float *out,
                             dsv3_moe_scratch *ws, int isa, dsv3_error *err)
{
    dsv3_moe_scratch local = {0}, *sc;
    const int pin = dsv3_threads_pin(); /* scratch sized for the thread count the regions use */
    dsv3_status st = scratch_for(ws, &local, r, w, hidden, s, &sc, err);
    if (st == DSV3_OK)
        st = experts_and_shared(r, w, hidden, x, s, indices, weights, out, 0, sc, isa, err);
    dsv3_moe_scratch_free(&local);
    dsv3_threads_unpin(pin);
    return st;
}

dsv3_status dsv3_moe_forward(const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden,
                             const float *x, int64_t s, float *out, dsv3_moe_scratch *ws, int isa,
                             dsv3_error *err)
{
    dsv3_moe_scratch local = {0}, *sc;
    const int pin = dsv3_threads_pin(); /* scratch sized for the thread count the regions use */
    dsv3_status st = scratch_for(ws, &local, r, w, hidden, s, &sc, err);
    if (st == DSV3_OK && s <= DSV3_MOE_COLS_TOKENS) {
        st = moe_decode(r, w, hidden, x, s, out, sc, isa, err);
    } else {
        if (st == DSV3_OK)
            st = route_with(r, w, x, s, sc->weights, sc->indices, sc, isa, err);
        if (st == DSV3_OK) /* the shared MLP is one more task beside the routed experts */
            st = experts_and_shared(r, w, hidden, x, s, sc->indices, sc->weights, out, w->has_shared, sc, isa, err);
    }
    dsv3_moe_scratch_free(&local);
    dsv3_threads_unpin(pin);
    return st;
}

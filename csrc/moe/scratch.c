/* The MoE scratch (dsv3_moe_scratch): one block carved into named buffers, grown on demand. */
#include "moe_internal.h"
#include "dsv3_linear_plan.h"

#include <string.h>


/* Widest gate (intermediate size) over the routed experts. */
static int64_t widest_expert(const dsv3_router_spec *r, const dsv3_moe_weights *w)
{
    int64_t I = 0;
    for (int64_t e = 0; e < r->n_experts; e++)
        I = w->experts[e].gate.n > I ? w->experts[e].gate.n : I;
    return I;
}

dsv3_status dsv3_moe_scratch_reserve(dsv3_moe_scratch *ws, const dsv3_router_spec *r, const dsv3_moe_weights *w,
                                     int64_t hidden, int64_t tokens, dsv3_error *err)
{
    const int threads = dsv3_num_threads();
    const int64_t E = r->n_experts, k = r->top_k;
    int64_t I = widest_expert(r, w), Is = w->has_shared ? w->shared.gate.n : 0;
    if (ws->block && tokens <= ws->tokens && threads <= ws->threads && E == ws->experts && k == ws->top_k &&
        hidden == ws->hidden && I <= ws->inter && Is <= ws->shared_inter)
        return DSV3_OK;
    if (ws->block && E == ws->experts && k == ws->top_k && hidden == ws->hidden) { /* cover old and new needs */
        tokens = tokens > ws->tokens ? tokens : ws->tokens;
        I = I > ws->inter ? I : ws->inter;
        Is = Is > ws->shared_inter ? Is : ws->shared_inter;
    }
    const int nt = ws->block && ws->threads > threads ? ws->threads : threads;
    const int64_t n = tokens * k, fsz = (int64_t)sizeof(float), isz = (int64_t)sizeof(int64_t);
    /* decode path: the router, gate, up (K = hidden) and down (K = widest) plans of every task; bound_bytes is
     * affine in the rows, so the tasks' rows (ct * k routed + ct shared) bound the sum */
    const int64_t ct = tokens < DSV3_MOE_COLS_TOKENS ? tokens : DSV3_MOE_COLS_TOKENS, rows = ct * (k + 1);
    const int64_t Iw = I > Is ? I : Is;
    const int64_t arena = (int64_t)dsv3_linear_bound_bytes(hidden, ct) + /* the router's linear */
                          2 * (int64_t)(dsv3_linear_bound_bytes(hidden, rows) +
                                        (size_t)(E + 1) * dsv3_linear_bound_bytes(hidden, 0)) +
                          (int64_t)(dsv3_linear_bound_bytes(Iw, rows) + (size_t)(E + 1) * dsv3_linear_bound_bytes(Iw, 0));
    const int64_t bytes[] = {
        tokens * E * fsz,                               /* logits */
        n * fsz,                                        /* weights */
        n * isz,                                        /* indices */
        dsv3_moe_plan_len(E, tokens, k) * isz,          /* plan */
        n * hidden * fsz,                               /* xg */
        n * hidden * fsz,                               /* yg */
        n * 2 * I * fsz,                                /* gate_up */
        tokens * 2 * Is * fsz,                          /* shared_gu */
        tokens * hidden * fsz,                          /* shared_out */
        (E + 1) * (int64_t)sizeof(dsv3_mlp_task),       /* tasks */
        (E + 1) * (int64_t)sizeof(dsv3_error),          /* errs */
        (E + 1) * (int64_t)sizeof(dsv3_status),         /* sts */
        (int64_t)dsv3_route_scratch_bytes(r, nt),       /* route */
        3 * (E + 1) * (int64_t)sizeof(dsv3_lin_plan),  /* plans */
        arena,                                          /* arena */
        nt * isz,                                       /* work */
    };
    enum { COUNT = sizeof bytes / sizeof bytes[0] };
    void *at[COUNT];
    void *block = dsv3_alloc_carved(bytes, COUNT, at);
    if (!block)
        return dsv3_fail(err, DSV3_E_NOMEM, "moe: out of memory for the scratch of %lld tokens", (long long)tokens);
    dsv3_free(ws->block);
    ws->logits = at[0];
    ws->weights = at[1];
    ws->indices = at[2];
    ws->plan = at[3];
    ws->xg = at[4];
    ws->yg = at[5];
    ws->gate_up = at[6];
    ws->shared_gu = at[7];
    ws->shared_out = at[8];
    ws->tasks = at[9];
    ws->errs = at[10];
    ws->sts = at[11];
    ws->route = at[12];
    ws->plans = at[13];
    ws->arena = at[14];
    ws->arena_bytes = (size_t)arena;
    ws->work = at[15];
    ws->work_team = 0;
    ws->block = block;
    ws->tokens = tokens;
    ws->experts = E;
    ws->top_k = k;
    ws->hidden = hidden;
    ws->inter = I;
    ws->shared_inter = Is;
    ws->threads = nt;
    return DSV3_OK;
}

void dsv3_moe_scratch_free(dsv3_moe_scratch *ws)
{
    dsv3_free(ws->block);
    memset(ws, 0, sizeof *ws);
}

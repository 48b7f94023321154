/* SwiGLU MLP (dense layers, shared experts, each routed expert). */
#include "dsv3_linear_plan.h"
#include "dsv3_moe.h"
#include "dsv3_ops.h"

#include <string.h>

/* Few rows (decode): one parallel region, gate and up as two plans reading one prepared x, their
 * columns split over the team, barrier, SiLU * up, then down; activation scratch from the calling
 * thread's bound arena (the model's workspace), so a decode step allocates nothing. */
static dsv3_status mlp_one_region(const dsv3_mlp_weights *w, const float *x, int64_t m, float *out, float *g,
                                  int isa, dsv3_error *err)
{
    const int64_t I = w->gate.n;
    float *u = g + m * I;
    dsv3_lin_arena *arena = dsv3_linear_bind_arena(NULL);
    dsv3_linear_bind_arena(arena);
    const size_t mark = arena ? arena->used : 0;
    dsv3_lin_plan gu[2], dn;
    memset(gu, 0, sizeof gu);
    memset(&dn, 0, sizeof dn);
    dsv3_status st = dsv3_linear_plan(&gu[0], x, 0, m, &w->gate, NULL, g, DSV3_LINEAR_WEIGHT_ONLY, isa, arena, err);
    if (st == DSV3_OK)
        st = dsv3_linear_plan(&gu[1], x, 0, m, &w->up, NULL, u, DSV3_LINEAR_WEIGHT_ONLY, isa, arena, err);
    if (st == DSV3_OK)
        dsv3_linear_plan_share_x(&gu[1], &gu[0]);
    if (st == DSV3_OK)
        st = dsv3_linear_plan(&dn, g, 0, m, &w->down, NULL, out, DSV3_LINEAR_WEIGHT_ONLY, isa, arena, err);
    if (st == DSV3_OK && w->up.n != I)
        st = dsv3_fail(err, DSV3_E_VALUE, "mlp: gate has %lld rows, up %lld", (long long)I, (long long)w->up.n);
    if (st == DSV3_OK) {
        const int64_t n = m * I;
#pragma omp parallel num_threads(dsv3_num_threads())
        {
            dsv3_linear_prepare_team(gu, 2);
            dsv3_linear_run_team(gu, 2, NULL);
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t j = 0; j < n; j++)
                g[j] = dsv3_silu_f32(g[j]) * u[j];
            dsv3_linear_prepare_team(&dn, 1);
            dsv3_linear_run_team(&dn, 1, NULL);
        }
    }
    dsv3_linear_plan_release(&gu[0]);
    dsv3_linear_plan_release(&gu[1]);
    dsv3_linear_plan_release(&dn);
    if (arena)
        arena->used = mark;
    return st;
}

dsv3_status dsv3_mlp_forward(const dsv3_mlp_weights *w, const float *x, int64_t m, float *out, float *gate_up,
                             int isa, dsv3_error *err)
{
    const int64_t I = w->gate.n;
    float *g = gate_up ? gate_up : dsv3_alloc((size_t)(2 * m * I) * sizeof(float));
    if (!g)
        return dsv3_fail(err, DSV3_E_NOMEM, "mlp: out of memory for [%lld, %lld]", (long long)m, (long long)I);
    float *u = g + m * I;
    dsv3_status st;
    if (m <= DSV3_MOE_COLS_TOKENS) {
        st = mlp_one_region(w, x, m, out, g, isa, err);
    } else { /* prefill: three linears, each over all threads (the oneDNN route stays available) */
        st = dsv3_linear(x, m, &w->gate, NULL, g, isa, err);
        if (st == DSV3_OK)
            st = dsv3_linear(x, m, &w->up, NULL, u, isa, err);
        if (st == DSV3_OK) {
            dsv3_silu_mul_f32(g, u, m * I);
            st = dsv3_linear(g, m, &w->down, NULL, out, isa, err);
        }
    }
    if (!gate_up)
        dsv3_free(g);
    return st;
}

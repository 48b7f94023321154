/* The linear plan API (dsv3_linear_plan.h): several plans prepared and run inside ONE parallel region
 * give bitwise the results of dsv3_linear_ex for any team size, take exactly dsv3_linear_plan_bytes of
 * the arena (no allocation when it fits), share prepared activations, and split their work items in a
 * fixed partition whose per-thread counts add up to the items. Every format, ISA, x dtype and mode. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ctest.h"
#include "dsv3_dtypes.h"
#include "dsv3_linear_plan.h"

/* The group each format's plans are tested with (int4 32, fp8_block 128, others their own). */
static int plan_group(dsv3_format fmt) { return fmt == DSV3_FMT_INT4 ? 32 : fmt == DSV3_FMT_FP8_BLOCK ? 128 : 0; }

/* dyn: 0 weight-only, 1 dynamic activation quantisation, 2 weight-only in the fast mode (w.act) */
static void plan_case(dsv3_format fmt, int64_t m, int xbf, int dyn, dsv3_isa isa, uint64_t *rng)
{
    const int64_t k = 300, n1 = 37, n2 = 70;
    dsv3_error err = {0};
    ctest_qweight a, b;
    if (!ctest_qweight_random(&a, fmt, plan_group(fmt), n1, k, 0.5f, rng))
        return;
    if (!ctest_qweight_random(&b, fmt, plan_group(fmt), n2, k, 0.5f, rng)) {
        ctest_qweight_free(&a);
        return;
    }
    if (dyn == 2)
        a.w.act = b.w.act = DSV3_ACT_FAST;
    float *x = malloc((size_t)(m * k) * sizeof(float)), *ref = malloc((size_t)(m * (n1 + n2)) * sizeof(float));
    float *y = malloc((size_t)(m * (n1 + n2)) * sizeof(float)), *bias = malloc((size_t)n2 * sizeof(float));
    uint16_t *xb = malloc((size_t)(m * k) * 2);
    const dsv3_linear_mode mode = dyn == 1 ? DSV3_LINEAR_DYNAMIC : DSV3_LINEAR_WEIGHT_ONLY;
    const size_t need = dsv3_linear_plan_bytes(&a.w, m, xbf, mode, (int)isa) +
                        dsv3_linear_plan_bytes(&b.w, m, xbf, mode, (int)isa);
    unsigned char *mem = malloc(need + 64);
    if (!x || !ref || !y || !bias || !xb || !mem) {
        CHECK(0, "out of memory");
        goto done;
    }
    ctest_fill(x, m * k, 1.0f, rng);
    ctest_fill(bias, n2, 1.0f, rng);
    for (int64_t i = 0; i < m * k; i++)
        xb[i] = dsv3_f32_to_bf16(x[i]);
    const void *xin = xbf ? (const void *)xb : (const void *)x;
    CHECK_OK(dsv3_linear_ex(xin, xbf, m, &a.w, NULL, ref, mode, (int)isa, &err), &err);
    CHECK_OK(dsv3_linear_ex(xin, xbf, m, &b.w, bias, ref + m * n1, mode, (int)isa, &err), &err);
    CHECK(dsv3_linear_plan_bytes(&a.w, m, xbf, mode, (int)isa) <= dsv3_linear_bound_bytes(k, m),
          "plan bytes above the bound");
    if (dyn != 1 && !xbf)
        CHECK(dsv3_linear_plan_bytes(&a.w, m, 0, mode, (int)isa) <= dsv3_linear_plan_bytes_upto(&a.w, m + 30),
              "plan bytes above plan_bytes_upto");
    for (int team = 1; team <= 5; team += 2) {
        unsigned char *base = mem + 64 - ((uintptr_t)mem & 63); /* 64-aligned */
        dsv3_lin_arena arena = {base, need, 0};
        dsv3_lin_plan p[2];
        CHECK_OK(dsv3_linear_plan(&p[0], xin, xbf, m, &a.w, NULL, y, mode, (int)isa, &arena, &err), &err);
        CHECK_OK(dsv3_linear_plan(&p[1], xin, xbf, m, &b.w, bias, y + m * n1, mode, (int)isa, &arena, &err), &err);
        CHECK(arena.used == need && !p[0].owned && !p[1].owned, "%s m=%lld: arena used %zu of %zu, owned %p %p",
              dsv3_formats[fmt].name, (long long)m, arena.used, need, p[0].owned, p[1].owned);
        CHECK(dsv3_linear_plan_share_x(&p[1], &p[0]) == 1, "same x, K and layout: shareable");
        for (int64_t i = 0; i < m * (n1 + n2); i++)
            y[i] = NAN;
        int64_t work[8] = {0};
#pragma omp parallel num_threads(team)
        {
            dsv3_linear_prepare_team(p, 2);
            dsv3_linear_run_team(p, 2, work);
        }
        int64_t sum = 0;
        for (int t = 0; t < 8; t++)
            sum += work[t];
        CHECK(sum == dsv3_linear_plan_items(&p[0]) + dsv3_linear_plan_items(&p[1]), "work items %lld", (long long)sum);
        CHECK(memcmp(y, ref, (size_t)(m * (n1 + n2)) * sizeof(float)) == 0,
              "%s %s m=%lld x%s%s team %d: plans differ from dsv3_linear_ex", dsv3_formats[fmt].name,
              dsv3_isa_name(isa), (long long)m, xbf ? "=bf16" : "=f32", dyn == 1 ? " dynamic" : dyn == 2 ? " fast" : "",
              team);
        dsv3_linear_plan_release(&p[0]);
        dsv3_linear_plan_release(&p[1]);
    }
    { /* no arena: the plan allocates its buffers itself and frees them on release */
        dsv3_lin_plan p;
        CHECK_OK(dsv3_linear_plan(&p, xin, xbf, m, &a.w, NULL, y, mode, (int)isa, NULL, &err), &err);
        CHECK((p.owned != NULL) == (dsv3_linear_plan_bytes(&a.w, m, xbf, mode, (int)isa) > 0), "owned buffers");
        dsv3_linear_prepare_team(&p, 1);
        dsv3_linear_run_team(&p, 1, NULL);
        CHECK(memcmp(y, ref, (size_t)(m * n1) * sizeof(float)) == 0, "plan without arena differs");
        dsv3_linear_plan_release(&p);
    }
done:
    free(x); free(ref); free(y); free(bias); free(xb); free(mem);
    ctest_qweight_free(&a);
    ctest_qweight_free(&b);
}

void test_linear_plan(void)
{
    static const int64_t MS[] = {1, 3, 33};
    dsv3_isa isas[DSV3_ISA_COUNT];
    const int n_isa = ctest_isas(isas);
    uint64_t rng = 7;
    for (int f = 0; f < DSV3_FMT_COUNT; f++)
        for (size_t mi = 0; mi < sizeof MS / sizeof MS[0]; mi++)
            for (int i = 0; i < n_isa; i++)
                for (int xbf = 0; xbf < 2; xbf++)
                    for (int dyn = 0; dyn < 3; dyn++)
                        if (dyn != 1 || f == DSV3_FMT_FP8_BLOCK || f == DSV3_FMT_INT8)
                            plan_case((dsv3_format)f, MS[mi], xbf, dyn, isas[i], &rng);
    dsv3_error err = {0};
    dsv3_lin_plan p;
    CHECK_FAIL(dsv3_linear_plan(&p, NULL, 0, 1, NULL, NULL, NULL, DSV3_LINEAR_WEIGHT_ONLY, -1, NULL, &err),
               DSV3_E_VALUE, &err);
}

/* Bad input reaches every public entry point as a status with a message, never a crash:
 * NULL pointers, zero / negative / huge dimensions (sizes that would overflow), wrong groups,
 * unknown enums, unsupported ISAs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctest.h"
#include "dsv3_dtypes.h"
#include "dsv3_model.h"
#include "dsv3_probe.h"
#include "dsv3_quant.h"

static void core_errors(void)
{
    dsv3_error err = {0};
    dsv3_isa isa;
    size_t sz = 0;
    CHECK(dsv3_fail(NULL, DSV3_E_VALUE, "no error struct %d", 1) == DSV3_E_VALUE, "dsv3_fail(NULL, ...)");
    CHECK(!dsv3_mul_size(SIZE_MAX / 2 + 1, 2, &sz), "dsv3_mul_size misses an overflow");
    CHECK(dsv3_mul_size(0, SIZE_MAX, &sz) && sz == 0, "dsv3_mul_size(0, SIZE_MAX)");
    CHECK_FAIL(dsv3_isa_parse("avx1024", &isa, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_isa_resolve(DSV3_ISA_COUNT, &isa, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_isa_resolve(1 << 30, &isa, &err), DSV3_E_VALUE, &err);
    CHECK_OK(dsv3_isa_resolve(-1, &isa, &err), &err);
    CHECK(isa == dsv3_isa_active(), "resolve(-1) is not the active ISA");
    CHECK_FAIL(dsv3_set_num_threads(0, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_set_num_threads(-3, &err), DSV3_E_VALUE, &err);
    CHECK(dsv3_isa_name((dsv3_isa)-5) != NULL && dsv3_isa_name((dsv3_isa)99) != NULL, "isa name of a bad value");
    void *p = dsv3_alloc(SIZE_MAX - 8);
    CHECK(p == NULL, "dsv3_alloc(SIZE_MAX - 8) returned memory");
    dsv3_free(p);
    dsv3_free(NULL);
}

static void convert_errors(void)
{
    dsv3_error err = {0};
    float f[4] = {1, 2, 3, 4};
    uint16_t b[4];
    CHECK_FAIL(dsv3_convert(DSV3_DTYPE_BF16, b, DSV3_DTYPE_F32, NULL, 4, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_convert(DSV3_DTYPE_BF16, NULL, DSV3_DTYPE_F32, f, 4, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_convert((dsv3_dtype)-1, b, DSV3_DTYPE_F32, f, 4, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_convert(DSV3_DTYPE_BF16, b, DSV3_DTYPE_COUNT, f, 4, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_convert(DSV3_DTYPE_E4M3, b, DSV3_DTYPE_BF16, f, 4, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_convert(DSV3_DTYPE_F32, f, DSV3_DTYPE_F32, b, SIZE_MAX, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_convert(DSV3_DTYPE_BF16, b, DSV3_DTYPE_F32, f, 4, 17, &err), DSV3_E_VALUE, &err);
    CHECK_OK(dsv3_convert(DSV3_DTYPE_BF16, NULL, DSV3_DTYPE_F32, NULL, 0, -1, &err), &err);
}

static void quant_errors(void)
{
    dsv3_error err = {0};
    size_t bytes;
    int64_t sr, sc;
    float w[64] = {0}, s[64], s2;
    uint8_t d[256];
    CHECK_FAIL(dsv3_quant_layout(DSV3_FMT_COUNT, 4, 4, 0, &bytes, &sr, &sc, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quant_layout((dsv3_format)-1, 4, 4, 0, &bytes, &sr, &sc, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quant_layout(DSV3_FMT_F32, 0, 4, 0, &bytes, &sr, &sc, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quant_layout(DSV3_FMT_F32, 4, -4, 0, &bytes, &sr, &sc, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quant_layout(DSV3_FMT_F32, INT64_MAX, INT64_MAX, 0, &bytes, &sr, &sc, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quant_layout(DSV3_FMT_F32, (int64_t)1 << 21, (int64_t)1 << 21, 0, &bytes, &sr, &sc, &err),
               DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quant_layout(DSV3_FMT_INT4, 4, 33, 32, &bytes, &sr, &sc, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quant_layout(DSV3_FMT_INT4, 4, 64, 64, &bytes, &sr, &sc, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quant_layout(DSV3_FMT_INT4, 4, 64, 0, &bytes, &sr, &sc, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quant_layout(DSV3_FMT_NVFP4, 4, 40, 0, &bytes, &sr, &sc, &err), DSV3_E_VALUE, &err);
    CHECK_OK(dsv3_quant_layout(DSV3_FMT_FP8_BLOCK, 129, 130, 0, &bytes, &sr, &sc, &err), &err);
    CHECK(bytes == 129 * 130 && sr == 2 && sc == 2, "fp8_block layout of [129, 130]: %zu bytes, %lld x %lld scales",
          bytes, (long long)sr, (long long)sc);
    CHECK_FAIL(dsv3_quantize(DSV3_FMT_INT8, NULL, 4, 16, 0, 0, d, s, &s2, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quantize(DSV3_FMT_INT8, w, 4, 16, 0, 0, NULL, s, &s2, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quantize(DSV3_FMT_INT8, w, 4, 16, 0, 0, d, NULL, &s2, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_quantize(DSV3_FMT_INT4, w, 4, 16, 16, 0, d, s, &s2, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_dequantize(NULL, w, &err), DSV3_E_VALUE, &err);
    dsv3_format f;
    CHECK_FAIL(dsv3_format_parse("fp16", &f, &err), DSV3_E_VALUE, &err);
    for (int i = 0; i < DSV3_FMT_COUNT; i++) {
        CHECK_OK(dsv3_format_parse(dsv3_formats[i].name, &f, &err), &err);
        CHECK(f == (dsv3_format)i, "format name %s does not parse back", dsv3_formats[i].name);
    }
}

static void linear_errors(void)
{
    dsv3_error err = {0};
    float x[2 * 64], y[2 * 8], wf[8 * 64], sc[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    memset(x, 0, sizeof x);
    memset(wf, 0, sizeof wf);
    const dsv3_weight good = {DSV3_FMT_F32, 8, 64, wf, NULL, 1.0f, 0, 0, NULL, DSV3_ACT_EXACT, 0};
    dsv3_weight w = good;
    CHECK_OK(dsv3_linear(x, 2, &w, NULL, y, -1, &err), &err);
    CHECK_OK(dsv3_linear(NULL, 0, &w, NULL, NULL, -1, &err), &err);
    CHECK_FAIL(dsv3_linear(x, 2, NULL, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_linear(NULL, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_linear(x, -1, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, 9, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_linear_ex(x, 0, 2, &w, NULL, y, (dsv3_linear_mode)7, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_linear_ex(x, 0, 2, &w, NULL, y, DSV3_LINEAR_DYNAMIC, -1, &err), DSV3_E_VALUE, &err);
    w.n = 0;
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    w = good;
    w.k = -64;
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    w = good;
    w.n = w.k = (int64_t)1 << 40;
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    w = good;
    w.fmt = (dsv3_format)42;
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    w = good;
    w.data = NULL;
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    w = good;
    w.fmt = DSV3_FMT_INT8; /* int8 needs a scale */
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    w.scale = sc;
    CHECK_OK(dsv3_linear_ex(x, 0, 2, &w, NULL, y, DSV3_LINEAR_DYNAMIC, -1, &err), &err);
    w.fmt = DSV3_FMT_INT4;
    w.group = 64; /* only 32 or 128 */
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    w.group = 0;
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
    w = good;
    w.fmt = DSV3_FMT_NVFP4;
    w.k = 40; /* not a multiple of 16 */
    w.scale = sc;
    CHECK_FAIL(dsv3_linear(x, 2, &w, NULL, y, -1, &err), DSV3_E_VALUE, &err);
}

/* Huge sizes reach every entry point as a status. Kept apart ("overflow") while the bug it found
 * (linear.c: m * K computed in int64 before any check, UB) is open. */
void test_overflow(void);

/* Huge m: m * k overflows the activation buffers' sizes; must be refused before any allocation. */
static void linear_huge_m(void)
{
    dsv3_error err = {0};
    float x[64] = {0}, y[8], wf[8 * 64] = {0};
    const dsv3_weight w = {DSV3_FMT_F32, 8, 64, wf, NULL, 1.0f, 0, 0, NULL, DSV3_ACT_EXACT, 0};
    const int64_t huge[] = {(int64_t)1 << 58, INT64_MAX / 2, INT64_MAX};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++)
        for (int mode = 0; mode < 2; mode++) {
            dsv3_weight wi = w;
            float sc[8] = {1, 1, 1, 1, 1, 1, 1, 1};
            if (mode) { /* bf16 activations are widened into an m*k f32 buffer */
                wi.fmt = DSV3_FMT_BF16;
                CHECK_FAIL(dsv3_linear_ex(x, 1, huge[i], &wi, NULL, y, DSV3_LINEAR_WEIGHT_ONLY, -1, &err),
                           DSV3_E_VALUE, &err);
            } else { /* the dynamic path allocates m*k bytes for the int8 activations */
                wi.fmt = DSV3_FMT_INT8;
                wi.scale = sc;
                CHECK_FAIL(dsv3_linear_ex(x, 0, huge[i], &wi, NULL, y, DSV3_LINEAR_DYNAMIC, -1, &err), DSV3_E_VALUE,
                           &err);
            }
        }
}

static void sample_errors(void)
{
    dsv3_error err = {0};
    float lo[5] = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f};
    uint64_t rng = 1;
    int64_t tok = -1;
    CHECK_OK(dsv3_sample(lo, 5, 0.0f, 0, 1.0f, &rng, &tok, &err), &err);
    CHECK(tok == 1, "greedy sample picked %lld, want 1 (first maximum)", (long long)tok);
    for (int i = 0; i < 20; i++) {
        CHECK_OK(dsv3_sample(lo, 5, 1.0f, 2, 1.0f, &rng, &tok, &err), &err);
        CHECK(tok == 1 || tok == 3, "top_k=2 sampled %lld", (long long)tok);
    }
    CHECK_FAIL(dsv3_sample(lo, 0, 1.0f, 0, 1.0f, &rng, &tok, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_sample(lo, -4, 1.0f, 0, 1.0f, &rng, &tok, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_sample(lo, 5, 1.0f, 0, 0.0f, &rng, &tok, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_sample(lo, 5, INFINITY, 0, 1.0f, &rng, &tok, &err), DSV3_E_VALUE, &err);
    lo[2] = NAN;
    CHECK_FAIL(dsv3_sample(lo, 5, 1.0f, 0, 1.0f, &rng, &tok, &err), DSV3_E_VALUE, &err);
}

static void moe_errors(void)
{
    dsv3_error err = {0};
    const dsv3_router_spec good = {8, 2, 2, 1, DSV3_SCORE_SIGMOID, DSV3_TOPK_NOAUX_TC, 1, 1.0f, -INFINITY};
    dsv3_router_spec r = good;
    CHECK_OK(dsv3_router_check(&r, &err), &err);
    r.n_experts = 0;
    CHECK_FAIL(dsv3_router_check(&r, &err), DSV3_E_VALUE, &err);
    r = good;
    r.top_k = 9;
    CHECK_FAIL(dsv3_router_check(&r, &err), DSV3_E_VALUE, &err);
    r = good;
    r.n_group = 3;
    CHECK_FAIL(dsv3_router_check(&r, &err), DSV3_E_VALUE, &err);
    r = good;
    r.topk_group = 0;
    CHECK_FAIL(dsv3_router_check(&r, &err), DSV3_E_VALUE, &err);
    r = good;
    r.scoring = (dsv3_score_func)9;
    CHECK_FAIL(dsv3_router_check(&r, &err), DSV3_E_VALUE, &err);
    r = good;
    r.method = (dsv3_topk_method)-1;
    CHECK_FAIL(dsv3_router_check(&r, &err), DSV3_E_VALUE, &err);
    float a[8] = {0}, o[4];
    CHECK_FAIL(dsv3_mla_dots(a, -1, 2, a, 2, 2, 2, o, 2, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_mla_wsum(a, 2, 2, a, 2, -2, 2, o, 2, -1, &err), DSV3_E_VALUE, &err);
}

static void probe_errors(void)
{
    dsv3_error err = {0};
    dsv3_probe_result r;
    CHECK_FAIL(dsv3_probe_read_bw(0, 1, 1, -1, &r, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_probe_read_bw(1 << 16, 0, 1, -1, &r, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_probe_peak((dsv3_peak_kind)7, 100, 1, 1, -1, &r, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_probe_peak(DSV3_PEAK_F32_FMA, -1, 1, 1, -1, &r, &err), DSV3_E_VALUE, &err);
    CHECK_OK(dsv3_probe_peak(DSV3_PEAK_F32_FMA, 1000, 1, 1, 0, &r, &err), &err);
    CHECK_OK(dsv3_probe_read_bw(1 << 16, 1, 1, 0, &r, &err), &err);
}

void test_errors(void)
{
    core_errors();
    convert_errors();
    quant_errors();
    linear_errors();
    sample_errors();
    moe_errors();
    probe_errors();
}

void test_overflow(void) { linear_huge_m(); }

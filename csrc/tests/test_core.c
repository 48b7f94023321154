/* Plain-C test runner of the dsv3 core: dtypes, quantised linear, error paths, the model API.
 * Built and run under AddressSanitizer + UndefinedBehaviorSanitizer by tests/test_c_core.py;
 * exits 0 only when every check passed. Usage: test_core [concern ...] (default: all but overflow,
 * which holds checks of known, reported bugs). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ctest.h"

int ctest_failures, ctest_checks;

void ctest_check(int ok, const char *file, int line, const char *fmt, ...)
{
    ctest_checks++;
    if (ok)
        return;
    if (++ctest_failures <= 50) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "FAIL %s:%d: ", file, line);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
}

uint64_t ctest_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float ctest_uniform(uint64_t *s) { return (float)((double)(ctest_next(s) >> 11) * 0x1p-52 - 1.0); }

void ctest_fill(float *a, int64_t n, float scale, uint64_t *s)
{
    for (int64_t i = 0; i < n; i++)
        a[i] = scale * ctest_uniform(s);
}

int ctest_qweight_random(ctest_qweight *q, dsv3_format fmt, int group, int64_t n, int64_t k, float amp, uint64_t *rng)
{
    dsv3_error err = {0};
    size_t bytes;
    int64_t sr, sc;
    memset(q, 0, sizeof *q);
    if (dsv3_quant_layout(fmt, n, k, group, &bytes, &sr, &sc, &err) != DSV3_OK)
        return 0;
    float *src = malloc((size_t)(n * k) * sizeof(float));
    q->data = malloc(bytes);
    q->scale = malloc((size_t)(sr * sc + 1) * sizeof(float));
    if (!src || !q->data || !q->scale) {
        free(src);
        ctest_qweight_free(q);
        return 0;
    }
    ctest_fill(src, n * k, amp, rng);
    float s2 = 1.0f;
    CHECK_OK(dsv3_quantize(fmt, src, n, k, group, 0, q->data, q->scale, &s2, &err), &err);
    free(src);
    q->w = (dsv3_weight){fmt, n, k, q->data, sr ? q->scale : NULL, s2, group, 0, NULL, DSV3_ACT_EXACT, 0};
    return 1;
}

void ctest_qweight_free(ctest_qweight *q)
{
    free(q->data);
    free(q->scale);
    q->data = q->scale = NULL;
}

int ctest_isas(dsv3_isa out[DSV3_ISA_COUNT])
{
    int n = 0;
    for (int i = 0; i < DSV3_ISA_COUNT; i++)
        if (dsv3_isa_supported((dsv3_isa)i))
            out[n++] = (dsv3_isa)i;
    return n;
}

static const struct {
    const char *name;
    void (*run)(void);
} TESTS[] = {
    {"dtypes", test_dtypes},
    {"linear", test_linear},
    {"linear_plan", test_linear_plan},
    {"errors", test_errors},
    {"model", test_model},
    {"overflow", test_overflow},
    {"indexer", test_indexer},
    {"absorb", test_absorb},
};

int main(int argc, char **argv)
{
    dsv3_error err = {0};
    if (dsv3_init(&err) != DSV3_OK) {
        fprintf(stderr, "dsv3_init failed: %s\n", err.msg);
        return 2;
    }
    dsv3_isa isas[DSV3_ISA_COUNT];
    const int n_isa = ctest_isas(isas);
    printf("dsv3 C core tests: ISAs");
    for (int i = 0; i < n_isa; i++)
        printf(" %s", dsv3_isa_name(isas[i]));
    printf(", %d threads\n", dsv3_num_threads());
    for (size_t t = 0; t < sizeof TESTS / sizeof TESTS[0]; t++) {
        int wanted = argc < 2 && strcmp(TESTS[t].name, "overflow") != 0; /* known failure: run by name */
        for (int a = 1; a < argc; a++)
            wanted |= strcmp(argv[a], TESTS[t].name) == 0;
        if (!wanted)
            continue;
        const int f0 = ctest_failures, c0 = ctest_checks;
        TESTS[t].run();
        printf("%-8s %6d checks, %d failed\n", TESTS[t].name, ctest_checks - c0, ctest_failures - f0);
        fflush(stdout);
    }
    printf("%s: %d checks, %d failed\n", ctest_failures ? "FAILED" : "OK", ctest_checks, ctest_failures);
    return ctest_failures ? 1 : 0;
}

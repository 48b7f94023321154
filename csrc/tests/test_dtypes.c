/* Array conversions (dsv3_convert) on every ISA against the scalar inline functions of
 * dsv3_dtypes.h: every code of the narrow types, and a sweep of f32 bit patterns (every exponent,
 * specials, random bits) into each of them; odd lengths so vector tails run. */
#include <stdlib.h>
#include <string.h>

#include "ctest.h"
#include "dsv3_dtypes.h"

/* f32 inputs: a stride through all 2^32 patterns, specials, values near the formats' edges. */
static float *f32_sweep(size_t *count)
{
    static const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 448.0f, 464.0f, 480.0f, 57344.0f, 61440.0f,
                                     0.001953125f, 0.0009765625f, 0.0029296875f, 6.0f, 5.0f, 0.25f, 0.75f,
                                     1.75f, 2.5f, 3.5f, 1e-40f, 5.877472e-39f, 1.1754942e-38f, 3.4e38f, 1e30f};
    const size_t stride_n = 1u << 16, rand_n = 20001, ns = sizeof specials / sizeof specials[0];
    const size_t n = stride_n + rand_n + 4 * ns + 4;
    float *v = malloc(n * sizeof *v);
    uint64_t rng = 7;
    size_t i = 0;
    if (!v)
        return NULL;
    for (uint32_t j = 0; j < stride_n; j++)
        v[i++] = dsv3_bits_f32(j * 65537u + (j >> 3));
    for (size_t j = 0; j < rand_n; j++)
        v[i++] = dsv3_bits_f32((uint32_t)ctest_next(&rng));
    for (size_t j = 0; j < ns; j++) { /* the value, its negation, and the f32 neighbours */
        v[i++] = specials[j];
        v[i++] = -specials[j];
        v[i++] = dsv3_bits_f32(dsv3_f32_bits(specials[j]) + 1u);
        v[i++] = dsv3_bits_f32(dsv3_f32_bits(specials[j]) - 1u);
    }
    v[i++] = dsv3_bits_f32(0x7f800000u);
    v[i++] = dsv3_bits_f32(0xff800000u);
    v[i++] = dsv3_bits_f32(0x7fc00001u);
    v[i++] = dsv3_bits_f32(0xffa00000u);
    *count = i;
    return v;
}

/* The scalar reference of one element, as uint32 (the code, or f32 bits). */
static uint32_t scalar_from_f32(dsv3_dtype t, float f)
{
    switch (t) {
    case DSV3_DTYPE_BF16: return dsv3_f32_to_bf16(f);
    case DSV3_DTYPE_E4M3: return dsv3_f32_to_e4m3(f);
    case DSV3_DTYPE_E5M2: return dsv3_f32_to_e5m2(f);
    case DSV3_DTYPE_UE8M0: return dsv3_f32_to_ue8m0(f);
    case DSV3_DTYPE_E2M1: return dsv3_f32_to_e2m1(f);
    default: return dsv3_f32_bits(f);
    }
}

static float scalar_to_f32(dsv3_dtype t, uint32_t code)
{
    switch (t) {
    case DSV3_DTYPE_BF16: return dsv3_bf16_to_f32((uint16_t)code);
    case DSV3_DTYPE_E4M3: return dsv3_e4m3_to_f32((uint8_t)code);
    case DSV3_DTYPE_E5M2: return dsv3_e5m2_to_f32((uint8_t)code);
    case DSV3_DTYPE_UE8M0: return dsv3_ue8m0_to_f32((uint8_t)code);
    case DSV3_DTYPE_E2M1: return dsv3_e2m1_to_f32((uint8_t)code);
    default: return dsv3_bits_f32(code);
    }
}

static uint32_t load(dsv3_dtype t, const void *p, size_t i)
{
    switch (dsv3_dtype_size(t)) {
    case 1: return ((const uint8_t *)p)[i];
    case 2: return ((const uint16_t *)p)[i];
    default: return ((const uint32_t *)p)[i];
    }
}

static void store(dsv3_dtype t, void *p, size_t i, uint32_t v)
{
    switch (dsv3_dtype_size(t)) {
    case 1: ((uint8_t *)p)[i] = (uint8_t)v; break;
    case 2: ((uint16_t *)p)[i] = (uint16_t)v; break;
    default: ((uint32_t *)p)[i] = v; break;
    }
}

static void from_f32_all(dsv3_isa isa, const float *src, size_t n)
{
    dsv3_error err = {0};
    void *dst = malloc(n * 4);
    if (!dst)
        return;
    for (int t = DSV3_DTYPE_BF16; t < DSV3_DTYPE_COUNT; t++) {
        for (size_t len = n; len > n - 40; len -= 13) { /* odd lengths: vector tails */
            memset(dst, 0xa5, n * 4);
            CHECK_OK(dsv3_convert((dsv3_dtype)t, dst, DSV3_DTYPE_F32, src, len, (int)isa, &err), &err);
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < len; i++)
                if (load((dsv3_dtype)t, dst, i) != scalar_from_f32((dsv3_dtype)t, src[i]) && !bad++)
                    first = i;
            CHECK(!bad, "%s: f32 -> %s, n=%zu: %zu mismatches, first at %zu: f32 bits 0x%08x -> 0x%x, scalar 0x%x",
                  dsv3_isa_name(isa), dsv3_dtype_name((dsv3_dtype)t), len, bad, first, dsv3_f32_bits(src[first]),
                  load((dsv3_dtype)t, dst, first), scalar_from_f32((dsv3_dtype)t, src[first]));
            /* the byte after the last element is untouched */
            const size_t sz = dsv3_dtype_size((dsv3_dtype)t);
            CHECK(((unsigned char *)dst)[len * sz] == 0xa5 || len == n, "%s: f32 -> %s wrote past n=%zu",
                  dsv3_isa_name(isa), dsv3_dtype_name((dsv3_dtype)t), len);
        }
    }
    free(dst);
}

/* Every code of a narrow type (bf16: all 65536) to f32 and, for e4m3, to bf16. */
static void to_f32_all(dsv3_isa isa)
{
    dsv3_error err = {0};
    const size_t n = 65536 + 3;
    uint32_t *src = malloc(n * 4), *out = malloc(n * 4);
    if (!src || !out)
        goto done;
    for (int t = DSV3_DTYPE_BF16; t < DSV3_DTYPE_COUNT; t++) {
        const dsv3_dtype dt = (dsv3_dtype)t;
        const uint32_t codes = dt == DSV3_DTYPE_BF16 ? 65536u : (dt == DSV3_DTYPE_E2M1 ? 16u : 256u);
        for (size_t i = 0; i < n; i++)
            store(dt, src, i, (uint32_t)(i % codes));
        CHECK_OK(dsv3_convert(DSV3_DTYPE_F32, out, dt, src, n, (int)isa, &err), &err);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < n; i++)
            if (out[i] != dsv3_f32_bits(scalar_to_f32(dt, load(dt, src, i))) && !bad++)
                first = i;
        CHECK(!bad, "%s: %s -> f32: %zu mismatches, first code 0x%x -> 0x%08x, scalar 0x%08x", dsv3_isa_name(isa),
              dsv3_dtype_name(dt), bad, load(dt, src, first), out[first],
              dsv3_f32_bits(scalar_to_f32(dt, load(dt, src, first))));
        if (dt == DSV3_DTYPE_E4M3) {
            uint16_t *b = (uint16_t *)out;
            CHECK_OK(dsv3_convert(DSV3_DTYPE_BF16, b, dt, src, 999, (int)isa, &err), &err);
            bad = 0;
            for (size_t i = 0; i < 999; i++)
                if (b[i] != dsv3_f32_to_bf16(dsv3_e4m3_to_f32(((uint8_t *)src)[i])) && !bad++)
                    first = i;
            CHECK(!bad, "%s: e4m3 -> bf16: %zu mismatches, first code 0x%x -> 0x%04x", dsv3_isa_name(isa), bad,
                  ((uint8_t *)src)[first], b[first]);
        }
        /* same type: a copy */
        memset(out, 0, n * 4);
        CHECK_OK(dsv3_convert(dt, out, dt, src, 1001, (int)isa, &err), &err);
        CHECK(memcmp(out, src, 1001 * dsv3_dtype_size(dt)) == 0, "%s: %s -> %s is not a copy", dsv3_isa_name(isa),
              dsv3_dtype_name(dt), dsv3_dtype_name(dt));
    }
done:
    free(src);
    free(out);
}

/* Above one parallel chunk (2^16 elements): the threaded split agrees with the scalar path. */
static void large_threaded(dsv3_isa isa)
{
    dsv3_error err = {0};
    const size_t n = (1u << 17) + 5;
    float *src = malloc(n * 4);
    uint16_t *a = malloc(n * 2), *b = malloc(n * 2);
    uint64_t rng = 11;
    if (src && a && b) {
        ctest_fill(src, (int64_t)n, 100.0f, &rng);
        CHECK_OK(dsv3_convert(DSV3_DTYPE_BF16, a, DSV3_DTYPE_F32, src, n, (int)isa, &err), &err);
        for (size_t i = 0; i < n; i++)
            b[i] = dsv3_f32_to_bf16(src[i]);
        CHECK(memcmp(a, b, n * 2) == 0, "%s: f32 -> bf16 over %zu elements differs from scalar", dsv3_isa_name(isa), n);
    }
    free(src);
    free(a);
    free(b);
}

static void names(void)
{
    dsv3_error err = {0};
    for (int t = 0; t < DSV3_DTYPE_COUNT; t++) {
        dsv3_dtype back = DSV3_DTYPE_COUNT;
        CHECK_OK(dsv3_dtype_parse(dsv3_dtype_name((dsv3_dtype)t), &back, &err), &err);
        CHECK(back == (dsv3_dtype)t, "dtype name %s does not parse back", dsv3_dtype_name((dsv3_dtype)t));
    }
    dsv3_dtype d;
    CHECK_FAIL(dsv3_dtype_parse("float16", &d, &err), DSV3_E_VALUE, &err);
    CHECK(dsv3_dtype_size((dsv3_dtype)99) == 0, "size of an invalid dtype must be 0");
}

void test_dtypes(void)
{
    dsv3_isa isas[DSV3_ISA_COUNT];
    const int n_isa = ctest_isas(isas);
    size_t n = 0;
    float *sweep = f32_sweep(&n);
    CHECK(sweep != NULL, "out of memory");
    for (int i = 0; i < n_isa && sweep; i++) {
        from_f32_all(isas[i], sweep, n);
        to_f32_all(isas[i]);
        large_threaded(isas[i]);
    }
    free(sweep);
    names();
}

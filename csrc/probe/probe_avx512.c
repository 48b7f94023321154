/* AVX-512 probe kernels: 64-byte loads for bandwidth; vfmadd231ps zmm (f32), vdpbf16ps
 * (AVX512_BF16) and vpdpbusd (AVX512_VNNI) for the peaks, DSV3_PROBE_CHAINS zmm accumulators. */
#include "probe_kernels.h"

#include <immintrin.h>
#include <string.h>

static uint64_t read_sum_avx512(const uint64_t *p, size_t n)
{
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_add_epi64(s0, _mm512_load_si512((const void *)(p + i)));
        s1 = _mm512_add_epi64(s1, _mm512_load_si512((const void *)(p + i + 8)));
        s2 = _mm512_add_epi64(s2, _mm512_load_si512((const void *)(p + i + 16)));
        s3 = _mm512_add_epi64(s3, _mm512_load_si512((const void *)(p + i + 24)));
    }
    uint64_t s = (uint64_t)_mm512_reduce_add_epi64(
        _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
    for (; i < n; i++)
        s += p[i];
    return s;
}

/* mean over the 16 lanes (all equal) */
static double lane_f32(__m512 v)
{
    float t[16];
    memcpy(t, &v, sizeof t);
    double s = 0.0;
    for (int i = 0; i < 16; i++)
        s += t[i];
    return s / 16.0;
}

static double lane_i32(__m512i v)
{
    int32_t t[16];
    memcpy(t, &v, sizeof t);
    int64_t s = 0;
    for (int i = 0; i < 16; i++)
        s += t[i];
    return (double)s / 16.0;
}

#define SUM12(f)                                                                                   \
    (f(x0) + f(x1) + f(x2) + f(x3) + f(x4) + f(x5) + f(x6) + f(x7) + f(x8) + f(x9) + f(x10) + f(x11))
#define BODY12(op)                                                                                 \
    do {                                                                                           \
        op(x0); op(x1); op(x2); op(x3); op(x4); op(x5);                                            \
        op(x6); op(x7); op(x8); op(x9); op(x10); op(x11);                                          \
    } while (0)

static double f32_fma_avx512(int64_t iters)
{
    const __m512 a = _mm512_set1_ps(DSV3_PROBE_F32_A), b = _mm512_set1_ps(DSV3_PROBE_F32_B);
#define INIT(j) _mm512_set1_ps((j) * DSV3_PROBE_F32_X0)
    __m512 x0 = INIT(0), x1 = INIT(1), x2 = INIT(2), x3 = INIT(3), x4 = INIT(4), x5 = INIT(5);
    __m512 x6 = INIT(6), x7 = INIT(7), x8 = INIT(8), x9 = INIT(9), x10 = INIT(10), x11 = INIT(11);
#undef INIT
#define FMA(x) x = _mm512_fmadd_ps(x, a, b)
    for (int64_t it = 0; it < iters; it++)
        BODY12(FMA);
#undef FMA
    return SUM12(lane_f32);
}

static double bf16_dot_avx512(int64_t iters)
{
    const __m512 v = _mm512_set1_ps(DSV3_PROBE_BF16);
    const __m512bh a = _mm512_cvtne2ps_pbh(v, v), b = a;
#define INIT(j) _mm512_set1_ps((float)(j))
    __m512 x0 = INIT(0), x1 = INIT(1), x2 = INIT(2), x3 = INIT(3), x4 = INIT(4), x5 = INIT(5);
    __m512 x6 = INIT(6), x7 = INIT(7), x8 = INIT(8), x9 = INIT(9), x10 = INIT(10), x11 = INIT(11);
#undef INIT
#define DOT(x) x = _mm512_dpbf16_ps(x, a, b)
    for (int64_t it = 0; it < iters; it++)
        BODY12(DOT);
#undef DOT
    return SUM12(lane_f32);
}

static double int8_dot_avx512(int64_t iters)
{
    const __m512i u = _mm512_set1_epi8(DSV3_PROBE_U8), s = _mm512_set1_epi8(DSV3_PROBE_S8);
#define INIT(j) _mm512_set1_epi32(j)
    __m512i x0 = INIT(0), x1 = INIT(1), x2 = INIT(2), x3 = INIT(3), x4 = INIT(4), x5 = INIT(5);
    __m512i x6 = INIT(6), x7 = INIT(7), x8 = INIT(8), x9 = INIT(9), x10 = INIT(10), x11 = INIT(11);
#undef INIT
#define DOT(x) x = _mm512_dpbusd_epi32(x, u, s)
    for (int64_t it = 0; it < iters; it++)
        BODY12(DOT);
#undef DOT
    return SUM12(lane_i32);
}

const dsv3_probe_kernels dsv3_probe_avx512 = {
    read_sum_avx512,
    {f32_fma_avx512, bf16_dot_avx512, int8_dot_avx512},
    {2.0 * 16 * DSV3_PROBE_CHAINS, 4.0 * 16 * DSV3_PROBE_CHAINS, 8.0 * 16 * DSV3_PROBE_CHAINS},
};

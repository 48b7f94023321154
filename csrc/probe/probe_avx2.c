/* AVX2 probe kernels: 32-byte loads for bandwidth, vfmadd231ps ymm for the f32 peak and the
 * pre-VNNI int8 sequence (vpmaddubsw + vpmaddwd + vpaddd) for the int8 peak. AVX2 has no bf16
 * dot instruction: that entry is NULL. */
#include "probe_kernels.h"

#include <immintrin.h>
#include <string.h>

static uint64_t hsum_epi64(__m256i v)
{
    uint64_t t[4];
    memcpy(t, &v, sizeof t);
    return t[0] + t[1] + t[2] + t[3];
}

static uint64_t read_sum_avx2(const uint64_t *p, size_t n)
{
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_add_epi64(s0, _mm256_load_si256((const __m256i *)(p + i)));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256((const __m256i *)(p + i + 4)));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256((const __m256i *)(p + i + 8)));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256((const __m256i *)(p + i + 12)));
    }
    uint64_t s = hsum_epi64(_mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
    for (; i < n; i++)
        s += p[i];
    return s;
}

/* mean over the 8 lanes (all equal) */
static double lane_f32(__m256 v)
{
    float t[8];
    memcpy(t, &v, sizeof t);
    double s = 0.0;
    for (int i = 0; i < 8; i++)
        s += t[i];
    return s / 8.0;
}

static double f32_fma_avx2(int64_t iters)
{
    const __m256 a = _mm256_set1_ps(DSV3_PROBE_F32_A), b = _mm256_set1_ps(DSV3_PROBE_F32_B);
    __m256 x0 = _mm256_set1_ps(0 * DSV3_PROBE_F32_X0), x1 = _mm256_set1_ps(1 * DSV3_PROBE_F32_X0);
    __m256 x2 = _mm256_set1_ps(2 * DSV3_PROBE_F32_X0), x3 = _mm256_set1_ps(3 * DSV3_PROBE_F32_X0);
    __m256 x4 = _mm256_set1_ps(4 * DSV3_PROBE_F32_X0), x5 = _mm256_set1_ps(5 * DSV3_PROBE_F32_X0);
    __m256 x6 = _mm256_set1_ps(6 * DSV3_PROBE_F32_X0), x7 = _mm256_set1_ps(7 * DSV3_PROBE_F32_X0);
    __m256 x8 = _mm256_set1_ps(8 * DSV3_PROBE_F32_X0), x9 = _mm256_set1_ps(9 * DSV3_PROBE_F32_X0);
    __m256 x10 = _mm256_set1_ps(10 * DSV3_PROBE_F32_X0), x11 = _mm256_set1_ps(11 * DSV3_PROBE_F32_X0);
    for (int64_t it = 0; it < iters; it++) {
        x0 = _mm256_fmadd_ps(x0, a, b); x1 = _mm256_fmadd_ps(x1, a, b);
        x2 = _mm256_fmadd_ps(x2, a, b); x3 = _mm256_fmadd_ps(x3, a, b);
        x4 = _mm256_fmadd_ps(x4, a, b); x5 = _mm256_fmadd_ps(x5, a, b);
        x6 = _mm256_fmadd_ps(x6, a, b); x7 = _mm256_fmadd_ps(x7, a, b);
        x8 = _mm256_fmadd_ps(x8, a, b); x9 = _mm256_fmadd_ps(x9, a, b);
        x10 = _mm256_fmadd_ps(x10, a, b); x11 = _mm256_fmadd_ps(x11, a, b);
    }
    return lane_f32(x0) + lane_f32(x1) + lane_f32(x2) + lane_f32(x3) + lane_f32(x4) + lane_f32(x5) +
           lane_f32(x6) + lane_f32(x7) + lane_f32(x8) + lane_f32(x9) + lane_f32(x10) + lane_f32(x11);
}

static double lane_i32(__m256i v)
{
    int32_t t[8];
    memcpy(t, &v, sizeof t);
    int64_t s = 0;
    for (int i = 0; i < 8; i++)
        s += t[i];
    return (double)s / 8.0;
}

/* u8*s8 quad dot the AVX2 way; the operand is laundered per chain so the multiplies are not
 * hoisted out of the loop (they do not depend on the accumulator). */
#define QUAD(x)                                                                                    \
    do {                                                                                           \
        __m256i t_ = u;                                                                            \
        __asm__ volatile("" : "+x"(t_));                                                                    \
        x = _mm256_add_epi32(x, _mm256_madd_epi16(_mm256_maddubs_epi16(t_, s), ones));             \
    } while (0)

static double int8_dot_avx2(int64_t iters)
{
    const __m256i u = _mm256_set1_epi8(DSV3_PROBE_U8), s = _mm256_set1_epi8(DSV3_PROBE_S8);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i x0 = _mm256_set1_epi32(0), x1 = _mm256_set1_epi32(1), x2 = _mm256_set1_epi32(2);
    __m256i x3 = _mm256_set1_epi32(3), x4 = _mm256_set1_epi32(4), x5 = _mm256_set1_epi32(5);
    __m256i x6 = _mm256_set1_epi32(6), x7 = _mm256_set1_epi32(7), x8 = _mm256_set1_epi32(8);
    __m256i x9 = _mm256_set1_epi32(9), x10 = _mm256_set1_epi32(10), x11 = _mm256_set1_epi32(11);
    for (int64_t it = 0; it < iters; it++) {
        QUAD(x0); QUAD(x1); QUAD(x2); QUAD(x3); QUAD(x4); QUAD(x5);
        QUAD(x6); QUAD(x7); QUAD(x8); QUAD(x9); QUAD(x10); QUAD(x11);
    }
    return lane_i32(x0) + lane_i32(x1) + lane_i32(x2) + lane_i32(x3) + lane_i32(x4) + lane_i32(x5) +
           lane_i32(x6) + lane_i32(x7) + lane_i32(x8) + lane_i32(x9) + lane_i32(x10) + lane_i32(x11);
}
#undef QUAD

const dsv3_probe_kernels dsv3_probe_avx2 = {
    read_sum_avx2,
    {f32_fma_avx2, NULL, int8_dot_avx2},
    {2.0 * 8 * DSV3_PROBE_CHAINS, 0.0, 8.0 * 8 * DSV3_PROBE_CHAINS},
};

/* AVX2 twin of the Q8 block quantiser (act_q8.c quant_block, full blocks of 32): the same rule with the
 * same bits, d = amax / 127 (f32 division; NaN when any x is NaN), q = round-half-to-even(x / d) (the f32
 * division, then vcvtps2dq in the default rounding mode) clamped to [-127, 127]; d = 0 or non-finite
 * gives zero codes. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "linear/act_q8.h"

float dsv3_act_q8_block32_avx2(const float *x, int8_t *q)
{
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4], amax = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        const __m256 a = _mm256_and_ps(v[i], absm);
        amax = _mm256_max_ps(amax, a);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float d = _mm256_movemask_ps(nan) ? NAN : _mm_cvtss_f32(m) / 127.0f;
    if (!(d > 0.0f && d <= 3.0e38f)) { /* zero block, or non-finite input (d NaN / inf: output NaN) */
        memset(q, 0, 32);
        return d;
    }
    const __m256 dv = _mm256_set1_ps(d);
    __m256i c[4];
    for (int i = 0; i < 4; i++)
        c[i] = _mm256_cvtps_epi32(_mm256_div_ps(v[i], dv));
    /* packs work within 128-bit halves: bytes come out as columns [0-3 8-11 16-19 24-27 | 4-7 12-15 ...] */
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    const __m256i r = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, _mm256_max_epi8(r, _mm256_set1_epi8(-127)));
    return d;
}

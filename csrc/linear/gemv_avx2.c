/* AVX2 small-M kernels: 8 codes decoded per step in registers, f32 FMA (see gemv_template.h);
 * dynamic int8 with exact int16 x int16 -> int32 pair sums (vpmaddwd). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define ISA avx2
#define V __m256
#define VL 8
#define V_ZERO() _mm256_setzero_ps()
#define V_LOADU(p) _mm256_loadu_ps(p)
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm256_add_ps(a, b)
#define V_MUL(a, b) _mm256_mul_ps(a, b)
#define V_STOREU(p, v) _mm256_storeu_ps(p, v)
#define V_SET1(s) _mm256_set1_ps(s)
#define V_REDUCE(v) reduce8(v)

static inline __attribute__((always_inline)) float reduce8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#include "linear/decode_avx2.h"
#include "linear/gemv_template.h"

void dsv3_dyn_int8_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, N = w->n, kv = K / 16 * 16;
    const float *sw = (const float *)w->scale;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *wr = (const int8_t *)w->data + n * K;
        for (int64_t m = 0; m < a->m; m++) {
            const int8_t *xr = a->xq + m * K;
            __m256i acc = _mm256_setzero_si256();
            for (int64_t k = 0; k < kv; k += 16) {
                const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wr + k)));
                const __m256i xv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(xr + k)));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv));
            }
            __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
            int32_t dot = _mm_cvtsi128_si32(s);
            for (int64_t k = kv; k < K; k++)
                dot += (int32_t)xr[k] * (int32_t)wr[k];
            a->y[m * N + n] = ((float)dot * a->xs_tok[m]) * sw[n] + (a->bias ? a->bias[n] : 0.0f);
        }
    }
}

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

/* 4 bytes -> 8 nibbles (low first) as epi32 */
static inline __attribute__((always_inline)) __m256i nibbles8(const uint8_t *p)
{
    int32_t raw;
    memcpy(&raw, p, 4);
    const __m128i b = _mm_cvtsi32_si128(raw), m = _mm_set1_epi8(15);
    const __m128i il = _mm_unpacklo_epi8(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
    return _mm256_cvtepu8_epi32(il);
}

static inline __attribute__((always_inline)) __m256 dec_e2m1(const uint8_t *p)
{
    const __m256i idx = nibbles8(p);
    const __m256 mag = _mm256_permutevar8x32_ps(_mm256_setr_ps(0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f), idx);
    const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(idx, 28), _mm256_set1_epi32((int)0x80000000u));
    return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
}

static inline __attribute__((always_inline)) __m256 dec_int4(const uint8_t *p)
{
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(nibbles8(p), 28), 28));
}

static inline __attribute__((always_inline)) __m256 dec_e4m3(const uint8_t *p)
{
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    const __m256i mag = _mm256_and_si256(_mm256_slli_epi32(v, 20), _mm256_set1_epi32(0x07f00000));
    const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(v, 24), _mm256_set1_epi32((int)0x80000000u));
    return _mm256_mul_ps(_mm256_castsi256_ps(_mm256_or_si256(mag, sign)), _mm256_set1_ps(0x1p120f));
}

#define DEC(f, w, row, k)                                                                           \
    ((f) == DSV3_FMT_F32    ? _mm256_loadu_ps((const float *)(row) + (k))                          \
     : (f) == DSV3_FMT_BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(                               \
                                  _mm256_cvtepu16_epi32(_mm_loadu_si128(                            \
                                      (const __m128i *)((const uint16_t *)(row) + (k)))), 16))      \
     : (f) == DSV3_FMT_FP8_BLOCK ? dec_e4m3((row) + (k))                                            \
     : (f) == DSV3_FMT_NVFP4     ? dec_e2m1((row) + ((size_t)(k) >> 1))                                        \
     : (f) == DSV3_FMT_INT8 ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(                              \
                                  _mm_loadl_epi64((const __m128i *)((row) + (k)))))                 \
                            : dec_int4((row) + ((size_t)(k) >> 1)))

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

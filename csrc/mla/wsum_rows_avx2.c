/* AVX2 weighted sums of weight rows in their stored format: the vocabulary of wsum_rows_template.h
 * (vectors of 8 columns, 4-bit blocks of 16 columns, tiles of 2 p rows). */
#include <immintrin.h>

#include "linear/decode_avx2.h"

#define AI static inline __attribute__((always_inline))
#define V __m256
#define VI __m256i
#define VL 8
#define V_ZERO() _mm256_setzero_ps()
#define V_SET1(s) _mm256_set1_ps(s)
#define V_MUL(a, b) _mm256_mul_ps(a, b)
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define V_STOREU(p, v) _mm256_storeu_ps(p, v)
#define V_HALVES(a, b) _mm256_set_m128(_mm_set1_ps(b), _mm_set1_ps(a))
#define NIB_LOAD(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p)))
#define NIB_LO(v) _mm256_and_si256(v, _mm256_set1_epi32(15))
#define NIB_HI(v) _mm256_srli_epi32(v, 4)
#define TI 2
#define NB_MAX 2
#define NB_WIDE(ni) 2
#define WSUM_ROWS_NAME dsv3_wsum_rows_avx2

/* A nibble's value: int4's two's complement from the float trick (0x4B000000 | (u ^ 8)) - (2^23 + 8) =
 * u ^ 8 - 8, exact; e2m1 from the 8-entry magnitude table + sign. */
AI __m256 nib_value(__m256i u, const dsv3_format f)
{
    if (f == DSV3_FMT_NVFP4) {
        const __m256 mag = _mm256_permutevar8x32_ps(_mm256_setr_ps(0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f), u);
        const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(u, 28), _mm256_set1_epi32((int)0x80000000u));
        return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
    }
    const __m256i b = _mm256_xor_si256(u, _mm256_set1_epi32(0x4B000008));
    return _mm256_sub_ps(_mm256_castsi256_ps(b), _mm256_set1_ps(8388616.0f));
}

/* 16 outputs from the even / odd column accumulators of one block */
AI void STORE_EO(float *out, __m256 e, __m256 o)
{
    const __m256 l = _mm256_unpacklo_ps(e, o), h = _mm256_unpackhi_ps(e, o);
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(l, h, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(l, h, 0x31));
}

#include "mla/wsum_rows_template.h"

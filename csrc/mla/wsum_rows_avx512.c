/* AVX-512 weighted sums of weight rows in their stored format: the vocabulary of wsum_rows_template.h
 * (vectors of 16 columns, 4-bit blocks of 32 columns, tiles of 4 p rows; 4-bit tiles of 1-2 p rows take 4
 * blocks, of 3-4 p rows 2: 8 accumulators per pair of p rows). */
#include <immintrin.h>

#include "linear/decode_avx512.h"

#define AI static inline __attribute__((always_inline))
#define V __m512
#define VI __m512i
#define VL 16
#define V_ZERO() _mm512_setzero_ps()
#define V_SET1(s) _mm512_set1_ps(s)
#define V_MUL(a, b) _mm512_mul_ps(a, b)
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define V_STOREU(p, v) _mm512_storeu_ps(p, v)
#define V_HALVES(a, b) _mm512_mask_mov_ps(_mm512_set1_ps(a), 0xFF00, _mm512_set1_ps(b))
#define NIB_LOAD(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define NIB_LO(v) _mm512_and_si512(v, _mm512_set1_epi32(15))
#define NIB_HI(v) _mm512_srli_epi32(v, 4)
#define TI 4
#define NB_MAX 4
#define NB_WIDE(ni) ((ni) <= 2 ? 4 : 2)
#define WSUM_ROWS_NAME dsv3_wsum_rows_avx512

/* A nibble's value: int4's two's complement from the float trick (0x4B000000 | (u ^ 8)) - (2^23 + 8) =
 * u ^ 8 - 8, exact; e2m1 from the table. */
AI __m512 nib_value(__m512i u, const dsv3_format f)
{
    if (f == DSV3_FMT_NVFP4)
        return _mm512_permutexvar_ps(u, LUT_E2M1);
    const __m512i b = _mm512_xor_si512(u, _mm512_set1_epi32(0x4B000008));
    return _mm512_sub_ps(_mm512_castsi512_ps(b), _mm512_set1_ps(8388616.0f));
}

/* 32 outputs from the even / odd column accumulators of one block */
AI void STORE_EO(float *out, __m512 e, __m512 o)
{
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(out, _mm512_permutex2var_ps(e, lo, o));
    _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(e, hi, o));
}

#include "mla/wsum_rows_template.h"

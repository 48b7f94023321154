/* AVX-512 in-register decoders: DEC(fmt, w, row, k) -> 16 unscaled codes of row `row` at column k
 * as f32 (exact). Shared by the small-M (gemv) and large-M (gemm) kernels. Include only from
 * *_avx512.c files. */
#ifndef DSV3_DECODE_AVX512_H
#define DSV3_DECODE_AVX512_H

#include <immintrin.h>
#include <stdint.h>

#include "dsv3_linear.h"

/* 8 bytes -> 16 nibbles, element 2i = low nibble of byte i: duplicate each byte into two lanes,
 * shift odd lanes right by 4; vpermps reads only index bits [3:0], so no mask is needed. */
static inline __attribute__((always_inline)) __m512 dec_nibbles(const uint8_t *p, __m512 lut)
{
    const __m128i b = _mm_loadl_epi64((const __m128i *)p);
    const __m512i v = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
    const __m512i idx = _mm512_srlv_epi32(v, _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4));
    return _mm512_permutexvar_ps(idx, lut);
}

/* int4: the same byte duplication, then place each nibble in bits 28..31 (sllv by 28 / 24) and
 * sign-extend with an arithmetic shift: no table lookup (one cross-lane shuffle per 16 codes). */
static inline __attribute__((always_inline)) __m512i nibbles_top(const uint8_t *p)
{
    const __m128i b = _mm_loadl_epi64((const __m128i *)p);
    const __m512i v = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
    return _mm512_sllv_epi32(v, _mm512_setr_epi32(28, 24, 28, 24, 28, 24, 28, 24, 28, 24, 28, 24, 28, 24, 28, 24));
}

static inline __attribute__((always_inline)) __m512 dec_int4(const uint8_t *p)
{
    return _mm512_cvtepi32_ps(_mm512_srai_epi32(nibbles_top(p), 28));
}

/* Raw decoder for the scaled path: e4m3 code * 2^-120 with exponent/mantissa moved under the f32
 * fields by shifts only; the caller multiplies by scale * 2^120 (RAW_SCALE), exact, normal results.
 * (Subnormal e4m3 codes become f32 denormal inputs: rare in real weights. Not used for e2m1, whose
 * frequent code 0.5 would be a denormal on every multiply.) */
static inline __attribute__((always_inline)) __m512 dec_e4m3_raw(const uint8_t *p) /* code * 2^-120 */
{
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    __m512i mag = _mm512_and_si512(_mm512_slli_epi32(v, 20), _mm512_set1_epi32(0x07f00000));
    /* NaN codes S.1111.111 would land on 480 * 2^-120: make them the quiet NaN (kept by the multiply) */
    mag = _mm512_mask_mov_epi32(mag, _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x07f00000)),
                                _mm512_set1_epi32(0x7fc00000));
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_slli_epi32(v, 24), mag,
                                                         _mm512_set1_epi32((int)0x80000000u), 0xE4));
}

/* Exact e4m3fn -> f32 (subnormals included; NaN codes give sign | 0x7fc00000 as dsv3_e4m3_to_f32). */
static inline __attribute__((always_inline)) __m512 dec_e4m3(const uint8_t *p)
{
    return _mm512_mul_ps(dec_e4m3_raw(p), _mm512_set1_ps(0x1p120f));
}

#define DECR(f, w, row, k)                                                                          \
    ((f) == DSV3_FMT_FP8_BLOCK ? dec_e4m3_raw((row) + (k)) : DEC(f, w, row, k))
#define RAW_SCALE(f) ((f) == DSV3_FMT_FP8_BLOCK ? 0x1p120f : 1.0f)

#define LUT_E2M1 _mm512_setr_ps(0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f)
#define LUT_INT4 _mm512_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, -8.f, -7.f, -6.f, -5.f, -4.f, -3.f, -2.f, -1.f)

#define DEC(f, w, row, k)                                                                           \
    ((f) == DSV3_FMT_F32    ? _mm512_loadu_ps((const float *)(row) + (k))                          \
     : (f) == DSV3_FMT_BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(                               \
                                  _mm512_cvtepu16_epi32(_mm256_loadu_si256(                         \
                                      (const __m256i *)((const uint16_t *)(row) + (k)))), 16))      \
     : (f) == DSV3_FMT_FP8_BLOCK ? dec_e4m3((row) + (k))                                            \
     : (f) == DSV3_FMT_NVFP4     ? dec_nibbles((row) + ((size_t)(k) >> 1), LUT_E2M1)                           \
     : (f) == DSV3_FMT_INT8 ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(                              \
                                  _mm_loadu_si128((const __m128i *)((row) + (k)))))                 \
                            : dec_int4((row) + ((size_t)(k) >> 1)))

#endif

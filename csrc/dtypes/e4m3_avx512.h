/* Exact e4m3fn decoders for AVX-512 kernels (include only from *_avx512.c files).
 *
 *  - dsv3_e4m3x64_to_bf16: 64 codes -> 64 bf16 with two VBMI byte permutes (vpermi2b looks up the
 *    high and low byte of the bf16 value of |code| in 128-entry tables) plus the sign bit. Every
 *    e4m3fn value, subnormals included, is exact in bf16 (NaN becomes the quiet NaN 0x7fc0).
 * It equals dsv3_e4m3_to_f32 bit for bit (bf16 widened by << 16). */
#ifndef DSV3_E4M3_AVX512_H
#define DSV3_E4M3_AVX512_H

#include <immintrin.h>

#include "dsv3_dtypes.h"

typedef struct {
    __m512i lo0, lo1, hi0, hi1; /* low / high bytes of bf16(e4m3 code 0..63), (64..127) */
} dsv3_e4m3_bf16_lut;

/* Fill the tables from the scalar reference (a few hundred cycles: call once per kernel call). */
static inline void dsv3_e4m3_bf16_lut_init(dsv3_e4m3_bf16_lut *t)
{
    uint8_t lo[128], hi[128];
    for (int c = 0; c < 128; c++) {
        const uint32_t bits = dsv3_f32_bits(dsv3_e4m3_to_f32((uint8_t)c));
        lo[c] = (uint8_t)(bits >> 16);
        hi[c] = (uint8_t)(bits >> 24);
    }
    t->lo0 = _mm512_loadu_si512((const void *)lo);
    t->lo1 = _mm512_loadu_si512((const void *)(lo + 64));
    t->hi0 = _mm512_loadu_si512((const void *)hi);
    t->hi1 = _mm512_loadu_si512((const void *)(hi + 64));
}

/* codes: 64 e4m3 bytes. *w0 receives bf16 of codes 0..31, *w1 of codes 32..63, in order. */
static inline void dsv3_e4m3x64_to_bf16(const dsv3_e4m3_bf16_lut *t, __m512i codes, __m512i *w0, __m512i *w1)
{
    /* vpermi2b uses the low 7 bits of each index: the sign bit is ignored by the lookup */
    const __m512i lo = _mm512_permutex2var_epi8(t->lo0, codes, t->lo1);
    __m512i hi = _mm512_permutex2var_epi8(t->hi0, codes, t->hi1);
    hi = _mm512_or_si512(hi, _mm512_and_si512(codes, _mm512_set1_epi8((char)0x80)));
    /* unpack interleaves within 128-bit lanes; the qword permutes restore element order */
    const __m512i a = _mm512_unpacklo_epi8(lo, hi), b = _mm512_unpackhi_epi8(lo, hi);
    *w0 = _mm512_permutex2var_epi64(a, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), b);
    *w1 = _mm512_permutex2var_epi64(a, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), b);
}

#endif

/* AVX2 in-register decoders: DEC(fmt, w, row, k) -> 8 unscaled codes of row `row` at column k as
 * f32 (exact, equal to the format table's scalar code_row bit for bit, e4m3 NaN codes included).
 * Shared by the small-M (gemv_avx2.c) and large-M (gemm_avx2.c) kernels. Include only from
 * *_avx2.c files. */
#ifndef DSV3_DECODE_AVX2_H
#define DSV3_DECODE_AVX2_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "dsv3_linear.h"

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

/* e4m3fn: exponent/mantissa moved under the f32 fields, times 2^(127-7) (exact, subnormals
 * included). The NaN codes S.1111.111 would land on 480: their magnitude bits become the quiet NaN
 * 0x7fc00000 first (0x07f00000 ^ 0x78300000), which the multiply passes through unchanged, so the
 * result is sign | 0x7fc00000 exactly as dsv3_e4m3_to_f32 gives. */
static inline __attribute__((always_inline)) __m256i e4m3_bits_raw(__m256i v) /* code * 2^-120 as f32 bits */
{
    __m256i mag = _mm256_and_si256(_mm256_slli_epi32(v, 20), _mm256_set1_epi32(0x07f00000));
    const __m256i nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x07f00000));
    mag = _mm256_xor_si256(mag, _mm256_and_si256(nan, _mm256_set1_epi32(0x78300000)));
    const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(v, 24), _mm256_set1_epi32((int)0x80000000u));
    return _mm256_or_si256(mag, sign);
}

static inline __attribute__((always_inline)) __m256 dec_e4m3(const uint8_t *p)
{
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return _mm256_mul_ps(_mm256_castsi256_ps(e4m3_bits_raw(v)), _mm256_set1_ps(0x1p120f));
}

/* ---- 16 codes per call, for the small-M hot loops (DEC2 / DEC2R in gemv_template.h) ---- */

/* 16 e4m3 codes -> code * 2^-120 (RAW_SCALE folds 2^120 into the group scale): in 16-bit lanes the
 * code becomes the bf16 sign | exponent/mantissa bits (shift left 8, arithmetic shift right 4,
 * mask), NaN codes become the quiet NaN 0x7fc0 (0x07f0 ^ 0x7830), then bf16 -> f32 by interleaving
 * with zero. The dword shuffle first puts codes 0-3,8-11 in the low lane and 4-7,12-15 in the high
 * lane, so the in-lane interleaves return codes 0-7 and 8-15 in order. 12 instructions per 16 codes
 * (the 8-wide decoder: 2 x 11). Subnormal codes become f32 denormals (exact; rare in weights). */
static inline __attribute__((always_inline)) void dec16_e4m3_raw(const uint8_t *p, __m256 *w0, __m256 *w1)
{
    const __m128i b = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)p), 0xD8);
    __m256i h = _mm256_cvtepu8_epi16(b);
    h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(h, 8), 4), _mm256_set1_epi16((short)0x87f0));
    const __m256i nan = _mm256_cmpeq_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7ff0)), _mm256_set1_epi16(0x07f0));
    h = _mm256_xor_si256(h, _mm256_and_si256(nan, _mm256_set1_epi16(0x7830)));
    *w0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), h));
    *w1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), h));
}

/* 8 bytes = 16 nibbles (element 2i = low nibble of byte i) -> table value as int8 (vpshufb on the
 * natural-order nibbles) -> two vectors of 8 f32. */
static inline __attribute__((always_inline)) void dec16_nib(const uint8_t *p, __m128i lut, __m256 *w0, __m256 *w1)
{
    const __m128i b = _mm_loadl_epi64((const __m128i *)p), m = _mm_set1_epi8(15);
    const __m128i nib = _mm_unpacklo_epi8(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
    const __m128i v = _mm_shuffle_epi8(lut, nib);
    *w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    *w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)));
}

#define LUT16_INT4 _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1)
/* 2 * e2m1 (integers; RAW_SCALE 0.5 restores the value). -0 becomes +0: only the sign of an exact zero
 * product differs from the exact decoder. */
#define LUT16_2E2M1 _mm_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)

/* Exact 16-code decode (two DEC) and the raw one (value / RAW_SCALE). */
#define DEC2(f, w, row, k, p0, p1)                                                                  \
    ((f) == DSV3_FMT_INT4 ? dec16_nib((row) + ((size_t)(k) >> 1), LUT16_INT4, p0, p1)              \
                          : (void)(*(p0) = DEC(f, w, row, k), *(p1) = DEC(f, w, row, (k) + 8)))
#define DEC2R(f, w, row, k, p0, p1)                                                                 \
    ((f) == DSV3_FMT_FP8_BLOCK ? dec16_e4m3_raw((row) + (k), p0, p1)                               \
     : (f) == DSV3_FMT_NVFP4   ? dec16_nib((row) + ((size_t)(k) >> 1), LUT16_2E2M1, p0, p1)        \
                               : DEC2(f, w, row, k, p0, p1))
#define RAW_SCALE(f) ((f) == DSV3_FMT_FP8_BLOCK ? 0x1p120f : (f) == DSV3_FMT_NVFP4 ? 0.5f : 1.0f)
/* 8-code raw decode (same convention), for the odd vector at the end of a group */
#define DECR(f, w, row, k)                                                                          \
    ((f) == DSV3_FMT_FP8_BLOCK                                                                     \
         ? _mm256_castsi256_ps(e4m3_bits_raw(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((row) + (k)))))) \
     : (f) == DSV3_FMT_NVFP4 ? _mm256_add_ps(DEC(f, w, row, k), DEC(f, w, row, k))                 \
                             : DEC(f, w, row, k))

#define DEC(f, w, row, k)                                                                           \
    ((f) == DSV3_FMT_F32    ? _mm256_loadu_ps((const float *)(row) + (k))                          \
     : (f) == DSV3_FMT_BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(                               \
                                  _mm256_cvtepu16_epi32(_mm_loadu_si128(                            \
                                      (const __m128i *)((const uint16_t *)(row) + (k)))), 16))      \
     : (f) == DSV3_FMT_FP8_BLOCK ? dec_e4m3((row) + (k))                                            \
     : (f) == DSV3_FMT_NVFP4     ? dec_e2m1((row) + ((size_t)(k) >> 1))                             \
     : (f) == DSV3_FMT_INT8 ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(                              \
                                  _mm_loadl_epi64((const __m128i *)((row) + (k)))))                 \
                            : dec_int4((row) + ((size_t)(k) >> 1)))

/* ---- fast-mode decoders (dot_fp_avx2.c, dot_q8_nvfp4_*.c) ----
 * e4m3 as f16 (F16C): the code s.eeee.mmm placed in the f16 bit positions s.0eeee.mmm0000000 is an f16 whose
 * value is the e4m3 value times 2^(7-15) = 2^-8, subnormals included (e = 0: the f16 subnormal m/8 * 2^-14);
 * vcvtph2ps gives the f32 exactly. Used for scales (the nvfp4 block scales, 8-16 at a time); callers fold 2^8
 * into another factor. The NaN codes S.1111.111 would land on the finite 0x3f80: they become the f16 NaN
 * 0x7f00 (^ 0x4080). 16 codes (bytes of b) -> 16 f16 words. */
static inline __attribute__((always_inline)) __m256i e4m3_f16_words(__m128i b)
{
    __m256i h = _mm256_slli_epi16(_mm256_cvtepu8_epi16(b), 8); /* sign at bit 15, magnitude at 14..8 */
    h = _mm256_and_si256(_mm256_srai_epi16(h, 1), _mm256_set1_epi16((short)0xbf80));
    const __m256i nan = _mm256_cmpeq_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x3f80)), _mm256_set1_epi16(0x3f80));
    return _mm256_xor_si256(h, _mm256_and_si256(nan, _mm256_set1_epi16(0x4080)));
}

/* The same for 8 codes (low 8 bytes of b) -> 8 f16 words. */
static inline __attribute__((always_inline)) __m128i e4m3_f16_words8(__m128i b)
{
    __m128i h = _mm_slli_epi16(_mm_cvtepu8_epi16(b), 8);
    h = _mm_and_si128(_mm_srai_epi16(h, 1), _mm_set1_epi16((short)0xbf80));
    const __m128i nan = _mm_cmpeq_epi16(_mm_and_si128(h, _mm_set1_epi16(0x3f80)), _mm_set1_epi16(0x3f80));
    return _mm_xor_si128(h, _mm_and_si128(nan, _mm_set1_epi16(0x4080)));
}

/* 32 e4m3 codes -> 4 vectors of 8 f32 = code * 2^-120 (the bf16 bit placement s.0000eeee.mmm0000 as the high
 * half of an f32; exact, subnormal codes become f32 denormals), w[v] = codes 4 j + v (j = 0..7: byte v of dword
 * j; the activation layouts DSV3_X_BF16_P32 / DSV3_X_F32_P32 match it). As words, an arithmetic shift right by 4
 * puts the high byte's sign and magnitude at the bf16 places (codes 4 j + 1 and 4 j + 3; the copies of the sign
 * above and the low byte's top bits below are masked off); shifting the words left by 8 first does the same for
 * the low bytes (4 j, 4 j + 2). The high words are f32 in place (w[3], w[2]), the low words are shifted up 16
 * (w[1], w[0]). NaN codes are not special here (the caller checks them). 9 instructions per 32 codes, 5 of them
 * shifts, no shuffle (the unpack-with-zero decoder before it: 10, 6 shuffles or shifts; the byte-LUT one: 11). */
static inline __attribute__((always_inline)) void e4m3x32_raw(__m256i b, __m256 *w)
{
    const __m256i m = _mm256_set1_epi32((int)0x87f00000u);
    const __m256i u = _mm256_srai_epi16(b, 4), t = _mm256_srai_epi16(_mm256_slli_epi16(b, 8), 4);
    w[0] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(t, 16), m));
    w[1] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(u, 16), m));
    w[2] = _mm256_castsi256_ps(_mm256_and_si256(t, m));
    w[3] = _mm256_castsi256_ps(_mm256_and_si256(u, m));
}

/* nvfp4 codes doubled, 2 e2m1 (the integers -12..12; -0 gives 0) */
#define LUT16_2E2M1_S8 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12
/* their magnitudes (u8 for vpdpbusd) */
#define LUT16_2E2M1_ABS 0, 1, 2, 3, 4, 6, 8, 12, 0, 1, 2, 3, 4, 6, 8, 12

#endif

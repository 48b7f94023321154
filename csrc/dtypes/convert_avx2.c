/* AVX2 conversion kernels (8 lanes). Integer bit manipulation reproduces the scalar reference
 * exactly; rounding into subnormal grids uses the "add a power of two" trick (the FPU rounds to
 * nearest even once), which is exact and unaffected by denormals-are-zero. Tails use the scalar
 * functions. */
#include <immintrin.h>

#include "convert_kernels.h"

#define I32(x) _mm256_set1_epi32((int)(x))
#define SEL(mask, a, b) _mm256_blendv_epi8((b), (a), (mask)) /* mask ? a : b */
#define LT(a, b) _mm256_cmpgt_epi32((b), (a))                 /* signed */

/* ---- decoders: 8 codes in 32-bit lanes -> f32 bits ---- */
static inline __m256i dec_e4m3(__m256i c)
{
    const __m256i x = _mm256_and_si256(c, I32(0x7f));
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, I32(0x80)), 24);
    const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(x, 20), I32(120u << 23));
    const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(x, I32(7))), _mm256_set1_ps(0.001953125f));
    __m256i r = SEL(LT(x, I32(8)), _mm256_castps_si256(sub), normal);
    r = SEL(_mm256_cmpeq_epi32(x, I32(0x7f)), I32(0x7fc00000u), r);
    return _mm256_or_si256(r, sign);
}

static inline __m256i dec_e5m2(__m256i c)
{
    const __m256i x = _mm256_and_si256(c, I32(0x7f));
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, I32(0x80)), 24);
    const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(x, 21), I32(112u << 23));
    const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(x, I32(3))), _mm256_set1_ps(1.52587890625e-05f));
    __m256i r = SEL(LT(x, I32(4)), _mm256_castps_si256(sub), normal);
    r = SEL(_mm256_cmpeq_epi32(x, I32(0x7c)), I32(0x7f800000u), r);
    r = SEL(_mm256_cmpgt_epi32(x, I32(0x7c)), I32(0x7fc00000u), r);
    return _mm256_or_si256(r, sign);
}

static inline __m256i dec_ue8m0(__m256i c)
{
    __m256i r = _mm256_slli_epi32(c, 23);
    r = SEL(_mm256_cmpeq_epi32(c, _mm256_setzero_si256()), I32(0x00400000u), r);
    return SEL(_mm256_cmpeq_epi32(c, I32(0xff)), I32(0x7fc00000u), r);
}

static inline __m256i dec_e2m1(__m256i c)
{
    const __m256 mag = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    const __m256i v = _mm256_castps_si256(_mm256_permutevar8x32_ps(mag, _mm256_and_si256(c, I32(7))));
    return _mm256_or_si256(v, _mm256_slli_epi32(_mm256_and_si256(c, I32(8)), 28));
}

/* ---- encoders: f32 bits -> codes in 32-bit lanes ---- */
static inline __m256i rne_shift(__m256i a, int shift) /* (a + half - 1 + lsb) >> shift */
{
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(a, shift), I32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(a, I32((1u << (shift - 1)) - 1)), lsb), shift);
}

static inline __m256i grid_round(__m256i a, float big) /* RNE of a onto the ulp grid of `big` */
{
    const __m256 b = _mm256_set1_ps(big);
    return _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), b)), _mm256_castps_si256(b));
}

static inline __m256i enc_e4m3(__m256i u)
{
    const __m256i a = _mm256_and_si256(u, I32(0x7fffffffu));
    const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), I32(0x80));
    __m256i code = _mm256_sub_epi32(rne_shift(a, 20), I32(120u << 3));
    code = SEL(_mm256_cmpgt_epi32(code, I32(0x7e)), I32(0x7f), code);
    code = SEL(LT(a, I32(0x3c800000u)), grid_round(a, 16384.0f), code); /* ulp(2^14) = 2^-9 */
    code = SEL(_mm256_cmpgt_epi32(a, I32(0x7f7fffffu)), I32(0x7f), code);
    return _mm256_or_si256(code, sign);
}

static inline __m256i enc_e5m2(__m256i u)
{
    const __m256i a = _mm256_and_si256(u, I32(0x7fffffffu));
    const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), I32(0x80));
    __m256i code = _mm256_sub_epi32(rne_shift(a, 21), I32(112u << 2));
    code = SEL(_mm256_cmpgt_epi32(code, I32(0x7b)), I32(0x7c), code);
    code = SEL(LT(a, I32(0x38800000u)), grid_round(a, 128.0f), code); /* ulp(2^7) = 2^-16 */
    code = SEL(_mm256_cmpgt_epi32(a, I32(0x7f800000u)), I32(0x7e), code);
    return _mm256_or_si256(code, sign);
}

static inline __m256i enc_ue8m0(__m256i u)
{
    const __m256i e = _mm256_srli_epi32(u, 23);
    __m256i code = _mm256_add_epi32(e, _mm256_and_si256(_mm256_srli_epi32(u, 22), I32(1)));
    const __m256i sub = _mm256_and_si256(_mm256_cmpgt_epi32(u, I32(0x00400000u)), I32(1));
    code = SEL(_mm256_cmpeq_epi32(e, _mm256_setzero_si256()), sub, code);
    const __m256i nan = _mm256_or_si256(_mm256_cmpeq_epi32(u, _mm256_setzero_si256()),
                                        _mm256_or_si256(LT(u, _mm256_setzero_si256()),
                                                        _mm256_cmpgt_epi32(u, I32(0x7f7fffffu))));
    return SEL(nan, I32(0xff), code);
}

static inline __m256i enc_e2m1(__m256i u)
{
    const __m256i a = _mm256_and_si256(u, I32(0x7fffffffu));
    const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 28), I32(8));
    __m256i code = _mm256_sub_epi32(rne_shift(a, 22), I32(252));
    code = SEL(LT(a, I32(0x3f800000u)), grid_round(a, 4194304.0f), code); /* ulp(2^22) = 0.5 */
    code = SEL(_mm256_cmpgt_epi32(a, I32(0x40bfffffu)), I32(7), code);
    code = _mm256_or_si256(code, sign);
    return SEL(_mm256_cmpgt_epi32(a, I32(0x7f800000u)), _mm256_xor_si256(sign, I32(8)), code);
}

static inline __m256i enc_bf16(__m256i u)
{
    const __m256i a = _mm256_and_si256(u, I32(0x7fffffffu));
    const __m256i r = rne_shift(u, 16);
    const __m256i qnan = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u, 16), I32(0x8000)), I32(0x7fc0));
    return SEL(_mm256_cmpgt_epi32(a, I32(0x7f800000u)), qnan, r);
}

/* ---- loops ---- */
static inline __m256i load8_u8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }

/* 32 codes in four vectors of 32-bit lanes (each < 256) -> 32 bytes in order */
static inline void store32_u8(uint8_t *d, __m256i c0, __m256i c1, __m256i c2, __m256i c3)
{
    const __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
    _mm256_storeu_si256((__m256i *)d, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

#define DECODE8(name, dec, ref)                                                   \
    static void name(void *dst, const void *src, size_t n)                        \
    {                                                                             \
        const uint8_t *s = (const uint8_t *)src;                                  \
        float *d = (float *)dst;                                                  \
        size_t i = 0;                                                             \
        for (; i + 8 <= n; i += 8)                                                \
            _mm256_storeu_si256((__m256i *)(d + i), dec(load8_u8(s + i)));        \
        for (; i < n; i++)                                                        \
            d[i] = ref(s[i]);                                                     \
    }

#define ENCODE8(name, enc, ref)                                                                     \
    static void name(void *dst, const void *src, size_t n)                                          \
    {                                                                                               \
        const float *s = (const float *)src;                                                        \
        uint8_t *d = (uint8_t *)dst;                                                                \
        size_t i = 0;                                                                               \
        for (; i + 32 <= n; i += 32)                                                                \
            store32_u8(d + i, enc(_mm256_loadu_si256((const __m256i *)(s + i))),                    \
                       enc(_mm256_loadu_si256((const __m256i *)(s + i + 8))),                       \
                       enc(_mm256_loadu_si256((const __m256i *)(s + i + 16))),                      \
                       enc(_mm256_loadu_si256((const __m256i *)(s + i + 24))));                     \
        for (; i < n; i++)                                                                          \
            d[i] = ref(s[i]);                                                                       \
    }

DECODE8(e4m3_to_f32, dec_e4m3, dsv3_e4m3_to_f32)
DECODE8(e5m2_to_f32, dec_e5m2, dsv3_e5m2_to_f32)
DECODE8(ue8m0_to_f32, dec_ue8m0, dsv3_ue8m0_to_f32)
DECODE8(e2m1_to_f32, dec_e2m1, dsv3_e2m1_to_f32)
ENCODE8(f32_to_e4m3, enc_e4m3, dsv3_f32_to_e4m3)
ENCODE8(f32_to_e5m2, enc_e5m2, dsv3_f32_to_e5m2)
ENCODE8(f32_to_ue8m0, enc_ue8m0, dsv3_f32_to_ue8m0)
ENCODE8(f32_to_e2m1, enc_e2m1, dsv3_f32_to_e2m1)

static void bf16_to_f32(void *dst, const void *src, size_t n)
{
    const uint16_t *s = (const uint16_t *)src;
    float *d = (float *)dst;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
        _mm256_storeu_si256((__m256i *)(d + i), _mm256_slli_epi32(w, 16));
    }
    for (; i < n; i++)
        d[i] = dsv3_bf16_to_f32(s[i]);
}

/* two vectors of 16-bit values in 32-bit lanes -> 16 uint16 in order */
static inline void store16_u16(uint16_t *d, __m256i r0, __m256i r1)
{
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r0, r1), 0xd8);
    _mm256_storeu_si256((__m256i *)d, p);
}

static void f32_to_bf16(void *dst, const void *src, size_t n)
{
    const float *s = (const float *)src;
    uint16_t *d = (uint16_t *)dst;
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        store16_u16(d + i, enc_bf16(_mm256_loadu_si256((const __m256i *)(s + i))),
                    enc_bf16(_mm256_loadu_si256((const __m256i *)(s + i + 8))));
    for (; i < n; i++)
        d[i] = dsv3_f32_to_bf16(s[i]);
}

static void e4m3_to_bf16(void *dst, const void *src, size_t n)
{
    const uint8_t *s = (const uint8_t *)src;
    uint16_t *d = (uint16_t *)dst;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) /* e4m3 is exact in bf16: the top half of the f32 bits */
        store16_u16(d + i, _mm256_srli_epi32(dec_e4m3(load8_u8(s + i)), 16),
                    _mm256_srli_epi32(dec_e4m3(load8_u8(s + i + 8)), 16));
    for (; i < n; i++)
        d[i] = (uint16_t)(dsv3_f32_bits(dsv3_e4m3_to_f32(s[i])) >> 16);
}

const dsv3_convert_kernels dsv3_convert_avx2 = {
    .to_f32 = {[DSV3_DTYPE_BF16] = bf16_to_f32, [DSV3_DTYPE_E4M3] = e4m3_to_f32,
               [DSV3_DTYPE_E5M2] = e5m2_to_f32, [DSV3_DTYPE_UE8M0] = ue8m0_to_f32,
               [DSV3_DTYPE_E2M1] = e2m1_to_f32},
    .from_f32 = {[DSV3_DTYPE_BF16] = f32_to_bf16, [DSV3_DTYPE_E4M3] = f32_to_e4m3,
                 [DSV3_DTYPE_E5M2] = f32_to_e5m2, [DSV3_DTYPE_UE8M0] = f32_to_ue8m0,
                 [DSV3_DTYPE_E2M1] = f32_to_e2m1},
    .e4m3_to_bf16 = e4m3_to_bf16,
};

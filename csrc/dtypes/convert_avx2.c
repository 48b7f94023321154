/* AVX2 conversion kernels (8 lanes): the algorithms of convert_template.h in AVX2 vocabulary, the loops,
 * and the e2m1 decoder (a table permute). Tails use the scalar functions. */
#include <immintrin.h>

#include "convert_kernels.h"

typedef __m256i VI;
typedef __m256 VF;
typedef __m256i VM; /* lane masks are vectors of all-ones / zero lanes */
#define I32(x) _mm256_set1_epi32((int)(x))
#define F32(x) _mm256_set1_ps(x)
#define AND _mm256_and_si256
#define OR _mm256_or_si256
#define XOR _mm256_xor_si256
#define ADD _mm256_add_epi32
#define SUB _mm256_sub_epi32
#define SRL _mm256_srli_epi32
#define SLL _mm256_slli_epi32
#define FADD _mm256_add_ps
#define FMUL _mm256_mul_ps
#define CVTF _mm256_cvtepi32_ps
#define ASF _mm256_castsi256_ps
#define ASI _mm256_castps_si256
#define GT _mm256_cmpgt_epi32
#define EQ _mm256_cmpeq_epi32
#define MOR _mm256_or_si256
#define SEL(m, v, r) _mm256_blendv_epi8((r), (v), (m))
#define ONE_IF(m) _mm256_and_si256((m), I32(1))
#include "convert_template.h"

static inline __m256i dec_e2m1(__m256i c)
{
    const __m256 mag = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    const __m256i v = _mm256_castps_si256(_mm256_permutevar8x32_ps(mag, _mm256_and_si256(c, I32(7))));
    return _mm256_or_si256(v, _mm256_slli_epi32(_mm256_and_si256(c, I32(8)), 28));
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

DSV3_CONVERT_TABLE(dsv3_convert_avx2);

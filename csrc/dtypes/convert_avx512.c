/* AVX-512 conversion kernels (16 lanes; e4m3 decode 64 lanes via VBMI byte permutes, e4m3_avx512.h):
 * the algorithms of convert_template.h with mask registers, the loops, the e2m1 decoder (a signed table
 * permute). vcvtneps2bf16 is not
 * used: it treats f32 subnormals as zero and does not reproduce ml_dtypes' NaN, so bf16 rounding
 * is done with integer arithmetic. */
#include <immintrin.h>

#include "convert_kernels.h"
#include "e4m3_avx512.h"

typedef __m512i VI;
typedef __m512 VF;
typedef __mmask16 VM;
#define I32(x) _mm512_set1_epi32((int)(x))
#define F32(x) _mm512_set1_ps(x)
#define AND _mm512_and_si512
#define OR _mm512_or_si512
#define XOR _mm512_xor_si512
#define ADD _mm512_add_epi32
#define SUB _mm512_sub_epi32
#define SRL _mm512_srli_epi32
#define SLL _mm512_slli_epi32
#define FADD _mm512_add_ps
#define FMUL _mm512_mul_ps
#define CVTF _mm512_cvtepi32_ps
#define ASF _mm512_castsi512_ps
#define ASI _mm512_castps_si512
#define GT _mm512_cmpgt_epi32_mask
#define EQ _mm512_cmpeq_epi32_mask
#define MOR(m, n) ((VM)((m) | (n)))
#define SEL(m, v, r) _mm512_mask_mov_epi32((r), (m), (v))
#define ONE_IF(m) _mm512_maskz_mov_epi32((m), I32(1))
#include "convert_template.h"

static inline __m512i dec_e2m1(__m512i c) /* the 16-entry table covers sign and magnitude */
{
    const __m512 tab = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f,
                                      -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
    return _mm512_castps_si512(_mm512_permutexvar_ps(c, tab)); /* uses the low 4 bits of each index */
}

#define LOAD16_U8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p)))

#define DECODE16(name, dec, ref)                                                   \
    static void name(void *dst, const void *src, size_t n)                         \
    {                                                                              \
        const uint8_t *s = (const uint8_t *)src;                                   \
        float *d = (float *)dst;                                                   \
        size_t i = 0;                                                              \
        for (; i + 16 <= n; i += 16)                                               \
            _mm512_storeu_si512((void *)(d + i), dec(LOAD16_U8(s + i)));           \
        for (; i < n; i++)                                                         \
            d[i] = ref(s[i]);                                                      \
    }

#define ENCODE16(name, enc, ref)                                                                    \
    static void name(void *dst, const void *src, size_t n)                                          \
    {                                                                                               \
        const float *s = (const float *)src;                                                        \
        uint8_t *d = (uint8_t *)dst;                                                                \
        size_t i = 0;                                                                               \
        for (; i + 16 <= n; i += 16)                                                                \
            _mm_storeu_si128((__m128i *)(d + i), _mm512_cvtepi32_epi8(enc(_mm512_loadu_si512((const void *)(s + i))))); \
        for (; i < n; i++)                                                                          \
            d[i] = ref(s[i]);                                                                       \
    }

DECODE16(e5m2_to_f32, dec_e5m2, dsv3_e5m2_to_f32)
DECODE16(ue8m0_to_f32, dec_ue8m0, dsv3_ue8m0_to_f32)
DECODE16(e2m1_to_f32, dec_e2m1, dsv3_e2m1_to_f32)
ENCODE16(f32_to_e4m3, enc_e4m3, dsv3_f32_to_e4m3)
ENCODE16(f32_to_e5m2, enc_e5m2, dsv3_f32_to_e5m2)
ENCODE16(f32_to_ue8m0, enc_ue8m0, dsv3_f32_to_ue8m0)
ENCODE16(f32_to_e2m1, enc_e2m1, dsv3_f32_to_e2m1)

static inline __m512i bf16x16_to_f32(__m256i w) { return _mm512_slli_epi32(_mm512_cvtepu16_epi32(w), 16); }

static void e4m3_to_f32(void *dst, const void *src, size_t n)
{
    const uint8_t *s = (const uint8_t *)src;
    float *d = (float *)dst;
    size_t i = 0;
    if (n >= 64) {
        dsv3_e4m3_bf16_lut lut;
        dsv3_e4m3_bf16_lut_init(&lut);
        for (; i + 64 <= n; i += 64) {
            __m512i w0, w1;
            dsv3_e4m3x64_to_bf16(&lut, _mm512_loadu_si512((const void *)(s + i)), &w0, &w1);
            _mm512_storeu_si512((void *)(d + i), bf16x16_to_f32(_mm512_castsi512_si256(w0)));
            _mm512_storeu_si512((void *)(d + i + 16), bf16x16_to_f32(_mm512_extracti64x4_epi64(w0, 1)));
            _mm512_storeu_si512((void *)(d + i + 32), bf16x16_to_f32(_mm512_castsi512_si256(w1)));
            _mm512_storeu_si512((void *)(d + i + 48), bf16x16_to_f32(_mm512_extracti64x4_epi64(w1, 1)));
        }
    }
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_si512((void *)(d + i), dec_e4m3(LOAD16_U8(s + i)));
    for (; i < n; i++)
        d[i] = dsv3_e4m3_to_f32(s[i]);
}

static void e4m3_to_bf16(void *dst, const void *src, size_t n)
{
    const uint8_t *s = (const uint8_t *)src;
    uint16_t *d = (uint16_t *)dst;
    size_t i = 0;
    dsv3_e4m3_bf16_lut lut;
    dsv3_e4m3_bf16_lut_init(&lut);
    for (; i + 64 <= n; i += 64) {
        __m512i w0, w1;
        dsv3_e4m3x64_to_bf16(&lut, _mm512_loadu_si512((const void *)(s + i)), &w0, &w1);
        _mm512_storeu_si512((void *)(d + i), w0);
        _mm512_storeu_si512((void *)(d + i + 32), w1);
    }
    for (; i < n; i++)
        d[i] = (uint16_t)(dsv3_f32_bits(dsv3_e4m3_to_f32(s[i])) >> 16);
}

static void bf16_to_f32(void *dst, const void *src, size_t n)
{
    const uint16_t *s = (const uint16_t *)src;
    float *d = (float *)dst;
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_si512((void *)(d + i), bf16x16_to_f32(_mm256_loadu_si256((const __m256i *)(s + i))));
    for (; i < n; i++)
        d[i] = dsv3_bf16_to_f32(s[i]);
}

static void f32_to_bf16(void *dst, const void *src, size_t n)
{
    const float *s = (const float *)src;
    uint16_t *d = (uint16_t *)dst;
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(d + i), _mm512_cvtepi32_epi16(enc_bf16(_mm512_loadu_si512((const void *)(s + i)))));
    for (; i < n; i++)
        d[i] = dsv3_f32_to_bf16(s[i]);
}

DSV3_CONVERT_TABLE(dsv3_convert_avx512);

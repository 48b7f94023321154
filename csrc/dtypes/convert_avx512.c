/* AVX-512 conversion kernels (16 lanes; e4m3 decode 64 lanes via VBMI byte permutes).
 * Same exact integer algorithms as the AVX2 kernels, with mask registers. vcvtneps2bf16 is not
 * used: it treats f32 subnormals as zero and does not reproduce ml_dtypes' NaN, so bf16 rounding
 * is done with integer arithmetic. */
#include <immintrin.h>

#include "convert_kernels.h"
#include "e4m3_avx512.h"

#define I32(x) _mm512_set1_epi32((int)(x))
#define MOV(r, m, v) _mm512_mask_mov_epi32((r), (m), (v)) /* m ? v : r */

static inline __m512i dec_e5m2(__m512i c)
{
    const __m512i x = _mm512_and_si512(c, I32(0x7f));
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(c, I32(0x80)), 24);
    __m512i r = _mm512_add_epi32(_mm512_slli_epi32(x, 21), I32(112u << 23));
    const __m512 sub = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_si512(x, I32(3))), _mm512_set1_ps(1.52587890625e-05f));
    r = MOV(r, _mm512_cmplt_epi32_mask(x, I32(4)), _mm512_castps_si512(sub));
    r = MOV(r, _mm512_cmpeq_epi32_mask(x, I32(0x7c)), I32(0x7f800000u));
    r = MOV(r, _mm512_cmpgt_epi32_mask(x, I32(0x7c)), I32(0x7fc00000u));
    return _mm512_or_si512(r, sign);
}

static inline __m512i dec_ue8m0(__m512i c)
{
    __m512i r = _mm512_slli_epi32(c, 23);
    r = MOV(r, _mm512_cmpeq_epi32_mask(c, _mm512_setzero_si512()), I32(0x00400000u));
    return MOV(r, _mm512_cmpeq_epi32_mask(c, I32(0xff)), I32(0x7fc00000u));
}

static inline __m512i dec_e2m1(__m512i c) /* the 16-entry table covers sign and magnitude */
{
    const __m512 tab = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f,
                                      -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
    return _mm512_castps_si512(_mm512_permutexvar_ps(c, tab)); /* uses the low 4 bits of each index */
}

static inline __m512i rne_shift(__m512i a, int shift)
{
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(a, shift), I32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(a, I32((1u << (shift - 1)) - 1)), lsb), shift);
}

static inline __m512i grid_round(__m512i a, float big)
{
    const __m512 b = _mm512_set1_ps(big);
    return _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), b)), _mm512_castps_si512(b));
}

static inline __m512i enc_e4m3(__m512i u)
{
    const __m512i a = _mm512_and_si512(u, I32(0x7fffffffu));
    const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), I32(0x80));
    __m512i code = _mm512_sub_epi32(rne_shift(a, 20), I32(120u << 3));
    code = _mm512_min_epi32(code, I32(0x7f)); /* past 448 (0x7e) is NaN */
    code = MOV(code, _mm512_cmplt_epi32_mask(a, I32(0x3c800000u)), grid_round(a, 16384.0f));
    code = MOV(code, _mm512_cmpgt_epi32_mask(a, I32(0x7f7fffffu)), I32(0x7f));
    return _mm512_or_si512(code, sign);
}

static inline __m512i enc_e5m2(__m512i u)
{
    const __m512i a = _mm512_and_si512(u, I32(0x7fffffffu));
    const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), I32(0x80));
    __m512i code = _mm512_sub_epi32(rne_shift(a, 21), I32(112u << 2));
    code = _mm512_min_epi32(code, I32(0x7c)); /* overflow -> inf */
    code = MOV(code, _mm512_cmplt_epi32_mask(a, I32(0x38800000u)), grid_round(a, 128.0f));
    code = MOV(code, _mm512_cmpgt_epi32_mask(a, I32(0x7f800000u)), I32(0x7e));
    return _mm512_or_si512(code, sign);
}

static inline __m512i enc_ue8m0(__m512i u)
{
    const __m512i e = _mm512_srli_epi32(u, 23);
    __m512i code = _mm512_add_epi32(e, _mm512_and_si512(_mm512_srli_epi32(u, 22), I32(1)));
    const __m512i sub = _mm512_maskz_mov_epi32(_mm512_cmpgt_epu32_mask(u, I32(0x00400000u)), I32(1));
    code = MOV(code, _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()), sub);
    const __mmask16 nan = _mm512_cmpeq_epi32_mask(u, _mm512_setzero_si512()) |
                          _mm512_cmpge_epu32_mask(u, I32(0x7f800000u));
    return MOV(code, nan, I32(0xff));
}

static inline __m512i enc_e2m1(__m512i u)
{
    const __m512i a = _mm512_and_si512(u, I32(0x7fffffffu));
    const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 28), I32(8));
    __m512i code = _mm512_sub_epi32(rne_shift(a, 22), I32(252));
    code = MOV(code, _mm512_cmplt_epi32_mask(a, I32(0x3f800000u)), grid_round(a, 4194304.0f));
    code = MOV(code, _mm512_cmpge_epi32_mask(a, I32(0x40c00000u)), I32(7));
    code = _mm512_or_si512(code, sign);
    return MOV(code, _mm512_cmpgt_epi32_mask(a, I32(0x7f800000u)), _mm512_xor_si512(sign, I32(8)));
}

static inline __m512i enc_bf16(__m512i u)
{
    const __m512i a = _mm512_and_si512(u, I32(0x7fffffffu));
    const __m512i qnan = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u, 16), I32(0x8000)), I32(0x7fc0));
    return MOV(rne_shift(u, 16), _mm512_cmpgt_epi32_mask(a, I32(0x7f800000u)), qnan);
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
        _mm512_storeu_ps(d + i, dsv3_e4m3x16_to_f32(_mm_loadu_si128((const __m128i *)(s + i))));
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

const dsv3_convert_kernels dsv3_convert_avx512 = {
    .to_f32 = {[DSV3_DTYPE_BF16] = bf16_to_f32, [DSV3_DTYPE_E4M3] = e4m3_to_f32,
               [DSV3_DTYPE_E5M2] = e5m2_to_f32, [DSV3_DTYPE_UE8M0] = ue8m0_to_f32,
               [DSV3_DTYPE_E2M1] = e2m1_to_f32},
    .from_f32 = {[DSV3_DTYPE_BF16] = f32_to_bf16, [DSV3_DTYPE_E4M3] = f32_to_e4m3,
                 [DSV3_DTYPE_E5M2] = f32_to_e5m2, [DSV3_DTYPE_UE8M0] = f32_to_ue8m0,
                 [DSV3_DTYPE_E2M1] = f32_to_e2m1},
    .e4m3_to_bf16 = e4m3_to_bf16,
};

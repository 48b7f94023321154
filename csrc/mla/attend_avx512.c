/* AVX-512 attention kernels: the bodies of attend_template.h in the exact order of attend_scalar.c (see
 * attend_kernels.h), with register tiles (dots: 4 queries x 4 rows, 8 queries x 2 cache rows; wsum: 8 rows
 * x 32 columns) so every loaded cache row or weight row serves several outputs. Tails use masked loads;
 * in the dots tail, masked lanes keep their accumulator. */
#include "attend_kernels.h"
#include "kv_rows.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* ---- 16 lanes: one __m512 ---- */
typedef __m512 V;

AI __mmask16 lanes(int64_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}
AI V v_zero(void) { return _mm512_setzero_ps(); }
AI V v_set1(float s) { return _mm512_set1_ps(s); }
AI V v_load(const float *p) { return _mm512_loadu_ps(p); }
AI V v_load_n(const float *p, int64_t n) { return _mm512_maskz_loadu_ps(lanes(n), p); }
AI void v_store(float *p, V v) { _mm512_storeu_ps(p, v); }
AI void v_store_n(float *p, V v, int64_t n) { _mm512_mask_storeu_ps(p, lanes(n), v); }
AI V v_add(V a, V b) { return _mm512_add_ps(a, b); }
AI V v_sub(V a, V b) { return _mm512_sub_ps(a, b); }
AI V v_fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
AI V v_fma_n(V a, V b, V c, int64_t n) { return _mm512_mask3_fmadd_ps(a, b, c, lanes(n)); }
AI V v_and_n(V v, int64_t n) { return _mm512_maskz_mov_ps(lanes(n), v); }

AI float v_hsum(V v)
{
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    const __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
    const __m128 a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
    return _mm_cvtss_f32(_mm_add_ss(a2, _mm_shuffle_ps(a2, a2, 1)));
}

/* dsv3_mla_exp on 16 lanes: the same operations in the same order. */
AI V v_exp(V x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(DSV3_EXP_MIN));
    const __m512 shift = _mm512_set1_ps(DSV3_EXP_SHIFT);
    const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(DSV3_EXP_LOG2E), shift), shift);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-DSV3_EXP_LN2_HI), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-DSV3_EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(DSV3_EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(DSV3_EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(DSV3_EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(DSV3_EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(DSV3_EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(DSV3_EXP_P5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* ---- bf16 / fp8 cache rows, converted in registers (the f32 values dsv3_kv_elem gives) ---- */

AI __m512 bf16x16(const uint8_t *p)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* 16 e4m3fn codes -> f32, exact, equal to dsv3_e4m3_to_f32 bit for bit (NaN codes: sign | 0x7fc00000): the
 * code in the top byte, an arithmetic shift by 4 puts exponent|mantissa under the f32 fields with the sign
 * kept, then x 2^(127-7) (exact; e4m3 subnormals arrive as f32 subnormals). Fewer operations than the
 * conversion kernels' dec_e4m3 (csrc/dtypes/convert_template.h), which matters here: a code is decoded once
 * per 8 heads. */
AI __m512 e4m3x16(const uint8_t *p)
{
    const __m512i x = _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)p)), 24);
    const __m512i r = _mm512_and_si512(_mm512_srai_epi32(x, 4), _mm512_set1_epi32((int)0x87f00000u));
    const __m512 f = _mm512_mul_ps(_mm512_castsi512_ps(r), _mm512_set1_ps(0x1p120f));
    const __mmask16 nan = _mm512_cmpeq_epi32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7f000000)),
                                                  _mm512_set1_epi32(0x7f000000));
    const __m512i qnan = _mm512_or_si512(_mm512_and_si512(x, _mm512_set1_epi32((int)0x80000000u)),
                                         _mm512_set1_epi32(0x7fc00000));
    return _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(qnan));
}

/* Elements [k, k+16) of a row as f32; lanes at or past `lim` valid elements are zero. A 16-chunk never
 * crosses an fp8 scale block (k is a multiple of 16); one that crosses the latent/rope boundary (R not
 * a multiple of 16) or is partial takes the scalar decode. DT: the layout's dtype (a constant). */
AI __m512 kv_load16(const dsv3_kv_layout *g, const uint8_t *row, int64_t k, int64_t lim, const int DT)
{
    if (lim >= 16 && k + 16 <= g->R) {
        if (DT == DSV3_KV_BF16)
            return bf16x16(row + 2 * k);
        return _mm512_mul_ps(e4m3x16(row + k), _mm512_set1_ps(dsv3_kv_scale_at(g, row, k)));
    }
    if (lim >= 16 && k >= g->R)
        return bf16x16(row + g->rope_off + 2 * (k - g->R));
    float tmp[16] = {0.f};
    for (int64_t e = 0; e < 16 && e < lim; e++)
        tmp[e] = dsv3_kv_elem(g, row, k + e);
    return _mm512_loadu_ps(tmp);
}

#define kv_load kv_load16

/* ---- native width: 16 lanes too ---- */
#define WL 16
typedef __m512 W;
typedef __mmask16 WM;
#define w_lanes lanes
#define w_zero v_zero
#define w_fma v_fma
#define kvw_load kv_load16
AI W w_maskload(const float *p, WM m) { return _mm512_maskz_loadu_ps(m, p); }
AI void w_maskstore(float *p, WM m, W v) { _mm512_mask_storeu_ps(p, m, v); }
AI W w_bcast(const float *p) { return _mm512_set1_ps(*p); }

/* ---- tiles ---- */
#define DOTS_MA 4
#define DOTS_NB 4
#define DOTS_CASES(X) EACH_4(UPTO_4, X)
#define DOTS_KV_MA 8
#define DOTS_KV_NB 2
#define DOTS_KV_CASES(X) EACH_8(UPTO_2, X)
#define DOTS_MAX_MA 8
#define DOTS_MAX_NB 4
#define WSUM_MR 8
#define WSUM_CASES(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8)
#define ATTEND_TABLE dsv3_attend_avx512
#define WSUM_ROWS_FN dsv3_wsum_rows_avx512

#include "attend_template.h"

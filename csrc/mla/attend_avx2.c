/* AVX2 attention kernels: the bodies of attend_template.h in the exact order of attend_scalar.c (see
 * attend_kernels.h). The 16 lanes of dots and expsum are two 8-lane halves (lo: lanes 0-7, hi: lanes
 * 8-15), whose sum is the first step of the pairwise tree. Register tiles: dots 3 queries x 2 rows, wsum
 * 6 rows x 16 columns. Tails load zeros (maskload), which add nothing to a lane. */
#include "attend_kernels.h"
#include "kv_rows.h"
#include "linear/decode_avx2.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

/* lanes of an 8-wide half that are < left */
AI __m256i mask8(int64_t left)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int l = left < 0 ? 0 : left > 8 ? 8 : (int)left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(l), idx);
}

/* ---- 16 lanes: two __m256 ---- */
typedef struct {
    __m256 lo, hi;
} V;

AI V v_pair(__m256 lo, __m256 hi)
{
    V v;
    v.lo = lo;
    v.hi = hi;
    return v;
}
AI V v_zero(void) { return v_pair(_mm256_setzero_ps(), _mm256_setzero_ps()); }
AI V v_set1(float s) { return v_pair(_mm256_set1_ps(s), _mm256_set1_ps(s)); }
AI V v_load(const float *p) { return v_pair(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)); }
AI V v_load_n(const float *p, int64_t n) { return v_pair(_mm256_maskload_ps(p, mask8(n)), _mm256_maskload_ps(p + 8, mask8(n - 8))); }
AI void v_store(float *p, V v)
{
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
}
AI void v_store_n(float *p, V v, int64_t n)
{
    _mm256_maskstore_ps(p, mask8(n), v.lo);
    _mm256_maskstore_ps(p + 8, mask8(n - 8), v.hi);
}
AI V v_add(V a, V b) { return v_pair(_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)); }
AI V v_sub(V a, V b) { return v_pair(_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)); }
AI V v_fma(V a, V b, V c) { return v_pair(_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)); }
AI V v_fma_n(V a, V b, V c, int64_t n)
{
    (void)n; /* a and b are zero past n: c + 0 */
    return v_fma(a, b, c);
}
AI V v_and_n(V v, int64_t n)
{
    return v_pair(_mm256_and_ps(v.lo, _mm256_castsi256_ps(mask8(n))), _mm256_and_ps(v.hi, _mm256_castsi256_ps(mask8(n - 8))));
}

/* The pairwise tree of the 16-lane contract over (lo, hi). */
AI float v_hsum(V v)
{
    const __m256 a8 = _mm256_add_ps(v.lo, v.hi);
    const __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
    const __m128 a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
    return _mm_cvtss_f32(_mm_add_ss(a2, _mm_shuffle_ps(a2, a2, 1)));
}

/* dsv3_mla_exp on 8 lanes: the same operations in the same order. */
AI __m256 exp8(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(DSV3_EXP_MIN));
    const __m256 shift = _mm256_set1_ps(DSV3_EXP_SHIFT);
    const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(DSV3_EXP_LOG2E), shift), shift);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-DSV3_EXP_LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-DSV3_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(DSV3_EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(DSV3_EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(DSV3_EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(DSV3_EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(DSV3_EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(DSV3_EXP_P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
AI V v_exp(V x) { return v_pair(exp8(x.lo), exp8(x.hi)); }

/* ---- bf16 / fp8 cache rows, converted in registers (the f32 values dsv3_kv_elem gives) ---- */

AI __m256 bf16x8(const uint8_t *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p)), 16));
}

/* Elements [k, k+8) of a row as f32; lanes at or past `lim` valid elements are zero. k is a multiple of
 * 8, so a chunk never crosses an fp8 scale block; a chunk crossing the latent/rope boundary or partial
 * takes the scalar decode. DT: the layout's dtype (a constant). */
AI __m256 kv_load8(const dsv3_kv_layout *g, const uint8_t *row, int64_t k, int64_t lim, const int DT)
{
    if (lim >= 8 && k + 8 <= g->R) {
        if (DT == DSV3_KV_BF16)
            return bf16x8(row + 2 * k);
        return _mm256_mul_ps(dec_e4m3(row + k), _mm256_set1_ps(dsv3_kv_scale_at(g, row, k)));
    }
    if (lim >= 8 && k >= g->R)
        return bf16x8(row + g->rope_off + 2 * (k - g->R));
    float tmp[8] = {0.f};
    for (int64_t e = 0; e < 8 && e < lim; e++)
        tmp[e] = dsv3_kv_elem(g, row, k + e);
    return _mm256_loadu_ps(tmp);
}

AI V kv_load(const dsv3_kv_layout *g, const uint8_t *row, int64_t k, int64_t lim, const int DT)
{
    return v_pair(kv_load8(g, row, k, lim, DT), kv_load8(g, row, k + 8, lim - 8, DT));
}

/* ---- native width: 8 lanes ---- */
#define WL 8
typedef __m256 W;
typedef __m256i WM;
#define w_lanes mask8
#define kvw_load kv_load8
AI W w_zero(void) { return _mm256_setzero_ps(); }
AI W w_maskload(const float *p, WM m) { return _mm256_maskload_ps(p, m); }
AI void w_maskstore(float *p, WM m, W v) { _mm256_maskstore_ps(p, m, v); }
AI W w_bcast(const float *p) { return _mm256_broadcast_ss(p); }
AI W w_fma(W a, W b, W c) { return _mm256_fmadd_ps(a, b, c); }

/* ---- tiles ---- */
#define DOTS_MA 3
#define DOTS_NB 2
#define DOTS_CASES(X) EACH_3(UPTO_2, X)
#define DOTS_KV_MA 3
#define DOTS_KV_NB 2
#define DOTS_KV_CASES(X) EACH_3(UPTO_2, X)
#define DOTS_MAX_MA 3
#define DOTS_MAX_NB 2
#define WSUM_MR 6
#define WSUM_CASES(X) X(1) X(2) X(3) X(4) X(5) X(6)
#define ATTEND_TABLE dsv3_attend_avx2
#define WSUM_ROWS_FN dsv3_wsum_rows_avx2

#include "attend_template.h"

/* AVX2 attention kernels: the exact order of attend_scalar.c (see attend_kernels.h). The 16-lane
 * order of dots and expsum is kept with two 8-lane halves (lo: lanes 0-7, hi: lanes 8-15), whose
 * sum is the first step of the pairwise tree. Register tiles: dots 3 queries x 2 rows, wsum 6 rows
 * x 16 columns. Tails load zeros (maskload), which add nothing to a lane. */
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

/* The pairwise tree of the 16-lane contract over (lo, hi). */
AI float hsum_lohi(__m256 lo, __m256 hi)
{
    const __m256 a8 = _mm256_add_ps(lo, hi);
    const __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
    const __m128 a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
    return _mm_cvtss_f32(_mm_add_ss(a2, _mm_shuffle_ps(a2, a2, 1)));
}

AI void dots_tile(const float *a, int64_t lda, const float *b, int64_t ldb, int64_t n, float *out, int64_t ldo,
                  const int MA, const int NB)
{
    __m256 lo[3][2], hi[3][2], bl[2], bh[2];
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            lo[i][j] = hi[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        for (int j = 0; j < NB; j++) {
            bl[j] = _mm256_loadu_ps(b + j * ldb + k);
            bh[j] = _mm256_loadu_ps(b + j * ldb + k + 8);
        }
        for (int i = 0; i < MA; i++) {
            const __m256 al = _mm256_loadu_ps(a + i * lda + k), ah = _mm256_loadu_ps(a + i * lda + k + 8);
            for (int j = 0; j < NB; j++) {
                lo[i][j] = _mm256_fmadd_ps(al, bl[j], lo[i][j]);
                hi[i][j] = _mm256_fmadd_ps(ah, bh[j], hi[i][j]);
            }
        }
    }
    if (k < n) {
        const __m256i ml = mask8(n - k), mh = mask8(n - k - 8);
        for (int j = 0; j < NB; j++) {
            bl[j] = _mm256_maskload_ps(b + j * ldb + k, ml);
            bh[j] = _mm256_maskload_ps(b + j * ldb + k + 8, mh);
        }
        for (int i = 0; i < MA; i++) {
            const __m256 al = _mm256_maskload_ps(a + i * lda + k, ml);
            const __m256 ah = _mm256_maskload_ps(a + i * lda + k + 8, mh);
            for (int j = 0; j < NB; j++) {
                lo[i][j] = _mm256_fmadd_ps(al, bl[j], lo[i][j]);
                hi[i][j] = _mm256_fmadd_ps(ah, bh[j], hi[i][j]);
            }
        }
    }
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            out[i * ldo + j] = hsum_lohi(lo[i][j], hi[i][j]);
}

static void dots_avx2(const float *a, int64_t na, int64_t lda, const float *b, int64_t nb, int64_t ldb, int64_t n,
                      float *out, int64_t ldo)
{
    for (int64_t j = 0; j < nb; j += 2)
        for (int64_t i = 0; i < na; i += 3) {
            const int ma = na - i < 3 ? (int)(na - i) : 3, nbb = nb - j < 2 ? 1 : 2;
            const float *ai = a + i * lda, *bj = b + j * ldb;
            float *o = out + i * ldo + j;
            switch (ma * 4 + nbb) {
            case 3 * 4 + 2: dots_tile(ai, lda, bj, ldb, n, o, ldo, 3, 2); break;
            case 3 * 4 + 1: dots_tile(ai, lda, bj, ldb, n, o, ldo, 3, 1); break;
            case 2 * 4 + 2: dots_tile(ai, lda, bj, ldb, n, o, ldo, 2, 2); break;
            case 2 * 4 + 1: dots_tile(ai, lda, bj, ldb, n, o, ldo, 2, 1); break;
            case 1 * 4 + 2: dots_tile(ai, lda, bj, ldb, n, o, ldo, 1, 2); break;
            default: dots_tile(ai, lda, bj, ldb, n, o, ldo, 1, 1); break;
            }
        }
}

AI void wsum_tile(const float *p, int64_t ldp, const float *x, int64_t ldx, int64_t T, float *out, int64_t ldo,
                  __m256i m0, __m256i m1, const int MR, const int NC)
{
    __m256 acc[6][2];
    for (int i = 0; i < MR; i++)
        for (int c = 0; c < NC; c++)
            acc[i][c] = _mm256_setzero_ps();
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * ldx;
        const __m256 x0 = _mm256_maskload_ps(xt, m0);
        const __m256 x1 = NC > 1 ? _mm256_maskload_ps(xt + 8, m1) : x0;
        for (int i = 0; i < MR; i++) {
            const __m256 pv = _mm256_broadcast_ss(p + i * ldp + t);
            acc[i][0] = _mm256_fmadd_ps(pv, x0, acc[i][0]);
            if (NC > 1)
                acc[i][1] = _mm256_fmadd_ps(pv, x1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++) {
        _mm256_maskstore_ps(out + i * ldo, m0, acc[i][0]);
        if (NC > 1)
            _mm256_maskstore_ps(out + i * ldo + 8, m1, acc[i][1]);
    }
}

#define WSUM_CASE(mr) \
    case mr: \
        if (nc == 2) \
            wsum_tile(p + i * ldp, ldp, x + r, ldx, T, out + i * ldo + r, ldo, m0, m1, mr, 2); \
        else \
            wsum_tile(p + i * ldp, ldp, x + r, ldx, T, out + i * ldo + r, ldo, m0, m1, mr, 1); \
        break;

static void wsum_avx2(const float *p, int64_t np, int64_t ldp, const float *x, int64_t ldx, int64_t T, int64_t n,
                      float *out, int64_t ldo)
{
    for (int64_t r = 0; r < n; r += 16) {
        const __m256i m0 = mask8(n - r), m1 = mask8(n - r - 8);
        const int nc = n - r > 8 ? 2 : 1;
        for (int64_t i = 0; i < np; i += 6) {
            switch (np - i < 6 ? (int)(np - i) : 6) {
                WSUM_CASE(1) WSUM_CASE(2) WSUM_CASE(3) WSUM_CASE(4) WSUM_CASE(5) WSUM_CASE(6)
            default: break;
            }
        }
    }
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

static float expsum_avx2(float *x, int64_t n, float m)
{
    const __m256 mv = _mm256_set1_ps(m);
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m256 a = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
        const __m256 b = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), mv));
        _mm256_storeu_ps(x + j, a);
        _mm256_storeu_ps(x + j + 8, b);
        lo = _mm256_add_ps(lo, a);
        hi = _mm256_add_ps(hi, b);
    }
    if (j < n) {
        const __m256i ml = mask8(n - j), mh = mask8(n - j - 8);
        const __m256 a = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(x + j, ml), mv)), _mm256_castsi256_ps(ml));
        const __m256 b = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(x + j + 8, mh), mv)),
                                       _mm256_castsi256_ps(mh));
        _mm256_maskstore_ps(x + j, ml, a);
        _mm256_maskstore_ps(x + j + 8, mh, b);
        lo = _mm256_add_ps(lo, a);
        hi = _mm256_add_ps(hi, b);
    }
    return hsum_lohi(lo, hi);
}

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

AI void dots_kv_tile(const float *a, int64_t lda, const dsv3_kv_layout *g, const uint8_t *b, float *out, int64_t ldo,
                     const int MA, const int NB, const int DT)
{
    const int64_t n = g->R + g->P, rb = g->row_bytes;
    __m256 lo[3][2], hi[3][2], bl[2], bh[2];
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            lo[i][j] = hi[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        for (int j = 0; j < NB; j++) {
            bl[j] = kv_load8(g, b + j * rb, k, 8, DT);
            bh[j] = kv_load8(g, b + j * rb, k + 8, 8, DT);
        }
        for (int i = 0; i < MA; i++) {
            const __m256 al = _mm256_loadu_ps(a + i * lda + k), ah = _mm256_loadu_ps(a + i * lda + k + 8);
            for (int j = 0; j < NB; j++) {
                lo[i][j] = _mm256_fmadd_ps(al, bl[j], lo[i][j]);
                hi[i][j] = _mm256_fmadd_ps(ah, bh[j], hi[i][j]);
            }
        }
    }
    if (k < n) {
        const __m256i ml = mask8(n - k), mh = mask8(n - k - 8);
        for (int j = 0; j < NB; j++) {
            bl[j] = kv_load8(g, b + j * rb, k, n - k, DT);
            bh[j] = kv_load8(g, b + j * rb, k + 8, n - k - 8, DT);
        }
        for (int i = 0; i < MA; i++) {
            const __m256 al = _mm256_maskload_ps(a + i * lda + k, ml);
            const __m256 ah = _mm256_maskload_ps(a + i * lda + k + 8, mh);
            for (int j = 0; j < NB; j++) {
                lo[i][j] = _mm256_fmadd_ps(al, bl[j], lo[i][j]);
                hi[i][j] = _mm256_fmadd_ps(ah, bh[j], hi[i][j]);
            }
        }
    }
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            out[i * ldo + j] = hsum_lohi(lo[i][j], hi[i][j]);
}

#define DOTS_KV_BODY(dt) \
    for (int64_t j = 0; j < nb; j += 2) \
        for (int64_t i = 0; i < na; i += 3) { \
            const int ma = na - i < 3 ? (int)(na - i) : 3, nbb = nb - j < 2 ? 1 : 2; \
            const float *ai = a + i * lda; \
            const uint8_t *bj = rows + j * g->row_bytes; \
            float *o = out + i * ldo + j; \
            switch (ma * 4 + nbb) { \
            case 3 * 4 + 2: dots_kv_tile(ai, lda, g, bj, o, ldo, 3, 2, dt); break; \
            case 3 * 4 + 1: dots_kv_tile(ai, lda, g, bj, o, ldo, 3, 1, dt); break; \
            case 2 * 4 + 2: dots_kv_tile(ai, lda, g, bj, o, ldo, 2, 2, dt); break; \
            case 2 * 4 + 1: dots_kv_tile(ai, lda, g, bj, o, ldo, 2, 1, dt); break; \
            case 1 * 4 + 2: dots_kv_tile(ai, lda, g, bj, o, ldo, 1, 2, dt); break; \
            default: dots_kv_tile(ai, lda, g, bj, o, ldo, 1, 1, dt); break; \
            } \
        }

static void dots_kv_avx2(const float *a, int64_t na, int64_t lda, const dsv3_kv_layout *g, const uint8_t *rows,
                         int64_t nb, float *out, int64_t ldo)
{
    if (g->dtype == DSV3_KV_BF16) {
        DOTS_KV_BODY(DSV3_KV_BF16)
    } else {
        DOTS_KV_BODY(DSV3_KV_FP8)
    }
}

AI void wsum_kv_tile(const float *p, int64_t ldp, const dsv3_kv_layout *g, const uint8_t *rows, int64_t T, int64_t r,
                     float *out, int64_t ldo, __m256i m0, __m256i m1, const int MR, const int NC, const int DT)
{
    __m256 acc[6][2];
    for (int i = 0; i < MR; i++)
        for (int c = 0; c < NC; c++)
            acc[i][c] = _mm256_setzero_ps();
    for (int64_t t = 0; t < T; t++) {
        const uint8_t *row = rows + t * g->row_bytes;
        const __m256 x0 = kv_load8(g, row, r, g->R - r, DT);
        const __m256 x1 = NC > 1 ? kv_load8(g, row, r + 8, g->R - r - 8, DT) : x0;
        for (int i = 0; i < MR; i++) {
            const __m256 pv = _mm256_broadcast_ss(p + i * ldp + t);
            acc[i][0] = _mm256_fmadd_ps(pv, x0, acc[i][0]);
            if (NC > 1)
                acc[i][1] = _mm256_fmadd_ps(pv, x1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++) {
        _mm256_maskstore_ps(out + i * ldo, m0, acc[i][0]);
        if (NC > 1)
            _mm256_maskstore_ps(out + i * ldo + 8, m1, acc[i][1]);
    }
}

#define WSUM_KV_CASE(mr, dt) \
    case mr: \
        if (nc == 2) \
            wsum_kv_tile(p + i * ldp, ldp, g, rows, T, r, out + i * ldo + r, ldo, m0, m1, mr, 2, dt); \
        else \
            wsum_kv_tile(p + i * ldp, ldp, g, rows, T, r, out + i * ldo + r, ldo, m0, m1, mr, 1, dt); \
        break;
#define WSUM_KV_BODY(dt) \
    for (int64_t r = 0; r < n; r += 16) { \
        const __m256i m0 = mask8(n - r), m1 = mask8(n - r - 8); \
        const int nc = n - r > 8 ? 2 : 1; \
        for (int64_t i = 0; i < np; i += 6) { \
            switch (np - i < 6 ? (int)(np - i) : 6) { \
                WSUM_KV_CASE(1, dt) WSUM_KV_CASE(2, dt) WSUM_KV_CASE(3, dt) \
                WSUM_KV_CASE(4, dt) WSUM_KV_CASE(5, dt) WSUM_KV_CASE(6, dt) \
            default: break; \
            } \
        } \
    }

static void wsum_kv_avx2(const float *p, int64_t np, int64_t ldp, const dsv3_kv_layout *g, const uint8_t *rows,
                         int64_t T, float *out, int64_t ldo)
{
    const int64_t n = g->R;
    if (g->dtype == DSV3_KV_BF16) {
        WSUM_KV_BODY(DSV3_KV_BF16)
    } else {
        WSUM_KV_BODY(DSV3_KV_FP8)
    }
}

const dsv3_attend_kernels dsv3_attend_avx2 = {dots_avx2, wsum_avx2, expsum_avx2, dots_kv_avx2, wsum_kv_avx2,
                                              dsv3_wsum_rows_avx2};

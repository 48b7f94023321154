/* AVX-512 attention kernels: the exact order of attend_scalar.c (see attend_kernels.h), with
 * register tiles (dots: 4 queries x 4 rows; wsum: 8 rows x 32 columns) so every loaded cache row
 * or weight row serves several outputs. Tails use masked loads; masked lanes keep their value. */
#include "attend_kernels.h"
#include "kv_rows.h"

#include <immintrin.h>

#define AI static inline __attribute__((always_inline))

AI float hsum16(__m512 v)
{
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    const __m128 a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
    const __m128 a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
    return _mm_cvtss_f32(_mm_add_ss(a2, _mm_shuffle_ps(a2, a2, 1)));
}

AI void dots_tile(const float *a, int64_t lda, const float *b, int64_t ldb, int64_t n, float *out, int64_t ldo,
                  const int MA, const int NB)
{
    __m512 acc[4][4], bv[4];
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            acc[i][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        for (int j = 0; j < NB; j++)
            bv[j] = _mm512_loadu_ps(b + j * ldb + k);
        for (int i = 0; i < MA; i++) {
            const __m512 av = _mm512_loadu_ps(a + i * lda + k);
            for (int j = 0; j < NB; j++)
                acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    if (k < n) {
        const __mmask16 m = (__mmask16)((1u << (n - k)) - 1u);
        for (int j = 0; j < NB; j++)
            bv[j] = _mm512_maskz_loadu_ps(m, b + j * ldb + k);
        for (int i = 0; i < MA; i++) {
            const __m512 av = _mm512_maskz_loadu_ps(m, a + i * lda + k);
            for (int j = 0; j < NB; j++)
                acc[i][j] = _mm512_mask3_fmadd_ps(av, bv[j], acc[i][j], m);
        }
    }
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            out[i * ldo + j] = hsum16(acc[i][j]);
}

#define DOTS_CASE(ma, nb) \
    case (ma) * 8 + (nb): dots_tile(a + i * lda, lda, b + j * ldb, ldb, n, out + i * ldo + j, ldo, ma, nb); break;
#define DOTS_ROW(ma) DOTS_CASE(ma, 1) DOTS_CASE(ma, 2) DOTS_CASE(ma, 3) DOTS_CASE(ma, 4)

/* Rows of b outer, so the 4 loaded rows stay in L1 while every query tile passes over them. */
static void dots_avx512(const float *a, int64_t na, int64_t lda, const float *b, int64_t nb, int64_t ldb,
                        int64_t n, float *out, int64_t ldo)
{
    for (int64_t j = 0; j < nb; j += 4)
        for (int64_t i = 0; i < na; i += 4) {
            const int ma = na - i < 4 ? (int)(na - i) : 4, nbb = nb - j < 4 ? (int)(nb - j) : 4;
            switch (ma * 8 + nbb) {
                DOTS_ROW(1) DOTS_ROW(2) DOTS_ROW(3) DOTS_ROW(4)
            default: break;
            }
        }
}

AI void wsum_tile(const float *p, int64_t ldp, const float *x, int64_t ldx, int64_t T, float *out, int64_t ldo,
                  __mmask16 m0, __mmask16 m1, const int MR, const int NC)
{
    __m512 acc[8][2];
    for (int i = 0; i < MR; i++)
        for (int c = 0; c < NC; c++)
            acc[i][c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * ldx;
        const __m512 x0 = _mm512_maskz_loadu_ps(m0, xt);
        const __m512 x1 = NC > 1 ? _mm512_maskz_loadu_ps(m1, xt + 16) : x0;
        for (int i = 0; i < MR; i++) {
            const __m512 pv = _mm512_set1_ps(p[i * ldp + t]);
            acc[i][0] = _mm512_fmadd_ps(pv, x0, acc[i][0]);
            if (NC > 1)
                acc[i][1] = _mm512_fmadd_ps(pv, x1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++) {
        _mm512_mask_storeu_ps(out + i * ldo, m0, acc[i][0]);
        if (NC > 1)
            _mm512_mask_storeu_ps(out + i * ldo + 16, m1, acc[i][1]);
    }
}

#define WSUM_CASE(mr) \
    case mr: \
        if (nc == 2) \
            wsum_tile(p + i * ldp, ldp, x + r, ldx, T, out + i * ldo + r, ldo, m0, m1, mr, 2); \
        else \
            wsum_tile(p + i * ldp, ldp, x + r, ldx, T, out + i * ldo + r, ldo, m0, m1, mr, 1); \
        break;

static __mmask16 lanes(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u); }

static void wsum_avx512(const float *p, int64_t np, int64_t ldp, const float *x, int64_t ldx, int64_t T, int64_t n,
                        float *out, int64_t ldo)
{
    for (int64_t r = 0; r < n; r += 32) {
        const __mmask16 m0 = lanes(n - r), m1 = n - r > 16 ? lanes(n - r - 16) : 0;
        const int nc = n - r > 16 ? 2 : 1;
        for (int64_t i = 0; i < np; i += 8) {
            switch (np - i < 8 ? (int)(np - i) : 8) {
                WSUM_CASE(1) WSUM_CASE(2) WSUM_CASE(3) WSUM_CASE(4)
                WSUM_CASE(5) WSUM_CASE(6) WSUM_CASE(7) WSUM_CASE(8)
            default: break;
            }
        }
    }
}

/* dsv3_mla_exp on 16 lanes: the same operations in the same order. */
AI __m512 exp16(__m512 x)
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

static float expsum_avx512(float *x, int64_t n, float m)
{
    const __m512 mv = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 v = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), mv));
        _mm512_storeu_ps(x + j, v);
        acc = _mm512_add_ps(acc, v);
    }
    if (j < n) {
        const __mmask16 k = lanes(n - j);
        const __m512 v = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), mv));
        _mm512_mask_storeu_ps(x + j, k, v);
        acc = _mm512_mask_add_ps(acc, k, acc, v);
    }
    return hsum16(acc);
}

/* ---- bf16 / fp8 cache rows, converted in registers (the f32 values dsv3_kv_elem gives) ---- */

AI __m512 bf16x16(const uint8_t *p)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* 16 e4m3fn codes -> f32, exact, equal to dsv3_e4m3_to_f32 bit for bit (NaN codes: sign | 0x7fc00000): the
 * code in the top byte, an arithmetic shift by 4 puts exponent|mantissa under the f32 fields with the sign
 * kept, then x 2^(127-7) (exact; e4m3 subnormals arrive as f32 subnormals). Fewer operations than
 * dsv3_e4m3x16_to_f32, which matters here: a code is decoded once per 8 heads. */
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

/* Tiles of up to 8 queries x 2 rows (a head group is 8 heads): each converted row chunk serves 8 FMAs. */
AI void dots_kv_tile(const float *a, int64_t lda, const dsv3_kv_layout *g, const uint8_t *b, float *out, int64_t ldo,
                     const int MA, const int NB, const int DT)
{
    const int64_t n = g->R + g->P, rb = g->row_bytes;
    __m512 acc[8][2], bv[2];
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            acc[i][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        for (int j = 0; j < NB; j++)
            bv[j] = kv_load16(g, b + j * rb, k, 16, DT);
        for (int i = 0; i < MA; i++) {
            const __m512 av = _mm512_loadu_ps(a + i * lda + k);
            for (int j = 0; j < NB; j++)
                acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    if (k < n) {
        const __mmask16 m = (__mmask16)((1u << (n - k)) - 1u);
        for (int j = 0; j < NB; j++)
            bv[j] = kv_load16(g, b + j * rb, k, n - k, DT);
        for (int i = 0; i < MA; i++) {
            const __m512 av = _mm512_maskz_loadu_ps(m, a + i * lda + k);
            for (int j = 0; j < NB; j++)
                acc[i][j] = _mm512_mask3_fmadd_ps(av, bv[j], acc[i][j], m);
        }
    }
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            out[i * ldo + j] = hsum16(acc[i][j]);
}

#define DOTS_KV_CASE(ma, nb, dt) \
    case (ma) * 4 + (nb): dots_kv_tile(a + i * lda, lda, g, rows + j * g->row_bytes, out + i * ldo + j, ldo, ma, nb, dt); break;
#define DOTS_KV_ROW(ma, dt) DOTS_KV_CASE(ma, 1, dt) DOTS_KV_CASE(ma, 2, dt)
#define DOTS_KV_BODY(dt) \
    for (int64_t j = 0; j < nb; j += 2) \
        for (int64_t i = 0; i < na; i += 8) { \
            const int ma = na - i < 8 ? (int)(na - i) : 8, nbb = nb - j < 2 ? (int)(nb - j) : 2; \
            switch (ma * 4 + nbb) { \
                DOTS_KV_ROW(1, dt) DOTS_KV_ROW(2, dt) DOTS_KV_ROW(3, dt) DOTS_KV_ROW(4, dt) \
                DOTS_KV_ROW(5, dt) DOTS_KV_ROW(6, dt) DOTS_KV_ROW(7, dt) DOTS_KV_ROW(8, dt) \
            default: break; \
            } \
        }

static void dots_kv_avx512(const float *a, int64_t na, int64_t lda, const dsv3_kv_layout *g, const uint8_t *rows,
                           int64_t nb, float *out, int64_t ldo)
{
    if (g->dtype == DSV3_KV_BF16) {
        DOTS_KV_BODY(DSV3_KV_BF16)
    } else {
        DOTS_KV_BODY(DSV3_KV_FP8)
    }
}

AI void wsum_kv_tile(const float *p, int64_t ldp, const dsv3_kv_layout *g, const uint8_t *rows, int64_t T, int64_t r,
                     float *out, int64_t ldo, __mmask16 m0, __mmask16 m1, const int MR, const int NC, const int DT)
{
    __m512 acc[8][2];
    for (int i = 0; i < MR; i++)
        for (int c = 0; c < NC; c++)
            acc[i][c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < T; t++) {
        const uint8_t *row = rows + t * g->row_bytes;
        const __m512 x0 = kv_load16(g, row, r, g->R - r, DT);
        const __m512 x1 = NC > 1 ? kv_load16(g, row, r + 16, g->R - r - 16, DT) : x0;
        for (int i = 0; i < MR; i++) {
            const __m512 pv = _mm512_set1_ps(p[i * ldp + t]);
            acc[i][0] = _mm512_fmadd_ps(pv, x0, acc[i][0]);
            if (NC > 1)
                acc[i][1] = _mm512_fmadd_ps(pv, x1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++) {
        _mm512_mask_storeu_ps(out + i * ldo, m0, acc[i][0]);
        if (NC > 1)
            _mm512_mask_storeu_ps(out + i * ldo + 16, m1, acc[i][1]);
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
    for (int64_t r = 0; r < n; r += 32) { \
        const __mmask16 m0 = lanes(n - r), m1 = n - r > 16 ? lanes(n - r - 16) : 0; \
        const int nc = n - r > 16 ? 2 : 1; \
        for (int64_t i = 0; i < np; i += 8) { \
            switch (np - i < 8 ? (int)(np - i) : 8) { \
                WSUM_KV_CASE(1, dt) WSUM_KV_CASE(2, dt) WSUM_KV_CASE(3, dt) WSUM_KV_CASE(4, dt) \
                WSUM_KV_CASE(5, dt) WSUM_KV_CASE(6, dt) WSUM_KV_CASE(7, dt) WSUM_KV_CASE(8, dt) \
            default: break; \
            } \
        } \
    }

static void wsum_kv_avx512(const float *p, int64_t np, int64_t ldp, const dsv3_kv_layout *g, const uint8_t *rows,
                           int64_t T, float *out, int64_t ldo)
{
    const int64_t n = g->R;
    if (g->dtype == DSV3_KV_BF16) {
        WSUM_KV_BODY(DSV3_KV_BF16)
    } else {
        WSUM_KV_BODY(DSV3_KV_FP8)
    }
}

const dsv3_attend_kernels dsv3_attend_avx512 = {dots_avx512, wsum_avx512, expsum_avx512, dots_kv_avx512,
                                                wsum_kv_avx512, dsv3_wsum_rows_avx512};

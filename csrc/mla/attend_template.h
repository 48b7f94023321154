/* The attention kernels' bodies, shared by attend_avx2.c and attend_avx512.c: dots, wsum and expsum over
 * f32 rows and over bf16 / fp8 latent-cache rows (attend_kernels.h), in the exact order of
 * attend_scalar.c. One tile body serves the f32 and the cache-row variant: DT is the row kind, a
 * compile-time constant (ROW_F32, or the cache layout's dtype), and only the row load differs.
 *
 * The including file defines two vector vocabularies:
 *  - 16 lanes (the contract's lanes: dots and expsum), type V: v_zero, v_set1, v_load (16 floats),
 *    v_load_n (the first n, 0 < n < 16; zeros after), v_store, v_store_n, v_add, v_sub, v_fma,
 *    v_fma_n (the tail's fused multiply-add, lanes >= n of a and b are zero), v_and_n (lanes >= n
 *    zeroed), v_exp (dsv3_mla_exp per lane), v_hsum (the contract's pairwise tree) and
 *    kv_load(g, row, k, lim, DT) (elements [k, k+16) of a cache row as f32, lanes >= lim zero);
 *  - the native width WL (wsum: each output one chain, so any width), type W with masks WM: w_zero,
 *    w_lanes(left) (the lanes < left; none when left <= 0), w_maskload, w_maskstore, w_bcast (one float
 *    to every lane), w_fma and kvw_load (as kv_load, WL elements);
 * and the tiles: DOTS_MA x DOTS_NB (f32 rows), DOTS_KV_MA x DOTS_KV_NB (cache rows), WSUM_MR p rows x 2
 * native vectors, with DOTS_CASES(X), DOTS_KV_CASES(X) (X(ma, nb) for every tile shape: UPTO below)
 * and WSUM_CASES(X) (X(mr) for mr = 1 .. WSUM_MR); ATTEND_TABLE and WSUM_ROWS_FN name the table and
 * its weight-row wsum. */
#include "attend_kernels.h"
#include "kv_rows.h"

#define ROW_F32 (-1) /* DT of plain f32 rows */

/* X(m, 1) .. X(m, k) and the like: the tile shapes of a switch */
#define UPTO_1(X, m) X(m, 1)
#define UPTO_2(X, m) UPTO_1(X, m) X(m, 2)
#define UPTO_3(X, m) UPTO_2(X, m) X(m, 3)
#define UPTO_4(X, m) UPTO_3(X, m) X(m, 4)
#define UPTO_6(X, m) UPTO_4(X, m) X(m, 5) X(m, 6)
#define UPTO_8(X, m) UPTO_6(X, m) X(m, 7) X(m, 8)
#define EACH_1(R, X) R(X, 1)
#define EACH_2(R, X) EACH_1(R, X) R(X, 2)
#define EACH_3(R, X) EACH_2(R, X) R(X, 3)
#define EACH_4(R, X) EACH_3(R, X) R(X, 4)
#define EACH_6(R, X) EACH_4(R, X) R(X, 5) R(X, 6)
#define EACH_8(R, X) EACH_6(R, X) R(X, 7) R(X, 8)

/* Elements [k, k+16) of row `row` (lanes >= lim zero): f32 rows or cache rows. */
AI V row_load(const dsv3_kv_layout *g, const uint8_t *row, int64_t k, int64_t lim, const int DT)
{
    if (DT == ROW_F32)
        return lim >= 16 ? v_load((const float *)(const void *)row + k)
                         : v_load_n((const float *)(const void *)row + k, lim);
    return kv_load(g, row, k, lim, DT);
}

AI W roww_load(const dsv3_kv_layout *g, const uint8_t *row, int64_t k, int64_t lim, WM m, const int DT)
{
    if (DT == ROW_F32)
        return w_maskload((const float *)(const void *)row + k, m);
    return kvw_load(g, row, k, lim, DT);
}

/* A tile of MA queries (a rows) x NB rows of b (stride rb bytes) over n values. */
AI void dots_tile(const float *a, int64_t lda, const dsv3_kv_layout *g, const uint8_t *b, int64_t rb, int64_t n,
                  float *out, int64_t ldo, const int MA, const int NB, const int DT)
{
    V acc[DOTS_MAX_MA][DOTS_MAX_NB], bv[DOTS_MAX_NB];
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            acc[i][j] = v_zero();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        for (int j = 0; j < NB; j++)
            bv[j] = row_load(g, b + j * rb, k, 16, DT);
        for (int i = 0; i < MA; i++) {
            const V av = v_load(a + i * lda + k);
            for (int j = 0; j < NB; j++)
                acc[i][j] = v_fma(av, bv[j], acc[i][j]);
        }
    }
    if (k < n) {
        for (int j = 0; j < NB; j++)
            bv[j] = row_load(g, b + j * rb, k, n - k, DT);
        for (int i = 0; i < MA; i++) {
            const V av = v_load_n(a + i * lda + k, n - k);
            for (int j = 0; j < NB; j++)
                acc[i][j] = v_fma_n(av, bv[j], acc[i][j], n - k);
        }
    }
    for (int i = 0; i < MA; i++)
        for (int j = 0; j < NB; j++)
            out[i * ldo + j] = v_hsum(acc[i][j]);
}

/* Rows of b outer, so the loaded rows stay in L1 while every query tile passes over them. */
#define DOTS_LOOP(ma_max, nb_max, cases, dt) \
    for (int64_t j = 0; j < nb; j += nb_max) \
        for (int64_t i = 0; i < na; i += ma_max) { \
            const int ma = na - i < ma_max ? (int)(na - i) : ma_max, nbb = nb - j < nb_max ? (int)(nb - j) : nb_max; \
            const float *ai = a + i * lda; \
            const uint8_t *bj = b + j * rb; \
            float *o = out + i * ldo + j; \
            switch (ma * 16 + nbb) { \
                cases(DOTS_CASE_##dt) \
            default: break; \
            } \
        }
#define DOTS_CASE_F32(ma, nb) \
    case (ma) * 16 + (nb): dots_tile(ai, lda, NULL, bj, rb, n, o, ldo, ma, nb, ROW_F32); break;
#define DOTS_CASE_BF16(ma, nb) \
    case (ma) * 16 + (nb): dots_tile(ai, lda, g, bj, rb, n, o, ldo, ma, nb, DSV3_KV_BF16); break;
#define DOTS_CASE_FP8(ma, nb) \
    case (ma) * 16 + (nb): dots_tile(ai, lda, g, bj, rb, n, o, ldo, ma, nb, DSV3_KV_FP8); break;

static void dots(const float *a, int64_t na, int64_t lda, const float *bf, int64_t nb, int64_t ldb, int64_t n,
                 float *out, int64_t ldo)
{
    const uint8_t *b = (const uint8_t *)(const void *)bf;
    const int64_t rb = ldb * (int64_t)sizeof(float);
    DOTS_LOOP(DOTS_MA, DOTS_NB, DOTS_CASES, F32)
}

static void dots_kv(const float *a, int64_t na, int64_t lda, const dsv3_kv_layout *g, const uint8_t *b, int64_t nb,
                    float *out, int64_t ldo)
{
    const int64_t n = g->R + g->P, rb = g->row_bytes;
    if (g->dtype == DSV3_KV_BF16) {
        DOTS_LOOP(DOTS_KV_MA, DOTS_KV_NB, DOTS_KV_CASES, BF16)
    } else {
        DOTS_LOOP(DOTS_KV_MA, DOTS_KV_NB, DOTS_KV_CASES, FP8)
    }
}

/* MR p rows x NC (1 or 2) native vectors of columns [r, r + NC WL) over T rows of x (stride rb bytes). */
AI void wsum_tile(const float *p, int64_t ldp, const dsv3_kv_layout *g, const uint8_t *x, int64_t rb, int64_t T,
                  int64_t r, int64_t n, float *out, int64_t ldo, WM m0, WM m1, const int MR, const int NC, const int DT)
{
    W acc[WSUM_MR][2];
    for (int i = 0; i < MR; i++)
        for (int c = 0; c < NC; c++)
            acc[i][c] = w_zero();
    for (int64_t t = 0; t < T; t++) {
        const uint8_t *row = x + t * rb;
        const W x0 = roww_load(g, row, r, n - r, m0, DT);
        const W x1 = NC > 1 ? roww_load(g, row, r + WL, n - r - WL, m1, DT) : x0;
        for (int i = 0; i < MR; i++) {
            const W pv = w_bcast(p + i * ldp + t);
            acc[i][0] = w_fma(pv, x0, acc[i][0]);
            if (NC > 1)
                acc[i][1] = w_fma(pv, x1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++) {
        w_maskstore(out + i * ldo, m0, acc[i][0]);
        if (NC > 1)
            w_maskstore(out + i * ldo + WL, m1, acc[i][1]);
    }
}

#define WSUM_LOOP(dt) \
    for (int64_t r = 0; r < n; r += 2 * WL) { \
        const WM m0 = w_lanes(n - r), m1 = w_lanes(n - r - WL); \
        const int nc = n - r > WL ? 2 : 1; \
        for (int64_t i = 0; i < np; i += WSUM_MR) { \
            switch (np - i < WSUM_MR ? (int)(np - i) : WSUM_MR) { \
                WSUM_CASES(WSUM_CASE_##dt) \
            default: break; \
            } \
        } \
    }
#define WSUM_CASE_ANY(mr, g, dt) \
    case mr: \
        if (nc == 2) \
            wsum_tile(p + i * ldp, ldp, g, x, rb, T, r, n, out + i * ldo + r, ldo, m0, m1, mr, 2, dt); \
        else \
            wsum_tile(p + i * ldp, ldp, g, x, rb, T, r, n, out + i * ldo + r, ldo, m0, m1, mr, 1, dt); \
        break;
#define WSUM_CASE_F32(mr) WSUM_CASE_ANY(mr, NULL, ROW_F32)
#define WSUM_CASE_BF16(mr) WSUM_CASE_ANY(mr, g, DSV3_KV_BF16)
#define WSUM_CASE_FP8(mr) WSUM_CASE_ANY(mr, g, DSV3_KV_FP8)

static void wsum(const float *p, int64_t np, int64_t ldp, const float *xf, int64_t ldx, int64_t T, int64_t n,
                 float *out, int64_t ldo)
{
    const uint8_t *x = (const uint8_t *)(const void *)xf;
    const int64_t rb = ldx * (int64_t)sizeof(float);
    WSUM_LOOP(F32)
}

static void wsum_kv(const float *p, int64_t np, int64_t ldp, const dsv3_kv_layout *g, const uint8_t *x, int64_t T,
                    float *out, int64_t ldo)
{
    const int64_t n = g->R, rb = g->row_bytes;
    if (g->dtype == DSV3_KV_BF16) {
        WSUM_LOOP(BF16)
    } else {
        WSUM_LOOP(FP8)
    }
}

static float expsum(float *x, int64_t n, float m)
{
    const V mv = v_set1(m);
    V acc = v_zero();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const V e = v_exp(v_sub(v_load(x + j), mv));
        v_store(x + j, e);
        acc = v_add(acc, e);
    }
    if (j < n) {
        const V e = v_and_n(v_exp(v_sub(v_load_n(x + j, n - j), mv)), n - j);
        v_store_n(x + j, e, n - j);
        acc = v_add(acc, e);
    }
    return v_hsum(acc);
}

const dsv3_attend_kernels ATTEND_TABLE = {dots, wsum, expsum, dots_kv, wsum_kv, WSUM_ROWS_FN};

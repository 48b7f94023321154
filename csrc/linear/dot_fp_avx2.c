/* AVX2 fast kernels of the floating-point weight formats (definitions in dot_fp.h).
 *
 * fp8_block: the bf16-hi definition (act_q8.h: x rounded once to bf16, f32 sums), as on AVX-512. 32 e4m3 codes
 * per step become 4 vectors of f32 (code * 2^-120; vector v = codes 4 j + v) with 9 shifts and masks, no shuffle
 * (decode_avx2.h, e4m3x32_raw; full 128-groups unrolled), against x prepared once per call as bf16(x) * 2^56 in
 * the decoder's order (products of at least 2^-70 stay normal): as f32 (DSV3_X_F32_P32, linear.c) up to
 * K = 4096, where x (16 KB) stays in L1 / L2 and each vector meets its codes in one FMA with a memory operand;
 * as bf16 (DSV3_X_BF16_P32: a 32-byte load holds two vectors, one shift and one mask make them f32) above, where
 * an f32 copy (28 KB at K = 7168) no longer stays in L1 beside the weight stream (measured 2026-11-30, one
 * thread: 8.7 against 17.4 GB/s on expert_gate_up). Both layouts hold the same values, so the results are the
 * same. f32 FMA into four partial chains per 128-column group, scaled once per group (DeepSeek's order), 2^64
 * applied once per output. The exact kernel (gemv_template.h) spends 24 instructions and 4 multiplies per 32
 * codes. The NaN codes (S.1111.111, never written by the quantiser) would decode as 480: a weight scanned once
 * (dsv3_weight.nan_free: the model loader's scan, csrc/model/pack_weights.c) runs without checks; otherwise the
 * maximum of the magnitude bytes is tracked per row (2 instructions per 32 codes, 12-15 % of the kernel), and a
 * row that holds one is recomputed by the exact kernel, so it gives NaN as the reference decoder does.
 * Measured 2026-11-30 (BENCHMARKS.md, "fp8 on AVX2 (stop 12)"): one thread, thread CPU time, 2048 x 256 weights
 * in L2: 14.1 -> 20.1 GB/s (K = 7168: 12.4 -> 15.6) against the tracked bf16-x kernel with the 10-instruction
 * decoder; bitwise the same between the tracked and untracked kernels.
 *
 * nvfp4: Q8 activations in DSV3_X_Q8_EO64C (act_q8.c: each 64-block as its 32 even then 32 odd columns, met by
 * the low / high nibbles of the 32 weight bytes; per 16-column block of the full 128-blocks c16 = 12 * (sum of
 * its codes) and its d, in the kernel's lane order), the codes looked up by vpshufb as 2 e2m1 + 12 (u8 0..24)
 * against x as s8, two vpmaddubsw per 64-block (no sign trick: c16 takes the offset out of each exact int32
 * block dot); per 128-block vphaddw + vpmaddwd make 8 int32 lanes, one per 16-column block (see nvfp4_tile),
 * scaled by d * e4m3 block scale (the 8 scale bytes put in lane order and decoded through f16 by one vpshufb,
 * a shift, a mask and vcvtph2ps) with one FMA; scale2 / 2 * 2^8 is applied once per output. A row whose block
 * scales hold a NaN code is found by a scan of its scale bytes first and computed by the reference (NaN). A
 * last 64-block (kb not a multiple of 128) uses 8-column lanes and the sign trick; the K tail after it runs
 * the reference (dsv3_q8_nvfp4_ref_dot). Up to 4 rows of x share one decoded block (fp8: 2). Measured
 * 2026-11-30 (AVX2, one thread, thread CPU time, 2048 x 512 weights resident in L2, M = 1): 46.4 -> 32.9 us
 * per call against the sign-trick kernel with in-loop NaN-checked scale decode, bitwise the same results.
 *
 * Each row's arithmetic is the same whatever the number of rows of x, so a decode row (M = 1) equals the same
 * row of a small batch bit for bit (tests/test_linear.py, test_decode_row_walk_is_bitwise_the_batch_row).
 *
 * Decode (M = 1) walks a thread's rows one after another without software prefetch (one sequential stream,
 * see dot_q8_avx512.c). */
#include <immintrin.h>
#include <stdint.h>

#include "linear/decode_avx2.h"
#include "linear/dot_fp.h"
#include "linear/lin_common.h"

#define MRX 4

AI float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- fp8_block ---- */

/* x rows of a tile: bf16 (DSV3_X_BF16_P32, h) or f32 (DSV3_X_F32_P32, f), the same values bf16(x) * 2^56 */
typedef struct {
    const uint16_t *h[2];
    const float *f[2];
} fp8_x;

/* 32 columns at k of weight rows row[0..nr) against rows [0, mr) of x into the chains p; track: the NaN trackers
 * top (the weight is not known to be free of NaN codes); xf: x in f32 (one FMA with a memory operand per vector,
 * no conversion), else bf16 (low words shifted up, high words masked) */
AI void fp8_step(const int mr, const int nr, const int track, const int xf, const uint8_t *const *row,
                 const fp8_x *x, int64_t k, __m256 (*p)[4], __m256i *top)
{
    __m256 xv[2][4];
    if (!xf)
        for (int i = 0; i < mr; i++)
            for (int h = 0; h < 2; h++) {
                const __m256i xb = _mm256_loadu_si256((const __m256i *)(x->h[i] + k + 16 * h));
                xv[i][2 * h] = _mm256_castsi256_ps(_mm256_slli_epi32(xb, 16));
                xv[i][2 * h + 1] = _mm256_castsi256_ps(_mm256_and_si256(xb, _mm256_set1_epi32((int)0xffff0000u)));
            }
    for (int j = 0; j < nr; j++) {
        const __m256i b = _mm256_loadu_si256((const __m256i *)(row[j] + k));
        if (track)
            top[j] = _mm256_max_epu8(top[j], _mm256_and_si256(b, _mm256_set1_epi8(0x7f)));
        __m256 wv[4];
        e4m3x32_raw(b, wv);
        for (int i = 0; i < mr; i++) /* four chains per (weight row, x row) */
            for (int v = 0; v < 4; v++)
                p[j * mr + i][v] = _mm256_fmadd_ps(xf ? _mm256_loadu_ps(x->f[i] + k + 8 * v) : xv[i][v], wv[v],
                                                   p[j * mr + i][v]);
    }
}

/* Weight rows [n, n + nr), rows [m0, m0 + mr) of x, nr * mr <= 2: each x vector is loaded once for nr weight
 * rows, each weight vector decoded once for mr rows of x. Every (weight row, x row) pair has its own four
 * partial chains and accumulator, so its result is the same whatever tile it is computed in, and the same in
 * either x layout (the same f32 values meet the same decoded codes in the same order). Decode (M = 1) walks
 * single rows: measured 2026-11-30 (AVX2, one thread, thread CPU time, 160 MB of weight copies), pairs of rows
 * took expert_down from 14.7 to 6.3 GB/s (expert_gate_up 13.1 -> 9.2). Returns a mask of the weight rows that
 * hold a NaN code (their y not written; always 0 without track). */
AI int fp8_tile(const int mr, const int nr, const int track, const int xf, const dsv3_lin_args *a, int64_t n,
                int64_t m0)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, Kv = K / 32 * 32, ng = (K + 127) / 128;
    const uint8_t *row[2];
    const float *sc[2];
    fp8_x x;
    __m256 acc[2], p[2][4];
    __m256i top[2];
    const __m256i m7f = _mm256_set1_epi8(0x7f);
    for (int j = 0; j < nr; j++) {
        row[j] = (const uint8_t *)w->data + (n + j) * K;
        sc[j] = (const float *)w->scale + ((n + j) / 128) * ng;
        top[j] = _mm256_setzero_si256();
    }
    for (int i = 0; i < mr; i++) {
        x.h[i] = xf ? NULL : a->xh + (m0 + i) * K;
        x.f[i] = xf ? a->xp + (m0 + i) * K : NULL;
    }
    for (int t = 0; t < mr * nr; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g * 128 < Kv; g++) {
        const int64_t k1 = g * 128 + 128 < Kv ? g * 128 + 128 : Kv;
        for (int t = 0; t < mr * nr; t++)
            p[t][0] = p[t][1] = p[t][2] = p[t][3] = _mm256_setzero_ps();
        if (k1 - g * 128 == 128) { /* a full group: four steps, unrolled */
            fp8_step(mr, nr, track, xf, row, &x, g * 128, p, top);
            fp8_step(mr, nr, track, xf, row, &x, g * 128 + 32, p, top);
            fp8_step(mr, nr, track, xf, row, &x, g * 128 + 64, p, top);
            fp8_step(mr, nr, track, xf, row, &x, g * 128 + 96, p, top);
        } else
            for (int64_t k = g * 128; k < k1; k += 32)
                fp8_step(mr, nr, track, xf, row, &x, k, p, top);
        for (int j = 0; j < nr; j++) {
            const __m256 sv = _mm256_set1_ps(sc[j][g]);
            for (int i = 0; i < mr; i++) {
                const int t = j * mr + i;
                const __m256 ps = _mm256_add_ps(_mm256_add_ps(p[t][0], p[t][1]), _mm256_add_ps(p[t][2], p[t][3]));
                acc[t] = _mm256_fmadd_ps(ps, sv, acc[t]);
            }
        }
    }
    int nan = 0;
    for (int j = 0; j < nr; j++) {
        if (track && _mm256_movemask_epi8(_mm256_cmpeq_epi8(top[j], m7f))) {
            nan |= 1 << j;
            continue;
        }
        float wt[32];
        if (Kv < K) /* < 32 codes (natural order), all in the last group: the reference decode */
            dsv3_formats[DSV3_FMT_FP8_BLOCK].code_row(w, n + j, Kv, K - Kv, wt);
        for (int i = 0; i < mr; i++) {
            float tail = 0.0f;
            for (int64_t q = Kv; q < K; q++)
                tail += (xf ? x.f[i][q] : dsv3_bf16_to_f32(x.h[i][q])) * wt[q - Kv];
            if (Kv < K)
                tail *= sc[j][Kv / 128];
            /* x carries 2^56, the codes 2^-120 */
            a->y[(m0 + i) * w->n + n + j] =
                (hsum8(acc[j * mr + i]) + tail * 0x1p-120f) * 0x1p64f + (a->bias ? a->bias[n + j] : 0.0f);
        }
    }
    return nan;
}

/* A row with a NaN code: the exact kernel (on the caller's f32 x, a->x), which gives NaN. */
static void fp8_exact_row(const dsv3_lin_args *a, int64_t n) { dsv3_gemv_fp8_block_avx2(a, n, n + 1); }

/* Rows [n0, n1), pairs of x rows; track and xf as in fp8_step */
AI void fp8_rows(const int track, const int xf, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    for (int64_t n = n0; n < n1; n++) {
        int nan = 0;
        for (int64_t m0 = 0; m0 < a->m; m0 += 2)
            nan |= a->m - m0 >= 2 ? fp8_tile(2, 1, track, xf, a, n, m0) : fp8_tile(1, 1, track, xf, a, n, m0);
        if (nan)
            fp8_exact_row(a, n);
    }
}

void dsv3_fast_fp8_block_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    if (a->w->nan_free) /* checked once (dsv3_weight_scan_nan): no tracking */
        a->xp ? fp8_rows(0, 1, a, n0, n1) : fp8_rows(0, 0, a, n0, n1);
    else
        a->xp ? fp8_rows(1, 1, a, n0, n1) : fp8_rows(1, 0, a, n0, n1);
}

/* ---- nvfp4 ---- */

/* One 64-block at k (weight bytes p, lane scales ws: each block scale twice) for mr rows of x: 8 int32 lanes
 * of 8 columns. Used for a last 64-block (kb not a multiple of 128). */
AI void nvfp4_block(const int mr, const dsv3_act_q8 *x, const int64_t *xr, int64_t k, const uint8_t *p, __m256 ws,
                    __m256 *acc)
{
    const __m256i lut = _mm256_setr_epi8(LUT16_2E2M1_S8, LUT16_2E2M1_S8), m4 = _mm256_set1_epi8(0x0f);
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i b = _mm256_loadu_si256((const __m256i *)p);
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(b, m4));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(b, 4), m4));
    const __m256i ulo = _mm256_abs_epi8(lo), uhi = _mm256_abs_epi8(hi);
    for (int i = 0; i < mr; i++) {
        const int8_t *q = x->q + xr[i];
        const __m256i xe = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q + k)), lo);
        const __m256i xo = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q + k + 32)), hi);
        const __m256 dl = _mm256_loadu_ps(x->dl + xr[MRX + i] + k / 8);
        const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(ulo, xe), _mm256_maddubs_epi16(uhi, xo));
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), _mm256_mul_ps(dl, ws), acc[i]);
    }
}

/* The doubled e2m1 codes plus 12: u8 0..24 (-0 gives 12, as +0) */
#define LUT16_2E2M1_U12 12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0

/* The 64-block at k (bytes p) decoded once: codes + 12 of the even and odd columns */
typedef struct {
    __m256i lo, hi;
} nv64;

AI nv64 nvfp4_dec64(const uint8_t *p)
{
    const __m256i lut = _mm256_setr_epi8(LUT16_2E2M1_U12, LUT16_2E2M1_U12), m4 = _mm256_set1_epi8(0x0f);
    const __m256i b = _mm256_loadu_si256((const __m256i *)p);
    nv64 d;
    d.lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(b, m4));
    d.hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(b, 4), m4));
    return d;
}

/* 16 int16 lanes of 4 columns: one row of x (codes q at k) against a decoded 64-block, (code + 12) * q summed
 * (pairs <= 2 * 24 * 127, their sum <= 12192) */
AI __m256i nvfp4_p16(const int8_t *q, int64_t k, nv64 d)
{
    return _mm256_add_epi16(_mm256_maddubs_epi16(d.lo, _mm256_loadu_si256((const __m256i *)(q + k))),
                            _mm256_maddubs_epi16(d.hi, _mm256_loadu_si256((const __m256i *)(q + k + 32))));
}

/* The 8 e4m3 block scales of a 128-block as f32 (value * 2^-8) in the lane order 0, 1, 4, 5, 2, 3, 6, 7: one
 * vpshufb puts scale byte j in the high byte of its word (low byte zero), then the f16 placement of
 * e4m3_f16_words (shift right 1, mask) and vcvtph2ps. NaN codes are not special here: the caller checks the
 * row first (nvfp4_nan_row). */
AI __m256 nvfp4_scales8(const uint8_t *s)
{
    const __m128i perm = _mm_setr_epi8(-128, 0, -128, 1, -128, 4, -128, 5, -128, 2, -128, 3, -128, 6, -128, 7);
    const __m128i h = _mm_shuffle_epi8(_mm_loadl_epi64((const __m128i *)s), perm);
    return _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(h, 1), _mm_set1_epi16((short)0xbf80)));
}

/* 1 when one of the nsb block scale bytes s is a NaN code (S.1111.111) */
static int nvfp4_nan_row(const uint8_t *s, int64_t nsb)
{
    const __m256i m7f = _mm256_set1_epi8(0x7f);
    __m256i top = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 32 <= nsb; i += 32)
        top = _mm256_max_epu8(top, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(s + i)), m7f));
    int nan = _mm256_movemask_epi8(_mm256_cmpeq_epi8(top, m7f)) != 0;
    for (; i < nsb; i++)
        nan |= (s[i] & 0x7f) == 0x7f;
    return nan;
}

/* 128-block j (weight bytes w + 64 j, scales s + 8 j) for mr rows of x (codes q[i] + 128 j, Q8 scales of
 * the lanes d[i] + 8 j, compensation c[i] + 8 j) into acc[0..mr) */
AI void nvfp4_b128(const int mr, const uint8_t *w, const uint8_t *s, const int8_t *const *q, const float *const *d,
                   const int32_t *const *c, int64_t j, __m256 *acc)
{
    const __m256i ones = _mm256_set1_epi16(1);
    const nv64 da = nvfp4_dec64(w + 64 * j), db = nvfp4_dec64(w + 64 * j + 32);
    const __m256 ws = nvfp4_scales8(s + 8 * j);
    for (int i = 0; i < mr; i++) {
        const int8_t *qj = q[i] + 128 * j;
        const __m256i cj = _mm256_loadu_si256((const __m256i *)(c[i] + 8 * j));
        const __m256i dot =
            _mm256_sub_epi32(_mm256_madd_epi16(_mm256_hadd_epi16(nvfp4_p16(qj, 0, da), nvfp4_p16(qj, 64, db)), ones), cj);
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(ws, _mm256_loadu_ps(d[i] + 8 * j)), acc[i]);
    }
}

/* Row n, rows [m0, m0 + mr) of x. Per 128-block the two 64-blocks' int16 lanes are summed pairwise (vphaddw; an
 * 8-column sum is at most 8 * 24 * 127 < 2^15) and widened by vpmaddwd to 8 int32 lanes, one per 16-block,
 * in the order 0, 1, 4, 5 | 2, 3, 6, 7; subtracting c16 (12 * the block's x codes, act_q8.c) leaves the exact
 * dot D(b). The block scales are decoded in that order, the Q8 scales are read in it (d16): one convert,
 * multiply and FMA per 128 columns and row, into two accumulators (even / odd 128-blocks). Every row's
 * arithmetic is the same whatever mr, so a decode row (M = 1) equals the same row of a batch bit for bit. */
AI void nvfp4_tile(const int mr, const dsv3_lin_args *a, int64_t n, int64_t m0)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t K = w->k, kb = x->kb, n128 = kb / 128;
    const uint8_t *row = (const uint8_t *)w->data + n * (K / 2), *sc = (const uint8_t *)w->scale + n * (K / 16);
    int64_t xr[2 * MRX]; /* offsets of the x rows in q, then in dl */
    const int8_t *q[MRX];
    const float *d[MRX];
    const int32_t *c[MRX];
    __m256 acc0[MRX], acc1[MRX];
    for (int i = 0; i < mr; i++) {
        xr[i] = (m0 + i) * K;
        xr[MRX + i] = (m0 + i) * x->lanes;
        q[i] = x->q + xr[i];
        d[i] = x->d16 + (m0 + i) * n128 * 8;
        c[i] = x->c16 + (m0 + i) * n128 * 8;
        acc0[i] = acc1[i] = _mm256_setzero_ps();
    }
    int64_t j = 0;
    for (; j + 2 <= n128; j += 2) {
        nvfp4_b128(mr, row, sc, q, d, c, j, acc0);
        nvfp4_b128(mr, row, sc, q, d, c, j + 1, acc1);
    }
    if (j < n128)
        nvfp4_b128(mr, row, sc, q, d, c, j, acc0);
    for (int i = 0; i < mr; i++)
        acc0[i] = _mm256_add_ps(acc0[i], acc1[i]);
    const int64_t k = n128 * 128;
    if (k < kb) { /* one 64-block left: its 4 scales, each twice, for 8-column lanes */
        int32_t s4;
        memcpy(&s4, sc + k / 16, 4);
        const __m256i h = e4m3_f16_words(_mm_unpacklo_epi8(_mm_cvtsi32_si128(s4), _mm_cvtsi32_si128(s4)));
        nvfp4_block(mr, x, xr, k, row + k / 2, _mm256_cvtph_ps(_mm256_castsi256_si128(h)), acc0);
    }
    const float g = w->scale2 * 128.0f; /* scale2 / 2 * 2^8 */
    for (int i = 0; i < mr; i++) {
        const float tail = kb < K ? dsv3_q8_nvfp4_ref_dot(a, m0 + i, n, kb) : 0.0f;
        a->y[(m0 + i) * w->n + n] = hsum8(acc0[i]) * g + tail + (a->bias ? a->bias[n] : 0.0f);
    }
}

void dsv3_q8_nvfp4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const int64_t K = a->w->k;
    for (int64_t n = n0; n < n1; n++) {
        if (nvfp4_nan_row((const uint8_t *)a->w->scale + n * (K / 16), K / 16)) { /* the reference gives NaN */
            for (int64_t m = 0; m < a->m; m++)
                a->y[m * a->w->n + n] = dsv3_q8_nvfp4_ref_dot(a, m, n, 0) + (a->bias ? a->bias[n] : 0.0f);
            continue;
        }
        for (int64_t m0 = 0; m0 < a->m; m0 += MRX)
            switch (a->m - m0 < MRX ? a->m - m0 : MRX) {
            case 1: nvfp4_tile(1, a, n, m0); break;
            case 2: nvfp4_tile(2, a, n, m0); break;
            case 3: nvfp4_tile(3, a, n, m0); break;
            default: nvfp4_tile(4, a, n, m0); break;
            }
    }
}

/* AVX2 fast kernels: Q8 activations (act_q8.c) times int8 / int4 weights with vpmaddubsw + vpmaddwd.
 * vpmaddubsw multiplies u8 by s8 and saturates its pair sums to int16, so:
 *  - int8 (DSV3_X_Q8, natural order; one 32-byte vector = one Q8 block): the sign trick,
 *    u = |w| (|-128| = 128 as u8), s = sign(x, w) = x * sign(w); pair sums <= 2 * 128 * 127 < 2^15;
 *  - int4 (DSV3_X_Q8_EO64): u = nibble ^ 8 = w + 8 in [0, 15], s = x; pair sums <= 2 * 15 * 127, and
 *    the low-nibble (even columns) and high-nibble (odd columns) products add in int16 without overflow;
 *    the offset's share, 8 * d * (sum of the block's codes) times the weight scale, is taken out once per
 *    output from the layout's e / e4 arrays (q8_corr), not per block.
 * vpmaddwd with ones widens to int32 lanes (int4: lane l of a 64-block = natural columns 8l..8l+7),
 * which are converted and scaled by their block's d times the weight scale in f32 (int4 group 128: the
 * two 64-blocks of a group summed with their d first, then one multiply by the group's scale). M = 1
 * walks the rows one after another (q8_row1); M > 1 runs, with the same arithmetic, tiles of one row of x by up
 * to 4 weight rows (int4: q8_tile), or for int8 K segments of 4 x 2 tiles (q8i8_block). The K tail runs the
 * reference (dsv3_q8_ref_dot). */
#include <immintrin.h>
#include <stdint.h>

#include "linear/act_q8.h"
#include "linear/lin_common.h"

#define QNR 4
#define PF(p, rowbytes) \
    _mm_prefetch((const char *)(uintptr_t)((uintptr_t)(p) + (uintptr_t)(QNR * (rowbytes))), _MM_HINT_T0)

/* The sums of 4 accumulators as [s(a), s(b), s(c), s(d)], one fixed tree for every row (so a row's
 * result does not depend on which rows share its call): (v0 + v2) + (v1 + v3) per 128-bit half, then
 * the halves. */
AI __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    const __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b)); /* a02 b02 a13 b13 */
    const __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    const __m256d abd = _mm256_castps_pd(ab), cdd = _mm256_castps_pd(cd);
    const __m256 s = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(abd, cdd)), _mm256_castpd_ps(_mm256_unpackhi_pd(abd, cdd)));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* sum_i u[i] * v[i] over i < cnt as 8 lanes (lane l: i = l mod 8, in order) */
AI __m256 dot_lanes(const float *u, const float *v, int64_t cnt)
{
    __m256 c = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= cnt; i += 8)
        c = _mm256_fmadd_ps(_mm256_loadu_ps(u + i), _mm256_loadu_ps(v + i), c);
    if (i < cnt) {
        float tu[8] = {0}, tv[8] = {0};
        for (int64_t t = i; t < cnt; t++) {
            tu[t - i] = u[t];
            tv[t - i] = v[t];
        }
        c = _mm256_fmadd_ps(_mm256_loadu_ps(tu), _mm256_loadu_ps(tv), c);
    }
    return c;
}

/* int4: the offset compensation of x row r for weight row n (act_q8.c's e / e4 times the weight scale
 * of each group), as 8 lanes to add to the output's accumulator */
AI __m256 q8_corr(const dsv3_lin_args *a, int64_t r, int64_t n, int64_t ng)
{
    const dsv3_act_q8 *x = a->q8;
    const int64_t ne = x->kb / DSV3_Q8_BLOCK, ne4 = (x->kb + 127) / 128;
    const float *s = (const float *)a->w->scale + n * ng;
    return a->w->group == 128 ? dot_lanes(x->e4 + r * ne4, s, ne4) : dot_lanes(x->e + r * ne, s, ne);
}

/* int32 lanes of one int4 64-block: (w + 8) * q summed over each lane's 8 columns */
AI __m256i int4_dot(const uint8_t *p, const int8_t *xq)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    const __m256i b = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), _mm256_set1_epi8((char)0x88));
    const __m256i lo = _mm256_and_si256(b, m4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
    const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xq)),
                                         _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xq + 32))));
    return _mm256_madd_epi16(p16, ones);
}

/* int4: acc += the columns [k, k + 128) (k + 64 < kb: both 64-blocks, else the first only) of weight row
 * p (its bytes from k / 2) against x row xq / dl (from column / lane k), sg = the row's scales of k onwards */
AI __m256 int4_step(const uint8_t *p, const int8_t *xq, const float *dl, int64_t group, const float *sg, int two,
                    __m256 acc)
{
    if (group == 128) { /* one scale for both 64-blocks */
        __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(int4_dot(p, xq)), _mm256_loadu_ps(dl));
        if (two)
            t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(int4_dot(p + 32, xq + 64)), _mm256_loadu_ps(dl + 8), t);
        return _mm256_fmadd_ps(t, _mm256_set1_ps(sg[0]), acc);
    }
    for (int h = 0; h < 1 + two; h++) { /* group 32: scales of columns 0-31 and 32-63 of each 64-block */
        const __m256 sv = _mm256_set_m128(_mm_set1_ps(sg[2 * h + 1]), _mm_set1_ps(sg[2 * h]));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(int4_dot(p + 32 * h, xq + 64 * h)),
                              _mm256_mul_ps(_mm256_loadu_ps(dl + 8 * h), sv), acc);
    }
    return acc;
}

/* int8: acc += the 32-column block at k of weight row p against x row xq (sign trick), times its d */
AI __m256 int8_step(const uint8_t *p, const int8_t *xq, float d, __m256 acc)
{
    const __m256i wv = _mm256_loadu_si256((const __m256i *)p), xv = _mm256_loadu_si256((const __m256i *)xq);
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1))), _mm256_set1_ps(d), acc);
}

/* y[r, n] from the row's sum: weight scale (int8: one per row), K tail (reference), bias */
AI float row_out(const dsv3_lin_args *a, int64_t r, int64_t n, int64_t kb, float sum)
{
    const dsv3_weight *w = a->w;
    const float s = w->fmt == DSV3_FMT_INT8 ? ((const float *)w->scale)[n] : 1.0f;
    const float tail = kb < w->k ? dsv3_q8_ref_dot(a, r, n, kb) : 0.0f;
    return sum * s + tail + (a->bias ? a->bias[n] : 0.0f);
}

/* columns the SIMD blocks cover: int4 the layout's full 64-blocks, int8 the full 32-blocks */
AI int64_t simd_cols(const int is4, const dsv3_lin_args *a) { return is4 ? a->q8->kb : a->w->k / 32 * 32; }

AI void q8_tile(const int is4, const int nr, const dsv3_lin_args *a, int64_t n0, int64_t r, int64_t ng)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t K = w->k, rowb = is4 ? K / 2 : K, nb = (K + 31) / 32, kb = simd_cols(is4, a);
    const int8_t *xq = x->q + r * K;
    const uint8_t *row[QNR];
    __m256 acc[QNR];
    for (int j = 0; j < nr; j++) {
        row[j] = (const uint8_t *)w->data + (n0 + j) * rowb;
        acc[j] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < kb; k += is4 ? 128 : 32)
        for (int j = 0; j < nr; j++) {
            const uint8_t *p = row[j] + (is4 ? k / 2 : k);
            PF(p, rowb);
            if (is4)
                acc[j] = int4_step(p, xq + k, x->dl + r * x->lanes + k / 8, w->group,
                                   (const float *)w->scale + (n0 + j) * ng + k / w->group, k + 64 < kb, acc[j]);
            else
                acc[j] = int8_step(p, xq + k, x->d[r * nb + k / 32], acc[j]);
        }
    if (is4)
        for (int j = 0; j < nr; j++)
            acc[j] = _mm256_add_ps(acc[j], q8_corr(a, r, n0 + j, ng));
    float sum[4];
    _mm_storeu_ps(sum, hsum4(acc[0], acc[nr > 1], acc[nr > 2 ? 2 : 0], acc[nr > 3 ? 3 : 0]));
    for (int j = 0; j < nr; j++)
        a->y[r * w->n + n0 + j] = row_out(a, r, n0 + j, kb, sum[j]);
}

/* int8, M > 1: rows [r0, r0 + mb) of x by weight rows [n0, n0 + nb), the 32-column blocks walked in segments of
 * Q8_SEGB (the rows' segments stay in L1; the weight rows' next segments are prefetched into L2), in tiles of up to
 * 4 rows of x by 2 weight rows: |w| once per weight block for the tile's rows (q8_tile recomputes it per row of x),
 * each pair's accumulator advanced block by block with int8_step's operations (so every row's bits are q8_row1's:
 * one chain in block order, then hsum4 and row_out). P holds the accumulators between segments. */
#define Q8_SEGB 32 /* blocks per segment (x: up to Q8_MB rows of 1 KB) */
#define Q8_MB 12   /* rows of x per block of rows */

AI void q8i8_tile(const int mr, const int nr, const dsv3_lin_args *a, const uint8_t *const *row, int64_t r0,
                  int64_t b0, int64_t b1, __m256 (*P)[QNR], int j0)
{
    const dsv3_act_q8 *x = a->q8;
    const int64_t K = a->w->k, nbk = (K + 31) / 32;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4][2];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            acc[i][j] = P[i][j0 + j];
    for (int64_t b = b0; b < b1; b++) {
        __m256i wv[2], uw[2];
        for (int j = 0; j < nr; j++) {
            wv[j] = _mm256_loadu_si256((const __m256i *)(row[j] + 32 * b));
            uw[j] = _mm256_abs_epi8(wv[j]);
        }
        for (int i = 0; i < mr; i++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + (r0 + i) * K + 32 * b));
            const __m256 dv = _mm256_set1_ps(x->d[(r0 + i) * nbk + b]);
            for (int j = 0; j < nr; j++) {
                const __m256i p16 = _mm256_maddubs_epi16(uw[j], _mm256_sign_epi8(xv, wv[j]));
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), dv, acc[i][j]);
            }
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            P[i][j0 + j] = acc[i][j];
}

AI void q8i8_block(const dsv3_lin_args *a, int64_t n0, int nb, int64_t r0, int mb)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, kb = simd_cols(0, a), nbv = kb / 32;
    const uint8_t *row[QNR];
    __m256 P[Q8_MB][QNR];
    for (int j = 0; j < nb; j++)
        row[j] = (const uint8_t *)w->data + (n0 + j) * K;
    for (int i = 0; i < mb; i++)
        for (int j = 0; j < QNR; j++)
            P[i][j] = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < nbv; b0 += Q8_SEGB) {
        const int64_t b1 = b0 + Q8_SEGB < nbv ? b0 + Q8_SEGB : nbv;
        /* the segment two ahead, past a row's end the same row of the next item (rows are contiguous) */
        const int64_t o = 32 * (b0 + 2 * Q8_SEGB), d = o < K ? o : o + (nb - 1) * K;
        for (int j = 0; j < nb; j++)
            for (int64_t c = 0; c < 32 * Q8_SEGB; c += 64)
                _mm_prefetch((const char *)row[j] + d + c, _MM_HINT_T1);
        for (int i0 = 0; i0 < mb; i0 += 4) {
            const int mr = mb - i0 < 4 ? mb - i0 : 4;
            for (int j0 = 0; j0 < nb; j0 += 2) {
                const uint8_t *const *rj = row + j0;
                switch (mr * 2 + (nb - j0 < 2 ? 1 : 2)) {
                case 10: q8i8_tile(4, 2, a, rj, r0 + i0, b0, b1, P + i0, j0); break;
                case 9: q8i8_tile(4, 1, a, rj, r0 + i0, b0, b1, P + i0, j0); break;
                case 8: q8i8_tile(3, 2, a, rj, r0 + i0, b0, b1, P + i0, j0); break;
                case 7: q8i8_tile(3, 1, a, rj, r0 + i0, b0, b1, P + i0, j0); break;
                case 6: q8i8_tile(2, 2, a, rj, r0 + i0, b0, b1, P + i0, j0); break;
                case 5: q8i8_tile(2, 1, a, rj, r0 + i0, b0, b1, P + i0, j0); break;
                case 4: q8i8_tile(1, 2, a, rj, r0 + i0, b0, b1, P + i0, j0); break;
                default: q8i8_tile(1, 1, a, rj, r0 + i0, b0, b1, P + i0, j0); break;
                }
            }
        }
    }
    for (int i = 0; i < mb; i++) {
        float sum[4];
        _mm_storeu_ps(sum, hsum4(P[i][0], P[i][nb > 1], P[i][nb > 2 ? 2 : 0], P[i][nb > 3 ? 3 : 0]));
        for (int j = 0; j < nb; j++)
            a->y[(r0 + i) * w->n + n0 + j] = row_out(a, r0 + i, n0 + j, kb, sum[j]);
    }
}

/* One weight row at M = 1 (x row 0), with its compensation: q8_tile's arithmetic as a pointer walk. */
AI __m256 q8_row1(const int is4, const dsv3_lin_args *a, int64_t n, int64_t ng)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t kb = simd_cols(is4, a);
    const uint8_t *p = (const uint8_t *)w->data + n * (is4 ? w->k / 2 : w->k);
    const int8_t *xq = x->q;
    __m256 acc = _mm256_setzero_ps();
    if (!is4) {
        for (int64_t b = 0; b < kb / 32; b++)
            acc = int8_step(p + 32 * b, xq + 32 * b, x->d[b], acc);
        return acc;
    }
    const float *sg = (const float *)w->scale + n * ng, *dl = x->dl;
    const int64_t gps = 128 / w->group; /* groups per 128-column step */
    for (int64_t k = 0; k < kb; k += 128, p += 64, xq += 128, dl += 16, sg += gps)
        acc = int4_step(p, xq, dl, w->group, sg, k + 64 < kb, acc);
    return _mm256_add_ps(acc, q8_corr(a, 0, n, ng));
}

/* Decode (M = 1): one weight row after another, no software prefetch (one sequential stream over the
 * thread's contiguous rows; see dot_q8_avx512.c), rows in groups of 4 for one reduction tree (hsum4). */
AI void q8_rows(const int is4, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const int64_t ng = is4 ? (a->w->k + a->w->group - 1) / a->w->group : 1, kb = simd_cols(is4, a);
    if (a->m == 1) {
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            const __m256 r0 = q8_row1(is4, a, n, ng), r1 = q8_row1(is4, a, n + 1, ng);
            const __m256 r2 = q8_row1(is4, a, n + 2, ng), r3 = q8_row1(is4, a, n + 3, ng);
            float sum[4];
            _mm_storeu_ps(sum, hsum4(r0, r1, r2, r3));
            for (int j = 0; j < 4; j++)
                a->y[n + j] = row_out(a, 0, n + j, kb, sum[j]);
        }
        for (; n < n1; n++) {
            const __m256 r = q8_row1(is4, a, n, ng);
            a->y[n] = row_out(a, 0, n, kb, _mm_cvtss_f32(hsum4(r, r, r, r)));
        }
        return;
    }
    if (!is4) {
        for (int64_t n = n0; n < n1; n += QNR)
            for (int64_t r = 0; r < a->m; r += Q8_MB)
                q8i8_block(a, n, n1 - n < QNR ? (int)(n1 - n) : QNR, r, a->m - r < Q8_MB ? (int)(a->m - r) : Q8_MB);
        return;
    }
    for (int64_t n = n0; n < n1; n += QNR) {
        const int64_t nr = n1 - n < QNR ? n1 - n : QNR;
        for (int64_t r = 0; r < a->m; r++)
            switch (nr) {
            case 1: q8_tile(is4, 1, a, n, r, ng); break;
            case 2: q8_tile(is4, 2, a, n, r, ng); break;
            case 3: q8_tile(is4, 3, a, n, r, ng); break;
            default: q8_tile(is4, 4, a, n, r, ng); break;
            }
    }
}

void dsv3_q8_int8_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1) { q8_rows(0, a, n0, n1); }
void dsv3_q8_int4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1) { q8_rows(1, a, n0, n1); }

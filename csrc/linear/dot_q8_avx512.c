/* AVX-512 VNNI fast kernels: Q8 activations (act_q8.c) times int8 / int4 weights with vpdpbusd, which
 * multiplies u8 by s8:
 *  - int8 (DSV3_X_Q8_L4): the sign trick, u = |w| (|-128| = 128 as u8), s = x with the sign of w (a
 *    masked subtract): each int32 lane holds the exact block-partial sum of w * q; lane l of a 64-block =
 *    columns 4l..4l+3;
 *  - int4 (DSV3_X_Q8_EO128): u = nibble ^ 8 = w + 8, s = x; the low nibbles meet the 64 even columns of a
 *    128-block and the high nibbles the 64 odd ones, so lane l = natural columns 8l..8l+7 and holds the
 *    exact sum of (w + 8) * q; the offset's share, 8 * d * (sum of the block's codes) times the weight
 *    scale, is taken out once per output from the layout's e / e4 arrays (q8_corr), not per block.
 * Per layout block the int32 lanes are converted and scaled by their block's d (dl) times the weight
 * scale, in f32, and accumulated. M = 1 walks rows one after another (q8_row1); M > 1 runs tiles of up
 * to 2 rows of x by 4 weight rows with the same per-lane arithmetic, and the next tile's rows are
 * prefetched. The K tail after the last full block runs the reference (dsv3_q8_ref_dot). */
#include <immintrin.h>
#include <stdint.h>

#include "linear/act_q8.h"
#include "linear/lin_common.h"

#define QMR 2
#define QNR 4
#define PF(p, rowbytes) \
    _mm_prefetch((const char *)(uintptr_t)((uintptr_t)(p) + (uintptr_t)(QNR * (rowbytes))), _MM_HINT_T0)

/* int4 weight scales of the 16 lanes of one 128-block (lane l -> group of column 8l), from the row's
 * scales of that block onwards (sg = row scales + k / group) */
AI __m512 int4_scales(int64_t group, const float *sg)
{
    if (group == 128)
        return _mm512_set1_ps(sg[0]);
    const __m512 s4 = _mm512_castps128_ps512(_mm_loadu_ps(sg));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), s4);
}

/* The sums of 4 accumulators as [s(a), s(b), s(c), s(d)], one fixed tree for every row (so a row's
 * result does not depend on which rows share its call): within each 128-bit lane (v0 + v2) + (v1 + v3),
 * then lanes (l0 + l2) + (l1 + l3). */
AI __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b)); /* a02 b02 a13 b13 */
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
    const __m512 s = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),  /* a02 b02 c02 d02 */
                                   _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd))); /* + a13 b13 c13 d13 */
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* sum_i u[i] * v[i] over i < cnt as 16 lanes (lane l: i = l mod 16, in order) */
AI __m512 dot_lanes(const float *u, const float *v, int64_t cnt)
{
    __m512 c = _mm512_setzero_ps();
    for (int64_t i = 0; i < cnt; i += 16) {
        const __mmask16 k = cnt - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cnt - i)) - 1);
        c = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, u + i), _mm512_maskz_loadu_ps(k, v + i), c);
    }
    return c;
}

/* int4: the offset compensation of x row r for weight row n (act_q8.c's e / e4 times the weight scale
 * of each 32 / 128-column group), as 16 lanes to add to the output's accumulator */
AI __m512 q8_corr(const dsv3_lin_args *a, int64_t r, int64_t n, int64_t ng)
{
    const dsv3_act_q8 *x = a->q8;
    const int64_t ne = x->kb / DSV3_Q8_BLOCK, ne4 = (x->kb + 127) / 128;
    const float *s = (const float *)a->w->scale + n * ng;
    return a->w->group == 128 ? dot_lanes(x->e4 + r * ne4, s, ne4) : dot_lanes(x->e + r * ne, s, ne);
}

/* 64 weight bytes; int4 as offset nibbles (w ^ 8 = w + 8) */
AI __m512i wload(const int is4, const uint8_t *p)
{
    const __m512i b = _mm512_loadu_si512(p);
    return is4 ? _mm512_xor_si512(b, _mm512_set1_epi8((char)0x88)) : b;
}

/* y[m, n] from the row's sum: weight scale (int8: one per row), K tail (reference), bias. */
AI float row_out(const dsv3_lin_args *a, int64_t m, int64_t n, float sum)
{
    const dsv3_weight *w = a->w;
    const float s = w->fmt == DSV3_FMT_INT8 ? ((const float *)w->scale)[n] : 1.0f;
    const float tail = a->q8->kb < w->k ? dsv3_q8_ref_dot(a, m, n, a->q8->kb) : 0.0f;
    return sum * s + tail + (a->bias ? a->bias[n] : 0.0f);
}

/* acc += (int32 lanes of one layout block) * dl * weight scale: the step shared by every path */
AI __m512 q8_block(const int is4, __m512i wb, const int8_t *xq, __m512 dl, int64_t group, const float *sg, __m512 acc)
{
    const __m512i z = _mm512_setzero_si512();
    if (is4) {
        const __m512i m4 = _mm512_set1_epi8(0x0f);
        const __m512i lo = _mm512_and_si512(wb, m4), hi = _mm512_and_si512(_mm512_srli_epi16(wb, 4), m4);
        const __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo, _mm512_loadu_si512(xq)), hi,
                                              _mm512_loadu_si512(xq + 64));
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dl, int4_scales(group, sg)), acc);
    }
    const __m512i xa = _mm512_loadu_si512(xq); /* int8: the sign trick, |w| times x with w's sign */
    const __m512i sx = _mm512_mask_sub_epi8(xa, _mm512_movepi8_mask(wb), z, xa);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(z, _mm512_abs_epi8(wb), sx)), dl, acc);
}

AI void q8_tile(const int is4, const int mr, const int nr, const dsv3_lin_args *a, int64_t n0, int64_t m0, int64_t ng)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t K = w->k, kb = x->kb, step = is4 ? 128 : 64, rowb = is4 ? K / 2 : K;
    const uint8_t *row[QNR];
    __m512 acc[QMR][QNR];
    for (int j = 0; j < nr; j++)
        row[j] = (const uint8_t *)w->data + (n0 + j) * rowb;
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kb; k += step) {
        __m512 dl[QMR];
        for (int i = 0; i < mr; i++)
            dl[i] = _mm512_loadu_ps(x->dl + (m0 + i) * x->lanes + k / (is4 ? 8 : 4));
        for (int j = 0; j < nr; j++) {
            const uint8_t *p = row[j] + (is4 ? k / 2 : k);
            PF(p, rowb);
            const __m512i wb = wload(is4, p);
            const float *sg = is4 ? (const float *)w->scale + (n0 + j) * ng + k / w->group : NULL;
            for (int i = 0; i < mr; i++)
                acc[i][j] = q8_block(is4, wb, x->q + (m0 + i) * K + k, dl[i], w->group, sg, acc[i][j]);
        }
    }
    for (int i = 0; i < mr; i++) {
        for (int j = 0; j < nr && is4; j++)
            acc[i][j] = _mm512_add_ps(acc[i][j], q8_corr(a, m0 + i, n0 + j, ng));
        float sum[4];
        _mm_storeu_ps(sum, hsum4(acc[i][0], acc[i][nr > 1], acc[i][nr > 2 ? 2 : 0], acc[i][nr > 3 ? 3 : 0]));
        for (int j = 0; j < nr; j++)
            a->y[(m0 + i) * w->n + n0 + j] = row_out(a, m0 + i, n0 + j, sum[j]);
    }
}

#define Q8_TILE_NR(is4, mr)                                                                         \
    switch (nr) {                                                                                   \
    case 1: q8_tile(is4, mr, 1, a, n, m0, ng); break;                                               \
    case 2: q8_tile(is4, mr, 2, a, n, m0, ng); break;                                               \
    case 3: q8_tile(is4, mr, 3, a, n, m0, ng); break;                                               \
    default: q8_tile(is4, mr, 4, a, n, m0, ng); break;                                              \
    }

/* One weight row at M = 1 (x row 0) over the full layout blocks, plus its compensation: q8_tile's
 * arithmetic (M = 1 and tiles give the same bits) as a pointer walk. */
AI __m512 q8_row1(const int is4, const dsv3_lin_args *a, int64_t n, int64_t ng)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t nblk = x->kb / (is4 ? 128 : 64), gpb = is4 ? 128 / w->group : 0; /* groups per block */
    const uint8_t *p = (const uint8_t *)w->data + n * (is4 ? w->k / 2 : w->k);
    const float *sg = is4 ? (const float *)w->scale + n * ng : NULL, *xd = x->dl;
    const int8_t *xq = x->q;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nblk; b++, p += 64, xd += 16, xq += is4 ? 128 : 64, sg += gpb)
        acc = q8_block(is4, wload(is4, p), xq, _mm512_loadu_ps(xd), w->group, sg, acc);
    return is4 ? _mm512_add_ps(acc, q8_corr(a, 0, n, ng)) : acc;
}

/* Decode (M = 1) walks the rows one after another with no software prefetch: a thread's rows are
 * contiguous, so the weights are one sequential stream the hardware prefetchers follow across row
 * ends (x, 1-2 bytes per column with its lane arrays, stays in L1/L2). Measured 2026-11-30 (one
 * thread, best of >= 6 alternating calls, 2048 -> 1024, 1024 -> 2048, 7168 -> 2048, 2048 -> 7168):
 * reading two or four rows at once (x loaded once for them) halved the speed, and a software prefetch
 * 512 B - 8 KB ahead was slower than none. Rows go in groups of 4 so that one reduction tree (hsum4)
 * serves 4 outputs. */
AI void q8_rows(const int is4, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const int64_t ng = is4 ? (a->w->k + a->w->group - 1) / a->w->group : 1;
    if (a->m == 1) {
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            const __m512 r0 = q8_row1(is4, a, n, ng), r1 = q8_row1(is4, a, n + 1, ng);
            const __m512 r2 = q8_row1(is4, a, n + 2, ng), r3 = q8_row1(is4, a, n + 3, ng);
            float sum[4];
            _mm_storeu_ps(sum, hsum4(r0, r1, r2, r3));
            for (int j = 0; j < 4; j++)
                a->y[n + j] = row_out(a, 0, n + j, sum[j]);
        }
        for (; n < n1; n++) {
            const __m512 r = q8_row1(is4, a, n, ng);
            a->y[n] = row_out(a, 0, n, _mm_cvtss_f32(hsum4(r, r, r, r)));
        }
        return;
    }
    for (int64_t n = n0; n < n1; n += QNR) {
        const int64_t nr = n1 - n < QNR ? n1 - n : QNR;
        for (int64_t m0 = 0; m0 < a->m; m0 += QMR) {
            if (a->m - m0 >= 2) {
                Q8_TILE_NR(is4, 2)
            } else {
                Q8_TILE_NR(is4, 1)
            }
        }
    }
}

void dsv3_q8_int8_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { q8_rows(0, a, n0, n1); }
void dsv3_q8_int4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { q8_rows(1, a, n0, n1); }

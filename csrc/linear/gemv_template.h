/* Small-M (decode) weight-only f32-FMA kernel body shared by the AVX2 and AVX-512 files (on AVX-512
 * the table routes bf16/fp8/nvfp4/int8/int4 to the vdpbf16ps kernels of gemv_dot_avx512.c; this
 * body serves f32 there, and every format on AVX2).
 *
 * The including file defines the vector vocabulary (V, VL, V_ZERO, V_LOADU, V_FMA, V_ADD, V_MUL,
 * V_SET1, V_STOREU, V_REDUCE), the in-register decoder DEC(fmt, w, row, k) -> V of VL unscaled codes
 * (optionally DECR/RAW_SCALE, a cheaper decode whose constant factor is folded into the scale, and
 * DEC2/DEC2R, 2 * VL codes per call where an ISA decodes them together more cheaply), and ISA (name
 * suffix). Structure (BLIS-like: the framework owns tiling, the decoder knows registers):
 * threads own disjoint output columns n; for each n the weight row is streamed once from memory
 * per tile of up to 4 rows of x (M <= 4 reads it once, larger M re-reads it from L1/L2).
 * The one-group formats (f32, bf16, int8 weight-only) have their own walk (gemv_rows_onegroup: four FMA
 * chains per row, K segments for M > 1). The others, two schemes chosen per format at compile time:
 *  - epilogue (fp8 dynamic): per K group an fp32 partial dot, then
 *    acc += partial * scale (* activation scale), DeepSeek fp8_gemm's order;
 *  - scaled decode (nvfp4, int4, fp8 weight-only): each decoded vector is multiplied by its group
 *    scale and accumulated directly (no per-group epilogue: cheap for 16/32-wide groups).
 * The K tail (K not a multiple of VL) is decoded once per row by the format table's scalar
 * code_row, outside the hot loops. Horizontal sums have a fixed order. */
#include <string.h>

#include "dsv3_dtypes.h"
#include "linear/lin_kernels.h"

#include "linear/lin_common.h"

#ifndef DECR /* ISAs without raw decoders: exact decode, no extra scale */
#define DECR(f, w, row, k) DEC(f, w, row, k)
#endif
#ifndef RAW_SCALE
#define RAW_SCALE(f) 1.0f
#endif
/* 2 * VL codes per call into *p0, *p1 (an ISA may decode them together more cheaply) */
#ifndef DEC2
#define DEC2(f, w, row, k, p0, p1) (void)(*(p0) = DEC(f, w, row, k), *(p1) = DEC(f, w, row, (k) + VL))
#endif
#ifndef DEC2R
#define DEC2R(f, w, row, k, p0, p1) (void)(*(p0) = DECR(f, w, row, k), *(p1) = DECR(f, w, row, (k) + VL))
#endif

#define MR 4

/* One K group of row n for mr rows of x: acc[i] += scale * (act scale) * sum_k x[i][k] code(n, k). */
AI void gemv_group(dsv3_format f, const int mr, const dsv3_lin_args *a, const uint8_t *row, int64_t n,
                   int64_t m0, const float *const *x, int64_t g, int64_t G, int64_t ng, int64_t klo,
                   int64_t khi, V *acc)
{
    const dsv3_weight *w = a->w;
    const int64_t k0 = g * G > klo ? g * G : klo, kv = g * G + G < khi ? g * G + G : khi;
    V p0[MR], p1[MR];
    (void)n;
    int64_t k = k0;
    for (int i = 0; i < mr; i++)
        p0[i] = p1[i] = V_ZERO();
    for (; k + 2 * VL <= kv; k += 2 * VL) {
        const V w0 = DEC(f, w, row, k), w1 = DEC(f, w, row, k + VL);
        for (int i = 0; i < mr; i++) {
            p0[i] = V_FMA(V_LOADU(x[i] + k), w0, p0[i]);
            p1[i] = V_FMA(V_LOADU(x[i] + k + VL), w1, p1[i]);
        }
    }
    if (k < kv) {
        const V w0 = DEC(f, w, row, k);
        for (int i = 0; i < mr; i++)
            p0[i] = V_FMA(V_LOADU(x[i] + k), w0, p0[i]);
    }
    const float s = gscale(f, w, n, g, ng);
    for (int i = 0; i < mr; i++)
        acc[i] = V_FMA(V_ADD(p0[i], p1[i]), V_SET1(a->xs ? a->xs[(m0 + i) * ng + g] * s : s), acc[i]);
}

/* Small-group formats (nvfp4 G=16, int4 G=32/128): scale the decoded vector (one multiply) and
 * accumulate straight into acc: no per-group partial sums or epilogue. Vectors alternate between
 * accA and accB; with one row of x (decode, M = 1) also between accA[1] and accB[1], so that four
 * FMA chains are in flight (two would bound a row at 2 * VL codes per FMA latency). */
AI void group_scaled_body(dsv3_format f, const int mr, const int raw, const dsv3_lin_args *a, const uint8_t *row,
                          const float *const *x, int64_t k, int64_t kv, V sv, V *accA, V *accB)
{
    const dsv3_weight *w = a->w;
    (void)w;
    if (mr == 1)
        for (; k + 4 * VL <= kv; k += 4 * VL) {
            V w0, w1, w2, w3;
            if (raw) {
                DEC2R(f, w, row, k, &w0, &w1);
                DEC2R(f, w, row, k + 2 * VL, &w2, &w3);
            } else {
                DEC2(f, w, row, k, &w0, &w1);
                DEC2(f, w, row, k + 2 * VL, &w2, &w3);
            }
            accA[0] = V_FMA(V_LOADU(x[0] + k), V_MUL(w0, sv), accA[0]);
            accB[0] = V_FMA(V_LOADU(x[0] + k + VL), V_MUL(w1, sv), accB[0]);
            accA[1] = V_FMA(V_LOADU(x[0] + k + 2 * VL), V_MUL(w2, sv), accA[1]);
            accB[1] = V_FMA(V_LOADU(x[0] + k + 3 * VL), V_MUL(w3, sv), accB[1]);
        }
    for (; k + 2 * VL <= kv; k += 2 * VL) {
        V w0, w1;
        if (raw)
            DEC2R(f, w, row, k, &w0, &w1);
        else
            DEC2(f, w, row, k, &w0, &w1);
        w0 = V_MUL(w0, sv);
        w1 = V_MUL(w1, sv);
        for (int i = 0; i < mr; i++) {
            accA[i] = V_FMA(V_LOADU(x[i] + k), w0, accA[i]);
            accB[i] = V_FMA(V_LOADU(x[i] + k + VL), w1, accB[i]);
        }
    }
    if (k < kv) {
        const V w0 = V_MUL(raw ? DECR(f, w, row, k) : DEC(f, w, row, k), sv);
        for (int i = 0; i < mr; i++)
            accA[i] = V_FMA(V_LOADU(x[i] + k), w0, accA[i]);
    }
}

AI void gemv_group_scaled(dsv3_format f, const int mr, const dsv3_lin_args *a, const uint8_t *row,
                          const float *const *x, int64_t g, int64_t G, float s, int64_t klo, int64_t khi,
                          V *accA, V *accB)
{
    const int64_t k0 = g * G > klo ? g * G : klo, kv = g * G + G < khi ? g * G + G : khi;
    /* raw decode needs scale * 2^bias to stay finite; huge scales take the exact decoder */
    if (s < 0x1p100f / RAW_SCALE(f) * 0x1p27f)
        group_scaled_body(f, mr, 1, a, row, x, k0, kv, V_SET1(s * RAW_SCALE(f)), accA, accB);
    else
        group_scaled_body(f, mr, 0, a, row, x, k0, kv, V_SET1(s), accA, accB);
}

/* One 16-code nvfp4 group: the raw decoder (value / RAW_SCALE) when s * RAW_SCALE is exact (a power of
 * two: only overflow or a subnormal result could lose bits), else the exact one. With VL = 8 the two
 * vectors go to accA and accB (two FMA chains). */
AI void nvfp4_group(dsv3_format f, const int mr, const dsv3_lin_args *a, const uint8_t *row,
                    const float *const *x, int64_t g, float s, V *accA, V *accB)
{
    const float sr = s * RAW_SCALE(f);
    const int raw = sr * (1.0f / RAW_SCALE(f)) == s;
    const V sv = V_SET1(raw ? sr : s);
    (void)a;
    (void)accB;
#if VL == 8
    V w0, w1;
    if (raw)
        DEC2R(f, a->w, row, g * 16, &w0, &w1);
    else
        DEC2(f, a->w, row, g * 16, &w0, &w1);
    w0 = V_MUL(w0, sv);
    w1 = V_MUL(w1, sv);
    for (int i = 0; i < mr; i++) {
        accA[i] = V_FMA(V_LOADU(x[i] + g * 16), w0, accA[i]);
        accB[i] = V_FMA(V_LOADU(x[i] + g * 16 + 8), w1, accB[i]);
    }
#else
    for (int v = 0; v < 16 / VL; v++) {
        const int64_t k = g * 16 + v * VL;
        const V wv = V_MUL(raw ? DECR(f, a->w, row, k) : DEC(f, a->w, row, k), sv);
        for (int i = 0; i < mr; i++)
            accA[i] = V_FMA(V_LOADU(x[i] + k), wv, accA[i]);
    }
#endif
}

/* Scales of groups [g, g+VL) of row n (nvfp4: e4m3 decoded in a vector, times scale2). */
AI void group_scales(dsv3_format f, const dsv3_weight *w, int64_t n, int64_t g, int64_t ng, float *out)
{
    if (f == DSV3_FMT_NVFP4 && g + VL <= ng) {
        V_STOREU(out, V_MUL(DEC(DSV3_FMT_FP8_BLOCK, w, (const uint8_t *)w->scale + n * ng, g), V_SET1(w->scale2)));
        return;
    }
    for (int64_t j = g; j < g + VL && j < ng; j++)
        out[j - g] = gscale(f, w, n, j, ng);
}

/* Row n for rows [m0, m0+mr) of x. Two accumulator sets (even / odd K groups) and two partial sets
 * (even / odd vectors) hide the FMA latency when mr is small; the group loop is unrolled by two so
 * that every register array is indexed by constants. */
AI void gemv_tile(dsv3_format f, const int mr, const dsv3_lin_args *a, int64_t n, int64_t m0, int64_t klo,
                  int64_t khi)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, G = kgroup(f, w), ng = (K + G - 1) / G, Kv = K / VL * VL;
    const int64_t kvh = khi < Kv ? khi : Kv, gend = (kvh + G - 1) / G; /* vector part of the chunk */
    const uint8_t *row = row_ptr(f, w, n);
    const float *x[MR];
    V acc0[MR], acc1[MR]; /* mr == 1 also uses acc0[1], acc1[1] (more FMA chains) */
    for (int i = 0; i < MR; i++)
        acc0[i] = acc1[i] = V_ZERO();
    for (int i = 0; i < mr; i++)
        x[i] = a->x + (m0 + i) * K;
    int64_t g = klo / G;
    if (f == DSV3_FMT_NVFP4) { /* 16-wide groups: two groups per step, scales from a decoded vector */
        float sb[VL];
#if VL == 8
        /* VL = 8 groups per step: one scale vector and one raw-decode check (no per-group scalar work) */
        for (; g % VL == 0 && g + VL <= gend; g += VL) {
            group_scales(f, w, n, g, ng, sb);
            const V s8 = V_LOADU(sb), r8 = V_MUL(s8, V_SET1(RAW_SCALE(f)));
            const int raw = _mm256_movemask_ps(
                                _mm256_cmp_ps(V_MUL(r8, V_SET1(1.0f / RAW_SCALE(f))), s8, _CMP_EQ_OQ)) == 0xff;
            V_STOREU(sb, raw ? r8 : s8);
            /* pairs of groups with a run-time j: the scales are broadcast from memory (a load, not two
             * shuffles on the shuffle ports the decoder already saturates) */
#pragma GCC unroll 1
            for (int j = 0; j < VL; j += 2)
                for (int o = 0; o < 2; o++) { /* group g + j + o; decode (mr = 1): odd groups, second slot */
                    const int64_t k = (g + j + o) * 16, sl = o && mr == 1;
                    V w0, w1;
                    if (raw)
                        DEC2R(f, w, row, k, &w0, &w1);
                    else
                        DEC2(f, w, row, k, &w0, &w1);
                    const V sv = _mm256_broadcast_ss(sb + j + o);
                    w0 = V_MUL(w0, sv);
                    w1 = V_MUL(w1, sv);
                    for (int i = 0; i < mr; i++) {
                        acc0[i + sl] = V_FMA(V_LOADU(x[i] + k), w0, acc0[i + sl]);
                        acc1[i + sl] = V_FMA(V_LOADU(x[i] + k + 8), w1, acc1[i + sl]);
                    }
                }
        }
#endif
        for (; g + 1 < gend; g += 2) {
            if (g % VL == 0)
                group_scales(f, w, n, g, ng, sb);
            nvfp4_group(f, mr, a, row, x, g, sb[g % VL], acc0, acc1);
            nvfp4_group(f, mr, a, row, x, g + 1, sb[(g + 1) % VL], mr == 1 ? acc0 + 1 : acc0,
                        mr == 1 ? acc1 + 1 : acc1);
        }
        if (g < gend) {
            group_scales(f, w, n, g - g % VL, ng, sb);
            nvfp4_group(f, mr, a, row, x, g, sb[g % VL], acc0, acc1);
        }
        g = gend;
    }
    if (f == DSV3_FMT_INT4 || (f == DSV3_FMT_FP8_BLOCK && !a->xs)) {
        float sb[VL];
        for (; g < gend; g += 2) {
            if (g % VL == 0 || g == klo / G)
                group_scales(f, w, n, g - g % VL, ng, sb);
            gemv_group_scaled(f, mr, a, row, x, g, G, sb[g % VL], klo, kvh, acc0, acc1);
            if (g + 1 < gend) {
                if ((g + 1) % VL == 0)
                    group_scales(f, w, n, g + 1, ng, sb);
                gemv_group_scaled(f, mr, a, row, x, g + 1, G, sb[(g + 1) % VL], klo, kvh, acc1, acc0);
            }
        }
        g = gend;
    }
    for (; g + 1 < gend; g += 2) {
        gemv_group(f, mr, a, row, n, m0, x, g, G, ng, klo, kvh, acc0);
        gemv_group(f, mr, a, row, n, m0, x, g + 1, G, ng, klo, kvh, acc1);
    }
    if (g < gend)
        gemv_group(f, mr, a, row, n, m0, x, g, G, ng, klo, kvh, acc0);
    /* K tail (K not a multiple of VL): scalar decode once per row, outside the hot loops so no call
     * clobbers the accumulators there; added after the vector sum in a fixed order. */
    float tail[MR] = {0};
    if (Kv < K && khi >= K) {
        float wt[VL];
        dsv3_formats[f].code_row(w, n, Kv, K - Kv, wt);
        const int64_t gt = Kv / G;
        const float s = gscale(f, w, n, gt, ng);
        for (int i = 0; i < mr; i++) {
            float p = 0.0f;
            for (int64_t j = Kv; j < K; j++)
                p += x[i][j] * wt[j - Kv];
            tail[i] = p * (a->xs ? a->xs[(m0 + i) * ng + gt] * s : s);
        }
    }
    for (int i = 0; i < mr; i++) {
        float *y = a->y + (m0 + i) * w->n + n;
        const V sum = mr == 1 ? V_ADD(V_ADD(acc0[0], acc0[1]), V_ADD(acc1[0], acc1[1])) : V_ADD(acc0[i], acc1[i]);
        const float v = V_REDUCE(sum) + tail[i];
        *y = klo == 0 ? v : *y + v;
        if (khi >= K && a->bias)
            *y += a->bias[n];
    }
}

/* One-group formats (f32, bf16, int8 weight-only: G = K, no activation scale) take their own walk. Its
 * arithmetic, the same for every (row of x, weight row) pair whatever the tile: four FMA chains, chain c summing
 * the vectors v = c mod 4 (v = k / VL) in increasing v, summed (p0 + p1) + (p2 + p3), one multiply by the row
 * scale, the K tail and the reduction (og_out). So results are bitwise independent of M, of the rows beside a
 * row and of the thread count. Two chains bounded the one-row walk at 2 VL codes per FMA latency: bf16 from L2
 * at 27 GB/s on AVX2 (Zen 4, one thread), about the read bandwidth, so decode could not run ahead of its misses;
 * four chains: 34-36 GB/s (llama.cpp's bf16 dot runs four too).
 * Decode (M = 1, gemv_onegroup) walks one weight row at a time (one prefetch stream: walking 2-4 rows of 1-4 KB
 * at once measured slower), or four when the f32 x outgrows 8 KB of L1 (K > 2048: one x load, from L2, for four
 * rows; 16 chains).
 * M > 1 is FMA-bound (8 rows: 8 FMAs per 8 codes). M = 2, 3 with x (M rows of K f32) within OG_X_L1 run whole-K
 * tiles of two rows of x by one weight row (8 chains; a weight row read once, or twice from L1 at M = 3). Beyond,
 * those tiles re-read x from L2 for every weight row, so gemv_og_block walks K in segments of OG_SEG codes (the x
 * segment of up to OG_MB rows and the item's 4 weight-row segments stay in L1, the next ones are prefetched into
 * L2) with tiles of up to 4 rows of x by 2 weight rows (8 accumulators, 2 decodes and 4 x loads per 8 FMAs), one
 * chain at a time: chain c's accumulators are loaded from P, advanced over the segment's vectors v = c mod 4 and
 * stored back, so each pair's four chains add the same products in the same order as the decode walk. Measured
 * (AVX2 on Zen 4, one thread, bf16 weights from memory, CPU time, best of 3, benchmarks/small_m_harness.c,
 * 2026-11-30), segments / whole-K tiles: M = 8 1.4-1.6x, M = 11 1.4-1.5x, M = 4 1.1x (K = 1024) to 1.8x
 * (K = 7168), M = 2 1.75x at K = 7168; but 0.75x at M = 3, K = 1024 and 0.85x at M = 2, K = 2048 (hence OG_X_L1). */
#define OG_SEG (64 * VL) /* codes per K segment (a multiple of 4 VL: every segment starts at chain 0) */
#define OG_MB 12         /* rows of x per block */
#define OG_NB 4          /* weight rows per block (the work item: GEMV_COLS) */
#define OG_PF 2          /* segments of software prefetch ahead */
#define OG_X_L1 16384    /* bytes of x (M rows of K f32) up to which M = 2, 3 run whole-K tiles */

AI int onegroup_walk(dsv3_format f, const dsv3_lin_args *a)
{
    return !a->xs && DSV3_GEMV_KC >= a->w->k && (f == DSV3_FMT_F32 || f == DSV3_FMT_BF16 || f == DSV3_FMT_INT8);
}

/* y[m, n] from the pair's four chains p[0..3] (x row xr): the walk's one epilogue */
AI void og_out(dsv3_format f, const dsv3_lin_args *a, const float *xr, int64_t m, int64_t n, const V *p)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, Kv = K / VL * VL;
    const float s = gscale(f, w, n, 0, 1);
    const V acc = V_MUL(V_ADD(V_ADD(p[0], p[1]), V_ADD(p[2], p[3])), V_SET1(s));
    float tail = 0.0f;
    if (Kv < K) { /* K tail: scalar decode once per row, added after the vector sum */
        float wt[VL];
        dsv3_formats[f].code_row(w, n, Kv, K - Kv, wt);
        float q = 0.0f;
        for (int64_t j = Kv; j < K; j++)
            q += xr[j] * wt[j - Kv];
        tail = q * s;
    }
    float *y = a->y + m * w->n + n;
    *y = V_REDUCE(acc) + tail;
    if (a->bias)
        *y += a->bias[n];
}

/* Whole-K tiles: one row of x by nr weight rows (1 or 4: decode), or two rows of x by one weight row (M > 1 while
 * x fits in OG_X_L1). */
AI void gemv_onegroup(dsv3_format f, const int mr, const int nr, const dsv3_lin_args *a, int64_t n0, int64_t m0)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, Kv = K / VL * VL;
    const float *x[2];
    const uint8_t *row[4];
    V p[4][4]; /* [row of x or weight row][chain] */
    for (int i = 0; i < mr; i++)
        x[i] = a->x + (m0 + i) * K;
    for (int j = 0; j < nr; j++)
        row[j] = row_ptr(f, w, n0 + j);
    for (int t = 0; t < 4; t++)
        for (int c = 0; c < 4; c++)
            p[t][c] = V_ZERO();
    int64_t k = 0;
    for (; k + 4 * VL <= Kv; k += 4 * VL)
        for (int c = 0; c < 4; c++) {
            if (mr == 1) {
                const V xv = V_LOADU(x[0] + k + c * VL);
                for (int j = 0; j < nr; j++)
                    p[j][c] = V_FMA(xv, DEC(f, w, row[j], k + c * VL), p[j][c]);
            } else {
                const V wv = DEC(f, w, row[0], k + c * VL);
                for (int i = 0; i < mr; i++)
                    p[i][c] = V_FMA(V_LOADU(x[i] + k + c * VL), wv, p[i][c]);
            }
        }
    for (int c = 0; c < 3 && k < Kv; c++, k += VL) /* 1-3 vectors left: chains 0, 1, 2 */
        for (int t = 0; t < mr * nr; t++)
            p[t][c] = V_FMA(V_LOADU(x[mr == 1 ? 0 : t] + k), DEC(f, w, row[mr == 1 ? t : 0], k), p[t][c]);
    for (int t = 0; t < mr * nr; t++)
        og_out(f, a, x[mr == 1 ? 0 : t], m0 + (mr == 1 ? 0 : t), n0 + (mr == 1 ? t : 0), p[t]);
}

/* One tile of the M > 1 walk: rows x + i xst (i < mr) by weight rows row[0..nr), vectors [vs, ve) of the segment
 * (vs a multiple of 4), chains from and back to P[i][j0 + j][c]. */
AI void og_tile(dsv3_format f, const int mr, const int nr, const dsv3_weight *w, const float *x, int64_t xst,
                const uint8_t *const *row, int64_t vs, int64_t ve, V (*P)[OG_NB][4], int j0)
{
    (void)w;
    for (int c = 0; c < 4; c++) {
        V acc[4][4];
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                acc[i][j] = P[i][j0 + j][c];
        for (int64_t v = vs + c; v < ve; v += 4) {
            const int64_t k = v * VL;
            V wv[4];
            for (int j = 0; j < nr; j++)
                wv[j] = DEC(f, w, row[j], k);
            for (int i = 0; i < mr; i++) {
                V xv = V_LOADU(x + i * xst + k);
                __asm__("" : "+x"(xv)); /* one load in a register for the nr FMAs (GCC would fold it into
                                         * each: 2 + 8 loads per 8 FMAs, over the two 256-bit loads a cycle) */
                for (int j = 0; j < nr; j++)
                    acc[i][j] = V_FMA(xv, wv[j], acc[i][j]);
            }
        }
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                P[i][j0 + j][c] = acc[i][j];
    }
}

/* Tiles of the (mb rows, nb weight rows) block over one segment: 4 x 2 (8 chains) where the rows allow, 2 x 4
 * and 1 x 4 for a remainder of 1-2 rows of x, 3 x 2 for 3. */
AI void og_segment(dsv3_format f, const dsv3_weight *w, const float *x, int64_t xst, const uint8_t *const *row,
                   int mb, int nb, int64_t vs, int64_t ve, V (*P)[OG_NB][4])
{
    for (int i0 = 0; i0 < mb; i0 += 4) {
        const int mr = mb - i0 < 4 ? mb - i0 : 4;
        const int nw = mr <= 2 ? 4 : 2; /* weight rows per tile */
        for (int j0 = 0; j0 < nb; j0 += nw) {
            const int nr = nb - j0 < nw ? nb - j0 : nw;
            const float *xi = x + i0 * xst;
            const uint8_t *const *rj = row + j0;
#define OG_T(MR, NR)                                                                                \
    case MR * 8 + NR: og_tile(f, MR, NR, w, xi, xst, rj, vs, ve, P + i0, j0); break
            switch (mr * 8 + nr) {
                OG_T(4, 2); OG_T(4, 1); OG_T(3, 2); OG_T(3, 1);
                OG_T(2, 4); OG_T(2, 3); OG_T(2, 2); OG_T(2, 1);
                OG_T(1, 4); OG_T(1, 3); OG_T(1, 2);
            default: og_tile(f, 1, 1, w, xi, xst, rj, vs, ve, P + i0, j0); break;
            }
#undef OG_T
        }
    }
}

/* M > 1: rows [m0, m0 + mb) of x by weight rows [n0, n0 + nb), K in segments. */
AI void gemv_og_block(dsv3_format f, const dsv3_lin_args *a, int64_t n0, int nb, int64_t m0, int mb)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, nv = K / VL;
    const float *x = a->x + m0 * K;
    const uint8_t *row[OG_NB];
    V P[OG_MB][OG_NB][4]; /* [row of x][weight row][chain] */
    for (int i = 0; i < mb; i++)
        for (int j = 0; j < nb; j++)
            for (int c = 0; c < 4; c++)
                P[i][j][c] = V_ZERO();
    for (int j = 0; j < nb; j++)
        row[j] = row_ptr(f, w, n0 + j);
    const int bpc = f == DSV3_FMT_F32 ? 4 : f == DSV3_FMT_BF16 ? 2 : 1; /* bytes per code */
    for (int64_t vs = 0; vs < nv; vs += OG_SEG / VL) {
        /* the weight rows' segment OG_PF ahead, past a row's end the same row of the next item (rows are
         * contiguous; a prefetch past the weight's end is harmless), into L2 (T1; into L1, T0, measured no
         * faster than none: x and the segment in use lose lines to it; T1: M = 8 1.25x) */
        const int64_t o = vs * VL + OG_PF * OG_SEG, d = o < K ? o : o + (nb - 1) * K;
        for (int j = 0; j < nb; j++)
            for (int64_t b = 0; b < OG_SEG * bpc; b += 64)
                _mm_prefetch((const char *)row[j] + d * bpc + b, _MM_HINT_T1);
        og_segment(f, w, x, K, row, mb, nb, vs, vs + OG_SEG / VL < nv ? vs + OG_SEG / VL : nv, P);
    }
    for (int i = 0; i < mb; i++)
        for (int j = 0; j < nb; j++)
            og_out(f, a, x + i * K, m0 + i, n0 + j, P[i][j]);
}

AI void gemv_rows_onegroup(dsv3_format f, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    if (a->m == 1) {
        int64_t n = n0;
        if (a->w->k * 4 > 8192) /* f32 x beyond 8 KB of L1: four weight rows per x load */
            for (; n + 4 <= n1; n += 4)
                gemv_onegroup(f, 1, 4, a, n, 0);
        for (; n < n1; n++)
            gemv_onegroup(f, 1, 1, a, n, 0);
        return;
    }
    if (a->m <= 3 && a->m * a->w->k * 4 <= OG_X_L1) { /* x in L1: whole-K tiles of two rows of x (8 chains) */
        for (int64_t n = n0; n < n1; n++) {
            int64_t m0 = 0;
            for (; m0 + 2 <= a->m; m0 += 2)
                gemv_onegroup(f, 2, 1, a, n, m0);
            if (m0 < a->m)
                gemv_onegroup(f, 1, 1, a, n, m0);
        }
        return;
    }
    for (int64_t n = n0; n < n1; n += OG_NB) {
        const int nb = n1 - n < OG_NB ? (int)(n1 - n) : OG_NB;
        for (int64_t m0 = 0; m0 < a->m; m0 += OG_MB)
            gemv_og_block(f, a, n, nb, m0, a->m - m0 < OG_MB ? (int)(a->m - m0) : OG_MB);
    }
}

/* K is walked in chunks of GEMV_KC so the rows of x in use stay in L1 while weight rows stream
 * past; per-chunk sums are added to y in chunk order (fixed). */
AI void gemv_rows(dsv3_format f, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    if (onegroup_walk(f, a)) {
        gemv_rows_onegroup(f, a, n0, n1);
        return;
    }
    /* The small-group formats run a row of x with four FMA chains (group_scaled_body, nvfp4's second
     * slot) and several rows with two: so that a row's result never depends on the rows beside it
     * (batched decode bitwise a sequence alone, dsv3_batch.h), they run every row as the one-row walk
     * (each row decodes the weight row again: exact mode favours that guarantee over M > 1 speed). */
    const int one_row = f == DSV3_FMT_NVFP4 || f == DSV3_FMT_INT4 || (f == DSV3_FMT_FP8_BLOCK && !a->xs);
    for (int64_t klo = 0; klo < a->w->k; klo += DSV3_GEMV_KC) {
        const int64_t khi = klo + DSV3_GEMV_KC < a->w->k ? klo + DSV3_GEMV_KC : a->w->k;
        for (int64_t n = n0; n < n1; n++)
            for (int64_t m0 = 0; m0 < a->m; m0 += one_row ? 1 : MR) {
                switch (one_row || a->m - m0 < MR ? (one_row ? 1 : a->m - m0) : MR) {
                case 1: gemv_tile(f, 1, a, n, m0, klo, khi); break;
                case 2: gemv_tile(f, 2, a, n, m0, klo, khi); break;
                case 3: gemv_tile(f, 3, a, n, m0, klo, khi); break;
                default: gemv_tile(f, 4, a, n, m0, klo, khi); break;
                }
            }
    }
}

#define GEMV_CAT2(a, b) a##b
#define GEMV_CAT(a, b) GEMV_CAT2(a, b)
#define GEMV_DEFINE(fname, fmt)                                                                     \
    void GEMV_CAT(dsv3_gemv_##fname##_, ISA)(const dsv3_lin_args *a, int64_t n0, int64_t n1)         \
    {                                                                                               \
        gemv_rows(fmt, a, n0, n1);                                                                  \
    }

GEMV_DEFINE(f32, DSV3_FMT_F32)
GEMV_DEFINE(bf16, DSV3_FMT_BF16)
GEMV_DEFINE(fp8_block, DSV3_FMT_FP8_BLOCK)
GEMV_DEFINE(nvfp4, DSV3_FMT_NVFP4)
GEMV_DEFINE(int8, DSV3_FMT_INT8)
GEMV_DEFINE(int4, DSV3_FMT_INT4)

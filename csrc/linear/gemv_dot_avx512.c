/* Small-M AVX-512 BF16 kernels (bf16, fp8_block and int8 weights; nvfp4 and int4 further down):
 * weights become bf16 in registers and meet x through vdpbf16ps; x is split by the dispatcher into
 * bf16 hi + lo (16 significant bits, so the result stays at f32-path accuracy) and laid out in the
 * decoder's order (dsv3_xlayout).
 *
 * fp8 decode (exact, subnormals included; int8 the same after |q| + sign): 64 codes -> two
 * vpermi2b lookups over 128-entry tables of the high and low bytes of bf16(|code|), the sign bit
 * OR-ed into the high byte, then in-lane byte unpacks give two vectors of 32 bf16 (codes
 * 0-7,16-23,32-39,48-55 and 8-15,24-31,40-47,56-63 of the block; x is pre-permuted to match).
 * Per 128-wide K group (int8: the whole row): fp32 partial sums, then acc += partial * scale
 * (* activation scale in dynamic mode), DeepSeek fp8_gemm's order.
 * K beyond the last full 64-block is done in f32 from a->x (scalar, fixed order). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "linear/act_q8.h"
#include "linear/decode_avx512.h"
#include "linear/e4m3_bf16.h"
#include "linear/lin_common.h"

/* Software prefetch of the next tile's rows: rows n..n+DNR-1 are contiguous, so the bytes at the
 * same offset DNR rows further on belong to the next tile; prefetching them while this tile
 * decodes keeps DRAM busy across tile boundaries (short rows, e.g. K = 2048, otherwise restart the
 * hardware prefetch streams at every tile). Address arithmetic via uintptr_t: past the end of the
 * weight it is only a hint, never dereferenced. */
#define PF_NEXT_HINT(p, rowbytes, hint) \
    _mm_prefetch((const char *)(uintptr_t)((uintptr_t)(p) + (uintptr_t)(DNR * (rowbytes))), hint)
#define PF_NEXT(p, rowbytes) PF_NEXT_HINT(p, rowbytes, _MM_HINT_T0)
/* The bf16/fp8/int8 tiles (dot_blocks) prefetch the next tile's rows into L2 only: with long rows (K = 7168:
 * 4 rows of 14-28 KB, revisited by up to 4 passes of x rows) an L1 prefetch evicted the tile's own rows and x.
 * Measured 2026-11-30 (A/B in one process, one thread, CPU time, GB/s of weights, L1 -> L2 hint): K = 7168
 * bf16 fast M = 2 16.0 -> 18.9, M = 4 13.1 -> 14.7, M = 8 9.2 -> 10.4, M = 16 5.5 -> 6.3; K = 4096 bf16 fast
 * M = 4 13.4 -> 15.7, M = 8 9.2 -> 11.1; K = 7168 exact M = 1 (4-row tiles): bf16 16.7 -> 19.7, fp8_block
 * 13.3 -> 16.5, int8 13.3 -> 20.3; K = 2048 exact bf16 M = 4 10.8 -> 13.2, M = 8 7.6 -> 8.8; rows of 4-5 KB
 * (K = 2048 / 2560) 0.97-1.03 (noise). _MM_HINT_NTA was no better than L1 (0.95-0.99). */
#define PF_NEXT_L2(p, rowbytes) PF_NEXT_HINT(p, rowbytes, _MM_HINT_T1)

/* Decode (M = 1) walks the rows one after another (tiles of one weight row, no software prefetch)
 * when the prepared x a row reads is small: at most 8 KB, or at most the row's own bytes. A thread's
 * rows are contiguous, so the weights are then read as ONE sequential stream, which the hardware
 * prefetchers follow across row ends; 4-row tiles read four streams a row apart, restarted at every
 * tile, which short rows (K = 2048: 1-4 KB) pay dearly for. Long rows with a large x (exact mode,
 * K = 7168: 28 KB of hi + lo per 7 KB fp8 row) keep the 4-row tiles, where each x vector loaded from
 * L1/L2 serves four rows. Measured 2026-11-30 (one thread, best of 100 alternating calls, 256 MB of
 * weight copies): expert_down 2048 -> 7168 fp8 12.2 -> 15.0 GB/s, int8 12.4 -> 17.9, bf16 fast
 * 15.8 -> 34.3; expert_gate_up 7168 -> 2048 bf16 fast 20.7 -> 27.4, but fp8/int8 exact 17-18 -> 11-12
 * (hence the x-size rule). Per-row arithmetic is the same in both walks (bitwise equal results). */
AI int rows_sequential(const dsv3_lin_args *a, int xbytes_per_k, int64_t rowbytes)
{
    const int64_t xb = a->w->k * xbytes_per_k;
    return a->m == 1 && (xb <= 8192 || xb <= rowbytes);
}

#define DMR 2 /* rows of x per 4-bit tile (register budget: x hi/lo of 2 rows + 4 decoded vectors + 8 accumulators) */

/* bf16 bits of the integers 0..127 (int8 magnitudes), split into bytes. */
static const uint8_t I8_BF16_HI[128] = {
    0x00, 0x3f, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42};
static const uint8_t I8_BF16_LO[128] = {
    0x00, 0x80, 0x00, 0x40, 0x80, 0xa0, 0xc0, 0xe0, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70,
    0x80, 0x88, 0x90, 0x98, 0xa0, 0xa8, 0xb0, 0xb8, 0xc0, 0xc8, 0xd0, 0xd8, 0xe0, 0xe8, 0xf0, 0xf8,
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x28, 0x2c, 0x30, 0x34, 0x38, 0x3c,
    0x40, 0x44, 0x48, 0x4c, 0x50, 0x54, 0x58, 0x5c, 0x60, 0x64, 0x68, 0x6c, 0x70, 0x74, 0x78, 0x7c,
    0x80, 0x82, 0x84, 0x86, 0x88, 0x8a, 0x8c, 0x8e, 0x90, 0x92, 0x94, 0x96, 0x98, 0x9a, 0x9c, 0x9e,
    0xa0, 0xa2, 0xa4, 0xa6, 0xa8, 0xaa, 0xac, 0xae, 0xb0, 0xb2, 0xb4, 0xb6, 0xb8, 0xba, 0xbc, 0xbe,
    0xc0, 0xc2, 0xc4, 0xc6, 0xc8, 0xca, 0xcc, 0xce, 0xd0, 0xd2, 0xd4, 0xd6, 0xd8, 0xda, 0xdc, 0xde,
    0xe0, 0xe2, 0xe4, 0xe6, 0xe8, 0xea, 0xec, 0xee, 0xf0, 0xf2, 0xf4, 0xf6, 0xf8, 0xfa, 0xfc, 0xfe};

typedef struct {
    __m512i hi0, hi1, lo0, lo1;
} fp8_tables;

/* 64 e4m3 codes -> two vectors of 32 bf16 (block order described above) */
AI void dec_fp8_bf16(const uint8_t *p, const fp8_tables *t, const int is_int8, __m512bh *A, __m512bh *B)
{
    const __m512i r = _mm512_loadu_si512(p); /* int8: two's complement -> sign | magnitude (|q| <= 127) */
    const __m512i c = is_int8 ? _mm512_or_si512(_mm512_abs_epi8(r), _mm512_and_si512(r, _mm512_set1_epi8((char)0x80)))
                              : r;
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t->hi0, c, t->hi1), c,
                                                 _mm512_set1_epi8((char)0x80), 0xF8); /* hi | (c & 0x80) */
    const __m512i lo = _mm512_permutex2var_epi8(t->lo0, c, t->lo1);
    *A = (__m512bh)_mm512_unpacklo_epi8(lo, hi);
    *B = (__m512bh)_mm512_unpackhi_epi8(lo, hi);
}

#define DNR 4 /* rows of W per tile: each x vector loaded once serves DNR weight rows */

/* Tiles of the bf16/fp8/int8 kernels (dot_rows): mr rows of x against nr weight rows. Each output's
 * arithmetic is the same whatever the tile (pa/pb chains over the 64-blocks, part = pa + pb per K group,
 * acc += part * scale, one reduction), so a row's result does not depend on M or on the tile that
 * computed it (batched decode == one sequence at a time, bitwise).
 *  - When all M rows of x fit in DOT_X_L1 bytes (hi, + lo in exact mode) and M <= DOT_MR, or in DOT_X_ONEPASS
 *    bytes at M >= 5 (dot_one_pass): ONE pass, tiles of all M rows against one weight row, the rows walked
 *    one after another (one sequential stream, prefetched DOT_PF_AHEAD bytes ahead into L2, both lines of each
 *    128-byte block): every weight byte is loaded once and meets all M rows of x from L1 in registers
 *    (2 * M <= 16 accumulators).
 *  - Otherwise (long rows: K = 4096 / 7168 at M >= 3): passes of up to mrmax (>= 2) rows of x over tiles
 *    of dot_nr(mr) weight rows (the next tile's rows prefetched, PF_NEXT_L2), which keeps x in L1; 8 rows of
 *    x streamed from L2 per weight row were slower.
 * The tile's sums are reduced 8 at a time (reduce_add8), bitwise _mm512_reduce_add_ps.
 * Measured 2026-11-30 (a C loop over the kernel, one thread, CPU time, bf16 fast mode, weights from memory;
 * GB/s of weights, before -> after): K = 1024: M = 2 10.8 -> 20.2, M = 3 9.8 -> 17.8, M = 4 9.3 -> 17.8,
 * M = 8 7.3 -> 13.2, M = 16 5.3 -> 6.6; K = 2048 exact M = 2 13.1 -> 16.7; K = 4096 / 7168 unchanged.
 * DOT_X_ONEPASS (32 KB, M >= 5), measured the same way (old and new kernel interleaved on copies of the
 * weights, best of 2-3 rounds, GB/s before -> after): bf16 fast K = 2048 (expert_down) M = 5 10.2 -> 21.6,
 * M = 6 9.4 -> 20.7, M = 7 9.0 -> 18.8, M = 8 8.8 -> 15.9; bf16 exact K = 1024 M = 6 7.3 -> 13.7, M = 8 6.0
 * -> 8.4; int8 exact K = 2048 M = 8 4.1 -> 4.7; fp8_block exact lost 6-11% (K = 1024 / 2048, M = 6 / 8), so it
 * keeps DOT_X_L1. M = 2..4 with x of 16-32 KB lost 8-15% (K = 4096 M = 4, K = 7168 M = 2): not taken.
 * M = 8 at K = 1024 (fast) already runs at this machine's vdpbf16ps rate (16 dots per 64 weight codes: 8 B of
 * bf16 weight per dot; 14-18 GB/s per thread at 1.75-2.2 G zmm dots/s measured), which bounds every small-M
 * kernel with this definition (M * K / 32 dots per weight row). */
#define DOT_MR 8
#define DOT_PF_AHEAD 4096
#define DOT_X_L1 (16 << 10)
#define DOT_X_ONEPASS (32 << 10)
/* Whether the M rows of x take the ONE pass (tiles of all M rows against one weight row). */
AI int dot_one_pass(dsv3_format f, const int lo, int64_t m, int64_t xbytes)
{
    const int wide = m >= 5 && !(f == DSV3_FMT_FP8_BLOCK && lo);
    return m <= DOT_MR && m * xbytes <= (wide ? DOT_X_ONEPASS : DOT_X_L1);
}
AI int dot_nr(int mr) { return mr <= 2 ? DNR : mr <= 4 ? 2 : 1; }

/* The pa/pb chains of K range [k0, kend) (whole 64-blocks) for an mr x nr tile (rows m0.., weight rows
 * row[]), continued from their values in pa/pb. Per block: decode nr weight rows, then for each x row
 * 2 vdpbf16ps per weight row (A and B halves; exact mode 2 more with x lo). */
AI void dot_blocks(dsv3_format f, const int lo, const int pf, const int mr, const int nr, const dsv3_lin_args *a,
                   const uint8_t *const *row, const fp8_tables *t, int64_t k0, int64_t kend, int64_t m0,
                   __m512 pa[DOT_MR][DNR], __m512 pb[DOT_MR][DNR])
{
    const int64_t K = a->w->k;
    const int wb = f == DSV3_FMT_BF16 ? 2 : 1; /* weight bytes per code */
    for (int64_t k = k0; k < kend; k += 64) {
        __m512bh A[DNR], B[DNR];
        for (int j = 0; j < nr && pf == 1; j++) /* the same bytes of the next tile's rows (see PF_NEXT_L2) */
            PF_NEXT_L2(row[j] + k * wb, K * wb);
        for (int j = 0; j < nr && pf == 2; j++) { /* further on in the row's own stream (DOT_PF_AHEAD) */
            const uintptr_t q = (uintptr_t)(row[j] + k * wb) + DOT_PF_AHEAD;
            _mm_prefetch((const char *)q, _MM_HINT_T1);
            if (wb == 2)
                _mm_prefetch((const char *)(q + 64), _MM_HINT_T1);
        }
        for (int j = 0; j < nr; j++) {
            if (f == DSV3_FMT_FP8_BLOCK || f == DSV3_FMT_INT8)
                dec_fp8_bf16(row[j] + k, t, f == DSV3_FMT_INT8, &A[j], &B[j]);
            else {
                A[j] = (__m512bh)_mm512_loadu_si512((const uint16_t *)row[j] + k);
                B[j] = (__m512bh)_mm512_loadu_si512((const uint16_t *)row[j] + k + 32);
            }
        }
        for (int i = 0; i < mr; i++) {
            const uint16_t *xh = a->xh + (m0 + i) * K + k, *xl = lo ? a->xl + (m0 + i) * K + k : NULL;
            const __m512bh hA = (__m512bh)_mm512_loadu_si512(xh), hB = (__m512bh)_mm512_loadu_si512(xh + 32);
            for (int j = 0; j < nr; j++) {
                pa[i][j] = _mm512_dpbf16_ps(pa[i][j], hA, A[j]);
                pb[i][j] = _mm512_dpbf16_ps(pb[i][j], hB, B[j]);
            }
            if (lo) { /* exact mode: the lo part of x (fast mode rounds x to one bf16) */
                const __m512bh lA = (__m512bh)_mm512_loadu_si512(xl), lB = (__m512bh)_mm512_loadu_si512(xl + 32);
                for (int j = 0; j < nr; j++) {
                    pa[i][j] = _mm512_dpbf16_ps(pa[i][j], lA, A[j]);
                    pb[i][j] = _mm512_dpbf16_ps(pb[i][j], lB, B[j]);
                }
            }
        }
    }
}

/* acc += (pa + pb) * scale of group g (times the activation scale in dynamic mode). */
AI void dot_group_end(dsv3_format f, const int mr, const int nr, const dsv3_lin_args *a, int64_t n0, int64_t m0,
                      int64_t g, __m512 pa[DOT_MR][DNR], __m512 pb[DOT_MR][DNR], __m512 acc[DOT_MR][DNR])
{
    const dsv3_weight *w = a->w;
    const int64_t G = kgroup(f, w), ng = (w->k + G - 1) / G;
    for (int j = 0; j < nr; j++) {
        const float s = gscale(f, w, n0 + j, g, ng);
        for (int i = 0; i < mr; i++)
            acc[i][j] = _mm512_fmadd_ps(_mm512_add_ps(pa[i][j], pb[i][j]),
                                        _mm512_set1_ps(a->xs ? a->xs[(m0 + i) * ng + g] * s : s), acc[i][j]);
    }
}

/* Horizontal sums of 8 vectors at once (out[q] = sum of v[q]), each bitwise _mm512_reduce_add_ps(v[q]): GCC's
 * reduction tree (avx512fintrin.h, __MM512_REDUCE_OP) is s1[i] = v[i + 8] + v[i] (i < 8), s2[i] = s1[i + 4] +
 * s1[i] (i < 4), s3[i] = s2[i] + s2[i + 2] (i < 2), s3[0] + s3[1]; here every level pairs the same lanes for 8
 * vectors (transposed into 2, then 1 register), 15 shuffles and 8 adds instead of 8 x 7 operations. */
AI void reduce_add8(const __m512 v[8], float out[8])
{
    __m512 u[4], w[2];
    for (int p = 0; p < 4; p++) /* 128-bit lanes: v[2p] s1 (lanes 0-7), v[2p+1] s1 (lanes 8-15) */
        u[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xEE),
                             _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44));
    for (int q = 0; q < 2; q++) /* 128-bit lane L: s2 of v[4q + L] */
        w[q] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * q], u[2 * q + 1], 0xDD),
                             _mm512_shuffle_f32x4(u[2 * q], u[2 * q + 1], 0x88));
    /* lane L: s3 of v[L] (elements 0, 1), of v[4 + L] (2, 3) */
    const __m512 x = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x44), _mm512_shuffle_ps(w[0], w[1], 0xEE));
    float r[16];
    _mm512_storeu_ps(r, _mm512_add_ps(x, _mm512_shuffle_ps(x, x, 0xB1)));
    for (int q = 0; q < 4; q++) {
        out[q] = r[4 * q];
        out[4 + q] = r[4 * q + 2];
    }
}

/* y = reduce(acc) + the scalar K tail (+ bias) for the tile's outputs (whole K: klo = 0, khi = K), or
 * the K chunk's share of it (DSV3_GEMV_KC). */
AI void dot_finish(dsv3_format f, const int mr, const int nr, const dsv3_lin_args *a, int64_t n0, int64_t m0,
                   int64_t klo, int64_t khi, __m512 acc[DOT_MR][DNR])
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, Kb = K / 64 * 64, G = kgroup(f, w), ng = (K + G - 1) / G;
    float red[8]; /* the tile's sums, output (i, j) at i * nr + j, when mr * nr >= 4 (every tile has <= 8) */
    if (mr * nr >= 4) {
        __m512 v[8];
        for (int q = 0; q < 8; q++)
            v[q] = q < mr * nr ? acc[q / nr][q % nr] : _mm512_setzero_ps();
        reduce_add8(v, red);
    }
    for (int j = 0; j < nr; j++) {
        const int64_t n = n0 + j;
        float tail[DOT_MR] = {0};
        if (Kb < K && khi >= K) { /* within one group: Kb is a multiple of 64 and G of 128 or K */
            float wt[64];
            dsv3_formats[f].code_row(w, n, Kb, K - Kb, wt);
            const int64_t gt = Kb / G;
            const float s = gscale(f, w, n, gt, ng);
            for (int i = 0; i < mr; i++) {
                const float *x = a->x + (m0 + i) * K;
                float p = 0.0f;
                for (int64_t q = Kb; q < K; q++)
                    p += x[q] * wt[q - Kb];
                tail[i] = p * (a->xs ? a->xs[(m0 + i) * ng + gt] * s : s);
            }
        }
        for (int i = 0; i < mr; i++) {
            float *y = a->y + (m0 + i) * w->n + n;
            const float v = (mr * nr >= 4 ? red[i * nr + j] : _mm512_reduce_add_ps(acc[i][j])) + tail[i];
            *y = klo == 0 ? v : *y + v;
            if (khi >= K && a->bias)
                *y += a->bias[n];
        }
    }
}

/* One mr x nr tile over K range [klo, khi): per K group, fresh pa/pb chains, then acc += part * scale. */
AI void dot_tile(dsv3_format f, const int lo, const int pf, const int mr, const int nr, const dsv3_lin_args *a,
                 const fp8_tables *t, int64_t n0, int64_t m0, int64_t klo, int64_t khi)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, Kb = K / 64 * 64, G = kgroup(f, w);
    const int64_t kbh = khi < Kb ? khi : Kb; /* full 64-blocks of this chunk end here */
    const uint8_t *row[DNR];
    __m512 acc[DOT_MR][DNR], pa[DOT_MR][DNR], pb[DOT_MR][DNR];
    for (int j = 0; j < nr; j++)
        row[j] = row_ptr(f, w, n0 + j);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int64_t g = klo / G; g * G < kbh; g++) {
        const int64_t kbeg = g * G > klo ? g * G : klo, kend = (g + 1) * G < kbh ? (g + 1) * G : kbh;
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                pa[i][j] = pb[i][j] = _mm512_setzero_ps();
        dot_blocks(f, lo, pf, mr, nr, a, row, t, kbeg, kend, m0, pa, pb);
        dot_group_end(f, mr, nr, a, n0, m0, g, pa, pb, acc);
    }
    dot_finish(f, mr, nr, a, n0, m0, klo, khi, acc);
}

/* ---- 4-bit formats (nvfp4, int4): 64 packed bytes -> 128 bf16 codes with two zero-extensions
 * (vpmovzxbw: word w holds byte w, i.e. codes 2w and 2w+1), two 16-bit shifts and four vpermw
 * lookups (vpermw reads index bits [4:0]; the 16-entry table is stored twice so the stray bit 4 is
 * harmless): v0 = even codes 0..62, v1 = odd codes 1..63, v2/v3 the same for 64..127. x is
 * pre-permuted to match (DSV3_X_BF16X2_N128). Every vdpbf16ps lane l (128-bit lane L = l / 4) of v0
 * and v1 then holds codes of nvfp4 group 8b + L (16-wide groups) or int4 group (32-wide) 4b + L/2,
 * of v2/v3 group 8b + 4 + L / 4b + 2 + L/2. Per block: P0 = dots(v0, v1), P1 = dots(v2, v3) (x hi
 * and lo, 8 vdpbf16ps), then acc += P0 * S0 + P1 * S1 with per-lane scale vectors (f32). The x
 * block is loaded once per 4 weight rows; the next tile's rows are prefetched (PF_NEXT). */
typedef struct {
    __m512i w; /* bf16 of the 16 codes, twice (vpermw reads index bits [4:0]) */
} nib_luts;

/* bf16 bits of the 16 codes, twice (a wrong entry fails tests/test_linear.py against dequantize) */
static const uint16_t E2M1_BF16[32] = {
    0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0,
    0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0,
    0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0,
    0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0};
static const uint16_t INT4_BF16[32] = {
    0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0,
    0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040, 0xc000, 0xbf80,
    0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0,
    0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040, 0xc000, 0xbf80};

AI void dec_nib128(const uint8_t *p, const nib_luts *t, __m512bh v[4])
{
    const __m512i c0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
    const __m512i c1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + 32)));
    v[0] = (__m512bh)_mm512_permutexvar_epi16(c0, t->w);
    v[1] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(c0, 4), t->w);
    v[2] = (__m512bh)_mm512_permutexvar_epi16(c1, t->w);
    v[3] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(c1, 4), t->w);
}

/* Per-lane scales S0 (A0, B0) and S1 (A1, B1) of the 128-block at k of row n. nvfp4: sb holds the
 * 16 decoded scales (times scale2) of the 256 columns starting at k - k % 256. */
AI void nib128_scales(dsv3_format f, const dsv3_weight *w, int64_t n, int64_t k, int64_t ng, __m512 sb,
                      __m512 *S0, __m512 *S1)
{
    if (f == DSV3_FMT_NVFP4) { /* lane l of v0/v1: group 8b + l, of v2/v3: 8b + 4 + l */
        const int o = (int)((k / 128) & 1) * 8;
        const __m512i i0 = _mm512_add_epi32(_mm512_set1_epi32(o),
                                            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
        *S0 = _mm512_permutexvar_ps(i0, sb);
        *S1 = _mm512_permutexvar_ps(_mm512_add_epi32(i0, _mm512_set1_epi32(4)), sb);
    } else if (w->group == 128) {
        *S0 = *S1 = _mm512_set1_ps(((const float *)w->scale)[n * ng + k / 128]);
    } else { /* group 32: lane l of v0/v1 -> group k/32 + l/2, of v2/v3 -> k/32 + 2 + l/2 */
        const __m512 s4 = _mm512_castps128_ps512(_mm_loadu_ps((const float *)w->scale + n * ng + k / 32));
        *S0 = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), s4);
        *S1 = _mm512_permutexvar_ps(_mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3), s4);
    }
}

AI __m512 nvfp4_scales16(const dsv3_weight *w, int64_t n, int64_t g0, int64_t ng)
{
    const uint8_t *s = (const uint8_t *)w->scale + n * ng + g0;
    __m512 v;
    if (g0 + 16 <= ng)
        v = dec_e4m3(s);
    else {
        uint8_t b[16] = {0};
        memcpy(b, s, (size_t)(ng - g0));
        v = dec_e4m3(b);
    }
    return _mm512_mul_ps(v, _mm512_set1_ps(w->scale2));
}

AI void nib_tile(dsv3_format f, const int lo, const int pf, const int mr, const int nr, const dsv3_lin_args *a,
                 const nib_luts *t, int64_t n0,
                 int64_t m0, int64_t klo, int64_t khi)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, Kb = K / 128 * 128, G = kgroup(f, w), ng = (K + G - 1) / G;
    const int64_t kbh = khi < Kb ? khi : Kb;
    const uint8_t *row[DNR];
    __m512 acc[DMR][DNR], sb[DNR];
    for (int j = 0; j < nr; j++) {
        row[j] = row_ptr(f, w, n0 + j);
        sb[j] = _mm512_setzero_ps();
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int64_t k = klo; k < kbh; k += 128) {
        __m512bh xv[DMR][8]; /* x hi (0-3) and lo (4-7) of this block, loaded once for all nr rows */
        for (int i = 0; i < mr; i++)
            for (int q = 0; q < 4; q++) {
                xv[i][q] = (__m512bh)_mm512_loadu_si512(a->xh + (m0 + i) * K + k + 32 * q);
                if (lo)
                    xv[i][4 + q] = (__m512bh)_mm512_loadu_si512(a->xl + (m0 + i) * K + k + 32 * q);
            }
        for (int j = 0; j < nr; j++) {
            if (f == DSV3_FMT_NVFP4 && (k % 256 == 0 || k == klo))
                sb[j] = nvfp4_scales16(w, n0 + j, k / 256 * 16, ng);
            __m512bh v[4];
            __m512 S0, S1;
            if (pf)
                PF_NEXT(row[j] + k / 2, K / 2);
            dec_nib128(row[j] + k / 2, t, v);
            nib128_scales(f, w, n0 + j, k, ng, sb[j], &S0, &S1);
            for (int i = 0; i < mr; i++) {
                const __m512 z = _mm512_setzero_ps();
                if (!lo) { /* fast mode: x as one bf16, half the dots */
                    const __m512 p0 = _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, xv[i][0], v[0]), xv[i][1], v[1]);
                    const __m512 p1 = _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, xv[i][2], v[2]), xv[i][3], v[3]);
                    acc[i][j] = _mm512_fmadd_ps(p1, S1, _mm512_fmadd_ps(p0, S0, acc[i][j]));
                    continue;
                }
                const __m512 p0 = _mm512_add_ps(_mm512_dpbf16_ps(_mm512_dpbf16_ps(z, xv[i][0], v[0]), xv[i][4], v[0]),
                                                _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, xv[i][1], v[1]), xv[i][5], v[1]));
                const __m512 p1 = _mm512_add_ps(_mm512_dpbf16_ps(_mm512_dpbf16_ps(z, xv[i][2], v[2]), xv[i][6], v[2]),
                                                _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, xv[i][3], v[3]), xv[i][7], v[3]));
                acc[i][j] = _mm512_fmadd_ps(p1, S1, _mm512_fmadd_ps(p0, S0, acc[i][j]));
            }
        }
    }
    for (int j = 0; j < nr; j++) {
        const int64_t n = n0 + j;
        float tail[DMR] = {0};
        if (Kb < K && khi >= K) { /* scalar tail (< 128 columns, natural x order), per element group scale */
            float wt[128];
            dsv3_formats[f].code_row(w, n, Kb, K - Kb, wt);
            for (int i = 0; i < mr; i++) {
                const float *x = a->x + (m0 + i) * K;
                float p = 0.0f;
                for (int64_t q = Kb; q < K; q++)
                    p += x[q] * (wt[q - Kb] * gscale(f, w, n, q / G, ng));
                tail[i] = p;
            }
        }
        for (int i = 0; i < mr; i++) {
            float *y = a->y + (m0 + i) * w->n + n;
            const float v = _mm512_reduce_add_ps(acc[i][j]) + tail[i];
            *y = klo == 0 ? v : *y + v;
            if (khi >= K && a->bias)
                *y += a->bias[n];
        }
    }
}

#define NIB_TILE_NR(mr, nr_)                                                                        \
    switch (nr_) {                                                                                  \
    case 1: nib_tile(f, lo, 1, mr, 1, a, &t, n, m0, klo, khi); break;                                      \
    case 2: nib_tile(f, lo, 1, mr, 2, a, &t, n, m0, klo, khi); break;                                      \
    case 3: nib_tile(f, lo, 1, mr, 3, a, &t, n, m0, klo, khi); break;                                      \
    default: nib_tile(f, lo, 1, mr, 4, a, &t, n, m0, klo, khi); break;                                     \
    }

AI void nib_rows(dsv3_format f, const int lo, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    nib_luts t;
    t.w = _mm512_loadu_si512(f == DSV3_FMT_NVFP4 ? E2M1_BF16 : INT4_BF16);
    const int seq = rows_sequential(a, lo ? 4 : 2, a->w->k / 2);
    for (int64_t klo = 0; klo < a->w->k; klo += DSV3_GEMV_KC) {
        const int64_t khi = klo + DSV3_GEMV_KC < a->w->k ? klo + DSV3_GEMV_KC : a->w->k;
        if (seq) { /* decode: one weight row after another (see rows_sequential) */
            for (int64_t n = n0; n < n1; n++)
                nib_tile(f, lo, 0, 1, 1, a, &t, n, 0, klo, khi);
            continue;
        }
        for (int64_t n = n0; n < n1; n += DNR) {
            const int64_t nr = n1 - n < DNR ? n1 - n : DNR;
            for (int64_t m0 = 0; m0 < a->m; m0 += DMR) {
                if (a->m - m0 >= 2) {
                    NIB_TILE_NR(2, nr)
                } else {
                    NIB_TILE_NR(1, nr)
                }
            }
        }
    }
}

void dsv3_gemv_nvfp4_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { nib_rows(DSV3_FMT_NVFP4, 1, a, n0, n1); }
void dsv3_gemv_int4_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { nib_rows(DSV3_FMT_INT4, 1, a, n0, n1); }
/* fast mode (act_q8.h): x as one bf16 (a->xl unused) */
void dsv3_gemv_nvfp4_dot1_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { nib_rows(DSV3_FMT_NVFP4, 0, a, n0, n1); }

#define DOT_T(mr_, nr_) dot_tile(f, lo, nr_ == 1 ? 2 : 1, mr_, nr_, a, &t, n, m0, klo, khi)
#define DOT_NR4(T, mr_)                                                                             \
    switch (nr) {                                                                                   \
    case 1: T(mr_, 1); break;                                                                       \
    case 2: T(mr_, 2); break;                                                                       \
    case 3: T(mr_, 3); break;                                                                       \
    default: T(mr_, 4); break;                                                                      \
    }
#define DOT_NR2(T, mr_)                                                                             \
    if (nr == 1)                                                                                    \
        T(mr_, 1);                                                                                  \
    else                                                                                            \
        T(mr_, 2);
/* every (mr, nr <= dot_nr(mr)) tile, as compile-time constants */
#define DOT_SWITCH(T)                                                                               \
    switch (mr) {                                                                                   \
    case 1: DOT_NR4(T, 1) break;                                                                    \
    case 2: DOT_NR4(T, 2) break;                                                                    \
    case 3: DOT_NR2(T, 3) break;                                                                    \
    case 4: DOT_NR2(T, 4) break;                                                                    \
    case 5: T(5, 1); break;                                                                         \
    case 6: T(6, 1); break;                                                                         \
    case 7: T(7, 1); break;                                                                         \
    default: T(8, 1); break;                                                                        \
    }

AI void dot_rows(dsv3_format f, const int lo, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    fp8_tables t;
    const uint8_t *hi = f == DSV3_FMT_INT8 ? I8_BF16_HI : DSV3_E4M3_BF16_HI;
    const uint8_t *lob = f == DSV3_FMT_INT8 ? I8_BF16_LO : DSV3_E4M3_BF16_LO;
    t.hi0 = _mm512_loadu_si512(hi);
    t.hi1 = _mm512_loadu_si512(hi + 64);
    t.lo0 = _mm512_loadu_si512(lob);
    t.lo1 = _mm512_loadu_si512(lob + 64);
    const int64_t K = a->w->k, xb = lo ? 4 : 2; /* x bytes per column (hi, lo) */
    const int seq = rows_sequential(a, (int)xb, K * (f == DSV3_FMT_BF16 ? 2 : 1));
    const int64_t fit = K > 0 ? DOT_X_L1 / (K * xb) : DOT_MR; /* rows of x that fit in DOT_X_L1 */
    const int onepass = dot_one_pass(f, lo, a->m, K * xb);
    const int mrmax = onepass ? (int)a->m : fit >= DOT_MR ? DOT_MR : fit > 2 ? (int)fit : 2;
    for (int64_t klo = 0; klo < K; klo += DSV3_GEMV_KC) { /* K chunks: x stays in L1 */
        const int64_t khi = klo + DSV3_GEMV_KC < K ? klo + DSV3_GEMV_KC : K;
        if (seq) { /* decode: one weight row after another (see rows_sequential) */
            for (int64_t n = n0; n < n1; n++)
                dot_tile(f, lo, 0, 1, 1, a, &t, n, 0, klo, khi);
            continue;
        }
        for (int64_t m0 = 0; m0 < a->m; m0 += mrmax) {
            const int mr = a->m - m0 < mrmax ? (int)(a->m - m0) : mrmax;
            const int step = onepass ? 1 : dot_nr(mr);
            for (int64_t n = n0; n < n1; n += step) {
                const int64_t nr = n1 - n < step ? n1 - n : step;
                DOT_SWITCH(DOT_T)
            }
        }
    }
}

void dsv3_gemv_bf16_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { dot_rows(DSV3_FMT_BF16, 1, a, n0, n1); }
void dsv3_gemv_int8_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { dot_rows(DSV3_FMT_INT8, 1, a, n0, n1); }
void dsv3_gemv_fp8_block_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    dot_rows(DSV3_FMT_FP8_BLOCK, 1, a, n0, n1);
}
/* fast mode (act_q8.h): x as one bf16 (a->xl unused) */
void dsv3_gemv_bf16_dot1_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { dot_rows(DSV3_FMT_BF16, 0, a, n0, n1); }

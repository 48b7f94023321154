/* AVX-512 fast kernel of fp8_block weights at small M (below GEMM_MIN_M_FP8): e4m3 codes turned into bf16 by shifts
 * (no table lookup on the common path), vdpbf16ps against x rounded once to bf16.
 *
 * Accuracy class: x in bf16 (the bf16-hi definition, act_q8.h), exact e4m3 decode, f32 sums:
 *     y = sum_g s(n, g) sum_{k in g} bf16(x[m, k]) e4m3(n, k)
 * Its scalar twin is dsv3_fast_bf16hi_scalar (sums in another order: equal within 1e-5 * sum |x| |W|,
 * tests/test_fast_fp.py). vdpbf16ps flushes denormal partial sums to zero: here those below 2^-118 in units of
 * x * W (the codes carry 2^-8, below); the scalar twin keeps them.
 *
 * Decode, per 64 codes (a 64-byte load, as 32 16-bit words): the even codes are the words shifted left by 8,
 * then (both) an arithmetic shift right by 4 puts sign and magnitude at the bf16 places (s.0000eeee.mmm0000, the
 * copies of the sign above it and the stray bits below masked off) and the exponent bias 112 is OR-ed in
 * (0x3800: no carry into the 4-bit exponent field): bf16 of the code times 2^-8 for every normal e4m3 code,
 * 5 instructions (2 shifts, 2 shifts, 2 ternary-logic masks; the table decoder of gemv_dot_avx512.c: 2 vpermi2b,
 * a ternary-logic, 2 unpacks). That formula is wrong for the codes with a zero exponent (zero and the subnormals,
 * m * 2^-9: the formula makes them normal) and for the NaN codes (S.1111.111), so each 64-code block is tested
 * first (one vptestnmb of the exponent bits; for a weight not scanned for NaN codes, dsv3_weight.nan_free, of
 * (code + 1) & 0x70 instead, which also catches the NaN codes and takes exponent-1 codes along): a block holding
 * one is decoded by the two 128-entry byte tables instead (e4m3_bf16.h, the same values times 2^-8, NaN codes
 * giving NaN), into the same order. Both paths give the same bits for every code, so the results do not depend on
 * which one ran. Block-quantised Gaussian weights (amax at 448) put 0.6 % of their 64-code blocks on the table
 * path (1.5 % with the NaN test).
 *
 * x (DSV3_X_BF16X2_N128, hi only): each 64-block as its 32 even then 32 odd columns, matching the two decoded
 * vectors; the K tail after the last full 128-group stays natural and is done in f32 from a->x rounded to bf16
 * (the definition), decoded by the format's reference code_row. Per 128-group and output: two chains (even and
 * odd columns) of two vdpbf16ps each, then acc += (pa + pb) * (s * 2^8) (DeepSeek's per-group scaling), one
 * reduction per output.
 *
 * Rows of x go in tiles of up to MR against one weight row: a group is tested and decoded once per tile, every
 * (weight row, x row) pair has its own chains, so each row's result is the same whatever M, tile or thread count
 * computed it. The rows are walked one after another (one sequential weight stream, no software prefetch: at
 * M = 1 the same as gemv_dot_avx512.c's decode walk).
 * Measured 2026-11-30 (BENCHMARKS.md, "fp8 decode on AVX-512 (stop 13)"; a C loop over the kernel in 4-row
 * calls as the dispatcher makes them, one thread, thread CPU time, block-quantised Gaussian weights resident in L2,
 * against gemv_dot_avx512.c's table-decoding fast kernel): M = 1 19.7 -> 25.1 GB/s (K = 2048), 18.8 -> 28.3
 * (K = 7168); M = 2, 4, 8 at K = 2048 14.8 / 10.9 / 5.8 -> 19.4 / 13.9 / 6.4; decode of the bench_peers fp8_block
 * model, one thread, CPU-time tokens/s about +10 %. Tried: a NaN-free weight (nan_free) without the NaN test,
 * no measurable difference (the weights of a model are not scanned for it on this path); the table path out of
 * line (a call on the unlikely branch): 31 -> 25 GB/s in L2, the accumulators spilled around it. */
#include <immintrin.h>
#include <stdint.h>

#include "dsv3_dtypes.h"
#include "linear/act_q8.h"
#include "linear/e4m3_bf16.h"
#include "linear/lin_common.h"

/* The table path's lookups: bf16 of the magnitudes times 2^-8 (high bytes of the exact table less 4, the
 * exponent less 8, except zero and the NaN code), sign OR-ed into the high byte */
typedef struct {
    __m512i hi0, hi1, lo0, lo1;
} tables;

static void tables_load(tables *t)
{
    const __m512i four = _mm512_set1_epi8(4), nan = _mm512_set1_epi8(0x7f);
    const __m512i h0 = _mm512_loadu_si512(DSV3_E4M3_BF16_HI), h1 = _mm512_loadu_si512(DSV3_E4M3_BF16_HI + 64);
    t->hi0 = _mm512_mask_sub_epi8(h0, _mm512_test_epi8_mask(h0, h0), h0, four); /* entry 0 (zero) kept */
    t->hi1 = _mm512_mask_sub_epi8(h1, _mm512_cmpneq_epi8_mask(h1, nan), h1, four); /* entry 127 (NaN) kept */
    t->lo0 = _mm512_loadu_si512(DSV3_E4M3_BF16_LO);
    t->lo1 = _mm512_loadu_si512(DSV3_E4M3_BF16_LO + 64);
}

/* 64 codes c -> bf16 (times 2^-8) of the even codes (A) and the odd codes (B), by shifts; normal codes only */
AI void dec_shift(__m512i c, __m512bh *A, __m512bh *B)
{
    const __m512i m = _mm512_set1_epi16((short)0x87f0), o = _mm512_set1_epi16(0x3800);
    /* (t & m) | o: ternary-logic 0xEA */
    *A = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srai_epi16(_mm512_slli_epi16(c, 8), 4), m, o, 0xEA);
    *B = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srai_epi16(c, 4), m, o, 0xEA);
}

/* The same values for every code (table lookups): A = low | high << 8 of the even bytes, B of the odd ones */
AI void dec_table(__m512i c, const tables *t, __m512bh *A, __m512bh *B)
{
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t->hi0, c, t->hi1), c,
                                                 _mm512_set1_epi8((char)0x80), 0xF8); /* hi | (c & 0x80) */
    const __m512i lo = _mm512_permutex2var_epi8(t->lo0, c, t->lo1);
    /* A | (B & C): 0xF8 */
    *A = (__m512bh)_mm512_ternarylogic_epi32(_mm512_slli_epi16(hi, 8), lo, _mm512_set1_epi16(0x00ff), 0xF8);
    *B = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(lo, 8), hi, _mm512_set1_epi16((short)0xff00), 0xF8);
}

/* Whether the 64 codes c need the table path: a zero exponent (zero, subnormals), or (nanchk) a NaN code. With
 * nanchk one test covers both: (code + 1) & 0x70 is zero for exponents 0 and 1 and for S.1111.111 (1 more
 * instruction; the exponent-1 codes then take the table path too, which gives the same values). */
AI int needs_table(const int nanchk, __m512i c)
{
    if (nanchk)
        return _mm512_testn_epi8_mask(_mm512_add_epi8(c, _mm512_set1_epi8(1)), _mm512_set1_epi8(0x70)) != 0;
    return _mm512_testn_epi8_mask(c, _mm512_set1_epi8(0x78)) != 0;
}

AI void dec64(const int nanchk, const uint8_t *p, const tables *t, __m512bh *A, __m512bh *B)
{
    const __m512i c = _mm512_loadu_si512(p);
    if (__builtin_expect(needs_table(nanchk, c), 0))
        dec_table(c, t, A, B);
    else
        dec_shift(c, A, B);
}

#define NRMAX 4 /* weight rows per tile */
#define MRMAX 8 /* rows of x per tile (mr * nr <= 8: 3 mr nr accumulators) */

/* Weight rows [n, n + nr) against rows [m0, m0 + mr) of x over the full 128-groups, then the K tail. Per
 * 64-block: decode the nr rows once, then per x row two loads and 2 nr vdpbf16ps. pf: prefetch the same bytes
 * of the next tile's rows (nr rows further on; rows are contiguous). */
AI void fp8_tile(const int mr, const int nr, const int nanchk, const int pf, const dsv3_lin_args *a, const tables *t,
                 int64_t n, int64_t m0)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, ng = (K + 127) / 128, Kb = K / 128 * 128;
    const uint8_t *r[NRMAX];
    const float *sc[NRMAX];
    const uint16_t *xh[MRMAX];
    __m512 acc[MRMAX][NRMAX], pa[MRMAX][NRMAX], pb[MRMAX][NRMAX];
    for (int j = 0; j < nr; j++) {
        r[j] = (const uint8_t *)w->data + (n + j) * K;
        sc[j] = (const float *)w->scale + ((n + j) / 128) * ng;
    }
    for (int i = 0; i < mr; i++) {
        xh[i] = a->xh + (m0 + i) * K;
        for (int j = 0; j < nr; j++)
            acc[i][j] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < Kb; k += 128) {
        for (int h = 0; h < 2; h++) { /* the two 64-blocks of the group */
            const int64_t kk = k + 64 * h;
            __m512bh A[NRMAX], B[NRMAX];
            for (int j = 0; j < nr; j++) {
                if (pf)
                    _mm_prefetch((const char *)(uintptr_t)((uintptr_t)(r[j] + kk) + (uintptr_t)(nr * K)), _MM_HINT_T0);
                dec64(nanchk, r[j] + kk, t, &A[j], &B[j]);
            }
            for (int i = 0; i < mr; i++) {
                const __m512bh xa = (__m512bh)_mm512_loadu_si512(xh[i] + kk);
                const __m512bh xb = (__m512bh)_mm512_loadu_si512(xh[i] + kk + 32);
                for (int j = 0; j < nr; j++) {
                    pa[i][j] = _mm512_dpbf16_ps(h ? pa[i][j] : _mm512_setzero_ps(), xa, A[j]);
                    pb[i][j] = _mm512_dpbf16_ps(h ? pb[i][j] : _mm512_setzero_ps(), xb, B[j]);
                }
            }
        }
        for (int j = 0; j < nr; j++) {
            const __m512 s = _mm512_set1_ps(sc[j][k / 128] * 256.0f); /* the codes carry 2^-8 */
            for (int i = 0; i < mr; i++)
                acc[i][j] = _mm512_fmadd_ps(_mm512_add_ps(pa[i][j], pb[i][j]), s, acc[i][j]);
        }
    }
    for (int j = 0; j < nr; j++) {
        float wt[128], tail[MRMAX] = {0};
        if (Kb < K) { /* < 128 columns in the last group, natural order: x rounded to bf16, the reference decode */
            dsv3_formats[DSV3_FMT_FP8_BLOCK].code_row(w, n + j, Kb, K - Kb, wt);
            for (int i = 0; i < mr; i++) {
                const float *x = a->x + (m0 + i) * K;
                float p = 0.0f;
                for (int64_t q = Kb; q < K; q++)
                    p += dsv3_bf16_to_f32(dsv3_f32_to_bf16(x[q])) * wt[q - Kb];
                tail[i] = p * sc[j][Kb / 128];
            }
        }
        for (int i = 0; i < mr; i++)
            a->y[(m0 + i) * w->n + n + j] =
                _mm512_reduce_add_ps(acc[i][j]) + tail[i] + (a->bias ? a->bias[n + j] : 0.0f);
    }
}

/* The tiles (mr, nr) the walk uses, as compile-time constants */
#define TILE(mr_, nr_) fp8_tile(mr_, nr_, nanchk, nr_ > 1, a, &t, n, m0)
#define NR4(mr_)                                                                                    \
    switch (nr) {                                                                                   \
    case 1: TILE(mr_, 1); break;                                                                    \
    case 2: TILE(mr_, 2); break;                                                                    \
    case 3: TILE(mr_, 3); break;                                                                    \
    default: TILE(mr_, 4); break;                                                                   \
    }
#define NR2(mr_)                                                                                    \
    if (nr == 1)                                                                                    \
        TILE(mr_, 1);                                                                               \
    else                                                                                            \
        TILE(mr_, 2);

/* The walk of gemv_dot_avx512.c's dot_rows: when all M rows of x (bf16, K * 2 bytes each) fit in X_L1 and
 * M <= MRMAX, one pass of all of them against one weight row after another (one sequential weight stream; M = 1
 * is this); otherwise passes of up to mrmax rows of x (as many as fit, at least 2) over tiles of 4 / 2 / 1 weight
 * rows (mr <= 2 / 4 / more), so each x vector loaded serves several weight rows and x stays in L1. */
#define X_L1 (16 << 10)
AI void fp8_rows(const int nanchk, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    tables t;
    tables_load(&t);
    const int64_t K = a->w->k, fit = K > 0 ? X_L1 / (K * 2) : MRMAX;
    const int mrmax = fit >= MRMAX ? MRMAX : fit > 2 ? (int)fit : 2;
    for (int64_t m0 = 0; m0 < a->m; m0 += mrmax) {
        const int mr = a->m - m0 < mrmax ? (int)(a->m - m0) : mrmax;
        const int step = a->m <= mrmax && mr * K * 2 <= X_L1 ? 1 : mr <= 2 ? 4 : mr <= 4 ? 2 : 1;
        for (int64_t n = n0; n < n1; n += step) {
            const int nr = n1 - n < step ? (int)(n1 - n) : step;
            switch (mr) {
            case 1: NR4(1) break;
            case 2: NR4(2) break;
            case 3: NR2(3) break;
            case 4: NR2(4) break;
            case 5: TILE(5, 1); break;
            case 6: TILE(6, 1); break;
            case 7: TILE(7, 1); break;
            default: TILE(8, 1); break;
            }
        }
    }
}

void dsv3_fast_fp8_block_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    if (a->w->nan_free) /* scanned once for NaN codes (dsv3_weight.nan_free): no NaN test */
        fp8_rows(0, a, n0, n1);
    else
        fp8_rows(1, a, n0, n1);
}

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
 * m * 2^-9: the formula makes them normal) and for the NaN codes (S.1111.111), so each 128-column group is tested
 * first (vptestnmb of the exponent bits; for a weight not scanned at load for NaN codes, dsv3_weight.nan_free,
 * also a compare for 0x7f magnitudes): a group holding one is decoded by the two 128-entry byte tables instead
 * (e4m3_bf16.h, the same values times 2^-8, NaN codes giving NaN), into the same order. Both paths give the same
 * bits for every code, so the results do not depend on which one ran. Real weights (block-scaled, amax at 448)
 * put well under 1 % of their groups on the table path.
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
 * Measured 2026-11-30 (see BENCHMARKS.md, "fp8 decode on AVX-512"). */
#include <immintrin.h>
#include <stdint.h>

#include "dsv3_dtypes.h"
#include "linear/act_q8.h"
#include "linear/e4m3_bf16.h"
#include "linear/lin_common.h"

#define MR 4 /* rows of x per tile */

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

/* Whether the two 64-code blocks need the table path: a zero exponent (zero, subnormals), or (nanchk) a NaN code */
AI int needs_table(const int nanchk, __m512i c0, __m512i c1)
{
    const __m512i e = _mm512_set1_epi8(0x78);
    __mmask64 k = _mm512_testn_epi8_mask(c0, e) | _mm512_testn_epi8_mask(c1, e);
    if (nanchk) {
        const __m512i s = _mm512_set1_epi8((char)0x80), ff = _mm512_set1_epi8((char)0xff);
        k |= _mm512_cmpeq_epi8_mask(_mm512_or_si512(c0, s), ff) | _mm512_cmpeq_epi8_mask(_mm512_or_si512(c1, s), ff);
    }
    return k != 0;
}

/* Weight row n against rows [m0, m0 + mr) of x */
AI void fp8_tile(const int mr, const int nanchk, const dsv3_lin_args *a, const tables *t, int64_t n, int64_t m0)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, ng = (K + 127) / 128, Kb = K / 128 * 128;
    const uint8_t *r = (const uint8_t *)w->data + n * K;
    const float *sc = (const float *)w->scale + (n / 128) * ng;
    const uint16_t *xh[MR];
    __m512 acc[MR];
    for (int i = 0; i < mr; i++) {
        xh[i] = a->xh + (m0 + i) * K;
        acc[i] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < Kb; k += 128) {
        const __m512i c0 = _mm512_loadu_si512(r + k), c1 = _mm512_loadu_si512(r + k + 64);
        __m512bh A0, B0, A1, B1;
        if (__builtin_expect(needs_table(nanchk, c0, c1), 0)) {
            dec_table(c0, t, &A0, &B0);
            dec_table(c1, t, &A1, &B1);
        } else {
            dec_shift(c0, &A0, &B0);
            dec_shift(c1, &A1, &B1);
        }
        const __m512 s = _mm512_set1_ps(sc[k / 128] * 256.0f); /* the codes carry 2^-8 */
        for (int i = 0; i < mr; i++) {
            const uint16_t *x = xh[i] + k;
            const __m512 z = _mm512_setzero_ps();
            const __m512 pa = _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, (__m512bh)_mm512_loadu_si512(x), A0),
                                               (__m512bh)_mm512_loadu_si512(x + 64), A1);
            const __m512 pb = _mm512_dpbf16_ps(_mm512_dpbf16_ps(z, (__m512bh)_mm512_loadu_si512(x + 32), B0),
                                               (__m512bh)_mm512_loadu_si512(x + 96), B1);
            acc[i] = _mm512_fmadd_ps(_mm512_add_ps(pa, pb), s, acc[i]);
        }
    }
    float wt[128], tail[MR] = {0};
    if (Kb < K) { /* < 128 columns in the last group, natural order: x rounded to bf16, the reference decode */
        dsv3_formats[DSV3_FMT_FP8_BLOCK].code_row(w, n, Kb, K - Kb, wt);
        for (int i = 0; i < mr; i++) {
            const float *x = a->x + (m0 + i) * K;
            float p = 0.0f;
            for (int64_t q = Kb; q < K; q++)
                p += dsv3_bf16_to_f32(dsv3_f32_to_bf16(x[q])) * wt[q - Kb];
            tail[i] = p * sc[Kb / 128];
        }
    }
    for (int i = 0; i < mr; i++)
        a->y[(m0 + i) * w->n + n] = _mm512_reduce_add_ps(acc[i]) + tail[i] + (a->bias ? a->bias[n] : 0.0f);
}

AI void fp8_rows(const int nanchk, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    tables t;
    tables_load(&t);
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m0 = 0; m0 < a->m; m0 += MR)
            switch (a->m - m0 < MR ? a->m - m0 : MR) {
            case 1: fp8_tile(1, nanchk, a, &t, n, m0); break;
            case 2: fp8_tile(2, nanchk, a, &t, n, m0); break;
            case 3: fp8_tile(3, nanchk, a, &t, n, m0); break;
            default: fp8_tile(4, nanchk, a, &t, n, m0); break;
            }
}

void dsv3_fast_fp8_block_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    if (a->w->nan_free) /* scanned once for NaN codes (dsv3_weight.nan_free): no NaN test */
        fp8_rows(0, a, n0, n1);
    else
        fp8_rows(1, a, n0, n1);
}

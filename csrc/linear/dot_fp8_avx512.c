/* AVX-512 fast kernel of fp8_block weights at small M (M < GEMM_MIN_M_FP8): the AVX2 fast kernel's arithmetic
 * (dot_fp_avx2.c, dot_fp.h) in 512-bit registers, so both ISAs give the same results bit for bit.
 *
 * Accuracy class: x rounded once to bf16 (the bf16-hi definition, act_q8.h), f32 products and sums:
 *     y = sum_g s(n, g) sum_{k in g} bf16(x[m, k]) e4m3(n, k)
 * (exact products: 8 x 4 significant bits), summed in the AVX2 kernel's order; its scalar twin is
 * dsv3_fast_bf16hi_scalar (another order: equal within 1e-5 * sum |x| |W|, tests/test_fast_fp.py).
 *
 * x is the AVX2 kernel's: bf16(x) * 2^56 in the e4m3x32_raw order, f32 (DSV3_X_F32_P32) up to K = 4096, bf16
 * (DSV3_X_BF16_P32) above (linear.c picks the layout for the format table's fast_x). The AVX2 kernel keeps 4
 * chains of 8 f32 lanes per 128-column group, p[v][j] over the codes 32 s + 4 j + v (s = 0..3); here the chain
 * vectors are paired: Z01 = (p[0] | p[1]), Z23 = (p[2] | p[3]), the same 32 lanes and the same FMAs in the same
 * order. 32 codes per step, one 256-bit load broadcast to both halves; as 16-bit words, a shift left by 8 in the
 * low half only (a merge-masked vpsllw), one arithmetic shift right by 4, and a mask give Z23's codes (bytes 2 and
 * 3 of each dword, in the high words); one more shift and mask give Z01's (bytes 0 and 1): 5 instructions and 2
 * FMAs per 32 codes (AVX2: 9 and 4). In the f32 layout a row of x is two 64-byte loads per step (x of the codes
 * 4 j + v, v = 0..3, lies at 8 v + j); the bf16 layout (each 16-word half holds v = 2 h in its low words and
 * 2 h + 1 in its high words) is widened with a broadcast load, a mask and a merge-masked shift. At the group end
 * (p0 + p1) + (p2 + p3) as 8 lanes (the AVX2 order), scaled into an 8-lane accumulator with one FMA; one hsum8
 * per output, x's 2^56 and the codes' 2^-120 taken out once.
 *
 * e4m3 decode: exact (subnormal codes become f32 denormals times x * 2^56: products of at least 2^-70 stay
 * normal). The NaN codes S.1111.111 would decode as 480: a weight scanned once at load (dsv3_weight.nan_free,
 * csrc/model/pack_weights.c) runs without checks, otherwise the maximum of the magnitude bytes is kept per row and
 * a row holding one is recomputed by the exact kernel (NaN, as the reference decoder gives).
 *
 * Tiles of up to 4 rows of x against one weight row: the weight is decoded once per step for all of them, each
 * (weight row, x row) pair has its own chains, so every row's result is the same whatever M (and tile) it was
 * computed in. Decode (M = 1) walks a thread's rows one after another (one sequential stream, no software
 * prefetch), as the AVX2 kernel. */
#include <immintrin.h>
#include <stdint.h>

#include "linear/act_q8.h"
#include "linear/lin_common.h"

#define MR 4 /* rows of x per tile */

AI float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* x rows of a tile: bf16 (DSV3_X_BF16_P32, h) or f32 (DSV3_X_F32_P32, f) */
typedef struct {
    const uint16_t *h[MR];
    const float *f[MR];
} fp8_x;

/* x of 16 codes from the bf16 layout at p (16 words: low words the first 8 lanes, high words the last 8) */
AI __m512 x16_bf16(const uint16_t *p)
{
    const __m512i b = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
    const __m512i hi = _mm512_and_si512(b, _mm512_set1_epi32((int)0xffff0000u));
    return _mm512_castsi512_ps(_mm512_mask_slli_epi32(hi, 0x00ff, b, 16));
}

/* 32 columns at k of one weight row against rows [0, mr) of x into the chains z; track: keep the NaN tracker top
 * (the weight is not known to be free of NaN codes); xf: x in f32, else bf16 */
AI void fp8_step(const int mr, const int track, const int xf, const uint8_t *row, const fp8_x *x, int64_t k,
                 __m512 (*z)[2], __m256i *top)
{
    const __m256i b = _mm256_loadu_si256((const __m256i *)(row + k));
    if (track)
        *top = _mm256_max_epu8(*top, _mm256_and_si256(b, _mm256_set1_epi8(0x7f)));
    const __m512i m = _mm512_set1_epi32((int)0x87f00000u);
    const __m512i bb = _mm512_broadcast_i64x4(b);
    /* words of the low half shifted left by 8 (bytes 0 and 2 of each dword at the top of their word), the high
     * half as loaded (bytes 1 and 3); then sign and magnitude at the bf16 places (e4m3x32_raw) */
    const __m512i t = _mm512_srai_epi16(_mm512_mask_slli_epi16(bb, 0x0000ffffu, bb, 8), 4);
    const __m512 w23 = _mm512_castsi512_ps(_mm512_and_si512(t, m));
    const __m512 w01 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(t, 16), m));
    for (int i = 0; i < mr; i++) {
        const __m512 x01 = xf ? _mm512_loadu_ps(x->f[i] + k) : x16_bf16(x->h[i] + k);
        const __m512 x23 = xf ? _mm512_loadu_ps(x->f[i] + k + 16) : x16_bf16(x->h[i] + k + 16);
        z[i][0] = _mm512_fmadd_ps(x01, w01, z[i][0]);
        z[i][1] = _mm512_fmadd_ps(x23, w23, z[i][1]);
    }
}

/* (p0 + p1) + (p2 + p3) of the AVX2 kernel: 8 lanes */
AI __m256 group_sum(__m512 z01, __m512 z23)
{
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(z01), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z01), 1)));
    const __m256 b = _mm256_add_ps(_mm512_castps512_ps256(z23), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z23), 1)));
    return _mm256_add_ps(a, b);
}

/* Weight row n against rows [m0, m0 + mr) of x. Returns 1 if the row holds a NaN code (its y not written;
 * always 0 without track). */
AI int fp8_tile(const int mr, const int track, const int xf, const dsv3_lin_args *a, int64_t n, int64_t m0)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, Kv = K / 32 * 32, ng = (K + 127) / 128;
    const uint8_t *row = (const uint8_t *)w->data + n * K;
    const float *sc = (const float *)w->scale + (n / 128) * ng;
    fp8_x x;
    __m256 acc[MR];
    __m512 z[MR][2];
    __m256i top = _mm256_setzero_si256();
    for (int i = 0; i < mr; i++) {
        x.h[i] = xf ? NULL : a->xh + (m0 + i) * K;
        x.f[i] = xf ? a->xp + (m0 + i) * K : NULL;
        acc[i] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g * 128 < Kv; g++) {
        const int64_t k1 = g * 128 + 128 < Kv ? g * 128 + 128 : Kv;
        for (int i = 0; i < mr; i++)
            z[i][0] = z[i][1] = _mm512_setzero_ps();
        if (k1 - g * 128 == 128) { /* a full group: four steps, unrolled */
            fp8_step(mr, track, xf, row, &x, g * 128, z, &top);
            fp8_step(mr, track, xf, row, &x, g * 128 + 32, z, &top);
            fp8_step(mr, track, xf, row, &x, g * 128 + 64, z, &top);
            fp8_step(mr, track, xf, row, &x, g * 128 + 96, z, &top);
        } else
            for (int64_t k = g * 128; k < k1; k += 32)
                fp8_step(mr, track, xf, row, &x, k, z, &top);
        const __m256 sv = _mm256_set1_ps(sc[g]);
        for (int i = 0; i < mr; i++)
            acc[i] = _mm256_fmadd_ps(group_sum(z[i][0], z[i][1]), sv, acc[i]);
    }
    if (track && _mm256_movemask_epi8(_mm256_cmpeq_epi8(top, _mm256_set1_epi8(0x7f))))
        return 1;
    float wt[32];
    if (Kv < K) /* < 32 codes (natural order), all in the last group: the reference decode */
        dsv3_formats[DSV3_FMT_FP8_BLOCK].code_row(w, n, Kv, K - Kv, wt);
    for (int i = 0; i < mr; i++) {
        float tail = 0.0f;
        for (int64_t q = Kv; q < K; q++)
            tail += (xf ? x.f[i][q] : dsv3_bf16_to_f32(x.h[i][q])) * wt[q - Kv];
        if (Kv < K)
            tail *= sc[Kv / 128];
        /* x carries 2^56, the codes 2^-120 */
        a->y[(m0 + i) * w->n + n] = (hsum8(acc[i]) + tail * 0x1p-120f) * 0x1p64f + (a->bias ? a->bias[n] : 0.0f);
    }
    return 0;
}

/* Rows [n0, n1), tiles of up to MR rows of x; a row with a NaN code: the exact kernel on the caller's f32 x
 * (a->x), which gives NaN */
AI void fp8_rows(const int track, const int xf, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    for (int64_t n = n0; n < n1; n++) {
        int nan = 0;
        for (int64_t m0 = 0; m0 < a->m; m0 += MR)
            switch (a->m - m0 < MR ? a->m - m0 : MR) {
            case 1: nan |= fp8_tile(1, track, xf, a, n, m0); break;
            case 2: nan |= fp8_tile(2, track, xf, a, n, m0); break;
            case 3: nan |= fp8_tile(3, track, xf, a, n, m0); break;
            default: nan |= fp8_tile(4, track, xf, a, n, m0); break;
            }
        if (nan)
            dsv3_gemv_fp8_block_avx2(a, n, n + 1);
    }
}

void dsv3_fast_fp8_block_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    if (a->w->nan_free) /* checked once (dsv3_weight_scan_nan): no tracking */
        a->xp ? fp8_rows(0, 1, a, n0, n1) : fp8_rows(0, 0, a, n0, n1);
    else
        a->xp ? fp8_rows(1, 1, a, n0, n1) : fp8_rows(1, 0, a, n0, n1);
}

/* Small-M AVX-512 BF16 kernels (bf16 and fp8_block weights): weights become bf16 in registers and
 * meet x through vdpbf16ps; x is split by the dispatcher into bf16 hi + lo (16 significant bits, so
 * the result stays at f32-path accuracy) and laid out in the decoder's order (dsv3_xlayout).
 *
 * fp8 decode (exact, subnormals included): 64 codes -> two vpermi2b lookups over 128-entry tables of
 * the high and low bytes of bf16(|code|), the sign bit OR-ed into the high byte, then in-lane byte
 * unpacks give two vectors of 32 bf16 (codes 0-7,16-23,32-39,48-55 and 8-15,24-31,40-47,56-63 of
 * the block; x is pre-permuted to match). Per 128-wide K group: fp32 partial sums, then
 * acc += partial * scale (* activation scale in dynamic mode), DeepSeek fp8_gemm's order.
 * K beyond the last full 64-block is done in f32 from a->x (scalar, fixed order). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "linear/lin_common.h"

#define DMR 2 /* rows of x per tile (register budget: 4 tables + 8 partials + 4 accumulators) */

/* bf16 bits of e4m3fn magnitudes 0..127 (code 127 is NaN -> 0x7fc0), split into bytes. */
static const uint8_t E4M3_BF16_HI[128] = {
    0x00, 0x3b, 0x3b, 0x3b, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c,
    0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d,
    0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e,
    0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f,
    0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x7f};
static const uint8_t E4M3_BF16_LO[128] = {
    0x00, 0x00, 0x80, 0xc0, 0x00, 0x20, 0x40, 0x60, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xc0};

typedef struct {
    __m512i hi0, hi1, lo0, lo1;
} fp8_tables;

/* 64 e4m3 codes -> two vectors of 32 bf16 (block order described above) */
AI void dec_fp8_bf16(const uint8_t *p, const fp8_tables *t, __m512bh *A, __m512bh *B)
{
    const __m512i c = _mm512_loadu_si512(p);
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t->hi0, c, t->hi1), c,
                                                 _mm512_set1_epi8((char)0x80), 0xF8); /* hi | (c & 0x80) */
    const __m512i lo = _mm512_permutex2var_epi8(t->lo0, c, t->lo1);
    *A = (__m512bh)_mm512_unpacklo_epi8(lo, hi);
    *B = (__m512bh)_mm512_unpackhi_epi8(lo, hi);
}

#define DP(acc, xp, w) _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(xp), w)

/* partial sums of one K group [k0, kend) (kend a multiple of 64 within the full blocks) */
AI void dot_group(dsv3_format f, const int mr, const dsv3_lin_args *a, const uint8_t *row, const fp8_tables *t,
                  int64_t k0, int64_t kend, int64_t m0, __m512 *part)
{
    const int64_t K = a->w->k;
    __m512 ph[DMR][2], pl[DMR][2];
    for (int i = 0; i < mr; i++)
        ph[i][0] = ph[i][1] = pl[i][0] = pl[i][1] = _mm512_setzero_ps();
    for (int64_t k = k0; k < kend; k += 64) {
        __m512bh A, B;
        if (f == DSV3_FMT_FP8_BLOCK)
            dec_fp8_bf16(row + k, t, &A, &B);
        else {
            A = (__m512bh)_mm512_loadu_si512((const uint16_t *)row + k);
            B = (__m512bh)_mm512_loadu_si512((const uint16_t *)row + k + 32);
        }
        for (int i = 0; i < mr; i++) {
            const uint16_t *xh = a->xh + (m0 + i) * K + k, *xl = a->xl + (m0 + i) * K + k;
            ph[i][0] = DP(ph[i][0], xh, A);
            ph[i][1] = DP(ph[i][1], xh + 32, B);
            pl[i][0] = DP(pl[i][0], xl, A);
            pl[i][1] = DP(pl[i][1], xl + 32, B);
        }
    }
    for (int i = 0; i < mr; i++)
        part[i] = _mm512_add_ps(_mm512_add_ps(ph[i][0], ph[i][1]), _mm512_add_ps(pl[i][0], pl[i][1]));
}

AI void dot_tile(dsv3_format f, const int mr, const dsv3_lin_args *a, const fp8_tables *t, int64_t n, int64_t m0,
                 int64_t klo, int64_t khi)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, Kb = K / 64 * 64, G = kgroup(f, w), ng = (K + G - 1) / G;
    const int64_t kbh = khi < Kb ? khi : Kb; /* full 64-blocks of this chunk end here */
    const uint8_t *row = row_ptr(f, w, n);
    __m512 acc[DMR], part[DMR];
    for (int i = 0; i < mr; i++)
        acc[i] = _mm512_setzero_ps();
    for (int64_t g = klo / G; g * G < kbh; g++) {
        const int64_t kbeg = g * G > klo ? g * G : klo, kend = (g + 1) * G < kbh ? (g + 1) * G : kbh;
        dot_group(f, mr, a, row, t, kbeg, kend, m0, part);
        const float s = gscale(f, w, n, g, ng);
        for (int i = 0; i < mr; i++)
            acc[i] = _mm512_fmadd_ps(part[i], _mm512_set1_ps(a->xs ? a->xs[(m0 + i) * ng + g] * s : s), acc[i]);
    }
    float tail[DMR] = {0};
    if (Kb < K && khi >= K) { /* within one group: Kb is a multiple of 64 and G of 128 or K */
        float wt[64];
        dsv3_formats[f].code_row(w, n, Kb, K - Kb, wt);
        const int64_t gt = Kb / G;
        const float s = gscale(f, w, n, gt, ng);
        for (int i = 0; i < mr; i++) {
            const float *x = a->x + (m0 + i) * K;
            float p = 0.0f;
            for (int64_t j = Kb; j < K; j++)
                p += x[j] * wt[j - Kb];
            tail[i] = p * (a->xs ? a->xs[(m0 + i) * ng + gt] * s : s);
        }
    }
    for (int i = 0; i < mr; i++) {
        float *y = a->y + (m0 + i) * w->n + n;
        const float v = _mm512_reduce_add_ps(acc[i]) + tail[i];
        *y = klo == 0 ? v : *y + v;
        if (khi >= K && a->bias)
            *y += a->bias[n];
    }
}

AI void dot_rows(dsv3_format f, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    fp8_tables t;
    t.hi0 = _mm512_loadu_si512(E4M3_BF16_HI);
    t.hi1 = _mm512_loadu_si512(E4M3_BF16_HI + 64);
    t.lo0 = _mm512_loadu_si512(E4M3_BF16_LO);
    t.lo1 = _mm512_loadu_si512(E4M3_BF16_LO + 64);
    for (int64_t klo = 0; klo < a->w->k; klo += DSV3_GEMV_KC) { /* K chunks: x stays in L1 */
        const int64_t khi = klo + DSV3_GEMV_KC < a->w->k ? klo + DSV3_GEMV_KC : a->w->k;
        for (int64_t n = n0; n < n1; n++)
            for (int64_t m0 = 0; m0 < a->m; m0 += DMR) {
                if (a->m - m0 >= 2)
                    dot_tile(f, 2, a, &t, n, m0, klo, khi);
                else
                    dot_tile(f, 1, a, &t, n, m0, klo, khi);
            }
    }
}

void dsv3_gemv_bf16_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { dot_rows(DSV3_FMT_BF16, a, n0, n1); }
void dsv3_gemv_fp8_block_dot_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    dot_rows(DSV3_FMT_FP8_BLOCK, a, n0, n1);
}

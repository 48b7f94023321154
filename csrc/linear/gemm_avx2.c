/* Large-M (prefill) kernels on AVX2: f32 FMA, one work item = 32 output columns x all M rows.
 *
 * BLIS structure: the framework (gemm below) owns K blocking, packing and edges; the micro-kernel
 * knows only registers.
 * 1. Per K block of KC columns, the 32 weight rows are decoded in registers (decode_avx2.h, exact),
 *    multiplied by their group scale (one f32 rounding, as the AVX2 small-M kernels and `dequantize`
 *    do) and transposed 8x8 into a per-thread f32 tile: two halves [KC][16] (16 KB each, L1-resident),
 *    decoded once and reused by every row of x (the "packing", amortised over M).
 * 2. Micro-kernel: 6 rows x 16 columns (12 ymm accumulators, 2 tile loads and 6 x broadcasts per k);
 *    partial sums go to y between K blocks (the first block starts from zero, the last adds bias).
 * x is read in f32 (no rounding): the result is at f32 level like the small-M paths.
 * Each y element is one accumulator lane summed in K order (blocks in order, k in order within a
 * block, then + bias): it does not depend on how N is split across threads nor on M. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "linear/decode_avx2.h"
#include "linear/lin_common.h"

#define NR DSV3_GEMM_NR /* 32 columns per work item (linear.c splits N by this) */
#define GMR 6           /* rows of x per micro-kernel */
#define KC 256          /* K block: a multiple of every K group (16, 32, 128) and of the 8-wide decode */

/* 8x8 transpose: r[j] = row j (8 consecutive k) -> r[j] = column j (k + j of 8 rows). */
AI void transpose8(__m256 *r)
{
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* fp8: 32 codes at k of rows row[0..rows) (the rest zero) times their scales s, stored at dst + q * 16 (q < 32, 8
 * rows each). The 8 loads, seen as 8 dwords each, are transposed 8x8 (dword t of row j -> dword j of vector t),
 * so vector t holds 4 consecutive codes of every row and e4m3x32_raw (vector v = byte v of every dword) decodes
 * it straight into 4 columns of the tile: one 8x8 transpose and 8 decodes of 9 instructions per 32 codes of 8
 * rows, where the 8-code path below decodes 8 codes of each row at a time (32 decodes) and transposes the f32
 * (4 transposes). Measured 2026-11-30 (one thread, 2048 x 256 in L2, M = 12): 0.213 -> 0.163 ms per call.
 * The NaN codes become the quiet NaN with their sign (as e4m3_bits_raw), unless the weight was scanned free of
 * them; code * 2^-120 times s * 2^120 (exact for |s| < 2^8) or times 2^120, then s: the code times s rounded
 * once, bitwise the tiles of the 8-code path. */
AI void pack_fp8_32(const uint8_t *const *row, int rows, int64_t k, const float *s, int nan_free, float *dst)
{
    __m256 b[8];
    for (int r = 0; r < 8; r++)
        b[r] = r < rows ? _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)(row[r] + k))) : _mm256_setzero_ps();
    transpose8(b);
    const __m256 sv = _mm256_loadu_ps(s);
    const __m256 sa = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), sv); /* |s| < 2^8: s * 2^120 is finite and exact */
    const int one = _mm256_movemask_ps(_mm256_cmp_ps(sa, _mm256_set1_ps(0x1p8f), _CMP_LT_OQ)) == 0xff;
    const __m256 s1 = one ? _mm256_mul_ps(sv, _mm256_set1_ps(0x1p120f)) : _mm256_set1_ps(0x1p120f);
    const __m256i mag = _mm256_set1_epi32(0x07f00000), q = _mm256_set1_epi32(0x78300000);
    for (int t = 0; t < 8; t++) {
        __m256 wv[4];
        e4m3x32_raw(_mm256_castps_si256(b[t]), wv);
        for (int v = 0; v < 4; v++) {
            __m256i bits = _mm256_castps_si256(wv[v]);
            if (!nan_free) {
                const __m256i nan = _mm256_cmpeq_epi32(_mm256_and_si256(bits, mag), mag);
                bits = _mm256_xor_si256(bits, _mm256_and_si256(nan, q));
            }
            __m256 x = _mm256_mul_ps(_mm256_castsi256_ps(bits), s1);
            if (!one)
                x = _mm256_mul_ps(x, sv);
            _mm256_store_ps(dst + (4 * t + v) * 16, x);
        }
    }
}

/* Decode W[n0 + c, k0 + j] * scale for c < nc (zero for nc <= c < NR), j < kc, into the tile:
 * column c at half c / 16, element (j, c) at tile[(c / 16) * KC * 16 + j * 16 + c % 16]. */
AI void pack_tile(dsv3_format f, const dsv3_weight *w, int64_t n0, int nc, int64_t k0, int64_t kc, float *tile)
{
    const int64_t K = w->k, G = kgroup(f, w), ng = (K + G - 1) / G;
    const int64_t kv = (k0 + kc) / 8 * 8 - k0; /* 8-wide vector part of this block (k0 % 8 == 0) */
    for (int c0 = 0; c0 < NR; c0 += 8) {
        float *dst = tile + (c0 / 16) * KC * 16 + c0 % 16;
        const uint8_t *row[8];
        int rows = nc - c0 < 8 ? nc - c0 : 8;
        rows = rows < 0 ? 0 : rows;
        for (int r = 0; r < rows; r++)
            row[r] = row_ptr(f, w, n0 + c0 + r);
        float s[8] = {0};
        int64_t gcur = -1;
        for (int64_t j = 0; j < kv;) {
            const int64_t g = (k0 + j) / G;
            if (g != gcur) { /* 8 | G: one scale per row for the 8 codes */
                for (int r = 0; r < rows; r++)
                    s[r] = gscale(f, w, n0 + c0 + r, g, ng);
                gcur = g;
            }
            __m256 v[8];
            if (f == DSV3_FMT_FP8_BLOCK && j + 32 <= kv) { /* 32 codes of the 8 rows at once: pack_fp8_32 */
                pack_fp8_32(row, rows, k0 + j, s, w->nan_free, dst + j * 16);
                j += 32;
                continue;
            }
            for (int r = 0; r < 8; r++)
                v[r] = r < rows ? _mm256_mul_ps(DEC(f, w, row[r], k0 + j), _mm256_set1_ps(s[r]))
                                : _mm256_setzero_ps();
            transpose8(v);
            for (int q = 0; q < 8; q++)
                _mm256_store_ps(dst + (j + q) * 16, v[q]);
            j += 8;
        }
        if (kv < kc) { /* K tail (< 8 columns): the format table's scalar decode */
            float code[8];
            for (int r = 0; r < 8; r++) {
                if (r < rows)
                    dsv3_formats[f].code_row(w, n0 + c0 + r, k0 + kv, kc - kv, code);
                for (int64_t j = kv; j < kc; j++)
                    dst[j * 16 + r] = r < rows ? code[j - kv] * gscale(f, w, n0 + c0 + r, (k0 + j) / G, ng) : 0.0f;
            }
        }
    }
}

/* y[m0 + i, nb + c] (+)= sum_{j < kc} x[m0 + i, k0 + j] * half[j][c], i < mr, c < nc16. */
AI void micro(const int mr, const float *half, int64_t kc, const float *x0, int64_t K, float *y0, int64_t N,
              int nc16, int first, const float *bias)
{
    __m256 c[GMR][2];
    const float *x[GMR];
    float *y[GMR];
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    if (nc16 < 16) {
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc16), idx);
        m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc16 - 8), idx);
    }
    for (int i = 0; i < mr; i++) {
        x[i] = x0 + i * K;
        y[i] = y0 + i * N;
        if (first)
            c[i][0] = c[i][1] = _mm256_setzero_ps();
        else if (nc16 == 16) {
            c[i][0] = _mm256_loadu_ps(y[i]);
            c[i][1] = _mm256_loadu_ps(y[i] + 8);
        } else {
            c[i][0] = _mm256_maskload_ps(y[i], m0);
            c[i][1] = _mm256_maskload_ps(y[i] + 8, m1);
        }
    }
    for (int64_t k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_load_ps(half + k * 16), b1 = _mm256_load_ps(half + k * 16 + 8);
        for (int i = 0; i < mr; i++) {
            const __m256 av = _mm256_broadcast_ss(x[i] + k);
            c[i][0] = _mm256_fmadd_ps(av, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(av, b1, c[i][1]);
        }
    }
    __m256 bv0 = _mm256_setzero_ps(), bv1 = _mm256_setzero_ps();
    if (bias) {
        bv0 = nc16 == 16 ? _mm256_loadu_ps(bias) : _mm256_maskload_ps(bias, m0);
        bv1 = nc16 == 16 ? _mm256_loadu_ps(bias + 8) : _mm256_maskload_ps(bias + 8, m1);
    }
    for (int i = 0; i < mr; i++) {
        if (bias) {
            c[i][0] = _mm256_add_ps(c[i][0], bv0);
            c[i][1] = _mm256_add_ps(c[i][1], bv1);
        }
        if (nc16 == 16) {
            _mm256_storeu_ps(y[i], c[i][0]);
            _mm256_storeu_ps(y[i] + 8, c[i][1]);
        } else {
            _mm256_maskstore_ps(y[i], m0, c[i][0]);
            _mm256_maskstore_ps(y[i] + 8, m1, c[i][1]);
        }
    }
}

AI void gemm(dsv3_format f, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, N = w->n, M = a->m;
    const int nc = (int)(n1 - n0);
    float tile[2 * KC * 16] __attribute__((aligned(32))); /* 32 KB per thread */
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = K - k0 < KC ? K - k0 : KC;
        const int first = k0 == 0, last = k0 + kc >= K;
        pack_tile(f, w, n0, nc, k0, kc, tile);
        for (int h = 0; h * 16 < nc; h++) {
            const int nc16 = nc - h * 16 < 16 ? nc - h * 16 : 16;
            const float *half = tile + h * KC * 16, *bias = last && a->bias ? a->bias + n0 + h * 16 : NULL;
            for (int64_t m0 = 0; m0 < M; m0 += GMR) {
                const float *x0 = a->x + m0 * K + k0;
                float *y0 = a->y + m0 * N + n0 + h * 16;
                switch (M - m0 < GMR ? M - m0 : GMR) {
                case 1: micro(1, half, kc, x0, K, y0, N, nc16, first, bias); break;
                case 2: micro(2, half, kc, x0, K, y0, N, nc16, first, bias); break;
                case 3: micro(3, half, kc, x0, K, y0, N, nc16, first, bias); break;
                case 4: micro(4, half, kc, x0, K, y0, N, nc16, first, bias); break;
                case 5: micro(5, half, kc, x0, K, y0, N, nc16, first, bias); break;
                default: micro(6, half, kc, x0, K, y0, N, nc16, first, bias); break;
                }
            }
        }
    }
}

void dsv3_gemm_bf16_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_BF16, a, n0, n1); }
void dsv3_gemm_fp8_block_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_FP8_BLOCK, a, n0, n1); }
void dsv3_gemm_nvfp4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_NVFP4, a, n0, n1); }
void dsv3_gemm_int8_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_INT8, a, n0, n1); }
void dsv3_gemm_int4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_INT4, a, n0, n1); }

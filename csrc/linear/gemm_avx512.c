/* Large-M (prefill) kernels on AVX-512 BF16: one work item = 32 output columns x all M rows.
 *
 * 1. Decode the 32 weight rows once into a per-call bf16 tile in the vdpbf16ps pair layout
 *    tile[k/2][col][2] (K x 32 x 2 bytes: 458 KB for K = 7168, lives in L2). Codes are stored
 *    UNSCALED: every format's codes are exact in bf16 (e4m3, e2m1, int4, int8 within +-127, bf16).
 * 2. Micro-kernel: 6 rows x 32 columns (12 zmm accumulators + 12 per-group partials); per K pair,
 *    broadcast x[m, k:k+2] (bf16, 32-bit) and vdpbf16ps against two tile vectors; at the end of each
 *    K group the partials are scaled by that group's 32 column scales (f32) and accumulated.
 * x arrives in bf16 (a->xb): the only rounding beyond the f32 paths is x -> bf16.
 * Fixed order everywhere; a column's result does not depend on how N is split across threads. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "linear/decode_avx512.h"
#include "linear/lin_common.h"

#define NR DSV3_GEMM_NR /* 32 */
#define GMR 6

AI uint32_t xpair(const uint16_t *x, int64_t k, int64_t K)
{
    uint32_t v;
    if (k + 1 < K)
        memcpy(&v, x + k, 4);
    else
        v = x[k];
    return v;
}

/* 16 x 16 transpose of 32-bit elements: v[i] = row i in, v[j] = column j out (unpack 32, unpack 64, then
 * 128-bit lane shuffles twice). */
AI void transpose16(__m512i v[16])
{
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* v[4q + r] holds, in 128-bit lane l, column 4l + r of rows 4q..4q+3 */
    for (int q = 0; q < 16; q += 8)
        for (int r = 0; r < 4; r++) {
            t[q + r] = _mm512_shuffle_i32x4(v[q + r], v[q + 4 + r], 0x88);
            t[q + 4 + r] = _mm512_shuffle_i32x4(v[q + r], v[q + 4 + r], 0xdd);
        }
    for (int r = 0; r < 8; r++) {
        v[r] = _mm512_shuffle_i32x4(t[r], t[8 + r], 0x88);
        v[8 + r] = _mm512_shuffle_i32x4(t[r], t[8 + r], 0xdd);
    }
}

/* bf16 weights with even K: the codes are already bf16 pairs, so full blocks of 16 rows x 16 pairs are
 * transposed into the tile in registers (the element loop below costs a load and a store per pair:
 * 15-25 % of a 1-thread prefill GEMM at K = 2048); returns the first pair left to the element loop. */
AI int64_t bf16_tile_blocks(const dsv3_weight *w, int64_t n0, int nc, uint32_t *tile)
{
    const int64_t K = w->k, pb = K % 2 ? 0 : K / 2 / 16 * 16;
    if (nc < NR)
        return 0;
    for (int c0 = 0; c0 < NR; c0 += 16)
        for (int64_t p = 0; p < pb; p += 16) {
            __m512i v[16];
            for (int i = 0; i < 16; i++)
                v[i] = _mm512_loadu_si512((const uint16_t *)w->data + (n0 + c0 + i) * K + 2 * p);
            transpose16(v);
            for (int j = 0; j < 16; j++)
                _mm512_storeu_si512(tile + (p + j) * NR + c0, v[j]);
        }
    return pb;
}

/* Decode rows [n0, n0+nc) into the pair-layout tile (zero columns beyond nc, zero pad for odd K)
 * and the per-group column scales scl[g][NR]. */
AI void decode_tile(dsv3_format f, const dsv3_weight *w, int64_t n0, int nc, uint32_t *tile, uint16_t *tmp,
                    float *scl)
{
    const int64_t K = w->k, kp = (K + 1) / 2, G = kgroup(f, w), ng = (K + G - 1) / G;
    const int64_t pdone = f == DSV3_FMT_BF16 ? bf16_tile_blocks(w, n0, nc, tile) : 0;
    for (int c = 0; c < NR; c++) {
        if (c >= nc) {
            for (int64_t p = 0; p < kp; p++)
                tile[p * NR + c] = 0;
            for (int64_t g = 0; g < ng; g++)
                scl[g * NR + c] = 0.0f;
            continue;
        }
        const int64_t n = n0 + c, kv = K / 16 * 16;
        const uint8_t *row = row_ptr(f, w, n);
        if (f == DSV3_FMT_BF16 && pdone) { /* blocks done: pairs [pdone, kp) straight from the row */
            for (int64_t p = pdone; p < kp; p++)
                tile[p * NR + c] = xpair((const uint16_t *)row, 2 * p, K);
            for (int64_t g = 0; g < ng; g++)
                scl[g * NR + c] = gscale(f, w, n, g, ng);
            continue;
        }
        if (f == DSV3_FMT_BF16) /* already bf16 codes */
            memcpy(tmp, row, (size_t)kv * 2);
        else if (f == DSV3_FMT_INT4 && w->packed) /* the packed layout (int4p.h): 16 codes per 2 chunks */
            for (int64_t k = 0; k < kv; k += 16) {
                const __m128i c8 = int4p_dec16(int4p_chunk(w, n, k / 8), int4p_chunk(w, n, k / 8 + 1));
                _mm256_storeu_si256((__m256i *)(tmp + k),
                                    (__m256i)_mm512_cvtneps_pbh(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c8))));
            }
        else
            for (int64_t k = 0; k < kv; k += 16)
                _mm256_storeu_si256((__m256i *)(tmp + k), (__m256i)_mm512_cvtneps_pbh(DEC(f, w, row, k)));
        if (kv < K) {
            float t[16];
            dsv3_formats[f].code_row(w, n, kv, K - kv, t);
            for (int64_t k = kv; k < K; k++)
                tmp[k] = dsv3_f32_to_bf16(t[k - kv]);
        }
        tmp[K] = 0; /* odd-K pad */
        const uint32_t *t32 = (const uint32_t *)tmp;
        for (int64_t p = 0; p < kp; p++)
            tile[p * NR + c] = t32[p];
        for (int64_t g = 0; g < ng; g++)
            scl[g * NR + c] = gscale(f, w, n, g, ng);
    }
}

AI void micro(const int mr, const dsv3_lin_args *a, int64_t m0, int64_t n0, int nc, const uint32_t *tile,
              const float *scl, int64_t G)
{
    const int64_t K = a->w->k, N = a->w->n, ng = (K + G - 1) / G;
    __m512 acc[GMR][2], part[GMR][2];
    const uint16_t *x[GMR];
    for (int i = 0; i < mr; i++) {
        x[i] = a->xb + (m0 + i) * K;
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    }
    for (int64_t g = 0; g < ng; g++) {
        const int64_t p0 = g * G / 2, p1 = ((g + 1) * G < K ? (g + 1) * G : K + 1) / 2;
        for (int i = 0; i < mr; i++)
            part[i][0] = part[i][1] = _mm512_setzero_ps();
        const int64_t pf = p1 < K / 2 ? p1 : K / 2; /* full pairs: no bounds check in the hot loop */
        int64_t p = p0;
        for (; p < pf; p++) {
            const __m512bh b0 = (__m512bh)_mm512_loadu_si512(tile + p * NR);
            const __m512bh b1 = (__m512bh)_mm512_loadu_si512(tile + p * NR + 16);
            for (int i = 0; i < mr; i++) {
                int32_t xv;
                memcpy(&xv, x[i] + 2 * p, 4);
                const __m512bh av = (__m512bh)_mm512_set1_epi32(xv);
                part[i][0] = _mm512_dpbf16_ps(part[i][0], av, b0);
                part[i][1] = _mm512_dpbf16_ps(part[i][1], av, b1);
            }
        }
        for (; p < p1; p++) { /* odd K: the last pair is (x[K-1], 0) */
            const __m512bh b0 = (__m512bh)_mm512_loadu_si512(tile + p * NR);
            const __m512bh b1 = (__m512bh)_mm512_loadu_si512(tile + p * NR + 16);
            for (int i = 0; i < mr; i++) {
                const __m512bh av = (__m512bh)_mm512_set1_epi32((int)xpair(x[i], 2 * p, K));
                part[i][0] = _mm512_dpbf16_ps(part[i][0], av, b0);
                part[i][1] = _mm512_dpbf16_ps(part[i][1], av, b1);
            }
        }
        const __m512 s0 = _mm512_loadu_ps(scl + g * NR), s1 = _mm512_loadu_ps(scl + g * NR + 16);
        for (int i = 0; i < mr; i++) {
            acc[i][0] = _mm512_fmadd_ps(part[i][0], s0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(part[i][1], s1, acc[i][1]);
        }
    }
    const __mmask16 k0 = nc >= 16 ? 0xffff : (__mmask16)((1u << nc) - 1);
    const __mmask16 k1 = nc >= 32 ? 0xffff : (nc <= 16 ? 0 : (__mmask16)((1u << (nc - 16)) - 1));
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (a->bias) {
        b0 = _mm512_maskz_loadu_ps(k0, a->bias + n0);
        b1 = _mm512_maskz_loadu_ps(k1, a->bias + n0 + 16);
    }
    for (int i = 0; i < mr; i++) {
        _mm512_mask_storeu_ps(a->y + (m0 + i) * N + n0, k0, _mm512_add_ps(acc[i][0], b0));
        _mm512_mask_storeu_ps(a->y + (m0 + i) * N + n0 + 16, k1, _mm512_add_ps(acc[i][1], b1));
    }
}

AI void gemm(dsv3_format f, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, kp = (K + 1) / 2, G = kgroup(f, w), ng = (K + G - 1) / G;
    uint32_t *tile = dsv3_alloc((size_t)kp * NR * 4);
    uint16_t *tmp = dsv3_alloc((size_t)(K + 32) * 2);
    float *scl = dsv3_alloc((size_t)ng * NR * 4);
    if (!tile || !tmp || !scl) { /* cannot report from a worker: fall back to scalar math on xb */
        for (int64_t n = n0; n < n1; n++)
            for (int64_t m = 0; m < a->m; m++) {
                float acc = 0.0f, code;
                for (int64_t k = 0; k < K; k++) {
                    dsv3_formats[f].code_row(w, n, k, 1, &code);
                    acc += dsv3_bf16_to_f32(a->xb[m * K + k]) * code * dsv3_formats[f].group_scale(w, n, k / G);
                }
                a->y[m * w->n + n] = acc + (a->bias ? a->bias[n] : 0.0f);
            }
    } else {
        const int nc = (int)(n1 - n0);
        decode_tile(f, w, n0, nc, tile, tmp, scl);
        for (int64_t m0 = 0; m0 < a->m; m0 += GMR) {
            switch (a->m - m0 < GMR ? a->m - m0 : GMR) {
            case 1: micro(1, a, m0, n0, nc, tile, scl, G); break;
            case 2: micro(2, a, m0, n0, nc, tile, scl, G); break;
            case 3: micro(3, a, m0, n0, nc, tile, scl, G); break;
            case 4: micro(4, a, m0, n0, nc, tile, scl, G); break;
            case 5: micro(5, a, m0, n0, nc, tile, scl, G); break;
            default: micro(6, a, m0, n0, nc, tile, scl, G); break;
            }
        }
    }
    dsv3_free(tile);
    dsv3_free(tmp);
    dsv3_free(scl);
}

void dsv3_gemm_bf16_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_BF16, a, n0, n1); }
void dsv3_gemm_fp8_block_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_FP8_BLOCK, a, n0, n1); }
void dsv3_gemm_nvfp4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_NVFP4, a, n0, n1); }
void dsv3_gemm_int8_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_INT8, a, n0, n1); }
void dsv3_gemm_int4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemm(DSV3_FMT_INT4, a, n0, n1); }

/* Large-M (prefill) fast-mode kernel on AVX2 for int4 weights: Q8 activations (act_q8.c, DSV3_X_Q8:
 * natural order) times the int4 codes with vpmaddubsw; one work item = 32 output columns x all M rows.
 * Same definition as the small-M fast kernels (act_q8.h): per Q8 block (32 columns) the exact int32 dot
 * of x codes and weight codes, scaled by d (x block) * s (weight group) in f32.
 * vpmaddubsw multiplies u8 by s8: the activations are the u8 side, q + 128 (q ^ 0x80, in [1, 255]), and
 * the weights the s8 side (codes in [-8, 7]); pair sums are <= 2 * 255 * 8 = 4080 in magnitude, so the 8
 * products of one Q8 block add in int16 (<= 32640) before one vpmaddwd, and the offset's share,
 * 128 * (sum of the block's weight codes), is subtracted in int32: every block dot is exact.
 * BLIS structure, as gemm_avx2.c: per K block of KC columns the 32 weight rows are decoded once into a
 * per-thread tile (the "packing", amortised over M): per group of 8 columns, [KC / 4][8 columns][4 codes]
 * s8 (one 32-byte load feeds 8 columns, x is broadcast 4 codes at a time), with each column's offset
 * compensation and group scale per Q8 block. Micro-kernel: 4 rows of x x 8 columns. Each y element is one
 * accumulator lane summed in K order (then + bias): independent of the N split and of M. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "linear/act_q8.h"
#include "linear/lin_common.h"

#define NR DSV3_GEMM_NR /* 32 columns per work item (linear.c splits N by this) */
#define KC 256          /* K block: 8 Q8 blocks */
#define QMR 4           /* rows of x per micro-kernel */
#define MC 64           /* rows of x converted to u8 at a time */

typedef struct {
    int8_t w[NR / 8][KC / 4][32] __attribute__((aligned(32))); /* [8-column group][k / 4][column % 8 * 4 + k % 4] */
    int32_t comp[KC / 32][NR] __attribute__((aligned(32)));   /* -128 * (sum of the block's codes), per column */
    float s[KC / 32][NR] __attribute__((aligned(32)));        /* weight scale of the block's group, per column */
} q8_tile;

/* 8x8 int32 transpose: r[j] = row j -> r[j] = column j. */
AI void transpose8i(__m256i *r)
{
    __m256 v[8];
    for (int j = 0; j < 8; j++)
        v[j] = _mm256_castsi256_ps(r[j]);
    const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
    const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_castps_si256(_mm256_permute2f128_ps(s0, s4, 0x20));
    r[1] = _mm256_castps_si256(_mm256_permute2f128_ps(s1, s5, 0x20));
    r[2] = _mm256_castps_si256(_mm256_permute2f128_ps(s2, s6, 0x20));
    r[3] = _mm256_castps_si256(_mm256_permute2f128_ps(s3, s7, 0x20));
    r[4] = _mm256_castps_si256(_mm256_permute2f128_ps(s0, s4, 0x31));
    r[5] = _mm256_castps_si256(_mm256_permute2f128_ps(s1, s5, 0x31));
    r[6] = _mm256_castps_si256(_mm256_permute2f128_ps(s2, s6, 0x31));
    r[7] = _mm256_castps_si256(_mm256_permute2f128_ps(s3, s7, 0x31));
}

/* The 32 int4 codes of columns [k, k + 32) of weight row n as s8 in natural order (zero beyond K), from the
 * stored or the packed layout (int4p.h; its chunks past K read as code 0). */
AI __m256i decode32(const dsv3_weight *w, int64_t n, int64_t k)
{
    if (w->packed) {
        const int64_t c = k / 8;
        return _mm256_set_m128i(int4p_dec16(int4p_chunk(w, n, c + 2), int4p_chunk(w, n, c + 3)),
                                int4p_dec16(int4p_chunk(w, n, c), int4p_chunk(w, n, c + 1)));
    }
    const uint8_t *row = (const uint8_t *)w->data + n * (w->k / 2);
    __m128i b;
    if (k + 32 <= w->k) {
        b = _mm_loadu_si128((const __m128i *)(row + k / 2));
    } else { /* K tail: the bytes that exist, zero codes after */
        uint8_t t[16] = {0};
        memcpy(t, row + k / 2, (size_t)((w->k - k) / 2));
        b = _mm_loadu_si128((const __m128i *)t);
    }
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    const __m128i c0 = _mm_unpacklo_epi8(lo, hi), c1 = _mm_unpackhi_epi8(lo, hi); /* element 2i low nibble */
    const __m256i v = _mm256_set_m128i(c1, c0);
    return _mm256_sub_epi8(_mm256_xor_si256(v, _mm256_set1_epi8(8)), _mm256_set1_epi8(8)); /* two's complement */
}

/* Decode W[n0 + c, k0 .. k0 + kc) for c < nc (zero codes and scales for nc <= c < NR) into the tile. */
AI void pack_tile(const dsv3_weight *w, int64_t n0, int nc, int64_t k0, int64_t kc, q8_tile *t)
{
    const int64_t ng = (w->k + w->group - 1) / w->group, nbk = (kc + 31) / 32;
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int g = 0; g < NR / 8; g++)
        for (int64_t b = 0; b < nbk; b++) {
            __m256i r[8];
            for (int c = 0; c < 8; c++)
                r[c] = g * 8 + c < nc ? decode32(w, n0 + g * 8 + c, k0 + 32 * b) : _mm256_setzero_si256();
            transpose8i(r); /* r[j] = codes 4j .. 4j + 3 of the 8 columns */
            __m256i sum = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                _mm256_store_si256((__m256i *)t->w[g][8 * b + j], r[j]);
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, r[j]), ones16));
            }
            _mm256_store_si256((__m256i *)&t->comp[b][g * 8], _mm256_mullo_epi32(sum, _mm256_set1_epi32(-128)));
            for (int c = 0; c < 8; c++) {
                const int64_t n = n0 + g * 8 + c;
                t->s[b][g * 8 + c] = g * 8 + c < nc ? gscale(DSV3_FMT_INT4, w, n, (k0 + 32 * b) / w->group, ng) : 0.0f;
            }
        }
}

/* acc[i] (+)= rows i < mr of x (u8 codes xu, row stride KC; block scales d + i * nb) times the 8 columns of
 * tile group g over nbk Q8 blocks; y loaded / stored by the caller. */
AI void micro(const int mr, const q8_tile *t, int g, int64_t nbk, const uint8_t *xu, const float *d, int64_t nb,
              __m256 *acc)
{
    const __m256i ones16 = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nbk; b++) {
        __m256i a16[QMR];
        for (int i = 0; i < mr; i++)
            a16[i] = _mm256_setzero_si256();
        /* not unrolled: GCC's full unroll reassociated the int16 sums into a tree and spilled */
#pragma GCC unroll 1
        for (int j = 0; j < 8; j++) {
            const __m256i wv = _mm256_load_si256((const __m256i *)t->w[g][8 * b + j]);
            for (int i = 0; i < mr; i++) {
                int32_t x4;
                memcpy(&x4, xu + i * KC + 32 * b + 4 * j, 4);
                a16[i] = _mm256_add_epi16(a16[i], _mm256_maddubs_epi16(_mm256_set1_epi32(x4), wv));
            }
        }
        const __m256i comp = _mm256_load_si256((const __m256i *)&t->comp[b][g * 8]);
        const __m256 sv = _mm256_load_ps(&t->s[b][g * 8]);
        for (int i = 0; i < mr; i++) {
            const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(a16[i], ones16), comp);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(_mm256_set1_ps(d[i * nb + b]), sv), acc[i]);
        }
    }
}

/* y[m, n0 + 8g + c] for c < cols: first block starts from zero, else from y; the last adds the bias. */
AI void rows8(const int mr, const dsv3_lin_args *a, const q8_tile *t, int g, int cols, int64_t nbk, const uint8_t *xu,
              int64_t m0, int64_t n0, int64_t k0, int first, int last)
{
    const int64_t N = a->w->n, nb = (a->w->k + 31) / 32;
    __m256 acc[QMR];
    float tmp[8];
    for (int i = 0; i < mr; i++) {
        float *y = a->y + (m0 + i) * N + n0 + 8 * g;
        if (first)
            acc[i] = _mm256_setzero_ps();
        else if (cols == 8)
            acc[i] = _mm256_loadu_ps(y);
        else {
            memset(tmp, 0, sizeof tmp);
            memcpy(tmp, y, (size_t)cols * 4);
            acc[i] = _mm256_loadu_ps(tmp);
        }
    }
    micro(mr, t, g, nbk, xu, a->q8->d + m0 * nb + k0 / 32, nb, acc);
    for (int i = 0; i < mr; i++) {
        float *y = a->y + (m0 + i) * N + n0 + 8 * g;
        _mm256_storeu_ps(tmp, acc[i]);
        for (int c = 0; c < cols; c++)
            y[c] = last && a->bias ? tmp[c] + a->bias[n0 + 8 * g + c] : tmp[c];
    }
}

void dsv3_gemm_q8_int4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, M = a->m;
    const int nc = (int)(n1 - n0);
    q8_tile t;
    uint8_t xu[MC * KC] __attribute__((aligned(32)));
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = K - k0 < KC ? K - k0 : KC, nbk = (kc + 31) / 32;
        const int first = k0 == 0, last = k0 + kc >= K;
        pack_tile(w, n0, nc, k0, kc, &t);
        for (int64_t mc = 0; mc < M; mc += MC) {
            const int64_t rows = M - mc < MC ? M - mc : MC;
            for (int64_t i = 0; i < rows; i++) { /* x codes as u8 (q + 128), q = 0 past K */
                const int8_t *q = a->q8->q + (mc + i) * K + k0;
                int64_t j = 0;
                for (; j + 32 <= kc; j += 32)
                    _mm256_store_si256((__m256i *)(xu + i * KC + j),
                                       _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q + j)), _mm256_set1_epi8((char)0x80)));
                for (; j < nbk * 32; j++)
                    xu[i * KC + j] = (uint8_t)((j < kc ? (uint8_t)q[j] : 0) ^ 0x80u);
            }
            for (int g = 0; g * 8 < nc; g++) {
                const int cols = nc - 8 * g < 8 ? nc - 8 * g : 8;
                for (int64_t m0 = 0; m0 < rows; m0 += QMR) {
                    const uint8_t *x0 = xu + m0 * KC;
                    switch (rows - m0 < QMR ? rows - m0 : QMR) {
                    case 1: rows8(1, a, &t, g, cols, nbk, x0, mc + m0, n0, k0, first, last); break;
                    case 2: rows8(2, a, &t, g, cols, nbk, x0, mc + m0, n0, k0, first, last); break;
                    case 3: rows8(3, a, &t, g, cols, nbk, x0, mc + m0, n0, k0, first, last); break;
                    default: rows8(4, a, &t, g, cols, nbk, x0, mc + m0, n0, k0, first, last); break;
                    }
                }
            }
        }
    }
}

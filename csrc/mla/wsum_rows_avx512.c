/* AVX-512 weighted sums of weight rows in their stored format (absorbed attention's W_UK product):
 * the order of wsum_rows_scalar.c bit for bit (attend_kernels.h). Each row chunk is decoded in
 * registers by the linear layer's decoders (csrc/linear/decode_avx512.h), scaled by the format
 * table's group scale (one f32 multiply, as dsv3_dequantize), and fused-multiply-added into a tile of
 * ni p rows x NV vectors of 16 columns (4-bit formats: blocks of 32 columns split even / odd, tile4);
 * columns past the last full vector run the scalar twin. ni is a compile-time constant of each tile
 * (NI_CASES), so the accumulators stay in registers. */
#include "attend_kernels.h"
#include "dsv3_quant.h"
#include "linear/decode_avx512.h"

#define AI static inline __attribute__((always_inline))
#define NV 4 /* vectors of 16 columns per tile */
#define TI 4 /* p rows per tile */

/* One tile: p rows [0, ni) x columns [c, c + 16 nv) over rows n0 .. n0+T-1 of w (format f). */
AI void tile(const float *p, int64_t ldp, const int ni, const dsv3_weight *w, const dsv3_format f, int64_t n0,
             int64_t T, int64_t c, const int nv, float *out, int64_t ldo)
{
    const dsv3_format_traits *ft = &dsv3_formats[f];
    const int64_t G = dsv3_weight_kgroup(w), rb = w->k * ft->code_bits / 8;
    const int scaled = ft->scale_kind != DSV3_SCALE_NONE;
    __m512 acc[TI][NV], wv[NV];
    int64_t g[NV]; /* K group of each vector: one division per tile, not per row */
    for (int v = 0; v < nv; v++)
        g[v] = (c + 16 * v) / G;
    for (int i = 0; i < ni; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = _mm512_setzero_ps();
    const uint8_t *row = (const uint8_t *)w->data + n0 * rb;
    for (int64_t t = 0; t < T; t++, row += rb) {
        float s = 1.f;
        for (int v = 0; v < nv; v++) {
            wv[v] = DEC(f, w, row, c + 16 * v);
            if (scaled) {
                if (v == 0 || g[v] != g[v - 1])
                    s = ft->group_scale(w, n0 + t, g[v]);
                wv[v] = _mm512_mul_ps(wv[v], _mm512_set1_ps(s));
            }
        }
        for (int i = 0; i < ni; i++) {
            const __m512 pv = _mm512_set1_ps(p[i * ldp + t]);
            for (int v = 0; v < nv; v++)
                acc[i][v] = _mm512_fmadd_ps(pv, wv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < ni; i++)
        for (int v = 0; v < nv; v++)
            _mm512_storeu_ps(out + i * ldo + c + 16 * v, acc[i][v]);
}

/* 4-bit formats: 16 bytes = 32 codes per block, decoded as even columns (low nibbles) and odd columns
 * (high nibbles) into separate accumulators, interleaved once at the store (every output keeps its one
 * fused multiply-add chain in ascending t). int4's two's complement comes from the float trick
 * (0x4B000000 | (u ^ 8)) - (2^23 + 8) = u ^ 8 - 8, exact; e2m1 from the table. */
AI __m512 nib_value(__m512i u, const dsv3_format f)
{
    if (f == DSV3_FMT_NVFP4)
        return _mm512_permutexvar_ps(u, LUT_E2M1);
    const __m512i b = _mm512_xor_si512(u, _mm512_set1_epi32(0x4B000008));
    return _mm512_sub_ps(_mm512_castsi512_ps(b), _mm512_set1_ps(8388616.0f));
}

/* One tile of a 4-bit format: p rows [0, ni) x columns [c, c + 32 nb) (nb <= 4, ni * nb <= 8). */
AI void tile4(const float *p, int64_t ldp, const int ni, const dsv3_weight *w, const dsv3_format f, int64_t n0,
              int64_t T, int64_t c, const int nb, float *out, int64_t ldo)
{
    const dsv3_format_traits *ft = &dsv3_formats[f];
    const int64_t G = dsv3_weight_kgroup(w), rb = w->k / 2;
    __m512 ae[TI][4], ao[TI][4], we[4], wo[4], s = _mm512_set1_ps(1.f);
    int64_t g[4]; /* K group of each block: one division per tile, not per row */
    for (int b = 0; b < nb; b++)
        g[b] = (c + 32 * b) / G;
    for (int i = 0; i < ni; i++)
        for (int b = 0; b < nb; b++)
            ae[i][b] = ao[i][b] = _mm512_setzero_ps();
    const uint8_t *row = (const uint8_t *)w->data + n0 * rb;
    for (int64_t t = 0; t < T; t++, row += rb) {
        for (int b = 0; b < nb; b++) {
            const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + (c + 32 * b) / 2)));
            if (G < 32) /* nvfp4: lanes 0..7 hold columns of group g, lanes 8..15 of the next 16-group */
                s = _mm512_mask_mov_ps(_mm512_set1_ps(ft->group_scale(w, n0 + t, g[b])), 0xFF00,
                                       _mm512_set1_ps(ft->group_scale(w, n0 + t, g[b] + 1)));
            else if (b == 0 || g[b] != g[b - 1])
                s = _mm512_set1_ps(ft->group_scale(w, n0 + t, g[b]));
            we[b] = _mm512_mul_ps(nib_value(_mm512_and_si512(v, _mm512_set1_epi32(15)), f), s);
            wo[b] = _mm512_mul_ps(nib_value(_mm512_srli_epi32(v, 4), f), s);
        }
        for (int i = 0; i < ni; i++) {
            const __m512 pv = _mm512_set1_ps(p[i * ldp + t]);
            for (int b = 0; b < nb; b++) {
                ae[i][b] = _mm512_fmadd_ps(pv, we[b], ae[i][b]);
                ao[i][b] = _mm512_fmadd_ps(pv, wo[b], ao[i][b]);
            }
        }
    }
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int i = 0; i < ni; i++)
        for (int b = 0; b < nb; b++) {
            _mm512_storeu_ps(out + i * ldo + c + 32 * b, _mm512_permutex2var_ps(ae[i][b], lo, ao[i][b]));
            _mm512_storeu_ps(out + i * ldo + c + 32 * b + 16, _mm512_permutex2var_ps(ae[i][b], hi, ao[i][b]));
        }
}

/* tile calls with a compile-time number of p rows */
#define NI_CASES(call)                                                                              \
    switch (ni) {                                                                                   \
    case 1: call(1); break;                                                                         \
    case 2: call(2); break;                                                                         \
    case 3: call(3); break;                                                                         \
    default: call(4); break;                                                                        \
    }
#define TILE4_WIDE(n_) tile4(p + i * ldp, ldp, n_, w, f, n0, T, c, n_ <= 2 ? 4 : 2, out + i * ldo, ldo)
#define TILE4_ONE(n_) tile4(p + i * ldp, ldp, n_, w, f, n0, T, c, 1, out + i * ldo, ldo)
#define TILE_WIDE(n_) tile(p + i * ldp, ldp, n_, w, f, n0, T, c, NV, out + i * ldo, ldo)
#define TILE_ONE(n_) tile(p + i * ldp, ldp, n_, w, f, n0, T, c, 1, out + i * ldo, ldo)

AI void wsum_rows_fmt(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, const dsv3_format f, int64_t n0,
                      int64_t T, float *out, int64_t ldo)
{
    const int64_t K = w->k, kf = K / 16 * 16;
    for (int64_t i = 0; i < np; i += TI) {
        const int ni = np - i < TI ? (int)(np - i) : TI;
        int64_t c = 0;
        if (f == DSV3_FMT_INT4 || f == DSV3_FMT_NVFP4) {
            const int64_t wide = ni <= 2 ? 128 : 64; /* nb blocks of 32 columns: 8 accumulators per p row pair */
            for (; c + wide <= kf; c += wide)
                NI_CASES(TILE4_WIDE)
            for (; c + 32 <= kf; c += 32)
                NI_CASES(TILE4_ONE)
        }
        for (; c + 16 * NV <= kf; c += 16 * NV)
            NI_CASES(TILE_WIDE)
        for (; c < kf; c += 16)
            NI_CASES(TILE_ONE)
    }
    if (kf < K)
        dsv3_wsum_rows_cols_scalar(p, np, ldp, w, n0, T, kf, K, out, ldo);
}

void dsv3_wsum_rows_avx512(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0, int64_t T,
                           float *out, int64_t ldo)
{
    switch (w->fmt) {
    case DSV3_FMT_F32: wsum_rows_fmt(p, np, ldp, w, DSV3_FMT_F32, n0, T, out, ldo); break;
    case DSV3_FMT_BF16: wsum_rows_fmt(p, np, ldp, w, DSV3_FMT_BF16, n0, T, out, ldo); break;
    case DSV3_FMT_FP8_BLOCK: wsum_rows_fmt(p, np, ldp, w, DSV3_FMT_FP8_BLOCK, n0, T, out, ldo); break;
    case DSV3_FMT_NVFP4: wsum_rows_fmt(p, np, ldp, w, DSV3_FMT_NVFP4, n0, T, out, ldo); break;
    case DSV3_FMT_INT8: wsum_rows_fmt(p, np, ldp, w, DSV3_FMT_INT8, n0, T, out, ldo); break;
    default: wsum_rows_fmt(p, np, ldp, w, DSV3_FMT_INT4, n0, T, out, ldo); break;
    }
}

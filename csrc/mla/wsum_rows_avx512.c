/* AVX-512 weighted sums of weight rows in their stored format (absorbed attention's W_UK product):
 * the order of wsum_rows_scalar.c bit for bit (attend_kernels.h). Each row chunk is decoded in
 * registers by the linear layer's decoders (csrc/linear/decode_avx512.h), scaled by the format
 * table's group scale (one f32 multiply, as dsv3_dequantize), and fused-multiply-added into a tile of
 * TI p rows x NV vectors of 16 columns; columns past the last full vector run the scalar twin. */
#include "attend_kernels.h"
#include "dsv3_quant.h"
#include "linear/decode_avx512.h"

#define AI static inline __attribute__((always_inline))
#define NV 4 /* vectors of 16 columns per tile */
#define TI 4 /* p rows per tile */

/* One tile: p rows [0, ni) x columns [c, c + 16 nv) over rows n0 .. n0+T-1 of w (format f). */
AI void tile(const float *p, int64_t ldp, int ni, const dsv3_weight *w, const dsv3_format f, int64_t n0, int64_t T,
             int64_t c, const int nv, float *out, int64_t ldo)
{
    const dsv3_format_traits *ft = &dsv3_formats[f];
    const int64_t G = dsv3_weight_kgroup(w), rb = w->k * ft->code_bits / 8;
    const int scaled = ft->scale_kind != DSV3_SCALE_NONE;
    __m512 acc[TI][NV], wv[NV];
    for (int i = 0; i < TI; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = _mm512_setzero_ps();
    const uint8_t *row = (const uint8_t *)w->data + n0 * rb;
    for (int64_t t = 0; t < T; t++, row += rb) {
        int64_t gprev = -1;
        float s = 1.f;
        for (int v = 0; v < nv; v++) {
            const int64_t k = c + 16 * v;
            wv[v] = DEC(f, w, row, k);
            if (scaled) {
                if (k / G != gprev)
                    s = ft->group_scale(w, n0 + t, gprev = k / G);
                wv[v] = _mm512_mul_ps(wv[v], _mm512_set1_ps(s));
            }
        }
        for (int i = 0; i < TI; i++)
            if (i < ni) {
                const __m512 pv = _mm512_set1_ps(p[i * ldp + t]);
                for (int v = 0; v < nv; v++)
                    acc[i][v] = _mm512_fmadd_ps(pv, wv[v], acc[i][v]);
            }
    }
    for (int i = 0; i < TI; i++)
        if (i < ni)
            for (int v = 0; v < nv; v++)
                _mm512_storeu_ps(out + i * ldo + c + 16 * v, acc[i][v]);
}

AI void wsum_rows_fmt(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, const dsv3_format f, int64_t n0,
                      int64_t T, float *out, int64_t ldo)
{
    const int64_t K = w->k, kf = K / 16 * 16;
    for (int64_t i = 0; i < np; i += TI) {
        const int ni = np - i < TI ? (int)(np - i) : TI;
        int64_t c = 0;
        for (; c + 16 * NV <= kf; c += 16 * NV)
            tile(p + i * ldp, ldp, ni, w, f, n0, T, c, NV, out + i * ldo, ldo);
        for (; c < kf; c += 16)
            tile(p + i * ldp, ldp, ni, w, f, n0, T, c, 1, out + i * ldo, ldo);
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

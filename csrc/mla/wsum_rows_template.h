/* Weighted sums of weight rows in their stored format (absorbed attention's W_UK product), the body
 * shared by wsum_rows_avx2.c and wsum_rows_avx512.c: the order of wsum_rows_scalar.c bit for bit
 * (attend_kernels.h). Each row chunk is decoded in registers by the linear layer's decoders (DEC from
 * csrc/linear/decode_<isa>.h), scaled by the format table's group scale (one f32 multiply, as
 * dsv3_dequantize), and fused-multiply-added into a tile of ni p rows x NV vectors of VL columns
 * (4-bit formats: blocks of 2 VL columns split even / odd, tile4); columns past the last full vector
 * run the scalar twin. ni is a compile-time constant of each tile (NI_CASES), so the accumulators stay
 * in registers.
 *
 * The including file defines the vector vocabulary V (f32), VI (i32), VL, V_ZERO, V_SET1, V_MUL, V_FMA,
 * V_STOREU; NIB_LOAD(p) (VL bytes of 4-bit codes zero-extended to i32 lanes), NIB_LO(v) / NIB_HI(v) (low /
 * high nibbles), nib_value(u, f) (a nibble's unscaled value), V_HALVES(a, b) (a in the lanes of the block's
 * first VL columns, b in the others: groups of VL columns), STORE_EO(out, even, odd) (2 VL outputs from the
 * even / odd column accumulators), TI (p rows per tile, 2 or 4), NB_WIDE(ni) (blocks per wide 4-bit tile,
 * at most NB_MAX) and WSUM_ROWS_NAME (the exported function). */
#include "attend_kernels.h"
#include "dsv3_quant.h"

#define NV 4 /* vectors of VL columns per tile */

/* One tile: p rows [0, ni) x columns [c, c + VL nv) over rows n0 .. n0+T-1 of w (format f). */
AI void tile(const float *p, int64_t ldp, const int ni, const dsv3_weight *w, const dsv3_format f, int64_t n0,
             int64_t T, int64_t c, const int nv, float *out, int64_t ldo)
{
    const dsv3_format_traits *ft = &dsv3_formats[f];
    const int64_t G = dsv3_weight_kgroup(w), rb = w->k * ft->code_bits / 8;
    const int scaled = ft->scale_kind != DSV3_SCALE_NONE;
    V acc[TI][NV], wv[NV];
    int64_t g[NV]; /* K group of each vector: one division per tile, not per row */
    for (int v = 0; v < nv; v++)
        g[v] = (c + VL * v) / G;
    for (int i = 0; i < ni; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = V_ZERO();
    const uint8_t *row = (const uint8_t *)w->data + n0 * rb;
    for (int64_t t = 0; t < T; t++, row += rb) {
        float s = 1.f;
        for (int v = 0; v < nv; v++) {
            wv[v] = DEC(f, w, row, c + VL * v);
            if (scaled) {
                if (v == 0 || g[v] != g[v - 1])
                    s = ft->group_scale(w, n0 + t, g[v]);
                wv[v] = V_MUL(wv[v], V_SET1(s));
            }
        }
        for (int i = 0; i < ni; i++) {
            const V pv = V_SET1(p[i * ldp + t]);
            for (int v = 0; v < nv; v++)
                acc[i][v] = V_FMA(pv, wv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < ni; i++)
        for (int v = 0; v < nv; v++)
            V_STOREU(out + i * ldo + c + VL * v, acc[i][v]);
}

/* 4-bit formats: VL bytes = 2 VL codes per block, decoded as even columns (low nibbles) and odd columns
 * (high nibbles) into separate accumulators, interleaved once at the store (every output keeps its one
 * fused multiply-add chain in ascending t). One tile: p rows [0, ni) x columns [c, c + 2 VL nb). A group
 * of fewer than 2 VL columns (nvfp4's 16 on AVX-512) splits the block's lanes in halves (V_HALVES). */
AI void tile4(const float *p, int64_t ldp, const int ni, const dsv3_weight *w, const dsv3_format f, int64_t n0,
              int64_t T, int64_t c, const int nb, float *out, int64_t ldo)
{
    const dsv3_format_traits *ft = &dsv3_formats[f];
    const int64_t G = dsv3_weight_kgroup(w), rb = w->k / 2;
    V ae[TI][NB_MAX], ao[TI][NB_MAX], we[NB_MAX], wo[NB_MAX], s = V_SET1(1.f);
    int64_t g[NB_MAX]; /* K group of each block: one division per tile, not per row */
    for (int b = 0; b < nb; b++)
        g[b] = (c + 2 * VL * b) / G;
    for (int i = 0; i < ni; i++)
        for (int b = 0; b < nb; b++)
            ae[i][b] = ao[i][b] = V_ZERO();
    const uint8_t *row = (const uint8_t *)w->data + n0 * rb;
    for (int64_t t = 0; t < T; t++, row += rb) {
        for (int b = 0; b < nb; b++) {
            const VI v = NIB_LOAD(row + (c + 2 * VL * b) / 2);
            if (G < 2 * VL)
                s = V_HALVES(ft->group_scale(w, n0 + t, g[b]), ft->group_scale(w, n0 + t, g[b] + 1));
            else if (b == 0 || g[b] != g[b - 1])
                s = V_SET1(ft->group_scale(w, n0 + t, g[b]));
            we[b] = V_MUL(nib_value(NIB_LO(v), f), s);
            wo[b] = V_MUL(nib_value(NIB_HI(v), f), s);
        }
        for (int i = 0; i < ni; i++) {
            const V pv = V_SET1(p[i * ldp + t]);
            for (int b = 0; b < nb; b++) {
                ae[i][b] = V_FMA(pv, we[b], ae[i][b]);
                ao[i][b] = V_FMA(pv, wo[b], ao[i][b]);
            }
        }
    }
    for (int i = 0; i < ni; i++)
        for (int b = 0; b < nb; b++)
            STORE_EO(out + i * ldo + c + 2 * VL * b, ae[i][b], ao[i][b]);
}

/* tile calls with a compile-time number of p rows */
#if TI == 2
#define NI_CASES(call)                                                                              \
    switch (ni) {                                                                                   \
    case 1: call(1); break;                                                                         \
    default: call(2); break;                                                                        \
    }
#else
#define NI_CASES(call)                                                                              \
    switch (ni) {                                                                                   \
    case 1: call(1); break;                                                                         \
    case 2: call(2); break;                                                                         \
    case 3: call(3); break;                                                                         \
    default: call(4); break;                                                                        \
    }
#endif
#define TILE4_WIDE(n_) tile4(p + i * ldp, ldp, n_, w, f, n0, T, c, NB_WIDE(n_), out + i * ldo, ldo)
#define TILE4_ONE(n_) tile4(p + i * ldp, ldp, n_, w, f, n0, T, c, 1, out + i * ldo, ldo)
#define TILE_WIDE(n_) tile(p + i * ldp, ldp, n_, w, f, n0, T, c, NV, out + i * ldo, ldo)
#define TILE_ONE(n_) tile(p + i * ldp, ldp, n_, w, f, n0, T, c, 1, out + i * ldo, ldo)

AI void wsum_rows_fmt(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, const dsv3_format f, int64_t n0,
                      int64_t T, float *out, int64_t ldo)
{
    const int64_t K = w->k, kf = K / VL * VL;
    for (int64_t i = 0; i < np; i += TI) {
        const int ni = np - i < TI ? (int)(np - i) : TI;
        int64_t c = 0;
        if (f == DSV3_FMT_INT4 || f == DSV3_FMT_NVFP4) {
            const int64_t wide = 2 * VL * NB_WIDE(ni); /* columns of a wide 4-bit tile */
            for (; c + wide <= kf; c += wide)
                NI_CASES(TILE4_WIDE)
            for (; c + 2 * VL <= kf; c += 2 * VL)
                NI_CASES(TILE4_ONE)
        }
        for (; c + VL * NV <= kf; c += VL * NV)
            NI_CASES(TILE_WIDE)
        for (; c < kf; c += VL)
            NI_CASES(TILE_ONE)
    }
    if (kf < K)
        dsv3_wsum_rows_cols_scalar(p, np, ldp, w, n0, T, kf, K, out, ldo);
}

void WSUM_ROWS_NAME(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0, int64_t T,
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

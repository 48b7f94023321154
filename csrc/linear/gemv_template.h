/* Small-M (decode) weight-only kernel body shared by the AVX2 and AVX-512 files.
 *
 * The including file defines the vector vocabulary (V, VL, V_ZERO, V_LOADU, V_FMA, V_SET1,
 * V_REDUCE), the in-register decoder DEC(fmt, w, row, k) -> V of VL unscaled codes, and ISA
 * (name suffix), V_ADD. Structure (BLIS-like: the framework owns tiling, the decoder knows registers):
 * threads own disjoint output columns n; for each n the weight row is streamed once from memory
 * per tile of up to 4 rows of x (so M <= 4 reads it once, larger M re-reads it from L1/L2); per K
 * group an fp32 partial dot is formed in registers and folded into the accumulator with the group
 * scale (times the activation scale in fp8 dynamic mode). Tails (K not a multiple of VL) are
 * decoded by the format table's scalar code_row. Horizontal sums have a fixed order. */
#include <string.h>

#include "dsv3_dtypes.h"
#include "linear/lin_kernels.h"

#include "linear/lin_common.h"

#define MR 4

AI void gemv_tile(dsv3_format f, const int mr, const dsv3_lin_args *a, int64_t n, int64_t m0)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, G = kgroup(f, w), ng = (K + G - 1) / G;
    const uint8_t *row = row_ptr(f, w, n);
    const float *x[MR];
    /* two accumulator sets (alternating K groups) and two partial sets (alternating vectors) hide
     * the FMA latency when mr is small */
    V acc[MR][2], p0[MR], p1[MR];
    for (int i = 0; i < mr; i++) {
        x[i] = a->x + (m0 + i) * K;
        acc[i][0] = acc[i][1] = V_ZERO();
    }
    for (int64_t g = 0; g < ng; g++) {
        const int64_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K, kv = k0 + (k1 - k0) / VL * VL;
        int64_t k = k0;
        for (int i = 0; i < mr; i++)
            p0[i] = p1[i] = V_ZERO();
        for (; k + 2 * VL <= kv; k += 2 * VL) {
            const V w0 = DEC(f, w, row, k), w1 = DEC(f, w, row, k + VL);
            for (int i = 0; i < mr; i++) {
                p0[i] = V_FMA(V_LOADU(x[i] + k), w0, p0[i]);
                p1[i] = V_FMA(V_LOADU(x[i] + k + VL), w1, p1[i]);
            }
        }
        if (k < kv) {
            const V w0 = DEC(f, w, row, k);
            for (int i = 0; i < mr; i++)
                p0[i] = V_FMA(V_LOADU(x[i] + k), w0, p0[i]);
        }
        if (kv < k1) {
            float wt[VL], xt[VL];
            memset(wt, 0, sizeof wt);
            dsv3_formats[f].code_row(w, n, kv, k1 - kv, wt);
            const V wv = V_LOADU(wt);
            for (int i = 0; i < mr; i++) {
                memset(xt, 0, sizeof xt);
                memcpy(xt, x[i] + kv, (size_t)(k1 - kv) * sizeof(float));
                p1[i] = V_FMA(V_LOADU(xt), wv, p1[i]);
            }
        }
        const float s = gscale(f, w, n, g, ng);
        for (int i = 0; i < mr; i++)
            acc[i][g & 1] = V_FMA(V_ADD(p0[i], p1[i]), V_SET1(a->xs ? a->xs[(m0 + i) * ng + g] * s : s),
                                  acc[i][g & 1]);
    }
    for (int i = 0; i < mr; i++)
        a->y[(m0 + i) * w->n + n] = V_REDUCE(V_ADD(acc[i][0], acc[i][1])) + (a->bias ? a->bias[n] : 0.0f);
}

AI void gemv_rows(dsv3_format f, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m0 = 0; m0 < a->m; m0 += MR) {
            switch (a->m - m0 < MR ? a->m - m0 : MR) {
            case 1: gemv_tile(f, 1, a, n, m0); break;
            case 2: gemv_tile(f, 2, a, n, m0); break;
            case 3: gemv_tile(f, 3, a, n, m0); break;
            default: gemv_tile(f, 4, a, n, m0); break;
            }
        }
}

#define GEMV_CAT2(a, b) a##b
#define GEMV_CAT(a, b) GEMV_CAT2(a, b)
#define GEMV_DEFINE(fname, fmt)                                                                     \
    void GEMV_CAT(dsv3_gemv_##fname##_, ISA)(const dsv3_lin_args *a, int64_t n0, int64_t n1)         \
    {                                                                                               \
        gemv_rows(fmt, a, n0, n1);                                                                  \
    }

GEMV_DEFINE(f32, DSV3_FMT_F32)
GEMV_DEFINE(bf16, DSV3_FMT_BF16)
GEMV_DEFINE(fp8_block, DSV3_FMT_FP8_BLOCK)
GEMV_DEFINE(nvfp4, DSV3_FMT_NVFP4)
GEMV_DEFINE(int8, DSV3_FMT_INT8)
GEMV_DEFINE(int4, DSV3_FMT_INT4)

/* Weighted sums of weight rows in their stored format (absorbed attention's W_UK product,
 * csrc/mla/attend.c), the scalar reference. See attend_kernels.h (dsv3_mla_wsum_rows_fn) for the
 * contract: W[n, r] = code(n, r) * group_scale(n, r / G) rounded once to f32, exactly what the
 * format table's scalar decode and dsv3_dequantize give, then one fused multiply-add chain from +0
 * in ascending t per output. */
#include "attend_kernels.h"
#include "dsv3_quant.h"

#include <math.h>

void dsv3_wsum_rows_cols_scalar(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0,
                                int64_t T, int64_t c0, int64_t c1, float *out, int64_t ldo)
{
    const dsv3_format_traits *f = &dsv3_formats[w->fmt];
    const int64_t G = dsv3_weight_kgroup(w);
    float wr[64];
    for (int64_t r0 = c0; r0 < c1; r0 += 64) {
        const int64_t len = c1 - r0 < 64 ? c1 - r0 : 64;
        for (int64_t i = 0; i < np; i++)
            for (int64_t r = 0; r < len; r++)
                out[i * ldo + r0 + r] = 0.f;
        for (int64_t t = 0; t < T; t++) {
            f->code_row(w, n0 + t, r0, len, wr);
            for (int64_t r = 0; r < len; r++)
                wr[r] = wr[r] * f->group_scale(w, n0 + t, (r0 + r) / G);
            for (int64_t i = 0; i < np; i++) {
                const float pt = p[i * ldp + t];
                float *o = out + i * ldo + r0;
                for (int64_t r = 0; r < len; r++)
                    o[r] = fmaf(pt, wr[r], o[r]);
            }
        }
    }
}

void dsv3_wsum_rows_scalar(const float *p, int64_t np, int64_t ldp, const dsv3_weight *w, int64_t n0, int64_t T,
                           float *out, int64_t ldo)
{
    dsv3_wsum_rows_cols_scalar(p, np, ldp, w, n0, T, 0, w->k, out, ldo);
}

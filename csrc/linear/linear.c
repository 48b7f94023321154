/* Reference linear over f32 / bf16 weights (placeholder until the quantised-linear work lands its
 * format table and kernels): parallel over output columns, fixed-order sums. */
#include "dsv3_linear.h"

#include <string.h>

static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

dsv3_status dsv3_linear(const float *x, int64_t m, const dsv3_weight *w, const float *bias, float *y,
                        int isa, dsv3_error *err)
{
    (void)isa;
    if (!w || !w->data || w->n <= 0 || w->k <= 0 || m < 0)
        return dsv3_fail(err, DSV3_E_VALUE, "linear: empty weight or negative rows");
    if (w->fmt != DSV3_FMT_F32 && w->fmt != DSV3_FMT_BF16)
        return dsv3_fail(err, DSV3_E_UNSUPPORTED, "linear: format %d not implemented yet", (int)w->fmt);
    const int64_t n = w->n, k = w->k;
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t j = 0; j < n; j++) {
        for (int64_t i = 0; i < m; i++) {
            const float *xr = x + i * k;
            float acc = 0.f;
            if (w->fmt == DSV3_FMT_F32) {
                const float *wr = (const float *)w->data + j * k;
                for (int64_t t = 0; t < k; t++)
                    acc += xr[t] * wr[t];
            } else {
                const uint16_t *wr = (const uint16_t *)w->data + j * k;
                for (int64_t t = 0; t < k; t++)
                    acc += xr[t] * bf16_to_f32(wr[t]);
            }
            y[i * n + j] = acc + (bias ? bias[j] : 0.f);
        }
    }
    return DSV3_OK;
}

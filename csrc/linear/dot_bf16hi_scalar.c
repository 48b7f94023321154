/* Scalar twin of the AVX-512 bf16-hi fast kernels (gemv_dot_avx512.c *_dot1_*), written from the definition
 * (act_q8.h):  y[m, n] = sum_g s(n, g) * sum_{k in g} bf16(x[m, k]) * code(n, k)  (x rounded once, RNE; f32 sums).
 * Codes and scales come from the format table's scalar reference decode (code_row, group_scale). */
#include "linear/act_q8.h"

#include "dsv3_dtypes.h"

void dsv3_fast_bf16hi_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const dsv3_weight *w = a->w;
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    const int64_t K = w->k, G = dsv3_weight_kgroup(w);
    float code[128];
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < a->m; m++) {
            const float *x = a->x + m * K;
            float y = 0.0f;
            for (int64_t g0 = 0; g0 < K; g0 += G) {
                float part = 0.0f;
                for (int64_t c0 = g0; c0 < g0 + G && c0 < K; c0 += 128) {
                    const int64_t len = (g0 + G < K ? g0 + G : K) - c0 < 128 ? (g0 + G < K ? g0 + G : K) - c0 : 128;
                    t->code_row(w, n, c0, len, code);
                    for (int64_t j = 0; j < len; j++)
                        part += dsv3_bf16_to_f32(dsv3_f32_to_bf16(x[c0 + j])) * code[j];
                }
                y += part * t->group_scale(w, n, g0 / G);
            }
            a->y[m * w->n + n] = y + (a->bias ? a->bias[n] : 0.0f);
        }
}

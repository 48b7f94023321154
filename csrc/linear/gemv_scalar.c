/* Scalar reference kernels: the twin every SIMD kernel is tested against.
 * Same decomposition as the SIMD kernels (per K group: fp32 partial dot of x with the unscaled codes,
 * then acc += partial * act_scale * weight_scale, DeepSeek fp8_gemm's order), decoded by the format
 * table's code_row. */
#include <string.h>

#include "linear/lin_kernels.h"

#define MT 16   /* rows of x per tile */
#define KC 256  /* codes decoded per chunk */

static void gemv_generic(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const dsv3_weight *w = a->w;
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    const int64_t K = w->k, N = w->n, G = dsv3_weight_kgroup(w), ng = (K + G - 1) / G;
    float buf[KC], acc[MT], part[MT];
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m0 = 0; m0 < a->m; m0 += MT) {
            const int64_t mr = a->m - m0 < MT ? a->m - m0 : MT;
            for (int64_t i = 0; i < mr; i++)
                acc[i] = 0.0f;
            for (int64_t g = 0; g < ng; g++) {
                const int64_t k1 = (g + 1) * G < K ? (g + 1) * G : K;
                for (int64_t i = 0; i < mr; i++)
                    part[i] = 0.0f;
                for (int64_t c0 = g * G; c0 < k1; c0 += KC) {
                    const int64_t len = k1 - c0 < KC ? k1 - c0 : KC;
                    t->code_row(w, n, c0, len, buf);
                    for (int64_t i = 0; i < mr; i++) {
                        const float *x = a->x + (m0 + i) * K + c0;
                        float p = part[i];
                        for (int64_t j = 0; j < len; j++)
                            p += x[j] * buf[j];
                        part[i] = p;
                    }
                }
                const float s = t->group_scale(w, n, g);
                for (int64_t i = 0; i < mr; i++)
                    acc[i] += a->xs ? part[i] * a->xs[(m0 + i) * ng + g] * s : part[i] * s;
            }
            for (int64_t i = 0; i < mr; i++)
                a->y[(m0 + i) * N + n] = acc[i] + (a->bias ? a->bias[n] : 0.0f);
        }
}

void dsv3_gemv_f32_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemv_generic(a, n0, n1); }
void dsv3_gemv_bf16_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemv_generic(a, n0, n1); }
void dsv3_gemv_fp8_block_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemv_generic(a, n0, n1); }
void dsv3_gemv_nvfp4_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemv_generic(a, n0, n1); }
void dsv3_gemv_int8_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemv_generic(a, n0, n1); }
void dsv3_gemv_int4_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1) { gemv_generic(a, n0, n1); }

/* Dynamic int8: exact int32 dot of per-token int8 activations with the int8 codes,
 * y = ((float)dot * s_x[m]) * s_w[n]. Every ISA gives the same bits. */
void dsv3_dyn_int8_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, N = w->n;
    const float *sw = (const float *)w->scale;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *wr = (const int8_t *)w->data + n * K;
        for (int64_t m = 0; m < a->m; m++) {
            const int8_t *xr = a->xq + m * K;
            int32_t acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += (int32_t)xr[k] * (int32_t)wr[k];
            a->y[m * N + n] = ((float)acc * a->xs_tok[m]) * sw[n] + (a->bias ? a->bias[n] : 0.0f);
        }
    }
}

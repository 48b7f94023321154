/* Scalar twin of the nvfp4 Q8 fast kernels, written from the definition (dot_fp.h): exact int32 dots of the
 * Q8 codes with the doubled e2m1 codes per 16-column block, scaled by the block's activation scale and
 * e4m3 weight scale, then by scale2 / 2. Codes and scales from the reference decoders (dsv3_dtypes.h). */
#include "linear/dot_fp.h"

#include "dsv3_dtypes.h"

float dsv3_q8_nvfp4_ref_dot(const dsv3_lin_args *a, int64_t m, int64_t n, int64_t k0)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, nb = (K + DSV3_Q8_BLOCK - 1) / DSV3_Q8_BLOCK;
    const int8_t *q = a->q8->q + m * K;
    const uint8_t *codes = (const uint8_t *)w->data + n * (K / 2), *s = (const uint8_t *)w->scale + n * (K / 16);
    float y = 0.0f;
    for (int64_t b = k0 / 16; b < K / 16; b++) {
        int32_t dot = 0;
        for (int64_t k = b * 16; k < b * 16 + 16; k++) {
            const uint8_t nib = (uint8_t)((k & 1) ? codes[k / 2] >> 4 : codes[k / 2] & 15u);
            dot += (int32_t)q[k] * (int32_t)(2.0f * dsv3_e2m1_to_f32(nib)); /* -12..12, exact */
        }
        y += (float)dot * (a->q8->d[m * nb + b * 16 / DSV3_Q8_BLOCK] * dsv3_e4m3_to_f32(s[b]));
    }
    return y * (w->scale2 * 0.5f);
}

void dsv3_q8_nvfp4_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < a->m; m++)
            a->y[m * a->w->n + n] = dsv3_q8_nvfp4_ref_dot(a, m, n, 0) + (a->bias ? a->bias[n] : 0.0f);
}

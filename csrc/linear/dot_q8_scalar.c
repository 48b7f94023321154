/* Scalar twins of the Q8 fast kernels, written from their definition (act_q8.h):
 *   y[m, n] = sum_b (sum_{k in b} q[m, k] code(n, k)) * d[m, b] * s(n, 32b / G)   (int32 block dots)
 * Scales come from the format table (group_scale). */
#include "linear/act_q8.h"
#include "linear/int4p.h"

/* int8 weights: code = the stored int8; int4: the two's complement nibble (element 2i low), or the packed
 * layout's code (int4p.h) when the weight has one. */
static int32_t code_at(const dsv3_weight *w, int64_t n, int64_t k)
{
    if (w->fmt == DSV3_FMT_INT8)
        return ((const int8_t *)w->data)[n * w->k + k];
    if (w->packed)
        return int4p_code(w, n, k);
    const uint8_t b = ((const uint8_t *)w->data)[n * (w->k / 2) + k / 2];
    const int v = (k & 1) ? b >> 4 : b & 15;
    return v >= 8 ? v - 16 : v;
}

float dsv3_q8_ref_dot(const dsv3_lin_args *a, int64_t m, int64_t n, int64_t k0)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, nb = (K + DSV3_Q8_BLOCK - 1) / DSV3_Q8_BLOCK, G = dsv3_weight_kgroup(w);
    const int8_t *q = a->q8->q + m * K;
    float y = 0.0f;
    for (int64_t b = k0 / DSV3_Q8_BLOCK; b < nb; b++) {
        const int64_t c0 = b * DSV3_Q8_BLOCK, c1 = c0 + DSV3_Q8_BLOCK < K ? c0 + DSV3_Q8_BLOCK : K;
        int32_t s = 0;
        for (int64_t k = c0; k < c1; k++)
            s += (int32_t)q[k] * code_at(w, n, k);
        y += (float)s * (a->q8->d[m * nb + b] * dsv3_formats[w->fmt].group_scale(w, n, c0 / G));
    }
    return y;
}

static void q8_rows(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < a->m; m++)
            a->y[m * a->w->n + n] = dsv3_q8_ref_dot(a, m, n, 0) + (a->bias ? a->bias[n] : 0.0f);
}

void dsv3_q8_int8_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1) { q8_rows(a, n0, n1); }
void dsv3_q8_int4_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1) { q8_rows(a, n0, n1); }

/* Scalar twin of the packed int4 fast kernels (dot_q8_int4p_avx2.c, dot_q8_int4p_avx512.c): the same
 * arithmetic per output row, so every ISA gives the same bits. Definition (act_q8.h, DSV3_X_Q8_O8 x):
 *   per full Q8 block b (32 columns) the exact int32 sum s_b = sum_{k in b} (code(n, k) + 8) q[m, k], then in f32
 *   group 32:  acc = fma(fma(s_b, d_b, e_b), scale(n, b), acc)                    (e_b = -8 d_b sum_b q, act_q8.c)
 *   group 128: per group j, t = e4_j, t = fma(s_b, d_b, t) over its blocks in order, acc = fma(t, scale(n, j), acc)
 *   y = (acc + reference over the K tail past the last full block) + bias (0 when none).
 * fmaf here is the C library's correctly rounded fma, the vfmadd of the SIMD twins. */
#include <math.h>

#include "linear/act_q8.h"
#include "linear/int4p.h"

static float row_dot(const dsv3_lin_args *a, int64_t m, int64_t n)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t K = w->k, nb = (K + 31) / 32, nfull = x->kb / 32, ne = nfull, ne4 = (x->kb + 127) / 128;
    const uint8_t *p = int4p_codes(w, n / 16) + (n % 16) * 4;
    const float *sc = int4p_scales(w, n / 16) + n % 16;
    const int8_t *q = x->q + m * K;
    const float *d = x->d + m * nb, *e = x->e + m * ne, *e4 = x->e4 + m * ne4;
    float acc = 0.0f, t = 0.0f;
    for (int64_t b = 0; b < nfull; b++) {
        int32_t s = 0;
        for (int c = 0; c < 4; c++)
            for (int i = 0; i < 4; i++) {
                const uint8_t byte = p[(4 * b + c) * 64 + i];
                s += (int32_t)(byte & 15) * q[32 * b + 8 * c + i] + (int32_t)(byte >> 4) * q[32 * b + 8 * c + 4 + i];
            }
        if (w->group == 32) {
            acc = fmaf(fmaf((float)s, d[b], e[b]), sc[b * 16], acc);
        } else {
            if (b % 4 == 0)
                t = e4[b / 4];
            t = fmaf((float)s, d[b], t);
            if (b % 4 == 3 || b == nfull - 1)
                acc = fmaf(t, sc[(b / 4) * 16], acc);
        }
    }
    return acc;
}

void dsv3_q8_int4p_scalar(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const int64_t kb = a->q8->kb, K = a->w->k;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < a->m; m++) {
            const float tail = kb < K ? dsv3_q8_ref_dot(a, m, n, kb) : 0.0f;
            a->y[m * a->w->n + n] = row_dot(a, m, n) + tail + (a->bias ? a->bias[n] : 0.0f);
        }
}

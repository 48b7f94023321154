/* Softmax, SiLU and the reference dot product (fixed summation order). */
#include "dsv3_ops.h"

#include <math.h>

void dsv3_softmax_f32(float *x, int64_t n)
{
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    float sum = 0.f;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    for (int64_t i = 0; i < n; i++)
        x[i] /= sum;
}

float dsv3_silu_f32(float x) { return x / (1.0f + expf(-x)); }

void dsv3_silu_mul_f32(float *g, const float *u, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        g[i] = dsv3_silu_f32(g[i]) * u[i];
}

float dsv3_dot_f32(const float *a, const float *b, int64_t n)
{
    float acc = 0.f;
    for (int64_t i = 0; i < n; i++)
        acc += a[i] * b[i];
    return acc;
}

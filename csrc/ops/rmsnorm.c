/* RMSNorm in f32 as transformers computes it: the mean of squares (accumulated in double, a fixed
 * order), rsqrt of (mean + eps) in f32, x * r, then weight * that. */
#include "dsv3_ops.h"

#include <math.h>

static void rmsnorm_row(const float *x, int64_t n, const float *w, float eps, float *y)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    const float var = (float)(ss / (double)n);
    const float r = 1.0f / sqrtf(var + eps);
    for (int64_t i = 0; i < n; i++)
        y[i] = w[i] * (x[i] * r);
}

void dsv3_rmsnorm_f32(const float *x, int64_t m, int64_t n, const float *w, float eps, float *y)
{
    if (m <= 1) { /* decode: no parallel region at all (not even an if(0) one) */
        for (int64_t i = 0; i < m; i++)
            rmsnorm_row(x, n, w, eps, y);
        return;
    }
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t i = 0; i < m; i++)
        rmsnorm_row(x + i * n, n, w, eps, y + i * n);
}

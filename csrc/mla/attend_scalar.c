/* Reference attention kernels (the order every SIMD twin reproduces; see attend_kernels.h). */
#include "attend_kernels.h"
#include "kv_rows.h"

#include <math.h>

static float dot16(const float *a, const float *b, int64_t n)
{
    float acc[16] = {0.f};
    for (int64_t k = 0; k < n; k++)
        acc[k & 15] = fmaf(a[k], b[k], acc[k & 15]);
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++)
            acc[l] = acc[l] + acc[l + w];
    return acc[0];
}

static void dots_scalar(const float *a, int64_t na, int64_t lda, const float *b, int64_t nb, int64_t ldb,
                        int64_t n, float *out, int64_t ldo)
{
    for (int64_t i = 0; i < na; i++)
        for (int64_t j = 0; j < nb; j++)
            out[i * ldo + j] = dot16(a + i * lda, b + j * ldb, n);
}

static void wsum_scalar(const float *p, int64_t np, int64_t ldp, const float *x, int64_t ldx, int64_t T, int64_t n,
                        float *out, int64_t ldo)
{
    for (int64_t i = 0; i < np; i++) {
        float *o = out + i * ldo;
        for (int64_t r = 0; r < n; r++)
            o[r] = 0.f;
        for (int64_t t = 0; t < T; t++) {
            const float pt = p[i * ldp + t], *xt = x + t * ldx;
            for (int64_t r = 0; r < n; r++)
                o[r] = fmaf(pt, xt[r], o[r]);
        }
    }
}

static float expsum_scalar(float *x, int64_t n, float m)
{
    float acc[16] = {0.f};
    for (int64_t j = 0; j < n; j++) {
        x[j] = dsv3_mla_exp(x[j] - m);
        acc[j & 15] = acc[j & 15] + x[j];
    }
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++)
            acc[l] = acc[l] + acc[l + w];
    return acc[0];
}

static void dots_kv_scalar(const float *a, int64_t na, int64_t lda, const dsv3_kv_layout *g, const uint8_t *rows,
                           int64_t nb, float *out, int64_t ldo)
{
    const int64_t n = g->R + g->P;
    for (int64_t i = 0; i < na; i++)
        for (int64_t j = 0; j < nb; j++) {
            const uint8_t *row = rows + j * g->row_bytes;
            float acc[16] = {0.f};
            for (int64_t k = 0; k < n; k++)
                acc[k & 15] = fmaf(a[i * lda + k], dsv3_kv_elem(g, row, k), acc[k & 15]);
            for (int w = 8; w >= 1; w /= 2)
                for (int l = 0; l < w; l++)
                    acc[l] = acc[l] + acc[l + w];
            out[i * ldo + j] = acc[0];
        }
}

static void wsum_kv_scalar(const float *p, int64_t np, int64_t ldp, const dsv3_kv_layout *g, const uint8_t *rows,
                           int64_t T, float *out, int64_t ldo)
{
    for (int64_t i = 0; i < np; i++) {
        float *o = out + i * ldo;
        for (int64_t r = 0; r < g->R; r++)
            o[r] = 0.f;
        for (int64_t t = 0; t < T; t++) {
            const float pt = p[i * ldp + t];
            const uint8_t *row = rows + t * g->row_bytes;
            for (int64_t r = 0; r < g->R; r++)
                o[r] = fmaf(pt, dsv3_kv_elem(g, row, r), o[r]);
        }
    }
}

const dsv3_attend_kernels dsv3_attend_scalar = {dots_scalar, wsum_scalar, expsum_scalar, dots_kv_scalar,
                                                wsum_kv_scalar, dsv3_wsum_rows_scalar};

const dsv3_attend_kernels *dsv3_attend_table(dsv3_isa isa)
{
    return isa == DSV3_ISA_AVX512 ? &dsv3_attend_avx512
         : isa == DSV3_ISA_AVX2   ? &dsv3_attend_avx2
                                  : &dsv3_attend_scalar;
}

/* Quantise / dequantise round trips and dsv3_linear for every format, every ISA, on odd shapes,
 * against a reference written here from the layouts documented in dsv3_quant.h: decode each code
 * with the scalar functions of dsv3_dtypes.h, scale it, then dot in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctest.h"
#include "dsv3_dtypes.h"
#include "dsv3_quant.h"

typedef struct {
    dsv3_weight w;
    void *data, *scale;
    float *deq;   /* [n, k] reference dequantisation */
} qweight;

static float nibble(const uint8_t *row, int64_t j) { return (float)((j & 1) ? row[j / 2] >> 4 : row[j / 2] & 15); }

/* The reference decode of W[r, j] from the documented layouts. */
static float ref_elem(const dsv3_weight *w, int64_t r, int64_t j)
{
    const int64_t k = w->k;
    switch (w->fmt) {
    case DSV3_FMT_F32: return ((const float *)w->data)[r * k + j];
    case DSV3_FMT_BF16: return dsv3_bf16_to_f32(((const uint16_t *)w->data)[r * k + j]);
    case DSV3_FMT_FP8_BLOCK:
        return dsv3_e4m3_to_f32(((const uint8_t *)w->data)[r * k + j]) *
               ((const float *)w->scale)[(r / 128) * ((k + 127) / 128) + j / 128];
    case DSV3_FMT_NVFP4: {
        const uint8_t nib = (uint8_t)nibble((const uint8_t *)w->data + r * (k / 2), j);
        const float s = dsv3_e4m3_to_f32(((const uint8_t *)w->scale)[r * (k / 16) + j / 16]) * w->scale2;
        return dsv3_e2m1_to_f32(nib) * s;
    }
    case DSV3_FMT_INT8: return (float)((const int8_t *)w->data)[r * k + j] * ((const float *)w->scale)[r];
    case DSV3_FMT_INT4: {
        const int v = (int)nibble((const uint8_t *)w->data + r * (k / 2), j);
        const int64_t groups = (k + w->group - 1) / w->group;
        return (float)(v >= 8 ? v - 16 : v) * ((const float *)w->scale)[r * groups + j / w->group];
    }
    default: return NAN;
    }
}

static void qweight_free(qweight *q)
{
    free(q->data);
    free(q->scale);
    free(q->deq);
    memset(q, 0, sizeof *q);
}

/* Quantise src [n, k] into q; checks dsv3_dequantize against the reference decode and the
 * round-trip error against the format's bound. Returns 0 when the layout rejects the shape. */
static int qweight_make(qweight *q, dsv3_format fmt, const float *src, int64_t n, int64_t k, int group, int ue8m0)
{
    dsv3_error err = {0};
    size_t bytes;
    int64_t sr, sc;
    memset(q, 0, sizeof *q);
    if (dsv3_quant_layout(fmt, n, k, group, &bytes, &sr, &sc, &err) != DSV3_OK)
        return 0;
    const size_t sbytes = (size_t)(sr * sc) * (fmt == DSV3_FMT_NVFP4 ? 1 : 4);
    q->data = malloc(bytes);
    q->scale = sbytes ? malloc(sbytes) : NULL;
    q->deq = malloc((size_t)(n * k) * sizeof(float));
    float *lib = malloc((size_t)(n * k) * sizeof(float));
    float scale2 = 0.0f;
    if (!q->data || (sbytes && !q->scale) || !q->deq || !lib) {
        CHECK(0, "out of memory");
        free(lib);
        qweight_free(q);
        return 0;
    }
    CHECK_OK(dsv3_quantize(fmt, src, n, k, group, ue8m0, q->data, q->scale, &scale2, &err), &err);
    q->w = (dsv3_weight){fmt, n, k, q->data, q->scale, scale2, group, ue8m0, NULL, DSV3_ACT_EXACT, 0};
    if (fmt == DSV3_FMT_FP8_BLOCK)
        q->w.group = 128;
    const char *name = dsv3_formats[fmt].name;
    CHECK_OK(dsv3_dequantize(&q->w, lib, &err), &err);
    double worst = 0.0;
    int64_t bad = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < k; j++) {
            const float d = ref_elem(&q->w, r, j), x = src[r * k + j];
            q->deq[r * k + j] = d;
            if (dsv3_f32_bits(d) != dsv3_f32_bits(lib[r * k + j]))
                bad++;
            /* the format's error bound, from its block's absolute maximum */
            const int64_t g = fmt == DSV3_FMT_NVFP4 ? 16 : fmt == DSV3_FMT_INT4 ? group : fmt == DSV3_FMT_FP8_BLOCK ? 128 : k;
            const int64_t c0 = j / g * g, c1 = c0 + g < k ? c0 + g : k;
            const int64_t r0 = fmt == DSV3_FMT_FP8_BLOCK ? r / 128 * 128 : r, r1 = fmt == DSV3_FMT_FP8_BLOCK ? r0 + 128 : r + 1;
            float amax = 0.0f;
            for (int64_t rr = r0; rr < r1 && rr < n; rr++)
                for (int64_t c = c0; c < c1; c++)
                    amax = fmaxf(amax, fabsf(src[rr * k + c]));
            double bound;
            switch (fmt) {
            case DSV3_FMT_F32: bound = 0.0; break;
            case DSV3_FMT_BF16: bound = fabsf(x) * 0x1p-8; break;
            case DSV3_FMT_FP8_BLOCK: bound = fabsf(x) * (ue8m0 ? 0.0625 : 0.0625) + amax / 448.0 * (ue8m0 ? 2 : 1) * 0x1p-9; break;
            case DSV3_FMT_NVFP4: bound = amax / 6.0 * 1.07 + 1e-30; break;
            case DSV3_FMT_INT8: bound = amax / 127.0 * 0.5 * 1.0001; break;
            default: bound = amax / 7.0 * 0.5 * 1.0001; break;
            }
            const double e = fabs((double)d - x);
            if (e > bound)
                worst = fmax(worst, e / (bound > 0 ? bound : 1e-30));
        }
    CHECK(!bad, "%s [%lld, %lld]: dsv3_dequantize differs from the reference decode in %lld elements", name,
          (long long)n, (long long)k, (long long)bad);
    CHECK(worst == 0.0, "%s [%lld, %lld] group %d ue8m0 %d: round-trip error %.3g x over the bound", name,
          (long long)n, (long long)k, group, ue8m0, worst);
    if (fmt == DSV3_FMT_FP8_BLOCK && ue8m0)
        for (int64_t i = 0; i < sr * sc; i++) {
            const uint32_t b = dsv3_f32_bits(((float *)q->scale)[i]);
            CHECK((b & 0x807fffffu) == 0, "fp8_block ue8m0: scale %g is not a power of two", ((float *)q->scale)[i]);
        }
    free(lib);
    return 1;
}

/* act_quant of dsv3_linear.h's dynamic mode, per the header: the activations the kernel sees. */
static void act_codes(dsv3_format fmt, const float *x, int64_t m, int64_t k, double *xq)
{
    for (int64_t r = 0; r < m; r++) {
        const float *xr = x + r * k;
        if (fmt == DSV3_FMT_FP8_BLOCK) {
            for (int64_t c0 = 0; c0 < k; c0 += 128) {
                const int64_t c1 = c0 + 128 < k ? c0 + 128 : k;
                float amax = 0.0f;
                for (int64_t j = c0; j < c1; j++)
                    amax = fmaxf(amax, fabsf(xr[j]));
                const float s = fmaxf(amax, 1e-4f) / 448.0f;
                for (int64_t j = c0; j < c1; j++)
                    xq[r * k + j] = (double)dsv3_e4m3_to_f32(dsv3_f32_to_e4m3(xr[j] / s)) * s;
            }
        } else {
            float amax = 0.0f;
            for (int64_t j = 0; j < k; j++)
                amax = fmaxf(amax, fabsf(xr[j]));
            const float s = amax == 0.0f ? 1.0f : amax / 127.0f;
            for (int64_t j = 0; j < k; j++)
                xq[r * k + j] = (double)fminf(fmaxf(nearbyintf(xr[j] / s), -127.0f), 127.0f) * s;
        }
    }
}

/* The fast mode's activations (w.act = DSV3_ACT_FAST, act_q8.h), per its header: int8/int4/nvfp4 weights see x
 * quantised per block of 32 (d = amax/127, q = round-half-even(x/d)); bf16/fp8_block see bf16(x). */
static void fast_codes(dsv3_format fmt, double *xd, int64_t m, int64_t k)
{
    for (int64_t r = 0; r < m; r++)
        for (int64_t c0 = 0; c0 < k; c0 += 32) {
            double *xr = xd + r * k;
            const int64_t c1 = c0 + 32 < k ? c0 + 32 : k;
            float amax = 0.0f;
            for (int64_t j = c0; j < c1; j++)
                amax = fmaxf(amax, fabsf((float)xr[j]));
            const float d = amax / 127.0f;
            for (int64_t j = c0; j < c1; j++)
                if (fmt == DSV3_FMT_INT8 || fmt == DSV3_FMT_INT4 || fmt == DSV3_FMT_NVFP4)
                    xr[j] = d > 0 ? (double)nearbyintf((float)xr[j] / d) * d : 0.0;
                else
                    xr[j] = dsv3_bf16_to_f32(dsv3_f32_to_bf16((float)xr[j]));
        }
}

/* y_ref = xd W^T + bias in double; mag = sum |x w| (the scale of rounding errors). */
static void reference(const double *xd, int64_t m, const qweight *q, const float *bias, double *y, double *mag)
{
    const int64_t n = q->w.n, k = q->w.k;
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < n; c++) {
            double s = bias ? bias[c] : 0.0, a = 0.0;
            for (int64_t j = 0; j < k; j++) {
                const double p = xd[r * k + j] * q->deq[c * k + j];
                s += p;
                a += fabs(p);
            }
            y[r * n + c] = s;
            mag[r * n + c] = a + (bias ? fabs(bias[c]) : 0.0);
        }
}

static void compare(const char *what, const float *y, const double *ref, const double *mag, int64_t count, double tol)
{
    int64_t bad = 0, first = 0;
    for (int64_t i = 0; i < count; i++)
        if (!(fabs(y[i] - ref[i]) <= tol * mag[i] + 1e-6) && !bad++)
            first = i;
    CHECK(!bad, "%s: %lld of %lld outputs off, first [%lld]: %.7g vs reference %.7g (tol %.2g x %.3g)", what,
          (long long)bad, (long long)count, (long long)first, y[first], ref[first], tol, mag[first]);
}

static void linear_case(dsv3_format fmt, int64_t n, int64_t k, int group, int ue8m0, uint64_t *rng)
{
    static const int64_t MS[] = {1, 3, 17, 40};
    dsv3_isa isas[DSV3_ISA_COUNT];
    const int n_isa = ctest_isas(isas);
    const int64_t mmax = 40;
    dsv3_error err = {0};
    float *w = malloc((size_t)(n * k) * sizeof(float)), *x = malloc((size_t)(mmax * k) * sizeof(float));
    float *bias = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)(mmax * n) * sizeof(float));
    uint16_t *xb = malloc((size_t)(mmax * k) * 2);
    double *xd = malloc((size_t)(mmax * k) * sizeof(double)), *ref = malloc((size_t)(mmax * n) * sizeof(double));
    double *mag = malloc((size_t)(mmax * n) * sizeof(double)), *ref2 = malloc((size_t)(mmax * n) * sizeof(double));
    double *mag2 = malloc((size_t)(mmax * n) * sizeof(double));
    qweight q;
    if (!w || !x || !bias || !y || !xb || !xd || !ref || !mag || !ref2 || !mag2) {
        CHECK(0, "out of memory");
        goto done;
    }
    ctest_fill(w, n * k, 0.5f, rng);
    ctest_fill(x, mmax * k, 1.0f, rng);
    ctest_fill(bias, n, 1.0f, rng);
    for (int64_t i = 0; i < k; i++) /* an outlier column and a zero row of x */
        w[i] *= 8.0f;
    for (int64_t i = 0; i < k; i++)
        x[2 * k + i] = 0.0f;
    if (!qweight_make(&q, fmt, w, n, k, group, ue8m0)) {
        CHECK(fmt == DSV3_FMT_NVFP4 && k % 16, "%s [%lld, %lld]: layout rejected a valid shape", dsv3_formats[fmt].name,
              (long long)n, (long long)k);
        goto done;
    }
    for (size_t mi = 0; mi < sizeof MS / sizeof MS[0]; mi++) {
        const int64_t m = MS[mi];
        const float *b = (m + n) % 2 ? bias : NULL;
        char what[160];
        for (int dyn = 0; dyn < 3; dyn++) { /* weight-only, dynamic, fast activation mode */
            if (dyn == 1 && fmt != DSV3_FMT_FP8_BLOCK && fmt != DSV3_FMT_INT8)
                continue;
            if (dyn == 2 && fmt == DSV3_FMT_F32)
                continue;
            q.w.act = dyn == 2 ? DSV3_ACT_FAST : DSV3_ACT_EXACT;
            const int q8 = fmt == DSV3_FMT_INT8 || fmt == DSV3_FMT_INT4 || fmt == DSV3_FMT_NVFP4;
            for (int xbf = 0; xbf < 2; xbf++) {
                for (int64_t i = 0; i < m * k; i++) {
                    xb[i] = dsv3_f32_to_bf16(x[i]);
                    xd[i] = xbf ? dsv3_bf16_to_f32(xb[i]) : x[i];
                }
                if (dyn == 2) { /* exact reference (large M on AVX-512 runs the GEMM in either mode) */
                    reference(xd, m, &q, b, ref2, mag2);
                    fast_codes(fmt, xd, m, k);
                }
                if (dyn == 1) { /* the reference sees the quantised activations */
                    float *xs = malloc((size_t)(m * k) * sizeof(float));
                    if (!xs)
                        continue;
                    for (int64_t i = 0; i < m * k; i++)
                        xs[i] = (float)xd[i];
                    act_codes(fmt, xs, m, k, xd);
                    free(xs);
                }
                reference(xd, m, &q, b, ref, mag);
                for (int i = 0; i < n_isa; i++) {
                    snprintf(what, sizeof what, "linear %s [%lld, %lld] g%d%s m=%lld %s%s%s", dsv3_formats[fmt].name,
                             (long long)n, (long long)k, group, ue8m0 ? " ue8m0" : "", (long long)m,
                             dsv3_isa_name(isas[i]), dyn == 1 ? " dynamic" : dyn == 2 ? " fast" : "",
                             xbf ? " x=bf16" : "");
                    for (int64_t j = 0; j < m * n; j++)
                        y[j] = NAN;
                    if (!dyn && !xbf)
                        CHECK_OK(dsv3_linear(x, m, &q.w, b, y, (int)isas[i], &err), &err);
                    else
                        CHECK_OK(dsv3_linear_ex(xbf ? (const void *)xb : (const void *)x, xbf, m, &q.w, b, y,
                                                dyn == 1 ? DSV3_LINEAR_DYNAMIC : DSV3_LINEAR_WEIGHT_ONLY, (int)isas[i],
                                                &err),
                                 &err);
                    /* small M: f32 FMA or bf16 hi+lo (2^-17); large M (AVX-512): x and weights in bf16 */
                    const int64_t gm = fmt == DSV3_FMT_FP8_BLOCK ? 24 : 32; /* linear.c GEMM_MIN_M(_FP8) */
                    const int gemm = m >= gm && isas[i] == DSV3_ISA_AVX512 && dyn != 1;
                    /* AVX2 GEMM (linear.c GEMM_MIN_M_AVX2): f32 x, f32-exact in either weight-only mode */
                    /* ... except a fast-mode GEMM of the format table (fast_gemm: AVX2 int4, Q8 activations) */
                    const int avx2_gemm = m >= 12 && isas[i] == DSV3_ISA_AVX2 && dyn != 1 &&
                                          !(dyn == 2 && dsv3_formats[fmt].fast_gemm[isas[i]]);
                    const int bf16_avx2 = fmt == DSV3_FMT_BF16 && isas[i] == DSV3_ISA_AVX2;
                    if (dyn == 2 && (gemm || avx2_gemm || bf16_avx2)) /* no fast kernel */
                        compare(what, y, ref2, mag2, m * n, gemm ? 0x1p-7 : 3e-5);
                    else /* fast bf16-hi kernels keep x in f32 beyond the last full 64/128 block: bf16 bound */
                        compare(what, y, ref, mag, m * n, gemm ? 0x1p-7 : dyn == 2 && !q8 ? 0x1p-8 : 3e-5);
                }
            }
        }
    }
    qweight_free(&q);
done:
    free(w); free(x); free(bias); free(y); free(xb); free(xd); free(ref); free(mag); free(ref2); free(mag2);
}

/* e4m3 NaN codes (0x7F, 0xFF) in fp8_block weights and nvfp4 block scales: every ISA and every M path
 * (small-M kernels, the GEMMs) gives NaN in exactly the output columns whose weight row holds one, and
 * finite values elsewhere (issue 9: the AVX2 decoders used to read them as +-480). */
static void linear_nan_codes(dsv3_format fmt, uint64_t *rng)
{
    static const int64_t MS[] = {1, 5, 17, 40};
    const int64_t n = 40, k = 272, mmax = 40;
    dsv3_isa isas[DSV3_ISA_COUNT];
    const int n_isa = ctest_isas(isas);
    dsv3_error err = {0};
    float *w = malloc((size_t)(n * k) * sizeof(float)), *x = malloc((size_t)(mmax * k) * sizeof(float));
    float *y = malloc((size_t)(mmax * n) * sizeof(float));
    qweight q;
    int nan_row[40] = {0};
    if (!w || !x || !y) {
        CHECK(0, "out of memory");
        goto done;
    }
    ctest_fill(w, n * k, 0.5f, rng);
    ctest_fill(x, mmax * k, 1.0f, rng);
    if (!qweight_make(&q, fmt, w, n, k, 128, 0)) {
        CHECK(0, "%s: layout rejected [40, 272]", dsv3_formats[fmt].name);
        goto done;
    }
    if (fmt == DSV3_FMT_FP8_BLOCK) { /* a vector column, a K-tail column, the second 128-group */
        ((uint8_t *)q.data)[3 * k + 5] = 0x7F;
        ((uint8_t *)q.data)[17 * k + k - 1] = 0xFF;
        ((uint8_t *)q.data)[30 * k + 130] = 0xFF;
        nan_row[3] = nan_row[17] = nan_row[30] = 1;
    } else { /* block scales: first, last, middle group */
        ((uint8_t *)q.scale)[5 * (k / 16)] = 0x7F;
        ((uint8_t *)q.scale)[20 * (k / 16) + k / 16 - 1] = 0xFF;
        ((uint8_t *)q.scale)[33 * (k / 16) + 9] = 0x7F;
        nan_row[5] = nan_row[20] = nan_row[33] = 1;
    }
    for (size_t mi = 0; mi < sizeof MS / sizeof MS[0]; mi++)
        for (int i = 0; i < n_isa; i++) {
            const int64_t m = MS[mi];
            CHECK_OK(dsv3_linear(x, m, &q.w, NULL, y, (int)isas[i], &err), &err);
            int64_t bad = -1;
            for (int64_t j = 0; j < m * n && bad < 0; j++)
                if ((isnan(y[j]) != 0) != nan_row[j % n] || (!nan_row[j % n] && !isfinite(y[j])))
                    bad = j;
            CHECK(bad < 0, "%s NaN codes m=%lld %s: y[%lld, %lld] = %g", dsv3_formats[fmt].name, (long long)m,
                  dsv3_isa_name(isas[i]), (long long)(bad / n), (long long)(bad % n), bad < 0 ? 0.0 : (double)y[bad]);
        }
    qweight_free(&q);
done:
    free(w); free(x); free(y);
}

void test_linear(void)
{
    {
        uint64_t rng = 7;
        linear_nan_codes(DSV3_FMT_FP8_BLOCK, &rng);
        linear_nan_codes(DSV3_FMT_NVFP4, &rng);
    }
    static const int64_t NS[] = {1, 7, 130}, KS[] = {300, 576, 32};
    uint64_t rng = 42;
    for (int f = 0; f < DSV3_FMT_COUNT; f++)
        for (size_t a = 0; a < sizeof NS / sizeof NS[0]; a++)
            for (size_t b = 0; b < sizeof KS / sizeof KS[0]; b++) {
                const int64_t n = NS[a], k = KS[b];
                if (n == 130 && k == 576 && f != DSV3_FMT_FP8_BLOCK && f != DSV3_FMT_INT4)
                    continue; /* keep the run short: the largest shape for the blocked formats only */
                if (f == DSV3_FMT_INT4) {
                    linear_case((dsv3_format)f, n, k, 32, 0, &rng);
                    linear_case((dsv3_format)f, n, k, 128, 0, &rng);
                } else if (f == DSV3_FMT_FP8_BLOCK) {
                    linear_case((dsv3_format)f, n, k, 128, (int)(a + b) % 2, &rng);
                } else {
                    linear_case((dsv3_format)f, n, k, 0, 0, &rng);
                }
            }
}

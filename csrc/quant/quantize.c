/* Quantisers (f32 -> stored codes and scales) and the reference dequantiser, per format.
 * The rounding rules follow the producers of real checkpoints (see dsv3_quant.h). */
#include "dsv3_quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "dsv3_dtypes.h"

/* Largest |w| of a block; *bad is set when the block holds a NaN or an infinity. Every element a
 * scaled format stores passes through here, so non-finite input is seen without a second pass
 * (unchecked, a NaN was skipped by the max and stored as a finite code, an inf made its block's
 * scale inf and every other value in the block NaN). */
static float amax_of(const float *w, int64_t ld, int64_t rows, int64_t cols, int *bad)
{
    float a = 0.0f;
    int finite = 1;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            const float v = fabsf(w[i * ld + j]);
            a = v > a ? v : a;
            finite &= v <= FLT_MAX; /* false for inf and NaN */
        }
    if (!finite)
        *bad = 1;
    return a;
}

/* The error for a weight with a non-finite value: names the first one in row-major order. */
static dsv3_status nonfinite_error(const char *fmt_name, const float *w, int64_t n, int64_t k, dsv3_error *err)
{
    for (int64_t i = 0; i < n * k; i++)
        if (!(fabsf(w[i]) <= FLT_MAX))
            return dsv3_fail(err, DSV3_E_VALUE,
                             "quantize to %s: weight[%lld, %lld] is %s; a scaled format cannot store a non-finite "
                             "value (it would ruin the scale of its block): fix the weight, or keep this tensor in "
                             "bf16/f32",
                             fmt_name, (long long)(i / k), (long long)(i % k),
                             w[i] != w[i] ? "nan" : (w[i] > 0 ? "inf" : "-inf"));
    return dsv3_fail(err, DSV3_E_INTERNAL, "quantize to %s: a non-finite value was seen but not found", fmt_name);
}

/* DeepSeek weight quantisation: S = amax/448 (1 if 0); ue8m0: S = 2^ceil(log2 S); q = e4m3(w/S). */
static void quant_fp8_block(const float *w, int64_t n, int64_t k, int ue8m0, uint8_t *q, float *s, int *bad)
{
    const int64_t nb = (n + 127) / 128, kb = (k + 127) / 128;
    int nonfinite = 0;
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads()) reduction(| : nonfinite)
    for (int64_t b = 0; b < nb * kb; b++) {
        const int64_t r0 = (b / kb) * 128, c0 = (b % kb) * 128;
        const int64_t rows = n - r0 < 128 ? n - r0 : 128, cols = k - c0 < 128 ? k - c0 : 128;
        const float amax = amax_of(w + r0 * k + c0, k, rows, cols, &nonfinite);
        float S = amax == 0.0f ? 1.0f : amax / 448.0f;
        if (ue8m0) {
            int e;
            const float m = frexpf(S, &e); /* S = m * 2^e, m in [0.5, 1) */
            S = ldexpf(1.0f, m == 0.5f ? e - 1 : e);
        }
        s[b] = S;
        for (int64_t i = r0; i < r0 + rows; i++)
            for (int64_t j = c0; j < c0 + cols; j++)
                q[i * k + j] = dsv3_f32_to_e4m3(w[i * k + j] / S);
    }
    *bad = nonfinite;
}

/* ModelOpt _cast_fp4: index = #bounds strictly below |x| (searchsorted, left), +1 when |x| equals
 * bounds[[1, 3, 5]] = 0.75, 1.75, 3.5 (its comment says 2.5, its code indexes 3.5). Net effect: every
 * tie goes to the even code (0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4). Sign bit
 * from x < 0 (so -0.1 -> code 8, negative zero). */
static uint8_t modelopt_e2m1(float x)
{
    static const float bounds[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    const float a = fabsf(x);
    uint8_t ord = 0;
    for (int i = 0; i < 7; i++)
        ord += bounds[i] < a;
    if (a != a) /* NaN sorts last in searchsorted */
        ord = 7;
    ord += (a == 0.75f || a == 1.75f || a == 3.5f);
    return (uint8_t)((x < 0.0f ? 8u : 0u) | ord);
}

static void quant_nvfp4(const float *w, int64_t n, int64_t k, uint8_t *q, uint8_t *sc, float *scale2, int *bad)
{
    const float s2 = amax_of(w, k, n, k, bad) / 2688.0f; /* amax / (6 * 448) */
    *scale2 = s2;
    if (*bad)
        return;
    int unused = 0; /* every element was checked above */
    const int64_t kb = k / 16;
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t r = 0; r < n; r++)
        for (int64_t b = 0; b < kb; b++) {
            const float *blk = w + r * k + b * 16;
            float bs = amax_of(blk, 16, 1, 16, &unused) / (6.0f * s2);
            if (s2 == 0.0f) /* all-zero weight (ModelOpt would produce NaN scales): scale 1, codes 0 */
                bs = 1.0f;
            if (bs == 0.0f)
                bs = 1.0f;
            bs = bs < 0.001953125f ? 0.001953125f : bs; /* clamp at the e4m3 subnormal min 2^-9 */
            const uint8_t code = dsv3_f32_to_e4m3(bs);
            sc[r * kb + b] = code;
            const float div = dsv3_e4m3_to_f32(code) * s2;
            uint8_t *qr = q + r * (k / 2) + b * 8;
            for (int i = 0; i < 8; i++) {
                const uint8_t lo = s2 == 0.0f ? 0 : modelopt_e2m1(blk[2 * i] / div);
                const uint8_t hi = s2 == 0.0f ? 0 : modelopt_e2m1(blk[2 * i + 1] / div);
                qr[i] = (uint8_t)(lo | (hi << 4));
            }
        }
}

/* Symmetric integer quantisation of groups of `g` along K: S = amax/qmax (1 if 0), q = rint(w/S). */
static int8_t quant_int(float v, float S, int qmax)
{
    float r = nearbyintf(v / S);
    r = r > (float)qmax ? (float)qmax : (r < (float)-qmax ? (float)-qmax : r);
    return (int8_t)r;
}

static void quant_int8(const float *w, int64_t n, int64_t k, int8_t *q, float *s, int *bad)
{
    int nonfinite = 0;
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads()) reduction(| : nonfinite)
    for (int64_t r = 0; r < n; r++) {
        const float amax = amax_of(w + r * k, k, 1, k, &nonfinite);
        const float S = amax == 0.0f ? 1.0f : amax / 127.0f;
        s[r] = S;
        for (int64_t j = 0; j < k; j++)
            q[r * k + j] = quant_int(w[r * k + j], S, 127);
    }
    *bad = nonfinite;
}

static void quant_int4(const float *w, int64_t n, int64_t k, int group, uint8_t *q, float *s, int *bad)
{
    const int64_t ng = (k + group - 1) / group;
    int nonfinite = 0;
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads()) reduction(| : nonfinite)
    for (int64_t r = 0; r < n; r++) {
        memset(q + r * (k / 2), 0, (size_t)(k / 2));
        for (int64_t g = 0; g < ng; g++) {
            const int64_t c0 = g * group, cols = k - c0 < group ? k - c0 : group;
            const float amax = amax_of(w + r * k + c0, k, 1, cols, &nonfinite);
            const float S = amax == 0.0f ? 1.0f : amax / 7.0f;
            s[r * ng + g] = S;
            for (int64_t j = c0; j < c0 + cols; j++) {
                const uint8_t nib = (uint8_t)(quant_int(w[r * k + j], S, 7) & 15);
                q[r * (k / 2) + j / 2] |= (uint8_t)((j & 1) ? nib << 4 : nib);
            }
        }
    }
    *bad = nonfinite;
}

dsv3_status dsv3_quantize(dsv3_format fmt, const float *w, int64_t n, int64_t k, int group, int ue8m0,
                          void *data, void *scale, float *scale2, dsv3_error *err)
{
    size_t bytes;
    int64_t sr, sc;
    dsv3_status st = dsv3_quant_layout(fmt, n, k, group, &bytes, &sr, &sc, err);
    if (st != DSV3_OK)
        return st;
    if (!w || !data || (sr && !scale))
        return dsv3_fail(err, DSV3_E_VALUE, "quantize: NULL buffer");
    *scale2 = 1.0f;
    int bad = 0; /* the scaled formats refuse NaN / inf (f32 and bf16 keep them, as stored) */
    switch (fmt) {
    case DSV3_FMT_F32: memcpy(data, w, bytes); break;
    case DSV3_FMT_BF16:
        for (int64_t i = 0; i < n * k; i++)
            ((uint16_t *)data)[i] = dsv3_f32_to_bf16(w[i]);
        break;
    case DSV3_FMT_FP8_BLOCK: quant_fp8_block(w, n, k, ue8m0, data, scale, &bad); break;
    case DSV3_FMT_NVFP4: quant_nvfp4(w, n, k, data, scale, scale2, &bad); break;
    case DSV3_FMT_INT8: quant_int8(w, n, k, data, scale, &bad); break;
    case DSV3_FMT_INT4: quant_int4(w, n, k, group, data, scale, &bad); break;
    default: return dsv3_fail(err, DSV3_E_VALUE, "quantize: unknown format %d", (int)fmt);
    }
    if (bad)
        return nonfinite_error(dsv3_formats[fmt].name, w, n, k, err);
    return DSV3_OK;
}

dsv3_status dsv3_dequantize(const dsv3_weight *w, float *out, dsv3_error *err)
{
    dsv3_status st = dsv3_weight_validate(w, err);
    if (st != DSV3_OK)
        return st;
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    const int64_t g = dsv3_weight_kgroup(w), k = w->k;
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t r = 0; r < w->n; r++) {
        float *o = out + r * k;
        t->code_row(w, r, 0, k, o);
        for (int64_t c0 = 0; c0 < k; c0 += g) {
            const float s = t->group_scale(w, r, c0 / g);
            for (int64_t j = c0; j < k && j < c0 + g; j++)
                o[j] *= s;
        }
    }
    return DSV3_OK;
}

/* Linear dispatcher: validates the weight, prepares activations (bf16 -> f32, dynamic activation
 * quantisation, bf16 hi/lo split for the AVX-512 small-M dot kernels, bf16 copy for the large-M
 * path; in the fast mode, w->act, Q8 blocks (act_q8.c) or bf16 hi only), picks the kernel from the
 * format table for the ISA and splits output columns across threads (small M: 4 columns per work
 * item; large M: 32). Every y element is computed by exactly one thread in a fixed order, so results
 * do not depend on the thread count.
 *
 * Packing decision: kernels read the checkpoint layout directly (rows of codes are contiguous and
 * streamable; scales are tiny). The large-M path decodes weight tiles into a per-thread bf16 buffer,
 * which is its "packing", done on the fly and amortised over M rows. dsv3_weight.packed stays NULL. */
#include <math.h>
#include <string.h>

#include "dsv3_dtypes.h"
#include "dsv3_onednn.h"
#include "linear/act_q8.h"
#include "linear/lin_kernels.h"

#include <omp.h>
#include <stdlib.h>

/* Rows of x from which the large-M (bf16 dot) kernels are used when the ISA has them. */
#define GEMM_MIN_M 32
/* fp8_block from 24 rows: its small-M kernels decode e4m3 per pair of x rows, so at M = 24..31 they are
 * compute-bound; measured 2026-11-25 (2 threads, best of 5, 7168->2048 and 2048->7168): GEMM / small-M time
 * 0.83-0.88x at M=24, 0.72-0.76x at M=31, but 1.17-1.19x at M=16. bf16 weights gain nothing there (small-M won
 * on 7168->2048 up to M=31), so they keep 32. Same accuracy class as M >= 32 (x rounded to bf16). */
#define GEMM_MIN_M_FP8 24
/* oneDNN rule (measured 2026-11-25 on this 2-core Zen 4, best of 12-15 alternating calls, 2 threads;
 * data in BENCHMARKS.md, "oneDNN routing"):
 *  - f32 weights: dsv3 has no f32 GEMM (its FMA gemv re-reads W per 4 rows of x); oneDNN's f32
 *    matmul took 0.79x (M=8) .. 0.37x (M=64) of our time on 7168->2048, 2048->7168 and 7168->576
 *    (0.9-1.3x at M=4). So f32 weights with M >= ONEDNN_F32_MIN_M go to oneDNN.
 *  - bf16 weights, M >= GEMM_MIN_M (where our path also rounds x to bf16, so accuracy is the same):
 *    our vdpbf16ps GEMM took 1.25-1.34x oneDNN's time at M=128 and 1.01-1.09x at M=512 on
 *    7168->2048, 2048->7168 and 1536->24576 (0.94-1.10x on 7168->576). So bf16 goes to oneDNN too.
 *    (M < 32 stays on our small-M kernels: x in bf16 hi+lo there, f32-level accuracy.)
 * Conditions: oneDNN loaded (dsv3.ops.linear loads it), the caller asked for the active path
 * (isa = -1, not scalar: an explicit isa always runs our kernels) and DSV3_LINEAR_ONEDNN=1: the route
 * is OPT-IN. oneDNN's results were bitwise identical with 1 and 2 threads on the large shapes above,
 * but not on small ones (a 13x32 -> 99 lm_head in the forward tests changed with the thread count),
 * and the design promises thread-count independent results; so by default our own kernels run. */
#define ONEDNN_F32_MIN_M 8
#define GEMV_COLS 4 /* output columns per work item in the small-M kernels */

/* Element-wise activation conversions, split across threads (each element written once). */
static void bf16_to_f32_par(const uint16_t *in, int64_t n, float *out)
{
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t i = 0; i < n; i++)
        out[i] = dsv3_bf16_to_f32(in[i]);
}

static void f32_to_bf16_par(const float *in, int64_t n, uint16_t *out)
{
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t i = 0; i < n; i++)
        out[i] = dsv3_f32_to_bf16(in[i]);
}

static void act_quant_fp8(const float *x, int64_t m, int64_t k, float *xq, float *xs)
{
    const int64_t ng = (k + 127) / 128;
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t r = 0; r < m; r++)
        for (int64_t g = 0; g < ng; g++) {
            const int64_t c0 = g * 128, c1 = c0 + 128 < k ? c0 + 128 : k;
            float amax = 0.0f;
            for (int64_t j = c0; j < c1; j++) {
                const float v = x[r * k + j] < 0 ? -x[r * k + j] : x[r * k + j];
                amax = v > amax ? v : amax;
            }
            const float s = (amax > 1e-4f ? amax : 1e-4f) / 448.0f; /* DeepSeek act_quant */
            xs[r * ng + g] = s;
            for (int64_t j = c0; j < c1; j++)
                xq[r * k + j] = dsv3_e4m3_to_f32(dsv3_f32_to_e4m3(x[r * k + j] / s));
        }
}

static void act_quant_int8(const float *x, int64_t m, int64_t k, int8_t *xq, uint8_t *xu, float *xs)
{
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t r = 0; r < m; r++) {
        float amax = 0.0f;
        for (int64_t j = 0; j < k; j++) {
            const float v = x[r * k + j] < 0 ? -x[r * k + j] : x[r * k + j];
            amax = v > amax ? v : amax;
        }
        const float s = amax == 0.0f ? 1.0f : amax / 127.0f;
        xs[r] = s;
        for (int64_t j = 0; j < k; j++) {
            float q = nearbyintf(x[r * k + j] / s);
            q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
            xq[r * k + j] = (int8_t)q;
            xu[r * k + j] = (uint8_t)(q < 0 ? -(int)q : (int)q); /* |q| for the VNNI kernel */
        }
    }
}

/* x = hi + lo, both bf16 (hi = RNE(x), lo = RNE(x - hi): 16 significant bits, relative error
 * <= 2^-17), in the kernel's layout (dsv3_xlayout): every full block (64 for P64, 128 for N128) is
 * permuted into its decoder's order; the K tail beyond the last full block stays in natural order
 * (kernels read it from x in f32). Parallel over (row, 1024-column chunk) so that M = 1 uses every
 * thread; each element is written once, so the result does not depend on the split. */
static int64_t xpos(int layout, int64_t o) /* destination of column o within its block */
{
    if (layout == DSV3_X_BF16X2_P64)
        return ((o >> 3) & 1) * 32 + (o >> 4) * 8 + (o & 7);
    return (o >> 6) * 64 + (o & 1) * 32 + ((o & 63) >> 1); /* N128 */
}

static void split_bf16x2(const float *x, int64_t m, int64_t k, int layout, uint16_t *xh, uint16_t *xl)
{
    const int64_t bs = layout == DSV3_X_BF16X2_P64 ? 64 : layout == DSV3_X_BF16X2_N128 ? 128 : 1;
    const int64_t kb = k / bs * bs, nc = (k + 1023) / 1024;
    int16_t perm[128];
    for (int64_t o = 0; o < bs; o++)
        perm[o] = (int16_t)(bs == 1 ? 0 : xpos(layout, o));
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t t = 0; t < m * nc; t++) {
        const int64_t r = t / nc, j0 = t % nc * 1024, j1 = j0 + 1024 < k ? j0 + 1024 : k;
        const float *xr = x + r * k;
        uint16_t *hr = xh + r * k, *lr = xl ? xl + r * k : NULL;
        uint16_t h[128], l[128];
        int64_t j = j0;
        for (; j + bs <= j1 && j + bs <= kb; j += bs) { /* full blocks (1024 is a multiple of bs) */
            for (int64_t o = 0; o < bs; o++) {
                h[o] = dsv3_f32_to_bf16(xr[j + o]);
                l[o] = dsv3_f32_to_bf16(xr[j + o] - dsv3_bf16_to_f32(h[o]));
            }
            for (int64_t o = 0; o < bs; o++) {
                hr[j + perm[o]] = h[o];
                if (lr) /* NULL: x rounded once to bf16 (fast mode) */
                    lr[j + perm[o]] = l[o];
            }
        }
        for (; j < j1; j++) { /* K tail: natural order */
            hr[j] = dsv3_f32_to_bf16(xr[j]);
            if (lr)
                lr[j] = dsv3_f32_to_bf16(xr[j] - dsv3_bf16_to_f32(hr[j]));
        }
    }
}

dsv3_status dsv3_linear_ex(const void *x, int x_bf16, int64_t m, const dsv3_weight *w, const float *bias,
                           float *y, dsv3_linear_mode mode, int isa, dsv3_error *err)
{
    dsv3_status st = dsv3_weight_validate(w, err);
    if (st != DSV3_OK)
        return st;
    if (m < 0 || (m > 0 && (!x || !y)))
        return dsv3_fail(err, DSV3_E_VALUE, "linear: bad activations (m = %lld)", (long long)m);
    if (mode != DSV3_LINEAR_WEIGHT_ONLY && mode != DSV3_LINEAR_DYNAMIC)
        return dsv3_fail(err, DSV3_E_VALUE, "linear: unknown mode %d", (int)mode);
    dsv3_isa id;
    if ((st = dsv3_isa_resolve(isa, &id, err)) != DSV3_OK)
        return st;
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    if (mode == DSV3_LINEAR_DYNAMIC && !t->dynamic[id])
        return dsv3_fail(err, DSV3_E_VALUE, "linear: mode 'dynamic' supports fp8_block and int8 weights, not %s",
                         t->name);
    if (m == 0)
        return DSV3_OK;
    /* every buffer below is at most m * max(K, N) elements of <= 8 bytes: bound m before any product */
    if (m > INT64_MAX / 8 / (w->k > w->n ? w->k : w->n))
        return dsv3_fail(err, DSV3_E_VALUE, "linear: %lld rows of %lld x %lld overflow the address space",
                         (long long)m, (long long)w->k, (long long)w->n);
    const int64_t K = w->k, N = w->n, mk = m * K;
    dsv3_lin_args a = {0};
    a.m = m;
    a.w = w;
    a.bias = bias;
    a.y = y;
    float *xf = NULL, *xq = NULL, *xs = NULL;
    int8_t *xi = NULL;
    uint8_t *xu = NULL;
    uint16_t *xb = NULL, *xh = NULL, *xl = NULL;
    void *q8buf = NULL;
    dsv3_act_q8 q8;
    dsv3_lin_kernel kern = t->gemv[id];
    int64_t cols = GEMV_COLS;
    const int onednn_shape = (w->fmt == DSV3_FMT_F32 && m >= ONEDNN_F32_MIN_M) ||
                             (w->fmt == DSV3_FMT_BF16 && m >= GEMM_MIN_M);
    /* Not from inside a parallel region (e.g. the MoE's expert-parallel tasks): the oneDNN wheel is
     * built without concurrent-execution support, so its primitives must not run on two threads. */
    if (onednn_shape && mode == DSV3_LINEAR_WEIGHT_ONLY && isa < 0 && id != DSV3_ISA_SCALAR &&
        !omp_in_parallel() && dsv3_onednn_available()) {
        const char *env = getenv("DSV3_LINEAR_ONEDNN");
        if (env && strcmp(env, "1") == 0) {
            if (x_bf16) {
                if (!(xf = dsv3_alloc((size_t)mk * sizeof(float))))
                    goto nomem;
                bf16_to_f32_par((const uint16_t *)x, mk, xf);
            }
            /* bias added here, not by oneDNN: y = (x W^T) + bias exactly as the other paths round it */
            st = dsv3_onednn_linear(x_bf16 ? xf : (const float *)x, m, w->data, w->fmt == DSV3_FMT_BF16, N, K, NULL,
                                    y, err);
            dsv3_free(xf);
            if (st == DSV3_OK && bias)
                for (int64_t r = 0; r < m; r++)
                    for (int64_t c = 0; c < N; c++)
                        y[r * N + c] += bias[c];
            return st;
        }
    }
    const int use_gemm = mode == DSV3_LINEAR_WEIGHT_ONLY && t->gemm[id] &&
                         m >= (w->fmt == DSV3_FMT_FP8_BLOCK ? GEMM_MIN_M_FP8 : GEMM_MIN_M);
    /* fast activation mode (w->act, act_q8.h): the format's fast kernel for this ISA, if it has one */
    const int fast = mode == DSV3_LINEAR_WEIGHT_ONLY && !use_gemm && w->act == DSV3_ACT_FAST && t->fast[id];
    if (x_bf16 && !(use_gemm)) {
        if (!(xf = dsv3_alloc((size_t)mk * sizeof(float))))
            goto nomem;
        bf16_to_f32_par((const uint16_t *)x, mk, xf);
    }
    const float *x32 = x_bf16 ? xf : (const float *)x;
    a.x = x32;
    if (use_gemm) {
        kern = t->gemm[id];
        cols = DSV3_GEMM_NR;
        if (x_bf16)
            a.xb = (const uint16_t *)x;
        else {
            if (!(xb = dsv3_alloc((size_t)mk * 2)))
                goto nomem;
            f32_to_bf16_par(x32, mk, xb);
            a.xb = xb;
        }
    } else if (fast) {
        kern = t->fast[id];
        if (dsv3_act_layout_is_q8(t->fast_x[id])) {
            if (!(q8buf = dsv3_act_q8_prepare(x32, m, K, t->fast_x[id], &q8)))
                goto nomem;
            a.q8 = &q8;
        }
    } else if (mode == DSV3_LINEAR_DYNAMIC && w->fmt == DSV3_FMT_FP8_BLOCK) {
        xq = dsv3_alloc((size_t)mk * sizeof(float));
        xs = dsv3_alloc((size_t)(m * ((K + 127) / 128)) * sizeof(float));
        if (!xq || !xs)
            goto nomem;
        act_quant_fp8(x32, m, K, xq, xs);
        a.x = xq;
        a.xs = xs;
        kern = t->dynamic[id];
    } else if (mode == DSV3_LINEAR_DYNAMIC) {
        xi = dsv3_alloc((size_t)mk);
        xu = dsv3_alloc((size_t)mk);
        xs = dsv3_alloc((size_t)m * sizeof(float));
        if (!xi || !xu || !xs)
            goto nomem;
        act_quant_int8(x32, m, K, xi, xu, xs);
        a.xq = xi;
        a.xu = xu;
        a.xs_tok = xs;
        kern = t->dynamic[id];
    }
    if (fast ? t->fast_x[id] == DSV3_X_BF16_HI
             : !use_gemm && t->gemv_x[id] != DSV3_X_F32 && !(mode == DSV3_LINEAR_DYNAMIC && w->fmt == DSV3_FMT_INT8)) {
        xh = dsv3_alloc((size_t)mk * 2);
        xl = fast ? NULL : dsv3_alloc((size_t)mk * 2); /* fast: hi only */
        if (!xh || (!fast && !xl))
            goto nomem;
        split_bf16x2(a.x, m, K, t->gemv_x[id], xh, xl);
        a.xh = xh;
        a.xl = xl;
    }
    const int64_t chunks = (N + cols - 1) / cols;
#pragma omp parallel for schedule(static) num_threads(dsv3_num_threads())
    for (int64_t c = 0; c < chunks; c++)
        kern(&a, c * cols, (c + 1) * cols < N ? (c + 1) * cols : N);
    dsv3_free(xf); dsv3_free(xq); dsv3_free(xs); dsv3_free(xi); dsv3_free(xu); dsv3_free(xb); dsv3_free(xh); dsv3_free(xl);
    dsv3_free(q8buf);
    return DSV3_OK;
nomem:
    dsv3_free(xf); dsv3_free(xq); dsv3_free(xs); dsv3_free(xi); dsv3_free(xu); dsv3_free(xb); dsv3_free(xh); dsv3_free(xl);
    dsv3_free(q8buf);
    return dsv3_fail(err, DSV3_E_NOMEM, "linear: out of memory for activations (m=%lld, k=%lld)", (long long)m,
                     (long long)K);
}

dsv3_status dsv3_linear(const float *x, int64_t m, const dsv3_weight *w, const float *bias, float *y, int isa,
                        dsv3_error *err)
{
    return dsv3_linear_ex(x, 0, m, w, bias, y, DSV3_LINEAR_WEIGHT_ONLY, isa, err);
}

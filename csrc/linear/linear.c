/* Linear dispatcher as a plan (dsv3_linear_plan.h): validates the weight, picks the kernel from the
 * format table for (format, ISA, M, mode), the activation layout it reads (act_layouts: bf16 -> f32,
 * dynamic activation quantisation, bf16 hi/lo split for the AVX-512 small-M dot kernels, bf16 copy
 * for the large-M path; in the fast mode, w->act, Q8 blocks (act_q8.c) or bf16 hi only, and from the
 * GEMM threshold the format's fast_gemm where it has one: AVX2 int4 on Q8 blocks) and the work split
 * (small M: 4 columns per work item; large M: 32), and takes the activation buffers from the caller's
 * arena. Preparation and the kernels run inside the caller's parallel region (dsv3_linear_prepare_team /
 * dsv3_linear_run_team), so several linears share one region; dsv3_linear_ex opens one region per call.
 * Every y element is computed by exactly one kernel call over the same aligned column group in a fixed
 * order, so results do not depend on the thread count.
 *
 * Packing decision: kernels read the checkpoint layout directly (rows of codes are contiguous and
 * streamable; scales are tiny), except int4 in the fast mode: a model loaded in the fast precision repacks
 * it once (dsv3_weight.packed, csrc/linear/int4p.h: 16 rows interleaved, so the decode kernels need no
 * horizontal reduction; measured faster at M = 1, see BENCHMARKS.md), and a packed weight's small-M calls run
 * the format's packed_fast kernels on work items of its 16-row groups; its large-M kernels decode tiles from
 * the packed copy. The large-M path decodes weight tiles into a per-thread buffer, its "packing" done on the
 * fly and amortised over M rows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "dsv3_dtypes.h"
#include "dsv3_linear_plan.h"
#include "dsv3_onednn.h"
#include "linear/act_q8.h"
#include "linear/lin_kernels.h"

/* Rows of x from which the large-M (bf16 dot) kernels are used when the ISA has them. */
#define GEMM_MIN_M 32
/* fp8_block from 24 rows: its small-M kernels decode e4m3 per pair of x rows, so at M = 24..31 they are
 * compute-bound; measured 2026-11-25 (2 threads, best of 5, 7168->2048 and 2048->7168): GEMM / small-M time
 * 0.83-0.88x at M=24, 0.72-0.76x at M=31, but 1.17-1.19x at M=16. bf16 weights gain nothing there (small-M won
 * on 7168->2048 up to M=31), so they keep 32. Same accuracy class as M >= 32 (x rounded to bf16). */
#define GEMM_MIN_M_FP8 24
/* AVX2: the f32-FMA GEMM on f32 x (gemm_avx2.c; same accuracy class as the small-M kernels), every format,
 * from 12 rows. Measured 2026-11-29 (2 threads, best of >= 3, expert 7168->2048 and 2048->7168, 6 formats):
 * GEMM / small-M time 0.31-0.90 at M=12, 0.11-0.88 at M=16, but up to 2.4x (int8) / 1.5x (nvfp4) at M=8 and
 * up to 3.8x at M=4. */
#define GEMM_MIN_M_AVX2 12
/* oneDNN rule (measured 2026-11-25 on this 2-core Zen 4, best of 12-15 alternating calls, 2 threads;
 * data in BENCHMARKS.md, "oneDNN routing"):
 *  - f32 weights: dsv3 has no f32 GEMM (its FMA gemv re-reads W per 4 rows of x); oneDNN's f32
 *    matmul took 0.79x (M=8) .. 0.37x (M=64) of our time on 7168->2048, 2048->7168 and 7168->576
 *    (0.9-1.3x at M=4). So f32 weights with M >= ONEDNN_F32_MIN_M go to oneDNN.
 *  - bf16 weights, M >= GEMM_MIN_M (where our path also rounds x to bf16, so accuracy is the same):
 *    our vdpbf16ps GEMM took 1.25-1.34x oneDNN's time at M=128 and 1.01-1.09x at M=512 on
 *    7168->2048, 2048->7168 and 1536->24576 (0.94-1.10x on 7168->576). So bf16 goes to oneDNN too.
 *    (M < 32 stays on our small-M kernels: x in bf16 hi+lo there, f32-level accuracy.)
 * Conditions: oneDNN loaded (dsv3.ops.linear loads it) with a matmul for this dtype on this CPU
 * (dsv3_onednn_supports: none for bf16 below AVX-512), the caller asked for the active path
 * (isa = -1, not scalar: an explicit isa always runs our kernels) and DSV3_LINEAR_ONEDNN=1: the route
 * is OPT-IN. oneDNN's results were bitwise identical with 1 and 2 threads on the large shapes above,
 * but not on small ones (a 13x32 -> 99 lm_head in the forward tests changed with the thread count),
 * and the design promises thread-count independent results; so by default our own kernels run. */
#define ONEDNN_F32_MIN_M 8
#define GEMV_COLS 4 /* output columns per work item in the small-M kernels */
/* The AVX2 fast fp8 kernel reads x as f32 (DSV3_X_F32_P32: no conversion in the loop) up to this K, bf16
 * above (DSV3_X_BF16_P32: half the bytes beside the weight stream); the same values, the same results. */
#ifndef FP8_F32X_MAX_K
#define FP8_F32X_MAX_K 4096
#endif

/* ---- activation preparation: team-callable pieces (orphaned worksharing, no barrier) ---- */

static void bf16_to_f32_team(const uint16_t *in, int64_t n, float *out)
{
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; i++)
        out[i] = dsv3_bf16_to_f32(in[i]);
}

static void f32_to_bf16_team(const float *in, int64_t n, uint16_t *out)
{
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; i++)
        out[i] = dsv3_f32_to_bf16(in[i]);
}

static void act_quant_fp8_team(const float *x, int64_t m, int64_t k, float *xq, float *xs)
{
    const int64_t ng = (k + 127) / 128;
#pragma omp for schedule(static) nowait
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

static void act_quant_int8_team(const float *x, int64_t m, int64_t k, int8_t *xq, uint8_t *xu, float *xs)
{
#pragma omp for schedule(static) nowait
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
 * (kernels read it from x in f32). Split over (row, 1024-column chunk) so that M = 1 uses every
 * thread; each element is written once, so the result does not depend on the split. */
static int64_t xpos(int layout, int64_t o) /* destination of column o within its block */
{
    if (layout == DSV3_X_BF16X2_P64)
        return ((o >> 3) & 1) * 32 + (o >> 4) * 8 + (o & 7);
    return (o >> 6) * 64 + (o & 1) * 32 + ((o & 63) >> 1); /* N128 */
}

static void split_bf16x2_team(const float *x, int64_t m, int64_t k, int layout, uint16_t *xh, uint16_t *xl)
{
    const int64_t bs = layout == DSV3_X_BF16X2_P64 ? 64 : layout == DSV3_X_BF16X2_N128 ? 128 : 1;
    const int64_t kb = k / bs * bs, nc = (k + 1023) / 1024;
    int16_t perm[128];
    for (int64_t o = 0; o < bs; o++)
        perm[o] = (int16_t)(bs == 1 ? 0 : xpos(layout, o));
#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < m * nc; t++) {
        const int64_t r = t / nc, j0 = t % nc * 1024, j1 = j0 + 1024 < k ? j0 + 1024 : k;
        const float *xr = x + r * k;
        uint16_t *hr = xh + r * k, *lr = xl ? xl + r * k : NULL; /* no lo: x rounded once (fast mode) */
        uint16_t h[128], l[128];
        int64_t j = j0;
        if (bs == 1) { /* natural order (bf16 weights): a straight, vectorisable conversion */
            for (; j < j1 && lr; j++) {
                hr[j] = dsv3_f32_to_bf16(xr[j]);
                lr[j] = dsv3_f32_to_bf16(xr[j] - dsv3_bf16_to_f32(hr[j]));
            }
            for (; j < j1; j++)
                hr[j] = dsv3_f32_to_bf16(xr[j]);
            continue;
        }
        for (; j + bs <= j1 && j + bs <= kb; j += bs) { /* full blocks (1024 is a multiple of bs) */
            for (int64_t o = 0; o < bs; o++) {
                h[o] = dsv3_f32_to_bf16(xr[j + o]);
                l[o] = dsv3_f32_to_bf16(xr[j + o] - dsv3_bf16_to_f32(h[o]));
            }
            for (int64_t o = 0; o < bs; o++) {
                hr[j + perm[o]] = h[o];
                if (lr)
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

/* ---- the activation layouts: ONE table (buffer sizes, carving, preparation) ---- */

static size_t round64(size_t b) { return (b + 63) & ~(size_t)63; }

/* Takes `bytes` (64-aligned) from *cur. */
static void *take(unsigned char **cur, size_t bytes)
{
    void *p = *cur;
    *cur += round64(bytes);
    return p;
}

typedef struct {
    /* bytes of the layout's buffers for m rows of k in xlayout (each piece rounded to 64) */
    size_t (*bytes)(int64_t m, int64_t k, int xlayout);
    /* point the plan's args at its buffers, carved from cur */
    void (*carve)(dsv3_lin_plan *p, unsigned char **cur);
    /* team-callable preparation from the f32 x in p->a.x (or the bf16 x for DSV3_ACT_BF16); no barrier */
    void (*prep)(const dsv3_lin_plan *p);
} act_layout;

static size_t none_bytes(int64_t m, int64_t k, int xl) { (void)m; (void)k; (void)xl; return 0; }
static void none_carve(dsv3_lin_plan *p, unsigned char **cur) { (void)p; (void)cur; }
static void none_prep(const dsv3_lin_plan *p) { (void)p; }

static size_t bf16_bytes(int64_t m, int64_t k, int xl) { (void)xl; return round64((size_t)(m * k) * 2); }
static void bf16_carve(dsv3_lin_plan *p, unsigned char **cur)
{
    if (p->x_bf16)
        p->a.xb = (const uint16_t *)p->xin; /* the GEMM reads the caller's bf16 directly */
    else
        p->a.xb = take(cur, (size_t)(p->a.m * p->a.w->k) * 2);
}
static void bf16_prep(const dsv3_lin_plan *p)
{
    if (!p->x_bf16)
        f32_to_bf16_team(p->a.x, p->a.m * p->a.w->k, (uint16_t *)(void *)p->a.xb);
}

static size_t bf16x2_bytes(int64_t m, int64_t k, int xl) { (void)xl; return 2 * round64((size_t)(m * k) * 2); }
static void bf16x2_carve(dsv3_lin_plan *p, unsigned char **cur)
{
    const size_t b = (size_t)(p->a.m * p->a.w->k) * 2;
    p->a.xh = take(cur, b);
    p->a.xl = take(cur, b);
}
static void bf16x2_prep(const dsv3_lin_plan *p)
{
    split_bf16x2_team(p->a.x, p->a.m, p->a.w->k, p->xlayout, (uint16_t *)(void *)p->a.xh,
                      (uint16_t *)(void *)p->a.xl);
}

static size_t fp8q_bytes(int64_t m, int64_t k, int xl)
{
    (void)xl;
    return round64((size_t)(m * k) * 4) + round64((size_t)(m * ((k + 127) / 128)) * 4);
}
static void fp8q_carve(dsv3_lin_plan *p, unsigned char **cur)
{
    const int64_t m = p->a.m, k = p->a.w->k;
    p->a.x = take(cur, (size_t)(m * k) * 4); /* the kernels read the dequantised codes as x */
    p->a.xs = take(cur, (size_t)(m * ((k + 127) / 128)) * 4);
}
static void fp8q_prep(const dsv3_lin_plan *p)
{
    const float *x32 = p->x_bf16 ? p->xf : (const float *)p->xin;
    act_quant_fp8_team(x32, p->a.m, p->a.w->k, (float *)(void *)p->a.x, (float *)(void *)p->a.xs);
}

static size_t int8q_bytes(int64_t m, int64_t k, int xl) { (void)xl; return 2 * round64((size_t)(m * k)) + round64((size_t)m * 4); }
static void int8q_carve(dsv3_lin_plan *p, unsigned char **cur)
{
    const int64_t m = p->a.m, k = p->a.w->k;
    p->a.xq = take(cur, (size_t)(m * k));
    p->a.xu = take(cur, (size_t)(m * k));
    p->a.xs_tok = take(cur, (size_t)m * 4);
}
static void int8q_prep(const dsv3_lin_plan *p)
{
    act_quant_int8_team(p->a.x, p->a.m, p->a.w->k, (int8_t *)(void *)p->a.xq, (uint8_t *)(void *)p->a.xu,
                        (float *)(void *)p->a.xs_tok);
}

static size_t bf16hi_bytes(int64_t m, int64_t k, int xl) { (void)xl; return round64((size_t)(m * k) * 2); }
static void bf16hi_carve(dsv3_lin_plan *p, unsigned char **cur)
{
    p->a.xh = take(cur, (size_t)(p->a.m * p->a.w->k) * 2);
    p->a.xl = NULL;
}
static void bf16hi_prep(const dsv3_lin_plan *p)
{
    split_bf16x2_team(p->a.x, p->a.m, p->a.w->k, p->xlayout, (uint16_t *)(void *)p->a.xh, NULL);
}

static size_t q8_bytes(int64_t m, int64_t k, int xl) { return round64(dsv3_act_q8_bytes(m, k, xl)); }
static void q8_carve(dsv3_lin_plan *p, unsigned char **cur)
{
    const int64_t m = p->a.m, k = p->a.w->k;
    dsv3_act_q8_describe(m, k, p->xlayout, take(cur, dsv3_act_q8_bytes(m, k, p->xlayout)), &p->q8);
    p->a.q8 = &p->q8;
}
static void q8_prep(const dsv3_lin_plan *p)
{
    dsv3_act_q8_fill_team(p->a.x, p->a.m, p->a.w->k, p->xlayout, p->isa, &p->q8);
}

/* DSV3_ACT_BF16P (fast fp8 on AVX2): bf16(x) * 2^56 with each full 32-block permuted (DSV3_X_BF16_P32) */
static size_t bf16p_bytes(int64_t m, int64_t k, int xl) { (void)xl; return round64((size_t)(m * k) * 2); }
static void bf16p_carve(dsv3_lin_plan *p, unsigned char **cur)
{
    p->a.xh = take(cur, (size_t)(p->a.m * p->a.w->k) * 2);
    p->a.xl = NULL;
}
/* Both hold bf16(x * 2^56) (a bf16 x converted in p->xf first), each full 32-block in the order of the AVX2 fast
 * fp8 decoder (decode_avx2.h, e4m3x32_raw: vector v holds the codes 4 j + v, j = 0..7): as f32, natural column c
 * at 8 (c & 3) + (c >> 2); as bf16 pairs (two 16-column loads, low / high words of each dword), at
 * 16 ((c & 3) >> 1) + 2 (c >> 2) + (c & 1). The K tail stays natural. */
static int p32_pos(int f32, int c) { return f32 ? 8 * (c & 3) + (c >> 2) : 16 * ((c & 3) >> 1) + 2 * (c >> 2) + (c & 1); }

static void p32_prep(const dsv3_lin_plan *p, uint16_t *o16, float *o32)
{
    const float *x = p->a.x;
    const int64_t k = p->a.w->k, kb = k / 32 * 32, nc = (k + 1023) / 1024;
    unsigned char pos[32];
    for (int c = 0; c < 32; c++)
        pos[c] = (unsigned char)p32_pos(o32 != NULL, c);
#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < p->a.m * nc; t++) { /* (row, 1024-column chunk): M = 1 uses every thread */
        const int64_t r = t / nc, j0 = t % nc * 1024, j1 = j0 + 1024 < k ? j0 + 1024 : k;
        const float *xr = x + r * k;
        uint16_t h[32];
        int64_t j = j0;
        for (; j + 32 <= j1 && j + 32 <= kb; j += 32) { /* full blocks (1024 is a multiple of 32) */
            for (int c = 0; c < 32; c++)
                h[c] = dsv3_f32_to_bf16(xr[j + c] * 0x1p56f);
            for (int c = 0; c < 32; c++) {
                if (o16)
                    o16[r * k + j + pos[c]] = h[c];
                else
                    o32[r * k + j + pos[c]] = dsv3_bf16_to_f32(h[c]);
            }
        }
        for (; j < j1; j++) { /* the K tail (natural) */
            const uint16_t v = dsv3_f32_to_bf16(xr[j] * 0x1p56f);
            if (o16)
                o16[r * k + j] = v;
            else
                o32[r * k + j] = dsv3_bf16_to_f32(v);
        }
    }
}
static void bf16p_prep(const dsv3_lin_plan *p) { p32_prep(p, (uint16_t *)(void *)p->a.xh, NULL); }

/* DSV3_ACT_F32P: the same values as f32 in the decoded vectors' order (DSV3_X_F32_P32) */
static size_t f32p_bytes(int64_t m, int64_t k, int xl) { (void)xl; return round64((size_t)(m * k) * 4); }
static void f32p_carve(dsv3_lin_plan *p, unsigned char **cur) { p->a.xp = take(cur, (size_t)(p->a.m * p->a.w->k) * 4); }
static void f32p_prep(const dsv3_lin_plan *p) { p32_prep(p, NULL, (float *)(void *)p->a.xp); }

static const act_layout act_layouts[DSV3_ACT_COUNT] = {
    [DSV3_ACT_F32] = {none_bytes, none_carve, none_prep},
    [DSV3_ACT_BF16] = {bf16_bytes, bf16_carve, bf16_prep},
    [DSV3_ACT_BF16X2] = {bf16x2_bytes, bf16x2_carve, bf16x2_prep},
    [DSV3_ACT_FP8Q] = {fp8q_bytes, fp8q_carve, fp8q_prep},
    [DSV3_ACT_INT8Q] = {int8q_bytes, int8q_carve, int8q_prep},
    [DSV3_ACT_BF16HI] = {bf16hi_bytes, bf16hi_carve, bf16hi_prep},
    [DSV3_ACT_Q8] = {q8_bytes, q8_carve, q8_prep},
    [DSV3_ACT_BF16P] = {bf16p_bytes, bf16p_carve, bf16p_prep},
    [DSV3_ACT_F32P] = {f32p_bytes, f32p_carve, f32p_prep},
};

/* Whether the layout needs x in f32 first (bf16 input converted into p->xf before its own preparation). */
static int needs_f32(int act, int x_bf16) { return x_bf16 && act != DSV3_ACT_BF16; }

/* ---- the plan ---- */

/* Rows of x from which the ISA's GEMM (if any) replaces the small-M kernels. */
static int64_t gemm_min_m(const dsv3_weight *w, dsv3_isa id)
{
    if (id == DSV3_ISA_AVX2)
        return GEMM_MIN_M_AVX2;
    return w->fmt == DSV3_FMT_FP8_BLOCK ? GEMM_MIN_M_FP8 : GEMM_MIN_M;
}

/* The choice for (format, ISA, M, mode): kernel, columns per item, activation layout. */
typedef struct {
    dsv3_lin_kernel kern;
    int64_t cols;
    int act, xlayout;
} choice;

static choice choose(const dsv3_weight *w, int64_t m, dsv3_linear_mode mode, dsv3_isa id)
{
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    choice c = {t->gemv[id], GEMV_COLS, DSV3_ACT_F32, DSV3_X_F32};
    if (mode == DSV3_LINEAR_WEIGHT_ONLY && t->gemm[id] && m >= gemm_min_m(w, id)) {
        c.cols = DSV3_GEMM_NR;
        if (w->act == DSV3_ACT_FAST && t->fast_gemm[id]) { /* fast mode: Q8 integer GEMM (act_q8.h) */
            c.kern = t->fast_gemm[id];
            c.act = DSV3_ACT_Q8;
            c.xlayout = DSV3_X_Q8;
            return c;
        }
        c.kern = t->gemm[id];
        c.act = id == DSV3_ISA_AVX2 ? DSV3_ACT_F32 : DSV3_ACT_BF16; /* AVX2's f32-FMA GEMM reads f32 x */
        return c;
    }
    if (w->packed) { /* packed layout (fast mode only, check_args): its own small-M kernels and work items */
        c.kern = t->packed_fast[id];
        c.cols = t->packed_rows;
        c.act = DSV3_ACT_Q8;
        c.xlayout = t->packed_x;
        return c;
    }
    if (mode == DSV3_LINEAR_WEIGHT_ONLY && w->act == DSV3_ACT_FAST && t->fast[id]) { /* fast mode (act_q8.h) */
        c.kern = t->fast[id];
        if (dsv3_act_layout_is_q8(t->fast_x[id])) {
            c.act = DSV3_ACT_Q8;
            c.xlayout = t->fast_x[id];
        } else if (t->fast_x[id] == DSV3_X_BF16_HI) {
            c.act = DSV3_ACT_BF16HI;
            c.xlayout = t->gemv_x[id]; /* hi in the order of the format's decoder */
        } else if (t->fast_x[id] == DSV3_X_BF16X2_N128) { /* hi only, in an order of the fast kernel's own */
            c.act = DSV3_ACT_BF16HI;
            c.xlayout = t->fast_x[id];
        } else if (t->fast_x[id] == DSV3_X_BF16_P32) { /* f32 where x stays in L1 / L2 (FP8_F32X_MAX_K) */
            c.act = w->k <= FP8_F32X_MAX_K ? DSV3_ACT_F32P : DSV3_ACT_BF16P;
            c.xlayout = w->k <= FP8_F32X_MAX_K ? DSV3_X_F32_P32 : DSV3_X_BF16_P32;
        }
        return c;
    }
    if (mode == DSV3_LINEAR_DYNAMIC) {
        c.kern = t->dynamic[id];
        if (w->fmt == DSV3_FMT_INT8) {
            c.act = DSV3_ACT_INT8Q;
            return c;
        }
        c.act = DSV3_ACT_FP8Q; /* fp8_block: act_quant, then the kernel's own x layout below */
    }
    if (t->gemv_x[id] != DSV3_X_F32) {
        c.xlayout = t->gemv_x[id];
        c.act = c.act == DSV3_ACT_FP8Q ? c.act : DSV3_ACT_BF16X2;
    }
    return c;
}

/* fp8 dynamic activations on a bf16x2 kernel: act_quant output, then split (two layouts in a row). */
static int fp8q_split(const dsv3_lin_plan *p) { return p->act == DSV3_ACT_FP8Q && p->xlayout != DSV3_X_F32; }

static size_t bytes_of(int act, int xlayout, int x_bf16, int64_t m, int64_t k)
{
    size_t b = act_layouts[act].bytes(m, k, xlayout);
    if (needs_f32(act, x_bf16))
        b += round64((size_t)(m * k) * 4);
    if (act == DSV3_ACT_FP8Q && xlayout != DSV3_X_F32)
        b += act_layouts[DSV3_ACT_BF16X2].bytes(m, k, xlayout);
    return b;
}

static dsv3_status check_args(const void *x, int64_t m, const dsv3_weight *w, const float *y, dsv3_linear_mode mode,
                              int isa, dsv3_isa *id, dsv3_error *err)
{
    dsv3_status st = dsv3_weight_validate(w, err);
    if (st != DSV3_OK)
        return st;
    if (m < 0 || (m > 0 && (!x || !y)))
        return dsv3_fail(err, DSV3_E_VALUE, "linear: bad activations (m = %lld)", (long long)m);
    if (mode != DSV3_LINEAR_WEIGHT_ONLY && mode != DSV3_LINEAR_DYNAMIC)
        return dsv3_fail(err, DSV3_E_VALUE, "linear: unknown mode %d", (int)mode);
    if ((st = dsv3_isa_resolve(isa, id, err)) != DSV3_OK)
        return st;
    const dsv3_format_traits *t = &dsv3_formats[w->fmt];
    if (w->packed && (!t->packed_fast[*id] || w->act != DSV3_ACT_FAST || mode != DSV3_LINEAR_WEIGHT_ONLY))
        return dsv3_fail(err, DSV3_E_VALUE, "linear: a packed %s weight runs in the fast precision and mode "
                         "'weight_only' only (the exact kernels read the stored layout)", t->name);
    if (mode == DSV3_LINEAR_DYNAMIC && !t->dynamic[*id])
        return dsv3_fail(err, DSV3_E_VALUE, "linear: mode 'dynamic' supports fp8_block and int8 weights, not %s",
                         t->name);
    /* every buffer is at most m * max(K, N) elements of <= 8 bytes: bound m before any product */
    if (m > 0 && m > INT64_MAX / 16 / (w->k > w->n ? w->k : w->n))
        return dsv3_fail(err, DSV3_E_VALUE, "linear: %lld rows of %lld x %lld overflow the address space",
                         (long long)m, (long long)w->k, (long long)w->n);
    return DSV3_OK;
}

size_t dsv3_linear_plan_bytes(const dsv3_weight *w, int64_t m, int x_bf16, dsv3_linear_mode mode, int isa)
{
    dsv3_isa id;
    dsv3_error e;
    if (m <= 0 || check_args(w, m, w, (const float *)w, mode, isa, &id, &e) != DSV3_OK)
        return 0;
    const choice c = choose(w, m, mode, id);
    return bytes_of(c.act, c.xlayout, x_bf16, m, w->k);
}

size_t dsv3_linear_plan_bytes_upto(const dsv3_weight *w, int64_t m)
{
    /* bytes grow with m within a layout; the layout changes only at the GEMM thresholds */
    const int64_t at[4] = {m, m < GEMM_MIN_M ? m : GEMM_MIN_M - 1, m < GEMM_MIN_M_FP8 ? m : GEMM_MIN_M_FP8 - 1,
                           m < GEMM_MIN_M_AVX2 ? m : GEMM_MIN_M_AVX2 - 1};
    size_t most = 0;
    for (int isa = 0; isa < DSV3_ISA_COUNT; isa++)
        for (int i = 0; i < 4; i++) {
            const size_t b = dsv3_linear_plan_bytes(w, at[i], 0, DSV3_LINEAR_WEIGHT_ONLY, isa);
            most = b > most ? b : most;
        }
    return most;
}

size_t dsv3_linear_bound_bytes(int64_t k, int64_t m)
{
    /* worst layout: f32 copy of a bf16 x (4 B) + act_quant codes (4 B) + hi/lo (4 B), + scales; 6 pieces */
    return (size_t)m * ((size_t)k * 12 + (size_t)((k + 127) / 128) * 4 + 4) + 6 * 64;
}

static size_t fallback_allocs;

size_t dsv3_linear_fallback_allocs(void) { return __atomic_load_n(&fallback_allocs, __ATOMIC_RELAXED); }

dsv3_status dsv3_linear_plan(dsv3_lin_plan *p, const void *x, int x_bf16, int64_t m, const dsv3_weight *w,
                             const float *bias, float *y, dsv3_linear_mode mode, int isa, dsv3_lin_arena *arena,
                             dsv3_error *err)
{
    memset(p, 0, sizeof *p);
    dsv3_isa id;
    dsv3_status st = check_args(x, m, w, y, mode, isa, &id, err);
    if (st != DSV3_OK)
        return st;
    const choice c = choose(w, m, mode, id);
    p->kern = c.kern;
    p->cols = c.cols;
    p->act = c.act;
    p->xlayout = c.xlayout;
    p->isa = (int)id;
    p->x_bf16 = x_bf16;
    p->xin = x;
    p->a.m = m;
    p->a.w = w;
    p->a.bias = bias;
    p->a.y = y;
    p->a.x = x_bf16 ? NULL : (const float *)x;
    if (m == 0)
        return DSV3_OK;
    const int64_t K = w->k;
    const size_t need = bytes_of(c.act, c.xlayout, x_bf16, m, K);
    unsigned char *cur = NULL;
    if (arena && arena->base && arena->size - arena->used >= need) {
        cur = arena->base + arena->used;
        arena->used += need;
    } else if (need) {
        __atomic_add_fetch(&fallback_allocs, 1, __ATOMIC_RELAXED);
        if (!(cur = p->owned = dsv3_alloc(need)))
            return dsv3_fail(err, DSV3_E_NOMEM, "linear: out of memory for activations (m=%lld, k=%lld)",
                             (long long)m, (long long)K);
    }
    if (needs_f32(c.act, x_bf16)) {
        p->xf = take(&cur, (size_t)(m * K) * 4);
        p->a.x = p->xf;
    }
    act_layouts[c.act].carve(p, &cur);
    if (fp8q_split(p))
        act_layouts[DSV3_ACT_BF16X2].carve(p, &cur);
    return DSV3_OK;
}

int dsv3_linear_plan_share_x(dsv3_lin_plan *p, const dsv3_lin_plan *src)
{
    if (p->xin != src->xin || p->x_bf16 != src->x_bf16 || p->a.m != src->a.m || p->a.w->k != src->a.w->k ||
        p->act != src->act || p->xlayout != src->xlayout || src->borrowed)
        return 0;
    const float *bias = p->a.bias;
    const dsv3_weight *w = p->a.w;
    float *y = p->a.y;
    dsv3_lin_kernel kern = p->kern;
    dsv3_linear_plan_release(p);
    p->a = src->a; /* every prepared buffer */
    p->a.w = w;
    p->a.bias = bias;
    p->a.y = y;
    p->kern = kern;
    p->xf = src->xf;
    p->borrowed = 1;
    return 1;
}

void dsv3_linear_prepare_team(dsv3_lin_plan *p, int n)
{
    int conv = 0, split = 0;
    for (int i = 0; i < n; i++) /* stage 1: bf16 x -> f32 where a layout needs it */
        if (!p[i].borrowed && p[i].a.m > 0 && p[i].xf) {
            bf16_to_f32_team((const uint16_t *)p[i].xin, p[i].a.m * p[i].a.w->k, p[i].xf);
            conv = 1;
        }
    if (conv) {
#pragma omp barrier
    }
    for (int i = 0; i < n; i++) /* stage 2: the layout's own preparation */
        if (!p[i].borrowed && p[i].a.m > 0) {
            act_layouts[p[i].act].prep(&p[i]);
            split |= fp8q_split(&p[i]);
        }
    if (split) { /* stage 3: fp8 act_quant codes split into the kernel's bf16 hi/lo layout */
#pragma omp barrier
        for (int i = 0; i < n; i++)
            if (!p[i].borrowed && p[i].a.m > 0 && fp8q_split(&p[i]))
                act_layouts[DSV3_ACT_BF16X2].prep(&p[i]);
    }
#pragma omp barrier
}

int64_t dsv3_linear_plan_items(const dsv3_lin_plan *p)
{
    return p->a.m > 0 ? (p->a.w->n + p->cols - 1) / p->cols : 0;
}

void dsv3_linear_run_items(const dsv3_lin_plan *p, int64_t i0, int64_t i1)
{
    const int64_t N = p->a.w->n, cols = p->cols;
    for (int64_t c = i0; c < i1; c++) /* one kernel call per item: the same calls whatever the split */
        p->kern(&p->a, c * cols, (c + 1) * cols < N ? (c + 1) * cols : N);
}

/* Relative cost of one work item of plan p, for the split of several plans over a team (a heuristic: it
 * moves work between threads, never changes a result). An item is cols x K weights, read once; the
 * small-M kernels spend more time per weight byte as rows of x are added (AVX-512 bf16, K = 1024, one
 * thread, weights from memory, 2026-11-30: M = 1, 2, 4, 8 at about 1 : 1.1 : 1.25 : 1.7), so a decode
 * MoE's shared expert (M = all tokens) next to routed experts of 1-3 rows weighs more than its bytes. */
static int64_t item_cost(const dsv3_lin_plan *p)
{
    const int64_t m = p->a.m < 16 ? p->a.m : 16;
    return (8 + m) * ((p->cols * p->a.w->k + 63) / 64);
}

void dsv3_linear_run_team(const dsv3_lin_plan *p, int n, int64_t *work)
{
    int64_t total = 0;
    for (int i = 0; i < n; i++)
        total += dsv3_linear_plan_items(&p[i]) * item_cost(&p[i]);
    const int64_t T = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t b = total * me / T, e = total * (me + 1) / T; /* this thread's cost range of the concatenation */
    int64_t base = 0, ran = 0;
    for (int i = 0; i < n && base < e; i++) {
        const int64_t ni = dsv3_linear_plan_items(&p[i]), c = item_cost(&p[i]);
        /* item j (cost range [base + j c, base + (j + 1) c)) belongs to the thread whose range holds its start */
        const int64_t j0 = b > base ? (b - base + c - 1) / c : 0, j1 = (e - base + c - 1) / c;
        const int64_t i0 = j0 < ni ? j0 : ni, i1 = j1 < ni ? j1 : ni;
        if (i0 < i1) {
            dsv3_linear_run_items(&p[i], i0, i1);
            ran += i1 - i0;
        }
        base += ni * c;
    }
    if (work)
        work[me] += ran;
}

void dsv3_linear_plan_release(dsv3_lin_plan *p)
{
    dsv3_free(p->owned);
    p->owned = NULL;
}

static dsv3_lin_arena *t_arena; /* the calling thread's bound arena */
#pragma omp threadprivate(t_arena)

dsv3_lin_arena *dsv3_linear_bind_arena(dsv3_lin_arena *arena)
{
    dsv3_lin_arena *prev = t_arena;
    t_arena = arena;
    return prev;
}

/* The oneDNN route (opt-in, see ONEDNN_F32_MIN_M): 1 when it ran (status in *st). */
static int onednn_route(const void *x, int x_bf16, int64_t m, const dsv3_weight *w, const float *bias, float *y,
                        dsv3_linear_mode mode, int isa, dsv3_isa id, dsv3_status *st, dsv3_error *err)
{
    const int onednn_shape = (w->fmt == DSV3_FMT_F32 && m >= ONEDNN_F32_MIN_M) ||
                             (w->fmt == DSV3_FMT_BF16 && m >= GEMM_MIN_M);
    /* Not from inside a parallel region (e.g. the MoE's expert-parallel tasks): the oneDNN wheel is
     * built without concurrent-execution support, so its primitives must not run on two threads. */
    if (!onednn_shape || mode != DSV3_LINEAR_WEIGHT_ONLY || isa >= 0 || id == DSV3_ISA_SCALAR || omp_in_parallel() ||
        !dsv3_onednn_supports(w->fmt == DSV3_FMT_BF16))
        return 0;
    const char *env = getenv("DSV3_LINEAR_ONEDNN");
    if (!env || strcmp(env, "1") != 0)
        return 0;
    const int64_t mk = m * w->k, N = w->n;
    float *xf = NULL;
    if (x_bf16) {
        if (!(xf = dsv3_alloc((size_t)mk * sizeof(float)))) {
            *st = dsv3_fail(err, DSV3_E_NOMEM, "linear: out of memory for activations (m=%lld, k=%lld)",
                            (long long)m, (long long)w->k);
            return 1;
        }
        for (int64_t i = 0; i < mk; i++)
            xf[i] = dsv3_bf16_to_f32(((const uint16_t *)x)[i]);
    }
    /* bias added here, not by oneDNN: y = (x W^T) + bias exactly as the other paths round it */
    *st = dsv3_onednn_linear(x_bf16 ? xf : (const float *)x, m, w->data, w->fmt == DSV3_FMT_BF16, N, w->k, NULL, y,
                             err);
    dsv3_free(xf);
    if (*st == DSV3_OK && bias)
        for (int64_t r = 0; r < m; r++)
            for (int64_t c = 0; c < N; c++)
                y[r * N + c] += bias[c];
    return 1;
}

dsv3_status dsv3_linear_ex(const void *x, int x_bf16, int64_t m, const dsv3_weight *w, const float *bias,
                           float *y, dsv3_linear_mode mode, int isa, dsv3_error *err)
{
    dsv3_isa id;
    dsv3_status st = check_args(x, m, w, y, mode, isa, &id, err);
    if (st != DSV3_OK || m == 0)
        return st;
    if (onednn_route(x, x_bf16, m, w, bias, y, mode, isa, id, &st, err))
        return st;
    dsv3_lin_arena *arena = t_arena;
    const size_t mark = arena ? arena->used : 0;
    dsv3_lin_plan p;
    st = dsv3_linear_plan(&p, x, x_bf16, m, w, bias, y, mode, isa, arena, err);
    if (st != DSV3_OK)
        return st;
    const int64_t items = dsv3_linear_plan_items(&p);
    const int nt = dsv3_num_threads();
#pragma omp parallel num_threads(items < nt ? (int)items : nt)
    {
        dsv3_linear_prepare_team(&p, 1);
        dsv3_linear_run_team(&p, 1, NULL);
    }
    dsv3_linear_plan_release(&p);
    if (arena)
        arena->used = mark;
    return DSV3_OK;
}

dsv3_status dsv3_linear(const float *x, int64_t m, const dsv3_weight *w, const float *bias, float *y, int isa,
                        dsv3_error *err)
{
    return dsv3_linear_ex(x, 0, m, w, bias, y, DSV3_LINEAR_WEIGHT_ONLY, isa, err);
}

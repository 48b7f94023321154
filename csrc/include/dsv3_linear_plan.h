/* The linear layer as a plan (csrc/linear/linear.c): one call of dsv3_linear_plan maps
 * (format, ISA, M, mode) to the kernel, the activation layout the kernel reads and the work split
 * (columns per work item), and takes the prepared-activation buffers from a caller's arena (no
 * allocation when the arena is large enough). Then, inside ONE parallel region, any number of plans
 * can be prepared and run together:
 *
 *     dsv3_linear_plan(&p[i], ...)           serial, before the region: validate, choose, carve scratch
 *     #pragma omp parallel
 *     {
 *         dsv3_linear_prepare_team(p, n);    every thread: activation preparation, ends with a barrier
 *         dsv3_linear_run_team(p, n, work);  every thread: its share of all plans' output columns
 *     }
 *
 * The split is a fixed partition of the concatenated work items (column groups) of the n plans; every
 * output element is computed by one kernel call over the same aligned column group whatever the
 * thread count, so results are bitwise independent of the number of threads. The functions also work
 * outside a parallel region (a team of one). dsv3_linear_ex is this sequence for one plan. */
#ifndef DSV3_LINEAR_PLAN_H
#define DSV3_LINEAR_PLAN_H

#include "dsv3_quant.h"

/* Scratch the plans take their activation buffers from: a bump allocator over the caller's memory
 * (64-byte aligned pieces). A caller marks `used` before planning and restores it afterwards. */
typedef struct {
    unsigned char *base;
    size_t size, used;
} dsv3_lin_arena;

/* How the activations are prepared for a kernel: ONE table in linear.c (act_layouts) describes each
 * layout's buffer sizes, carving and preparation; a new activation layout is one enum value + one row. */
typedef enum {
    DSV3_ACT_F32 = 0,    /* x in f32 as given (bf16 input: converted) */
    DSV3_ACT_BF16,       /* x in bf16 (large-M GEMM): a->xb */
    DSV3_ACT_BF16X2,     /* x = hi + lo in bf16, in the kernel's dsv3_xlayout: a->xh, a->xl (+ f32 x for the K tail) */
    DSV3_ACT_FP8Q,       /* DeepSeek act_quant (e4m3 codes as f32 + per-128 scales): a->x, a->xs */
    DSV3_ACT_INT8Q,      /* symmetric int8 per token: a->xq, a->xu, a->xs_tok */
    DSV3_ACT_BF16HI,     /* fast mode: x rounded once to bf16 (no lo part), in the gemv's xlayout: a->xh */
    DSV3_ACT_Q8,         /* fast mode: Q8 blocks of 32 (act_q8.h) in the kernel's DSV3_X_Q8* layout: a->q8 */
    DSV3_ACT_BF16P,      /* fast mode: bf16(x) times 2^56, full 32-blocks permuted (DSV3_X_BF16_P32): a->xh */
    DSV3_ACT_F32P,       /* the same values as f32 (DSV3_X_F32_P32): a->xp */
    DSV3_ACT_COUNT
} dsv3_act_layout;

typedef struct {
    dsv3_lin_args a;     /* the kernel's arguments, activations prepared by dsv3_linear_prepare_team */
    dsv3_lin_kernel kern;
    int64_t cols;        /* output columns per work item (the kernel's tile; items start at multiples) */
    int act;             /* dsv3_act_layout */
    int xlayout;         /* dsv3_xlayout of DSV3_ACT_BF16X2 / DSV3_ACT_BF16HI / DSV3_ACT_Q8 */
    dsv3_act_q8 q8;      /* DSV3_ACT_Q8: the prepared blocks (a.q8 points here) */
    int isa;             /* dsv3_isa of the kernel (the Q8 quantiser runs the same ISA's code) */
    int x_bf16;          /* the caller's x is bf16 bits (else f32) */
    const void *xin;     /* the caller's activations [m, k] */
    float *xf;           /* f32 copy of a bf16 x (NULL when x is f32 or the layout reads bf16 directly) */
    int borrowed;        /* activations prepared by another plan (dsv3_linear_plan_share_x): skip them */
    void *owned;         /* buffers allocated because the arena was too small (freed by release) */
} dsv3_lin_plan;

/* Plan y[m, n] = x W^T (+ bias) (see dsv3_linear_ex for x, mode, isa). Validates everything; the
 * activation buffers come from `arena` (NULL or too small: allocated, then freed by
 * dsv3_linear_plan_release). m == 0 gives a plan with no work. */
dsv3_status dsv3_linear_plan(dsv3_lin_plan *p, const void *x, int x_bf16, int64_t m, const dsv3_weight *w,
                             const float *bias, float *y, dsv3_linear_mode mode, int isa, dsv3_lin_arena *arena,
                             dsv3_error *err);
/* Exact bytes of arena a plan of these arguments takes (0 for none; alignment included). */
size_t dsv3_linear_plan_bytes(const dsv3_weight *w, int64_t m, int x_bf16, dsv3_linear_mode mode, int isa);
/* The most dsv3_linear_plan_bytes takes for this weight over 1..m rows, f32 x, weight-only mode and
 * every ISA (what a workspace reserves so that plans of up to m rows never allocate); 0 if w is invalid. */
size_t dsv3_linear_plan_bytes_upto(const dsv3_weight *w, int64_t m);
/* An upper bound of dsv3_linear_plan_bytes for any weight with K = k, m rows, any mode/ISA/x dtype. */
size_t dsv3_linear_bound_bytes(int64_t k, int64_t m);
/* Make p read src's prepared activations (same x, rows, K and layout): returns 1 and then p needs no
 * preparation of its own, or 0 (nothing changed). Call before preparing; src must outlive p's run. */
int dsv3_linear_plan_share_x(dsv3_lin_plan *p, const dsv3_lin_plan *src);
/* Called by EVERY thread of the current team (or outside a region): prepares the activations of the
 * n plans (work split over the team) and ends with a barrier. */
void dsv3_linear_prepare_team(dsv3_lin_plan *p, int n);
/* Called by every thread of the team: runs this thread's share of the n plans' work items (a fixed
 * contiguous range of their concatenation, split by an estimated cost per item: linear.c item_cost).
 * No barrier at the end. work (optional): work[thread] is increased by the number of items this thread
 * ran (a debug counter for tests). */
void dsv3_linear_run_team(const dsv3_lin_plan *p, int n, int64_t *work);
/* Number of work items of a plan (column groups of p->cols). */
int64_t dsv3_linear_plan_items(const dsv3_lin_plan *p);
/* Runs work items [i0, i1) of one plan (output columns [i0 * cols, min(i1 * cols, n))). */
void dsv3_linear_run_items(const dsv3_lin_plan *p, int64_t i0, int64_t i1);
/* Frees what the plan allocated (not arena memory). */
void dsv3_linear_plan_release(dsv3_lin_plan *p);

/* Plans (of any thread) that allocated their activation buffers because no arena had room (a debug
 * counter: tests check that a decode step adds none). */
size_t dsv3_linear_fallback_allocs(void);

/* The arena dsv3_linear / dsv3_linear_ex use on the calling thread when called outside a parallel
 * region (e.g. the model binds its workspace for the forward so attention's linears allocate nothing);
 * NULL unbinds. Returns the previous binding. */
dsv3_lin_arena *dsv3_linear_bind_arena(dsv3_lin_arena *arena);

#endif

/* Shared inside csrc/moe/: the unit of work of the MoE block and the scratch's plan layout. */
#ifndef DSV3_MOE_INTERNAL_H
#define DSV3_MOE_INTERNAL_H

#include "dsv3_moe.h"

/* One SwiGLU MLP over a block of rows, with its own gate|up scratch [m, 2*I]. */
typedef struct {
    const dsv3_mlp_weights *w;
    const float *x;
    int64_t m;
    float *y;
    float *gate_up;
} dsv3_mlp_task;

/* int64 entries of the expert plan for n = s*k choices of s tokens over E experts:
 * offset [E + 1], fill [E], slot [n], by_token [n], seen [s] (experts.c). */
static inline int64_t dsv3_moe_plan_len(int64_t E, int64_t s, int64_t k) { return 2 * E + 1 + 2 * s * k + s; }

#endif

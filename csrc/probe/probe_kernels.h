/* Per-ISA kernels of the machine probes (see dsv3_probe.h). Internal to csrc/probe. */
#ifndef DSV3_PROBE_KERNELS_H
#define DSV3_PROBE_KERNELS_H

#include "dsv3_probe.h"

typedef struct {
    /* wrapping sum of n uint64 words (p 64-byte aligned) */
    uint64_t (*read_sum)(const uint64_t *p, size_t n);
    /* iters iterations of DSV3_PROBE_CHAINS chains; return the sum over chains of lane 0's
     * final value (other lanes are folded in so nothing is dead); NULL if the ISA lacks it */
    double (*peak[DSV3_PEAK_COUNT])(int64_t iters);
    /* flops (or integer ops) per iteration of one thread, per kind */
    double ops_per_iter[DSV3_PEAK_COUNT];
} dsv3_probe_kernels;

extern const dsv3_probe_kernels dsv3_probe_scalar;
extern const dsv3_probe_kernels dsv3_probe_avx2;
extern const dsv3_probe_kernels dsv3_probe_avx512;

#endif

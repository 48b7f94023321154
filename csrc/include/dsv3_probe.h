/* Machine probes: the roofline every benchmark divides by.
 *  - read bandwidth: all (or some) threads stream-read a buffer much larger than the last-level
 *    cache with the widest loads of the chosen ISA, summing into a checksum so the loads stay;
 *  - compute peaks: register-resident loops of DSV3_PROBE_CHAINS independent accumulator chains
 *    of one instruction (f32 FMA, bf16 pair dot, u8 x s8 quad dot).
 * Timings are the best of `repeats`; results carry a checksum that tests predict exactly. */
#ifndef DSV3_PROBE_H
#define DSV3_PROBE_H

#include "dsv3.h"

/* Independent accumulators per thread in the peak loops (hides the FMA/dot latency). */
#define DSV3_PROBE_CHAINS 12

typedef enum {
    DSV3_PEAK_F32_FMA = 0,  /* vfmadd231ps: 2 flops per lane                        */
    DSV3_PEAK_BF16_DOT = 1, /* vdpbf16ps: 2 bf16 pairs per f32 lane -> 4 flops/lane  */
    DSV3_PEAK_INT8_DOT = 2, /* vpdpbusd: 4 u8*s8 products per i32 lane -> 8 ops/lane */
    DSV3_PEAK_COUNT = 3
} dsv3_peak_kind;

typedef struct {
    double rate;        /* GB/s (bandwidth) or GFLOP/s / GOPS (peaks), best repetition  */
    double seconds;     /* wall time of the best repetition                             */
    double work;        /* bytes read or flops done in one repetition                   */
    double checksum;       /* peaks: sum over the chains of one lane's final value      */
    uint64_t checksum_u64; /* bandwidth: wrapping sum of the buffer's uint64 words      */
    int threads;        /* threads that ran                                              */
    int isa;            /* dsv3_isa that ran                                             */
} dsv3_probe_result;

/* Buffer word i (uint64) holds i * DSV3_PROBE_FILL (mod 2^64). */
#define DSV3_PROBE_FILL UINT64_C(0x9E3779B97F4A7C15)

/* Stream-read `bytes` (rounded down to 8-byte words; >= 64 KiB) with `threads` threads
 * (0: dsv3_num_threads()), best of `repeats` (>= 1). isa: -1 for the active path. */
dsv3_status dsv3_probe_read_bw(size_t bytes, int repeats, int threads, int isa, dsv3_probe_result *out,
                               dsv3_error *err);

/* Peak of one instruction kind: every thread runs `iters` (>= 1) iterations of
 * DSV3_PROBE_CHAINS independent chains; best of `repeats`. bf16_dot needs the avx512 or the
 * scalar path (AVX2 has no bf16 dot instruction: DSV3_E_UNSUPPORTED). */
dsv3_status dsv3_probe_peak(dsv3_peak_kind kind, int64_t iters, int repeats, int threads, int isa,
                            dsv3_probe_result *out, dsv3_error *err);

/* Inputs of the peak loops (tests predict checksums from them):
 * f32:  x_j <- x_j * A + B, x_j(0) = j * X0;             A, B, X0 below
 * bf16: x_j <- x_j + a*b + a*b with a = b = BF16 (exact), x_j(0) = j
 * int8: x_j <- x_j + 4 * U * S (wrapping int32), x_j(0) = j */
#define DSV3_PROBE_F32_A 0.999f
#define DSV3_PROBE_F32_B 0.001f
#define DSV3_PROBE_F32_X0 0.01f
#define DSV3_PROBE_BF16 0.0625f
#define DSV3_PROBE_U8 3
#define DSV3_PROBE_S8 (-2)

#endif

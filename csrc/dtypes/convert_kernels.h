/* Per-ISA conversion kernels behind dsv3_convert (internal to csrc/dtypes/).
 * Each table holds one kernel per supported dtype pair; NULL entries fall back to the scalar table.
 * A kernel converts n elements with no alignment requirement; the dispatcher splits large arrays
 * across threads in chunks that are multiples of 64 elements. */
#ifndef DSV3_CONVERT_KERNELS_H
#define DSV3_CONVERT_KERNELS_H

#include <stddef.h>

#include "dsv3_dtypes.h"

typedef void (*dsv3_cvt_fn)(void *dst, const void *src, size_t n);

typedef struct {
    dsv3_cvt_fn to_f32[DSV3_DTYPE_COUNT];   /* src dtype -> float32 */
    dsv3_cvt_fn from_f32[DSV3_DTYPE_COUNT]; /* float32 -> dst dtype */
    dsv3_cvt_fn e4m3_to_bf16;
} dsv3_convert_kernels;

/* A table of an ISA file's kernels, each a static function of the standard name below. */
#define DSV3_CONVERT_TABLE(name)                                                                            \
    const dsv3_convert_kernels name = {                                                                     \
        .to_f32 = {[DSV3_DTYPE_BF16] = bf16_to_f32, [DSV3_DTYPE_E4M3] = e4m3_to_f32,                         \
                   [DSV3_DTYPE_E5M2] = e5m2_to_f32, [DSV3_DTYPE_UE8M0] = ue8m0_to_f32,                       \
                   [DSV3_DTYPE_E2M1] = e2m1_to_f32},                                                        \
        .from_f32 = {[DSV3_DTYPE_BF16] = f32_to_bf16, [DSV3_DTYPE_E4M3] = f32_to_e4m3,                       \
                     [DSV3_DTYPE_E5M2] = f32_to_e5m2, [DSV3_DTYPE_UE8M0] = f32_to_ue8m0,                     \
                     [DSV3_DTYPE_E2M1] = f32_to_e2m1},                                                      \
        .e4m3_to_bf16 = e4m3_to_bf16,                                                                       \
    }

extern const dsv3_convert_kernels dsv3_convert_scalar;
extern const dsv3_convert_kernels dsv3_convert_avx2;
extern const dsv3_convert_kernels dsv3_convert_avx512;

#endif

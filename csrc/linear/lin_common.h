/* Per-format helpers shared by the SIMD kernels (row addressing, K group, group scale). The
 * format is a compile-time constant at every call site (always_inline), so the switches fold away. */
#ifndef DSV3_LIN_COMMON_H
#define DSV3_LIN_COMMON_H

#include "dsv3_dtypes.h"
#include "linear/int4p.h"
#include "linear/lin_kernels.h"

#define AI static inline __attribute__((always_inline))

/* Exact e4m3fn -> f32 (subnormals included): move exponent/mantissa under the f32 fields and
 * multiply by 2^(127-7). The NaN codes (S.1111.111) would give 480: they take the reference decoder,
 * so every ISA reads them as NaN (the quantisers never write them, but a checkpoint may hold them). */
AI float e4m3_fast(uint8_t c)
{
    if ((c & 0x7fu) == 0x7fu)
        return dsv3_e4m3_to_f32(c);
    return dsv3_bits_f32(((uint32_t)(c & 0x7fu) << 20) | ((uint32_t)(c & 0x80u) << 24)) * 0x1p120f;
}

AI const uint8_t *row_ptr(dsv3_format f, const dsv3_weight *w, int64_t n)
{
    const int bits = f == DSV3_FMT_F32 ? 32 : f == DSV3_FMT_BF16 ? 16 : (f == DSV3_FMT_NVFP4 || f == DSV3_FMT_INT4) ? 4 : 8;
    return (const uint8_t *)w->data + n * w->k * bits / 8;
}

AI int64_t kgroup(dsv3_format f, const dsv3_weight *w)
{
    return f == DSV3_FMT_FP8_BLOCK ? 128 : f == DSV3_FMT_NVFP4 ? 16 : f == DSV3_FMT_INT4 ? w->group : w->k;
}

AI float gscale(dsv3_format f, const dsv3_weight *w, int64_t n, int64_t g, int64_t ng)
{
    switch (f) {
    case DSV3_FMT_FP8_BLOCK: return ((const float *)w->scale)[(n / 128) * ng + g];
    case DSV3_FMT_NVFP4: return e4m3_fast(((const uint8_t *)w->scale)[n * ng + g]) * w->scale2;
    case DSV3_FMT_INT8: return ((const float *)w->scale)[n];
    case DSV3_FMT_INT4: return w->packed ? int4p_scale(w, n, g) : ((const float *)w->scale)[n * ng + g];
    default: return 1.0f;
    }
}

#endif

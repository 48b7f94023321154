/* Scalar conversion kernels: loops over the reference functions of dsv3_dtypes.h. Every SIMD
 * kernel is tested bit for bit against these (and these against ml_dtypes). */
#include "convert_kernels.h"

#define DECODE(name, T, fn)                                      \
    static void name(void *dst, const void *src, size_t n)       \
    {                                                            \
        const T *s = (const T *)src;                             \
        float *d = (float *)dst;                                 \
        for (size_t i = 0; i < n; i++)                           \
            d[i] = fn(s[i]);                                     \
    }
#define ENCODE(name, T, fn)                                      \
    static void name(void *dst, const void *src, size_t n)       \
    {                                                            \
        const float *s = (const float *)src;                     \
        T *d = (T *)dst;                                         \
        for (size_t i = 0; i < n; i++)                           \
            d[i] = fn(s[i]);                                     \
    }

static uint8_t e2m1_code_of(float f) { return dsv3_f32_to_e2m1(f); }

DECODE(bf16_to_f32, uint16_t, dsv3_bf16_to_f32)
DECODE(e4m3_to_f32, uint8_t, dsv3_e4m3_to_f32)
DECODE(e5m2_to_f32, uint8_t, dsv3_e5m2_to_f32)
DECODE(ue8m0_to_f32, uint8_t, dsv3_ue8m0_to_f32)
DECODE(e2m1_to_f32, uint8_t, dsv3_e2m1_to_f32) /* low nibble of each byte */
ENCODE(f32_to_bf16, uint16_t, dsv3_f32_to_bf16)
ENCODE(f32_to_e4m3, uint8_t, dsv3_f32_to_e4m3)
ENCODE(f32_to_e5m2, uint8_t, dsv3_f32_to_e5m2)
ENCODE(f32_to_ue8m0, uint8_t, dsv3_f32_to_ue8m0)
ENCODE(f32_to_e2m1, uint8_t, e2m1_code_of)

/* e4m3 values are exact in bf16, so this equals f32_to_bf16(e4m3_to_f32(x)) with no rounding. */
static void e4m3_to_bf16(void *dst, const void *src, size_t n)
{
    const uint8_t *s = (const uint8_t *)src;
    uint16_t *d = (uint16_t *)dst;
    for (size_t i = 0; i < n; i++)
        d[i] = (uint16_t)(dsv3_f32_bits(dsv3_e4m3_to_f32(s[i])) >> 16);
}

DSV3_CONVERT_TABLE(dsv3_convert_scalar);

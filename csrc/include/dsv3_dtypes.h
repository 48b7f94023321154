/* Scalar conversions between f32 and the storage dtypes of DeepSeek checkpoints.
 *
 * These inline functions are the reference ("scalar twin") every vectorised conversion and every
 * quantised kernel is tested against; they reproduce ml_dtypes bit for bit:
 *  - bf16, e4m3fn, e5m2, e2m1: round to nearest, ties to even;
 *  - e4m3fn has no infinity: overflow and +-inf become NaN (S.1111.111); e5m2 overflows to +-inf;
 *  - e2m1 (fp4) saturates to +-6;
 *  - ue8m0 (ml_dtypes float8_e8m0fnu) is an unsigned power of two 2^(code-127), 0xff is NaN.
 * Array conversions (all ISAs) are declared at the bottom and live in csrc/dtypes/.
 */
#ifndef DSV3_DTYPES_H
#define DSV3_DTYPES_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dsv3.h"

static inline uint32_t dsv3_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float dsv3_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- bfloat16 ---- */
static inline float dsv3_bf16_to_f32(uint16_t h) { return dsv3_bits_f32((uint32_t)h << 16); }

static inline uint16_t dsv3_f32_to_bf16(float f)
{
    uint32_t u = dsv3_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: ml_dtypes drops the payload, keeps the sign */
        return (uint16_t)((u >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); /* RNE; f32 subnormals kept */
}

/* ---- float8 e4m3fn: bias 7, max 448, no inf, 0x7f/0xff NaN, subnormal unit 2^-9 ---- */
static inline float dsv3_e4m3_to_f32(uint8_t b)
{
    const uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    const uint32_t e = (b >> 3) & 15u, m = b & 7u;
    if (e == 15u && m == 7u)
        return dsv3_bits_f32(sign | 0x7fc00000u);
    if (e == 0u) /* subnormal: m * 2^-9, exact in f32 */
        return dsv3_bits_f32(sign | dsv3_f32_bits((float)m * 0.001953125f));
    return dsv3_bits_f32(sign | ((e + 120u) << 23) | (m << 20));
}

static inline uint8_t dsv3_f32_to_e4m3(float f)
{
    const uint32_t u = dsv3_f32_bits(f), a = u & 0x7fffffffu;
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    if (a >= 0x7f800000u) /* inf or NaN -> NaN */
        return sign | 0x7fu;
    if (a < 0x3c800000u) { /* below 2^-6: subnormal grid of 2^-9 (may round up to 2^-6 = code 8) */
        const float scaled = dsv3_bits_f32(a) * 512.0f;                 /* exact */
        uint32_t q = (uint32_t)scaled, rem_bits;                        /* floor, q <= 7 */
        const float rem = scaled - (float)q;                            /* exact */
        rem_bits = (rem > 0.5f) || (rem == 0.5f && (q & 1u));
        return sign | (uint8_t)(q + rem_bits);
    }
    const uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20; /* f32 exp | 3-bit mantissa, RNE */
    const uint32_t code = r - (120u << 3);
    return code > 0x7eu ? (uint8_t)(sign | 0x7fu) : (uint8_t)(sign | code);
}

/* ---- float8 e5m2: bias 15, has inf, subnormal unit 2^-16 ---- */
static inline float dsv3_e5m2_to_f32(uint8_t b)
{
    const uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    const uint32_t e = (b >> 2) & 31u, m = b & 3u;
    if (e == 31u)
        return dsv3_bits_f32(sign | (m ? 0x7fc00000u : 0x7f800000u));
    if (e == 0u)
        return dsv3_bits_f32(sign | dsv3_f32_bits((float)m * 1.52587890625e-05f));
    return dsv3_bits_f32(sign | ((e + 112u) << 23) | (m << 21));
}

static inline uint8_t dsv3_f32_to_e5m2(float f)
{
    const uint32_t u = dsv3_f32_bits(f), a = u & 0x7fffffffu;
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    if (a > 0x7f800000u)
        return sign | 0x7eu;
    if (a == 0x7f800000u)
        return sign | 0x7cu;
    if (a < 0x38800000u) { /* below 2^-14 */
        const float scaled = dsv3_bits_f32(a) * 65536.0f;
        uint32_t q = (uint32_t)scaled;
        const float rem = scaled - (float)q;
        q += (rem > 0.5f) || (rem == 0.5f && (q & 1u));
        return sign | (uint8_t)q;
    }
    const uint32_t r = (a + 0xfffffu + ((a >> 21) & 1u)) >> 21;
    const uint32_t code = r - (112u << 2);
    return code >= 0x7cu ? (uint8_t)(sign | 0x7cu) : (uint8_t)(sign | code);
}

/* ---- ue8m0 (float8_e8m0fnu): 2^(code-127), 0xff NaN, no zero, no sign ---- */
static inline float dsv3_ue8m0_to_f32(uint8_t b)
{
    if (b == 0xffu)
        return dsv3_bits_f32(0x7fc00000u);
    if (b == 0u) /* 2^-127 is an f32 subnormal */
        return dsv3_bits_f32(0x00400000u);
    return dsv3_bits_f32((uint32_t)b << 23);
}

/* ml_dtypes rounds with the implicit bit as the "even" bit, so halfway cases always go up:
 * code = exponent + (fraction >= 0.5). Zero, negatives (even -0), inf and NaN become NaN (0xff);
 * f32 subnormals: exactly 2^-127 -> 0x00, above it -> 0x01 (2^-126), below it -> 0x00. */
static inline uint8_t dsv3_f32_to_ue8m0(float f)
{
    const uint32_t u = dsv3_f32_bits(f);
    if (u == 0u || u >= 0x7f800000u) /* +0, +inf, NaN, any negative */
        return 0xffu;
    const uint32_t e = u >> 23;
    if (e == 0u)
        return u > 0x00400000u ? 1u : 0u;
    return (uint8_t)(e + ((u >> 22) & 1u)); /* 255 (overflow) is NaN */
}

/* ---- e2m1 (fp4): one nibble, bit 3 sign, magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6} ---- */
static inline float dsv3_e2m1_to_f32(uint8_t nib)
{
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    const float v = mag[nib & 7u];
    return (nib & 8u) ? -v : v;
}

/* Round to nearest even, saturating at +-6 (also +-inf). NaN follows ml_dtypes, whose quiet NaN
 * for e2m1fn is the -0 code: +NaN -> 0x8, -NaN -> 0x0. */
static inline uint8_t dsv3_f32_to_e2m1(float f)
{
    const uint32_t u = dsv3_f32_bits(f), a = u & 0x7fffffffu;
    const uint8_t sign = (uint8_t)((u >> 28) & 8u);
    if (a > 0x7f800000u)
        return sign ^ 8u;
    if (a < 0x3f800000u) { /* below 1: grid of 0.5 (may round up to 1.0 = code 2) */
        const float scaled = dsv3_bits_f32(a) * 2.0f; /* exact */
        const uint32_t q = (uint32_t)scaled;
        const float rem = scaled - (float)q;
        return sign | (uint8_t)(q + ((rem > 0.5f) || (rem == 0.5f && (q & 1u))));
    }
    if (a >= 0x40c00000u) /* >= 6 (inf too): saturate; nothing rounds above 6 */
        return sign | 7u;
    const uint32_t r = (a + 0x1fffffu + ((a >> 22) & 1u)) >> 22; /* f32 exp | 1-bit mantissa, RNE */
    return sign | (uint8_t)(r - 252u);
}

/* ---- array conversions (csrc/dtypes/), every ISA; isa -1 = active ---- */
typedef enum {
    DSV3_DTYPE_F32 = 0,
    DSV3_DTYPE_BF16 = 1,
    DSV3_DTYPE_E4M3 = 2,
    DSV3_DTYPE_E5M2 = 3,
    DSV3_DTYPE_UE8M0 = 4,
    DSV3_DTYPE_E2M1 = 5, /* one code per byte (low nibble) in array conversions */
    DSV3_DTYPE_COUNT
} dsv3_dtype;

/* Bytes per element in array conversions (e2m1: 1, one code per byte). 0 for an invalid dtype. */
size_t dsv3_dtype_size(dsv3_dtype t);
/* "float32", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float4_e2m1fn"
 * (the ml_dtypes names); dsv3_dtype_parse also accepts the short names f32, bf16, e4m3, e5m2,
 * ue8m0, e2m1. */
const char *dsv3_dtype_name(dsv3_dtype t);
dsv3_status dsv3_dtype_parse(const char *name, dsv3_dtype *out, dsv3_error *err);

/* dst[i] = convert(src[i]) for n elements, bit-exact with the scalar functions above (and so with
 * ml_dtypes) on every ISA. Supported: f32 -> any, any -> f32, e4m3 -> bf16, and t -> t (copy).
 * isa: -1 for the active path, else a dsv3_isa; unsupported ISA or pair fails cleanly.
 * Large n runs on dsv3_num_threads() OpenMP threads; src and dst must not overlap. */
dsv3_status dsv3_convert(dsv3_dtype dst_t, void *dst, dsv3_dtype src_t, const void *src, size_t n, int isa,
                         dsv3_error *err);

#endif /* DSV3_DTYPES_H */

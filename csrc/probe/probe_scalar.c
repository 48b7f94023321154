/* Scalar twins of the probe kernels (baseline x86-64 code). The empty asm statements keep each
 * accumulator a live register value so the compiler cannot fold a chain into a closed form or
 * pack the scalar chains into vectors. */
#include "probe_kernels.h"

#include <string.h>

#define KEEP_F(x) __asm__ volatile("" : "+x"(x))
#define KEEP_I(x) __asm__ volatile("" : "+r"(x))

static uint64_t read_sum_scalar(const uint64_t *p, size_t n)
{
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
        KEEP_I(s0);
    }
    for (; i < n; i++)
        s0 += p[i];
    return s0 + s1 + s2 + s3;
}

static double f32_fma_scalar(int64_t iters)
{
    float x[DSV3_PROBE_CHAINS];
    const float a = DSV3_PROBE_F32_A, b = DSV3_PROBE_F32_B;
    for (int j = 0; j < DSV3_PROBE_CHAINS; j++)
        x[j] = (float)j * DSV3_PROBE_F32_X0;
    float x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3], x4 = x[4], x5 = x[5];
    float x6 = x[6], x7 = x[7], x8 = x[8], x9 = x[9], x10 = x[10], x11 = x[11];
    for (int64_t it = 0; it < iters; it++) {
        x0 = x0 * a + b; x1 = x1 * a + b; x2 = x2 * a + b; x3 = x3 * a + b;
        x4 = x4 * a + b; x5 = x5 * a + b; x6 = x6 * a + b; x7 = x7 * a + b;
        x8 = x8 * a + b; x9 = x9 * a + b; x10 = x10 * a + b; x11 = x11 * a + b;
        KEEP_F(x0); KEEP_F(x1); KEEP_F(x2); KEEP_F(x3); KEEP_F(x4); KEEP_F(x5);
        KEEP_F(x6); KEEP_F(x7); KEEP_F(x8); KEEP_F(x9); KEEP_F(x10); KEEP_F(x11);
    }
    return (double)x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11;
}

/* one bf16 "pair dot" per chain per iteration: x += a*b + a*b in f32 (a, b exact in bf16);
 * the operands are laundered per chain so every product is really computed (4 flops). */
static double bf16_dot_scalar(int64_t iters)
{
    float a = DSV3_PROBE_BF16, b = DSV3_PROBE_BF16;
    KEEP_F(a);
    KEEP_F(b);
    float x[DSV3_PROBE_CHAINS];
    for (int j = 0; j < DSV3_PROBE_CHAINS; j++)
        x[j] = (float)j;
    for (int64_t it = 0; it < iters; it++) {
        for (int j = 0; j < DSV3_PROBE_CHAINS; j++) {
            float t0 = a, t1 = a;
            KEEP_F(t0);
            KEEP_F(t1);
            x[j] = x[j] + t0 * b + t1 * b;
            KEEP_F(x[j]);
        }
    }
    double sum = 0.0;
    for (int j = 0; j < DSV3_PROBE_CHAINS; j++)
        sum += x[j];
    return sum;
}

/* one u8*s8 "quad dot" per chain per iteration (4 products, 4 adds), wrapping int32 like
 * vpdpbusd; operands laundered per product so the multiplies are really done. */
static double int8_dot_scalar(int64_t iters)
{
    uint32_t u = DSV3_PROBE_U8, s = (uint32_t)DSV3_PROBE_S8;
    KEEP_I(u); /* opaque values: real multiplies, not shifts by known constants */
    KEEP_I(s);
    uint32_t x[DSV3_PROBE_CHAINS];
    for (int j = 0; j < DSV3_PROBE_CHAINS; j++)
        x[j] = (uint32_t)j;
    for (int64_t it = 0; it < iters; it++) {
        for (int j = 0; j < DSV3_PROBE_CHAINS; j++) {
            uint32_t t0 = u, t1 = u, t2 = u, t3 = u;
            KEEP_I(t0);
            KEEP_I(t1);
            KEEP_I(t2);
            KEEP_I(t3);
            x[j] += t0 * s + t1 * s + t2 * s + t3 * s;
            KEEP_I(x[j]);
        }
    }
    double sum = 0.0;
    for (int j = 0; j < DSV3_PROBE_CHAINS; j++) {
        int32_t v;
        memcpy(&v, &x[j], 4);
        sum += (double)v;
    }
    return sum;
}

const dsv3_probe_kernels dsv3_probe_scalar = {
    read_sum_scalar,
    {f32_fma_scalar, bf16_dot_scalar, int8_dot_scalar},
    {2.0 * DSV3_PROBE_CHAINS, 4.0 * DSV3_PROBE_CHAINS, 8.0 * DSV3_PROBE_CHAINS},
};

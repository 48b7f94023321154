/* The SIMD conversion algorithms, written once for the AVX2 (8 lanes) and AVX-512 (16 lanes) kernels.
 * Include it from convert_avx2.c / convert_avx512.c after defining the ISA's vocabulary:
 *   VI, VF, VM       integer vector, float vector, lane-mask type (a vector on AVX2, __mmask16 on AVX-512)
 *   I32(x)           all lanes x;  F32(x) all float lanes x
 *   AND OR XOR ADD SUB (a, b)  32-bit lane integer ops;  SRL SLL (a, n) logical shifts
 *   FADD FMUL (a, b) float ops;  CVTF(a) int32 -> float;  ASF(a) / ASI(a) bit casts int <-> float
 *   GT EQ (a, b)     signed 32-bit compares -> VM;  MOR(m, n) union of masks
 *   SEL(m, v, r)     m ? v : r per lane;  ONE_IF(m) 1 where m, else 0
 * Every function is exact integer bit manipulation (the scalar reference of dsv3_dtypes.h bit for bit,
 * tests/test_dtypes.py against ml_dtypes on every ISA); rounding into a subnormal grid uses the "add a power
 * of two" trick (the FPU rounds to nearest even once), which is exact and unaffected by denormals-are-zero. */
#ifndef DSV3_CONVERT_TEMPLATE_H
#define DSV3_CONVERT_TEMPLATE_H

#define LT(a, b) GT((b), (a))

/* ---- decoders: codes in 32-bit lanes -> f32 bits ---- */
static inline VI dec_e4m3(VI c)
{
    const VI x = AND(c, I32(0x7f));
    const VI sign = SLL(AND(c, I32(0x80)), 24);
    const VI normal = ADD(SLL(x, 20), I32(120u << 23));
    const VF sub = FMUL(CVTF(AND(x, I32(7))), F32(0.001953125f));
    VI r = SEL(LT(x, I32(8)), ASI(sub), normal);
    r = SEL(EQ(x, I32(0x7f)), I32(0x7fc00000u), r);
    return OR(r, sign);
}

static inline VI dec_e5m2(VI c)
{
    const VI x = AND(c, I32(0x7f));
    const VI sign = SLL(AND(c, I32(0x80)), 24);
    const VI normal = ADD(SLL(x, 21), I32(112u << 23));
    const VF sub = FMUL(CVTF(AND(x, I32(3))), F32(1.52587890625e-05f));
    VI r = SEL(LT(x, I32(4)), ASI(sub), normal);
    r = SEL(EQ(x, I32(0x7c)), I32(0x7f800000u), r);
    r = SEL(GT(x, I32(0x7c)), I32(0x7fc00000u), r);
    return OR(r, sign);
}

static inline VI dec_ue8m0(VI c)
{
    VI r = SLL(c, 23);
    r = SEL(EQ(c, I32(0)), I32(0x00400000u), r);
    return SEL(EQ(c, I32(0xff)), I32(0x7fc00000u), r);
}

/* ---- encoders: f32 bits -> codes in 32-bit lanes ---- */
static inline VI rne_shift(VI a, int shift) /* (a + half - 1 + lsb) >> shift */
{
    const VI lsb = AND(SRL(a, shift), I32(1));
    return SRL(ADD(ADD(a, I32((1u << (shift - 1)) - 1)), lsb), shift);
}

static inline VI grid_round(VI a, float big) /* RNE of a onto the ulp grid of `big` */
{
    const VF b = F32(big);
    return SUB(ASI(FADD(ASF(a), b)), ASI(b));
}

static inline VI enc_e4m3(VI u)
{
    const VI a = AND(u, I32(0x7fffffffu));
    const VI sign = AND(SRL(u, 24), I32(0x80));
    VI code = SUB(rne_shift(a, 20), I32(120u << 3));
    code = SEL(GT(code, I32(0x7e)), I32(0x7f), code);                /* past 448 is NaN */
    code = SEL(LT(a, I32(0x3c800000u)), grid_round(a, 16384.0f), code); /* ulp(2^14) = 2^-9 */
    code = SEL(GT(a, I32(0x7f7fffffu)), I32(0x7f), code);
    return OR(code, sign);
}

static inline VI enc_e5m2(VI u)
{
    const VI a = AND(u, I32(0x7fffffffu));
    const VI sign = AND(SRL(u, 24), I32(0x80));
    VI code = SUB(rne_shift(a, 21), I32(112u << 2));
    code = SEL(GT(code, I32(0x7b)), I32(0x7c), code);              /* overflow -> inf */
    code = SEL(LT(a, I32(0x38800000u)), grid_round(a, 128.0f), code); /* ulp(2^7) = 2^-16 */
    code = SEL(GT(a, I32(0x7f800000u)), I32(0x7e), code);
    return OR(code, sign);
}

static inline VI enc_ue8m0(VI u)
{
    const VI e = SRL(u, 23);
    VI code = ADD(e, AND(SRL(u, 22), I32(1)));
    code = SEL(EQ(e, I32(0)), ONE_IF(GT(u, I32(0x00400000u))), code);
    const VM nan = MOR(EQ(u, I32(0)), MOR(LT(u, I32(0)), GT(u, I32(0x7f7fffffu)))); /* zero, negative, inf, NaN */
    return SEL(nan, I32(0xff), code);
}

static inline VI enc_e2m1(VI u)
{
    const VI a = AND(u, I32(0x7fffffffu));
    const VI sign = AND(SRL(u, 28), I32(8));
    VI code = SUB(rne_shift(a, 22), I32(252));
    code = SEL(LT(a, I32(0x3f800000u)), grid_round(a, 4194304.0f), code); /* ulp(2^22) = 0.5 */
    code = SEL(GT(a, I32(0x40bfffffu)), I32(7), code);
    code = OR(code, sign);
    return SEL(GT(a, I32(0x7f800000u)), XOR(sign, I32(8)), code);
}

static inline VI enc_bf16(VI u)
{
    const VI a = AND(u, I32(0x7fffffffu));
    const VI qnan = OR(AND(SRL(u, 16), I32(0x8000)), I32(0x7fc0));
    return SEL(GT(a, I32(0x7f800000u)), qnan, rne_shift(u, 16));
}

#endif

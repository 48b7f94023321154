/* AVX-512 VNNI fast kernel for nvfp4 weights (definition in dot_fp.h): Q8 activations in DSV3_X_Q8_EO128
 * (act_q8.c: each 128-block as its 64 even then 64 odd columns, met by the low / high nibbles of the 64 weight
 * bytes). vpdpbusd multiplies u8 by s8: the code magnitudes |2 e2m1| (0..12, a vpshufb) enter as u8, and the
 * x codes as s8 negated where the code's sign bit is set (a masked subtract from zero; the layout's offset
 * compensation is not used), so two vpdpbusd give exact int32 lanes of 8 natural columns. Lanes 2j, 2j+1
 * share the e4m3 block scale j: the 8 scale bytes of a 128-block are doubled and decoded through f16
 * (decode_avx2.h, value * 2^-8) with one vcvtph2ps; each lane is scaled by d * scale in f32 and
 * scale2 / 2 * 2^8 is applied once per output. This replaces the bf16-hi dot kernel (gemv_dot_avx512.c) as
 * nvfp4's fast kernel. Up to 4 rows of x share a decoded block; two accumulators per row alternate between
 * 128-blocks (the same arithmetic for every M: a decode row is bitwise the same row of a batch). The K tail
 * after the last full 128-block runs the reference (dsv3_q8_nvfp4_ref_dot).
 * Decode (M = 1) walks a thread's rows one after another without software prefetch (dot_q8_avx512.c). */
#include <immintrin.h>
#include <stdint.h>

#include "linear/decode_avx2.h"
#include "linear/dot_fp.h"
#include "linear/lin_common.h"

#define MRX 4

/* One 128-block at k for mr rows of x, into acc[0..mr) */
AI void block128(const int mr, const dsv3_act_q8 *x, const int64_t *xr, int64_t k, const uint8_t *p,
                 const uint8_t *s8, __m512 *acc)
{
    const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(LUT16_2E2M1_ABS)), m4 = _mm512_set1_epi8(0x0f);
    const __m512i z = _mm512_setzero_si512();
    const __m128i sb = _mm_loadl_epi64((const __m128i *)s8);
    const __m512 ws = _mm512_cvtph_ps(e4m3_f16_words(_mm_unpacklo_epi8(sb, sb)));
    const __m512i b = _mm512_loadu_si512(p);
    const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(b, m4));
    const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(b, 4), m4));
    const __mmask64 nlo = _mm512_test_epi8_mask(b, _mm512_set1_epi8(0x08));
    const __mmask64 nhi = _mm512_test_epi8_mask(b, _mm512_set1_epi8((char)0x80));
    for (int i = 0; i < mr; i++) {
        const int8_t *q = x->q + xr[i] + k;
        const __m512i xe = _mm512_loadu_si512(q), xo = _mm512_loadu_si512(q + 64);
        const __m512 dl = _mm512_loadu_ps(x->dl + xr[MRX + i] + k / 8);
        const __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo, _mm512_mask_sub_epi8(xe, nlo, z, xe)), hi,
                                              _mm512_mask_sub_epi8(xo, nhi, z, xo));
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dl, ws), acc[i]);
    }
}

AI void nvfp4_tile(const int mr, const dsv3_lin_args *a, int64_t n, int64_t m0)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t K = w->k, kb = x->kb;
    const uint8_t *row = (const uint8_t *)w->data + n * (K / 2), *sc = (const uint8_t *)w->scale + n * (K / 16);
    int64_t xr[2 * MRX]; /* offsets of the x rows in q, then in c / dl */
    __m512 acc[MRX], acc1[MRX];
    for (int i = 0; i < mr; i++) {
        xr[i] = (m0 + i) * K;
        xr[MRX + i] = (m0 + i) * x->lanes;
        acc[i] = acc1[i] = _mm512_setzero_ps();
    }
    int64_t k = 0;
    for (; k + 256 <= kb; k += 256) { /* every mr alike: a decode row is bitwise the same row of a batch */
        block128(mr, x, xr, k, row + k / 2, sc + k / 16, acc);
        block128(mr, x, xr, k + 128, row + k / 2 + 64, sc + k / 16 + 8, acc1);
    }
    if (k < kb)
        block128(mr, x, xr, k, row + k / 2, sc + k / 16, acc);
    const float g = w->scale2 * 128.0f; /* scale2 / 2 * 2^8 */
    for (int i = 0; i < mr; i++) {
        const float tail = kb < K ? dsv3_q8_nvfp4_ref_dot(a, m0 + i, n, kb) : 0.0f;
        a->y[(m0 + i) * w->n + n] =
            _mm512_reduce_add_ps(_mm512_add_ps(acc[i], acc1[i])) * g + tail + (a->bias ? a->bias[n] : 0.0f);
    }
}

void dsv3_q8_nvfp4_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m0 = 0; m0 < a->m; m0 += MRX)
            switch (a->m - m0 < MRX ? a->m - m0 : MRX) {
            case 1: nvfp4_tile(1, a, n, m0); break;
            case 2: nvfp4_tile(2, a, n, m0); break;
            case 3: nvfp4_tile(3, a, n, m0); break;
            default: nvfp4_tile(4, a, n, m0); break;
            }
}

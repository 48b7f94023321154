/* AVX-512 small-M kernels: 16 codes decoded per step in registers (see gemv_template.h), and the
 * dynamic int8 kernel on VNNI (vpdpbusd with u8 = s8 + 128 and a per-column compensation). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define ISA avx512
#define V __m512
#define VL 16
#define V_ZERO() _mm512_setzero_ps()
#define V_LOADU(p) _mm512_loadu_ps(p)
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm512_add_ps(a, b)
#define V_MUL(a, b) _mm512_mul_ps(a, b)
#define V_STOREU(p, v) _mm512_storeu_ps(p, v)
#define V_SET1(s) _mm512_set1_ps(s)
#define V_REDUCE(v) _mm512_reduce_add_ps(v)

#include "linear/decode_avx512.h"
#include "linear/gemv_template.h"

/* y[m,n] = ((float)(sum q_x q_w) * s_x[m]) * s_w[n]; sum q_x q_w = sum (q_x+128) q_w - 128 sum q_w. */
void dsv3_dyn_int8_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, N = w->n;
    const float *sw = (const float *)w->scale;
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *wr = (const int8_t *)w->data + n * K;
        for (int64_t m0 = 0; m0 < a->m; m0 += MR) {
            const int mr = a->m - m0 < MR ? (int)(a->m - m0) : MR;
            __m512i acc[MR], comp = _mm512_setzero_si512();
            for (int i = 0; i < MR; i++)
                acc[i] = _mm512_setzero_si512();
            for (int64_t k = 0; k < K; k += 64) {
                const __mmask64 mk = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
                const __m512i wv = _mm512_maskz_loadu_epi8(mk, wr + k);
                comp = _mm512_dpbusd_epi32(comp, c128, wv);
                for (int i = 0; i < mr; i++)
                    acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_maskz_loadu_epi8(mk, a->xu + (m0 + i) * K + k), wv);
            }
            const int32_t c = _mm512_reduce_add_epi32(comp);
            for (int i = 0; i < mr; i++) {
                const int32_t dot = _mm512_reduce_add_epi32(acc[i]) - c;
                a->y[(m0 + i) * N + n] = ((float)dot * a->xs_tok[m0 + i]) * sw[n] + (a->bias ? a->bias[n] : 0.0f);
            }
        }
    }
}

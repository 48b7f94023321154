/* AVX-512 small-M kernels: 16 codes decoded per step in registers (see gemv_template.h), and the
 * dynamic int8 kernel on VNNI (vpdpbusd of |x| with sign-adjusted weights, exact int32 dots). */
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

/* y[m,n] = ((float)(sum q_x q_w) * s_x[m]) * s_w[n], the int32 dot exact (same bits as the scalar
 * twin): vpdpbusd of |q_x| (u8, a->xu) with q_w negated where q_x < 0 (one masked byte subtract;
 * |q_w| <= 127). Tiles of up to MR rows of x by 4 weight columns: each x vector and sign mask is
 * loaded once per 4 columns, and the 4 x MR accumulator chains are independent. */
#define DNC 4
AI void dyn_int8_tile(const int mr, const int nc, const dsv3_lin_args *a, int64_t n0, int64_t m0)
{
    const dsv3_weight *w = a->w;
    const int64_t K = w->k, N = w->n;
    const float *sw = (const float *)w->scale;
    __m512i acc[MR][DNC];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nc; j++)
            acc[i][j] = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
        const __mmask64 mk = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
        __m512i wv[DNC];
        for (int j = 0; j < nc; j++) { /* prefetch the same bytes of the next tile's rows (short rows) */
            const int8_t *wp = (const int8_t *)w->data + (n0 + j) * K + k;
            _mm_prefetch((const char *)(uintptr_t)((uintptr_t)wp + (uintptr_t)(DNC * K)), _MM_HINT_T0);
            wv[j] = _mm512_maskz_loadu_epi8(mk, wp);
        }
        for (int i = 0; i < mr; i++) {
            const __m512i xa = _mm512_maskz_loadu_epi8(mk, a->xu + (m0 + i) * K + k);
            const __mmask64 neg = _mm512_movepi8_mask(_mm512_maskz_loadu_epi8(mk, a->xq + (m0 + i) * K + k));
            for (int j = 0; j < nc; j++)
                acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xa,
                                                _mm512_mask_sub_epi8(wv[j], neg, _mm512_setzero_si512(), wv[j]));
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nc; j++) {
            const int64_t n = n0 + j;
            const int32_t dot = _mm512_reduce_add_epi32(acc[i][j]);
            a->y[(m0 + i) * N + n] = ((float)dot * a->xs_tok[m0 + i]) * sw[n] + (a->bias ? a->bias[n] : 0.0f);
        }
}

#define DYN_NC(mr_)                                                                                 \
    switch (nc) {                                                                                   \
    case 1: dyn_int8_tile(mr_, 1, a, n, m0); break;                                                 \
    case 2: dyn_int8_tile(mr_, 2, a, n, m0); break;                                                 \
    case 3: dyn_int8_tile(mr_, 3, a, n, m0); break;                                                 \
    default: dyn_int8_tile(mr_, 4, a, n, m0); break;                                                \
    }

void dsv3_dyn_int8_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    for (int64_t n = n0; n < n1; n += DNC) {
        const int nc = n1 - n < DNC ? (int)(n1 - n) : DNC;
        for (int64_t m0 = 0; m0 < a->m; m0 += MR) {
            switch (a->m - m0 < MR ? a->m - m0 : MR) {
            case 1: DYN_NC(1) break;
            case 2: DYN_NC(2) break;
            case 3: DYN_NC(3) break;
            default: DYN_NC(4) break;
            }
        }
    }
}

/* AVX-512 VNNI fast kernel on packed int4 weights (int4p.h): one 64-byte load holds 8 consecutive codes
 * (+ 8, as u8) of each of 16 rows, one row per 32-bit lane; x's 4-code groups (DSV3_X_Q8_O8: natural order)
 * are broadcast to every lane and vpdpbusd accumulates each row in its own lane (low nibbles with codes
 * 8c..8c+3, high nibbles with 8c+4..8c+7): no horizontal reduction, one vector of 16 group scales. The f32
 * steps per Q8 block are those of the scalar twin (dot_q8_int4p_scalar.c), lane by lane, so the bits are the
 * same on every ISA and do not depend on M, on the rows beside a row or on the work split. Up to 4 rows of x
 * share each weight load. */
#include <immintrin.h>
#include <stdint.h>

#include "linear/act_q8.h"
#include "linear/int4p.h"
#include "linear/lin_common.h"

#define MRX 4

AI __m512i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* acc[i] = the 16 lanes of row group g for x rows m0 + i, i < mr (full Q8 blocks only) */
AI void group_rows(const int mr, const int g32, const dsv3_lin_args *a, int64_t g, int64_t m0, __m512 *acc)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t K = w->k, nb = (K + 31) / 32, nfull = x->kb / 32, ne4 = (x->kb + 127) / 128;
    const uint8_t *p = int4p_codes(w, g);
    const float *sc = int4p_scales(w, g);
    const int8_t *q[MRX];
    const float *d[MRX], *e[MRX];
    __m512 t[MRX];
    for (int i = 0; i < mr; i++) {
        q[i] = x->q + (m0 + i) * K;
        d[i] = x->d + (m0 + i) * nb;
        e[i] = g32 ? x->e + (m0 + i) * nfull : x->e4 + (m0 + i) * ne4;
        acc[i] = t[i] = _mm512_setzero_ps();
    }
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < nfull; b++, p += 256) {
        __m512i slo[MRX], shi[MRX];
        for (int i = 0; i < mr; i++)
            slo[i] = shi[i] = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            const __m512i v = _mm512_loadu_si512(p + 64 * c);
            const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            for (int i = 0; i < mr; i++) {
                slo[i] = _mm512_dpbusd_epi32(slo[i], lo, bcast4(q[i] + 32 * b + 8 * c));
                shi[i] = _mm512_dpbusd_epi32(shi[i], hi, bcast4(q[i] + 32 * b + 8 * c + 4));
            }
        }
        for (int i = 0; i < mr; i++) {
            const __m512 s = _mm512_cvtepi32_ps(_mm512_add_epi32(slo[i], shi[i]));
            if (g32) {
                const __m512 u = _mm512_fmadd_ps(s, _mm512_set1_ps(d[i][b]), _mm512_set1_ps(e[i][b]));
                acc[i] = _mm512_fmadd_ps(u, _mm512_loadu_ps(sc + 16 * b), acc[i]);
            } else {
                if (b % 4 == 0)
                    t[i] = _mm512_set1_ps(e[i][b / 4]);
                t[i] = _mm512_fmadd_ps(s, _mm512_set1_ps(d[i][b]), t[i]);
                if (b % 4 == 3 || b == nfull - 1)
                    acc[i] = _mm512_fmadd_ps(t[i], _mm512_loadu_ps(sc + 16 * (b / 4)), acc[i]);
            }
        }
    }
}

AI void run(const int g32, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    const int64_t N = a->w->n, K = a->w->k, kb = a->q8->kb;
    for (int64_t g = n0 / 16; 16 * g < n1; g++)
        for (int64_t m0 = 0; m0 < a->m; m0 += MRX) {
            const int mr = a->m - m0 < MRX ? (int)(a->m - m0) : MRX;
            __m512 acc[MRX];
            switch (mr) {
            case 1: group_rows(1, g32, a, g, m0, acc); break;
            case 2: group_rows(2, g32, a, g, m0, acc); break;
            case 3: group_rows(3, g32, a, g, m0, acc); break;
            default: group_rows(4, g32, a, g, m0, acc); break;
            }
            for (int i = 0; i < mr; i++) {
                float lane[16];
                _mm512_storeu_ps(lane, acc[i]);
                for (int r = 0; r < 16; r++) {
                    const int64_t n = 16 * g + r;
                    if (n < n0 || n >= n1)
                        continue;
                    const float tail = kb < K ? dsv3_q8_ref_dot(a, m0 + i, n, kb) : 0.0f;
                    a->y[(m0 + i) * N + n] = lane[r] + tail + (a->bias ? a->bias[n] : 0.0f);
                }
            }
        }
}

void dsv3_q8_int4p_avx512(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    if (a->w->group == 32)
        run(1, a, n0, n1);
    else
        run(0, a, n0, n1);
}

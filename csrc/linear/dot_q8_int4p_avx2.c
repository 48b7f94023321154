/* AVX2 fast kernel on packed int4 weights (int4p.h): the 64-byte chunk of a 16-row group read as two ymm
 * halves (rows 0-7, 8-15), one row per 32-bit lane; x's 4-code groups (DSV3_X_Q8_O8) broadcast to every lane;
 * vpmaddubsw (u8 code + 8 in [0, 15] times s8 x: pair sums <= 2 * 15 * 127) and int16 adds over the Q8 block's
 * 16 products per lane (<= 30480: exact), one vpmaddwd to int32 lanes. The f32 steps per block are those of
 * the scalar twin (dot_q8_int4p_scalar.c), so every ISA gives the same bits, whatever M, the rows beside a row
 * or the work split. Up to 2 rows of x share each weight load. */
#include <immintrin.h>
#include <stdint.h>

#include "linear/act_q8.h"
#include "linear/int4p.h"
#include "linear/lin_common.h"

#define MRX 2

AI __m256i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* acc[2 i + h] = lanes of rows 8h..8h+7 of row group g for x row m0 + i, i < mr (full Q8 blocks only) */
AI void group_rows(const int mr, const int g32, const dsv3_lin_args *a, int64_t g, int64_t m0, __m256 *acc)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t K = w->k, nb = (K + 31) / 32, nfull = x->kb / 32, ne4 = (x->kb + 127) / 128;
    const uint8_t *p = int4p_codes(w, g);
    const float *sc = int4p_scales(w, g);
    const int8_t *q[MRX];
    const float *d[MRX], *e[MRX];
    __m256 t[2 * MRX];
    for (int i = 0; i < mr; i++) {
        q[i] = x->q + (m0 + i) * K;
        d[i] = x->d + (m0 + i) * nb;
        e[i] = g32 ? x->e + (m0 + i) * nfull : x->e4 + (m0 + i) * ne4;
        acc[2 * i] = acc[2 * i + 1] = t[2 * i] = t[2 * i + 1] = _mm256_setzero_ps();
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nfull; b++, p += 256) {
        __m256i s16[2 * MRX];
        for (int i = 0; i < 2 * mr; i++)
            s16[i] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i v0 = _mm256_loadu_si256((const __m256i *)(p + 64 * c));
            const __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + 64 * c + 32));
            const __m256i lo0 = _mm256_and_si256(v0, m4), hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), m4);
            const __m256i lo1 = _mm256_and_si256(v1, m4), hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), m4);
            for (int i = 0; i < mr; i++) {
                const __m256i xl = bcast4(q[i] + 32 * b + 8 * c), xh = bcast4(q[i] + 32 * b + 8 * c + 4);
                s16[2 * i] = _mm256_add_epi16(s16[2 * i], _mm256_add_epi16(_mm256_maddubs_epi16(lo0, xl),
                                                                            _mm256_maddubs_epi16(hi0, xh)));
                s16[2 * i + 1] = _mm256_add_epi16(s16[2 * i + 1], _mm256_add_epi16(_mm256_maddubs_epi16(lo1, xl),
                                                                                    _mm256_maddubs_epi16(hi1, xh)));
            }
        }
        for (int i = 0; i < mr; i++)
            for (int h = 0; h < 2; h++) {
                const __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[2 * i + h], ones));
                if (g32) {
                    const __m256 u = _mm256_fmadd_ps(s, _mm256_set1_ps(d[i][b]), _mm256_set1_ps(e[i][b]));
                    acc[2 * i + h] = _mm256_fmadd_ps(u, _mm256_loadu_ps(sc + 16 * b + 8 * h), acc[2 * i + h]);
                } else {
                    if (b % 4 == 0)
                        t[2 * i + h] = _mm256_set1_ps(e[i][b / 4]);
                    t[2 * i + h] = _mm256_fmadd_ps(s, _mm256_set1_ps(d[i][b]), t[2 * i + h]);
                    if (b % 4 == 3 || b == nfull - 1)
                        acc[2 * i + h] = _mm256_fmadd_ps(t[2 * i + h], _mm256_loadu_ps(sc + 16 * (b / 4) + 8 * h),
                                                         acc[2 * i + h]);
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
            __m256 acc[2 * MRX];
            if (mr == 1)
                group_rows(1, g32, a, g, m0, acc);
            else
                group_rows(2, g32, a, g, m0, acc);
            for (int i = 0; i < mr; i++) {
                float lane[16];
                _mm256_storeu_ps(lane, acc[2 * i]);
                _mm256_storeu_ps(lane + 8, acc[2 * i + 1]);
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

void dsv3_q8_int4p_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    if (a->w->group == 32)
        run(1, a, n0, n1);
    else
        run(0, a, n0, n1);
}

/* AVX2 fast kernels: Q8 activations (act_q8.c) times int8 / int4 weights with vpmaddubsw + vpmaddwd.
 * vpmaddubsw multiplies u8 by s8 and saturates its pair sums to int16, so:
 *  - int8 (DSV3_X_Q8, natural order; one 32-byte vector = one Q8 block): the sign trick,
 *    u = |w| (|-128| = 128 as u8), s = sign(x, w) = x * sign(w); pair sums <= 2 * 128 * 127 < 2^15;
 *  - int4 (DSV3_X_Q8_EO64): u = nibble ^ 8 = w + 8 in [0, 15], s = x; pair sums <= 2 * 15 * 127, and
 *    the low-nibble (even columns) and high-nibble (odd columns) products add in int16 without overflow;
 *    the layout's compensation lane (-8 * sum of the lane's x codes) is added in int32.
 * vpmaddwd with ones widens to int32 lanes (int4: lane l of a 64-block = natural columns 8l..8l+7),
 * which are converted and scaled by their block's d times the weight scale in f32. One row of x per
 * tile (16 ymm registers), up to 4 weight rows; the K tail runs the reference (dsv3_q8_ref_dot). */
#include <immintrin.h>
#include <stdint.h>

#include "linear/act_q8.h"
#include "linear/lin_common.h"

#define QNR 4
#define PF(p, rowbytes) \
    _mm_prefetch((const char *)(uintptr_t)((uintptr_t)(p) + (uintptr_t)(QNR * (rowbytes))), _MM_HINT_T0)

AI float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI void q8_tile(const int is4, const int pf, const int nr, const dsv3_lin_args *a, int64_t n0, int64_t r)
{
    const dsv3_weight *w = a->w;
    const dsv3_act_q8 *x = a->q8;
    const int64_t K = w->k, rowb = is4 ? K / 2 : K, nb = (K + 31) / 32;
    const int64_t kb = is4 ? x->kb : K / 32 * 32, ng = is4 ? (K + w->group - 1) / w->group : 1;
    const int8_t *xq = x->q + r * K;
    const uint8_t *row[QNR];
    __m256 acc[QNR];
    for (int j = 0; j < nr; j++) {
        row[j] = (const uint8_t *)w->data + (n0 + j) * rowb;
        acc[j] = _mm256_setzero_ps();
    }
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0f), flip = _mm256_set1_epi8((char)0x88);
    for (int64_t k = 0; k < kb; k += is4 ? 64 : 32) {
        if (is4) {
            const __m256i xe = _mm256_loadu_si256((const __m256i *)(xq + k));
            const __m256i xo = _mm256_loadu_si256((const __m256i *)(xq + k + 32));
            const __m256i cv = _mm256_loadu_si256((const __m256i *)(x->c + r * x->lanes + k / 8));
            const __m256 dl = _mm256_loadu_ps(x->dl + r * x->lanes + k / 8);
            for (int j = 0; j < nr; j++) {
                const uint8_t *p = row[j] + k / 2;
                if (pf)
                    PF(p, rowb);
                const __m256i b = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), flip);
                const __m256i lo = _mm256_and_si256(b, m4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
                const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo));
                const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(p16, ones), cv);
                const float *sc = (const float *)w->scale + (n0 + j) * ng;
                const __m256 sv = w->group == 128 ? _mm256_set1_ps(sc[k / 128])
                                                  : _mm256_set_m128(_mm_set1_ps(sc[k / 32 + 1]), _mm_set1_ps(sc[k / 32]));
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dl, sv), acc[j]);
            }
        } else {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + k));
            const __m256 dv = _mm256_set1_ps(x->d[r * nb + k / 32]);
            for (int j = 0; j < nr; j++) {
                const uint8_t *p = row[j] + k;
                if (pf)
                    PF(p, rowb);
                const __m256i wv = _mm256_loadu_si256((const __m256i *)p);
                const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv));
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), dv, acc[j]);
            }
        }
    }
    for (int j = 0; j < nr; j++) {
        const int64_t n = n0 + j;
        const float s = is4 ? 1.0f : ((const float *)w->scale)[n];
        const float tail = kb < K ? dsv3_q8_ref_dot(a, r, n, kb) : 0.0f;
        a->y[r * w->n + n] = hsum8(acc[j]) * s + tail + (a->bias ? a->bias[n] : 0.0f);
    }
}

/* Decode (M = 1): one weight row after another, no software prefetch (one sequential stream over the
 * thread's contiguous rows; see dot_q8_avx512.c). Measured 2026-11-30 (one thread, best of 100
 * alternating calls): expert_down int8 12.5 -> 27.2 GB/s, int4 13.4 -> 17.9; expert_gate_up int8
 * 18.4 -> 25.7, int4 15.5 -> 17.0. Same per-row arithmetic. */
AI void q8_rows(const int is4, const dsv3_lin_args *a, int64_t n0, int64_t n1)
{
    if (a->m == 1) {
        for (int64_t n = n0; n < n1; n++)
            q8_tile(is4, 0, 1, a, n, 0);
        return;
    }
    for (int64_t n = n0; n < n1; n += QNR) {
        const int64_t nr = n1 - n < QNR ? n1 - n : QNR;
        for (int64_t r = 0; r < a->m; r++)
            switch (nr) {
            case 1: q8_tile(is4, 1, 1, a, n, r); break;
            case 2: q8_tile(is4, 1, 2, a, n, r); break;
            case 3: q8_tile(is4, 1, 3, a, n, r); break;
            default: q8_tile(is4, 1, 4, a, n, r); break;
            }
    }
}

void dsv3_q8_int8_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1) { q8_rows(0, a, n0, n1); }
void dsv3_q8_int4_avx2(const dsv3_lin_args *a, int64_t n0, int64_t n1) { q8_rows(1, a, n0, n1); }

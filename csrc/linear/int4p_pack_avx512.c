/* The int4 packer's row step on AVX-512 (int4p_pack.c has the scalar twin, pack_words, and the rest): 64 stored
 * bytes of one row (16 chunks of 8 codes) -> 16 packed words, each to its chunk's 64-byte vector (int4p.h). */
#include <immintrin.h>

#include "linear/int4p.h"
#include "linear/int4p_pack.h"

int64_t dsv3_int4_pack_row_avx512(const uint8_t *row, int64_t chunks, uint8_t *out)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), x8 = _mm512_set1_epi8((char)0x88);
    /* per dword: bytes [ML0, MH0, ML1, MH1] from ML = [L0 | L2 << 4, L1 | L3 << 4, ..] and MH the same of H */
    const __m512i ia = _mm512_set4_epi32(0x800d800c, 0x80098008, 0x80058004, 0x80018000),
                  ib = _mm512_set4_epi32(0x0d800c80, 0x09800880, 0x05800480, 0x01800080);
    int64_t c = 0;
    for (; c + 16 <= chunks; c += 16) {
        const __m512i v = _mm512_xor_si512(_mm512_loadu_si512(row + 4 * c), x8); /* codes + 8 */
        const __m512i l = _mm512_and_si512(v, m4), h = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        const __m512i ml = _mm512_or_si512(l, _mm512_slli_epi32(_mm512_srli_epi32(l, 16), 4));
        const __m512i mh = _mm512_or_si512(h, _mm512_slli_epi32(_mm512_srli_epi32(h, 16), 4));
        uint32_t w[16];
        _mm512_storeu_si512(w, _mm512_or_si512(_mm512_shuffle_epi8(ml, ia), _mm512_shuffle_epi8(mh, ib)));
        for (int j = 0; j < 16; j++)
            memcpy(out + (c + j) * 64, &w[j], 4);
    }
    return c;
}

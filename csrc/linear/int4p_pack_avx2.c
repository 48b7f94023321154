/* The int4 packer's row step on AVX2 (int4p_pack.c has the scalar twin, pack_words, and the rest): 32 stored
 * bytes of one row (8 chunks of 8 codes) -> 8 packed words, each to its chunk's 64-byte vector (int4p.h). */
#include <immintrin.h>

#include "linear/int4p.h"
#include "linear/int4p_pack.h"

int64_t dsv3_int4_pack_row_avx2(const uint8_t *row, int64_t chunks, uint8_t *out)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), x8 = _mm256_set1_epi8((char)0x88);
    /* per dword: bytes [ML0, MH0, ML1, MH1] from ML = [L0 | L2 << 4, L1 | L3 << 4, ..] and MH the same of H */
    const __m256i ia = _mm256_setr_epi32(0x80018000, 0x80058004, 0x80098008, 0x800d800c, 0x80018000, 0x80058004,
                                         0x80098008, 0x800d800c),
                  ib = _mm256_setr_epi32(0x01800080, 0x05800480, 0x09800880, 0x0d800c80, 0x01800080, 0x05800480,
                                         0x09800880, 0x0d800c80);
    int64_t c = 0;
    for (; c + 8 <= chunks; c += 8) {
        const __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(row + 4 * c)), x8);
        const __m256i l = _mm256_and_si256(v, m4), h = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        const __m256i ml = _mm256_or_si256(l, _mm256_slli_epi32(_mm256_srli_epi32(l, 16), 4));
        const __m256i mh = _mm256_or_si256(h, _mm256_slli_epi32(_mm256_srli_epi32(h, 16), 4));
        uint32_t w[8];
        _mm256_storeu_si256((__m256i *)w, _mm256_or_si256(_mm256_shuffle_epi8(ml, ia), _mm256_shuffle_epi8(mh, ib)));
        for (int j = 0; j < 8; j++)
            memcpy(out + (c + j) * 64, &w[j], 4);
    }
    return c;
}

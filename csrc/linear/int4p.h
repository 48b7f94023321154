/* The packed int4 layout (dsv3_weight.packed, fast precision only): rows interleaved in groups of 16 so that
 * one 64-byte vector holds 8 consecutive codes of each of 16 rows (one 32-bit lane per row), x's 4-byte groups
 * are broadcast to every lane and each lane accumulates its own row (no horizontal reduction), and the 16 rows'
 * scales of one K group are one 64-byte vector. Built once at load by dsv3_int4_pack_team (int4p_pack.c) from
 * the checkpoint layout (dsv3_quant.h); read by the packed fast kernels (dot_q8_int4p_*.c), the large-M tile
 * decoders (gemm_q8_avx2.c, gemm_avx512.c) and the format table's reference decode (formats.c).
 *
 *   R = 16 rows per row group, NG = ceil(n / 16) row groups, K8 = ceil(k / 8) chunks of 8 columns,
 *   ngrp = ceil(k / group) scale groups.
 *   codes  u8 [NG][K8][16][4]: byte i (0..3) of row r in chunk c holds code(16 g + r, 8 c + i) + 8 in its low
 *          nibble and code(16 g + r, 8 c + 4 + i) + 8 in its high nibble (codes in [-8, 7] -> [0, 15]);
 *          rows >= n and columns >= k hold code 0 (byte 0x88).
 *   scales f32 [NG][ngrp][16] from byte offset round64(NG * K8 * 64): scale(16 g + r, group j); rows >= n: 0.
 * Every byte of the buffer is written by the packer (no uninitialised padding). */
#ifndef DSV3_INT4P_H
#define DSV3_INT4P_H

#include <stdint.h>
#include <string.h>

#include "dsv3_quant.h"

#define DSV3_INT4P_ROWS 16

static inline int64_t int4p_k8(const dsv3_weight *w) { return (w->k + 7) / 8; }
static inline int64_t int4p_ngrp(const dsv3_weight *w) { return (w->k + w->group - 1) / w->group; }
static inline size_t int4p_code_bytes(int64_t n, int64_t k)
{
    return ((size_t)((n + 15) / 16) * (size_t)((k + 7) / 8) * 64 + 63) & ~(size_t)63;
}
/* the 64-byte chunks of row group g (K8 of them, chunk c at + 64 c) */
static inline const uint8_t *int4p_codes(const dsv3_weight *w, int64_t g)
{
    return (const uint8_t *)w->packed + (size_t)g * (size_t)int4p_k8(w) * 64;
}
/* the [ngrp][16] scales of row group g */
static inline const float *int4p_scales(const dsv3_weight *w, int64_t g)
{
    return (const float *)(const void *)((const uint8_t *)w->packed + int4p_code_bytes(w->n, w->k)) +
           (size_t)g * (size_t)int4p_ngrp(w) * 16;
}
/* The 4 bytes (8 offset codes) of row n in chunk c; chunks past the row's end read as code 0. */
static inline uint32_t int4p_chunk(const dsv3_weight *w, int64_t n, int64_t c)
{
    if (c >= int4p_k8(w))
        return 0x88888888u;
    uint32_t v;
    memcpy(&v, int4p_codes(w, n / 16) + c * 64 + (n % 16) * 4, 4);
    return v;
}
/* code(n, k) in [-8, 7] */
static inline int int4p_code(const dsv3_weight *w, int64_t n, int64_t k)
{
    const uint8_t b = int4p_codes(w, n / 16)[(k / 8) * 64 + (n % 16) * 4 + (k % 4)];
    return ((k & 4) ? b >> 4 : b & 15) - 8;
}
static inline float int4p_scale(const dsv3_weight *w, int64_t n, int64_t j)
{
    return int4p_scales(w, n / 16)[j * 16 + n % 16];
}

#ifdef __SSE2__
#include <emmintrin.h>
/* 16 codes (two chunks: lo 4, hi 4, lo 4, hi 4 in natural order) of chunk words c0, c1 as s8 */
static inline __m128i int4p_dec16(uint32_t c0, uint32_t c1)
{
    const __m128i b = _mm_cvtsi64_si128((long long)(((uint64_t)c1 << 32) | c0)), m4 = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    return _mm_sub_epi8(_mm_unpacklo_epi32(lo, hi), _mm_set1_epi8(8));
}
#endif

#endif

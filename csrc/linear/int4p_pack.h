/* The int4 packer's row step per ISA (int4p_pack.c): the first whole chunks of one stored row -> their packed
 * words. row: the stored row (k/2 bytes); chunks: the row's whole chunks (4 bytes each) that may be read;
 * out: the row's word in chunk 0 (chunk c's word at out + 64 c). Returns the chunks done (a multiple of the
 * ISA's step, <= chunks); the caller packs the rest with the scalar twin. Bitwise the scalar result
 * (tests/test_convert_packed.py). */
#ifndef DSV3_INT4P_PACK_H
#define DSV3_INT4P_PACK_H

#include <stdint.h>

int64_t dsv3_int4_pack_row_avx2(const uint8_t *row, int64_t chunks, uint8_t *out);
int64_t dsv3_int4_pack_row_avx512(const uint8_t *row, int64_t chunks, uint8_t *out);

#endif

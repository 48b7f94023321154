/* The int4 packer: checkpoint layout (dsv3_quant.h) -> the packed layout (int4p.h), once at load (or once per
 * weight in dsv3 convert --pack). The whole chunks of each row go through the ISA's row step (int4p_pack_*.c,
 * 64 / 32 stored bytes a step); pack_words below is their scalar twin and does the rest. */
#include "linear/int4p.h"

#include "linear/act_q8.h"
#include "linear/int4p_pack.h"

typedef int64_t (*row_step)(const uint8_t *row, int64_t chunks, uint8_t *out);
static const row_step ROW_STEP[DSV3_ISA_COUNT] = {NULL, dsv3_int4_pack_row_avx2, dsv3_int4_pack_row_avx512};

size_t dsv3_int4_packed_bytes(int64_t n, int64_t k, int group)
{
    if (n <= 0 || k <= 0 || group <= 0)
        return 0;
    return int4p_code_bytes(n, k) + (size_t)((n + 15) / 16) * (size_t)((k + group - 1) / group) * 16 * sizeof(float);
}

/* Natural words (little-endian loads of the stored bytes: nibble j of each 32-bit half = column 8c + j, two's
 * complement) -> packed words: byte i of each half = nibbles i and i + 4 of that half, each + 8 (v ^ 8 per
 * nibble). Two chunks per 64-bit word; no shift crosses a 32-bit half. */
static inline uint64_t pack_words(uint64_t v)
{
    const uint64_t m16 = 0x0000ffff0000ffffull, m0 = 0x0000000f0000000full;
    v ^= 0x8888888888888888ull;
    const uint64_t lo = v & m16, hi = (v >> 16) & m16; /* nibbles 0-3, 4-7 of each chunk */
    const uint64_t bl = (lo & m0) | (lo & m0 << 4) << 4 | (lo & m0 << 8) << 8 | (lo & m0 << 12) << 12;
    const uint64_t bh = (hi & m0) | (hi & m0 << 4) << 4 | (hi & m0 << 8) << 8 | (hi & m0 << 12) << 12;
    return bl | bh << 4;
}

void dsv3_int4_pack_team(const dsv3_weight *w, void *buf, dsv3_isa isa)
{
    const int64_t N = w->n, NG = (N + 15) / 16, K8 = (w->k + 7) / 8, ngrp = (w->k + w->group - 1) / w->group;
    const row_step step = ROW_STEP[isa];
    uint8_t *codes = buf;
    float *scales = (float *)(void *)(codes + int4p_code_bytes(N, w->k));
    const float *src = w->scale;
#pragma omp for schedule(static) nowait
    for (int64_t g = 0; g < NG; g++) {
        uint8_t *out = codes + g * K8 * 64;
        for (int r = 0; r < 16; r++) {
            const int64_t n = 16 * g + r;
            const uint8_t *row = n < N ? (const uint8_t *)w->data + n * (w->k / 2) : NULL;
            int64_t c = n < N && step ? step(row, w->k / 8, out + r * 4) : 0; /* whole chunks, SIMD */
            for (; n < N && 4 * c + 8 <= w->k / 2; c += 2) { /* two full chunks */
                uint64_t v;
                memcpy(&v, row + 4 * c, 8);
                v = pack_words(v);
                memcpy(out + c * 64 + r * 4, &v, 4);
                memcpy(out + (c + 1) * 64 + r * 4, (const unsigned char *)&v + 4, 4);
            }
            for (; c < K8; c++) { /* the partial last chunk (code 0 past K), padding rows */
                uint8_t b[4] = {0, 0, 0, 0};
                for (int64_t i = 0; n < N && i < 4 && 4 * c + i < w->k / 2; i++)
                    b[i] = row[4 * c + i];
                const uint32_t v = (uint32_t)pack_words((uint64_t)b[0] | (uint64_t)b[1] << 8 | (uint64_t)b[2] << 16 |
                                                        (uint64_t)b[3] << 24);
                memcpy(out + c * 64 + r * 4, &v, 4);
            }
            for (int64_t j = 0; j < ngrp; j++)
                scales[(g * ngrp + j) * 16 + r] = n < N ? src[n * ngrp + j] : 0.0f;
        }
    }
    /* the code area's alignment pad (after the last group) */
#pragma omp single nowait
    memset(codes + NG * K8 * 64, 0x88, int4p_code_bytes(N, w->k) - (size_t)(NG * K8 * 64));
}

/* The inverse (packed -> the checkpoint layout: codes u8 [n, k/2], scales f32 [n, ngrp]), for a model that
 * needs the stored layout (exact precision) from a checkpoint that stores only the packed one. Team-callable
 * (no barrier); every output byte is written. */
void dsv3_int4_unpack_team(const dsv3_weight *w, void *data, void *scale)
{
    const int64_t N = w->n, K2 = w->k / 2, ngrp = int4p_ngrp(w);
    uint8_t *out = data;
    float *sc = scale;
#pragma omp for schedule(static) nowait
    for (int64_t n = 0; n < N; n++) {
        uint8_t *row = out + n * K2;
        for (int64_t b = 0; b < K2; b++) { /* byte b: columns 2b (low nibble), 2b + 1 (high), two's complement */
            const int lo = int4p_code(w, n, 2 * b), hi = int4p_code(w, n, 2 * b + 1);
            row[b] = (uint8_t)((lo & 15) | (hi & 15) << 4);
        }
        for (int64_t j = 0; j < ngrp; j++)
            sc[n * ngrp + j] = int4p_scale(w, n, j);
    }
}

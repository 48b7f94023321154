/* The int4 packer: checkpoint layout (dsv3_quant.h) -> the packed layout (int4p.h), once at load. */
#include "linear/int4p.h"

#include "linear/act_q8.h"

size_t dsv3_int4_packed_bytes(int64_t n, int64_t k, int group)
{
    if (n <= 0 || k <= 0 || group <= 0)
        return 0;
    return int4p_code_bytes(n, k) + (size_t)((n + 15) / 16) * (size_t)((k + group - 1) / group) * 16 * sizeof(float);
}

/* The 8 natural nibbles of row n's columns [8c, 8c + 8) (code 0 past k) as one word, nibble j = column 8c + j. */
static uint32_t natural_chunk(const dsv3_weight *w, int64_t n, int64_t c)
{
    const uint8_t *row = (const uint8_t *)w->data + n * (w->k / 2);
    const int64_t have = w->k / 2 - 4 * c; /* bytes of this chunk inside the row */
    uint8_t b[4] = {0, 0, 0, 0};
    memcpy(b, row + 4 * c, (size_t)(have < 4 ? have : 4));
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

void dsv3_int4_pack_team(const dsv3_weight *w, void *buf)
{
    const int64_t N = w->n, NG = (N + 15) / 16, K8 = (w->k + 7) / 8, ngrp = (w->k + w->group - 1) / w->group;
    uint8_t *codes = buf;
    float *scales = (float *)(void *)(codes + int4p_code_bytes(N, w->k));
    const float *src = w->scale;
#pragma omp for schedule(static) nowait
    for (int64_t g = 0; g < NG; g++) {
        uint8_t *out = codes + g * K8 * 64;
        for (int r = 0; r < 16; r++) {
            const int64_t n = 16 * g + r;
            for (int64_t c = 0; c < K8; c++) {
                /* two's complement nibble v -> v ^ 8 = code + 8; packed byte i = nibbles i and i + 4 */
                const uint32_t v = n < N ? natural_chunk(w, n, c) ^ 0x88888888u : 0x88888888u;
                uint32_t p = 0;
                for (int i = 0; i < 4; i++)
                    p |= (((v >> (4 * i)) & 15u) | ((v >> (16 + 4 * i)) & 15u) << 4) << (8 * i);
                memcpy(out + c * 64 + r * 4, &p, 4);
            }
            for (int64_t j = 0; j < ngrp; j++)
                scales[(g * ngrp + j) * 16 + r] = n < N ? src[n * ngrp + j] : 0.0f;
        }
    }
    /* the code area's alignment pad (after the last group) */
#pragma omp single nowait
    memset(codes + NG * K8 * 64, 0x88, int4p_code_bytes(N, w->k) - (size_t)(NG * K8 * 64));
}

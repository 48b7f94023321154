/* Fast activation mode: x f32 -> Q8 (int8 codes per block of 32 columns + one f32 scale per block),
 * in the layout of the kernel that will read it (dsv3_xlayout DSV3_X_Q8*):
 *   - DSV3_X_Q8      natural order, no lane arrays (scalar twin; AVX2 int8 uses the sign trick)
 *   - DSV3_X_Q8_L4   natural order; lanes of 4 columns (one vpdpbusd int32 lane; AVX-512 int8, sign trick)
 *   - DSV3_X_Q8_EO64 / EO128: each full 64 / 128 block stored as its even then its odd columns (the
 *                    low / high nibbles of the int4 bytes); lanes of 8 columns; offset 8, because the
 *                    int4 kernels feed the nibbles as u8 w ^ 8 = w + 8
 *   - DSV3_X_Q8_O8   natural order, no lane arrays, offset 8 (packed int4, int4p.h: e / e4 per full 32-block)
 *   - DSV3_X_Q8_EO64C the EO64 order and lanes without e / e4, with c16 (the AVX2 nvfp4 kernel feeds its
 *                    doubled e2m1 codes as u8 2 e2m1 + 12 and subtracts c16 = 12 * (sum of the codes) from
 *                    each 16-column int32 dot: exact, no sign trick) and d16, the d of each 16-block in
 *                    the kernel's lane order
 * dl[lane] = d of the lane's block, so that a kernel scales an int32 lane vector with one multiply.
 * The int4 kernels' offset adds off * (sum of the block's codes) to every block dot; they take it out once
 * per output row, in f32, from e[b] = -off * d[b] * (sum of block b's codes) (times the weight scale of
 * the block's group: e4 holds the sums of e per 128 columns for 128-column groups), instead of a
 * compensation lane added to every int32 dot (one load less per weight vector).
 * The K tail beyond the last full layout block stays in natural order (kernels run the reference). */
#include "linear/act_q8.h"

#include <string.h>

#include "dsv3.h"

typedef struct {
    int64_t blk;   /* columns of one layout block (1: natural) */
    int64_t lane;  /* columns of one dot lane (0: no lane arrays) */
    int32_t off;   /* weight offset the kernel adds (its compensation e / e4 written here; 0: none) */
    int eo;        /* even / odd split within each block */
    int32_t off16; /* weight offset whose compensation c16 (int32 per 16 columns of each full 128) is written */
} q8_geom;

static q8_geom geom(int layout)
{
    switch (layout) {
    case DSV3_X_Q8_L4: return (q8_geom){64, 4, 0, 0, 0};
    case DSV3_X_Q8_EO64: return (q8_geom){64, 8, 8, 1, 0};
    case DSV3_X_Q8_EO128: return (q8_geom){128, 8, 8, 1, 0};
    case DSV3_X_Q8_O8: return (q8_geom){32, 0, 8, 0, 0};
    case DSV3_X_Q8_EO64C: return (q8_geom){64, 8, 0, 1, 12};
    default: return (q8_geom){1, 0, 0, 0, 0};
    }
}

int dsv3_act_layout_is_q8(int layout)
{
    return (layout >= DSV3_X_Q8 && layout <= DSV3_X_Q8_EO128) || layout == DSV3_X_Q8_O8 || layout == DSV3_X_Q8_EO64C;
}

static int64_t up64(int64_t b) { return (b + 63) / 64 * 64; }

/* columns in full layout blocks, and the per-row counts of lanes, e, e4 and c16 entries */
typedef struct {
    int64_t kb, lanes, ne, ne4, nc16;
} q8_sizes;

static q8_sizes sizes(int64_t k, int layout)
{
    const q8_geom g = geom(layout);
    const int64_t kb = g.blk > 1 ? k / g.blk * g.blk : 0;
    return (q8_sizes){kb, g.lane ? kb / g.lane : 0, g.off ? kb / DSV3_Q8_BLOCK : 0, g.off ? (kb + 127) / 128 : 0,
                      g.off16 ? kb / 128 * 8 : 0};
}

size_t dsv3_act_q8_bytes(int64_t m, int64_t k, int layout)
{
    const q8_sizes z = sizes(k, layout);
    const int64_t nb = (k + DSV3_Q8_BLOCK - 1) / DSV3_Q8_BLOCK;
    return (size_t)(up64(m * k) + up64(m * nb * 4) + up64(m * z.lanes * 4) + up64(m * z.ne * 4) + up64(m * z.ne4 * 4) +
                    2 * up64(m * z.nc16 * 4));
}

/* One block of up to 32 columns: the rounding rule of the fast mode (see act_q8.h). */
static float quant_block(const float *x, int64_t len, int8_t *q)
{
    float amax = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        const float v = x[j] < 0 ? -x[j] : x[j];
        amax = (v > amax || v != v) ? v : amax; /* a NaN sticks */
    }
    const float d = amax / 127.0f;
    if (!(d > 0.0f && d <= 3.0e38f)) { /* zero block, or non-finite input (d NaN / inf: output NaN) */
        memset(q, 0, (size_t)len);
        return d;
    }
    for (int64_t j = 0; j < len; j++) {
        /* round half to even: adding and subtracting 1.5 * 2^23 rounds |v| < 2^22 in the default (RNE)
         * mode, exactly as nearbyintf, and vectorises without SSE4.1 */
        const float v = x[j] / d, r = (v + 12582912.0f) - 12582912.0f;
        const int iv = (int)r;
        q[j] = (int8_t)(iv > 127 ? 127 : (iv < -127 ? -127 : iv));
    }
    return d;
}

float dsv3_act_q8_block32_scalar(const float *x, int8_t *q) { return quant_block(x, DSV3_Q8_BLOCK, q); }

void dsv3_act_q8_describe(int64_t m, int64_t k, int layout, void *buf, dsv3_act_q8 *out)
{
    const q8_sizes z = sizes(k, layout);
    const int64_t nb = (k + DSV3_Q8_BLOCK - 1) / DSV3_Q8_BLOCK;
    char *p = buf;
    out->q = (const int8_t *)p;
    out->d = (const float *)(p += up64(m * k));
    p += up64(m * nb * 4);
    out->dl = z.lanes ? (const float *)p : NULL;
    p += up64(m * z.lanes * 4);
    out->e = z.ne ? (const float *)p : NULL;
    p += up64(m * z.ne * 4);
    out->e4 = z.ne4 ? (const float *)p : NULL;
    p += up64(m * z.ne4 * 4);
    out->c16 = z.nc16 ? (const int32_t *)p : NULL;
    p += up64(m * z.nc16 * 4);
    out->d16 = z.nc16 ? (const float *)p : NULL;
    out->lanes = z.lanes;
    out->kb = z.kb;
}

void dsv3_act_q8_fill_team(const float *x, int64_t m, int64_t k, int layout, int isa, const dsv3_act_q8 *out)
{
    float (*const block32)(const float *, int8_t *) =
        isa >= DSV3_ISA_AVX2 ? dsv3_act_q8_block32_avx2 : dsv3_act_q8_block32_scalar;
    const q8_geom g = geom(layout);
    const q8_sizes z = sizes(k, layout);
    const int64_t nb = (k + DSV3_Q8_BLOCK - 1) / DSV3_Q8_BLOCK, kb = z.kb, nc = (k + 1023) / 1024;
    int8_t *q = (int8_t *)(void *)out->q;
    float *d = (float *)(void *)out->d, *dl = (float *)(void *)out->dl;
    float *e = (float *)(void *)out->e, *e4 = (float *)(void *)out->e4;
    int32_t *c16 = (int32_t *)(void *)out->c16;
    float *d16 = (float *)(void *)out->d16;
    static const int8_t lane16[8] = {0, 1, 4, 5, 2, 3, 6, 7}; /* c16 position of 16-block j of a 128 */
#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < m * nc; t++) { /* 1024 is a multiple of every block size */
        const int64_t r = t / nc, j0 = t % nc * 1024, j1 = j0 + 1024 < k ? j0 + 1024 : k;
        const float *xr = x + r * k;
        int8_t *qr = q + r * k, tmp[128];
        for (int64_t j = j0; j < j1; j += g.blk > DSV3_Q8_BLOCK ? g.blk : DSV3_Q8_BLOCK) {
            const int64_t bl = g.blk > DSV3_Q8_BLOCK ? g.blk : DSV3_Q8_BLOCK;
            const int64_t len = j + bl <= j1 ? bl : j1 - j, full = g.blk > 1 && j + g.blk <= kb;
            int8_t *dst = full ? tmp : qr + j; /* natural order outside full layout blocks */
            for (int64_t o = 0; o < len; o += DSV3_Q8_BLOCK)
                d[r * nb + (j + o) / DSV3_Q8_BLOCK] = len - o >= DSV3_Q8_BLOCK
                                                          ? block32(xr + j + o, dst + o)
                                                          : quant_block(xr + j + o, len - o, dst + o);
            if (!full)
                continue;
            for (int64_t o = 0; o < g.blk; o++) /* natural column o -> its place in the block */
                qr[j + (g.eo ? (o & 1) * (g.blk / 2) + (o >> 1) : o)] = tmp[o];
            for (int64_t l = 0; g.lane && l < g.blk / g.lane; l++)
                dl[r * z.lanes + (j + l * g.lane) / g.lane] = d[r * nb + (j + l * g.lane) / DSV3_Q8_BLOCK];
            for (int64_t o = 0; o < g.blk && g.off; o += DSV3_Q8_BLOCK) {
                int32_t s = 0;
                for (int64_t i = o; i < o + DSV3_Q8_BLOCK; i++)
                    s += tmp[i];
                const int64_t b = (j + o) / DSV3_Q8_BLOCK;
                e[r * z.ne + b] = (float)(-g.off * s) * d[r * nb + b]; /* |off * s| <= 2^19: exact in f32 */
            }
            for (int64_t o = 0; o < g.blk && g.off16 && j + o < z.nc16 / 8 * 128; o += 16) {
                int32_t s = 0;
                for (int64_t i = o; i < o + 16; i++)
                    s += tmp[i];
                const int64_t b = (j + o) / 16; /* natural 16-block */
                c16[r * z.nc16 + b / 8 * 8 + lane16[b % 8]] = g.off16 * s;
                d16[r * z.nc16 + b / 8 * 8 + lane16[b % 8]] = d[r * nb + b / 2];
            }
        }
        for (int64_t c = j0; c < j1 && c < kb && g.off; c += 128) { /* e4 from this chunk's e (128 divides 1024) */
            float s = 0.0f;
            for (int64_t b = c / DSV3_Q8_BLOCK; b < (c + 128) / DSV3_Q8_BLOCK && b < kb / DSV3_Q8_BLOCK; b++)
                s += e[r * z.ne + b];
            e4[r * z.ne4 + c / 128] = s;
        }
    }
}

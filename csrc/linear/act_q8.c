/* Fast activation mode: x f32 -> Q8 (int8 codes per block of 32 columns + one f32 scale per block),
 * in the layout of the kernel that will read it (dsv3_xlayout DSV3_X_Q8*):
 *   - DSV3_X_Q8      natural order, no lane arrays (scalar twin; AVX2 int8 uses the sign trick)
 *   - DSV3_X_Q8_L4   natural order; lanes of 4 columns (one vpdpbusd int32 lane); c = -128 * lane sum,
 *                    because the AVX-512 int8 kernel feeds the weights as u8 w ^ 0x80 = w + 128
 *   - DSV3_X_Q8_EO64 / EO128: each full 64 / 128 block stored as its even then its odd columns (the
 *                    low / high nibbles of the int4 bytes); lanes of 8 columns, c = -8 * lane sum,
 *                    because the int4 kernels feed the nibbles as u8 w ^ 8 = w + 8
 * dl[lane] = d of the lane's block, so that a kernel scales an int32 lane vector with one multiply.
 * The K tail beyond the last full layout block stays in natural order (kernels run the reference). */
#include "linear/act_q8.h"

#include <string.h>

#include "dsv3.h"

typedef struct {
    int64_t blk;   /* columns of one layout block (1: natural) */
    int64_t lane;  /* columns of one dot lane (0: no lane arrays) */
    int32_t off;   /* weight offset the kernel adds (compensated here) */
    int eo;        /* even / odd split within each block */
} q8_geom;

static q8_geom geom(int layout)
{
    switch (layout) {
    case DSV3_X_Q8_L4: return (q8_geom){64, 4, 128, 0};
    case DSV3_X_Q8_EO64: return (q8_geom){64, 8, 8, 1};
    case DSV3_X_Q8_EO128: return (q8_geom){128, 8, 8, 1};
    default: return (q8_geom){1, 0, 0, 0};
    }
}

int dsv3_act_layout_is_q8(int layout)
{
    return layout >= DSV3_X_Q8 && layout <= DSV3_X_Q8_EO128;
}

static int64_t up64(int64_t b) { return (b + 63) / 64 * 64; }

size_t dsv3_act_q8_bytes(int64_t m, int64_t k, int layout)
{
    const q8_geom g = geom(layout);
    const int64_t nb = (k + DSV3_Q8_BLOCK - 1) / DSV3_Q8_BLOCK, lanes = g.lane ? k / g.blk * g.blk / g.lane : 0;
    return (size_t)(up64(m * k) + up64(m * nb * 4) + 2 * up64(m * lanes * 4));
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

void dsv3_act_q8_describe(int64_t m, int64_t k, int layout, void *buf, dsv3_act_q8 *out)
{
    const q8_geom g = geom(layout);
    const int64_t nb = (k + DSV3_Q8_BLOCK - 1) / DSV3_Q8_BLOCK, kb = k / g.blk * g.blk;
    const int64_t lanes = g.lane ? kb / g.lane : 0;
    out->q = buf;
    out->d = (float *)((char *)buf + up64(m * k));
    out->c = g.lane ? (int32_t *)((char *)out->d + up64(m * nb * 4)) : NULL;
    out->dl = g.lane ? (float *)((char *)out->c + up64(m * lanes * 4)) : NULL;
    out->lanes = lanes;
    out->kb = g.blk > 1 ? kb : 0;
}

void dsv3_act_q8_fill_team(const float *x, int64_t m, int64_t k, int layout, const dsv3_act_q8 *out)
{
    const q8_geom g = geom(layout);
    const int64_t nb = (k + DSV3_Q8_BLOCK - 1) / DSV3_Q8_BLOCK, kb = k / g.blk * g.blk;
    const int64_t lanes = out->lanes, nc = (k + 1023) / 1024;
    int8_t *q = (int8_t *)(void *)out->q;
    float *d = (float *)(void *)out->d, *dl = (float *)(void *)out->dl;
    int32_t *c = (int32_t *)(void *)out->c;
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
                d[r * nb + (j + o) / DSV3_Q8_BLOCK] =
                    quant_block(xr + j + o, len - o < DSV3_Q8_BLOCK ? len - o : DSV3_Q8_BLOCK, dst + o);
            if (!full)
                continue;
            for (int64_t o = 0; o < g.blk; o++) /* natural column o -> its place in the block */
                qr[j + (g.eo ? (o & 1) * (g.blk / 2) + (o >> 1) : o)] = tmp[o];
            for (int64_t l = 0; l < g.blk / g.lane; l++) {
                int32_t s = 0;
                for (int64_t o = l * g.lane; o < (l + 1) * g.lane; o++)
                    s += tmp[o];
                const int64_t li = (j + l * g.lane) / g.lane;
                c[r * lanes + li] = -g.off * s;
                dl[r * lanes + li] = d[r * nb + (j + l * g.lane) / DSV3_Q8_BLOCK];
            }
        }
    }
}

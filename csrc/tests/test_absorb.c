/* Absorbed attention over kv_b_proj in its stored format (csrc/mla/attend.c, wsum_rows_*.c):
 *  - the weighted-row-sum kernels (W_UK's product) equal, bit for bit, the f32 wsum kernel over the rows
 *    dsv3_dequantize gives, on every ISA (scalar twin included), for every format, row offsets across
 *    fp8's 128-row blocks, column tails and p-row tiles;
 *  - dsv3_mla_absorb keeps no dequantised copy: it holds only the per-head W_UV views (whose rows
 *    dequantise to exactly kv_b_proj's W_UV rows), except the stated f32 fallback (fp8_block with head rows
 *    off its 128-row scale blocks), and less than the f32 W_UK/W_UV copies it replaced. */
#include <stdlib.h>
#include <string.h>

#include "ctest.h"
#include "dsv3_mla.h"
#include "dsv3_quant.h"

static const struct {
    dsv3_format fmt;
    int group;
} FMTS[] = {{DSV3_FMT_F32, 0},  {DSV3_FMT_BF16, 0}, {DSV3_FMT_FP8_BLOCK, 128}, {DSV3_FMT_NVFP4, 0},
            {DSV3_FMT_INT8, 0}, {DSV3_FMT_INT4, 32}, {DSV3_FMT_INT4, 128}};
#define NFMT (int)(sizeof FMTS / sizeof FMTS[0])

static void wsum_rows_cases(const dsv3_isa *isas, int n_isa, uint64_t *rng)
{
    const int64_t N = 300, Ks[] = {512, 144, 40, 16}, n0s[] = {0, 130}, Ts[] = {1, 100}, nps[] = {1, 3, 5, 9};
    dsv3_error err = {0};
    for (int f = 0; f < NFMT; f++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
            const int64_t K = Ks[ki];
            ctest_qweight q;
            if (!ctest_qweight_random(&q, FMTS[f].fmt, FMTS[f].group, N, K, 0.7f, rng))
                continue; /* shape the format does not store (nvfp4 K % 16) */
            float *deq = malloc((size_t)(N * K) * sizeof(float)), *p = malloc(9 * 100 * sizeof(float));
            float *ref = malloc((size_t)(9 * K) * sizeof(float)), *out = malloc((size_t)(9 * K) * sizeof(float));
            CHECK_OK(dsv3_dequantize(&q.w, deq, &err), &err);
            ctest_fill(p, 9 * 100, 1.0f, rng);
            for (size_t a = 0; a < 2; a++)
                for (size_t b = 0; b < 2; b++)
                    for (size_t c = 0; c < 4; c++) {
                        const int64_t n0 = n0s[a], T = Ts[b], np = nps[c];
                        CHECK_OK(dsv3_mla_wsum(p, np, T, deq + n0 * K, K, T, K, ref, K, DSV3_ISA_SCALAR, &err), &err);
                        for (int i = 0; i < n_isa; i++) {
                            memset(out, 0xff, (size_t)(np * K) * sizeof(float));
                            CHECK_OK(dsv3_mla_wsum_rows(p, np, T, &q.w, n0, T, out, K, isas[i], &err), &err);
                            CHECK(memcmp(out, ref, (size_t)(np * K) * sizeof(float)) == 0,
                                  "wsum_rows %s (group %d) K=%lld n0=%lld T=%lld np=%lld isa %s differs from wsum "
                                  "over the dequantised rows", dsv3_formats[FMTS[f].fmt].name, FMTS[f].group,
                                  (long long)K, (long long)n0, (long long)T, (long long)np, dsv3_isa_name(isas[i]));
                        }
                    }
            CHECK_FAIL(dsv3_mla_wsum_rows(p, 1, 100, &q.w, 250, 100, out, K, -1, &err), DSV3_E_VALUE, &err);
            free(deq);
            free(p);
            free(ref);
            free(out);
            ctest_qweight_free(&q);
        }
}

static void absorb_cases(uint64_t *rng)
{
    /* {heads, kv_lora, nope, v}: V3's head rows (nope = v = 128: every W_UV row block starts on a 128-row
     * fp8 block) and transformers' tiny tester (nope = v = 32: fp8 takes the f32 fallback rows) */
    const int64_t dims[2][4] = {{2, 64, 128, 128}, {3, 32, 32, 32}};
    dsv3_error err = {0};
    for (int c = 0; c < 2; c++)
        for (int f = 0; f < NFMT; f++) {
            dsv3_mla_dims d = {0};
            d.heads = dims[c][0];
            d.kv_lora = dims[c][1];
            d.nope = dims[c][2];
            d.v = dims[c][3];
            const int64_t H = d.heads, R = d.kv_lora, kvw = d.nope + d.v;
            ctest_qweight q;
            if (!ctest_qweight_random(&q, FMTS[f].fmt, FMTS[f].group, H * kvw, R, 0.7f, rng))
                continue;
            dsv3_mla_weights w;
            memset(&w, 0, sizeof w);
            w.kv_b_proj = q.w;
            CHECK(dsv3_mla_absorbed_bytes(&d, &w) == 0, "bytes before absorb");
            CHECK_OK(dsv3_mla_absorb(&d, &w, -1, &err), &err);
            const int fallback = FMTS[f].fmt == DSV3_FMT_FP8_BLOCK && c == 1;
            const size_t views = (size_t)H * sizeof(dsv3_weight), old = (size_t)(H * kvw * R) * sizeof(float);
            const size_t want = views + (fallback ? (size_t)(H * d.v * R) * sizeof(float) : 0);
            CHECK(dsv3_mla_absorbed_bytes(&d, &w) == want && (w.uv_f32 != NULL) == fallback,
                  "%s dims %d: absorbed bytes %zu, want %zu (fallback %d)", dsv3_formats[FMTS[f].fmt].name, c,
                  dsv3_mla_absorbed_bytes(&d, &w), want, fallback);
            CHECK(dsv3_mla_absorbed_bytes(&d, &w) < old, "absorb holds %zu bytes, the f32 copies were %zu",
                  dsv3_mla_absorbed_bytes(&d, &w), old);
            float *all = malloc((size_t)(H * kvw * R) * sizeof(float)), *uv = malloc((size_t)(d.v * R) * sizeof(float));
            CHECK_OK(dsv3_dequantize(&q.w, all, &err), &err);
            for (int64_t h = 0; h < H; h++) {
                CHECK(w.w_uv[h].n == d.v && w.w_uv[h].k == R, "view shape");
                CHECK_OK(dsv3_dequantize(&w.w_uv[h], uv, &err), &err);
                CHECK(memcmp(uv, all + (h * kvw + d.nope) * R, (size_t)(d.v * R) * sizeof(float)) == 0,
                      "%s dims %d head %lld: the W_UV view is not kv_b_proj's W_UV rows",
                      dsv3_formats[FMTS[f].fmt].name, c, (long long)h);
            }
            free(all);
            free(uv);
            dsv3_mla_absorb_free(&w);
            CHECK(dsv3_mla_absorbed_bytes(&d, &w) == 0 && !w.w_uv && !w.uv_f32, "absorb_free");
            w.kv_b_proj.n = H * kvw - 1; /* a kv_b_proj of the wrong shape is refused with a message */
            CHECK_FAIL(dsv3_mla_absorb(&d, &w, -1, &err), DSV3_E_VALUE, &err);
            ctest_qweight_free(&q);
        }
}

void test_absorb(void)
{
    dsv3_isa isas[DSV3_ISA_COUNT];
    const int n_isa = ctest_isas(isas);
    uint64_t rng = 77;
    wsum_rows_cases(isas, n_isa, &rng);
    absorb_cases(&rng);
}

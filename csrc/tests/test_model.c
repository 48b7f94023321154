/* The model API driven as the binding drives it (create, slots, fill, prepare, forward, reset,
 * free) on tiny random models: weights in every format, absorbed vs naive attention, prefill vs
 * decode, every ISA, probes, error paths, and teardown after failed create / prepare (LeakSanitizer
 * checks nothing leaks). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ctest.h"
#include "dsv3_batch.h"
#include "dsv3_batch_mtp.h"
#include "dsv3_dtypes.h"
#include "dsv3_model.h"
#include "dsv3_mtp.h"
#include "dsv3_quant.h"

enum { MAX_BUFS = 4096, CAP = 16 };

typedef struct {
    void *bufs[MAX_BUFS];
    int n;
    uint64_t rng;
} arena;

static void *arena_alloc(arena *a, size_t bytes)
{
    void *p = a->n < MAX_BUFS ? malloc(bytes ? bytes : 1) : NULL;
    if (p)
        a->bufs[a->n++] = p;
    return p;
}

static void arena_free(arena *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->bufs[i]);
    a->n = 0;
}

static void base_config(dsv3_model_config *c, float *inv_freq)
{
    memset(c, 0, sizeof *c);
    c->vocab_size = 37;
    c->hidden_size = 64;
    c->intermediate_size = 96;
    c->moe_intermediate_size = 32;
    c->num_hidden_layers = 3;
    c->num_attention_heads = 3;
    c->q_lora_rank = 48;
    c->kv_lora_rank = 32;
    c->qk_nope_head_dim = 16;
    c->qk_rope_head_dim = 8;
    c->v_head_dim = 12;
    c->n_routed_experts = 8;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 2;
    c->n_group = 4;
    c->topk_group = 2;
    c->first_k_dense_replace = 1;
    c->norm_topk_prob = 1;
    c->rope_interleave = 1;
    c->routed_scaling_factor = 2.5f;
    c->rms_norm_eps = 1e-6f;
    c->group_mask_value = -INFINITY;
    c->softmax_scale = 1.0f / sqrtf(24.0f);
    c->rope_attention_scaling = 1.0f;
    c->scoring_func = DSV3_SCORE_SIGMOID;
    c->topk_method = DSV3_TOPK_NOAUX_TC;
    for (int i = 0; i < 4; i++)
        inv_freq[i] = powf(10000.0f, -(float)(2 * i) / 8.0f);
    c->rope_inv_freq = inv_freq;
}

/* A second family member: plain q_proj, attention biases, softmax greedy routing, tied embeddings,
 * no shared experts, half-rotated rope. */
static void variant_config(dsv3_model_config *c, float *inv_freq)
{
    base_config(c, inv_freq);
    c->q_lora_rank = 0;
    c->attention_bias = 1;
    c->scoring_func = DSV3_SCORE_SOFTMAX;
    c->topk_method = DSV3_TOPK_GREEDY;
    c->n_group = 0;
    c->topk_group = 0;
    c->norm_topk_prob = 0;
    c->group_mask_value = 0.0f;
    c->tie_word_embeddings = 1;
    c->n_shared_experts = 0;
    c->rope_interleave = 0;
    c->routed_scaling_factor = 1.0f;
}

/* Fills one slot with random values; matrices cycle through the formats (the embedding and the
 * router stay float). Returns 0 when out of memory. */
static int fill_slot(arena *a, const dsv3_tensor_slot *t, int64_t index)
{
    dsv3_error err = {0};
    const int64_t n = t->n, k = t->k;
    float *src = arena_alloc(a, (size_t)(n * k) * sizeof(float));
    if (!src)
        return 0;
    const int is_norm = t->is_vector && strstr(t->name, "norm") != NULL;
    ctest_fill(src, n * k, t->is_vector ? 0.1f : 1.0f / sqrtf((float)k), &a->rng);
    if (is_norm)
        for (int64_t i = 0; i < k; i++)
            src[i] += 1.0f;
    dsv3_weight *w = t->weight;
    memset(w, 0, sizeof *w);
    w->n = n;
    w->k = k;
    w->scale2 = 1.0f;
    static const dsv3_format cycle[] = {DSV3_FMT_F32, DSV3_FMT_BF16, DSV3_FMT_FP8_BLOCK, DSV3_FMT_INT8,
                                        DSV3_FMT_INT4, DSV3_FMT_NVFP4};
    dsv3_format fmt = cycle[index % 6];
    if (t->is_vector || strstr(t->name, "embed_tokens") || strstr(t->name, "mlp.gate.weight"))
        fmt = index % 2 && !strstr(t->name, "mlp.gate.weight") ? DSV3_FMT_BF16 : DSV3_FMT_F32;
    if (fmt == DSV3_FMT_NVFP4 && k % 16)
        fmt = DSV3_FMT_INT8;
    const int group = fmt == DSV3_FMT_INT4 ? 32 : fmt == DSV3_FMT_FP8_BLOCK ? 128 : 0;
    size_t bytes;
    int64_t sr, sc;
    if (dsv3_quant_layout(fmt, n, k, group, &bytes, &sr, &sc, &err) != DSV3_OK) {
        CHECK(0, "%s: layout: %s", t->name, err.msg);
        return 0;
    }
    void *data = arena_alloc(a, bytes), *scale = sr ? arena_alloc(a, (size_t)(sr * sc) * 4) : NULL;
    if (!data || (sr && !scale))
        return 0;
    CHECK_OK(dsv3_quantize(fmt, src, n, k, group, 0, data, scale, &w->scale2, &err), &err);
    w->fmt = fmt;
    w->data = data;
    w->scale = scale;
    w->group = group;
    return 1;
}

/* Creates a model and fills every non-optional slot (or copies the weights of `like`). */
static int build_mtp; /* build() also enables the MTP layer (model_batch_mtp) */

static dsv3_model *build(const dsv3_model_config *c, dsv3_attn_mode mode, arena *a, dsv3_model *like)
{
    dsv3_error err = {0};
    dsv3_model *m = NULL;
    CHECK_OK(dsv3_model_create(c, CAP, mode, &m, &err), &err);
    if (!m)
        return NULL;
    if (build_mtp)
        CHECK_OK(dsv3_model_enable_mtp(m, &err), &err);
    const int64_t count = dsv3_model_slots(m, NULL);
    dsv3_tensor_slot *slots = calloc((size_t)count, sizeof *slots), *src = NULL;
    int ok = slots != NULL;
    if (ok)
        dsv3_model_slots(m, slots);
    if (ok && like) {
        ok = dsv3_model_slots(like, NULL) == count && (src = calloc((size_t)count, sizeof *src)) != NULL;
        if (ok)
            dsv3_model_slots(like, src);
    }
    for (int64_t i = 0; ok && i < count; i++) {
        if (slots[i].optional)
            continue;
        if (src) {
            CHECK(strcmp(src[i].name, slots[i].name) == 0, "slot %lld: %s vs %s", (long long)i, src[i].name,
                  slots[i].name);
            *slots[i].weight = *src[i].weight;
        } else {
            ok = fill_slot(a, &slots[i], i);
        }
    }
    free(slots);
    free(src);
    if (ok)
        CHECK_OK(dsv3_model_prepare(m, -1, &err), &err);
    if (!ok || !m->prepared) {
        CHECK(0, "building the model failed");
        dsv3_model_free(m);
        return NULL;
    }
    return m;
}

static float max_abs(const float *v, int64_t n)
{
    float a = 0.0f;
    for (int64_t i = 0; i < n; i++)
        a = fmaxf(a, fabsf(v[i]));
    return a;
}

static void compare(const char *what, const float *a, const float *b, int64_t n, float rel)
{
    const float tol = rel * fmaxf(max_abs(b, n), 1.0f);
    int64_t bad = 0, first = 0;
    for (int64_t i = 0; i < n; i++)
        if (!(fabsf(a[i] - b[i]) <= tol) && !bad++)
            first = i;
    CHECK(!bad, "%s: %lld of %lld differ, first [%lld]: %.7g vs %.7g (tol %.3g)", what, (long long)bad, (long long)n,
          (long long)first, a[first], b[first], tol);
}

/* Prefill 5 tokens then decode 2, on `isa`; out [7, V]. */
static void run_sequence(dsv3_model *m, const int64_t *ids, float *out, int isa)
{
    dsv3_error err = {0};
    const int64_t V = m->cfg.vocab_size;
    dsv3_model_reset(m);
    CHECK_OK(dsv3_model_forward(m, ids, 5, out, isa, &err), &err);
    const size_t allocs = dsv3_linear_fallback_allocs();
    CHECK_OK(dsv3_model_forward(m, ids + 5, 1, out + 5 * V, isa, &err), &err);
    CHECK_OK(dsv3_model_forward(m, ids + 6, 1, out + 6 * V, isa, &err), &err);
    /* decode steps take every linear's activation buffers from the workspace (this thread only runs here) */
    CHECK(dsv3_linear_fallback_allocs() == allocs, "a decode step allocated %zu linear activation buffers (isa %d)",
          dsv3_linear_fallback_allocs() - allocs, isa);
    CHECK(m->cache_len == 7, "cache_len %lld after 7 tokens", (long long)m->cache_len);
}

static void model_errors(dsv3_model *m, const int64_t *ids)
{
    dsv3_error err = {0};
    const int64_t V = m->cfg.vocab_size, D = m->cfg.hidden_size;
    float *lo = malloc((size_t)(CAP + 1) * (size_t)V * sizeof(float)), x[3 * 64] = {0}, out[3 * 64], w[6];
    int64_t bad[2] = {3, -1}, idx[6];
    if (!lo)
        return;
    dsv3_model_reset(m);
    CHECK_OK(dsv3_model_forward(m, ids, 3, lo, -1, &err), &err);
    CHECK_FAIL(dsv3_model_forward(m, bad, 2, lo, -1, &err), DSV3_E_VALUE, &err);
    bad[1] = V;
    CHECK_FAIL(dsv3_model_forward(m, bad, 2, lo, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_forward(m, ids, 0, lo, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_forward(m, ids, -2, lo, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_forward(m, ids, CAP - 2, lo, -1, &err), DSV3_E_VALUE, &err); /* 3 + 14 > 16 */
    CHECK_FAIL(dsv3_model_forward(m, ids, 1, lo, 11, &err), DSV3_E_VALUE, &err);
    CHECK(m->cache_len == 3, "a failed forward changed cache_len to %lld", (long long)m->cache_len);
    CHECK_OK(dsv3_model_forward(m, ids + 3, 1, lo, -1, &err), &err);
    CHECK_FAIL(dsv3_model_run_module(m, DSV3_MOD_ATTENTION, 7, x, 3, 0, 0, out, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_run_module(m, DSV3_MOD_ATTENTION, -1, x, 3, 0, 0, out, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_run_module(m, (dsv3_module_kind)99, 0, x, 3, 0, 0, out, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_run_module(m, DSV3_MOD_ATTENTION, 0, x, 0, 0, 0, out, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_run_module(m, DSV3_MOD_ATTENTION, 0, x, 3, -1, 0, out, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_run_module(m, DSV3_MOD_ATTENTION, 0, x, 3, CAP, 1, out, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_run_module(m, DSV3_MOD_ATTENTION, 0, x, 3, INT64_MAX - 1, 0, out, -1, &err), DSV3_E_VALUE,
               &err);
    CHECK_FAIL(dsv3_model_route(m, 0, x, 3, w, idx, -1, &err), DSV3_E_VALUE, &err); /* layer 0 is dense */
    CHECK_OK(dsv3_model_route(m, 1, x, 3, w, idx, -1, &err), &err);
    for (int i = 0; i < 6; i++)
        idx[i] = i;
    idx[4] = m->cfg.n_routed_experts;
    CHECK_FAIL(dsv3_model_experts(m, 1, x, 3, idx, w, out, -1, &err), DSV3_E_VALUE, &err);
    idx[4] = -1;
    CHECK_FAIL(dsv3_model_experts(m, 1, x, 3, idx, w, out, -1, &err), DSV3_E_VALUE, &err);
    int64_t pos[2] = {0, 5};
    float cs[2 * 8], sn[2 * 8];
    CHECK_FAIL(dsv3_model_rope(m, pos, -1, cs, sn, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_rope(m, pos, INT64_MAX / 4, cs, sn, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_rope(m, NULL, 2, cs, sn, &err), DSV3_E_VALUE, &err);
    /* token counts no machine holds: refused (value or memory), never an overflowed size */
    const int64_t huge = (int64_t)1 << 50;
    CHECK_ERR(dsv3_model_run_module(m, DSV3_MOD_MLP, 0, x, huge, 0, 0, out, -1, &err), &err);
    CHECK_ERR(dsv3_model_run_module(m, DSV3_MOD_MLP, 1, x, huge, 0, 0, out, -1, &err), &err);
    CHECK_ERR(dsv3_model_run_module(m, DSV3_MOD_ATTENTION, 0, x, huge, 0, 0, out, -1, &err), &err);
    CHECK_ERR(dsv3_model_route(m, 1, x, huge, w, idx, -1, &err), &err);
    CHECK_ERR(dsv3_model_experts(m, 1, x, huge, idx, w, out, -1, &err), &err);
    (void)D;
    free(lo);
}

/* Every probe kind runs, and the decoder layer probe with the cache matches forward's inputs. */
static void model_probes(dsv3_model *m, uint64_t *rng)
{
    dsv3_error err = {0};
    const int64_t D = m->cfg.hidden_size, k = m->cfg.num_experts_per_tok, s = 3;
    float x[3 * 64], out[3 * 64], w[3 * 2];
    int64_t idx[3 * 2];
    ctest_fill(x, s * D, 1.0f, rng);
    dsv3_model_reset(m);
    for (int kind = 0; kind < DSV3_MOD_COUNT; kind++)
        for (int64_t l = 0; l < m->cfg.num_hidden_layers; l++) {
            if (kind == DSV3_MOD_SHARED_EXPERTS && (!m->layers[l].is_moe || !m->layers[l].moe.has_shared))
                continue;
            for (int64_t i = 0; i < s * D; i++)
                out[i] = NAN;
            CHECK_OK(dsv3_model_run_module(m, (dsv3_module_kind)kind, l, x, s, 2, 0, out, -1, &err), &err);
            int finite = 1;
            for (int64_t i = 0; i < s * D; i++)
                finite &= isfinite(out[i]) != 0;
            CHECK(finite, "run_module kind %d layer %lld: non-finite output", kind, (long long)l);
        }
    CHECK_OK(dsv3_model_route(m, 1, x, s, w, idx, -1, &err), &err);
    for (int64_t i = 0; i < s * k; i++)
        CHECK(idx[i] >= 0 && idx[i] < m->cfg.n_routed_experts, "router index %lld", (long long)idx[i]);
    CHECK_OK(dsv3_model_experts(m, 1, x, s, idx, w, out, -1, &err), &err);
    /* rope tables: cos(p * inv_freq) * scaling, repeated for both halves */
    int64_t pos[3] = {0, 5, 1000};
    float cs[3 * 8], sn[3 * 8];
    CHECK_OK(dsv3_model_rope(m, pos, 3, cs, sn, &err), &err);
    for (int p = 0; p < 3; p++)
        for (int j = 0; j < 8; j++) {
            const double ang = (double)(float)((float)pos[p] * m->cfg.rope_inv_freq[j % 4]);
            CHECK(fabs(cs[p * 8 + j] - cos(ang)) < 1e-5 && fabs(sn[p * 8 + j] - sin(ang)) < 1e-5,
                  "rope pos %lld dim %d: cos %g sin %g, want %g %g", (long long)pos[p], j, cs[p * 8 + j], sn[p * 8 + j],
                  cos(ang), sin(ang));
        }
}

/* The batched engine over m (csrc/model/batch.c): a ragged step of two prefills then a step of two decode
 * tokens give, for the sequence fed ids[0..7), the bits of run_sequence's logits ref [7, V]; errors. */
static void model_batch(dsv3_model *m, const int64_t *ids, const float *ref, const char *name)
{
    dsv3_error err = {0};
    const int64_t V = m->cfg.vocab_size;
    dsv3_batch *b = NULL;
    float *lo = malloc((size_t)(8 * V) * sizeof(float)), *hid = malloc((size_t)(8 * m->cfg.hidden_size) * sizeof(float));
    CHECK_OK(dsv3_batch_create(m, 3, CAP, &b, &err), &err);
    if (!b || !lo || !hid) {
        CHECK(0, "%s: batch setup failed", name);
        goto done;
    }
    const int64_t step1[8] = {ids[0], ids[1], ids[2], ids[3], ids[4], 3, 4, 5};
    const dsv3_batch_seq s1[2] = {{2, 5, DSV3_LOGITS_ALL}, {0, 3, DSV3_LOGITS_LAST}};
    CHECK(dsv3_batch_out_rows(s1, 2) == 6, "%s: out rows", name);
    CHECK_OK(dsv3_batch_forward(b, step1, s1, 2, lo, NULL, -1, &err), &err);
    CHECK(memcmp(lo, ref, (size_t)(5 * V) * sizeof(float)) == 0, "%s: batched prefill differs from forward", name);
    const int64_t step2[2] = {7, ids[5]};
    const dsv3_batch_seq s2[2] = {{0, 1, DSV3_LOGITS_NONE}, {2, 1, DSV3_LOGITS_LAST}};
    CHECK_OK(dsv3_batch_forward(b, step2, s2, 2, lo, hid, -1, &err), &err);
    CHECK(memcmp(lo, ref + 5 * V, (size_t)V * sizeof(float)) == 0, "%s: batched decode differs from forward", name);
    CHECK(dsv3_batch_length(b, 0) == 4 && dsv3_batch_length(b, 2) == 6 && dsv3_batch_length(b, 1) == 0 &&
              dsv3_batch_length(b, 3) == -1,
          "%s: slot lengths", name);
    const dsv3_batch_seq dup[2] = {{1, 1, 1}, {1, 1, 1}}, big[1] = {{2, CAP, 1}}, bad_slot[1] = {{3, 1, 1}};
    const int64_t bad_ids[2] = {V, 0};
    CHECK_FAIL(dsv3_batch_forward(b, step2, dup, 2, lo, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_batch_forward(b, step1, big, 1, lo, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_batch_forward(b, step2, bad_slot, 1, lo, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_batch_forward(b, bad_ids, s2 + 1, 1, lo, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_batch_forward(b, step2, s2 + 1, 1, NULL, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK(dsv3_batch_length(b, 2) == 6, "%s: a failed step changed a length", name);
    CHECK_OK(dsv3_batch_release(b, 2, &err), &err);
    CHECK_FAIL(dsv3_batch_release(b, -1, &err), DSV3_E_VALUE, &err);
    CHECK_OK(dsv3_batch_forward(b, step1, s1, 1, lo, NULL, -1, &err), &err); /* the slot is reused */
    CHECK(memcmp(lo, ref, (size_t)(5 * V) * sizeof(float)) == 0, "%s: reused slot differs", name);
    /* a verification chunk (speculative decoding): each row as its decode step computes it */
    const dsv3_batch_seq sv[1] = {{2, 2, DSV3_BATCH_VERIFY}};
    const dsv3_batch_seq bad_mode[1] = {{2, 1, DSV3_BATCH_HIDDEN_ALL + DSV3_LOGITS_LAST + 1}};
    const dsv3_batch_seq sh[3] = {{0, 3, DSV3_BATCH_HIDDEN_ALL + DSV3_LOGITS_LAST}, {1, 4, DSV3_BATCH_HIDDEN_ALL},
                                  {2, 2, DSV3_LOGITS_ALL}};
    CHECK(dsv3_batch_out_rows(sv, 1) == 2 && dsv3_batch_hidden_rows(sv, 1) == 2, "%s: verification out rows", name);
    CHECK(dsv3_batch_out_rows(sh, 3) == 3 && dsv3_batch_hidden_rows(sh, 3) == 9, "%s: hidden-all out rows", name);
    CHECK_FAIL(dsv3_batch_forward(b, ids + 5, bad_mode, 1, lo, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_OK(dsv3_batch_forward(b, ids + 5, sv, 1, lo, hid, -1, &err), &err); /* V3.2 too: per-token top-k */
    CHECK(memcmp(lo, ref + 5 * V, (size_t)(2 * V) * sizeof(float)) == 0,
          "%s: verification chunk differs from decode steps", name);
    /* sampling: a tiny temperature is greedy (was inf - inf = NaN), logprobs of the raw logits */
    const float l[4] = {0.3f, 2.5f, -1.0f, 2.4f};
    const dsv3_sampling sp = {1e-40f, 0, 1.f, 0.f, 1.f};
    uint64_t rng = 5;
    int64_t tok = -1, top[2];
    float lp = 0.f, tlp[2];
    CHECK_OK(dsv3_sample_ex(l, 4, &sp, NULL, 0, &rng, &tok, &lp, 2, top, tlp, &err), &err);
    CHECK(tok == 1 && top[0] == 1 && top[1] == 3 && lp == tlp[0] && lp < 0.f, "%s: sample_ex tiny temperature", name);
done:
    dsv3_batch_free(b);
    free(lo);
    free(hid);
}

/* The batched engine's per-slot MTP caches (csrc/model/batch_mtp.c): each slot's rows are bitwise the
 * model's own MTP forward of that sequence alone; copy_prefix / truncate; a failed step moves no length. */
static void model_batch_mtp(const dsv3_model_config *c, const char *name)
{
    arena a;
    a.n = 0;
    a.rng = 99;
    build_mtp = 1;
    dsv3_model *m = build(c, DSV3_ATTN_ABSORBED, &a, NULL);
    build_mtp = 0;
    dsv3_error err = {0};
    dsv3_batch_mtp *b = NULL;
    const int64_t V = c->vocab_size, D = c->hidden_size, ids[6] = {4, 9, 1, 30, 2, 7};
    float *h = malloc((size_t)(6 * D) * sizeof(float)), *ref = malloc((size_t)(6 * V) * sizeof(float));
    float *g = malloc((size_t)(6 * D) * sizeof(float)), *lo = malloc((size_t)(6 * V) * sizeof(float));
    float *go = malloc((size_t)(6 * D) * sizeof(float));
    if (m)
        CHECK_OK(dsv3_batch_mtp_create(m, 2, CAP, &b, &err), &err);
    if (!m || !b || !h || !ref || !g || !lo || !go) {
        CHECK(0, "%s: batch MTP setup failed", name);
        goto done;
    }
    ctest_fill(h, 6 * D, 1.f, &a.rng);
    dsv3_model_reset(m);
    CHECK_OK(dsv3_mtp_forward(m, ids, h, 4, NULL, DSV3_LOGITS_NONE, NULL, -1, &err), &err);
    CHECK_OK(dsv3_mtp_forward(m, ids + 4, h + 4 * D, 2, ref, DSV3_LOGITS_ALL, g, -1, &err), &err);
    const dsv3_batch_seq s1[1] = {{1, 4, DSV3_LOGITS_NONE}}, s2[1] = {{1, 2, DSV3_LOGITS_ALL}};
    CHECK_OK(dsv3_batch_mtp_forward(b, ids, h, s1, 1, NULL, NULL, -1, &err), &err);
    CHECK_OK(dsv3_batch_mtp_forward(b, ids + 4, h + 4 * D, s2, 1, lo, go, -1, &err), &err);
    CHECK(memcmp(lo, ref, (size_t)(2 * V) * sizeof(float)) == 0 && memcmp(go, g, (size_t)(2 * D) * sizeof(float)) == 0,
          "%s: batch MTP slot differs from the model's MTP layer", name);
    /* slot 0 takes slot 1's first 4 positions; both run their last 2 again, last rows only (g of the last) */
    CHECK_OK(dsv3_batch_mtp_copy_prefix(b, 1, 0, 4, &err), &err);
    CHECK_OK(dsv3_batch_mtp_copy_prefix(b, 1, 1, 4, &err), &err);
    const int64_t two[4] = {ids[4], ids[5], ids[4], ids[5]};
    memcpy(go, h + 4 * D, (size_t)(2 * D) * sizeof(float));
    memcpy(go + 2 * D, h + 4 * D, (size_t)(2 * D) * sizeof(float));
    const dsv3_batch_seq s3[2] = {{0, 2, DSV3_LOGITS_LAST}, {1, 2, DSV3_LOGITS_LAST}};
    CHECK_OK(dsv3_batch_mtp_forward(b, two, go, s3, 2, lo, NULL, -1, &err), &err);
    CHECK(memcmp(lo, ref + V, (size_t)V * sizeof(float)) == 0 && memcmp(lo + V, ref + V, (size_t)V * sizeof(float)) == 0,
          "%s: batch MTP after copy_prefix / truncate differs", name);
    CHECK(dsv3_batch_mtp_length(b, 0) == 6 && dsv3_batch_mtp_length(b, 1) == 6 && dsv3_batch_mtp_length(b, 2) == -1,
          "%s: batch MTP lengths", name);
    /* errors: a failed sequence after a good one moves no length */
    const dsv3_batch_seq bad[2] = {{0, 1, DSV3_LOGITS_LAST}, {1, CAP, DSV3_LOGITS_LAST}};
    const dsv3_batch_seq verify[1] = {{0, 1, DSV3_BATCH_VERIFY}}, dup[2] = {{0, 1, 1}, {0, 1, 1}};
    CHECK_FAIL(dsv3_batch_mtp_forward(b, ids, h, bad, 2, lo, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_batch_mtp_forward(b, ids, h, verify, 1, lo, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_batch_mtp_forward(b, ids, h, dup, 2, lo, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_batch_mtp_forward(b, ids, h, s3, 1, NULL, NULL, -1, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_batch_mtp_copy_prefix(b, 0, 1, 7, &err), DSV3_E_VALUE, &err);
    CHECK(dsv3_batch_mtp_length(b, 0) == 6 && dsv3_batch_mtp_length(b, 1) == 6, "%s: a failed step moved a length",
          name);
done:
    dsv3_batch_mtp_free(b);
    dsv3_model_free(m);
    arena_free(&a);
    free(h);
    free(ref);
    free(g);
    free(lo);
    free(go);
}

static void model_case(const dsv3_model_config *c, const char *name)
{
    arena a;
    a.n = 0;
    a.rng = 1234;
    dsv3_isa isas[DSV3_ISA_COUNT];
    const int n_isa = ctest_isas(isas);
    const int64_t V = c->vocab_size, ids[8] = {1, 17, 36, 0, 5, 22, 9, 30};
    float *ref = malloc((size_t)(8 * V) * sizeof(float)), *got = malloc((size_t)(8 * V) * sizeof(float));
    dsv3_model *ab = build(c, DSV3_ATTN_ABSORBED, &a, NULL);
    dsv3_model *nv = ab ? build(c, DSV3_ATTN_NAIVE, &a, ab) : NULL;
    char what[128];
    dsv3_error err = {0};
    if (!ref || !got || !ab || !nv) {
        CHECK(0, "%s: setup failed", name);
        goto done;
    }
    run_sequence(ab, ids, ref, -1);
    CHECK(max_abs(ref, 7 * V) > 1e-3f && isfinite(max_abs(ref, 7 * V)), "%s: degenerate logits", name);
    for (int i = 0; i < n_isa; i++) {
        run_sequence(nv, ids, got, (int)isas[i]);
        snprintf(what, sizeof what, "%s: naive (%s) vs absorbed", name, dsv3_isa_name(isas[i]));
        compare(what, got, ref, 7 * V, 2e-3f);
        run_sequence(ab, ids, got, (int)isas[i]);
        snprintf(what, sizeof what, "%s: absorbed %s vs active ISA", name, dsv3_isa_name(isas[i]));
        compare(what, got, ref, 7 * V, 2e-3f);
    }
    /* one 7-token prefill equals prefill 5 + two decode steps */
    dsv3_model_reset(ab);
    CHECK(ab->cache_len == 0, "reset left cache_len %lld", (long long)ab->cache_len);
    CHECK_OK(dsv3_model_forward(ab, ids, 7, got, -1, &err), &err);
    snprintf(what, sizeof what, "%s: prefill 7 vs prefill 5 + decode 2", name);
    compare(what, got, ref, 7 * V, 1e-4f);
    /* reset then the same prefill: bit-identical */
    run_sequence(ab, ids, got, -1);
    CHECK(memcmp(got, ref, (size_t)(7 * V) * sizeof(float)) == 0, "%s: results changed after reset", name);
    /* one thread gives the same bits (fixed reduction order) */
    const int threads = dsv3_num_threads();
    CHECK_OK(dsv3_set_num_threads(1, &err), &err);
    run_sequence(ab, ids, got, -1);
    CHECK_OK(dsv3_set_num_threads(threads, &err), &err);
    CHECK(memcmp(got, ref, (size_t)(7 * V) * sizeof(float)) == 0, "%s: 1 thread differs from %d", name, threads);
    /* preparing again (e.g. after changing a weight) rebuilds without leaking */
    CHECK_OK(dsv3_model_prepare(ab, -1, &err), &err);
    run_sequence(ab, ids, got, -1);
    CHECK(memcmp(got, ref, (size_t)(7 * V) * sizeof(float)) == 0, "%s: results changed after prepare again", name);
    model_batch(ab, ids, ref, name);
    model_probes(ab, &a.rng);
    model_errors(ab, ids);
done:
    dsv3_model_free(ab);
    dsv3_model_free(nv);
    arena_free(&a);
    free(ref);
    free(got);
}

/* Failed create leaves *out NULL; failed prepare (missing / misshapen tensor) leaves a model that
 * frees cleanly and refuses to run. */
static void model_failures(void)
{
    dsv3_error err = {0};
    float inv[4];
    dsv3_model_config c;
    dsv3_model *m = (dsv3_model *)&c; /* must be reset to NULL on failure */
    base_config(&c, inv);
    c.num_attention_heads = 0;
    CHECK_FAIL(dsv3_model_create(&c, CAP, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    CHECK(m == NULL, "failed create left *out set");
    dsv3_model_free(m);
    base_config(&c, inv);
    c.n_group = 3; /* does not divide 8 experts */
    CHECK_FAIL(dsv3_model_create(&c, CAP, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    base_config(&c, inv);
    c.rope_inv_freq = NULL;
    CHECK_FAIL(dsv3_model_create(&c, CAP, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    base_config(&c, inv);
    c.hidden_size = (int64_t)1 << 25;
    CHECK_FAIL(dsv3_model_create(&c, CAP, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    base_config(&c, inv);
    c.vocab_size = (int64_t)1 << 24;
    c.hidden_size = (int64_t)1 << 17;
    CHECK_FAIL(dsv3_model_create(&c, CAP, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    base_config(&c, inv);
    c.num_attention_heads = (int64_t)1 << 24;
    c.v_head_dim = (int64_t)1 << 24;
    CHECK_FAIL(dsv3_model_create(&c, CAP, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    base_config(&c, inv);
    c.qk_rope_head_dim = 7;
    CHECK_FAIL(dsv3_model_create(&c, CAP, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    base_config(&c, inv);
    CHECK_FAIL(dsv3_model_create(&c, 0, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_create(&c, INT64_MAX, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    CHECK_FAIL(dsv3_model_create(&c, CAP, (dsv3_attn_mode)5, &m, &err), DSV3_E_VALUE, &err);
    c.kv_cache_dtype = (dsv3_kv_dtype)3;
    CHECK_FAIL(dsv3_model_create(&c, CAP, DSV3_ATTN_ABSORBED, &m, &err), DSV3_E_VALUE, &err);
    c.kv_cache_dtype = DSV3_KV_F32;

    /* a model with one tensor missing, then one with a wrong shape */
    for (int variant = 0; variant < 2; variant++) {
        arena a;
        a.n = 0;
        a.rng = 99;
        m = NULL;
        CHECK_OK(dsv3_model_create(&c, CAP, DSV3_ATTN_ABSORBED, &m, &err), &err);
        if (!m)
            return;
        const int64_t count = dsv3_model_slots(m, NULL);
        dsv3_tensor_slot *slots = calloc((size_t)count, sizeof *slots);
        if (slots) {
            dsv3_model_slots(m, slots);
            for (int64_t i = 0; i < count; i++)
                if (!slots[i].optional)
                    fill_slot(&a, &slots[i], i);
            /* a late slot, so earlier ones were already converted when prepare fails */
            dsv3_weight *w = slots[count - 2].weight;
            if (variant == 0)
                w->data = NULL;
            else
                w->k += 1;
            CHECK_FAIL(dsv3_model_prepare(m, -1, &err), DSV3_E_VALUE, &err);
            CHECK(strstr(err.msg, slots[count - 2].name) != NULL, "prepare error does not name %s: %s",
                  slots[count - 2].name, err.msg);
            int64_t one = 1;
            float lo[37];
            CHECK_FAIL(dsv3_model_forward(m, &one, 1, lo, -1, &err), DSV3_E_VALUE, &err);
        }
        free(slots);
        dsv3_model_free(m);
        arena_free(&a);
    }
}

void test_model(void)
{
    float inv[4];
    dsv3_model_config c;
    base_config(&c, inv);
    model_case(&c, "q_lora+noaux_tc");
    model_batch_mtp(&c, "q_lora+noaux_tc");
    c.kv_cache_dtype = DSV3_KV_BF16; /* the same checks over a bf16 / fp8 latent cache (ASan-checked reads) */
    model_case(&c, "q_lora+noaux_tc, bf16 cache");
    variant_config(&c, inv);
    model_case(&c, "q_proj+bias+softmax+tied");
    c.kv_cache_dtype = DSV3_KV_FP8;
    model_case(&c, "q_proj+bias+softmax+tied, fp8 cache");
    base_config(&c, inv); /* DeepSeek-V3.2: index_topk 3 < the 5-token prefill, so the batch's selection runs */
    c.index_n_heads = 4;
    c.index_head_dim = 16;
    c.index_topk = 3;
    model_case(&c, "V3.2 indexer, index_topk 3");
    model_batch_mtp(&c, "V3.2 indexer, index_topk 3"); /* the MTP layer's own index keys per slot */
    c.kv_cache_dtype = DSV3_KV_FP8;
    c.index_key_fp8 = 1;
    model_case(&c, "V3.2 indexer, fp8 cache and index keys");
    model_batch_mtp(&c, "V3.2 indexer, fp8 cache and index keys");
    model_failures();
}

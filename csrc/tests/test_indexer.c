/* The V3.2 lightning indexer (dsv3_indexer.h): the selection's tie rule, and a V3.2 model end to end
 * (prefill + decode against one prefill, absorbed against naive, thread count, the probe, the errors),
 * under the sanitizers of the C runner. Parity with transformers: tests/test_v32.py. */
#include "ctest.h"
#include "dsv3_model.h"
#include "dsv3_batch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int same_rows(const int64_t *got, int64_t n, const int64_t *want, int64_t m)
{
    if (n != m)
        return 0;
    for (int64_t i = 0; i < n; i++)
        if (got[i] != want[i])
            return 0;
    return 1;
}

static void select_rule(void)
{
    int64_t sel[16];
    uint64_t order[16];
    /* ties: the earlier position first; the result is in ascending order */
    const float a[8] = {1.f, 3.f, 2.f, 3.f, 2.f, 2.f, 0.5f, 3.f};
    const int64_t want_a[4] = {1, 2, 3, 7};
    int64_t n = dsv3_indexer_select(a, 8, 4, sel, order);
    CHECK(same_rows(sel, n, want_a, 4), "ties: got %lld rows starting %lld %lld %lld %lld", (long long)n,
          (long long)sel[0], (long long)sel[1], (long long)sel[2], (long long)sel[3]);
    /* -0 equals +0 (the earlier wins), NaN is below every number, -inf is a number */
    const float b[6] = {NAN, -INFINITY, 0.f, -0.f, -1.f, NAN};
    const int64_t want_b[3] = {2, 3, 4};
    n = dsv3_indexer_select(b, 6, 3, sel, order);
    CHECK(same_rows(sel, n, want_b, 3), "signed zero / NaN: got %lld %lld %lld", (long long)sel[0],
          (long long)sel[1], (long long)sel[2]);
    const float c[6] = {0.f, -0.f, 0.f, 0.f, -0.f, 0.f};
    const int64_t want_c[2] = {0, 1};
    n = dsv3_indexer_select(c, 6, 2, sel, order);
    CHECK(same_rows(sel, n, want_c, 2), "all zero: got %lld %lld", (long long)sel[0], (long long)sel[1]);
    /* topk >= T keeps every row */
    const int64_t all[3] = {0, 1, 2};
    n = dsv3_indexer_select(a, 3, 8, sel, order);
    CHECK(same_rows(sel, n, all, 3), "topk >= T: %lld rows", (long long)n);
    /* against a brute force on random scores with many ties */
    uint64_t rng = 77;
    float s[16];
    for (int trial = 0; trial < 200; trial++) {
        const int64_t T = 1 + (int64_t)(ctest_next(&rng) % 16), k = 1 + (int64_t)(ctest_next(&rng) % 16);
        for (int64_t t = 0; t < T; t++)
            s[t] = (float)(int)(4.f * ctest_uniform(&rng)); /* values in -3..3: ties */
        n = dsv3_indexer_select(s, T, k, sel, order);
        int64_t want[16], m = 0;
        for (int64_t t = 0; t < T; t++) { /* row t is kept iff fewer than k rows come before it */
            int64_t before = 0;
            for (int64_t u = 0; u < T; u++)
                before += s[u] > s[t] || (s[u] == s[t] && u < t);
            if (before < k)
                want[m++] = t;
        }
        CHECK(same_rows(sel, n, want, m), "random trial %d (T %lld, k %lld)", trial, (long long)T, (long long)k);
    }
}

/* ---- a V3.2 model: f32 weights ---- */
static void v32_config(dsv3_model_config *c, float *inv_freq)
{
    memset(c, 0, sizeof *c);
    c->vocab_size = 29;
    c->hidden_size = 32;
    c->intermediate_size = 48;
    c->moe_intermediate_size = 16;
    c->num_hidden_layers = 2;
    c->num_attention_heads = 2;
    c->q_lora_rank = 24;
    c->kv_lora_rank = 16;
    c->qk_nope_head_dim = 8;
    c->qk_rope_head_dim = 8;
    c->v_head_dim = 8;
    c->n_routed_experts = 4;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 2;
    c->n_group = 1;
    c->topk_group = 1;
    c->first_k_dense_replace = 1;
    c->norm_topk_prob = 1;
    c->rope_interleave = 1;
    c->routed_scaling_factor = 1.f;
    c->rms_norm_eps = 1e-6f;
    c->group_mask_value = -INFINITY;
    c->softmax_scale = 0.25f;
    c->rope_attention_scaling = 1.f;
    c->scoring_func = DSV3_SCORE_SIGMOID;
    c->topk_method = DSV3_TOPK_NOAUX_TC;
    c->index_n_heads = 4;
    c->index_head_dim = 12;
    c->index_topk = 3;
    for (int i = 0; i < 4; i++)
        inv_freq[i] = powf(10000.f, -(float)(2 * i) / 8.f);
    c->rope_inv_freq = inv_freq;
}

typedef struct {
    float *blocks[512];
    int n;
} pool;

static dsv3_model *v32_build(const dsv3_model_config *c, dsv3_attn_mode mode, pool *p)
{
    dsv3_error err = {0};
    dsv3_model *m = NULL;
    CHECK_OK(dsv3_model_create(c, 32, mode, &m, &err), &err);
    if (!m)
        return NULL;
    const int64_t count = dsv3_model_slots(m, NULL);
    dsv3_tensor_slot *slots = calloc((size_t)count, sizeof *slots);
    uint64_t rng = 4242;
    if (!slots) {
        dsv3_model_free(m);
        return NULL;
    }
    dsv3_model_slots(m, slots);
    for (int64_t i = 0; i < count; i++) {
        const dsv3_tensor_slot *t = &slots[i];
        float *a = malloc((size_t)(t->n * t->k) * sizeof(float));
        if (!a || p->n >= 512) {
            free(a);
            continue;
        }
        p->blocks[p->n++] = a;
        ctest_fill(a, t->n * t->k, t->is_vector ? 0.1f : 2.f / sqrtf((float)t->k), &rng);
        if (t->is_vector && strstr(t->name, "norm.weight"))
            for (int64_t j = 0; j < t->k; j++)
                a[j] += 1.f;
        memset(t->weight, 0, sizeof *t->weight);
        t->weight->fmt = DSV3_FMT_F32;
        t->weight->n = t->n;
        t->weight->k = t->k;
        t->weight->scale2 = 1.f;
        t->weight->data = a;
    }
    free(slots);
    CHECK_OK(dsv3_model_prepare(m, -1, &err), &err);
    return m;
}

static float rel_diff(const float *a, const float *b, int64_t n)
{
    float d = 0.f, s = 0.f;
    for (int64_t i = 0; i < n; i++) {
        d = fmaxf(d, fabsf(a[i] - b[i]));
        s = fmaxf(s, fabsf(b[i]));
    }
    return d / (s > 0.f ? s : 1.f);
}

static void v32_model(void)
{
    float inv[4];
    dsv3_model_config c;
    v32_config(&c, inv);
    pool p = {{0}, 0};
    dsv3_error err = {0};
    dsv3_model *ab = v32_build(&c, DSV3_ATTN_ABSORBED, &p), *nv = v32_build(&c, DSV3_ATTN_NAIVE, &p);
    enum { S = 12 };
    const int64_t V = c.vocab_size, ids[S] = {1, 17, 3, 28, 5, 22, 9, 0, 11, 4, 19, 7};
    float *ref = malloc((size_t)(S * V) * sizeof(float)), *got = malloc((size_t)(S * V) * sizeof(float));
    if (!ab || !nv || !ref || !got) {
        CHECK(0, "v32 setup failed");
        goto done;
    }
    CHECK_OK(dsv3_model_forward(ab, ids, S, ref, -1, &err), &err);
    dsv3_model_reset(ab); /* prefill 6, then decode one at a time: the same logits */
    CHECK_OK(dsv3_model_forward(ab, ids, 6, got, -1, &err), &err);
    for (int64_t i = 6; i < S; i++)
        CHECK_OK(dsv3_model_forward(ab, ids + i, 1, got + i * V, -1, &err), &err);
    CHECK(rel_diff(got, ref, S * V) < 1e-4f, "v32: prefill + decode vs prefill: %g", rel_diff(got, ref, S * V));
    CHECK_OK(dsv3_model_forward(nv, ids, S, got, -1, &err), &err);
    CHECK(rel_diff(got, ref, S * V) < 1e-4f, "v32: naive vs absorbed: %g", rel_diff(got, ref, S * V));
    const int threads = dsv3_num_threads();
    CHECK_OK(dsv3_set_num_threads(1, &err), &err);
    dsv3_model_reset(ab);
    CHECK_OK(dsv3_model_forward(ab, ids, S, got, -1, &err), &err);
    CHECK_OK(dsv3_set_num_threads(threads, &err), &err);
    CHECK(memcmp(got, ref, (size_t)(S * V) * sizeof(float)) == 0, "v32: 1 thread differs from %d", threads);
    /* with every row kept the same model is dense: positions past index_topk must then differ */
    dsv3_model_reset(ab);
    ab->index.topk = 1000;
    CHECK_OK(dsv3_model_forward(ab, ids, S, got, -1, &err), &err);
    ab->index.topk = c.index_topk;
    CHECK(rel_diff(got, ref, 3 * V) < 1e-6f && rel_diff(got + 3 * V, ref + 3 * V, (S - 3) * V) > 1e-3f,
          "v32: the selection changes nothing past index_topk (or something before it)");
    /* the probe: rows and scores */
    float x[S * 32], scores[S * S];
    int64_t sel[S * 3];
    uint64_t rng = 9;
    ctest_fill(x, S * 32, 1.f, &rng);
    CHECK_OK(dsv3_model_indexer(ab, 1, x, S, sel, scores, -1, &err), &err);
    CHECK(sel[0] == 0 && sel[1] == -1 && sel[2] == -1 && isinf(scores[1]) && scores[1] < 0,
          "v32 probe: query 0 keeps row 0 only");
    for (int64_t i = 3; i < S; i++)
        CHECK(sel[i * 3] >= 0 && sel[i * 3] < sel[i * 3 + 1] && sel[i * 3 + 1] < sel[i * 3 + 2] && sel[i * 3 + 2] <= i,
              "v32 probe: query %lld rows not ascending / causal", (long long)i);
    CHECK_FAIL(dsv3_model_indexer(ab, 2, x, S, sel, scores, -1, &err), DSV3_E_VALUE, &err);
    /* the batched engine (csrc/model/batch_v32.c): a prefill of 6 beside another sequence, then decode
     * steps beside its decode tokens, then a copied prefix: bitwise the model's own prefill + decode */
    dsv3_model_reset(ab);
    CHECK_OK(dsv3_model_forward(ab, ids, 6, got, -1, &err), &err);
    for (int64_t i = 6; i < S; i++)
        CHECK_OK(dsv3_model_forward(ab, ids + i, 1, got + i * V, -1, &err), &err);
    dsv3_batch *b = NULL;
    float *lo = malloc((size_t)(6 * V) * sizeof(float));
    CHECK_OK(dsv3_batch_create(ab, 2, 16, &b, &err), &err);
    if (b && lo) {
        const int64_t step1[10] = {5, 9, 2, 13, ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]};
        const dsv3_batch_seq s1[2] = {{0, 4, DSV3_LOGITS_NONE}, {1, 6, DSV3_LOGITS_ALL}};
        CHECK_OK(dsv3_batch_forward(b, step1, s1, 2, lo, NULL, -1, &err), &err);
        CHECK(memcmp(lo, got, (size_t)(6 * V) * sizeof(float)) == 0, "v32 batch: prefill differs from forward");
        for (int64_t i = 6; i < S; i++) {
            const int64_t step[2] = {ids[i], 7};
            const dsv3_batch_seq s2[2] = {{1, 1, DSV3_LOGITS_LAST}, {0, 1, DSV3_LOGITS_NONE}};
            CHECK_OK(dsv3_batch_forward(b, step, s2, 2, lo, NULL, -1, &err), &err);
            CHECK(memcmp(lo, got + i * V, (size_t)V * sizeof(float)) == 0, "v32 batch: decode %lld differs",
                  (long long)i);
        }
        CHECK_OK(dsv3_batch_copy_prefix(b, 1, 0, 9, &err), &err); /* slot 0 continues slot 1's first 9 */
        const dsv3_batch_seq s3[1] = {{0, 1, DSV3_LOGITS_LAST}};
        CHECK_OK(dsv3_batch_forward(b, ids + 9, s3, 1, lo, NULL, -1, &err), &err);
        CHECK(memcmp(lo, got + 9 * V, (size_t)V * sizeof(float)) == 0, "v32 batch: copied prefix differs");
    } else {
        CHECK(0, "v32 batch setup failed");
    }
    dsv3_batch_free(b);
    free(lo);
    /* impossible indexer configs */
    dsv3_model *bad = NULL;
    v32_config(&c, inv);
    c.index_head_dim = 4; /* < qk_rope_head_dim */
    CHECK_FAIL(dsv3_model_create(&c, 32, DSV3_ATTN_ABSORBED, &bad, &err), DSV3_E_VALUE, &err);
    v32_config(&c, inv);
    c.q_lora_rank = 0;
    CHECK_FAIL(dsv3_model_create(&c, 32, DSV3_ATTN_ABSORBED, &bad, &err), DSV3_E_VALUE, &err);
    v32_config(&c, inv);
    c.index_n_heads = 0;
    CHECK_FAIL(dsv3_model_create(&c, 32, DSV3_ATTN_ABSORBED, &bad, &err), DSV3_E_VALUE, &err);
    CHECK(bad == NULL, "failed create left a model");
    /* FP8 index keys (Hadamard-rotated: head_dim 16 is a power of two): prefill + decode = prefill */
    v32_config(&c, inv);
    c.index_head_dim = 16;
    c.index_key_fp8 = 1;
    dsv3_model *f8 = v32_build(&c, DSV3_ATTN_ABSORBED, &p);
    if (f8) {
        CHECK_OK(dsv3_model_forward(f8, ids, S, ref, -1, &err), &err);
        dsv3_model_reset(f8);
        CHECK_OK(dsv3_model_forward(f8, ids, 4, got, -1, &err), &err);
        for (int64_t i = 4; i < S; i++)
            CHECK_OK(dsv3_model_forward(f8, ids + i, 1, got + i * V, -1, &err), &err);
        CHECK(rel_diff(got, ref, S * V) < 1e-4f, "fp8 keys: prefill + decode vs prefill: %g", rel_diff(got, ref, S * V));
        CHECK_OK(dsv3_model_indexer(f8, 0, x, S, sel, scores, -1, &err), &err);
        CHECK(sel[3 * 3 + 2] >= 0 && sel[3 * 3 + 2] <= 3, "fp8 keys: probe rows");
    }
    dsv3_model_free(f8);
done:
    dsv3_model_free(ab);
    dsv3_model_free(nv);
    for (int i = 0; i < p.n; i++)
        free(p.blocks[i]);
    free(ref);
    free(got);
}

void test_indexer(void)
{
    select_rule();
    v32_model();
}

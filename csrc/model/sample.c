/* Token sampling, transformers' order of processing: repetition penalty on the raw logits, then
 * greedy, or temperature -> top-k -> top-p -> min-p, drawn from a seeded splitmix64 stream.
 * Log-probabilities are those of the raw logits (the model's distribution), as OpenAI reports them.
 *
 * Probabilities are exp((l - max) / T) in double: the numerator is <= 0, so a tiny temperature gives
 * 0 or 1 (greedy in the limit) instead of overflowing l / T to inf and then inf - inf to NaN. */
#include "dsv3_model.h"
#include "dsv3_mtp.h"

#include <math.h>
#include <stdlib.h> /* qsort */
#include <string.h>

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct {
    double p; /* the (penalised) logit while sorting, then the unnormalised probability */
    int64_t id;
} cand;

/* descending value, ties by ascending id: a total order, so the draw is reproducible */
static int by_value_desc(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

static dsv3_status check_params(const dsv3_sampling *p, dsv3_error *err)
{
    if (isnan(p->temperature) || isinf(p->temperature))
        return dsv3_fail(err, DSV3_E_VALUE, "temperature must be finite, got %g", (double)p->temperature);
    if (!(p->repetition_penalty > 0.f) || isinf(p->repetition_penalty))
        return dsv3_fail(err, DSV3_E_VALUE, "repetition_penalty must be a finite number > 0, got %g",
                         (double)p->repetition_penalty);
    if (p->temperature > 0.f) {
        if (!(p->top_p > 0.f))
            return dsv3_fail(err, DSV3_E_VALUE, "top_p must be in (0, 1], got %g", (double)p->top_p);
        if (!(p->min_p >= 0.f && p->min_p <= 1.f))
            return dsv3_fail(err, DSV3_E_VALUE, "min_p must be in [0, 1], got %g", (double)p->min_p);
    }
    return DSV3_OK;
}

/* transformers' RepetitionPenaltyLogitsProcessor: every token seen gets l < 0 ? l * r : l / r. */
static void penalise(const float *logits, double *v, const int64_t *seen, int64_t n_seen, int64_t vocab, float r)
{
    for (int64_t i = 0; i < n_seen; i++) {
        const int64_t t = seen[i];
        if (t < 0 || t >= vocab)
            continue;
        const float l = logits[t], pl = l < 0.f ? l * r : l / r;
        v[t] = pl; /* a token seen twice is penalised once: the value is recomputed from the raw logit */
    }
}

/* The candidates' scratch and the penalised scores v [vocab] (double) of logits, and their argmax *best
 * (the first of equal maxima); `what` names the caller in the out-of-memory message. */
static dsv3_status penalised_scores(const float *logits, int64_t vocab, const dsv3_sampling *p, const int64_t *seen,
                                    int64_t n_seen, const char *what, cand **cp, double **vp, int64_t *best,
                                    dsv3_error *err)
{
    cand *c = dsv3_alloc((size_t)vocab * sizeof *c);
    double *v = dsv3_alloc((size_t)vocab * sizeof *v);
    if (!c || !v) {
        dsv3_free(c);
        dsv3_free(v);
        return dsv3_fail(err, DSV3_E_NOMEM, "%s: out of memory for %lld candidates", what, (long long)vocab);
    }
    for (int64_t i = 0; i < vocab; i++)
        v[i] = logits[i];
    if (p->repetition_penalty != 1.f)
        penalise(logits, v, seen, n_seen, vocab, p->repetition_penalty);
    int64_t b = 0;
    for (int64_t i = 1; i < vocab; i++)
        if (v[i] > v[b])
            b = i;
    *cp = c;
    *vp = v;
    *best = b;
    return DSV3_OK;
}


/* log-softmax of the raw logits at the requested ids (double accumulation). */
static void raw_logprobs(const float *logits, int64_t vocab, int64_t token, float *logprob, int64_t n_top,
                         int64_t *top_ids, float *top_lp, cand *work)
{
    float mx = logits[0];
    for (int64_t i = 1; i < vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; i++)
        sum += exp((double)logits[i] - (double)mx);
    const double lse = (double)mx + log(sum);
    if (logprob)
        *logprob = (float)((double)logits[token] - lse);
    if (n_top <= 0)
        return;
    for (int64_t i = 0; i < vocab; i++)
        work[i] = (cand){(double)logits[i], i};
    qsort(work, (size_t)vocab, sizeof *work, by_value_desc);
    for (int64_t i = 0; i < n_top; i++) {
        top_ids[i] = i < vocab ? work[i].id : -1;
        top_lp[i] = i < vocab ? (float)(work[i].p - lse) : -INFINITY;
    }
}

/* The distribution a sampled (temperature > 0) draw uses: candidates c[0..n) (returned) in draw order with
 * unnormalised probabilities c[i].p (0 for tokens min-p drops), *sum their total. v: the penalised logits,
 * best: their argmax. */
static int64_t distribution(const double *v, int64_t vocab, int64_t best, const dsv3_sampling *p, cand *c,
                            double *sum_out)
{
    for (int64_t i = 0; i < vocab; i++)
        c[i] = (cand){v[i], i};
    int64_t n = vocab;
    const int need_sort = (p->top_k > 0 && p->top_k < vocab) || p->top_p < 1.f;
    if (need_sort) {
        qsort(c, (size_t)vocab, sizeof *c, by_value_desc);
        if (p->top_k > 0 && p->top_k < vocab)
            n = p->top_k;
    }
    const double mx = v[best], t = (double)p->temperature;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        c[i].p = exp((c[i].p - mx) / t);
        sum += c[i].p;
    }
    if (p->top_p < 1.f) { /* keep the smallest (sorted) prefix whose probability reaches top_p */
        double cum = 0.0;
        for (int64_t i = 0; i < n; i++) {
            cum += c[i].p / sum;
            if (cum >= p->top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.f) /* drop tokens below min_p times the most likely one (whose p is 1) */
        for (int64_t i = 0; i < n; i++)
            if (c[i].p < (double)p->min_p)
                c[i].p = 0.0;
    sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += c[i].p;
    *sum_out = sum;
    return n;
}

dsv3_status dsv3_sample_ex(const float *logits, int64_t vocab, const dsv3_sampling *p, const int64_t *seen,
                           int64_t n_seen, uint64_t *rng, int64_t *token, float *logprob, int64_t n_top,
                           int64_t *top_ids, float *top_logprobs, dsv3_error *err)
{
    if (vocab <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "sample: empty logits");
    if (n_seen < 0 || n_top < 0)
        return dsv3_fail(err, DSV3_E_VALUE, "sample: negative count");
    dsv3_status st = check_params(p, err);
    if (st != DSV3_OK)
        return st;
    const int greedy = p->temperature <= 0.f;
    /* NaN would make the argmax depend on its position and the sort order undefined; +-inf breaks softmax */
    for (int64_t i = 0; i < vocab; i++)
        if (isnan(logits[i]) || ((!greedy || logprob || n_top > 0) && !isfinite(logits[i])))
            return dsv3_fail(err, DSV3_E_VALUE, "sample: logits[%lld] is %g", (long long)i, (double)logits[i]);
    cand *c = NULL;
    double *v = NULL;
    int64_t best = 0;
    st = penalised_scores(logits, vocab, p, seen, n_seen, "sample", &c, &v, &best, err);
    if (st != DSV3_OK)
        return st;
    if (greedy) {
        *token = best;
    } else {
        double sum;
        const int64_t n = distribution(v, vocab, best, p, c, &sum);
        const double u = (double)(splitmix64(rng) >> 11) * (1.0 / 9007199254740992.0) * sum;
        double acc = 0.0;
        *token = best; /* rounding can leave u == sum: the most likely token, never one that was cut */
        for (int64_t i = 0; i < n; i++) {
            acc += c[i].p;
            if (c[i].p > 0.0 && u < acc) {
                *token = c[i].id;
                break;
            }
        }
    }
    if (logprob || n_top > 0)
        raw_logprobs(logits, vocab, *token, logprob, n_top, top_ids, top_logprobs, c);
    dsv3_free(c);
    dsv3_free(v);
    return DSV3_OK;
}

dsv3_status dsv3_sample(const float *logits, int64_t vocab, float temperature, int64_t top_k, float top_p,
                        uint64_t *rng, int64_t *token, dsv3_error *err)
{
    const dsv3_sampling p = {temperature, top_k, top_p, 0.f, 1.f};
    return dsv3_sample_ex(logits, vocab, &p, NULL, 0, rng, token, NULL, 0, NULL, NULL, err);
}

dsv3_status dsv3_sample_rows(const float *logits, int64_t rows, int64_t vocab, const dsv3_sampling *params,
                             const int64_t *seen, const int64_t *seen_off, uint64_t *rngs, int64_t *tokens,
                             float *logprobs, int64_t n_top, int64_t *top_ids, float *top_logprobs,
                             dsv3_error *err)
{
    if (rows < 0)
        return dsv3_fail(err, DSV3_E_VALUE, "sample: negative row count");
    /* Each row alone (its own rng, no shared state): batch-independent results, and rows may run on any
     * thread. Rows split over the team (a decode step's rows are sampled while the other cores would
     * idle: the log-softmax alone is one exp per vocabulary entry); the first failing row's error. */
    int64_t bad = rows;
    dsv3_error e0;
    dsv3_status st0 = DSV3_OK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(dsv3_num_threads()) if (rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t a = seen_off ? seen_off[r] : 0, b = seen_off ? seen_off[r + 1] : 0;
        dsv3_error er;
        const dsv3_status st = dsv3_sample_ex(logits + r * vocab, vocab, &params[r], seen ? seen + a : NULL, b - a,
                                              &rngs[r], &tokens[r], logprobs ? &logprobs[r] : NULL, n_top,
                                              top_ids ? top_ids + r * n_top : NULL,
                                              top_logprobs ? top_logprobs + r * n_top : NULL, &er);
        if (st != DSV3_OK) {
#pragma omp critical(dsv3_sample_rows_err)
            if (r < bad) {
                bad = r;
                st0 = st;
                e0 = er;
            }
        }
    }
    if (st0 != DSV3_OK && err)
        *err = e0;
    return st0;
}

/* ---- speculative sampling (dsv3_mtp.h) ---- */
dsv3_status dsv3_sample_probs(const float *logits, int64_t vocab, const dsv3_sampling *p, const int64_t *seen,
                              int64_t n_seen, double *probs, dsv3_error *err)
{
    if (vocab <= 0 || n_seen < 0)
        return dsv3_fail(err, DSV3_E_VALUE, "sample_probs: empty logits or negative count");
    dsv3_status st = check_params(p, err);
    if (st != DSV3_OK)
        return st;
    for (int64_t i = 0; i < vocab; i++)
        if (!isfinite(logits[i]))
            return dsv3_fail(err, DSV3_E_VALUE, "sample_probs: logits[%lld] is %g", (long long)i, (double)logits[i]);
    cand *c = NULL;
    double *v = NULL;
    int64_t best = 0;
    st = penalised_scores(logits, vocab, p, seen, n_seen, "sample_probs", &c, &v, &best, err);
    if (st != DSV3_OK)
        return st;
    memset(probs, 0, (size_t)vocab * sizeof *probs);
    if (p->temperature <= 0.f) {
        probs[best] = 1.0;
    } else {
        double sum;
        const int64_t n = distribution(v, vocab, best, p, c, &sum);
        for (int64_t i = 0; i < n; i++)
            probs[c[i].id] = c[i].p / sum;
    }
    dsv3_free(c);
    dsv3_free(v);
    return DSV3_OK;
}

static double uniform(uint64_t *rng) { return (double)(splitmix64(rng) >> 11) * (1.0 / 9007199254740992.0); }

dsv3_status dsv3_spec_accept(const double *p, const double *q, int64_t vocab, int64_t draft, uint64_t *rng,
                             int *accepted, int64_t *token, dsv3_error *err)
{
    if (vocab <= 0 || draft < 0 || draft >= vocab)
        return dsv3_fail(err, DSV3_E_VALUE, "spec_accept: draft %lld out of range [0, %lld)", (long long)draft,
                         (long long)vocab);
    if (!(q[draft] > 0.0))
        return dsv3_fail(err, DSV3_E_VALUE, "spec_accept: the draft token %lld has probability 0 under q",
                         (long long)draft);
    /* accept with probability min(1, p/q): u < p/q, u in [0, 1) */
    if (uniform(rng) * q[draft] < p[draft]) {
        *accepted = 1;
        *token = draft;
        return DSV3_OK;
    }
    *accepted = 0;
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; i++)
        sum += p[i] > q[i] ? p[i] - q[i] : 0.0;
    const int residual = sum > 0.0; /* p == q everywhere cannot reject; rounding could: then draw from p */
    if (!residual)
        for (int64_t i = 0; i < vocab; i++)
            sum += p[i];
    const double u = uniform(rng) * sum;
    double acc = 0.0;
    int64_t last = -1;
    for (int64_t i = 0; i < vocab; i++) {
        const double w = residual ? (p[i] > q[i] ? p[i] - q[i] : 0.0) : p[i];
        if (w <= 0.0)
            continue;
        last = i;
        acc += w;
        if (u < acc)
            break;
    }
    if (last < 0)
        return dsv3_fail(err, DSV3_E_VALUE, "spec_accept: the target distribution p is all zero");
    *token = last; /* rounding can leave u == sum: the last token with weight */
    return DSV3_OK;
}

dsv3_status dsv3_token_logprobs(const float *logits, int64_t vocab, int64_t token, int64_t n_top, float *logprob,
                                int64_t *top_ids, float *top_logprobs, dsv3_error *err)
{
    if (vocab <= 0 || token < 0 || token >= vocab || n_top < 0)
        return dsv3_fail(err, DSV3_E_VALUE, "token_logprobs: token %lld out of range [0, %lld) or n_top < 0",
                         (long long)token, (long long)vocab);
    for (int64_t i = 0; i < vocab; i++)
        if (!isfinite(logits[i]))
            return dsv3_fail(err, DSV3_E_VALUE, "token_logprobs: logits[%lld] is %g", (long long)i, (double)logits[i]);
    cand *c = dsv3_alloc((size_t)vocab * sizeof *c);
    if (!c)
        return dsv3_fail(err, DSV3_E_NOMEM, "token_logprobs: out of memory");
    raw_logprobs(logits, vocab, token, logprob, n_top, top_ids, top_logprobs, c);
    dsv3_free(c);
    return DSV3_OK;
}

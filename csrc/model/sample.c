/* Token sampling: greedy, or temperature / top-k / top-p over a seeded splitmix64 stream. */
#include "dsv3_model.h"

#include <math.h>
#include <stdlib.h> /* qsort */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct {
    float p;
    int64_t id;
} cand;

static int by_prob_desc(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

dsv3_status dsv3_sample(const float *logits, int64_t vocab, float temperature, int64_t top_k, float top_p,
                        uint64_t *rng, int64_t *token, dsv3_error *err)
{
    if (vocab <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "sample: empty logits");
    if (!(temperature <= 0.f)) {
        if (!(top_p > 0.f))
            return dsv3_fail(err, DSV3_E_VALUE, "top_p must be in (0, 1], got %g", (double)top_p);
        if (!isfinite(temperature))
            return dsv3_fail(err, DSV3_E_VALUE, "temperature must be finite, got %g", (double)temperature);
    }
    /* NaN would make the argmax depend on its position and the sort order undefined; +-inf breaks softmax */
    for (int64_t i = 0; i < vocab; i++)
        if (isnan(logits[i]) || (temperature > 0.f && !isfinite(logits[i])))
            return dsv3_fail(err, DSV3_E_VALUE, "sample: logits[%lld] is %g", (long long)i, (double)logits[i]);
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    if (temperature <= 0.f) {
        *token = best;
        return DSV3_OK;
    }
    cand *c = dsv3_alloc((size_t)vocab * sizeof *c);
    if (!c)
        return dsv3_fail(err, DSV3_E_NOMEM, "sample: out of memory for %lld candidates", (long long)vocab);
    for (int64_t i = 0; i < vocab; i++)
        c[i] = (cand){logits[i] / temperature, i};
    qsort(c, (size_t)vocab, sizeof *c, by_prob_desc);
    int64_t n = (top_k > 0 && top_k < vocab) ? top_k : vocab;
    const float mx = c[0].p;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        c[i].p = expf(c[i].p - mx);
        sum += c[i].p;
    }
    if (top_p < 1.f) { /* keep the smallest prefix whose probability reaches top_p */
        double cum = 0.0;
        for (int64_t i = 0; i < n; i++) {
            cum += c[i].p / sum;
            if (cum >= top_p) {
                n = i + 1;
                break;
            }
        }
        sum = 0.0;
        for (int64_t i = 0; i < n; i++)
            sum += c[i].p;
    }
    const double u = (double)(splitmix64(rng) >> 11) * (1.0 / 9007199254740992.0) * sum;
    double acc = 0.0;
    *token = c[n - 1].id;
    for (int64_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc) {
            *token = c[i].id;
            break;
        }
    }
    dsv3_free(c);
    return DSV3_OK;
}

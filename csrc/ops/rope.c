/* Rotary position embedding, as transformers' DeepSeek rotary module and apply functions do it. */
#include "dsv3_ops.h"

#include <math.h>

void dsv3_rope_cos_sin(const int64_t *pos, int64_t s, const float *inv_freq, int64_t half, float scaling,
                       float *cos_out, float *sin_out)
{
    for (int64_t i = 0; i < s; i++) {
        const float p = (float)pos[i]; /* position_ids.float() */
        for (int64_t j = 0; j < half; j++) {
            const float angle = p * inv_freq[j];
            cos_out[i * half + j] = cosf(angle) * scaling;
            sin_out[i * half + j] = sinf(angle) * scaling;
        }
    }
}

void dsv3_rope_apply(float *t, int64_t half, const float *c, const float *s, int interleave, float *tmp)
{
    for (int64_t j = 0; j < 2 * half; j++)
        tmp[j] = t[j];
    for (int64_t j = 0; j < half; j++) {
        const float a = interleave ? tmp[2 * j] : tmp[j];
        const float b = interleave ? tmp[2 * j + 1] : tmp[j + half];
        const float ac = a * c[j], bs = b * s[j], bc = b * c[j], as = a * s[j];
        t[j] = ac - bs;
        t[half + j] = bc + as;
    }
}

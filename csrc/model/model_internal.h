/* Helpers shared inside csrc/model/ (the single-sequence forward and the batched engine). */
#ifndef DSV3_MODEL_INTERNAL_H
#define DSV3_MODEL_INTERNAL_H

#include "dsv3_model.h"

/* h [s, hidden] = the embedding rows of ids [s] (ids already checked against the vocabulary). */
void dsv3_model_embed_rows(const dsv3_model *m, const int64_t *ids, int64_t s, float *h);

#endif

/* Speculative decoding support on dsv3_model (csrc/model/mtp.c, forward.c): DeepSeek's MTP layer as the
 * draft model, a verification forward that returns hidden states, and cache rollback.
 *
 * The MTP layer (layer index num_hidden_layers in the checkpoint) predicts the
 * token after next: at position p it reads the main model's hidden state h_p and the embedding of token
 * t_{p+1} and gives logits for t_{p+2}:
 *   x = eh_proj([enorm(embed(t_{p+1})) | hnorm(h_p)])     (embedding first, as vLLM's deepseek_mtp.py
 *                                                          and SGLang's deepseek_nextn.py concatenate)
 *   y = decoder block(x) at rope position p, with the MTP layer's own latent cache
 *   g = shared_head.norm(y);  logits = shared_head.head(g)  (the model's lm_head when the head is absent)
 * h_p is the main model's final-norm hidden state (the row its lm_head reads); a chained draft step
 * feeds the MTP layer's own g of the previous position instead (as SGLang chains its draft steps).
 * DeepSeek-V3.2 (index_topk > 0): the block attends sparsely as a main V3.2 layer does, its own indexer
 * (model.layers.N.self_attn.indexer.*) scoring the MTP layer's own index-key cache.
 */
#ifndef DSV3_MTP_H
#define DSV3_MTP_H

#include "dsv3_model.h"

/* Adds the MTP layer's slots to the model's table (call after dsv3_model_create, before the slots are
 * filled and dsv3_model_prepare). Off by default: the layer's weights and cache cost memory. */
dsv3_status dsv3_model_enable_mtp(dsv3_model *m, dsv3_error *err);

/* dsv3_model_forward_ex that also writes the final-norm hidden states of all s new tokens into hidden
 * ([s, hidden_size]; NULL: not asked). step_attention != 0: each token's attention core runs as the
 * one-token decode step at its position computes it (projections, norms and MoE still over all s rows),
 * (V3.2: each token selects its own top-k over its own prefix, dsv3_mla_forward_indexed_steps),
 * so a verification forward of k+1 tokens gives each position bitwise the logits of k+1 decode steps
 * wherever dsv3_linear's kernel does not change with the row count (f32 weights, or fewer rows than
 * its GEMM threshold: 12 on AVX2, 24 for fp8_block and 32 otherwise on AVX-512). */
dsv3_status dsv3_model_forward_hidden(dsv3_model *m, const int64_t *ids, int64_t s, float *logits,
                                      dsv3_logits_mode which, float *hidden, int step_attention, int isa,
                                      dsv3_error *err);

/* Cache rollback: keep the first `length` (<= cache_len) tokens of the main model's cache, forget the
 * rest (rejected draft tokens). Rows past the length are never read; the next forward overwrites them. */
dsv3_status dsv3_model_truncate(dsv3_model *m, int64_t length, dsv3_error *err);

/* The MTP layer over s positions after its cached ones (p = mtp cache_len + i for row i): ids [s] the
 * tokens t_{p+1}, hidden_in [s, hidden] the h_p; logits by `which` (as dsv3_model_forward_ex);
 * hidden_out ([s, hidden] or NULL) the g rows (input of the next chained step). Appends s rows to the
 * MTP layer's cache; on failure its length is unchanged. */
dsv3_status dsv3_mtp_forward(dsv3_model *m, const int64_t *ids, const float *hidden_in, int64_t s, float *logits,
                             dsv3_logits_mode which, float *hidden_out, int isa, dsv3_error *err);

/* Keep the first `length` (<= its cache length) positions of the MTP layer's cache. */
dsv3_status dsv3_mtp_truncate(dsv3_model *m, int64_t length, dsv3_error *err);

/* ---- speculative sampling (csrc/model/sample.c) ---- */
/* The distribution dsv3_sample_ex draws from for these parameters, as probs [vocab] (double; one-hot at
 * the argmax for temperature <= 0): penalty, temperature, top-k, top-p, min-p, normalised. */
dsv3_status dsv3_sample_probs(const float *logits, int64_t vocab, const dsv3_sampling *p, const int64_t *seen,
                              int64_t n_seen, double *probs, dsv3_error *err);
/* The speculative-sampling rule for a draft token drawn from q, target p (both [vocab], normalised): accept
 * with probability min(1, p[draft] / q[draft]); else draw from norm(max(0, p - q)). The accepted token, or
 * the drawn one, has distribution p. Advances *rng by one draw (accepted) or two (rejected). */
dsv3_status dsv3_spec_accept(const double *p, const double *q, int64_t vocab, int64_t draft, uint64_t *rng,
                             int *accepted, int64_t *token, dsv3_error *err);
/* log-softmax of the raw logits at token and the n_top most likely (as dsv3_sample_ex reports them). */
dsv3_status dsv3_token_logprobs(const float *logits, int64_t vocab, int64_t token, int64_t n_top, float *logprob,
                                int64_t *top_ids, float *top_logprobs, dsv3_error *err);

#endif

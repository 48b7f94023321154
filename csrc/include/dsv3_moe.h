/* Routers, dense MLP and mixture of experts, f32 activations (csrc/moe/): transformers' DeepSeek V2/V3 routers and MoE.
 *
 * Routing is one function over a small spec: a scoring function turns logits into scores, a
 * selection method picks top-k (optionally limited to the best groups, with the masked value taken
 * from the config), then weights are gathered from the scores, optionally renormalised and scaled.
 * New schemes (V4's sqrtsoftplus is here already; hash routing later) add an enum value and a case.
 */
#ifndef DSV3_MOE_H
#define DSV3_MOE_H

#include "dsv3_mla.h" /* dsv3_vec */

typedef enum { DSV3_SCORE_SIGMOID = 0, DSV3_SCORE_SOFTMAX = 1, DSV3_SCORE_SQRTSOFTPLUS = 2 } dsv3_score_func;
typedef enum {
    DSV3_TOPK_NOAUX_TC = 0,             /* groups scored by the sum of their 2 best biased scores */
    DSV3_TOPK_GREEDY = 1,               /* plain top-k of the scores */
    DSV3_TOPK_GROUP_LIMITED_GREEDY = 2, /* groups scored by their max score */
    DSV3_TOPK_NOAUX = 3                 /* top-k of score + bias, no groups (V4) */
} dsv3_topk_method;
#define DSV3_SCORE_COUNT 3
#define DSV3_TOPK_COUNT 4
/* config.json spellings, indexed by the enums above (the one list: Python reads them through _dsv3). */
extern const char *const dsv3_score_func_names[DSV3_SCORE_COUNT];
extern const char *const dsv3_topk_method_names[DSV3_TOPK_COUNT];

typedef struct {
    int64_t n_experts, top_k, n_group, topk_group;
    dsv3_score_func scoring;
    dsv3_topk_method method;
    int norm_topk_prob;
    float routed_scaling_factor;
    float group_mask_value; /* value given to experts of dropped groups (-inf or 0.0) */
} dsv3_router_spec;

/* Check a spec; names the offending field. */
dsv3_status dsv3_router_check(const dsv3_router_spec *r, dsv3_error *err);

/* Bytes of dsv3_route's scratch for `threads` threads. */
size_t dsv3_route_scratch_bytes(const dsv3_router_spec *r, int threads);

/* From router logits [s, E] (f32) and the optional correction bias [E] (selection only):
 * weights [s, k] and indices [s, k] (descending by the selection value; ties: lower index first).
 * Rows are routed in parallel, each by one thread. scratch: dsv3_route_scratch_bytes(r,
 * dsv3_num_threads()) bytes, 64-byte aligned, or NULL (allocated and freed here). */
dsv3_status dsv3_route(const dsv3_router_spec *r, const float *logits, int64_t s, const float *bias,
                       float *weights, int64_t *indices, void *scratch, dsv3_error *err);

/* One SwiGLU MLP: down(silu(gate x) * up x). */
typedef struct {
    dsv3_weight gate, up, down; /* [I, H], [I, H], [H, I] */
} dsv3_mlp_weights;

/* out [m, H] = mlp(x [m, H]). gate_up: [m, 2*I] floats of scratch, or NULL (allocated and freed here). */
dsv3_status dsv3_mlp_forward(const dsv3_mlp_weights *w, const float *x, int64_t m, float *out, float *gate_up,
                             int isa, dsv3_error *err);

typedef struct {
    dsv3_weight gate;     /* router [E, H] */
    dsv3_vec bias;        /* e_score_correction_bias [E] (noaux_tc / noaux), else src.data NULL */
    dsv3_mlp_weights *experts; /* [E] */
    dsv3_mlp_weights shared;   /* n_shared * moe_intermediate wide; gate.data NULL when n_shared == 0 */
    int has_shared;
} dsv3_moe_weights;

/* Scratch of the MoE entry points below, reserved for up to `tokens` tokens on `threads` threads.
 * One owned block carved into named buffers; reserving grows it (never shrinks), so a caller that
 * reserves ahead (the model, once per forward) makes every MoE call of that forward allocation-free.
 * Zero-initialise before the first reserve. */
typedef struct {
    int64_t tokens, experts, top_k, hidden, inter, shared_inter; /* reserved sizes */
    int threads;
    float *logits;       /* [tokens, E] router logits */
    float *weights;      /* [tokens, k] routing weights */
    int64_t *indices;    /* [tokens, k] chosen experts */
    int64_t *plan;       /* [2E + 1 + 2*tokens*k]: per-expert offsets and fill, row <-> choice maps */
    float *xg, *yg;      /* [tokens*k, hidden]: rows gathered per expert, their outputs */
    float *gate_up;      /* [tokens*k, 2*inter]: routed experts' SwiGLU scratch, by row */
    float *shared_gu;    /* [tokens, 2*shared_inter]: the shared experts' SwiGLU scratch */
    float *shared_out;   /* [tokens, hidden]: the shared experts' output */
    void *tasks;         /* [E + 1] units of work (experts.c) */
    dsv3_error *errs;    /* [E + 1] per-task errors */
    dsv3_status *sts;    /* [E + 1] per-task status */
    unsigned char *route; /* dsv3_route_scratch_bytes(r, threads) */
    void *block;         /* owned */
    /* the decode path (s <= DSV3_MOE_COLS_TOKENS: every expert's columns split over all threads) */
    void *plans;         /* [3 * (E + 1)] dsv3_lin_plan: gate, up, down of every task */
    unsigned char *arena; /* their prepared activations (dsv3_linear_plan arena) */
    size_t arena_bytes;
    int64_t *work;       /* [threads]: linear work items each thread ran in the last decode-path call */
    int work_team;       /* threads of that call (0: none yet) */
} dsv3_moe_scratch;

/* Up to this many tokens the MoE block runs as one parallel region: the gate|up columns of every routed
 * expert and the shared expert split over all threads, a barrier, SiLU * up, the down columns the same
 * way, then the weighted scatter. More tokens: experts run over their grouped rows (prefill). */
#define DSV3_MOE_COLS_TOKENS 8

/* Make `ws` hold at least `tokens` tokens on dsv3_num_threads() threads for this router and these
 * weights; on failure (DSV3_E_NOMEM) `ws` is left as it was. */
dsv3_status dsv3_moe_scratch_reserve(dsv3_moe_scratch *ws, const dsv3_router_spec *r, const dsv3_moe_weights *w,
                                     int64_t hidden, int64_t tokens, dsv3_error *err);
void dsv3_moe_scratch_free(dsv3_moe_scratch *ws);

/* In the three calls below, ws is reserved for s tokens when it is smaller (no allocation when it is
 * already large enough); NULL: a temporary scratch is made and freed. */

/* Router: logits = x gate^T (f32), then dsv3_route. */
dsv3_status dsv3_moe_route(const dsv3_router_spec *r, const dsv3_moe_weights *w, const float *x, int64_t s,
                           float *weights, int64_t *indices, dsv3_moe_scratch *ws, int isa, dsv3_error *err);

/* Routed experts only: out [s, H] = sum over each token's k choices, in ascending expert order, of
 * weight * expert(x). Tokens are grouped per expert (count, prefix sum, gather), each expert runs
 * once over its rows, and results are scatter-added in a fixed order. */
dsv3_status dsv3_moe_experts(const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden,
                             const float *x, int64_t s, const int64_t *indices, const float *weights, float *out,
                             dsv3_moe_scratch *ws, int isa, dsv3_error *err);

/* Whole MoE block: routed experts + shared experts. */
dsv3_status dsv3_moe_forward(const dsv3_router_spec *r, const dsv3_moe_weights *w, int64_t hidden,
                             const float *x, int64_t s, float *out, dsv3_moe_scratch *ws, int isa,
                             dsv3_error *err);

#endif

/* SwiGLU MLP (dense layers, shared experts, each routed expert). */
#include "dsv3_moe.h"
#include "dsv3_ops.h"

dsv3_status dsv3_mlp_forward(const dsv3_mlp_weights *w, const float *x, int64_t m, float *out, float *gate_up,
                             int isa, dsv3_error *err)
{
    const int64_t I = w->gate.n;
    float *g = gate_up ? gate_up : dsv3_alloc((size_t)(2 * m * I) * sizeof(float));
    if (!g)
        return dsv3_fail(err, DSV3_E_NOMEM, "mlp: out of memory for [%lld, %lld]", (long long)m, (long long)I);
    float *u = g + m * I;
    dsv3_status st = dsv3_linear(x, m, &w->gate, NULL, g, isa, err);
    if (st == DSV3_OK)
        st = dsv3_linear(x, m, &w->up, NULL, u, isa, err);
    if (st == DSV3_OK) {
        dsv3_silu_mul_f32(g, u, m * I);
        st = dsv3_linear(g, m, &w->down, NULL, out, isa, err);
    }
    if (!gate_up)
        dsv3_free(g);
    return st;
}

/* dsv3_onednn_linear: y = x W^T through a oneDNN matmul primitive, cached per shape and dtype. */
#include <omp.h>
#include <pthread.h>
#include <string.h>

#include "dsv3_dtypes.h"
#include "dsv3_onednn.h"
#include "onednn_api.h"

#define CACHE_SLOTS 32

typedef struct {
    int64_t m, n, k;
    int bf16, has_bias;
    dnnl_primitive_t prim; /* NULL: free slot */
    dnnl_memory_desc_t src_md, wei_md, bias_md, dst_md;
    int busy;              /* calls executing it right now: not evictable */
    unsigned long last_use;
} mm_entry;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_exec_lock = PTHREAD_MUTEX_INITIALIZER; /* see run() */
static mm_entry g_cache[CACHE_SLOTS];
static unsigned long g_clock;

static void entry_clear(const dsv3_dnnl_api *a, mm_entry *e)
{
    if (e->prim)
        a->primitive_destroy(e->prim);
    dnnl_memory_desc_t mds[4] = {e->src_md, e->wei_md, e->bias_md, e->dst_md};
    for (int i = 0; i < 4; i++)
        if (mds[i])
            a->memory_desc_destroy(mds[i]);
    memset(e, 0, sizeof *e);
}

static dsv3_status dnnl_fail(dsv3_error *err, dnnl_status_t s, const char *what)
{
    return dsv3_fail(err, s == dnnl_unimplemented ? DSV3_E_UNSUPPORTED : DSV3_E_INTERNAL,
                     "oneDNN: %s failed (dnnl status %d%s)", what, (int)s,
                     s == dnnl_unimplemented ? ": no implementation for this CPU and data type" : "");
}

/* Fills e (shape fields already set) with memory descriptors and a matmul primitive. */
static dsv3_status entry_build(const dsv3_dnnl_api *a, dnnl_engine_t eng, mm_entry *e, dsv3_error *err)
{
    const dnnl_data_type_t in_t = e->bf16 ? dnnl_bf16 : dnnl_f32;
    const dnnl_dims_t src_d = {e->m, e->k}, wei_d = {e->k, e->n}, bias_d = {1, e->n}, dst_d = {e->m, e->n};
    dnnl_status_t s = a->memory_desc_create_with_tag(&e->src_md, 2, src_d, in_t, dnnl_ab);
    /* W is [n, k] row-major: as the [k, n] operand of the matmul it is the "ba" layout */
    if (s == dnnl_success)
        s = a->memory_desc_create_with_tag(&e->wei_md, 2, wei_d, in_t, dnnl_ba);
    if (s == dnnl_success && e->has_bias)
        s = a->memory_desc_create_with_tag(&e->bias_md, 2, bias_d, dnnl_f32, dnnl_ab);
    if (s == dnnl_success)
        s = a->memory_desc_create_with_tag(&e->dst_md, 2, dst_d, dnnl_f32, dnnl_ab);
    if (s != dnnl_success)
        return dnnl_fail(err, s, "memory descriptor creation");
    dnnl_primitive_desc_t pd = NULL;
    s = a->matmul_primitive_desc_create(&pd, eng, e->src_md, e->wei_md, e->bias_md, e->dst_md, NULL);
    if (s != dnnl_success)
        return dnnl_fail(err, s, e->bf16 ? "bf16 matmul primitive descriptor" : "f32 matmul primitive descriptor");
    s = a->primitive_create(&e->prim, pd);
    a->primitive_desc_destroy(pd);
    if (s != dnnl_success) {
        e->prim = NULL;
        return dnnl_fail(err, s, "matmul primitive creation");
    }
    return DSV3_OK;
}

/* Returns a cache slot holding the primitive (busy count taken), or builds into *tmp when every
 * slot is in use. */
static mm_entry *acquire(const dsv3_dnnl_api *a, dnnl_engine_t eng, const mm_entry *key, mm_entry *tmp,
                         dsv3_status *st, dsv3_error *err)
{
    pthread_mutex_lock(&g_lock);
    mm_entry *hit = NULL, *victim = NULL;
    for (int i = 0; i < CACHE_SLOTS && !hit; i++) {
        mm_entry *e = &g_cache[i];
        if (e->prim && e->m == key->m && e->n == key->n && e->k == key->k && e->bf16 == key->bf16 &&
            e->has_bias == key->has_bias)
            hit = e;
        else if (!e->busy && (!victim || !e->prim || (victim->prim && e->last_use < victim->last_use)))
            victim = e;
    }
    if (!hit) {
        mm_entry *slot = victim ? victim : tmp;
        if (victim)
            entry_clear(a, victim);
        *slot = *key;
        *st = entry_build(a, eng, slot, err);
        if (*st != DSV3_OK) {
            entry_clear(a, slot);
            pthread_mutex_unlock(&g_lock);
            return NULL;
        }
        hit = slot;
    }
    hit->busy++;
    hit->last_use = ++g_clock;
    pthread_mutex_unlock(&g_lock);
    return hit;
}

static void release(const dsv3_dnnl_api *a, mm_entry *e, mm_entry *tmp)
{
    pthread_mutex_lock(&g_lock);
    e->busy--;
    if (e == tmp)
        entry_clear(a, tmp);
    pthread_mutex_unlock(&g_lock);
}

static dsv3_status run(const dsv3_dnnl_api *a, dnnl_engine_t eng, const mm_entry *e, const void *src, const void *w,
                       const float *bias, float *y, dsv3_error *err)
{
    dnnl_memory_t mem[4] = {NULL, NULL, NULL, NULL};
    const int nargs = e->has_bias ? 4 : 3;
    const int arg_ids[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS};
    const_dnnl_memory_desc_t mds[4] = {e->src_md, e->wei_md, e->dst_md, e->bias_md};
    void *handles[4] = {(void *)src, (void *)w, y, (void *)bias};
    dnnl_exec_arg_t args[4];
    dnnl_stream_t stream = NULL;
    dnnl_status_t s = dnnl_success;
    for (int i = 0; i < nargs && s == dnnl_success; i++) {
        s = a->memory_create(&mem[i], mds[i], eng, handles[i]);
        args[i].arg = arg_ids[i];
        args[i].memory = mem[i];
    }
    if (s == dnnl_success)
        s = a->stream_create(&stream, eng, dnnl_stream_default_flags);
    if (s == dnnl_success) {
        /* oneDNN's parallel regions use this thread's OpenMP setting: match dsv3's thread count */
        /* The PyPI oneDNN is built without ONEDNN_ENABLE_CONCURRENT_EXEC: primitives share one
         * scratchpad, so executions from several caller threads are serialised here. */
        const int prev = omp_get_max_threads();
        pthread_mutex_lock(&g_exec_lock);
        omp_set_num_threads(dsv3_num_threads());
        s = a->primitive_execute(e->prim, stream, nargs, args);
        if (s == dnnl_success)
            s = a->stream_wait(stream);
        omp_set_num_threads(prev);
        pthread_mutex_unlock(&g_exec_lock);
    }
    if (stream)
        a->stream_destroy(stream);
    for (int i = 0; i < nargs; i++)
        if (mem[i])
            a->memory_destroy(mem[i]);
    return s == dnnl_success ? DSV3_OK : dnnl_fail(err, s, "matmul execution");
}

/* Probe shape: the GEMM sizes linear.c routes (M >= 32); oneDNN's matmul implementations are
 * chosen per ISA and data type, not per size. */
#define PROBE_DIM 64

static int g_supports[2] = {-1, -1}; /* per w_is_bf16: -1 unknown, else the answer (under g_lock) */

int dsv3_onednn_supports(int w_is_bf16)
{
    dnnl_engine_t eng;
    const dsv3_dnnl_api *a = dsv3_dnnl(&eng);
    if (!a)
        return 0;
    const int kind = w_is_bf16 != 0;
    pthread_mutex_lock(&g_lock);
    if (g_supports[kind] < 0) {
        mm_entry e;
        memset(&e, 0, sizeof e);
        e.m = e.n = e.k = PROBE_DIM;
        e.bf16 = kind;
        /* any failure (unimplemented, or out of memory) means: do not route there */
        g_supports[kind] = entry_build(a, eng, &e, NULL) == DSV3_OK;
        entry_clear(a, &e);
    }
    const int yes = g_supports[kind];
    pthread_mutex_unlock(&g_lock);
    return yes;
}

dsv3_status dsv3_onednn_linear(const float *x, int64_t m, const void *w, int w_is_bf16, int64_t n, int64_t k,
                               const float *bias, float *y, dsv3_error *err)
{
    dnnl_engine_t eng;
    const dsv3_dnnl_api *a = dsv3_dnnl(&eng);
    if (!a)
        return dsv3_fail(err, DSV3_E_UNSUPPORTED, "oneDNN is not loaded (see dsv3.onednn.status())");
    if (m < 0 || n <= 0 || k <= 0)
        return dsv3_fail(err, DSV3_E_VALUE, "onednn_linear: bad shape m=%lld n=%lld k=%lld", (long long)m,
                         (long long)n, (long long)k);
    if (m == 0)
        return DSV3_OK;
    if (!dsv3_onednn_supports(w_is_bf16))
        return dsv3_fail(err, DSV3_E_UNSUPPORTED,
                         "oneDNN: no %s matmul implementation for this CPU (oneDNN ISA %s; oneDNN 3.2 needs "
                         "AVX-512 for bf16): dsv3.ops.linear runs dsv3's own kernels instead",
                         w_is_bf16 ? "bf16" : "f32", dsv3_onednn_isa());
    if (!x || !w || !y)
        return dsv3_fail(err, DSV3_E_VALUE, "onednn_linear: NULL buffer");
    size_t mk;
    if (!dsv3_mul_size((size_t)m, (size_t)k, &mk) || mk > SIZE_MAX / 2)
        return dsv3_fail(err, DSV3_E_VALUE, "onednn_linear: m*k overflows");
    const void *src = x;
    uint16_t *xb = NULL;
    if (w_is_bf16) { /* oneDNN v3.2 has no f32 x bf16 matmul: round x to bf16 (RNE, as ml_dtypes) */
        xb = (uint16_t *)dsv3_alloc(mk * 2);
        if (!xb)
            return dsv3_fail(err, DSV3_E_NOMEM, "onednn_linear: cannot allocate %zu bytes", mk * 2);
        dsv3_status st = dsv3_convert(DSV3_DTYPE_BF16, xb, DSV3_DTYPE_F32, x, mk, -1, err);
        if (st != DSV3_OK) {
            dsv3_free(xb);
            return st;
        }
        src = xb;
    }
    mm_entry key, tmp;
    memset(&key, 0, sizeof key);
    memset(&tmp, 0, sizeof tmp);
    key.m = m, key.n = n, key.k = k, key.bf16 = w_is_bf16 != 0, key.has_bias = bias != NULL;
    dsv3_status st = DSV3_OK;
    mm_entry *e = acquire(a, eng, &key, &tmp, &st, err);
    if (e) {
        st = run(a, eng, e, src, w, bias, y, err);
        release(a, e, &tmp);
    }
    dsv3_free(xb);
    return st;
}

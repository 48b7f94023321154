/* Loads libdnnl.so.3 with dlopen and resolves the C API into a table of function pointers.
 *
 * The library is the onednn-cpu-gomp 2023.2.0 wheel (oneDNN v3.2): `ldd libdnnl.so.3` lists only
 * libpthread, libdl, libstdc++, libm, libgomp, libgcc_s and libc, i.e. GNU OpenMP and no TBB or
 * SYCL runtime, so oneDNN and dsv3's own OpenMP kernels share one thread pool. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsv3_onednn.h"
#include "onednn_api.h"

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static dsv3_dnnl_api g_api;
static dnnl_engine_t g_engine;
static void *g_handle;
static volatile int g_loaded;

#define SYM(field, name) {(void **)&api->field, name}

static int resolve(void *h, dsv3_dnnl_api *api, dsv3_error *err)
{
    const struct {
        void **slot;
        const char *name;
    } syms[] = {
        SYM(version, "dnnl_version"),
        SYM(engine_create, "dnnl_engine_create"),
        SYM(stream_create, "dnnl_stream_create"),
        SYM(stream_wait, "dnnl_stream_wait"),
        SYM(stream_destroy, "dnnl_stream_destroy"),
        SYM(memory_desc_create_with_tag, "dnnl_memory_desc_create_with_tag"),
        SYM(memory_desc_destroy, "dnnl_memory_desc_destroy"),
        SYM(memory_create, "dnnl_memory_create"),
        SYM(memory_destroy, "dnnl_memory_destroy"),
        SYM(matmul_primitive_desc_create, "dnnl_matmul_primitive_desc_create"),
        SYM(primitive_desc_destroy, "dnnl_primitive_desc_destroy"),
        SYM(primitive_create, "dnnl_primitive_create"),
        SYM(primitive_destroy, "dnnl_primitive_destroy"),
        SYM(primitive_execute, "dnnl_primitive_execute"),
        SYM(set_max_cpu_isa, "dnnl_set_max_cpu_isa"),
        SYM(get_effective_cpu_isa, "dnnl_get_effective_cpu_isa"),
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        void *p = dlsym(h, syms[i].name);
        if (!p) {
            dsv3_fail(err, DSV3_E_UNSUPPORTED, "oneDNN: symbol %s not found (need the v3 C API)", syms[i].name);
            return 0;
        }
        *syms[i].slot = p; /* POSIX guarantees object/function pointer conversion for dlsym */
    }
    return 1;
}

/* A forced DSV3_ISA below the CPU's best (e.g. DSV3_ISA=avx2 on an AVX-512 machine) stands for a CPU
 * without the missing instructions: oneDNN is limited to the same level, so it refuses what it
 * refuses on such a CPU (oneDNN 3.2 has no bf16 matmul below AVX-512, as on AMD Zen 3). oneDNN fixes
 * its limit at its first ISA query: this runs before the engine exists. ONEDNN_MAX_CPU_ISA (or the
 * older DNNL_MAX_CPU_ISA), when the user set it, is left to oneDNN. */
static void limit_isa_to_dsv3(const dsv3_dnnl_api *api)
{
    if (getenv("ONEDNN_MAX_CPU_ISA") || getenv("DNNL_MAX_CPU_ISA"))
        return;
    const dsv3_isa active = dsv3_isa_active();
    if (active == DSV3_ISA_AVX512 || (active == DSV3_ISA_AVX2 && !dsv3_isa_supported(DSV3_ISA_AVX512)))
        return; /* not forced below the CPU's best: oneDNN picks its own best */
    api->set_max_cpu_isa(active == DSV3_ISA_AVX2 ? dnnl_cpu_isa_avx2 : dnnl_cpu_isa_sse41);
}

static dsv3_status load_locked(const char *path, dsv3_error *err)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        return dsv3_fail(err, DSV3_E_IO, "oneDNN: cannot load '%s': %s", path, why ? why : "dlopen failed");
    }
    dsv3_dnnl_api api;
    if (!resolve(h, &api, err)) {
        dlclose(h);
        return err ? err->status : DSV3_E_UNSUPPORTED;
    }
    if (g_loaded) { /* already loaded (maybe from another path): keep the first one */
        dlclose(h);
        return DSV3_OK;
    }
    const dnnl_version_t *v = api.version();
    if (!v || v->major != 3) {
        dlclose(h);
        return dsv3_fail(err, DSV3_E_UNSUPPORTED, "oneDNN: '%s' is version %d, need 3.x", path, v ? v->major : -1);
    }
    limit_isa_to_dsv3(&api);
    dnnl_engine_t engine;
    if (api.engine_create(&engine, dnnl_cpu, 0) != dnnl_success) {
        dlclose(h);
        return dsv3_fail(err, DSV3_E_UNSUPPORTED, "oneDNN: cannot create a CPU engine");
    }
    g_api = api;
    g_engine = engine;
    g_handle = h;
    __sync_synchronize();
    g_loaded = 1;
    return DSV3_OK;
}

dsv3_status dsv3_onednn_load(const char *path, dsv3_error *err)
{
    if (!path || !*path)
        return dsv3_fail(err, DSV3_E_VALUE, "oneDNN: empty library path");
    pthread_mutex_lock(&g_lock);
    dsv3_status st = load_locked(path, err);
    pthread_mutex_unlock(&g_lock);
    return st;
}

int dsv3_onednn_available(void) { return g_loaded; }

const dsv3_dnnl_api *dsv3_dnnl(dnnl_engine_t *engine)
{
    if (!g_loaded)
        return NULL;
    __sync_synchronize();
    *engine = g_engine;
    return &g_api;
}

const char *dsv3_onednn_isa(void)
{
    dnnl_engine_t e;
    const dsv3_dnnl_api *api = dsv3_dnnl(&e);
    if (!api)
        return "";
    /* the dnnl_cpu_isa_t values of oneDNN 3.2, best first (each value includes the bits of the
     * levels below it) */
    static const struct {
        dnnl_cpu_isa_t isa;
        const char *name;
    } names[] = {
        {dnnl_cpu_isa_avx512_core_amx_fp16, "avx512_core_amx_fp16"}, {dnnl_cpu_isa_avx512_core_amx, "avx512_core_amx"},
        {dnnl_cpu_isa_avx512_core_fp16, "avx512_core_fp16"},         {dnnl_cpu_isa_avx512_core_bf16, "avx512_core_bf16"},
        {dnnl_cpu_isa_avx512_core_vnni, "avx512_core_vnni"},         {dnnl_cpu_isa_avx512_core, "avx512_core"},
        {dnnl_cpu_isa_avx2_vnni_2, "avx2_vnni_2"},                   {dnnl_cpu_isa_avx2_vnni, "avx2_vnni"},
        {dnnl_cpu_isa_avx2, "avx2"},                                 {dnnl_cpu_isa_avx, "avx"},
        {dnnl_cpu_isa_sse41, "sse41"},
    };
    const dnnl_cpu_isa_t isa = api->get_effective_cpu_isa();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (isa == names[i].isa)
            return names[i].name;
    return "other";
}

void dsv3_onednn_version(char *buf, size_t size)
{
    if (!buf || !size)
        return;
    buf[0] = '\0';
    dnnl_engine_t e;
    const dsv3_dnnl_api *api = dsv3_dnnl(&e);
    if (!api)
        return;
    const dnnl_version_t *v = api->version();
    const char *rt = v->cpu_runtime == DNNL_RUNTIME_OMP ? "gomp" : v->cpu_runtime == DNNL_RUNTIME_TBB ? "tbb" : "other";
    snprintf(buf, size, "%d.%d.%d (%s)", v->major, v->minor, v->patch, rt);
}

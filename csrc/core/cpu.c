/* CPUID feature detection and the one-time choice of the kernel path. */
#include "dsv3.h"

#include <cpuid.h>
#include <stdlib.h>
#include <string.h>

static dsv3_cpu_features g_cpu;
static int g_cpu_done;
static dsv3_isa g_isa = DSV3_ISA_SCALAR;

static unsigned long long xgetbv0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static void detect(dsv3_cpu_features *f)
{
    unsigned int a, b, c, d, max_leaf = __get_cpuid_max(0, NULL);
    memset(f, 0, sizeof *f);
    if (max_leaf < 1 || !__get_cpuid(1, &a, &b, &c, &d))
        return;
    f->sse42 = (c >> 20) & 1;
    f->fma = (c >> 12) & 1;
    f->f16c = (c >> 29) & 1;
    f->avx = (c >> 28) & 1;
    if ((c >> 27) & 1) { /* OSXSAVE */
        unsigned long long x = xgetbv0();
        f->os_avx = (x & 0x6) == 0x6;
        f->os_avx512 = f->os_avx && (x & 0xe0) == 0xe0;
    }
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        f->avx2 = (b >> 5) & 1;
        f->avx512f = (b >> 16) & 1;
        f->avx512dq = (b >> 17) & 1;
        f->avx512cd = (b >> 28) & 1;
        f->avx512bw = (b >> 30) & 1;
        f->avx512vl = (b >> 31) & 1;
        f->avx512_vbmi = (c >> 1) & 1;
        f->avx512_vbmi2 = (c >> 6) & 1;
        f->avx512_vnni = (c >> 11) & 1;
        f->avx512_fp16 = (d >> 23) & 1;
        f->amx = (d >> 24) & 1; /* AMX-TILE */
        __cpuid_count(7, 1, a, b, c, d);
        f->avx512_bf16 = (a >> 5) & 1;
    }
}

const dsv3_cpu_features *dsv3_cpu(void)
{
    if (!g_cpu_done) {
        detect(&g_cpu);
        g_cpu_done = 1;
    }
    return &g_cpu;
}

int dsv3_isa_supported(dsv3_isa isa)
{
    const dsv3_cpu_features *f = dsv3_cpu();
    switch (isa) {
    case DSV3_ISA_SCALAR: return 1;
    case DSV3_ISA_AVX2: return f->os_avx && f->avx2 && f->fma && f->f16c;
    case DSV3_ISA_AVX512:
        /* the avx512 kernels also use BF16, VNNI and VBMI: require them all */
        return dsv3_isa_supported(DSV3_ISA_AVX2) && f->os_avx512 && f->avx512f && f->avx512bw &&
               f->avx512vl && f->avx512dq && f->avx512_bf16 && f->avx512_vnni && f->avx512_vbmi;
    default: return 0;
    }
}

const char *dsv3_isa_name(dsv3_isa isa)
{
    static const char *names[] = {"scalar", "avx2", "avx512"};
    return (isa >= 0 && isa < DSV3_ISA_COUNT) ? names[isa] : "unknown";
}

dsv3_status dsv3_isa_parse(const char *name, dsv3_isa *out, dsv3_error *err)
{
    for (int i = 0; i < DSV3_ISA_COUNT; i++)
        if (strcmp(name, dsv3_isa_name((dsv3_isa)i)) == 0) {
            *out = (dsv3_isa)i;
            return DSV3_OK;
        }
    return dsv3_fail(err, DSV3_E_VALUE, "unknown ISA '%s': expected scalar, avx2 or avx512", name);
}

dsv3_status dsv3_isa_set(dsv3_isa isa, dsv3_error *err)
{
    if (!dsv3_isa_supported(isa))
        return dsv3_fail(err, DSV3_E_UNSUPPORTED,
                         "ISA '%s' is not supported by this CPU (avx512 needs F/BW/VL/DQ/BF16/VNNI/VBMI)",
                         dsv3_isa_name(isa));
    g_isa = isa;
    return DSV3_OK;
}

dsv3_isa dsv3_isa_active(void) { return g_isa; }

dsv3_status dsv3_isa_resolve(int requested, dsv3_isa *out, dsv3_error *err)
{
    if (requested < 0) {
        *out = g_isa;
        return DSV3_OK;
    }
    if (requested >= DSV3_ISA_COUNT)
        return dsv3_fail(err, DSV3_E_VALUE, "ISA index %d out of range", requested);
    if (!dsv3_isa_supported((dsv3_isa)requested))
        return dsv3_fail(err, DSV3_E_UNSUPPORTED, "ISA '%s' is not supported by this CPU",
                         dsv3_isa_name((dsv3_isa)requested));
    *out = (dsv3_isa)requested;
    return DSV3_OK;
}

dsv3_status dsv3_init(dsv3_error *err)
{
    const char *env = getenv("DSV3_ISA");
    dsv3_isa best = DSV3_ISA_SCALAR;
    for (int i = DSV3_ISA_COUNT - 1; i >= 0; i--)
        if (dsv3_isa_supported((dsv3_isa)i)) {
            best = (dsv3_isa)i;
            break;
        }
    g_isa = best;
    if (env && *env) {
        dsv3_isa forced = DSV3_ISA_SCALAR;
        dsv3_status s = dsv3_isa_parse(env, &forced, err);
        if (s != DSV3_OK)
            return dsv3_fail(err, s, "DSV3_ISA='%s': expected scalar, avx2 or avx512", env);
        if ((s = dsv3_isa_set(forced, err)) != DSV3_OK)
            return dsv3_fail(err, s, "DSV3_ISA=%s but this CPU lacks it (best available: %s)", env,
                             dsv3_isa_name(best));
    }
    const char *nt = getenv("DSV3_NUM_THREADS");
    if (nt && *nt) {
        char *end;
        long n = strtol(nt, &end, 10);
        if (*end || n < 1 || n > 4096)
            return dsv3_fail(err, DSV3_E_VALUE, "DSV3_NUM_THREADS='%s': expected an integer 1..4096", nt);
        return dsv3_set_num_threads((int)n, err);
    }
    return DSV3_OK;
}

/* Machine probes: threading, timing and dispatch around the per-ISA kernels (probe_kernels.h). */
#include "probe_kernels.h"

#include <omp.h>
#include <string.h>

#define MIN_READ_BYTES ((size_t)64 << 10)
#define SLICE_WORDS 32 /* thread slices are whole 256-byte blocks (keeps aligned loads aligned) */

static const dsv3_probe_kernels *kernels_for(dsv3_isa isa)
{
    switch (isa) {
    case DSV3_ISA_AVX512: return &dsv3_probe_avx512;
    case DSV3_ISA_AVX2: return &dsv3_probe_avx2;
    default: return &dsv3_probe_scalar;
    }
}

/* words [lo, hi) of thread t of nt: whole blocks, the last thread also takes the tail */
static void slice(size_t n, int t, int nt, size_t *lo, size_t *hi)
{
    const size_t blocks = n / SLICE_WORDS, per = blocks / (size_t)nt, extra = blocks % (size_t)nt;
    const size_t ut = (size_t)t;
    *lo = (ut * per + (ut < extra ? ut : extra)) * SLICE_WORDS;
    *hi = t == nt - 1 ? n : *lo + (per + (ut < extra)) * SLICE_WORDS;
}

static dsv3_status common_args(int repeats, int *threads, int isa, dsv3_isa *out, dsv3_error *err)
{
    if (repeats < 1)
        return dsv3_fail(err, DSV3_E_VALUE, "probe: repeats must be >= 1, got %d", repeats);
    if (*threads < 0 || *threads > 4096)
        return dsv3_fail(err, DSV3_E_VALUE, "probe: threads must be 0 (all) or 1..4096, got %d", *threads);
    if (*threads == 0)
        *threads = dsv3_num_threads();
    return dsv3_isa_resolve(isa, out, err);
}

dsv3_status dsv3_probe_read_bw(size_t bytes, int repeats, int threads, int isa, dsv3_probe_result *out,
                               dsv3_error *err)
{
    dsv3_isa which;
    dsv3_status st = common_args(repeats, &threads, isa, &which, err);
    if (st != DSV3_OK)
        return st;
    if (bytes < MIN_READ_BYTES)
        return dsv3_fail(err, DSV3_E_VALUE, "read bandwidth probe: buffer must be >= %zu bytes, got %zu",
                         MIN_READ_BYTES, bytes);
    const size_t n = bytes / 8;
    uint64_t *buf = dsv3_alloc(n * 8);
    if (!buf)
        return dsv3_fail(err, DSV3_E_NOMEM, "read bandwidth probe: cannot allocate %zu bytes", n * 8);
    const dsv3_probe_kernels *k = kernels_for(which);
    uint64_t sums[4096];
    double best = -1.0;
    uint64_t checksum = 0;
    int ran = threads;
    /* r = -1 first-touches the slices with the threads that will read them (not timed) */
    for (int r = -1; r < repeats; r++) {
        const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            size_t lo, hi;
            slice(n, t, nt, &lo, &hi);
            if (r < 0) {
                for (size_t i = lo; i < hi; i++)
                    buf[i] = (uint64_t)i * DSV3_PROBE_FILL;
            } else {
                sums[t] = k->read_sum(buf + lo, hi - lo);
            }
#pragma omp single
            ran = nt;
        }
        const double dt = omp_get_wtime() - t0;
        if (r < 0)
            continue;
        uint64_t s = 0;
        for (int t = 0; t < ran; t++)
            s += sums[t];
        checksum = s;
        if (best < 0 || dt < best)
            best = dt;
    }
    dsv3_free(buf);
    memset(out, 0, sizeof *out);
    out->seconds = best;
    out->work = (double)n * 8.0;
    out->rate = best > 0 ? out->work / best * 1e-9 : 0.0;
    out->checksum_u64 = checksum;
    out->checksum = (double)checksum;
    out->threads = ran;
    out->isa = (int)which;
    return DSV3_OK;
}

static const char *const PEAK_NAMES[DSV3_PEAK_COUNT] = {"f32_fma", "bf16_dot", "int8_dot"};

dsv3_status dsv3_probe_peak(dsv3_peak_kind kind, int64_t iters, int repeats, int threads, int isa,
                            dsv3_probe_result *out, dsv3_error *err)
{
    dsv3_isa which;
    if ((int)kind < 0 || kind >= DSV3_PEAK_COUNT)
        return dsv3_fail(err, DSV3_E_VALUE, "peak probe: unknown kind %d", (int)kind);
    dsv3_status st = common_args(repeats, &threads, isa, &which, err);
    if (st != DSV3_OK)
        return st;
    if (iters < 1)
        return dsv3_fail(err, DSV3_E_VALUE, "peak probe: iterations must be >= 1, got %lld", (long long)iters);
    const dsv3_probe_kernels *k = kernels_for(which);
    double (*fn)(int64_t) = k->peak[kind];
    if (!fn)
        return dsv3_fail(err, DSV3_E_UNSUPPORTED, "peak probe: %s has no %s instruction on the %s path",
                         PEAK_NAMES[kind], PEAK_NAMES[kind], dsv3_isa_name(which));
    double vals[4096];
    double best = -1.0, checksum = 0.0;
    int ran = threads;
    for (int r = 0; r < repeats; r++) {
        const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads)
        {
            vals[omp_get_thread_num()] = fn(iters);
#pragma omp single
            ran = omp_get_num_threads();
        }
        const double dt = omp_get_wtime() - t0;
        double s = 0.0;
        for (int t = 0; t < ran; t++)
            s += vals[t];
        checksum = s / ran;
        if (best < 0 || dt < best)
            best = dt;
    }
    memset(out, 0, sizeof *out);
    out->seconds = best;
    out->work = (double)ran * (double)iters * k->ops_per_iter[kind];
    out->rate = best > 0 ? out->work / best * 1e-9 : 0.0;
    out->checksum = checksum;
    out->threads = ran;
    out->isa = (int)which;
    return DSV3_OK;
}

/* Page tables of the mapped weights filled at load (MADV_POPULATE_READ), so that decode does not take a
 * page fault the first time it reads each expert. A checkpoint is a file-backed mmap: without this, every
 * 4 KB page (or fault-around run of 16 pages) of a weight is mapped on its first read, and bench_peers'
 * 1-thread bf16 tg64 on the 64-expert model took ~45 000 minor faults in its 64 timed steps (2-4 us each in
 * the kernel: ~5-10 % of the steps' time), because the experts are first met during the decode. llama.cpp
 * maps its gguf with MAP_POPULATE for the same reason.
 *
 * Only the arrays the kernels read in place are populated: the matrices' codes and scales in their stored
 * layout, or the packed layout of a checkpoint converted with --pack (read from the file mapping too); not a
 * layout packed at load (an owned buffer; its stored pages were paged out), nor the vectors (copied
 * to f32 at prepare) nor the embedding tables (one row per token). Populating reads from disk what the page
 * cache lacks, so it is done only when those bytes fit in half of the available memory (a model larger than
 * that streams from disk anyway). DSV3_POPULATE=0 turns it off, =1 forces it (A/B measurements). Advisory:
 * errors (kernels before 5.14 refuse MADV_POPULATE_READ) fall back to MADV_WILLNEED (read-ahead only). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dsv3_quant.h"
#include "model_internal.h"

#if defined(__linux__) && !defined(MADV_POPULATE_READ)
#define MADV_POPULATE_READ 22 /* Linux 5.14; older C libraries lack the name */
#endif

/* The weight's mapped arrays the kernels read: codes at *data (*db bytes) and scales at *scale (*sb bytes); a
 * packed layout read from the checkpoint is one array (codes and scales). Sizes 0 where nothing is read in place. */
static void mapped_arrays(const dsv3_model *m, const dsv3_tensor_slot *t, const void **data, size_t *db,
                          const void **scale, size_t *sb)
{
    const dsv3_weight *w = t->weight;
    int64_t sr = 0, sc = 0;
    *data = w->data;
    *scale = w->scale;
    *db = *sb = 0;
    if (t->is_vector || w == &m->embed || (m->mtp && w == &m->mtp->embed))
        return;
    if (w->packed) { /* packed at load: an owned buffer; stored packed (dsv3 convert --pack): mapped */
        if (!dsv3_model_packed_at_load(m, w)) {
            *data = w->packed;
            *db = dsv3_weight_packed_bytes(w);
        }
        return;
    }
    if (!w->data || dsv3_quant_layout(w->fmt, w->n, w->k, w->group, db, &sr, &sc, NULL) != DSV3_OK)
        return;
    if (w->scale)
        *sb = (size_t)(sr * sc) * (dsv3_formats[w->fmt].scale_kind == DSV3_SCALE_E4M3 ? 1 : 4);
}

/* MemAvailable from /proc/meminfo in bytes, 0 when unknown. */
static size_t mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            break;
    fclose(f);
    return (size_t)kb * 1024;
}

static void populate_range(const void *p, size_t bytes)
{
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p / pg * pg,
                    b = ((uintptr_t)p + bytes + pg - 1) / pg * pg;
    if (!bytes)
        return;
#ifdef MADV_POPULATE_READ
    if (madvise((void *)a, b - a, MADV_POPULATE_READ) == 0)
        return;
#endif
    (void)madvise((void *)a, b - a, MADV_WILLNEED);
}

void dsv3_model_populate(const dsv3_model *m, const dsv3_tensor_slot *slots, int64_t count)
{
    const char *env = getenv("DSV3_POPULATE");
    if (env && strcmp(env, "0") == 0)
        return;
    size_t total = 0, d, s;
    const void *pd, *ps;
    for (int64_t i = 0; i < count; i++) {
        mapped_arrays(m, &slots[i], &pd, &d, &ps, &s);
        total += d + s;
    }
    if (!(env && strcmp(env, "1") == 0) && total > mem_available() / 2)
        return;
    for (int64_t i = 0; i < count; i++) {
        mapped_arrays(m, &slots[i], &pd, &d, &ps, &s);
        populate_range(pd, d);
        populate_range(ps, s);
    }
}

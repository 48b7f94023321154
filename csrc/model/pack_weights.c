/* Load-time repacking of the weights whose format has a packed kernel layout (dsv3_format_traits.packed_bytes:
 * int4, csrc/linear/int4p.h), for a model loaded in the fast precision (dsv3_weight.act; exact keeps the stored
 * layout: parity). One owned buffer for all of them (dsv3_model.packed), filled by one thread team; afterwards
 * the kernels read only the packed copies, so the stored pages (file-backed mmap of a checkpoint) are handed
 * back to the kernel with MADV_PAGEOUT: they stay valid (a reader that still wants them faults them in again)
 * but no longer count in the resident set. kv_b_proj keeps its stored layout: absorbed attention reads its
 * rows directly (wsum_rows, per-head W_UV views; csrc/mla). dsv3_model.pack chooses: -1 (default) packs unless
 * DSV3_PACK=0 (A/B measurements), 0 never, 1 always. A weight that arrives already packed (a checkpoint
 * converted with dsv3 convert --pack: dsv3_weight.packed points into the mmapped file, data may be NULL) is
 * read in place: nothing is copied for it. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dsv3_quant.h"
#include "model_internal.h"

int dsv3_tensor_packs(const char *name) { return !strstr(name, "kv_b_proj"); }

static size_t packed_size(const dsv3_tensor_slot *t)
{
    const dsv3_weight *w = t->weight;
    if (t->is_vector || !w->data || w->packed || w->act != DSV3_ACT_FAST || !dsv3_tensor_packs(t->name))
        return 0;
    return (dsv3_weight_packed_bytes(w) + 63) & ~(size_t)63;
}

/* madvise over the whole pages inside [p, p + bytes); advisory, errors ignored. */
static void advise(const void *p, size_t bytes, int advice)
{
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)p + pg - 1) / pg * pg,
                    b = ((uintptr_t)p + bytes) / pg * pg;
    if (b > a)
        (void)madvise((void *)a, b - a, advice);
}

/* dsv3_weight.nan_free of the fast-precision fp8_block weights: one scan of their codes (a weight per task), so
 * the AVX2 fast kernel skips its per-row NaN checks (dot_fp_avx2.c; measured 2026-11-30: 13-17% of its time).
 * Only where AVX2 is the active path: no other kernel reads the flag, and the scan reads every weight byte once
 * at load (about 0.1 s per GB and thread). */
static void scan_nan(const dsv3_tensor_slot *slots, int64_t count)
{
    const int scan = dsv3_isa_active() == DSV3_ISA_AVX2;
#pragma omp parallel for schedule(dynamic, 1) num_threads(dsv3_num_threads())
    for (int64_t i = 0; i < count; i++) {
        if (slots[i].is_vector)
            continue;
        dsv3_weight *w = slots[i].weight;
        w->nan_free = scan && w->data && w->fmt == DSV3_FMT_FP8_BLOCK && w->act == DSV3_ACT_FAST &&
                      !dsv3_weight_rows_nan(w, 0, w->n);
    }
}

dsv3_status dsv3_model_pack(dsv3_model *m, const dsv3_tensor_slot *slots, int64_t count, dsv3_error *err)
{
    for (int64_t i = 0; i < count; i++) /* a second prepare: the weights packed here back to the stored layout */
        if (dsv3_model_packed_at_load(m, slots[i].weight))
            slots[i].weight->packed = NULL;
    scan_nan(slots, count);
    dsv3_free(m->packed);
    m->packed = NULL;
    m->packed_bytes = 0;
    for (int64_t i = 0; i < count; i++) { /* stored packed: only the fast kernels read that layout */
        const dsv3_weight *w = slots[i].weight;
        if (w->packed && w->act != DSV3_ACT_FAST)
            return dsv3_fail(err, DSV3_E_VALUE, "tensor %s is stored in the packed %s layout, which only the fast "
                             "precision reads (unpack it for the exact precision)", slots[i].name,
                             dsv3_formats[w->fmt].name);
    }
    const char *env = getenv("DSV3_PACK");
    if (m->pack == 0 || (m->pack < 0 && env && strcmp(env, "0") == 0))
        return DSV3_OK;
    size_t total = 0;
    for (int64_t i = 0; i < count; i++)
        total += packed_size(&slots[i]);
    if (!total)
        return DSV3_OK;
    unsigned char *buf = dsv3_alloc(total);
    if (!buf)
        return dsv3_fail(err, DSV3_E_NOMEM, "out of memory packing the int4 weights (%zu bytes)", total);
#ifdef MADV_HUGEPAGE
    advise(buf, total, MADV_HUGEPAGE); /* fewer faults while packing, fewer TLB misses while decoding */
#endif
    const dsv3_isa isa = dsv3_isa_active();
#pragma omp parallel num_threads(dsv3_num_threads())
    {
        size_t off = 0;
        for (int64_t i = 0; i < count; i++) {
            const size_t b = packed_size(&slots[i]);
            if (b)
                dsv3_formats[slots[i].weight->fmt].pack_team(slots[i].weight, buf + off, isa);
            off += b;
        }
    }
    size_t off = 0;
    for (int64_t i = 0; i < count; i++) {
        const size_t b = packed_size(&slots[i]);
        if (!b)
            continue;
        dsv3_weight *w = slots[i].weight;
        w->packed = buf + off;
        off += b;
        size_t db;
        int64_t sr, sc;
        if (dsv3_quant_layout(w->fmt, w->n, w->k, w->group, &db, &sr, &sc, NULL) == DSV3_OK)
#ifdef MADV_PAGEOUT
            advise(w->data, db, MADV_PAGEOUT);
#endif
    }
    m->packed = buf;
    m->packed_bytes = total;
    return DSV3_OK;
}

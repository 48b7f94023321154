/* dsv3: public C API of the compute core. Plain C99, no Python types below this line.
 *
 * Conventions (every module follows them):
 *  - every entry point returns a dsv3_status and, on failure, fills a dsv3_error message;
 *    no abort(), no exit(), no crash on bad input;
 *  - kernels that differ per ISA are reached through a per-concern table of function pointers,
 *    one table per ISA (scalar, avx2, avx512); dsv3_isa_active() picks the default, and every
 *    dispatching entry can be given an explicit ISA so tests compare paths on one machine;
 *  - threads: OpenMP with dsv3_num_threads(); reductions have a fixed order so results do not
 *    depend on the thread count.
 */
#ifndef DSV3_H
#define DSV3_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DSV3_VERSION "0.1.0"

/* ---- status and errors ---- */
typedef enum {
    DSV3_OK = 0,
    DSV3_E_VALUE = 1,       /* bad argument value or shape          -> ValueError  */
    DSV3_E_TYPE = 2,        /* wrong dtype / kind                   -> TypeError   */
    DSV3_E_NOMEM = 3,       /* allocation failed                    -> MemoryError */
    DSV3_E_IO = 4,          /* file / OS failure                    -> OSError     */
    DSV3_E_UNSUPPORTED = 5, /* ISA or feature missing on this CPU   -> RuntimeError */
    DSV3_E_INTERNAL = 6     /* invariant broken: a bug              -> RuntimeError */
} dsv3_status;

#define DSV3_ERRMSG 512
typedef struct {
    dsv3_status status;
    char msg[DSV3_ERRMSG];
} dsv3_error;

/* Record a failure (printf-style) in err (may be NULL) and return status. */
dsv3_status dsv3_fail(dsv3_error *err, dsv3_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Overflow-checked size arithmetic: returns 0 on overflow. */
int dsv3_mul_size(size_t a, size_t b, size_t *out);

/* Aligned allocation (64 bytes) for kernels; NULL on failure. */
void *dsv3_alloc(size_t bytes);
void dsv3_free(void *p);
/* One aligned allocation carved into count buffers: out[i] receives bytes[i] bytes, each buffer
 * 64-byte aligned (a zero size still gets a valid, empty position). Returns the block (free it with
 * dsv3_free), or NULL when a size is negative, the total overflows, or memory is short. */
void *dsv3_alloc_carved(const int64_t *bytes, int count, void **out);

/* ---- CPU features and dispatch ---- */
typedef enum { DSV3_ISA_SCALAR = 0, DSV3_ISA_AVX2 = 1, DSV3_ISA_AVX512 = 2, DSV3_ISA_COUNT = 3 } dsv3_isa;

typedef struct {
    int sse42, avx, avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512dq, avx512cd;
    int avx512_bf16, avx512_vnni, avx512_vbmi, avx512_vbmi2, avx512_fp16, amx;
    int os_avx, os_avx512; /* the OS saves the registers (XGETBV) */
} dsv3_cpu_features;

/* Detected once (thread-safe to call repeatedly). */
const dsv3_cpu_features *dsv3_cpu(void);
/* 1 if this CPU can run kernels built for isa. */
int dsv3_isa_supported(dsv3_isa isa);
/* The best supported ISA, or the one forced by DSV3_ISA (set at dsv3_init). */
dsv3_isa dsv3_isa_active(void);
const char *dsv3_isa_name(dsv3_isa isa);
/* Parse "scalar" / "avx2" / "avx512". */
dsv3_status dsv3_isa_parse(const char *name, dsv3_isa *out, dsv3_error *err);
/* Force an ISA (fails clearly when the CPU lacks it). */
dsv3_status dsv3_isa_set(dsv3_isa isa, dsv3_error *err);
/* Resolve an explicit request: -1 means "active". Fails if unsupported. */
dsv3_status dsv3_isa_resolve(int requested, dsv3_isa *out, dsv3_error *err);

/* One-time start-up: reads DSV3_ISA and DSV3_NUM_THREADS. */
dsv3_status dsv3_init(dsv3_error *err);

/* ---- threads ---- */
/* Threads of the next parallel region: the calling thread's pinned count (dsv3_threads_pin) when it
 * has one, else the global setting (dsv3_set_num_threads; OpenMP's default when unset). */
int dsv3_num_threads(void);
dsv3_status dsv3_set_num_threads(int n, dsv3_error *err);
/* Snapshot the thread count for the rest of a call on the calling thread: until the matching unpin,
 * dsv3_num_threads() on this thread returns the count read here, whatever another thread sets
 * meanwhile (scratch sized for it stays valid). Nests: pass the returned value to dsv3_threads_unpin. */
int dsv3_threads_pin(void);
void dsv3_threads_unpin(int previous);

#ifdef __cplusplus
}
#endif
#endif /* DSV3_H */

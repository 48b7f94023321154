/* A minimal test harness for the C core (no Python): check macros, a counter of failures, a
 * deterministic random stream, and the list of ISAs this CPU runs. Each test_*.c file exports one
 * `void test_<concern>(void)` that main() (test_core.c) calls. */
#ifndef DSV3_CTEST_H
#define DSV3_CTEST_H

#include <stdint.h>
#include <stdio.h>

#include "dsv3.h"
#include "dsv3_quant.h"

extern int ctest_failures, ctest_checks;

/* Records one check; prints file:line and the message of a failing one (the first 50 per run). */
void ctest_check(int ok, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
#define CHECK(cond, ...) ctest_check(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
/* A call expected to succeed: prints the core's message when it does not. */
#define CHECK_OK(call, err)                                                                          \
    do {                                                                                             \
        dsv3_status st_ = (call);                                                                    \
        ctest_check(st_ == DSV3_OK, __FILE__, __LINE__, "%s -> status %d: %s", #call, (int)st_,     \
                    (err)->msg);                                                                     \
    } while (0)
/* A call expected to fail with `want` and a non-empty message. */
#define CHECK_FAIL(call, want, err)                                                                  \
    do {                                                                                             \
        (err)->msg[0] = 0;                                                                           \
        dsv3_status st_ = (call);                                                                    \
        ctest_check(st_ == (want) && (err)->msg[0], __FILE__, __LINE__,                              \
                    "%s -> status %d (want %d), message '%s'", #call, (int)st_, (int)(want),          \
                    (err)->msg);                                                                     \
    } while (0)

/* A call expected to fail with any status and a message (e.g. DSV3_E_VALUE or DSV3_E_NOMEM for sizes
 * beyond any machine), the point being that it returns. */
#define CHECK_ERR(call, err)                                                                         \
    do {                                                                                             \
        (err)->msg[0] = 0;                                                                           \
        dsv3_status st_ = (call);                                                                    \
        ctest_check(st_ != DSV3_OK && (err)->msg[0], __FILE__, __LINE__, "%s -> status %d, message '%s'", \
                    #call, (int)st_, (err)->msg);                                                    \
    } while (0)

/* splitmix64 stream: uniform floats in [-1, 1). */
uint64_t ctest_next(uint64_t *s);
float ctest_uniform(uint64_t *s);
void ctest_fill(float *a, int64_t n, float scale, uint64_t *s);

/* A random weight [n, k] (uniform in [-amp, amp)) quantised to fmt with group (0: the format's own), in
 * buffers the struct owns (ctest_qweight_free). 1 on success; 0 when the layout is refused or memory runs
 * out (nothing to free then). */
typedef struct {
    dsv3_weight w;
    void *data, *scale;
} ctest_qweight;
int ctest_qweight_random(ctest_qweight *q, dsv3_format fmt, int group, int64_t n, int64_t k, float amp, uint64_t *rng);
void ctest_qweight_free(ctest_qweight *q);

/* ISAs this CPU supports, scalar first; returns the count. */
int ctest_isas(dsv3_isa out[DSV3_ISA_COUNT]);

void test_dtypes(void);
void test_linear(void);
void test_linear_plan(void);
void test_errors(void);
void test_model(void);
void test_absorb(void);
void test_overflow(void);
void test_indexer(void);

#endif

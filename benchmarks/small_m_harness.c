/* Small-M linear harness: best-of thread CPU time of dsv3_linear on one thread, AVX2 path, bf16 or int8 weights
 * (FAST=1 in the environment: int8 in the fast precision, Q8 activations), M = 1, 2, 3, 4, 8, 11, 12, weights
 * streamed from memory (`copies` copies of W, used in turn) or from cache (1 copy of a small W). CPU time rather
 * than wall time because the machines these run on are shared: a descheduled thread does not count. Prints the
 * weight bytes per second and the f32-FMA-equivalents per second (M K N / 8) of each M.
 *
 * Build against an in-place build's objects (python setup.py build_ext --inplace), from the repository root:
 *     gcc -O2 -std=c99 -D_GNU_SOURCE -Icsrc/include -Icsrc -o /tmp/small_m_harness benchmarks/small_m_harness.c \
 *         $(find build -name "*.o" -path "*csrc*" ! -name "bind_*" ! -name module.o) -fopenmp -ldl -lm
 *     /tmp/small_m_harness bf16 7168 2048 4 3        # format K N copies rounds
 *     FAST=1 /tmp/small_m_harness int8 2048 7168 4 3 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsv3.h"
#include "dsv3_linear.h"

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s bf16|int8 K N copies rounds\n", argv[0]);
        return 2;
    }
    const int bf = strcmp(argv[1], "bf16") == 0, fast = getenv("FAST") != NULL;
    const int K = atoi(argv[2]), N = atoi(argv[3]), copies = atoi(argv[4]), rounds = atoi(argv[5]);
    enum { NM = 7 };
    const int ms[NM] = {1, 2, 3, 4, 8, 11, 12};
    dsv3_error err;
    dsv3_set_num_threads(1, &err);
    const size_t wb = (size_t)N * K * (bf ? 2 : 1);
    dsv3_weight *w = calloc((size_t)copies, sizeof *w);
    for (int c = 0; c < copies; c++) { /* finite bf16 codes of magnitude ~1, any int8 codes */
        unsigned char *d = malloc(wb);
        float *s = malloc((size_t)N * 4);
        for (size_t i = 0; i < wb; i++)
            d[i] = bf ? ((i & 1) ? (unsigned char)(0x3c + i % 3) : (unsigned char)(i * 7))
                      : (unsigned char)(i * 37 % 255);
        for (int n = 0; n < N; n++)
            s[n] = 0.01f;
        w[c] = (dsv3_weight){.fmt = bf ? DSV3_FMT_BF16 : DSV3_FMT_INT8, .n = N, .k = K, .data = d,
                             .scale = bf ? NULL : s, .scale2 = 1.0f, .group = bf ? 0 : -1, .act = fast};
    }
    float *x = malloc(sizeof(float) * 16 * K), *y = malloc(sizeof(float) * 16 * N);
    for (int i = 0; i < 16 * K; i++)
        x[i] = (float)((i * 13) % 17) * 0.1f - 0.8f;
    double best[NM];
    for (int i = 0; i < NM; i++)
        best[i] = 1e30;
    for (int r = 0, it = 0; r < rounds; r++)
        for (int mi = 0; mi < NM; mi++) { /* the Ms interleaved, round by round */
            const double t0 = cpu_now();
            for (int c = 0; c < copies; c++)
                if (dsv3_linear(x, ms[mi], &w[it++ % copies], NULL, y, DSV3_ISA_AVX2, &err) != DSV3_OK) {
                    fprintf(stderr, "%s\n", err.msg);
                    return 1;
                }
            const double t = (cpu_now() - t0) / copies;
            best[mi] = t < best[mi] ? t : best[mi];
        }
    printf("%s%s %dx%d copies %d:", argv[1], fast ? "/fast" : "", K, N, copies);
    for (int mi = 0; mi < NM; mi++)
        printf(" M%d %.1f GB/s %.2f GFMA/s", ms[mi], wb / best[mi] / 1e9, (double)ms[mi] * K * N / 8 / best[mi] / 1e9);
    printf("\n");
    return 0;
}

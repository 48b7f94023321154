/* Thread count used by every parallel region (OpenMP), and its per-call snapshot.
 *
 * dsv3_set_num_threads may be called from any Python thread while another thread's call runs (the
 * binding releases the GIL around compute). A call that sizes per-thread scratch and later opens a
 * region must see one thread count from start to end, so entry points pin it on their thread
 * (dsv3_threads_pin) and every dsv3_num_threads() on that thread returns the snapshot until unpinned.
 * The pinned value is OpenMP threadprivate (one per OS thread); the global is read atomically. */
#include "dsv3.h"

#include <omp.h>

static int g_threads; /* 0: OpenMP's default */
static int t_pinned;  /* this thread's snapshot, 0: none */
#pragma omp threadprivate(t_pinned)

static int global_threads(void)
{
    const int n = __atomic_load_n(&g_threads, __ATOMIC_RELAXED);
    return n > 0 ? n : omp_get_max_threads();
}

int dsv3_num_threads(void)
{
    return t_pinned > 0 ? t_pinned : global_threads();
}

dsv3_status dsv3_set_num_threads(int n, dsv3_error *err)
{
    if (n < 1 || n > 4096)
        return dsv3_fail(err, DSV3_E_VALUE, "number of threads must be in 1..4096, got %d", n);
    __atomic_store_n(&g_threads, n, __ATOMIC_RELAXED);
    return DSV3_OK;
}

int dsv3_threads_pin(void)
{
    const int previous = t_pinned;
    if (previous <= 0)
        t_pinned = global_threads();
    return previous;
}

void dsv3_threads_unpin(int previous)
{
    t_pinned = previous;
}

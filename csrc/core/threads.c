/* Thread count used by every parallel region (OpenMP). */
#include "dsv3.h"

#include <omp.h>

static int g_threads; /* 0: OpenMP's default */

int dsv3_num_threads(void)
{
    return g_threads > 0 ? g_threads : omp_get_max_threads();
}

dsv3_status dsv3_set_num_threads(int n, dsv3_error *err)
{
    if (n < 1 || n > 4096)
        return dsv3_fail(err, DSV3_E_VALUE, "number of threads must be in 1..4096, got %d", n);
    g_threads = n;
    return DSV3_OK;
}

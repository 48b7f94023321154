/* Error recording and small checked helpers shared by every module. */
#include "dsv3.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

dsv3_status dsv3_fail(dsv3_error *err, dsv3_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

int dsv3_mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

void *dsv3_alloc(size_t bytes)
{
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes)
        return NULL;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0)
        return NULL;
    return p;
}

void dsv3_free(void *p) { free(p); }

void *dsv3_alloc_carved(const int64_t *bytes, int count, void **out)
{
    size_t total = 0;
    for (int i = 0; i < count; i++) {
        if (bytes[i] < 0 || (uint64_t)bytes[i] > SIZE_MAX - 63 - total)
            return NULL;
        total += ((size_t)bytes[i] + 63) & ~(size_t)63;
    }
    unsigned char *block = dsv3_alloc(total), *p = block;
    for (int i = 0; block && i < count; i++) {
        out[i] = p;
        p += ((size_t)bytes[i] + 63) & ~(size_t)63;
    }
    return block;
}

/* oneDNN as the core sees it when the library is not loaded: the C runner links this instead of
 * csrc/onednn (whose headers come from the onednn-devel wheel, a build-time requirement only), so
 * every dsv3_linear call runs dsv3's own kernels, as it does by default. */
#include "dsv3_onednn.h"

dsv3_status dsv3_onednn_load(const char *path, dsv3_error *err)
{
    return dsv3_fail(err, DSV3_E_UNSUPPORTED, "oneDNN is not part of the C test runner (%s)", path ? path : "");
}

int dsv3_onednn_available(void) { return 0; }

int dsv3_onednn_supports(int w_is_bf16)
{
    (void)w_is_bf16;
    return 0;
}

const char *dsv3_onednn_isa(void) { return ""; }

void dsv3_onednn_version(char *buf, size_t size)
{
    if (buf && size)
        buf[0] = '\0';
}

dsv3_status dsv3_onednn_linear(const float *x, int64_t m, const void *w, int w_is_bf16, int64_t n, int64_t k,
                               const float *bias, float *y, dsv3_error *err)
{
    (void)x; (void)m; (void)w; (void)w_is_bf16; (void)n; (void)k; (void)bias; (void)y;
    return dsv3_fail(err, DSV3_E_UNSUPPORTED, "oneDNN is not part of the C test runner");
}

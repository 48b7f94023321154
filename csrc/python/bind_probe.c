/* _dsv3 bindings: machine probes (read bandwidth, compute peaks); see csrc/include/dsv3_probe.h. */
#include "bind.h"
#include "dsv3_probe.h"

#include <string.h>

static PyObject *result_dict(const dsv3_probe_result *r, int bandwidth)
{
    PyObject *checksum = bandwidth ? PyLong_FromUnsignedLongLong(r->checksum_u64) : PyFloat_FromDouble(r->checksum);
    if (!checksum)
        return NULL;
    PyObject *d = Py_BuildValue("{s:d,s:d,s:d,s:N,s:i,s:s}", bandwidth ? "gbps" : "gflops", r->rate, "seconds",
                                r->seconds, bandwidth ? "bytes" : "flops", r->work, "checksum", checksum,
                                "threads", r->threads, "isa", dsv3_isa_name((dsv3_isa)r->isa));
    return d; /* "N" stole checksum, also on failure */
}

static int threads_arg(long long threads, int *out)
{
    if (threads < 0 || threads > 4096) {
        PyErr_Format(PyExc_ValueError, "threads must be 0 (all) or 1..4096, got %lld", threads);
        return 0;
    }
    *out = (int)threads;
    return 1;
}

/* probe_read_bw(bytes, repeats=5, threads=0, isa=None) -> dict */
static PyObject *probe_read_bw(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"bytes", "repeats", "threads", "isa", NULL};
    long long bytes, threads = 0;
    int repeats = 5, isa, nt;
    PyObject *isa_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L|iLO", kwlist, &bytes, &repeats, &threads, &isa_obj))
        return NULL;
    if (bytes <= 0)
        return PyErr_Format(PyExc_ValueError, "bytes must be positive, got %lld", bytes);
    if (!threads_arg(threads, &nt) || !dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    dsv3_error err = {0};
    dsv3_probe_result r;
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_probe_read_bw((size_t)bytes, repeats, nt, isa, &r, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    return result_dict(&r, 1);
}

/* probe_peak(kind, iters, repeats=3, threads=0, isa=None) -> dict */
static PyObject *probe_peak(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"kind", "iters", "repeats", "threads", "isa", NULL};
    static const char *const kinds[DSV3_PEAK_COUNT] = {"f32_fma", "bf16_dot", "int8_dot"};
    const char *kind_s;
    long long iters, threads = 0;
    int repeats = 3, isa, nt, kind = -1;
    PyObject *isa_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sL|iLO", kwlist, &kind_s, &iters, &repeats, &threads, &isa_obj))
        return NULL;
    for (int i = 0; i < DSV3_PEAK_COUNT; i++)
        if (strcmp(kind_s, kinds[i]) == 0)
            kind = i;
    if (kind < 0)
        return PyErr_Format(PyExc_ValueError, "unknown peak kind '%s': expected f32_fma, bf16_dot or int8_dot",
                            kind_s);
    if (!threads_arg(threads, &nt) || !dsv3_py_isa_arg(isa_obj, &isa))
        return NULL;
    dsv3_error err = {0};
    dsv3_probe_result r;
    dsv3_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dsv3_probe_peak((dsv3_peak_kind)kind, (int64_t)iters, repeats, nt, isa, &r, &err);
    Py_END_ALLOW_THREADS
    if (st != DSV3_OK)
        return dsv3_py_raise(st, &err);
    return result_dict(&r, 0);
}

/* probe_constants() -> dict of the inputs the peak loops use (tests predict checksums) */
static PyObject *probe_constants(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return Py_BuildValue("{s:i,s:K,s:d,s:d,s:d,s:d,s:i,s:i}", "chains", DSV3_PROBE_CHAINS, "fill",
                         (unsigned long long)DSV3_PROBE_FILL, "f32_a", (double)DSV3_PROBE_F32_A, "f32_b",
                         (double)DSV3_PROBE_F32_B, "f32_x0", (double)DSV3_PROBE_F32_X0, "bf16",
                         (double)DSV3_PROBE_BF16, "u8", DSV3_PROBE_U8, "s8", DSV3_PROBE_S8);
}

PyMethodDef dsv3_probe_methods[] = {
    {"probe_read_bw", (PyCFunction)(void (*)(void))probe_read_bw, METH_VARARGS | METH_KEYWORDS,
     "probe_read_bw(bytes, repeats=5, threads=0, isa=None) -> dict(gbps, seconds, bytes, checksum, threads, isa)"},
    {"probe_peak", (PyCFunction)(void (*)(void))probe_peak, METH_VARARGS | METH_KEYWORDS,
     "probe_peak(kind, iters, repeats=3, threads=0, isa=None) -> dict(gflops, seconds, flops, checksum, threads, isa)"},
    {"probe_constants", probe_constants, METH_NOARGS, "Inputs of the probe loops (for tests)."},
    {NULL, NULL, 0, NULL},
};

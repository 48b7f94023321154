"""Machine probes: read bandwidth and compute peaks, the roofline that benchmarks divide by.

All the work runs in C (csrc/probe/): the bandwidth probe stream-reads a buffer much larger than
the last-level cache with the widest loads of the kernel path, the peak probes run register-resident
loops of independent accumulator chains of one instruction (f32 FMA, bf16 pair dot, u8 x s8 dot).
Figures are the best of several repetitions; absolute numbers on a shared machine are noisy, the
point is to measure them in the same run as the thing they are compared with.
"""
import math

from ._native import lib

PEAK_KINDS = ("f32_fma", "bf16_dot", "int8_dot")
DEFAULT_READ_BYTES = 1 << 30
DEFAULT_PEAK_ITERS = 1 << 24


def _int_arg(name, value, lo):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return value


def _threads_arg(threads):
    if threads is None:
        return 0
    return _int_arg("threads", threads, 1)


def read_bandwidth(nbytes=DEFAULT_READ_BYTES, repeats=5, threads=None, isa=None):
    """Stream-read an ``nbytes`` buffer (>= 64 KiB; default 1 GiB) with ``threads`` threads
    (None: all dsv3 threads) on kernel path ``isa`` (None: active); best of ``repeats``.

    Returns a dict: ``gbps`` (1e9 bytes/s), ``seconds``, ``bytes``, ``checksum`` (wrapping uint64
    sum of the buffer words, word i = i * fill), ``threads``, ``isa``.
    """
    _int_arg("nbytes", nbytes, 1)
    _int_arg("repeats", repeats, 1)
    return lib.probe_read_bw(nbytes, repeats, _threads_arg(threads), isa)


def compute_peak(kind, iters=DEFAULT_PEAK_ITERS, repeats=3, threads=None, isa=None):
    """Peak rate of one instruction kind ('f32_fma', 'bf16_dot', 'int8_dot'): every thread runs
    ``iters`` iterations of independent register-resident chains; best of ``repeats``.

    Returns a dict: ``gflops`` (GFLOP/s, or GOPS for int8), ``seconds``, ``flops``, ``checksum``,
    ``threads``, ``isa``. bf16_dot is not available on the avx2 path (RuntimeError).
    """
    if kind not in PEAK_KINDS:
        raise ValueError(f"unknown peak kind {kind!r}: expected one of {', '.join(PEAK_KINDS)}")
    _int_arg("iters", iters, 1)
    _int_arg("repeats", repeats, 1)
    return lib.probe_peak(kind, iters, repeats, _threads_arg(threads), isa)


def roofline(nbytes=DEFAULT_READ_BYTES, iters=DEFAULT_PEAK_ITERS, repeats=5, threads=None, isa=None):
    """Everything a benchmark divides by, measured now: read bandwidth with all threads and with
    one thread, and the peak of every instruction kind the path has.

    Returns a dict: ``read_gbps``, ``read_gbps_1t``, ``peak_gflops`` {kind: GFLOP/s or None when the
    path lacks the instruction}, ``threads``, ``isa`` and ``details`` (the raw probe dicts).
    """
    bw = read_bandwidth(nbytes, repeats, threads, isa)
    bw1 = read_bandwidth(nbytes, repeats, 1, isa)
    peaks, details = {}, {"read": bw, "read_1t": bw1}
    for kind in PEAK_KINDS:
        try:
            r = compute_peak(kind, iters, max(1, repeats - 2), threads, isa)
        except RuntimeError:
            peaks[kind] = None
            continue
        peaks[kind] = r["gflops"]
        details[kind] = r
    for v in [bw["gbps"], bw1["gbps"]] + [p for p in peaks.values() if p is not None]:
        if not (math.isfinite(v) and v > 0):
            raise RuntimeError(f"probe returned a non-positive rate {v}: timer or kernel failure")
    return {"read_gbps": bw["gbps"], "read_gbps_1t": bw1["gbps"], "peak_gflops": peaks,
            "threads": bw["threads"], "isa": bw["isa"], "details": details}

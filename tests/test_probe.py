"""Machine probes: rates are positive and finite (no timing asserted beyond that), the work is
really done (checksums predicted independently with numpy), every path agrees, bad input raises."""
import math

import numpy as np
import pytest

import dsv3.probe as probe
from dsv3._native import lib

SUPPORTED = lib.isa_info()[1]
ISAS = [pytest.param(i, marks=pytest.mark.skipif(i not in SUPPORTED, reason=f"CPU lacks {i}"))
        for i in ("scalar", "avx2", "avx512")]
C = lib.probe_constants()
ITERS = 1000


def positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def expected_read_checksum(nbytes):
    words = np.arange(nbytes // 8, dtype=np.uint64) * np.uint64(C["fill"])  # wraps mod 2^64
    return int(words.sum(dtype=np.uint64))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [None, 1])
def test_read_bandwidth(isa, threads):
    nbytes = (1 << 20) + 8 * 37  # a tail that is not a whole block
    r = probe.read_bandwidth(nbytes, repeats=2, threads=threads, isa=isa)
    assert positive(r["gbps"]) and positive(r["seconds"])
    assert r["bytes"] == nbytes and r["isa"] == isa
    assert r["threads"] == (1 if threads == 1 else lib.num_threads())
    assert r["checksum"] == expected_read_checksum(nbytes)


def expected_peak_checksum(kind, iters, isa):
    chains = C["chains"]
    if kind == "f32_fma":
        a, b = np.float32(C["f32_a"]), np.float32(C["f32_b"])
        x = np.arange(chains, dtype=np.float32) * np.float32(C["f32_x0"])
        for _ in range(iters):
            if isa == "scalar":  # multiply then add, two roundings
                x = x * a + b
            else:  # fused: the float64 product is exact, one (double) rounding to float32
                x = (x.astype(np.float64) * np.float64(a) + np.float64(b)).astype(np.float32)
        return float(x.astype(np.float64).sum()), 1e-6
    if kind == "bf16_dot":
        p = C["bf16"] * C["bf16"]
        return float(sum(j + iters * 2 * p for j in range(chains))), 0.0
    q = 4 * C["u8"] * C["s8"]
    wrap = [((j + iters * q + 2**31) % 2**32) - 2**31 for j in range(chains)]
    return float(sum(wrap)), 0.0


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", probe.PEAK_KINDS)
def test_compute_peak(isa, kind):
    if kind == "bf16_dot" and isa == "avx2":
        with pytest.raises(RuntimeError, match="no bf16_dot instruction on the avx2 path"):
            probe.compute_peak(kind, ITERS, repeats=1, isa=isa)
        return
    for threads in (None, 1):
        r = probe.compute_peak(kind, ITERS, repeats=2, threads=threads, isa=isa)
        assert positive(r["gflops"]) and positive(r["seconds"]) and r["isa"] == isa
        want, rtol = expected_peak_checksum(kind, ITERS, isa)
        assert r["checksum"] == pytest.approx(want, rel=rtol, abs=0)


def test_roofline_small():
    r = probe.roofline(nbytes=1 << 20, iters=ITERS, repeats=3)
    assert positive(r["read_gbps"]) and positive(r["read_gbps_1t"])
    assert set(r["peak_gflops"]) == set(probe.PEAK_KINDS)
    assert positive(r["peak_gflops"]["f32_fma"])
    for kind, v in r["peak_gflops"].items():
        assert v is None or positive(v), kind


def test_bad_arguments():
    with pytest.raises(ValueError, match="must be >= 65536"):
        probe.read_bandwidth(1000)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        probe.read_bandwidth(1 << 20, repeats=0)
    with pytest.raises(TypeError, match="nbytes must be an int"):
        probe.read_bandwidth(1.5e6)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        probe.read_bandwidth(1 << 20, threads=0)
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        probe.read_bandwidth(1 << 20, isa="sse9")
    with pytest.raises(ValueError, match="unknown peak kind 'fp64_fma'"):
        probe.compute_peak("fp64_fma")
    with pytest.raises(ValueError, match="iters must be >= 1"):
        probe.compute_peak("f32_fma", 0)
    # the C entry points validate on their own
    with pytest.raises(ValueError, match="buffer must be >= 65536"):
        lib.probe_read_bw(4096)
    with pytest.raises(ValueError, match="threads must be 0"):
        lib.probe_read_bw(1 << 20, 1, 5000)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        lib.probe_peak("int8_dot", -3)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        lib.probe_peak("int8_dot", 10, 0)
    with pytest.raises(ValueError, match="unknown peak kind"):
        lib.probe_peak("f64", 10)


def test_cli_probe(python_run):
    r = python_run("import sys; from dsv3.cli import main; "
                   "sys.exit(main(['probe', '--bytes', '1048576', '--iters', '1000', '--isa', 'scalar']))")
    assert r.returncode == 0, r.stderr
    assert "read bandwidth" in r.stdout and "f32 FMA peak" in r.stdout
    r = python_run("import sys; from dsv3.cli import main; sys.exit(main(['probe', '--bytes', '100']))")
    assert r.returncode == 1 and "65536" in r.stderr

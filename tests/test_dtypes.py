"""dsv3.dtypes: conversions bit-exact with ml_dtypes on every ISA path, and DLPack import."""
import gc
import os
import sys
import tracemalloc
import warnings

import ml_dtypes
import numpy as np
import pytest

from dsv3 import dtypes
from dsv3._native import lib

SUPPORTED = lib.isa_info()[1]
ISAS = [pytest.param(i, marks=pytest.mark.skipif(i not in SUPPORTED, reason=f"CPU lacks {i}"))
        for i in ("scalar", "avx2", "avx512")]
CODED = ["bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float4_e2m1fn"]


def bits(a):
    """Raw bit patterns of an array, for bitwise comparison."""
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.itemsize])


def ref_encode(x, name):
    with warnings.catch_warnings(), np.errstate(invalid="ignore", over="ignore"):
        warnings.simplefilter("ignore")
        return x.astype(dtypes.DTYPES[name])


def all_codes(name):
    n = {"bfloat16": 1 << 16, "float4_e2m1fn": 16}.get(name, 256)
    return np.arange(n, dtype=np.uint16 if n > 256 else np.uint8).view(dtypes.DTYPES[name])


def tie_points(name):
    """Midpoints between consecutive representable values, their f32 neighbours, the values
    themselves, and the region around the largest finite value (exact in f32 for these types)."""
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.unique(np.abs(all_codes(name).astype(np.float64)))
        v = v[np.isfinite(v)]
        mids = (v[:-1] + v[1:]) / 2
        beyond = np.array([v[-1] * 1.0625, v[-1] * 1.125, v[-1] * 1.5, v[-1] * 2, 1e38, 3.4e38])
        pts = np.concatenate([v, mids, beyond, [v[0] / 2, v[0] / 4]]).astype(np.float32)
        pts = np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(0))])
    return np.concatenate([pts, -pts])


def sweep(name, n=1 << 20, seed=0):
    """>= 1e6 f32 inputs: random bit patterns (all exponents, subnormals, NaN payloads, inf), random
    magnitudes within the type's range, bf16 rounding ties, and all exact tie points."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    raw[:4096] &= 0x807fffff  # f32 subnormals
    raw[4096:8192] |= 0x7f800000  # inf and NaNs with payloads
    raw[8192:16384] = (raw[8192:16384] & 0xffff0000) | 0x8000  # bf16 halfway cases
    with np.errstate(invalid="ignore"):
        finite = np.abs(all_codes(name).astype(np.float64))
    finite = finite[np.isfinite(finite) & (finite > 0)]
    lo, hi = np.log2(finite.min()) - 2, np.log2(finite.max()) + 2
    mags = np.exp2(rng.uniform(lo, hi, size=n // 4)) * rng.choice([-1, 1], size=n // 4)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan], dtype=np.float32)
    with np.errstate(over="ignore"):
        mags = mags.astype(np.float32)
    return np.concatenate([raw.view(np.float32), mags, tie_points(name), special])


def check_decode(name, isa):
    codes = all_codes(name)
    for reps in (1, 3):  # a second, odd length exercises the SIMD tails
        a = np.tile(codes, reps)[: len(codes) * reps - (reps > 1) * 5]
        got = lib.convert(a, "float32", isa=isa)
        assert got.dtype == np.float32 and got.shape == a.shape
        np.testing.assert_array_equal(bits(got), bits(a.astype(np.float32)), err_msg=f"{name} {isa}")


def check_encode(name, isa, n=1 << 20):
    x = sweep(name, n)
    got = lib.convert(x, name, isa=isa)
    ref = ref_encode(x, name)
    assert got.dtype == ref.dtype
    bad = np.nonzero(bits(got) != bits(ref))[0]
    assert len(bad) == 0, (f"{name} {isa}: {len(bad)} mismatches, e.g. input bits "
                           f"{[hex(v) for v in x.view(np.uint32)[bad[:5]]]}")


def core_checks(isa):
    for name in CODED:
        check_decode(name, isa)
        check_encode(name, isa, n=1 << 18)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", CODED)
def test_decode_every_code(name, isa):
    check_decode(name, isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", CODED)
def test_encode_sweep(name, isa):
    check_encode(name, isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", CODED)
def test_tie_points_exact(name, isa):
    x = tie_points(name)
    np.testing.assert_array_equal(bits(lib.convert(x, name, isa=isa)), bits(ref_encode(x, name)))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 15, 17, 1023])
def test_odd_lengths(isa, n):
    x = sweep("float8_e4m3fn", 4096, seed=n)[:n].copy()
    for name in CODED:
        enc = lib.convert(x, name, isa=isa)
        np.testing.assert_array_equal(bits(enc), bits(ref_encode(x, name)), err_msg=name)
        np.testing.assert_array_equal(bits(lib.convert(enc, "float32", isa=isa)),
                                      bits(enc.astype(np.float32)), err_msg=name)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 17, 63, 64, 65, 1023, 70001])
def test_e4m3_to_bf16(isa, n):
    a = np.tile(np.arange(256, dtype=np.uint8), n // 256 + 1)[:n].view(ml_dtypes.float8_e4m3fn)
    got = lib.convert(a, "bfloat16", isa=isa)
    np.testing.assert_array_equal(bits(got), bits(a.astype(ml_dtypes.bfloat16)))


def test_result_independent_of_threads():
    import dsv3
    x = sweep("bfloat16", 300_000)
    old = dsv3.get_num_threads()
    try:
        dsv3.set_num_threads(1)
        one = lib.convert(x, "bfloat16")
        dsv3.set_num_threads(2)
        two = lib.convert(x, "bfloat16")
    finally:
        dsv3.set_num_threads(old)
    np.testing.assert_array_equal(bits(one), bits(two))


def test_python_wrappers():
    x = np.linspace(-500, 500, 1001, dtype=np.float32).reshape(7, 143)
    for alias, name in [("e4m3", "float8_e4m3fn"), (ml_dtypes.bfloat16, "bfloat16"), ("ue8m0", "float8_e8m0fnu")]:
        q = dtypes.from_float32(x, alias)
        assert q.dtype == dtypes.DTYPES[name] and q.shape == x.shape
        np.testing.assert_array_equal(bits(dtypes.to_float32(q)), bits(ref_encode(x, name).astype(np.float32)))
    np.testing.assert_array_equal(dtypes.to_float32(x), x)
    assert dtypes.to_float32(x) is not x
    assert dtypes.from_float32(np.zeros((0, 3), np.float32), "bf16").shape == (0, 3)


def test_bad_inputs():
    x = np.ones(10, np.float32)
    with pytest.raises(TypeError, match="float64"):
        lib.convert(np.ones(10), "bfloat16")
    with pytest.raises(ValueError, match="C-contiguous"):
        lib.convert(np.ones((4, 4), np.float32)[:, ::2], "bfloat16")
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        lib.convert(x, "bfloat16", isa="sse9")
    with pytest.raises(TypeError, match="isa must be"):
        lib.convert(x, "bfloat16", isa=2)
    with pytest.raises(ValueError, match="unknown dtype 'float7'"):
        lib.convert(x, "float7")
    with pytest.raises(ValueError, match="one side must be float32"):
        lib.convert(x.astype(ml_dtypes.bfloat16), "float8_e4m3fn")
    with pytest.raises(TypeError, match="numpy array"):
        dtypes.to_float32([1.0, 2.0])
    with pytest.raises(TypeError, match="unsupported dtype int32"):
        dtypes.to_float32(np.ones(3, np.int32))
    with pytest.raises(TypeError, match="must be float32"):
        dtypes.from_float32(np.ones(3), "bf16")
    with pytest.raises(TypeError, match="unsupported dtype"):
        dtypes.from_float32(x, np.int8)
    with pytest.raises(ValueError, match="C-contiguous"):
        dtypes.from_float32(np.ones((4, 4), np.float32).T, "bf16")
    for isa in ("scalar", "avx2", "avx512"):
        if isa not in SUPPORTED:
            with pytest.raises(RuntimeError, match="not supported"):
                lib.convert(x, "bfloat16", isa=isa)


@pytest.mark.parametrize("env_isa", ["scalar", "avx2"])
def test_active_path_from_env(python_run, env_isa):
    if env_isa not in SUPPORTED:
        pytest.skip(f"CPU lacks {env_isa}")
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.path.insert(0, {here!r}); import dsv3, test_dtypes as t; "
            f"assert dsv3.cpu_info()['isa'] == {env_isa!r}; t.core_checks(None); print('ok')")
    r = python_run(code, {"DSV3_ISA": env_isa})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


# ---- DLPack ----
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("tdt,ndt", [("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16),
                                     ("float8_e4m3fn", ml_dtypes.float8_e4m3fn),
                                     ("float8_e5m2", ml_dtypes.float8_e5m2), ("uint8", np.uint8),
                                     ("int8", np.int8), ("int32", np.int32), ("int64", np.int64)])
def test_dlpack_zero_copy(tdt, ndt):
    t = (torch.randn(5, 7) * 50).to(getattr(torch, tdt))
    a = dtypes.as_array(t)
    assert a.dtype == np.dtype(ndt) and a.shape == (5, 7)
    assert a.ctypes.data == t.data_ptr()
    tb = t.view(torch.uint8) if t.element_size() == 1 else t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    np.testing.assert_array_equal(bits(a) if a.itemsize < 8 else a.view(np.int64), tb.numpy().view(bits(a).dtype if a.itemsize < 8 else np.int64))
    if tdt == "float32":
        a[1, 2] = 123.0
        assert float(t[1, 2]) == 123.0


def test_dlpack_keeps_tensor_alive():
    t = torch.arange(1000, dtype=torch.float32)
    a = dtypes.as_array(t)[10:20]
    del t
    gc.collect()
    np.testing.assert_array_equal(a, np.arange(10, 20, dtype=np.float32))


def test_dlpack_scalar_and_empty():
    assert dtypes.as_array(torch.tensor(3.5)).shape == ()
    assert float(dtypes.as_array(torch.tensor(3.5))) == 3.5
    assert dtypes.as_array(torch.zeros(0, 4)).shape == (0, 4)


def test_dlpack_errors():
    with pytest.raises(ValueError, match="not C-contiguous"):
        dtypes.as_array(torch.zeros(4, 6).t())
    with pytest.raises(TypeError, match="unsupported DLPack dtype"):
        dtypes.as_array(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="__dlpack__"):
        dtypes.as_array([1, 2, 3])
    with pytest.raises(TypeError, match="no __dlpack__"):
        lib.from_dlpack(object())
    a = np.arange(3.0)
    assert dtypes.as_array(a) is a


def test_dlpack_no_leaks():
    t = torch.arange(4096, dtype=torch.bfloat16)
    bad = torch.zeros(4, 6).t()
    for _ in range(50):  # warm-up
        dtypes.as_array(t)
    gc.collect()
    rc = sys.getrefcount(t)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(1000):
        a = dtypes.as_array(t)
        del a
        with pytest.raises(ValueError):
            dtypes.as_array(bad)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert sys.getrefcount(t) == rc
    assert grown < 64 * 1024, f"traced memory grew by {grown} bytes over 1000 imports"


@pytest.mark.parametrize("isa", ISAS)
def test_exact_under_flush_denormal(isa):
    """FTZ/DAZ set by another library (torch.set_flush_denormal) must not change any result."""
    x = sweep("float8_e4m3fn", 1 << 14)
    torch.set_flush_denormal(True)
    try:
        got = {name: lib.convert(x, name, isa=isa) for name in CODED}  # small n: runs on this thread
        dec = {name: lib.convert(all_codes(name), "float32", isa=isa) for name in CODED}
    finally:
        torch.set_flush_denormal(False)
    for name in CODED:
        np.testing.assert_array_equal(bits(got[name]), bits(ref_encode(x, name)), err_msg=name)
        np.testing.assert_array_equal(bits(dec[name]), bits(all_codes(name).astype(np.float32)), err_msg=name)


@pytest.mark.skipif(not os.environ.get("DSV3_EXHAUSTIVE"), reason="set DSV3_EXHAUSTIVE=1 (minutes)")
def test_encode_exhaustive_all_f32():
    """Every one of the 2^32 f32 bit patterns, every coded dtype, every supported ISA."""
    isas = [i for i in ("scalar", "avx2", "avx512") if i in SUPPORTED]
    for start in range(0, 1 << 32, 1 << 24):
        x = np.arange(start, start + (1 << 24), dtype=np.uint64).astype(np.uint32).view(np.float32)
        for name in CODED:
            ref = bits(ref_encode(x, name))
            for isa in isas:
                bad = np.nonzero(bits(lib.convert(x, name, isa=isa)) != ref)[0]
                assert len(bad) == 0, f"{name} {isa}: input {hex(x.view(np.uint32)[bad[0]])}"

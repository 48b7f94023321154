"""oneDNN loading and the plain matmul, against numpy float64."""
import ml_dtypes
import numpy as np
import pytest

from dsv3 import onednn
from dsv3._native import lib

needs_onednn = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN unavailable: {onednn.status()['onednn_error']}")


def needs_matmul(dtype):
    """Skip (with the reason) where oneDNN has no matmul for weights of this dtype on this CPU."""
    why = onednn.why_not(dtype)
    return pytest.mark.skipif(why is not None, reason=str(why))


def test_status_shape():
    st = onednn.status()
    assert set(st) == {"onednn", "onednn_error", "onednn_isa", "onednn_matmul"}
    assert (st["onednn"] is None) != (st["onednn_error"] is None)
    assert set(st["onednn_matmul"]) == {"float32", "bfloat16"}
    if st["onednn"] is None:
        assert st["onednn_isa"] is None and not any(st["onednn_matmul"].values())
    else:
        assert st["onednn_isa"] in ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core",
                                    "avx512_core_vnni", "avx512_core_bf16", "avx512_core_fp16",
                                    "avx512_core_amx", "avx512_core_amx_fp16")
        assert st["onednn_matmul"]["float32"]  # oneDNN has an f32 matmul on every x86-64 CPU
    assert onednn.status() == st  # loaded once, same answer
    import dsv3
    info = dsv3.cpu_info()
    assert {k: info[k] for k in st} == st
    for dt in ("float32", "bfloat16"):
        assert onednn.supports(dt) == st["onednn_matmul"][dt]
        assert (onednn.why_not(dt) is None) == onednn.supports(dt)
    assert onednn.supports(ml_dtypes.bfloat16) == onednn.supports("bfloat16")
    with pytest.raises(ValueError, match="float32, bfloat16"):
        onednn.supports("float16")
    with pytest.raises(ValueError, match="must be 'float32' or 'bfloat16'"):
        lib.onednn_supports("int8")
    with pytest.raises(TypeError, match="must be 'float32' or 'bfloat16'"):
        lib.onednn_supports(1)


@needs_onednn
def test_version_and_runtime():
    v = onednn.status()["onednn"]
    assert v.startswith("3.2.") and v.endswith("(gomp)")
    assert lib.onednn_version() == v
    import dsv3
    assert dsv3.cpu_info()["onednn"] == v


@pytest.mark.parametrize("m", [1, 7, 128])
@pytest.mark.parametrize("n", [1, 3, 64, 255, 300])
@pytest.mark.parametrize("wdtype", [pytest.param("float32", marks=needs_matmul("float32")),
                                    pytest.param("bfloat16", marks=needs_matmul("bfloat16"))])
def test_linear_matches_numpy(m, n, wdtype):
    rng = np.random.default_rng(m * 1000 + n)
    k = 576
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32) if n % 2 else None
    if wdtype == "bfloat16":
        w = w.astype(ml_dtypes.bfloat16)
        xr = x.astype(ml_dtypes.bfloat16).astype(np.float64)  # oneDNN's bf16 matmul rounds x to bf16
    else:
        xr = x.astype(np.float64)
    ref = xr @ w.astype(np.float64).T + (0 if bias is None else bias)
    y = onednn.linear(x, w, bias)
    assert y.dtype == np.float32 and y.shape == (m, n)
    # f32 accumulation over K=576 of unit-variance products: error ~ sqrt(K) * 2^-24 * |terms|
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-4)


@needs_matmul("float32")
def test_linear_cache_reuse_and_many_shapes():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 16), dtype=np.float32)
    for rep in range(2):
        for m in range(1, 41):  # more shapes than cache slots: eviction path
            x = rng.standard_normal((m, 16), dtype=np.float32)
            np.testing.assert_allclose(onednn.linear(x, w), x.astype(np.float64) @ w.T.astype(np.float64),
                                       rtol=1e-5, atol=1e-5)


@needs_matmul("float32")
def test_linear_bad_inputs():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"w must be \[n, 8\]"):
        onednn.linear(x, np.ones((3, 7), np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        onednn.linear(x.astype(np.float64), np.ones((3, 8), np.float32))
    with pytest.raises(TypeError, match="w must have dtype float32 or bfloat16"):
        onednn.linear(x, np.ones((3, 8), np.float16))
    with pytest.raises(ValueError, match="bias must have 3 elements"):
        onednn.linear(x, np.ones((3, 8), np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        onednn.linear(np.ones((8, 2), np.float32).T, np.ones((3, 8), np.float32))
    assert onednn.linear(np.ones((0, 8), np.float32), np.ones((3, 8), np.float32)).shape == (0, 3)


def test_bogus_path_errors():
    with pytest.raises(OSError, match="cannot load '/nonexistent/libdnnl.so.3'"):
        lib.onednn_load("/nonexistent/libdnnl.so.3")
    with pytest.raises(RuntimeError, match="symbol dnnl_version not found"):
        lib.onednn_load("libm.so.6")  # a real library without the oneDNN API


def test_unavailable_in_fresh_process(python_run):
    code = ("import dsv3, numpy as np\n"
            "from dsv3 import onednn\n"
            "st = onednn.status(); assert st['onednn'] is None, st\n"
            "assert 'cannot load' in st['onednn_error'] and '/bogus/libdnnl.so.3' in st['onednn_error']\n"
            "assert dsv3.cpu_info()['onednn'] is None\n"
            "try:\n"
            "    onednn.linear(np.ones((1, 4), np.float32), np.ones((2, 4), np.float32))\n"
            "except RuntimeError as e:\n"
            "    assert 'oneDNN is unavailable' in str(e); print('ok')\n"
            "try:\n"
            "    dsv3._lib.onednn_linear(np.ones((1, 4), np.float32), np.ones((2, 4), np.float32))\n"
            "except RuntimeError as e:\n"
            "    assert 'not loaded' in str(e); print('ok2')\n")
    r = python_run(code, {"DSV3_ONEDNN_LIB": "/bogus/libdnnl.so.3"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "ok2"]


# An AVX2-only CPU (e.g. AMD Zen 3), simulated on any machine: oneDNN 3.2 has no bf16 matmul there.
# Run in a fresh process, since oneDNN fixes its ISA when it is first used.
_AVX2_CHECK = r"""
import os, sys
import ml_dtypes, numpy as np
import dsv3
from dsv3 import onednn
from dsv3._native import lib
st = dsv3.cpu_info()
assert st["onednn"] is not None, st
assert st["onednn_isa"] == "avx2", st
assert st["onednn_matmul"] == {"float32": True, "bfloat16": False}, st
assert not onednn.supports("bfloat16") and "has no bfloat16 matmul" in onednn.why_not("bfloat16")
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 96), dtype=np.float32)
wb = rng.standard_normal((48, 96), dtype=np.float32).astype(ml_dtypes.bfloat16)
wf = rng.standard_normal((48, 96), dtype=np.float32)
try:
    onednn.linear(x, wb)
    raise AssertionError("bf16 oneDNN matmul ran under an AVX2 limit")
except RuntimeError as e:
    assert "no bf16 matmul implementation for this CPU" in str(e), e
active = st["isa"]
os.environ["DSV3_LINEAR_ONEDNN"] = "1"
for xin in (x, x.astype(ml_dtypes.bfloat16)):  # bf16 weights: falls back to dsv3's kernels, bit for bit
    np.testing.assert_array_equal(dsv3.ops.linear(xin, wb), dsv3.ops.linear(xin, wb, isa=active))
yf = dsv3.ops.linear(x, wf)  # f32 weights: still routed to oneDNN
np.testing.assert_array_equal(yf, lib.onednn_linear(x, wf))
assert not np.array_equal(yf, dsv3.ops.linear(x, wf, isa=active))
m = dsv3.Model.from_pretrained(sys.argv[1], max_seq_len=64)
ids = np.arange(40, dtype=np.int64) % 90 + 2  # 40 rows: the bf16 linears' oneDNN shape (M >= 32)
routed = m.forward(ids)  # raised "no implementation for this CPU and data type" before
del os.environ["DSV3_LINEAR_ONEDNN"]
m.reset()
own = m.forward(ids)
# the model's float32 linears (if any) still go to oneDNN, whose summation order differs
np.testing.assert_allclose(routed, own, rtol=1e-4, atol=1e-6)
print("ok", active)
"""


@pytest.mark.parametrize("env", [{"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"DSV3_ISA": "avx2"}],
                         ids=["ONEDNN_MAX_CPU_ISA", "DSV3_ISA"])
def test_avx2_only_cpu_falls_back(tmp_path, env):
    """oneDNN limited to AVX2 (as on AMD Zen 3) has no bf16 matmul: cpu_info says so, the oneDNN route
    (DSV3_LINEAR_ONEDNN=1) of bf16 linears and of a bf16 model's forward falls back to dsv3's own
    kernels instead of raising, and f32 still goes to oneDNN. A forced DSV3_ISA=avx2 limits oneDNN
    the same way."""
    import os
    import subprocess
    import sys

    import dsv3
    from dsv3.testing.checkpoints import tiny_config, write_checkpoint
    if onednn.status()["onednn"] is None:
        pytest.skip(f"oneDNN unavailable: {onednn.status()['onednn_error']}")
    if "avx2" not in dsv3.cpu_info()["supported_isas"]:
        pytest.skip("this CPU has no AVX2")
    ckpt = tmp_path / "ckpt"
    write_checkpoint(str(ckpt), tiny_config(), dtype="bfloat16")
    full = {k: v for k, v in os.environ.items()
            if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "DSV3_ISA", "DSV3_LINEAR_ONEDNN")}
    full.update(env)
    r = subprocess.run([sys.executable, "-c", _AVX2_CHECK, str(ckpt)], env=full, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    expect = "avx2" if "DSV3_ISA" in env else dsv3.cpu_info()["supported_isas"][-1]
    assert r.stdout.split() == ["ok", expect]

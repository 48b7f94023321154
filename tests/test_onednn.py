"""oneDNN loading and the plain matmul, against numpy float64."""
import ml_dtypes
import numpy as np
import pytest

from dsv3 import onednn
from dsv3._native import lib

needs_onednn = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN unavailable: {onednn.status()['onednn_error']}")


def test_status_shape():
    st = onednn.status()
    assert set(st) == {"onednn", "onednn_error"}
    assert (st["onednn"] is None) != (st["onednn_error"] is None)
    assert onednn.status() == st  # loaded once, same answer


@needs_onednn
def test_version_and_runtime():
    v = onednn.status()["onednn"]
    assert v.startswith("3.2.") and v.endswith("(gomp)")
    assert lib.onednn_version() == v
    import dsv3
    assert dsv3.cpu_info()["onednn"] == v


@needs_onednn
@pytest.mark.parametrize("m", [1, 7, 128])
@pytest.mark.parametrize("n", [1, 3, 64, 255, 300])
@pytest.mark.parametrize("wdtype", ["float32", "bfloat16"])
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


@needs_onednn
def test_linear_cache_reuse_and_many_shapes():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 16), dtype=np.float32)
    for rep in range(2):
        for m in range(1, 41):  # more shapes than cache slots: eviction path
            x = rng.standard_normal((m, 16), dtype=np.float32)
            np.testing.assert_allclose(onednn.linear(x, w), x.astype(np.float64) @ w.T.astype(np.float64),
                                       rtol=1e-5, atol=1e-5)


@needs_onednn
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

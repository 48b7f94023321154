"""Non-finite weights (issue 9, item 4): the scaled formats refuse them with a ValueError naming the
position (and, in a conversion, the tensor); f32 and bf16 store them as they are.

Before: fp8_block/nvfp4/int8/int4 skipped a NaN when taking the block's amax and stored it as a
finite code, and one inf made its block's scale inf and every other value of the block NaN;
`dsv3 convert` wrote the result with valid checksums."""
import os

import ml_dtypes
import numpy as np
import pytest

import dsv3
from dsv3 import quant
from dsv3.safetensors_io import open_safetensors, save_safetensors
from dsv3.testing.checkpoints import tiny_config, write_checkpoint

SCALED = [("fp8_block", {}), ("fp8_block", {"ue8m0": True}), ("nvfp4", {}), ("int8", {}), ("int4", {"group": 32}),
          ("int4", {"group": 128})]
IDS = [f + "".join(f"-{k}={v}" for k, v in p.items()) for f, p in SCALED]


def weight(n=130, k=272, seed=0):  # partial fp8 blocks on both axes; K % 16 == 0 for nvfp4
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


@pytest.mark.parametrize("fmt,params", SCALED, ids=IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("pos", [(0, 0), (129, 271), (67, 130)], ids=["first", "last", "inner"])
def test_scaled_formats_refuse_non_finite(fmt, params, bad, pos):
    w = weight()
    w[pos] = bad
    word = "nan" if np.isnan(bad) else ("inf" if bad > 0 else "-inf")
    with pytest.raises(ValueError, match=rf"quantize to {fmt}: weight\[{pos[0]}, {pos[1]}\] is {word};"):
        quant.quantize(w, fmt, **params)


@pytest.mark.parametrize("fmt,params", SCALED, ids=IDS)
def test_first_non_finite_is_named_whatever_the_thread_count(fmt, params):
    w = weight()
    w[100, 5] = np.inf
    w[3, 200] = np.nan  # first in row-major order
    w[3, 250] = np.inf
    old = dsv3.get_num_threads()
    try:
        for t in (1, 2, 3):
            dsv3.set_num_threads(t)
            with pytest.raises(ValueError, match=r"weight\[3, 200\] is nan"):
                quant.quantize(w, fmt, **params)
    finally:
        dsv3.set_num_threads(old)


@pytest.mark.parametrize("fmt,params", SCALED, ids=IDS)
def test_finite_extremes_still_quantise(fmt, params):
    """The check is for NaN/inf only: the largest finite float32 values quantise to finite scales."""
    w = weight()
    w[7, 9] = np.finfo(np.float32).max
    w[8, 9] = -np.finfo(np.float32).max
    w[9, 9] = np.finfo(np.float32).tiny / 4  # a subnormal
    qt = quant.quantize(w, fmt, **params)
    for name, a in qt.arrays.items():
        assert np.all(np.isfinite(np.asarray(a, np.float32))), name


@pytest.mark.parametrize("fmt", ["f32", "bf16"])
def test_unscaled_formats_keep_non_finite_values(fmt):
    w = weight()
    w[1, 2], w[3, 4], w[5, 6] = np.nan, np.inf, -np.inf
    back = quant.dequantize(quant.quantize(w, fmt))
    assert np.isnan(back[1, 2]) and back[3, 4] == np.inf and back[5, 6] == -np.inf
    finite = np.isfinite(w)
    expect = w if fmt == "f32" else w.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(back[finite], expect[finite])


BROKEN = "model.layers.1.mlp.experts.3.up_proj.weight"


@pytest.fixture(scope="module")
def nan_source(tmp_path_factory):
    """A tiny float32 checkpoint with one NaN in a routed expert's weight."""
    path = write_checkpoint(str(tmp_path_factory.mktemp("nan") / "src"), tiny_config(), dtype="float32", shards=1)
    f = os.path.join(path, "model.safetensors")
    with open_safetensors(path) as r:
        tensors = {name: np.array(r.get(name)) for name in r.keys()}
    assert tensors[BROKEN].shape == (16, 32)
    tensors[BROKEN][11, 7] = np.nan
    save_safetensors(f, tensors)
    return path


@pytest.mark.parametrize("fmt", ["fp8_block", "nvfp4", "int8", "int4"])
def test_convert_names_the_tensor_and_leaves_no_checkpoint(nan_source, tmp_path, fmt):
    dst = str(tmp_path / "out")
    with pytest.raises(ValueError, match=rf"{BROKEN}: quantize to {fmt}: weight\[11, 7\] is nan"):
        dsv3.convert(nan_source, dst, format=fmt, quiet=True)
    left = sorted(os.listdir(dst))
    # no shard half-written, and nothing that passes for a converted checkpoint
    assert not any(n.endswith(".partial") for n in left), left
    assert "config.json" not in left and "model.safetensors.index.json" not in left, left
    from dsv3.convert import verify
    assert any("not complete" in p for p in verify(dst))


def test_convert_cli_exits_nonzero_naming_the_tensor(nan_source, tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "dsv3", "convert", nan_source, str(tmp_path / "out"), "--format",
                        "int8"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0
    assert BROKEN in r.stderr and "weight[11, 7] is nan" in r.stderr, r.stderr

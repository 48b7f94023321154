"""The whole forward pass on every kernel path this CPU has.

The model tests run the active path only, so on an AVX-512 machine the AVX2 path of the model (every op
as the model calls it: attention, router, experts, norms, the linears of each format) would otherwise
be tested only kernel by kernel. This runs one tiny model per weight layout through a prefill and a
decode step on each supported path (a few seconds in all), and once in a child process with the path
forced by DSV3_ISA, as a user on an AVX2-only machine would run it.
"""
import numpy as np
import pytest

import dsv3
from dsv3._native import lib
from dsv3.testing.checkpoints import tiny_config, write_checkpoint

SUPPORTED = lib.isa_info()[1]
LAYOUTS = ("hf", "fp8_block", "nvfp4")
PROMPT = np.array([3, 17, 42, 5, 88, 61, 9, 30], np.int64)  # 8 rows: the small-M (f32-accurate) kernels
NEXT = np.array([77], np.int64)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("isas")
    return {layout: write_checkpoint(str(root / layout), tiny_config(), layout=layout, dtype="float32", seed=3,
                                     shards=1) for layout in LAYOUTS}


def run(model, isa):
    model.reset()
    native = model._native
    return np.concatenate([native.forward(PROMPT, isa=isa), native.forward(NEXT, isa=isa)])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_agrees_on_every_path(checkpoints, layout):
    # exact: the paths agree to f32 rounding (the fast mode differs by design: bf16-hi on scalar/AVX-512, f32 on AVX2)
    m = dsv3.Model.from_pretrained(checkpoints[layout], max_seq_len=32, precision="exact")
    ref = run(m, "scalar")
    assert np.all(np.isfinite(ref))
    scale = float(np.abs(ref).max())
    for isa in SUPPORTED:
        np.testing.assert_allclose(run(m, isa), ref, rtol=1e-4, atol=1e-4 * scale, err_msg=isa)


_CHILD = r"""
import numpy as np
import dsv3
assert dsv3.cpu_info()["isa"] == "avx2", dsv3.cpu_info()["isa"]
m = dsv3.Model.from_pretrained(ckpt, max_seq_len=32, precision="exact")
np.save(out, np.concatenate([m.forward(np.array(prompt, np.int64)), m.forward(np.array(following, np.int64))]))
"""


def test_forward_with_avx2_forced_by_the_environment(checkpoints, tmp_path, python_run):
    if "avx2" not in SUPPORTED:
        pytest.skip("this CPU has no AVX2")
    out = tmp_path / "logits.npy"
    args = f"ckpt, prompt, following, out = {checkpoints['fp8_block']!r}, {PROMPT.tolist()}, {NEXT.tolist()}, {str(out)!r}"
    r = python_run(args + _CHILD, {"DSV3_ISA": "avx2"})
    assert r.returncode == 0, r.stderr
    m = dsv3.Model.from_pretrained(checkpoints["fp8_block"], max_seq_len=32, precision="exact")
    # the path forced at start-up is the path asked for per call: the same bits
    np.testing.assert_array_equal(np.load(out), run(m, "avx2"))

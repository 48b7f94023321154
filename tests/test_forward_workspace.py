"""The model's workspace (scratch reserved once, grown on demand) is invisible in the results: a model
whose workspace was grown by earlier calls of other sizes, probes or thread counts gives bitwise the same
logits as a fresh one doing the same calls."""
import numpy as np
import pytest

import dsv3
from hf_reference import build_pair

IDS = np.array([3, 17, 42, 5, 9, 11, 98, 0, 64, 23, 7, 7, 51], dtype=np.int64)


def steps(m, split):
    """Prefill IDS[:split], then decode the rest one token at a time; the logits of every call."""
    out = [m.forward(IDS[:split])]
    out += [m.forward(IDS[i:i + 1]) for i in range(split, len(IDS))]
    return np.concatenate(out)


@pytest.mark.parametrize("attention", ["absorbed", "naive"])
def test_grown_workspace_gives_the_same_logits(attention):
    _, fresh = build_pair("grouped", attention=attention)
    hf, used = build_pair("grouped", attention=attention)
    expected = steps(fresh, 1)  # naive attention grows its K/V scratch along the decode
    # grow the workspace of `used` every way first: a long prefill, probes of more rows, both thread counts
    before = dsv3.get_num_threads()
    try:
        dsv3.set_num_threads(2)
        used.forward(IDS)
        used.reset()
        x = np.random.default_rng(0).standard_normal((40, hf.config.hidden_size)).astype(np.float32)
        used.run_module("mlp", 1, x)
        used.run_module("attention", 0, x, start_pos=3)
        dsv3.set_num_threads(1)
        got = steps(used, 1)
    finally:
        dsv3.set_num_threads(before)
    assert np.array_equal(got, expected)


def test_probe_then_forward_matches_fresh():
    _, fresh = build_pair("grouped")
    hf, used = build_pair("grouped")
    x = np.random.default_rng(1).standard_normal((7, hf.config.hidden_size)).astype(np.float32)
    a = used.run_module("decoder_layer", 2, x, start_pos=0)
    assert np.array_equal(a, fresh.run_module("decoder_layer", 2, x, start_pos=0))
    assert np.array_equal(steps(used, 4), steps(fresh, 4))

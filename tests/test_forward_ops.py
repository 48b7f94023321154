"""Parity of the small modules against transformers: RMSNorms, rotary cos/sin, dense MLP."""
import numpy as np
import pytest
import torch

from dsv3 import parity_hf
from hf_reference import CONFIGS, assert_close, canonical_tensors, build_pair, random_hidden


@pytest.fixture(scope="module", params=["tiny", "yarn", "moonlight", "kimi", "v2_lite"])
def pair(request):
    return build_pair(request.param)


def test_norms(pair):
    hf, m = pair
    x = 3.0 * random_hidden(hf.config, 7)
    with torch.no_grad():
        for layer in range(hf.config.num_hidden_layers):
            ly = hf.model.layers[layer]
            assert_close(m.run_module("input_layernorm", layer, x), ly.input_layernorm(torch.from_numpy(x)).numpy(),
                         what="input_layernorm")
            assert_close(m.run_module("post_attention_layernorm", layer, x),
                         ly.post_attention_layernorm(torch.from_numpy(x)).numpy(), what="post_attention_layernorm")
        assert_close(m.run_module("final_norm", None, x), hf.model.norm(torch.from_numpy(x)).numpy(),
                     what="final_norm")


def test_rope_cos_sin(pair):
    hf, m = pair
    pos = np.arange(0, 300, 7)
    cos, sin = m.rope_cos_sin(pos)
    rc, rs = parity_hf.Reference(hf).rope_cos_sin(pos)  # V2's complex freqs_cis in the same layout
    assert cos.shape == (len(pos), hf.config.qk_rope_head_dim)
    assert_close(cos, rc, rel=2e-6, what="cos")
    assert_close(sin, rs, rel=2e-6, what="sin")


def test_dense_mlp(pair):
    hf, m = pair
    x = random_hidden(hf.config, 5, seed=3)
    with torch.no_grad():
        ref = hf.model.layers[0].mlp(torch.from_numpy(x)).numpy()
    assert_close(m.run_module("mlp", 0, x), ref, what="dense mlp")


def test_every_config_builds():
    for name in CONFIGS:
        hf, m = build_pair(name)
        assert m.num_parameters == sum(t.size for t in canonical_tensors(hf).values())
        assert "layers" in repr(m)

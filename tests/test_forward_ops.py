"""Parity of the small modules against transformers: RMSNorms, rotary cos/sin, dense MLP."""
import numpy as np
import pytest
import torch

from hf_reference import CONFIGS, assert_close, canonical_tensors, build_pair, hf_rope, random_hidden


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
    cos, sin = m.rope_cos_sin(np.arange(0, 300, 7))
    ref = hf_rope(hf, 0, 300)
    half = hf.config.qk_rope_head_dim // 2
    if isinstance(ref, tuple):  # deepseek_v3: (cos, sin) = cat(freqs, freqs)
        rc, rs = ref[0][0, ::7].numpy(), ref[1][0, ::7].numpy()
    else:  # deepseek_v2: complex freqs_cis [1, n, half]
        f = ref[0, ::7]
        rc, rs = np.tile(f.real.numpy(), 2), np.tile(f.imag.numpy(), 2)
    assert cos.shape == (len(range(0, 300, 7)), 2 * half)
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

"""MLA attention and decoder layers against transformers: prefill, decode against the cache,
absorbed vs naive, all rope / q_lora / bias variants."""
import numpy as np
import pytest
from transformers import DynamicCache

from hf_reference import CONFIGS, assert_close, build_pair, hf_attention, hf_decoder_layer, random_hidden

NAMES = ["tiny", "yarn", "no_q_lora", "half_split", "bias", "moonlight", "v2_lite"]


@pytest.fixture(scope="module", params=NAMES)
def pairs(request):
    hf, absorbed = build_pair(request.param, attention="absorbed")
    _, naive = build_pair(request.param, attention="naive")
    return hf, absorbed, naive


def test_attention_prefill(pairs):
    hf, absorbed, naive = pairs
    x = random_hidden(hf.config, 9)
    for layer in range(hf.config.num_hidden_layers):
        for start in (0, 5):
            ref = hf_attention(hf, layer, x, start=start)
            assert_close(absorbed.run_module("attention", layer, x, start_pos=start), ref, what="absorbed")
            assert_close(naive.run_module("attention", layer, x, start_pos=start), ref, what="naive")


def test_attention_decode_with_cache(pairs):
    hf, absorbed, naive = pairs
    x = random_hidden(hf.config, 10, seed=1)
    cache = DynamicCache(config=hf.config)
    refs = [hf_attention(hf, 0, x[:7], 0, cache)]
    refs += [hf_attention(hf, 0, x[i:i + 1], i, cache) for i in range(7, 10)]
    for m in (absorbed, naive):
        m.reset()
        outs = [m.run_module("attention", 0, x[:7], start_pos=0, use_cache=True)]
        outs += [m.run_module("attention", 0, x[i:i + 1], start_pos=i, use_cache=True) for i in range(7, 10)]
        for o, r in zip(outs, refs):
            assert_close(o, r, what=f"decode ({m._native.attention})")
        m.reset()


def test_decoder_layer(pairs):
    hf, absorbed, naive = pairs
    x = random_hidden(hf.config, 6, seed=2)
    for layer in range(hf.config.num_hidden_layers):
        ref = hf_decoder_layer(hf, layer, x, start=3)
        assert_close(absorbed.run_module("decoder_layer", layer, x, start_pos=3), ref, what="decoder layer")
        assert_close(naive.run_module("decoder_layer", layer, x, start_pos=3), ref, what="decoder layer naive")


def test_decoder_layer_with_cache(pairs):
    hf, absorbed, _ = pairs
    x = random_hidden(hf.config, 5, seed=4)
    layer = hf.config.num_hidden_layers - 1
    cache = DynamicCache(config=hf.config)
    r1 = hf_decoder_layer(hf, layer, x[:4], 0, cache)
    r2 = hf_decoder_layer(hf, layer, x[4:], 4, cache)
    absorbed.reset()
    assert_close(absorbed.run_module("decoder_layer", layer, x[:4], start_pos=0, use_cache=True), r1, what="prefill")
    assert_close(absorbed.run_module("decoder_layer", layer, x[4:], start_pos=4, use_cache=True), r2, what="step")
    absorbed.reset()


def test_cache_probe_rules():
    hf, m = build_pair("tiny")
    x = random_hidden(hf.config, 3)
    with pytest.raises(ValueError, match="start_pos 2"):
        m.run_module("attention", 0, x, start_pos=2, use_cache=True)  # nothing cached yet
    m.run_module("attention", 0, x, start_pos=0, use_cache=True)
    with pytest.raises(ValueError, match="run_module"):
        m.forward(np.array([1, 2]))  # layer 0's cache was written alone
    m.reset()
    assert m.forward(np.array([1, 2])).shape == (2, hf.config.vocab_size)
    with pytest.raises(ValueError, match="max_seq_len"):
        m.run_module("attention", 0, x, start_pos=62)


def test_all_configs_listed():
    assert set(NAMES) <= set(CONFIGS)

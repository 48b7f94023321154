"""Routers, routed experts, shared experts and whole MoE blocks against transformers
(V3 sigmoid + correction bias + group-limited top-k; V2 softmax greedy / group_limited_greedy)."""
import numpy as np
import pytest
import torch

from hf_reference import assert_close, build_pair, random_hidden

NAMES = ["tiny", "grouped", "kimi", "moonlight", "yarn", "v2_lite", "v2_grouped"]


@pytest.fixture(scope="module", params=NAMES)
def pair(request):
    return build_pair(request.param)


def moe_layer(hf):
    return hf.config.num_hidden_layers - 1


def sorted_route(weights, indices):
    order = np.argsort(indices, axis=1, kind="stable")
    return np.take_along_axis(weights, order, 1), np.take_along_axis(indices, order, 1)


def hf_route(hf, x):
    with torch.no_grad():
        _, w, idx = hf.model.layers[moe_layer(hf)].mlp.gate(torch.from_numpy(x))
    return w.numpy(), idx.numpy()


def test_router(pair):
    hf, m = pair
    x = random_hidden(hf.config, 16, seed=5)
    w, idx = m.run_module("router", moe_layer(hf), x)
    rw, ridx = hf_route(hf, x)
    assert w.shape == rw.shape and idx.dtype == np.int64
    w, idx = sorted_route(w, idx)
    rw, ridx = sorted_route(rw, ridx)
    np.testing.assert_array_equal(idx, ridx)  # same expert sets per token
    assert_close(w, rw, what="router weights")


def test_experts_and_shared(pair):
    hf, m = pair
    x = random_hidden(hf.config, 11, seed=6)
    mlp = hf.model.layers[moe_layer(hf)].mlp
    rw, ridx = hf_route(hf, x)
    with torch.no_grad():
        ref = mlp.experts(torch.from_numpy(x), torch.from_numpy(ridx), torch.from_numpy(rw)).numpy()
        ref_shared = mlp.shared_experts(torch.from_numpy(x)).numpy()
    out = m.run_module("experts", moe_layer(hf), x, indices=ridx, weights=rw)
    assert_close(out, ref, what="routed experts")
    assert_close(m.run_module("shared_experts", moe_layer(hf), x), ref_shared, what="shared experts")


def test_moe_block(pair):
    hf, m = pair
    x = random_hidden(hf.config, 13, seed=7)
    with torch.no_grad():
        ref = hf.model.layers[moe_layer(hf)].mlp(torch.from_numpy(x)[None])[0].numpy()
    assert_close(m.run_module("mlp", moe_layer(hf), x), ref, what="moe")


def test_group_masking_matters():
    """In the 'grouped' config the group limit changes the chosen experts for some tokens, so the
    router test above really exercises it."""
    hf, m = build_pair("grouped")
    x = random_hidden(hf.config, 32, seed=8)
    _, idx = m.run_module("router", moe_layer(hf), x)
    gate = hf.model.layers[moe_layer(hf)].mlp.gate
    with torch.no_grad():
        s = torch.sigmoid(torch.from_numpy(x) @ gate.weight.T) + gate.e_score_correction_bias
    plain = torch.topk(s, hf.config.num_experts_per_tok, dim=-1)[1].numpy()
    differs = [set(a) != set(b) for a, b in zip(idx, plain)]
    assert any(differs)
    groups = idx // (hf.config.n_routed_experts // hf.config.n_group)
    assert all(len(set(g)) <= hf.config.topk_group for g in groups)


def test_experts_bad_indices():
    hf, m = build_pair("grouped")
    x = random_hidden(hf.config, 2)
    k = hf.config.num_experts_per_tok
    idx = np.zeros((2, k), dtype=np.int64)
    idx[1, 0] = hf.config.n_routed_experts
    with pytest.raises(ValueError, match="out of range"):
        m.run_module("experts", 1, x, indices=idx, weights=np.ones((2, k), np.float32))
    with pytest.raises(ValueError, match="shape"):
        m.run_module("experts", 1, x, indices=idx[:, :1], weights=np.ones((2, 1), np.float32))
    with pytest.raises(ValueError, match="dense"):
        m.run_module("router", 0, x)

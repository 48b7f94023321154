"""Absorbed attention reads W_UK / W_UV from kv_b_proj in its stored format (csrc/mla/attend.c): no
dequantised f32 copies. W_UK's product is bit for bit the f32 weighted sum over the dequantised rows (the
kernels' twin test: csrc/tests/test_absorb.c); W_UV runs as the linear layer's plans over per-head row views.

Whole models, one per kv_b_proj format (every other weight f32, exact precision), against references that
do not share the absorbed code: naive attention (K/V expanded with dsv3_linear over the same stored
kv_b_proj) and transformers fp32 on the dequantised kv_b_proj. Two shapes: transformers' tiny tester (head
rows not on fp8's 128-row blocks: the f32 fallback rows) and a V3-like head (nope = v = 128: fp8 views).
Results are independent of the thread count and the batched engine equals single sequences.
"""
import numpy as np
import pytest
import torch

import dsv3
from dsv3 import parity_hf, quant
from dsv3._native import lib
from hf_reference import TINY, canonical_tensors, hf_logits, native_config
from transformers import DeepseekV3Config

FORMATS = [("f32", {}), ("bf16", {}), ("fp8_block", {}), ("int8", {}), ("int4", {"group": 32}),
           ("int4", {"group": 128}), ("nvfp4", {})]
SHAPES = {"tiny": {}, "v3head": dict(num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=128,
                                     qk_nope_head_dim=128, v_head_dim=128, qk_rope_head_dim=16)}


def fmt_id(f):
    return f[0] + (f"_g{f[1]['group']}" if f[1] else "")


@pytest.fixture(scope="module", params=sorted(SHAPES))
def hf(request):
    model = parity_hf.build_model(DeepseekV3Config(**dict(TINY, **SHAPES[request.param])))
    parity_hf.load_state_dict(model, parity_hf.random_state_dict(model, 3))
    return model


def stored(tensors, fmt, params):
    """tensors with every kv_b_proj in fmt; also the dequantised f32 values (what the model computes with)."""
    out, deq = dict(tensors), {}
    for name, w in tensors.items():
        if name.endswith("kv_b_proj.weight") and fmt != "f32":
            qt = quant.quantize(np.asarray(w, np.float32), fmt, **params)
            out[name], deq[name] = qt, quant.dequantize(qt)
    return out, deq


def make(hf, tensors, attention="absorbed"):
    return dsv3.Model.from_tensors(native_config(hf.config), tensors, max_seq_len=64, precision="exact",
                                   attention=attention)


def prompt_then_decode(m, ids, split=12):
    m.reset()
    out = [m.forward(ids[:split])] + [m.forward(ids[i:i + 1]) for i in range(split, len(ids))]
    return np.concatenate(out)


def rel(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


IDS = np.random.default_rng(5).integers(0, TINY["vocab_size"], 24)


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_absorbed_decode_matches_naive_and_transformers(hf, fmt):
    """The references hold kv_b_proj's dequantised values in f32 (naive mode on fp8_block weights would
    quantise its activations per 128 (DeepSeek's W8A8), a different computation)."""
    tensors, deq = stored(canonical_tensors(hf), *fmt)
    absorbed = prompt_then_decode(make(hf, tensors), IDS)
    naive = prompt_then_decode(make(hf, dict(tensors, **deq), attention="naive"), IDS)
    assert rel(absorbed, naive) < 1e-5, fmt
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    for name, w in deq.items():  # transformers fp32 with kv_b_proj replaced by its dequantised values
        sd[name] = torch.from_numpy(w)
    ref_model = parity_hf.build_model(hf.config)
    ref_model.load_state_dict(sd)
    assert rel(absorbed, hf_logits(ref_model, IDS)) < 1e-5, fmt


@pytest.mark.parametrize("fmt", [FORMATS[2], FORMATS[4], FORMATS[6]], ids=fmt_id)
def test_threads_and_batched_engine(hf, fmt):
    tensors, _ = stored(canonical_tensors(hf), *fmt)
    m = make(hf, tensors)
    n = dsv3.get_num_threads()
    try:
        dsv3.set_num_threads(1)
        one = prompt_then_decode(m, IDS)
        dsv3.set_num_threads(max(2, n))
        many = prompt_then_decode(m, IDS)
    finally:
        dsv3.set_num_threads(n)
    np.testing.assert_array_equal(one, many)
    p0, p1 = IDS[:9], IDS[9:14]
    m.reset()
    r0 = m.forward(p0), m.forward(IDS[20:21])
    m.reset()
    r1 = m.forward(p1), m.forward(IDS[21:22])
    b = lib.Batch(m._native, 2, 32)
    b.forward(np.concatenate([p0, p1]), np.array([[0, 9, 2], [1, 5, 2]], np.int64))
    lo = b.forward(IDS[20:22], np.array([[0, 1, 1], [1, 1, 1]], np.int64))
    # W_UV of the two decode tokens is one linear call of 2 rows per head: bitwise the single-sequence
    # result (dsv3_batch.h: every small-M kernel computes a row the same way whatever the rows beside it)
    np.testing.assert_array_equal(lo[0], r0[1][0])
    np.testing.assert_array_equal(lo[1], r1[1][0])


@pytest.mark.parametrize("fmt", [FORMATS[3], FORMATS[4]], ids=fmt_id)
def test_fast_precision_absorbed_close_to_exact(hf, fmt):
    """Fast mode: the W_UV linears take the plan's Q8 activations like every int8/int4 linear; the
    absorbed decode stays within the fast mode's accuracy class of the exact one (and of naive fast)."""
    tensors, _ = stored(canonical_tensors(hf), *fmt)
    exact = prompt_then_decode(make(hf, tensors), IDS)
    fast = dsv3.Model.from_tensors(native_config(hf.config), tensors, max_seq_len=64, precision="fast")
    naive = dsv3.Model.from_tensors(native_config(hf.config), tensors, max_seq_len=64, precision="fast",
                                    attention="naive")
    out = prompt_then_decode(fast, IDS)
    assert rel(out, exact) < 3e-2
    assert rel(out, prompt_then_decode(naive, IDS)) < 3e-2

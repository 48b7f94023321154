"""Test helper: tiny transformers DeepSeek models with an MTP layer (layer index num_hidden_layers).

The MTP layer's decoder block is layer N of a transformers model built with N + 1 layers (so the torch
reference can run it as transformers' own DeepseekV3DecoderLayer); its extras (enorm, hnorm, eh_proj,
shared_head.norm, shared_head.head) are seeded random tensors."""
import functools

import numpy as np
import torch

from dsv3 import parity_hf
from hf_reference import CONFIGS, TINY, YARN, canonical_tensors, native_config
from transformers import DeepseekV3Config


# DeepSeek-V3.2 (transformers' DeepseekV32, lightning indexer): index_topk 8 below the test sequences' lengths, so
# the selection matters; 8 index heads (4 leave rows scoring exactly 0: ties at the top-k boundary, test_v32.py)
V32 = {"v32": dict(index_n_heads=8, index_head_dim=32, index_topk=8),
       "v32_yarn": dict(index_n_heads=8, index_head_dim=24, index_topk=6, rope_parameters=YARN, n_routed_experts=16,
                        num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=2)}


def hf_configs(name):
    """(main config with N layers, the same config with N + 1 layers); name in CONFIGS (V3) or V32."""
    if name in V32:
        import transformers
        cls, cfg = transformers.DeepseekV32Config, dict(TINY, **V32[name])
    else:
        kind, over = CONFIGS[name]
        assert kind == "v3"
        cls, cfg = DeepseekV3Config, dict(TINY, **over)
    n = cfg["num_hidden_layers"]
    return cls(**cfg), cls(**dict(cfg, num_hidden_layers=n + 1))


def mtp_extras(cfg, seed):
    """Seeded enorm, hnorm, eh_proj, shared_head.norm, shared_head.head of layer N (canonical names)."""
    D, V, p = cfg.hidden_size, cfg.vocab_size, f"model.layers.{cfg.num_hidden_layers}."
    rng = np.random.default_rng(seed + 1000)
    f = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    return {p + "enorm.weight": 1 + 0.1 * f(D), p + "hnorm.weight": 1 + 0.1 * f(D),
            p + "eh_proj.weight": f(D, 2 * D) / float(np.sqrt(2 * D)), p + "shared_head.norm.weight": 1 + 0.1 * f(D),
            p + "shared_head.head.weight": 2 * f(V, D) / float(np.sqrt(D))}


@functools.lru_cache(maxsize=None)
def build(name, seed=0):
    """(main HF model, N+1-layer HF model whose layer N is the MTP block, native config, canonical tensors of
    the main model plus the MTP layer)."""
    main_cfg, big_cfg = hf_configs(name)
    big = parity_hf.build_model(big_cfg)
    parity_hf.load_state_dict(big, parity_hf.random_state_dict(big, seed))
    main = parity_hf.build_model(main_cfg)
    sd = {k: v for k, v in big.state_dict().items() if not k.startswith(f"model.layers.{main_cfg.num_hidden_layers}.")}
    main.load_state_dict(sd)
    tensors = {k: np.array(v) for k, v in canonical_tensors(big).items()}
    tensors.update(mtp_extras(main_cfg, seed))
    return main, big, native_config(main_cfg), tensors


def rmsnorm(x, w, eps):
    """y = w * (x * rsqrt(mean(x^2) + eps)) in float32."""
    x = torch.as_tensor(x, dtype=torch.float32)
    return torch.as_tensor(w) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def torch_mtp(big, tensors, ids_next, hidden):
    """Independent MTP-layer forward (DeepSeek-V3 report section 2.2; SGLang/vLLM's layout): for positions
    0..S-1 with input tokens ids_next (t_{p+1}) and main hidden states hidden (h_p):
    x = eh_proj([enorm(embed(t)) | hnorm(h)]) -> transformers' decoder layer N (causal, rope positions p)
    -> g = shared_head.norm -> logits = shared_head.head(g). Returns (logits, g) numpy float32."""
    cfg = big.config
    N, eps = cfg.num_hidden_layers - 1, cfg.rms_norm_eps
    p = f"model.layers.{N}."
    T = {k: torch.as_tensor(v) for k, v in tensors.items() if k.startswith(p) or k == "model.embed_tokens.weight"}
    with torch.no_grad():
        e = T["model.embed_tokens.weight"][torch.as_tensor(np.asarray(ids_next, np.int64))]
        cat = torch.cat([rmsnorm(e, T[p + "enorm.weight"], eps), rmsnorm(hidden, T[p + "hnorm.weight"], eps)], -1)
        x = cat @ T[p + "eh_proj.weight"].T
    y = parity_hf.Reference(big).decoder_layer(N, x.numpy())
    with torch.no_grad():
        g = rmsnorm(y, T[p + "shared_head.norm.weight"], eps)
        logits = g @ T[p + "shared_head.head.weight"].T
    return logits.numpy(), g.numpy()


def torch_hidden(main, ids):
    """The main model's final-norm hidden states [S, hidden] (transformers' last_hidden_state)."""
    with torch.no_grad():
        out = main.model(input_ids=torch.as_tensor(np.asarray(ids, np.int64))[None], use_cache=False)
    return out.last_hidden_state[0].numpy()


def finish_speculative_engine(e, reqs, ref, stats, damp, k):
    """Run a speculative Engine until idle, then check each request's greedy tokens against ``ref`` (plain
    decoding), an agreeing MTP layer's (``damp`` 0) full acceptance, the acceptance counts against the
    single-sequence path's ``stats`` (``k`` 3, the draft length those were made with), and that every slot came
    back."""
    while not e.idle:
        e.step()
    for i, r in enumerate(reqs):
        assert np.array_equal(r.output().token_ids, ref[i]), (damp, k, i)
    s = e.speculative_stats
    if damp == 0.0:
        assert s.acceptance_rate == 1.0
    if k == 3:
        assert (s.rounds, s.drafted, s.accepted) == tuple(sum(getattr(x, f) for x in stats)
                                                          for f in ("rounds", "drafted", "accepted"))
    assert len(e.free) == e.max_batch


def check_full_cache_stop(m, ids, new=60):
    """A generation that runs into max_seq_len: speculative decoding gives plain greedy's tokens and the same
    finish reason, both warning that the cache is full."""
    import pytest
    with pytest.warns(RuntimeWarning, match="cache full"):
        ref = m.generate(ids, new, return_dict=True)
    with pytest.warns(RuntimeWarning, match="cache full"):
        out = m.generate(ids, new, speculative="mtp", num_draft=3, return_dict=True)
    assert np.array_equal(ref.token_ids, out.token_ids) and ref.finish_reason == out.finish_reason

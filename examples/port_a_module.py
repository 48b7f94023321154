"""Porting work: check a module you wrote against dsv3 and transformers on the same weights.

Here the module is DeepSeek-V3's router (as transformers' DeepseekV3TopkRouter defines it: sigmoid scores, a correction bias
for selection only, group-limited top-k, renormalised and scaled weights), written below in numpy
from the spec. It is compared with dsv3's C router (`Model.run_module("router", ...)`) and with
transformers' own `DeepseekV3TopkRouter` / MoE gate, all three on the same random weights; then the
whole per-module parity table of dsv3 against transformers is printed.

    python examples/port_a_module.py
Needs the parity extra (pip install 'dsv3[parity]': torch and transformers).
"""
import sys

import numpy as np

import dsv3
import dsv3.parity
from dsv3.parity_hf import Reference, build_model, hf_config_from, hf_to_canonical, load_state_dict, random_state_dict


def my_router(x, gate, bias, cfg):
    """The module being ported: V3 noaux_tc routing in numpy float64, written from the spec."""
    scores = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ gate.astype(np.float64).T)))  # [S, E]
    choice = scores + bias
    S, E = scores.shape
    per = E // cfg["n_group"]
    groups = np.sort(choice.reshape(S, cfg["n_group"], per), axis=-1)[..., -2:].sum(-1)  # top-2 sum per group
    keep = np.argsort(-groups, axis=-1, kind="stable")[:, :cfg["topk_group"]]
    mask = np.full((S, cfg["n_group"]), True)
    np.put_along_axis(mask, keep, False, axis=-1)
    choice = np.where(np.repeat(mask, per, axis=-1), -np.inf, choice)
    idx = np.argsort(-choice, axis=-1, kind="stable")[:, :cfg["num_experts_per_tok"]]
    w = np.take_along_axis(scores, idx, axis=-1)
    if cfg["norm_topk_prob"]:
        w = w / (w.sum(-1, keepdims=True) + 1e-20)
    return w * cfg["routed_scaling_factor"], idx


def compare(name, w_a, i_a, w_b, i_b):
    """Indices as sets per token (the order of equal-rank experts is not part of the contract);
    weights matched by expert index."""
    err = 0.0
    for t in range(len(i_a)):
        if set(i_a[t].tolist()) != set(i_b[t].tolist()):
            raise SystemExit(f"{name}: token {t} chose {sorted(i_a[t])} vs {sorted(i_b[t])}")
        a = dict(zip(i_a[t].tolist(), w_a[t].tolist()))
        b = dict(zip(i_b[t].tolist(), w_b[t].tolist()))
        err = max(err, max(abs(a[e] - b[e]) for e in a))
    print(f"{name:<32} same experts for every token, max |weight error| = {err:.2e}")
    return err


def main():
    cfg = dict(dsv3.parity.DEFAULT_CONFIG)           # 16 experts in 4 groups, top-4 of 2 groups
    hf_model = build_model(hf_config_from(cfg))       # transformers, float32, eager
    sd = random_state_dict(hf_model, seed=0)
    load_state_dict(hf_model, sd)
    tensors = hf_to_canonical(sd)                      # the same weights under dsv3's canonical names
    model = dsv3.Model.from_tensors(dsv3.load_config(cfg), tensors)
    ref = Reference(hf_model)

    layer = cfg["first_k_dense_replace"]               # the first MoE layer
    x = np.random.default_rng(1).standard_normal((16, cfg["hidden_size"]), dtype=np.float32)
    gate = tensors[f"model.layers.{layer}.mlp.gate.weight"]
    bias = tensors[f"model.layers.{layer}.mlp.gate.e_score_correction_bias"]

    w_mine, i_mine = my_router(x, gate, bias, cfg)
    w_dsv3, i_dsv3 = model.run_module("router", layer, x)
    w_hf, i_hf = ref.router(layer, x)
    errs = [compare("my router vs dsv3 (C)", w_mine, i_mine, w_dsv3, i_dsv3),
            compare("my router vs transformers", w_mine, i_mine, w_hf, i_hf),
            compare("dsv3 vs transformers", w_dsv3, i_dsv3, w_hf, i_hf)]
    if max(errs) > 1e-5:
        raise SystemExit(f"router weights differ by {max(errs):.2e} (> 1e-5)")

    report = dsv3.parity.run(cfg)                      # every module, dsv3 vs transformers
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())

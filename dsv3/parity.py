"""Module-by-module parity of dsv3 against transformers' DeepSeek implementation.

``run()`` builds the transformers model for a config (float32, eager attention and experts) with
seeded random weights (or given canonical tensors), hands the very same weights to ``dsv3.Model``,
feeds both the same inputs and compares every module: RMSNorm, rotary cos/sin, attention (prefill,
and one decode step through the cache), router (indices as sets, weights), routed and shared
experts, the MoE block, the dense MLP, a decoder layer, whole-model logits, teacher-forced top-1
agreement and greedy generation. The tolerance rule is in :mod:`dsv3.parity_report`.

From a notebook::

    import dsv3.parity
    report = dsv3.parity.run()          # embedded default config
    report                              # renders as an HTML table
    assert report.passed

torch and transformers are needed (``pip install 'dsv3[parity]'``); they are imported lazily.
"""
import copy

import numpy as np

from .parity_hf import (Reference, build_model, canonical_to_hf, hf_config_from, hf_to_canonical,
                        load_state_dict, random_state_dict, require_torch)
from .parity_report import LOGITS_ATOL, ParityReport, Row, error_row, tensor_row

# A small DeepSeek-V3-shaped config in which every routing feature matters: 4 groups of 4 experts,
# 2 groups kept, top-4 of 16 (so group masking changes the choice), a correction bias, one shared
# expert, one dense layer then MoE layers, q-LoRA, MLA with separate nope/rope/v dims and YaRN RoPE
# (original context 64, factor 4) whose mscale enters the softmax scale.
DEFAULT_CONFIG = {
    "model_type": "deepseek_v3",
    "architectures": ["DeepseekV3ForCausalLM"],
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 48,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 24,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "rope_interleave": True,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "num_nextn_predict_layers": 1,
}

# Check names accepted by ``modules=`` / ``--modules`` in table order; "attention" means both attention rows.
MODULES = ("rmsnorm", "rotary", "indexer", "attention_prefill", "attention_decode", "router", "experts", "moe", "mlp",
           "decoder_layer", "logits", "top1", "generate")
ALIASES = {"attention": ("attention_prefill", "attention_decode"), "all": MODULES}


def default_config():
    """A deep copy of the embedded default config dict (HF config.json keys)."""
    return copy.deepcopy(DEFAULT_CONFIG)


def _select(modules):
    if modules is None:
        return list(MODULES)
    if isinstance(modules, str):
        modules = [m for m in modules.replace(",", " ").split() if m]
    out = []
    for m in modules:
        for name in ALIASES.get(m, (m,)):
            if name not in MODULES:
                raise ValueError(f"unknown parity module {m!r}; choose from {', '.join(MODULES + tuple(ALIASES))}")
            if name not in out:
                out.append(name)
    return [m for m in MODULES if m in out]


def _load_dsv3_config(config):
    import dsv3
    if config is None:
        config = default_config()
    if hasattr(config, "to_native"):
        return config
    return dsv3.load_config(config)


def _as_f32(value):
    """A canonical tensor as float32 numpy; QuantizedTensors are dequantised (transformers gets f32)."""
    if hasattr(value, "fmt") and hasattr(value, "arrays"):
        from .quant import dequantize
        value = dequantize(value)
    return np.asarray(value, dtype=np.float32)


# ---- deliberate corruption of dsv3's copy of the weights (tests prove that the tool can fail) ----

def _swap_experts(tensors, cfg):
    """Swap routed experts 0 and 1 in every MoE layer."""
    for i in range(cfg.num_hidden_layers):
        for k in ("gate_proj", "up_proj", "down_proj"):
            a = f"model.layers.{i}.mlp.experts.0.{k}.weight"
            b = f"model.layers.{i}.mlp.experts.1.{k}.weight"
            if a in tensors and b in tensors:
                tensors[a], tensors[b] = tensors[b], tensors[a]


def _perturb(name):
    def apply(tensors, cfg):
        if name not in tensors:
            raise ValueError(f"corrupt: no tensor named {name!r}")
        v = np.array(tensors[name], dtype=np.float32)
        v.flat[0] += 1e-2 * max(float(np.abs(v).max()), 1.0)
        tensors[name] = v
    return apply


def _apply_corruption(corrupt, tensors, cfg):
    if corrupt is None:
        return tensors
    tensors = dict(tensors)
    if callable(corrupt):
        fn = corrupt
    elif corrupt == "swap_experts":
        fn = _swap_experts
    elif isinstance(corrupt, str) and corrupt.startswith("perturb:"):
        fn = _perturb(corrupt[len("perturb:"):])
    else:
        raise ValueError(f"corrupt must be a callable, 'swap_experts' or 'perturb:<canonical name>', got {corrupt!r}")
    out = fn(tensors, cfg)
    return tensors if out is None else out


# ---- the dsv3 side ----

def _rel_l2(got, ref):
    """||got - ref|| / ||ref|| in float64 (0 when both are zero)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    den = float(np.linalg.norm(ref))
    num = float(np.linalg.norm(got - ref))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def _select_layers(layers, n_layers):
    """None -> []; "all" -> every layer; an int or iterable of ints (or "0,2") -> those, validated."""
    if layers is None:
        return []
    if isinstance(layers, str):
        if layers.strip() == "all":
            return list(range(n_layers))
        layers = [int(v) for v in layers.replace(",", " ").split()]
    elif isinstance(layers, (int, np.integer)):
        layers = [int(layers)]
    out = sorted({int(v) for v in layers})
    if not out or out[0] < 0 or out[-1] >= n_layers:
        raise ValueError(f"layers must be 'all' or layer numbers in [0, {n_layers}), got {layers!r}")
    return out


def _dsv3_generate(model, input_ids, n):
    """Greedy continuation of ``input_ids`` by ``n`` tokens with dsv3 (new token ids only)."""
    model.reset()
    out = model.generate(np.asarray(input_ids, np.int64), max_new_tokens=n, eos_token_id=[])  # no eos stop
    out = np.asarray(out, np.int64).ravel()
    return out[-n:] if out.size > n else out


class _Checks:
    """Runs the selected checks; each appends rows and never raises (errors become failing rows)."""

    def __init__(self, model, ref, cfg, hf_cfg, seed, layer, seq_len, new_tokens):
        self.model, self.ref, self.cfg, self.hf_cfg = model, ref, cfg, hf_cfg
        self.rows = []
        n_layers = hf_cfg.num_hidden_layers
        self.moe_layers = [i for i in range(n_layers) if i >= hf_cfg.first_k_dense_replace]
        self.dense_layers = [i for i in range(n_layers) if i < hf_cfg.first_k_dense_replace]
        if layer is None:
            layer = self.moe_layers[0] if self.moe_layers else 0
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer must be in [0, {n_layers}), got {layer}")
        self.layer = layer
        self.moe_layer = layer if layer in self.moe_layers else (self.moe_layers[0] if self.moe_layers else None)
        self.dense_layer = layer if layer in self.dense_layers else (
            self.dense_layers[0] if self.dense_layers else None)
        rng = np.random.default_rng([int(seed), 1])
        self.x = rng.standard_normal((seq_len, hf_cfg.hidden_size), dtype=np.float32)
        rng = np.random.default_rng([int(seed), 2])
        self.input_ids = rng.integers(2, hf_cfg.vocab_size, size=seq_len).astype(np.int64)
        self.new_tokens = new_tokens
        self._logits = None

    def _guard(self, name, fn):
        try:
            fn()
        except Exception as e:  # a probe that raises is a failed row, not a crashed report
            self.rows.append(error_row(name, e))

    def run(self, which, show_progress=None):
        from .display import progress
        for m in progress(which, desc="parity", enabled=show_progress, unit="check"):
            self._guard(m, getattr(self, "check_" + m))

    # -- checks --
    def check_rmsnorm(self):
        L = self.layer
        for kind in ("input_layernorm", "post_attention_layernorm"):
            name = f"rmsnorm {kind}[{L}]"
            self._guard(name, lambda: self.rows.append(tensor_row(
                name, self.model.run_module(kind, L, self.x), self.ref.norm(L, kind, self.x))))
        self.rows.append(tensor_row("rmsnorm final_norm", self.model.run_module("final_norm", None, self.x),
                                    self.ref.norm(None, "final_norm", self.x)))

    def check_rotary(self):
        last = self.hf_cfg.max_position_embeddings - 1
        pos = np.concatenate([np.arange(len(self.x)), [last // 2, last]]).astype(np.int64)
        got = np.concatenate([np.asarray(a, np.float32) for a in self.model.rope_cos_sin(pos)], axis=-1)
        ref = np.concatenate(self.ref.rope_cos_sin(pos), axis=-1)
        self.rows.append(tensor_row("rotary cos|sin", got, ref, note=f"positions 0..{len(self.x) - 1}, "
                                                                      f"{last // 2}, {last}"))

    def check_indexer(self):
        """V3.2 only: the lightning indexer's scores and the rows each query keeps (sets; only queries that
        see more than index_topk rows drop any)."""
        if self.hf_cfg.model_type != "deepseek_v32":
            return
        L, S = self.layer, len(self.x)
        k = self.hf_cfg.index_topk
        got_rows, got_sc = self.model.run_module("indexer", L, self.x)
        ref_rows, ref_sc = self.ref.indexer(L, self.x)
        tri = np.tril(np.ones((S, S), dtype=bool))
        self.rows.append(tensor_row(f"indexer scores[{L}]", got_sc[tri], ref_sc[tri], note="causal entries"))
        bad = [i for i in range(S) if set(got_rows[i][got_rows[i] >= 0].tolist()) !=
               set(t for t in ref_rows[i].tolist() if t <= i)]
        n_sparse = max(S - k, 0)
        note = f"{n_sparse}/{S} queries see more than index_topk={k} rows"
        if bad:
            i = bad[0]
            note = (f"{len(bad)}/{S} queries differ, e.g. query {i}: dsv3 {sorted(got_rows[i][got_rows[i] >= 0].tolist())} "
                    f"vs transformers {sorted(t for t in ref_rows[i].tolist() if t <= i)}")
        self.rows.append(Row(f"indexer rows[{L}]", not bad, float(len(bad)), len(bad) / S,
                             tolerance="equal sets per query", note=note))

    def check_attention_prefill(self):
        L = self.layer
        self.model.reset()
        got = self.model.run_module("attention", L, self.x, start_pos=0, use_cache=False)
        self.rows.append(tensor_row(f"attention prefill[{L}]", got, self.ref.attention(L, self.x)))

    def check_attention_decode(self):
        L, x, S = self.layer, self.x, len(self.x)
        self.model.reset()
        self.model.run_module("attention", L, x[:-1], start_pos=0, use_cache=True)
        got = self.model.run_module("attention", L, x[-1:], start_pos=S - 1, use_cache=True)
        self.model.reset()
        cache = self.ref.new_cache()
        self.ref.attention(L, x[:-1], 0, cache)
        ref = self.ref.attention(L, x[-1:], S - 1, cache)
        self.rows.append(tensor_row(f"attention decode[{L}]", got, ref,
                                    note=f"prefill {S - 1} tokens into the cache, then 1 token"))

    def _route(self):
        w, idx = self.model.run_module("router", self.moe_layer, self.x)
        return np.asarray(w, np.float32), np.asarray(idx, np.int64)

    def check_router(self):
        L = self.moe_layer
        if L is None:
            return
        got_w, got_i = self._route()
        ref_w, ref_i = self.ref.router(L, self.x)
        if got_i.shape != ref_i.shape:
            raise ValueError(f"router indices shape {got_i.shape} != transformers {ref_i.shape}")
        same = np.array([set(a) == set(b) for a, b in zip(got_i.tolist(), ref_i.tolist())])
        n_bad = int((~same).sum())
        bad = np.flatnonzero(~same)[:3].tolist()
        self.rows.append(Row(f"router indices[{L}]", n_bad == 0, float(n_bad), n_bad / len(same),
                             tolerance="equal sets per token",
                             note="" if n_bad == 0 else f"{n_bad}/{len(same)} tokens differ, e.g. token "
                             f"{bad[0]}: dsv3 {sorted(got_i[bad[0]].tolist())} vs "
                             f"transformers {sorted(ref_i[bad[0]].tolist())}"))
        if n_bad:
            self.rows.append(Row(f"router weights[{L}]", False, tolerance="-",
                                 note="not comparable: the selected experts differ"))
            return
        og, orf = np.argsort(got_i, axis=1), np.argsort(ref_i, axis=1)
        self.rows.append(tensor_row(f"router weights[{L}]", np.take_along_axis(got_w, og, 1),
                                    np.take_along_axis(ref_w, orf, 1), note="aligned by expert index"))

    def check_experts(self):
        L = self.moe_layer
        if L is None:
            return
        ref_w, ref_i = self.ref.router(L, self.x)
        name = f"routed experts[{L}]"
        self._guard(name, lambda: self.rows.append(tensor_row(
            name, self.model.run_module("experts", L, self.x, indices=ref_i, weights=ref_w),
            self.ref.experts(L, self.x, ref_i, ref_w), note="same routing (transformers') on both sides")))
        self.rows.append(tensor_row(f"shared experts[{L}]", self.model.run_module("shared_experts", L, self.x),
                                    self.ref.shared_experts(L, self.x)))

    def check_moe(self):
        L = self.moe_layer
        if L is not None:
            self.rows.append(tensor_row(f"moe[{L}]", self.model.run_module("mlp", L, self.x),
                                        self.ref.mlp(L, self.x)))

    def check_mlp(self):
        L = self.dense_layer
        if L is not None:
            self.rows.append(tensor_row(f"dense mlp[{L}]", self.model.run_module("mlp", L, self.x),
                                        self.ref.mlp(L, self.x)))

    def check_decoder_layer(self):
        L = self.layer
        self.model.reset()
        got = self.model.run_module("decoder_layer", L, self.x, start_pos=0, use_cache=False)
        self.rows.append(tensor_row(f"decoder layer[{L}]", got, self.ref.decoder_layer(L, self.x)))

    def check_layers(self, layers):
        """Every decoder layer in ``layers``: a tolerance row per layer (dsv3 fed transformers' input to the
        layer) and the drift entry: relative L2 error after the layer, isolated and chained (each side
        fed its own previous output, from the same embedded prompt)."""
        emb = self.ref.model.model.embed_tokens.weight.detach().numpy()
        h_ref = np.ascontiguousarray(emb[self.input_ids], np.float32)
        h_own = h_ref.copy()
        drift = []
        for L in range(max(layers) + 1):
            self.model.reset()
            out_ref = self.ref.decoder_layer(L, h_ref)
            iso = self.model.run_module("decoder_layer", L, h_ref, start_pos=0, use_cache=False)
            h_own = self.model.run_module("decoder_layer", L, h_own, start_pos=0, use_cache=False)
            if L in layers:
                self.rows.append(tensor_row(f"decoder layer[{L}] (all layers)", iso, out_ref,
                                            note="input: transformers' hidden state entering the layer"))
                drift.append({"layer": L, "isolated": _rel_l2(iso, out_ref), "chained": _rel_l2(h_own, out_ref)})
            h_ref = out_ref
        self.model.reset()
        return drift

    def _both_logits(self):
        if self._logits is None:
            self.model.reset()
            got = np.asarray(self.model.forward(self.input_ids), np.float32)
            self.model.reset()
            self._logits = got, self.ref.logits(self.input_ids)
        return self._logits

    def check_logits(self):
        got, ref = self._both_logits()
        self.rows.append(tensor_row("logits", got, ref, atol=LOGITS_ATOL,
                                    note=f"{len(self.input_ids)} tokens, no cache"))

    def check_top1(self):
        got, ref = self._both_logits()
        if got.shape != ref.shape:
            raise ValueError(f"logits shape {got.shape} != transformers {ref.shape}")
        agree = got.argmax(-1) == ref.argmax(-1)
        n = int(agree.sum())
        self.rows.append(Row("top-1 agreement", n == len(agree), float(len(agree) - n), 1.0 - n / len(agree),
                             tolerance="100%", note=f"{100.0 * n / len(agree):.1f}% ({n}/{len(agree)}), "
                                                    "teacher-forced"))

    def check_generate(self):
        n = self.new_tokens
        got = _dsv3_generate(self.model, self.input_ids, n)
        self.model.reset()
        ref = self.ref.generate(self.input_ids, n)
        same = got.shape == ref.shape and bool(np.all(got == ref))
        if same:
            note = f"{n} greedy tokens identical: {ref.tolist()}"
            first = n
        else:
            m = min(len(got), len(ref))
            diff = np.flatnonzero(got[:m] != ref[:m])
            first = int(diff[0]) if diff.size else m
            note = (f"first difference at token {first}: dsv3 {got.tolist()} vs transformers {ref.tolist()}")
        self.rows.append(Row(f"generate ({n} greedy)", same, float(n - first), 1.0 - first / max(n, 1),
                             tolerance="identical", note=note))


def run(config=None, modules=None, seed=0, layer=None, attention="absorbed", seq_len=8, new_tokens=16,
        tensors=None, model=None, corrupt=None, layers=None, progress=None):
    """Compare dsv3 with transformers module by module; returns a :class:`ParityReport`.

    config: None (embedded default, :data:`DEFAULT_CONFIG`), a config.json path or directory, a dict of
      config.json keys, or a DeepseekConfig. Used as given: a full-size config builds a full-size model.
    modules: names from :data:`MODULES` (or "attention", "all"); default all.
    seed: seeds the random weights (when ``tensors`` is None) and the inputs.
    layer: decoder layer probed for norms/attention/decoder layer (default: the first MoE layer); MoE
      checks use it when it is a MoE layer, else the first MoE layer; the dense MLP likewise.
    attention: "absorbed" or "naive", passed to dsv3.Model.
    seq_len / new_tokens: prompt length of the module inputs and logits; greedy tokens generated.
    tensors: canonical-name tensors (numpy or QuantizedTensor) to use instead of random weights;
      QuantizedTensors are dequantised to float32 for transformers.
    model: an already built dsv3.Model holding those weights (default: Model.from_tensors).
    corrupt: test-only: a callable ``(tensors_dict, config)`` that replaces entries of dsv3's copy of the
      weights, or "swap_experts" (experts 0 and 1 of every MoE layer), or "perturb:<canonical name>".
    layers: None, "all" or layer numbers: adds a decoder-layer row per listed layer and the report's
      per-layer drift table (``report.drift``, ``report.plot_drift()``): the relative L2 error of the
      hidden state after each layer on the embedded prompt, isolated (dsv3 fed transformers' input)
      and chained (each implementation fed its own output, so errors accumulate as in a forward pass).
    progress: True / False / None: a progress bar over the checks (``tqdm.auto``: a widget in notebooks);
      None shows it only in notebooks and terminals.
    """
    torch, transformers = require_torch()
    if attention not in ("absorbed", "naive"):
        raise ValueError(f"attention must be 'absorbed' or 'naive', got {attention!r}")
    if int(seq_len) < 2:
        raise ValueError(f"seq_len must be >= 2 (the decode check needs a prefix), got {seq_len}")
    if int(new_tokens) < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    which = _select(modules)
    cfg = _load_dsv3_config(config)
    hf_cfg = hf_config_from(cfg)
    layer_list = _select_layers(layers, hf_cfg.num_hidden_layers)
    hf_model = build_model(hf_cfg)
    if tensors is None:
        sd = random_state_dict(hf_model, seed)
        load_state_dict(hf_model, sd)
        canonical = hf_to_canonical(sd)
        if hf_cfg.tie_word_embeddings:
            canonical.pop("lm_head.weight", None)
    else:
        canonical = {k: _as_f32(v) for k, v in dict(tensors).items()}
        load_state_dict(hf_model, canonical_to_hf(canonical))
    if model is None:
        import dsv3
        dsv3_tensors = _apply_corruption(corrupt, canonical, cfg)
        model = dsv3.Model.from_tensors(cfg, dsv3_tensors, attention=attention, precision="exact")
    elif corrupt is not None:
        raise ValueError("corrupt= needs dsv3 to build the model (model= must be None)")
    checks = _Checks(model, Reference(hf_model), cfg, hf_cfg, seed, layer, int(seq_len), int(new_tokens))
    checks.run(which, progress)
    drift = []
    if layer_list:
        try:
            drift = checks.check_layers(layer_list)
        except Exception as e:  # a failed probe is a failing row, as for every other check
            checks.rows.append(error_row("decoder layers (all)", e))
    info = {"model_type": hf_cfg.model_type, "layers": hf_cfg.num_hidden_layers, "hidden": hf_cfg.hidden_size,
            "experts": f"{hf_cfg.n_routed_experts}/top{hf_cfg.num_experts_per_tok}",
            "groups": f"{hf_cfg.n_group}/{hf_cfg.topk_group}", "layer": checks.layer, "attention": attention,
            "seed": seed, "weights": "random" if tensors is None else "given",
            "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}
    return ParityReport(rows=checks.rows, info=info, drift=drift)


"""`dsv3 info`: architecture, formats, tensor count, bytes per format, missing/unexpected tensors."""
import os

from .tensors import value_format


def expected_names(cfg):
    """Canonical names a model with config `cfg` needs (see COMMON.md's canonical names)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        a = p + "self_attn."
        if cfg.q_lora_rank:
            names += [a + "q_a_proj.weight", a + "q_a_layernorm.weight", a + "q_b_proj.weight"]
        else:
            names.append(a + "q_proj.weight")
        names += [a + "kv_a_proj_with_mqa.weight", a + "kv_a_layernorm.weight", a + "kv_b_proj.weight",
                  a + "o_proj.weight"]
        if cfg.attention_bias:
            names += [a + "q_a_proj.bias", a + "kv_a_proj_with_mqa.bias", a + "o_proj.bias"]
        mlp = p + "mlp."
        if cfg.is_moe_layer(i):
            names.append(mlp + "gate.weight")
            if cfg.topk_method == "noaux_tc":
                names.append(mlp + "gate.e_score_correction_bias")
            for e in range(cfg.n_routed_experts):
                names += [f"{mlp}experts.{e}.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
            if cfg.n_shared_experts:
                names += [f"{mlp}shared_experts.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
        else:
            names += [f"{mlp}{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
    return names


def info(path):
    """Summary of any checkpoint dsv3 reads (source or converted), as a dict: layout,
    architecture, tensor count, {format: [count, bytes]}, missing and unexpected canonical names
    (canonical names the config does not call for, and source tensors the reader did not use), and
    what the reader skipped (MTP layers, V3.2 indexer); plus Checkpoint.summary()."""
    from ..checkpoint import CheckpointError, open_checkpoint
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    try:
        ckpt = open_checkpoint(path)
    except CheckpointError as e:  # missing / mis-shaped tensors: report from the headers instead
        return _info_from_headers(path, str(e))
    cfg = ckpt.config
    formats, seen = {}, set()
    for name, v in ckpt.canonical_tensors():
        f = formats.setdefault(value_format(v), [0, 0])
        f[0] += 1
        f[1] += int(v.nbytes)
        seen.add(name)
    want = set(expected_names(cfg))
    summary = ckpt.summary() if callable(getattr(ckpt, "summary", None)) else {}
    return {"path": os.path.abspath(path), "layout": ckpt.layout, "architecture": _arch(cfg),
            "tensors": len(seen), "formats": formats,
            "missing": sorted((want - seen) | set(summary.get("missing", []))),
            "unexpected": sorted((seen - want) | set(summary.get("unexpected", []))),
            "skipped": summary.get("skipped", {}), "summary": summary}


def _arch(cfg):
    return {k: getattr(cfg, k, None) for k in (
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank", "kv_lora_rank",
        "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "first_k_dense_replace", "vocab_size")}


def _info_from_headers(path, error):
    """info() for a checkpoint the reader refuses: names and dtypes from the safetensors headers."""
    from ..checkpoint import detect_layout
    from ..config import load_config
    from ..safetensors_io import open_safetensors
    cfg = load_config(path)
    with open_safetensors(path) as r:
        keys = list(r.keys())
        formats = {}
        for k in keys:
            f = formats.setdefault(r.dtype(k), [0, 0])
            f[0] += 1
            f[1] += int(r.get(k).nbytes)
    layout = detect_layout(path, keys)
    have = set(keys)
    fused = {k.rsplit(".", 1)[0] for k in keys if k.endswith((".gate_up_proj", ".down_proj"))}
    missing = [n for n in expected_names(cfg) if n not in have and not (
        layout == "hf_fused" and ".mlp.experts." in n and n.split(".experts.")[0] + ".experts" in fused)]
    return {"path": os.path.abspath(path), "layout": layout, "architecture": _arch(cfg), "tensors": len(keys),
            "formats": formats, "missing": missing, "unexpected": [], "skipped": {}, "error": error}

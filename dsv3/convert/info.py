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
    (indexer tensors of V3.2 are expected extras, not "unexpected")."""
    from ..checkpoint import open_checkpoint
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    ckpt = open_checkpoint(path)
    cfg = ckpt.config
    formats, seen = {}, set()
    for name, v in ckpt.canonical_tensors():
        f = formats.setdefault(value_format(v), [0, 0])
        f[0] += 1
        f[1] += int(v.nbytes)
        seen.add(name)
    want = set(expected_names(cfg))
    arch = {k: getattr(cfg, k, None) for k in (
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank", "kv_lora_rank",
        "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "first_k_dense_replace", "vocab_size")}
    out = {"path": os.path.abspath(path), "layout": ckpt.layout, "architecture": arch,
           "tensors": len(seen), "formats": formats,
           "missing": sorted(want - seen),
           "unexpected": sorted(n for n in seen - want if ".self_attn.indexer." not in n)}
    summary = getattr(ckpt, "summary", None)
    if callable(summary):
        out["summary"] = summary()
    return out

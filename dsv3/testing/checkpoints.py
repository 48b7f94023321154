"""Small random checkpoints written exactly as the real ones are named, typed and sharded."""
import json
import math
import os

import ml_dtypes
import numpy as np

from .. import fused_experts
from .._native import lib
from ..checkpoint import canonical_shapes
from ..config import load_config
from ..safetensors_io import SINGLE_NAME, save_safetensors, shard_name, write_index

FP8_MAX = 448.0
E2M1_MAGS = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], np.float32)
E2M1_THRESH = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)


def tiny_config(**overrides):
    """A small valid DeepSeek-V3 config dict (transformers' tester sizes, but top-k < experts and
    n_group > 1 so group masking matters; 1 dense + 2 MoE layers; yarn RoPE)."""
    d = {
        "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "vocab_size": 99,
        "hidden_size": 32, "intermediate_size": 32, "moe_intermediate_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 32, "kv_lora_rank": 16,
        "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32, "n_routed_experts": 8,
        "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
        "first_k_dense_replace": 1, "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid", "topk_method": "noaux_tc", "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256, "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "tie_word_embeddings": False, "attention_bias": False, "bos_token_id": 0, "eos_token_id": 1,
        "num_nextn_predict_layers": 0, "torch_dtype": "bfloat16",
    }
    d.update(overrides)
    return d


# ---------------------------------------------------------------- quantisers (DeepSeek FP8 blocks, ModelOpt NVFP4)
def quantize_fp8_block(w, block=(128, 128), ue8m0=False):
    """W [N, K] float32 -> (e4m3 codes [N, K], float32 scale_inv [ceil(N/bn), ceil(K/bk)])."""
    n, k = w.shape
    bn, bk = block
    gn, gk = math.ceil(n / bn), math.ceil(k / bk)
    pad = np.zeros((gn * bn, gk * bk), np.float32)
    pad[:n, :k] = np.abs(w)
    amax = pad.reshape(gn, bn, gk, bk).max(axis=(1, 3))
    s = np.where(amax == 0, np.float32(1), amax / np.float32(FP8_MAX)).astype(np.float32)
    if ue8m0:
        s = np.exp2(np.ceil(np.log2(s))).astype(np.float32)
    full = np.repeat(np.repeat(s, bn, 0), bk, 1)[:n, :k]
    q = (w / full).astype(ml_dtypes.float8_e4m3fn)
    return q, s


def quantize_nvfp4(w, group=16):
    """W [N, K] float32 -> (packed U8 [N, K/2], e4m3 weight_scale [N, K/16], f32 weight_scale_2 [])."""
    n, k = w.shape
    amax = float(np.abs(w).max())
    s2 = np.float32(amax / (6.0 * FP8_MAX)) if amax > 0 else np.float32(1.0)
    blocks = w.reshape(n, k // group, group)
    bs = (np.abs(blocks).max(axis=2) / (np.float32(6.0) * s2)).astype(ml_dtypes.float8_e4m3fn)
    bsf = bs.astype(np.float32)
    bs = np.where(bsf == 0, np.float32(1), bsf).astype(ml_dtypes.float8_e4m3fn)
    x = blocks / (bs.astype(np.float32)[:, :, None] * s2)
    ax = np.abs(x)
    mag = np.searchsorted(E2M1_THRESH, ax, side="left")  # x == threshold[j] gives j (the lower code)
    tie = (mag < 7) & (ax == E2M1_THRESH[np.minimum(mag, 6)])
    mag = (mag + (tie & (mag % 2 == 1))).astype(np.uint8)  # ties to the even code, like ModelOpt's rounding
    code = (mag | np.where(x < 0, 8, 0).astype(np.uint8)).reshape(n, k)
    packed = (code[:, 0::2] | (code[:, 1::2] << 4)).astype(np.uint8)
    return packed, bs, np.array(s2, np.float32)


# ---------------------------------------------------------------- writer
def _random(rng, name, shape, scale):
    if name.endswith("norm.weight") or ".enorm." in name or ".hnorm." in name:
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith("e_score_correction_bias"):
        return (0.01 * rng.standard_normal(shape)).astype(np.float32)
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _mtp_and_indexer(cfg, mtp, indexer):
    """Extra (name, shape, kind) entries, named and shaped by the C tensor table: MTP layer N like V3's layer 61
    (part N + 2, its own embed_tokens copy included) and, for a config that is not deepseek_v32, V3.2 indexer
    tensors (a deepseek_v32 config has them among its canonical tensors, in the hub names, whatever
    `indexer` says)."""
    extra, native = [], cfg.to_native()
    if indexer and not cfg.has_indexer:
        fake = dict(native, index_n_heads=cfg.index_n_heads or 4, index_head_dim=cfg.index_head_dim or 16,
                    index_topk=1, q_lora_rank=native["q_lora_rank"] or cfg.hidden_size)
        extra += [(n, shape, "extra") for part in range(1, cfg.num_hidden_layers + 1)
                  for n, shape, _, _ in lib.tensor_slots(fake, part) if ".self_attn.indexer." in n]
    if mtp:
        extra += [(n, shape, "extra") for n, shape, _, _ in lib.tensor_slots(native, cfg.num_hidden_layers + 2)]
    return extra


def _layer_key(name):
    parts = name.split(".")
    if name.startswith("model.layers."):
        return (1, int(parts[2]))
    return (0 if "embed" in name else 2, 0)


def write_checkpoint(path, config, layout="hf", dtype="bfloat16", seed=0, shards=2, mtp=False, indexer=False,
                     scale=0.02, tokenizer=False):
    """Write a random checkpoint for ``config`` (dict or DeepseekConfig) into directory ``path``.

    layout: 'hf' (per-expert, ``dtype`` float32 or bfloat16), 'hf_fused' (transformers 5.x experts),
    'fp8_block' (e4m3 + F32 weight_scale_inv, block size from quantization_config or 128; embeddings,
    norms, lm_head, gate BF16; correction bias F32), 'nvfp4' (ModelOpt: MLP linears NVFP4, attention,
    lm_head, gate unquantised; hf_quant_config.json). ``shards`` = 1 writes model.safetensors, more
    writes model-0000K-of-0000N.safetensors + model.safetensors.index.json. ``tokenizer``: also write
    tokenizer.json and tokenizer_config.json (dsv3.testing.tokenizer_files; a byte-level BPE of the
    config's vocab_size, which must be at least 269). Returns ``path``.
    """
    if layout not in ("hf", "hf_fused", "fp8_block", "nvfp4"):
        raise ValueError(f"layout must be hf, hf_fused, fp8_block or nvfp4, got {layout!r}")
    cdict = dict(config) if isinstance(config, dict) else config.to_dict()
    if mtp:
        cdict["num_nextn_predict_layers"] = max(1, cdict.get("num_nextn_predict_layers") or 0)
    if layout == "fp8_block":
        cdict.setdefault("quantization_config", {"activation_scheme": "dynamic", "fmt": "e4m3",
                                                 "quant_method": "fp8", "weight_block_size": [128, 128]})
    else:
        cdict.pop("quantization_config", None)
    cfg = load_config(cdict)
    fdt = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[dtype]
    rng = np.random.default_rng(seed)
    entries = canonical_shapes(cfg) + _mtp_and_indexer(cfg, mtp, indexer)
    master = {n: _random(rng, n, s, scale) for n, s, _ in entries}
    kinds = {n: k for n, _, k in entries}
    out = {}
    for n, w in master.items():
        k = kinds[n]
        if layout == "fp8_block" and k == "linear":
            q = cfg.quantization
            out[n], out[n + "_scale_inv"] = quantize_fp8_block(w, q.weight_block_size, q.scale_fmt == "ue8m0")
        elif layout == "nvfp4" and k == "linear" and ".mlp." in n:
            base = n[: -len("weight")]
            out[n], out[base + "weight_scale"], out[base + "weight_scale_2"] = quantize_nvfp4(w)
            out[base + "input_scale"] = np.array(np.float32(rng.uniform(0.5, 2.0) / (6 * FP8_MAX)))
        elif n.endswith("e_score_correction_bias"):
            out[n] = w  # F32 in every release
        elif layout in ("fp8_block", "nvfp4") or k == "extra":
            out[n] = w.astype(ml_dtypes.bfloat16)
        else:
            out[n] = w.astype(fdt)
    if layout == "hf_fused":
        out = fused_experts.stack(out)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cdict, f, indent=2)
    if layout == "nvfp4":
        N = cfg.num_hidden_layers
        hq = {"producer": {"name": "modelopt", "version": "0.23.0"},
              "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                               "exclude_modules": ["lm_head"] + [f"model.layers.{i}.self_attn*" for i in range(N)]
                               + [f"model.layers.{N}*"]}}
        with open(os.path.join(path, "hf_quant_config.json"), "w") as f:
            json.dump(hq, f, indent=4)
    _write_shards(path, out, shards)
    if tokenizer:
        from .tokenizer_files import write_tokenizer
        write_tokenizer(path, vocab_size=cfg.vocab_size)
    return path


def _write_shards(path, tensors, shards):
    if shards == 1:
        save_safetensors(os.path.join(path, SINGLE_NAME), tensors)
        return
    names = sorted(tensors, key=lambda n: (_layer_key(n), n))
    if shards < 1 or shards > len(names):
        raise ValueError(f"shards must be in [1, {len(names)}], got {shards}")
    total = sum(tensors[n].nbytes for n in names)
    groups, acc = [[] for _ in range(shards)], 0
    for i, n in enumerate(names):
        g = min(shards - 1, acc * shards // max(total, 1))
        g = max(g, min(shards - 1, i - (len(names) - shards)))  # leave at least one tensor per later shard
        groups[g].append(n)
        acc += tensors[n].nbytes
    for g in range(shards):  # never leave a shard empty
        if not groups[g]:
            donor = max(range(shards), key=lambda j: len(groups[j]))
            groups[g].append(groups[donor].pop())
    weight_map = {}
    for k, g in enumerate(groups, 1):
        fname = shard_name(k, shards)
        save_safetensors(os.path.join(path, fname), {n: tensors[n] for n in g})
        weight_map.update({n: fname for n in g})
    write_index(path, weight_map, total)

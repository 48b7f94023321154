"""The model bench_peers.py measures: sizes, the HF checkpoint (seeded random weights, bf16) and a real
byte-level BPE tokenizer that llama.cpp's convert_hf_to_gguf.py accepts.

The weights are those of ``dsv3.testing.checkpoints.write_checkpoint(path, config, layout="hf",
dtype="bfloat16", seed=seed)`` (same names, dtypes, random stream and values); this module writes them
one layer at a time (one shard per layer) instead of materialising the whole float32 model, so a
~2B-parameter checkpoint needs ~1 GB of memory rather than ~12 GB.
"""
import json
import os

import ml_dtypes
import numpy as np

from dsv3.checkpoint import canonical_shapes
from dsv3.config import load_config
from dsv3.safetensors_io import INDEX_NAME, save_safetensors, shard_name
from dsv3.testing.checkpoints import _random, tiny_config

# name -> config overrides on top of dsv3.testing.checkpoints.tiny_config (real MLA head dims except tiny)
SIZES = {
    # issue 10's model: ~1.84B parameters, ~3.7 GB in bf16 (decode reads ~0.6 GB a token: far beyond L3)
    "default": dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, moe_intermediate_size=1024,
                    num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=768,
                    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                    n_routed_experts=64, num_experts_per_tok=6, n_group=8, topk_group=4, n_shared_experts=2,
                    first_k_dense_replace=0),
    # ~0.13B: quick full runs
    "small": dict(vocab_size=8000, hidden_size=1024, intermediate_size=4096, moe_intermediate_size=512,
                  num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8, q_lora_rank=384,
                  kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                  n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
                  first_k_dense_replace=0),
    # ~4M: smoke runs and the logits check (every dim a multiple of 64, as llama.cpp's quant blocks need)
    "tiny": dict(vocab_size=1024, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=128,
                 kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64,
                 n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, n_shared_experts=1,
                 first_k_dense_replace=1),
}
COMMON = dict(routed_scaling_factor=2.5, max_position_embeddings=4096,
              rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def model_config(size="default", **overrides):
    """The config dict of a named size (SIZES) with ``overrides`` applied (any config key)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    d = tiny_config(**COMMON)
    d.update(SIZES[size])
    d.update(overrides)
    return d


def param_count(config):
    """Number of parameters of the checkpoint written for ``config`` (dict)."""
    return sum(int(np.prod(s)) for _, s, _ in canonical_shapes(load_config(dict(config))))


def _shard_key(name):
    if name.startswith("model.layers."):
        return 1 + int(name.split(".")[2])
    return 0 if "embed" in name else -1  # -1: the tail (final norm, lm_head)


def write_hf_checkpoint(path, config, seed=0, scale=0.02):
    """Write ``config``'s random bf16 HF checkpoint into ``path``, one shard per layer (+ head/tail).

    Same tensors as write_checkpoint(layout="hf", dtype="bfloat16", seed=seed, scale=scale), but
    only one layer is in memory at a time. Writes config.json, the shards and the index; returns path.
    """
    cdict = dict(config)
    cfg = load_config(cdict)
    entries = canonical_shapes(cfg)
    rng = np.random.default_rng(seed)
    groups = {}
    for n, s, _ in entries:  # generation order = write_checkpoint's (one stream over canonical order)
        groups.setdefault(_shard_key(n), []).append((n, s))
    order = sorted(groups, key=lambda k: (k == -1, k))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cdict, f, indent=2)
    # shards must consume the random stream in canonical order: embed, layer 0..L-1, tail
    pos = {n: i for i, (n, _, _) in enumerate(entries)}
    assert [n for k in order for n, _ in groups[k]] == sorted(pos, key=pos.get), "canonical order changed"
    weight_map, total = {}, 0
    for k_i, key in enumerate(order, 1):
        tensors = {}
        for n, s in groups[key]:
            w = _random(rng, n, s, scale)
            tensors[n] = w if n.endswith("e_score_correction_bias") else w.astype(ml_dtypes.bfloat16)
            total += tensors[n].nbytes
        fname = shard_name(k_i, len(order))
        save_safetensors(os.path.join(path, fname), tensors)
        weight_map.update({n: fname for n in tensors})
        del tensors
    with open(os.path.join(path, INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    return path


def _byte_alphabet():
    """GPT-2's bytes_to_unicode: the 256 printable characters byte-level BPE uses for bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tokenizer_vocab(vocab_size):
    """(vocab dict, merges list) of a byte-level BPE with exactly ``vocab_size`` ids: 0 = BOS, 1 = EOS,
    2..257 the 256 bytes, then two-byte merges in a fixed order (so every id is reachable)."""
    if vocab_size < 258:
        raise ValueError(f"vocab_size must be >= 258 (2 specials + 256 bytes), got {vocab_size}")
    alpha = _byte_alphabet()
    vocab = {BOS: 0, EOS: 1}
    for i, c in enumerate(alpha):
        vocab[c] = 2 + i
    merges = []
    need = vocab_size - len(vocab)
    if need > 256 * 256:
        raise ValueError(f"vocab_size must be <= {258 + 65536}, got {vocab_size}")
    # most frequent-looking pairs first: printable ASCII pairs, then the rest
    order = sorted(range(256), key=lambda b: (not (32 <= b < 127), b))
    for a in order:
        for b in order:
            if len(merges) == need:
                break
            tok = alpha[a] + alpha[b]
            merges.append((alpha[a], alpha[b]))
            vocab[tok] = len(vocab)
        if len(merges) == need:
            break
    return vocab, merges


def write_tokenizer(path, vocab_size):
    """Write tokenizer.json (+ tokenizer_config.json) of a real byte-level BPE tokenizer of ``vocab_size``
    ids (GPT-2 pre-tokenizer, BOS/EOS as DeepSeek-V3 names them) into ``path``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = tokenizer_vocab(vocab_size)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, special=True, normalized=False),
                            AddedToken(EOS, special=True, normalized=False)])
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
                   "add_bos_token": True, "add_eos_token": False, "model_max_length": 4096}, f, indent=2)
    return path

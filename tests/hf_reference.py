"""Test helper: the test configs (tiny transformers DeepSeek models), built with the package's own
reference machinery (dsv3.parity_hf: model construction, seeded weights, canonical names, module probes),
and an independent HF-config -> native-config conversion (native_config)."""
import math

import numpy as np
import torch

from dsv3 import parity_hf
from transformers import DeepseekV2Config, DeepseekV3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

# transformers' own tiny tester config (DeepseekV3ModelTester)
TINY = dict(vocab_size=99, hidden_size=32, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=32,
            v_head_dim=32, n_routed_experts=8, num_experts_per_tok=8, n_group=2, topk_group=1,
            first_k_dense_replace=1, max_position_embeddings=512)

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 128, "beta_fast": 32.0, "beta_slow": 1.0}

# name -> (model class, config overrides)
CONFIGS = {
    "tiny": ("v3", {}),
    # group masking matters: 4 groups of 4, keep 2, top-3 of 16
    "grouped": ("v3", dict(n_routed_experts=16, num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=2,
                           num_hidden_layers=3, routed_scaling_factor=2.5)),
    "yarn": ("v3", dict(rope_parameters=YARN, n_routed_experts=8, num_experts_per_tok=2)),
    "no_q_lora": ("v3", dict(q_lora_rank=None, num_experts_per_tok=3)),
    "half_split": ("v3", dict(rope_interleave=False, num_experts_per_tok=3)),
    "kimi": ("v3", dict(n_group=1, topk_group=1, n_routed_experts=12, num_experts_per_tok=4,
                        routed_scaling_factor=2.827, rope_parameters={"rope_type": "default", "rope_theta": 50000.0})),
    "moonlight": ("v3", dict(q_lora_rank=None, n_group=1, topk_group=1, n_routed_experts=8, num_experts_per_tok=3,
                             n_shared_experts=2, rms_norm_eps=1e-5, routed_scaling_factor=2.446,
                             rope_parameters={"rope_type": "default", "rope_theta": 50000.0})),
    "bias": ("v3", dict(attention_bias=True, num_experts_per_tok=3)),
    "v2_lite": ("v2", dict(q_lora_rank=None, n_group=None, topk_group=None, topk_method="greedy", n_routed_experts=8,
                           num_experts_per_tok=3, n_shared_experts=2, routed_scaling_factor=1.0, norm_topk_prob=False,
                           rope_parameters=dict(YARN, mscale=0.707))),
    "v2_grouped": ("v2", dict(n_group=4, topk_group=2, topk_method="group_limited_greedy", n_routed_experts=16,
                              num_experts_per_tok=3, routed_scaling_factor=16.0)),
}


def hf_config(name):
    """The transformers config of test config ``name`` (TINY updated by CONFIGS[name])."""
    kind, over = CONFIGS[name]
    return (DeepseekV3Config if kind == "v3" else DeepseekV2Config)(**dict(TINY, **over))


def build_hf(name, seed=0):
    """The float32 transformers model of config ``name`` with dsv3.parity_hf's seeded random weights."""
    model = parity_hf.build_model(hf_config(name))
    parity_hf.load_state_dict(model, parity_hf.random_state_dict(model, seed))
    return model


def canonical_tensors(model):
    """The model's weights under dsv3's canonical names (zero-copy views of its parameters)."""
    out = parity_hf.hf_to_canonical({k: t.detach().numpy() for k, t in model.state_dict().items()})
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def yarn_get_mscale(scale, mscale=1.0):
    """DeepSeek's yarn mscale: 1 for scale <= 1, else 0.1 * mscale * ln(scale) + 1."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def native_config(cfg):
    """HF config -> the native dict (the keys of DeepseekConfig.to_native()).

    Written independently of dsv3.config on purpose: it takes inv_freq and the attention scaling from
    transformers' own ROPE_INIT_FUNCTIONS, so test_forward_integration can cross-check
    DeepseekConfig.to_native() against it, and the forward tests do not depend on dsv3.config.
    """
    v3 = cfg.model_type in ("deepseek_v3", "deepseek_v32")
    v32 = cfg.model_type == "deepseek_v32"
    rp = dict(cfg.rope_parameters)
    rope_type = rp.get("rope_type", "default")
    if rope_type == "default":
        dim = cfg.qk_rope_head_dim
        inv_freq = 1.0 / (rp["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        attn_scaling = 1.0
    else:
        inv_freq, attn_scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg)
    qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    scale = qk ** -0.5
    if rope_type != "default" and rp.get("mscale_all_dim"):
        m = yarn_get_mscale(rp["factor"], rp["mscale_all_dim"])
        scale = scale * m * m
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        moe_intermediate_size=cfg.moe_intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, q_lora_rank=cfg.q_lora_rank or 0,
        kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, n_routed_experts=cfg.n_routed_experts,
        n_shared_experts=cfg.n_shared_experts, num_experts_per_tok=cfg.num_experts_per_tok,
        n_group=cfg.n_group or 1, topk_group=cfg.topk_group or 1,
        first_k_dense_replace=cfg.first_k_dense_replace,
        norm_topk_prob=int(bool(cfg.norm_topk_prob)) if v3 else 0,  # V2 never renormalises
        routed_scaling_factor=float(cfg.routed_scaling_factor), rms_norm_eps=float(cfg.rms_norm_eps),
        rope_interleave=int(bool(getattr(cfg, "rope_interleave", True))) if v3 else 1, attention_bias=int(bool(cfg.attention_bias)),
        scoring_func="sigmoid" if v3 else "softmax", topk_method="noaux_tc" if v3 else cfg.topk_method,
        group_mask_value=float("-inf") if v3 else 0.0, softmax_scale=float(scale),
        rope_attention_scaling=float(attn_scaling),
        rope_inv_freq=np.ascontiguousarray(inv_freq.numpy(), dtype=np.float32),
        tie_word_embeddings=int(bool(cfg.tie_word_embeddings)),
        index_n_heads=cfg.index_n_heads if v32 else 0, index_head_dim=cfg.index_head_dim if v32 else 0,
        index_topk=cfg.index_topk if v32 else 0, index_key_fp8=0,
    )


def build_pair(name, seed=0, attention="absorbed", max_seq_len=64):
    """(transformers model, dsv3.Model) with the same weights."""
    import dsv3

    hf = build_hf(name, seed)
    ours = dsv3.Model.from_tensors(native_config(hf.config), canonical_tensors(hf), attention=attention,
                                   max_seq_len=max_seq_len, precision="exact")  # f32-level parity
    return hf, ours


def max_abs(a, b):
    """max |a - b| in float64."""
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# ---- running single transformers modules (through dsv3.parity_hf.Reference) ----
def hf_attention(hf, layer, x, start=0, cache=None):
    """HF attention of ``layer`` on x [S, H] (numpy) at positions start..; cache: DynamicCache or None."""
    return parity_hf.Reference(hf).attention(layer, x, start_pos=start, cache=cache)


def hf_decoder_layer(hf, layer, x, start=0, cache=None):
    """HF decoder layer ``layer`` on x [S, H] at positions start..; cache: DynamicCache or None."""
    return parity_hf.Reference(hf).decoder_layer(layer, x, start_pos=start, cache=cache)


def hf_logits(hf, ids):
    """transformers' logits [S, vocab] for token ids ``ids`` (no cache)."""
    return parity_hf.Reference(hf).logits(ids)


def random_hidden(cfg, s, seed=0):
    """Seeded standard-normal hidden states [s, hidden_size] (float32)."""
    return np.random.default_rng(seed).standard_normal((s, cfg.hidden_size)).astype(np.float32)


def assert_close(out, ref, rel=1e-5, what=""):
    """|out - ref| <= rel * max(1, max|ref|) everywhere (f32 rounding level for these sizes)."""
    ref = np.asarray(ref)
    scale = max(1.0, float(np.max(np.abs(ref))))
    err = max_abs(out, ref)
    assert np.asarray(out).shape == ref.shape, (what, np.asarray(out).shape, ref.shape)
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel * scale:.3g}"
    return err

"""The transformers side of `dsv3 parity`: the reference model, its weights and its module probes.

Everything here runs transformers' own DeepSeek code (DeepseekV3ForCausalLM / DeepseekV2ForCausalLM)
in float32 with ``attn_implementation="eager"`` and ``experts_implementation="eager"``; torch and
transformers are imported lazily so that ``import dsv3`` never needs them.

Weight names: transformers 5.x keeps routed experts fused (``mlp.experts.gate_up_proj`` [E, 2I, H],
rows 0..I-1 gate, I..2I-1 up; ``mlp.experts.down_proj`` [E, H, I]). dsv3's canonical names are per
expert (``mlp.experts.{e}.{gate,up,down}_proj.weight``); :func:`hf_to_canonical` and
:func:`canonical_to_hf` translate between the two (the rule: dsv3.fused_experts). Every other name is the same on both sides.
"""
import zlib

import numpy as np

from . import fused_experts

INSTALL_HINT = "pip install 'dsv3[parity]'"


def require_torch():
    """Import torch and transformers, or raise ImportError saying how to install them."""
    try:
        import torch
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"dsv3 parity needs torch and transformers ({e}); install them with: "
                          f"{INSTALL_HINT}") from e
    return torch, transformers


def hf_config_from(config):
    """A transformers config for a dsv3 DeepseekConfig (via its ``to_hf_config()``) or a config dict."""
    _, transformers = require_torch()
    if hasattr(config, "to_hf_config"):
        config = config.to_hf_config()
    if isinstance(config, transformers.PretrainedConfig):
        return config
    if not isinstance(config, dict):
        raise TypeError(f"config must be a DeepseekConfig, a dict or a transformers config, "
                        f"got {type(config).__name__}")
    d = dict(config)
    from .config import MODEL_TYPES, hf_class
    if "model_type" not in d:
        raise ValueError(f"config field model_type is missing ({', '.join(MODEL_TYPES)})")
    cls = hf_class(d.pop("model_type"))
    for k in ("architectures", "auto_map", "quantization_config", "torch_dtype", "dtype", "transformers_version"):
        d.pop(k, None)
    return cls(**d)


def build_model(hf_config):
    """An empty (uninitialised) float32 transformers causal LM for ``hf_config``, eager attention and experts."""
    torch, _ = require_torch()
    from .config import hf_class
    cls = hf_class(hf_config.model_type, "ForCausalLM")
    model = cls._from_config(hf_config, attn_implementation="eager", experts_implementation="eager",
                             dtype=torch.float32)
    model.eval()
    return model


def random_state_dict(model, seed):
    """Seeded float32 weights for every tensor of ``model``'s state_dict, scaled so activations stay near
    unit size and the logits are far from flat.

    Rule (n = standard normal, K = the last dimension, the fan-in): norm weights 1 + 0.1 n; embeddings n;
    lm_head 2 n / sqrt(K) (logits of std ~2); e_score_correction_bias 0.1 n; biases 0.1 n; every other
    weight n / sqrt(K). Each tensor has its own generator seeded from (seed, crc32(name)), so a tensor's
    values do not depend on which other tensors exist.
    """
    out = {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # the same tensor as the embedding
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        n = rng.standard_normal(tuple(t.shape), dtype=np.float32)
        if name.endswith("norm.weight"):
            v = 1.0 + 0.1 * n
        elif name.endswith("embed_tokens.weight"):
            v = n
        elif name.endswith("e_score_correction_bias") or name.endswith(".bias"):
            v = 0.1 * n
        elif name == "lm_head.weight":
            v = 2.0 * n / np.sqrt(t.shape[-1])
        else:
            v = n / np.sqrt(t.shape[-1])
        out[name] = np.ascontiguousarray(v, dtype=np.float32)
    return out


#: a transformers 5.x fused routed-expert weight (the rule: dsv3.fused_experts)
FUSED_EXPERTS = fused_experts.FUSED


def hf_to_canonical(state_dict):
    """transformers 5.x names -> dsv3 canonical names (dsv3.fused_experts.split): fused experts become
    per-expert views (gate = gate_up_proj[e, :I], up = gate_up_proj[e, I:], down = down_proj[e])."""
    return fused_experts.split(state_dict)


def canonical_to_hf(tensors):
    """dsv3 canonical names -> transformers 5.x names, every array float32 (dsv3.fused_experts.stack):
    per-expert weights stacked into the fused ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I]."""
    return fused_experts.stack(tensors, np.float32)


def load_state_dict(model, state_dict):
    """Copy numpy float32 tensors into ``model`` by name; every model tensor must be given, none extra."""
    torch, _ = require_torch()
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    if model.config.tie_word_embeddings and "lm_head.weight" in missing:
        missing.remove("lm_head.weight")
    if missing or extra:
        raise ValueError(f"weights do not match the transformers model: missing {missing[:6]}, "
                         f"unexpected {extra[:6]}")
    with torch.no_grad():
        for name, v in state_dict.items():
            if tuple(own[name].shape) != tuple(v.shape):
                raise ValueError(f"{name}: shape {tuple(v.shape)} != transformers {tuple(own[name].shape)}")
            own[name].copy_(torch.from_numpy(np.array(v, dtype=np.float32)))  # a writable copy


class Reference:
    """Module probes on a transformers DeepSeek model: inputs and outputs are numpy float32 [S, ...],
    batch 1. Inputs are built the way the model's own forward builds them: positions -> the model's
    rotary embedding, ``create_causal_mask`` for the mask, a ``DynamicCache`` for decode."""

    def __init__(self, model):
        self.torch, self.transformers = require_torch()
        self.model = model
        self.config = model.config
        self.is_v2 = model.config.model_type == "deepseek_v2"

    def _t(self, x):
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    @staticmethod
    def _np(t):
        return t.detach().to("cpu").float().numpy()

    def layer(self, i):
        return self.model.model.layers[i]

    def _rope(self, positions, x):
        pos = self.torch.as_tensor(np.asarray(positions, np.int64))[None]
        return self.model.model.rotary_emb(x, pos)

    def rope_cos_sin(self, positions):
        """(cos, sin) [P, rope_dim] as DeepseekV3RotaryEmbedding returns them (cat(freqs, freqs) layout,
        times attention_scaling). For V2 (complex freqs_cis) the real/imaginary parts in the same layout."""
        with self.torch.no_grad():
            out = self._rope(positions, self.torch.zeros(1, dtype=self.torch.float32))
            if self.is_v2:
                cos, sin = out.real, out.imag
                cos, sin = self.torch.cat([cos, cos], -1), self.torch.cat([sin, sin], -1)
            else:
                cos, sin = out
        return self._np(cos[0]), self._np(sin[0])

    def _mask_and_rope(self, x, start_pos, cache):
        from transformers.masking_utils import create_causal_mask
        positions = np.arange(start_pos, start_pos + x.shape[1])
        pos = self.torch.as_tensor(positions)[None]
        mask = create_causal_mask(config=self.config, inputs_embeds=x, attention_mask=None, cache=cache,
                                  position_ids=pos)
        return mask, self._rope(positions, x), pos

    def new_cache(self):
        from transformers import DynamicCache
        return DynamicCache(config=self.config)

    def attention(self, layer, x, start_pos=0, cache=None):
        """Self-attention of ``layer`` on x [S, H] at positions start_pos.., optionally through ``cache``."""
        with self.torch.no_grad():
            h = self._t(x)[None]
            mask, pe, _ = self._mask_and_rope(h, start_pos, cache)
            out = self.layer(layer).self_attn(hidden_states=h, position_embeddings=pe, attention_mask=mask,
                                              cache=cache)[0]
        return self._np(out[0])

    def indexer(self, layer, x):
        """V3.2 only: (rows [S, k] int64 as transformers' DeepseekV32Indexer returns them (unsorted; the
        first queries also pick causally masked rows), scores [S, S] float32) for the attention input x
        [S, H] at positions 0..S-1. The module returns only the rows; the scores are its own arithmetic
        (its wq_b / wk / k_norm / weights_proj and rotary function) up to the top-k, -inf above the diagonal."""
        torch = self.torch
        attn = self.layer(layer).self_attn
        ix = attn.indexer
        with torch.no_grad():
            h = self._t(x)[None]
            mask, pe, pos = self._mask_and_rope(h, 0, None)
            q_resid = attn.q_a_layernorm(attn.q_a_proj(h))
            rows = ix(h, q_resid, pe, mask[:, 0], pos)
            S, nh, hd, r = h.shape[1], ix.n_heads, ix.head_dim, ix.qk_rope_head_dim
            q = ix.wq_b(q_resid).view(1, S, nh, hd)
            k = ix.k_norm(ix.wk(h)).unsqueeze(2)
            rope = __import__(type(ix).__module__, fromlist=["apply_rotary_pos_emb"]).apply_rotary_pos_emb
            q_rot, k_rot = rope(q[..., :r], k[..., :r], pe[0], pe[1], unsqueeze_dim=2)
            q = torch.cat([q_rot, q[..., r:]], -1)
            k = torch.cat([k_rot, k[..., r:]], -1).squeeze(2)
            sc = torch.relu(torch.matmul(q.float(), k.transpose(-1, -2).float().unsqueeze(1)) * ix.softmax_scale)
            w = ix.weights_proj(h).float() * nh ** -0.5
            scores = torch.matmul(w.unsqueeze(-2), sc).squeeze(-2)[0]
            scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
        return rows[0].numpy().astype(np.int64), self._np(scores)

    def decoder_layer(self, layer, x, start_pos=0, cache=None):
        with self.torch.no_grad():
            h = self._t(x)[None]
            mask, pe, pos = self._mask_and_rope(h, start_pos, cache)
            out = self.layer(layer)(h, attention_mask=mask, position_ids=pos, cache=cache,
                                    position_embeddings=pe)
            if isinstance(out, tuple):
                out = out[0]
        return self._np(out[0])

    def norm(self, layer, which, x):
        """RMSNorm: which in 'input_layernorm', 'post_attention_layernorm' (of ``layer``) or 'final_norm'."""
        mod = self.model.model.norm if which == "final_norm" else getattr(self.layer(layer), which)
        with self.torch.no_grad():
            return self._np(mod(self._t(x)))

    def mlp(self, layer, x):
        """Dense MLP or the whole MoE block (routed + shared) of ``layer``."""
        with self.torch.no_grad():
            return self._np(self.layer(layer).mlp(self._t(x)[None])[0])

    def router(self, layer, x):
        """(weights [S, k] float32, indices [S, k] int64) as the router returns them (unsorted)."""
        with self.torch.no_grad():
            _, w, idx = self.layer(layer).mlp.gate(self._t(x))
        return self._np(w), idx.numpy().astype(np.int64)

    def experts(self, layer, x, indices, weights):
        with self.torch.no_grad():
            out = self.layer(layer).mlp.experts(self._t(x), self.torch.as_tensor(np.asarray(indices, np.int64)),
                                                self._t(weights))
        return self._np(out)

    def shared_experts(self, layer, x):
        with self.torch.no_grad():
            return self._np(self.layer(layer).mlp.shared_experts(self._t(x)))

    def logits(self, input_ids):
        """Full-sequence logits [S, vocab] without a cache."""
        with self.torch.no_grad():
            ids = self.torch.as_tensor(np.asarray(input_ids, np.int64))[None]
            return self._np(self.model(input_ids=ids, use_cache=False).logits[0])

    def generate(self, input_ids, max_new_tokens):
        """Greedy continuation (token ids of the new tokens only) with transformers' generate(); no eos stop."""
        with self.torch.no_grad():
            ids = self.torch.as_tensor(np.asarray(input_ids, np.int64))[None]
            gc = self.transformers.GenerationConfig(do_sample=False, max_new_tokens=int(max_new_tokens),
                                                    eos_token_id=None, pad_token_id=0)
            out = self.model.generate(ids, generation_config=gc, attention_mask=self.torch.ones_like(ids))
        return out[0, ids.shape[1]:].numpy().astype(np.int64)

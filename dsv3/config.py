"""Model configuration: parse and validate a DeepSeek-V2/V3/V3.2 / Kimi-K2 ``config.json``.

``load_config`` accepts a path to ``config.json``, a model directory, or a dict (as in ``config.json``)
and returns an immutable :class:`DeepseekConfig`. Missing fields take the defaults of transformers'
configuration class for the ``model_type`` (DeepSeek-V3's for deepseek_v3 / deepseek_v32 / kimi_k2).
RoPE parameters given either as legacy ``rope_theta`` + ``rope_scaling`` or as ``rope_parameters``
are normalised into one :class:`RopeConfig`; quantisation (FP8 block or ModelOpt NVFP4) into one
:class:`QuantConfig`. Derived values (softmax scale, RoPE inverse frequencies and attention scaling)
follow transformers 5.24 bit for bit in float32.
"""
import dataclasses
import fnmatch
import functools
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ._native import lib
from .jsonio import MAX_CONFIG_BYTES, MAX_DEPTH, nesting_depth, read_json

#: model_type -> the name stem of transformers' classes for it (``DeepseekV3`` + ``Config`` / ``ForCausalLM``)
HF_CLASS_STEMS = {"deepseek_v2": "DeepseekV2", "deepseek_v3": "DeepseekV3", "deepseek_v32": "DeepseekV32",
                  "kimi_k2": "DeepseekV3"}
MODEL_TYPES = tuple(HF_CLASS_STEMS)
ROPE_TYPES = ("default", "linear", "yarn")
# the router's spellings are the C core's enums (csrc/moe/router.c), read from the extension
SCORING_FUNCS = lib.config_choices()["scoring_func"]
TOPK_METHODS = lib.config_choices()["topk_method"]


def hf_class(model_type, kind="Config"):
    """transformers' class for a model_type: kind "Config" or "ForCausalLM" (transformers imported here)."""
    import transformers
    if model_type not in HF_CLASS_STEMS:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    return getattr(transformers, HF_CLASS_STEMS[model_type] + kind)
INT32_MAX = 2**31 - 1

# Defaults of transformers 5.24's DeepseekV3Config (also used for kimi_k2) ...
_V3_DEFAULTS = dict(
    vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
    num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=None, q_lora_rank=1536,
    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
    first_k_dense_replace=3, moe_layer_freq=1, norm_topk_prob=True, routed_scaling_factor=2.5,
    scoring_func="sigmoid", topk_method="noaux_tc", rms_norm_eps=1e-6, rope_interleave=True,
    tie_word_embeddings=False, attention_bias=False, max_position_embeddings=4096,
    bos_token_id=0, eos_token_id=1, pad_token_id=None, hidden_act="silu",
    num_nextn_predict_layers=0, index_n_heads=None, index_head_dim=None, index_topk=None,
)
# ... DeepseekV32Config ...
_V32_DEFAULTS = dict(_V3_DEFAULTS, max_position_embeddings=163840, index_n_heads=64,
                     index_head_dim=128, index_topk=2048)
# ... and DeepseekV2Config (num_experts_per_tok has no default there: a V2 config must give it).
_V2_DEFAULTS = dict(
    _V3_DEFAULTS, vocab_size=102400, hidden_size=4096, intermediate_size=11008, moe_intermediate_size=1407,
    num_hidden_layers=32, num_attention_heads=32, n_routed_experts=64, n_shared_experts=2,
    num_experts_per_tok=None, n_group=None, topk_group=None, first_k_dense_replace=0,
    norm_topk_prob=False, routed_scaling_factor=1.0, scoring_func="softmax", topk_method="greedy",
    max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
)
_DEFAULTS = {"deepseek_v3": _V3_DEFAULTS, "kimi_k2": _V3_DEFAULTS, "deepseek_v32": _V32_DEFAULTS,
             "deepseek_v2": _V2_DEFAULTS}
_ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters")
_QUANT_KEYS = ("quantization_config",)


#: ``model_type`` (and ``architectures``) of a dsv3-converted checkpoint's config.json: values transformers
#: does not know, so it refuses the directory instead of loading it with random experts; the real model
#: type is in the file's "dsv3" section.
CONVERTED_MODEL_TYPE = "dsv3_converted"
CONVERTED_ARCHITECTURES = ["Dsv3ConvertedCheckpoint"]


def _fail(name, value, why):
    r = repr(value)
    if len(r) > 120:  # a hostile value (400 digits, a huge list) must not flood the message
        r = f"{r[:60]}...({len(r)} characters)...{r[-20:]}"
    raise ValueError(f"config field {name}={r}: {why}")


def _freeze_json(d):
    """dict -> tuple of (key, canonical JSON text): immutable and hashable, round-trips exactly."""
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in d.items()))


def _thaw_json(t):
    return {k: json.loads(v) for k, v in t}


def _get_mscale(scale, mscale=1.0):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True)
class RopeConfig:
    """RoPE parameters, one form for legacy ``rope_scaling`` and new ``rope_parameters``.

    ``None`` means "not given"; transformers' defaults are applied when values are derived
    (beta_fast 32, beta_slow 1, factor = max_position_embeddings / original for yarn).
    """
    rope_type: str = "default"
    rope_theta: float = 10000.0
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool | None = None

    def to_dict(self):
        """The ``rope_parameters`` dict (new transformers form), keys with None left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class QuantConfig:
    """Checkpoint quantisation: ``method`` 'fp8_block' (DeepSeek FP8) or 'nvfp4' (ModelOpt)."""
    method: str
    weight_block_size: tuple = (128, 128)      # fp8_block: [N block, K block]
    scale_fmt: str | None = None               # fp8_block: None (f32 scales) or 'ue8m0'
    activation_scheme: str = "dynamic"
    fmt: str = "e4m3"
    group_size: int = 16                       # nvfp4 block size along K
    exclude_modules: tuple = ()                # nvfp4: fnmatch patterns of unquantised modules
    extra: tuple = ()                          # other keys of the source dict (frozen JSON)

    def is_excluded(self, module_name):
        """True when ``module_name`` (e.g. 'model.layers.0.self_attn.o_proj') is left unquantised."""
        return any(fnmatch.fnmatchcase(module_name, p) for p in self.exclude_modules)

    def to_dict(self):
        """``quantization_config`` as it appears in config.json."""
        d = _thaw_json(self.extra)
        if self.method == "fp8_block":
            d.update(quant_method="fp8", fmt=self.fmt, activation_scheme=self.activation_scheme,
                     weight_block_size=list(self.weight_block_size))
            if self.scale_fmt is not None:
                d["scale_fmt"] = self.scale_fmt
        else:
            d.update(quant_method="modelopt", quant_algo="NVFP4", group_size=self.group_size,
                     exclude_modules=list(self.exclude_modules))
        return d


@dataclass(frozen=True, repr=False)
class DeepseekConfig:
    """Validated, immutable model configuration (field names as in HF config.json).

    Derived: ``qk_head_dim``, ``softmax_scale``, ``rope_inv_freq`` (read-only float32 array),
    ``rope_attention_scaling``, ``is_moe_layer(i)``. Unknown config.json keys are kept in ``extra``.
    """
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    first_k_dense_replace: int
    moe_layer_freq: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    scoring_func: str
    topk_method: str
    rms_norm_eps: float
    rope_interleave: bool
    tie_word_embeddings: bool
    attention_bias: bool
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_id: int | tuple | None
    pad_token_id: int | None
    hidden_act: str
    num_nextn_predict_layers: int
    index_n_heads: int | None
    index_head_dim: int | None
    index_topk: int | None
    rope: RopeConfig = field(default_factory=RopeConfig)
    quantization: QuantConfig | None = None
    extra: tuple = ()

    def __repr__(self):
        """Short: the model type and the key sizes (``to_dict()`` has every field)."""
        return (f"DeepseekConfig({self.model_type}, layers={self.num_hidden_layers}, hidden={self.hidden_size}, "
                f"heads={self.num_attention_heads}, experts={self.n_routed_experts}x{self.num_experts_per_tok}, "
                f"vocab={self.vocab_size})")

    def _repr_html_(self):
        from .display import html_table
        return html_table(self.to_dict().items(), title=repr(self))

    # ---- derived values ----
    @property
    def qk_head_dim(self):
        """qk_nope_head_dim + qk_rope_head_dim (192 for DeepSeek-V3)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def rope_theta(self):
        """RoPE base (``rope.rope_theta``)."""
        return self.rope.rope_theta

    @property
    def extra_fields(self):
        """Unknown config.json keys, as a fresh dict."""
        return _thaw_json(self.extra)

    def is_moe_layer(self, i):
        """True when decoder layer ``i`` has a routed-expert MLP (i >= first_k_dense_replace)."""
        if not 0 <= i < self.num_hidden_layers:
            raise ValueError(f"layer index {i} out of range [0, {self.num_hidden_layers})")
        return i >= self.first_k_dense_replace and i % self.moe_layer_freq == 0

    @property
    def has_indexer(self):
        """Whether attention has the V3.2 lightning indexer (model_type deepseek_v32)."""
        return self.model_type == "deepseek_v32"

    @property
    def has_correction_bias(self):
        """Whether MoE layers carry ``mlp.gate.e_score_correction_bias`` (the C tensor table's rule)."""
        return any(n.endswith(".mlp.gate.e_score_correction_bias")
                   for n, *_ in lib.tensor_slots(self.to_native(), self.num_hidden_layers))

    @property
    def _yarn_factor(self):
        r = self.rope
        if r.factor is not None:
            return float(r.factor)
        return self.max_position_embeddings / r.original_max_position_embeddings

    @property
    def softmax_scale(self):
        """Attention logit scale as transformers' ``yarn_apply_mscale`` computes it (Python float)."""
        scale = self.qk_head_dim ** -0.5
        r = self.rope
        if r.rope_type != "default" and r.mscale_all_dim:
            m = _get_mscale(self._yarn_factor if r.rope_type == "yarn" else r.factor, r.mscale_all_dim)
            scale = scale * m * m
        return scale

    @property
    def rope_attention_scaling(self):
        """Factor transformers multiplies cos/sin by (yarn attention_factor; 1.0 otherwise)."""
        r = self.rope
        if r.rope_type != "yarn":
            return 1.0
        if r.attention_factor is not None:
            return float(r.attention_factor)
        f = self._yarn_factor
        if r.mscale and r.mscale_all_dim:
            return float(_get_mscale(f, r.mscale) / _get_mscale(f, r.mscale_all_dim))
        return float(_get_mscale(f))

    @functools.cached_property
    def rope_inv_freq(self):
        """float32 [qk_rope_head_dim/2], in transformers' float32 operation order (read-only)."""
        inv = _rope_inv_freq(self)
        inv.flags.writeable = False
        return inv

    # ---- conversions ----
    def to_native(self):
        """Plain dict for the C core (exactly the keys of the [io] interface)."""
        return {
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
            "q_lora_rank": self.q_lora_rank or 0, "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim, "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim, "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts, "num_experts_per_tok": self.num_experts_per_tok,
            "n_group": self.n_group, "topk_group": self.topk_group,
            "first_k_dense_replace": self.first_k_dense_replace,
            # transformers' V2 router never renormalises, whatever the config says (parity target)
            "norm_topk_prob": int(self.norm_topk_prob and self.model_type != "deepseek_v2"),
            "routed_scaling_factor": float(self.routed_scaling_factor),
            "rms_norm_eps": float(self.rms_norm_eps), "rope_interleave": int(self.rope_interleave),
            "attention_bias": int(self.attention_bias), "scoring_func": self.scoring_func,
            "topk_method": self.topk_method, "group_mask_value": self.group_mask_value,
            "softmax_scale": float(self.softmax_scale),
            "rope_attention_scaling": float(self.rope_attention_scaling),
            "rope_inv_freq": np.array(self.rope_inv_freq, dtype=np.float32),
            "tie_word_embeddings": int(self.tie_word_embeddings),
            # V3.2 lightning indexer (0: dense attention); index_key_fp8: f32 index keys unless the Model asks
            "index_n_heads": int(self.index_n_heads or 0) if self.has_indexer else 0,
            "index_head_dim": int(self.index_head_dim or 0) if self.has_indexer else 0,
            "index_topk": int(self.index_topk or 0) if self.has_indexer else 0,
            "index_key_fp8": 0,
        }

    @property
    def group_mask_value(self):
        """Score given to experts of dropped groups: transformers 5.24's V3 router masks with -inf,
        the V2 router (group_limited_greedy over softmax scores) with 0.0."""
        return 0.0 if self.model_type == "deepseek_v2" else float("-inf")

    def to_dict(self, legacy_rope=False):
        """config.json-style dict; ``load_config(cfg.to_dict()) == cfg``. ``legacy_rope`` writes
        ``rope_theta`` + ``rope_scaling`` instead of ``rope_parameters``."""
        d = _thaw_json(self.extra)
        for f in dataclasses.fields(self):
            if f.name in ("rope", "quantization", "extra"):
                continue
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        if legacy_rope:
            d["rope_theta"] = self.rope.rope_theta
            rs = {k: v for k, v in self.rope.to_dict().items() if k != "rope_theta"}
            d["rope_scaling"] = None if self.rope.rope_type == "default" and len(rs) == 1 else rs
        else:
            d["rope_parameters"] = self.rope.to_dict()
        if self.quantization is not None:
            d["quantization_config"] = self.quantization.to_dict()
        return d

    def to_hf_config(self, include_quantization=False):
        """The equivalent transformers config object (DeepseekV2/V3/V32Config; kimi_k2 -> V3).

        transformers is imported lazily. Quantisation is left out unless asked for (the parity tool
        compares against the dequantised model)."""
        cls = hf_class(self.model_type)
        d = self.to_dict()
        for k in ("model_type", "index_n_heads", "index_head_dim", "index_topk"):
            if self.model_type != "deepseek_v32" or k == "model_type":
                d.pop(k, None)
        for k, _ in self.extra:
            d.pop(k, None)
        if not include_quantization:
            d.pop("quantization_config", None)
        if self.model_type == "deepseek_v3" or self.model_type == "kimi_k2":
            d["num_mtp_layers"] = d.pop("num_nextn_predict_layers")
        else:
            d.pop("num_nextn_predict_layers")
        d.pop("moe_layer_freq")
        return cls(**d)


def _rope_inv_freq(cfg):
    """Inverse frequencies in float32, same operations and order as transformers (torch float32)."""
    dim = cfg.qk_rope_head_dim
    r = cfg.rope
    base = np.float32(r.rope_theta)
    expo = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    # base ** expo: computed in float64 then rounded (correctly rounded; torch's float32 pow is <= 1 ulp).
    pos_freqs = (np.float64(base) ** expo.astype(np.float64)).astype(np.float32)
    one = np.float32(1.0)
    if r.rope_type == "default":
        return one / pos_freqs
    if r.rope_type == "linear":
        return (one / pos_freqs) / np.float32(r.factor)
    # yarn
    factor = cfg._yarn_factor
    low, high = _yarn_ramp(cfg)
    ramp = (np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    ramp = np.clip(ramp, np.float32(0), np.float32(1))
    extra_f = one - ramp
    inv_extra = one / pos_freqs
    inv_inter = one / (np.float32(factor) * pos_freqs)
    return (inv_inter * (one - extra_f) + inv_extra * extra_f).astype(np.float32)


def _yarn_ramp(cfg):
    """(low, high) dimension bounds of yarn's linear ramp (transformers' find_correction_range).
    Raises ValueError naming the rope field whose value makes them non-finite."""
    r, dim = cfg.rope, cfg.qk_rope_head_dim
    where = "rope_parameters"
    orig = r.original_max_position_embeddings
    theta = float(r.rope_theta)
    truncate = True if r.truncate is None else r.truncate

    def corr_dim(key, rot):
        try:
            d = (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(theta))
        except (ValueError, ZeroDivisionError, OverflowError):
            d = math.nan
        if not math.isfinite(d):
            _fail(f"{where}.{key}", rot, f"gives a non-finite yarn correction dimension (with rope_theta={theta}, "
                                         f"original_max_position_embeddings={orig})")
        return d

    low, high = corr_dim("beta_fast", r.beta_fast or 32), corr_dim("beta_slow", r.beta_slow or 1)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    return low, high


# ---------------------------------------------------------------- parsing
def _read_json(path):
    return read_json(path, MAX_CONFIG_BYTES)


def load_config(src):
    """Parse and validate a model config.

    ``src``: a dict (config.json contents), a path to config.json, or a model directory (config.json
    inside; an ``hf_quant_config.json`` beside it supplies ModelOpt NVFP4 quantisation).
    Returns a :class:`DeepseekConfig`. Raises ValueError naming the field and value for impossible
    configs, OSError for unreadable files.
    """
    hf_quant = None
    if isinstance(src, DeepseekConfig):
        return src
    if isinstance(src, dict):
        try:
            text = json.dumps(src)  # deep copy, JSON types only
        except RecursionError:
            raise ValueError("config dict is nested too deeply") from None
        if nesting_depth(text.encode()) > MAX_DEPTH:
            raise ValueError(f"config dict is nested more than {MAX_DEPTH} levels deep")
        raw = json.loads(text)
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config not found: {path}")
        raw = _read_json(path)
        q = os.path.join(os.path.dirname(path), "hf_quant_config.json")
        if os.path.isfile(q):
            hf_quant = _read_json(q)
    else:
        raise TypeError(f"load_config expects a path, directory or dict, got {type(src).__name__}")
    return _from_dict(raw, hf_quant)


def _from_dict(raw, hf_quant=None):
    if raw.get("model_type") == CONVERTED_MODEL_TYPE and isinstance(raw.get("dsv3"), dict):
        raw["model_type"] = raw["dsv3"].get("model_type")  # a dsv3-converted directory (see below)
    if "model_type" not in raw:
        _fail("model_type", None, f"required field is missing (one of {', '.join(MODEL_TYPES)})")
    model_type = raw.pop("model_type")
    if model_type not in MODEL_TYPES:
        _fail("model_type", model_type, f"unsupported (expected one of {', '.join(MODEL_TYPES)})")
    defaults = _DEFAULTS[model_type]
    rope_src = {k: raw.pop(k) for k in _ROPE_KEYS if k in raw}
    quant_src = raw.pop("quantization_config", None)
    vals = {}
    for name, default in defaults.items():
        vals[name] = raw.pop(name) if name in raw else default
    # transformers' BC alias
    if "num_mtp_layers" in raw and "num_nextn_predict_layers" not in vals:
        vals["num_nextn_predict_layers"] = raw.pop("num_mtp_layers")
    extra = raw
    vals = _check_fields(model_type, vals)
    rope = _parse_rope(rope_src, vals["max_position_embeddings"])
    quant = _parse_quant(quant_src, hf_quant)
    cfg = DeepseekConfig(model_type=model_type, rope=rope, quantization=quant,
                         extra=_freeze_json(extra), **vals)
    _check_relations(cfg)
    return cfg


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _int(vals, name, minimum=1, optional=False):
    v = vals[name]
    if v is None:
        if optional:
            return
        _fail(name, v, "required field is missing (no default for this model_type)")
    if isinstance(v, float) and v.is_integer():
        v = vals[name] = int(v)
    if not _is_int(v):
        _fail(name, v, "must be an integer")
    if v < minimum:
        _fail(name, v, f"must be >= {minimum}")
    if v > INT32_MAX:
        _fail(name, v, f"must be <= {INT32_MAX}")


def _bool(vals, name):
    v = vals[name]
    if isinstance(v, bool):
        return
    if _is_int(v) and v in (0, 1):
        vals[name] = bool(v)
        return
    _fail(name, v, "must be true or false")


def _finite(v):
    """float(v) for a JSON number that is finite as a float, else None (bools, strings, NaN, inf, and
    integers too large for a float, which would raise OverflowError)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _pos_float(vals, name):
    v = vals[name]
    f = _finite(v)
    if f is None or f <= 0:
        _fail(name, v, "must be a finite number > 0")
    vals[name] = f


def _check_fields(model_type, vals):
    if vals["q_lora_rank"] == 0:  # DeepSeek's own ModelArgs spell "no q LoRA" as 0
        vals["q_lora_rank"] = None
    if model_type == "deepseek_v2":  # V2 configs: groups unused by greedy routing
        vals["n_group"] = 1 if vals["n_group"] is None else vals["n_group"]
        vals["topk_group"] = 1 if vals["topk_group"] is None else vals["topk_group"]
    for name in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
                 "num_hidden_layers", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                 "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "num_experts_per_tok",
                 "n_group", "topk_group", "moe_layer_freq", "max_position_embeddings"):
        _int(vals, name)
    for name in ("n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"):
        _int(vals, name, minimum=0)
    _int(vals, "q_lora_rank", optional=True)
    _int(vals, "num_key_value_heads", optional=True)
    for name in ("index_n_heads", "index_head_dim", "index_topk"):
        _int(vals, name, optional=True)
    for name in ("bos_token_id", "pad_token_id"):
        _int(vals, name, minimum=0, optional=True)
    eos = vals["eos_token_id"]
    if isinstance(eos, list):
        if not all(_is_int(e) and e >= 0 for e in eos):
            _fail("eos_token_id", eos, "must be a non-negative integer or a list of them")
        vals["eos_token_id"] = tuple(eos)
    else:
        _int(vals, "eos_token_id", minimum=0, optional=True)
    for name in ("norm_topk_prob", "rope_interleave", "tie_word_embeddings", "attention_bias"):
        _bool(vals, name)
    for name in ("rms_norm_eps", "routed_scaling_factor"):
        _pos_float(vals, name)
    if vals["num_key_value_heads"] is None:
        vals["num_key_value_heads"] = vals["num_attention_heads"]
    if vals["num_key_value_heads"] != vals["num_attention_heads"]:
        _fail("num_key_value_heads", vals["num_key_value_heads"],
              f"MLA needs as many kv heads as attention heads ({vals['num_attention_heads']})")
    if vals["qk_rope_head_dim"] % 2:
        _fail("qk_rope_head_dim", vals["qk_rope_head_dim"], "must be even (RoPE rotates pairs)")
    if vals["scoring_func"] not in SCORING_FUNCS:
        _fail("scoring_func", vals["scoring_func"], f"expected one of {', '.join(SCORING_FUNCS)}")
    if vals["topk_method"] not in TOPK_METHODS:
        _fail("topk_method", vals["topk_method"], f"expected one of {', '.join(TOPK_METHODS)}")
    if vals["hidden_act"] != "silu":
        _fail("hidden_act", vals["hidden_act"], "only 'silu' is supported")
    if vals["moe_layer_freq"] != 1:
        _fail("moe_layer_freq", vals["moe_layer_freq"], "only 1 is supported (every released model)")
    return vals


def _check_relations(c):
    if c.n_routed_experts % c.n_group:
        _fail("n_routed_experts", c.n_routed_experts, f"not divisible by n_group={c.n_group}")
    if c.topk_group > c.n_group:
        _fail("topk_group", c.topk_group, f"exceeds n_group={c.n_group}")
    if c.num_experts_per_tok > c.n_routed_experts:
        _fail("num_experts_per_tok", c.num_experts_per_tok, f"exceeds n_routed_experts={c.n_routed_experts}")
    if c.topk_method == "noaux_tc" and c.n_routed_experts // c.n_group < 2:
        _fail("n_group", c.n_group, "noaux_tc scores a group by its 2 best experts: needs >= 2 experts per group")
    h = c.num_attention_heads
    for what, n in (("num_attention_heads*qk_head_dim", h * c.qk_head_dim),
                    ("num_attention_heads*v_head_dim", h * c.v_head_dim),
                    ("num_attention_heads*(qk_nope_head_dim+v_head_dim)", h * (c.qk_nope_head_dim + c.v_head_dim)),
                    ("kv_lora_rank+qk_rope_head_dim", c.kv_lora_rank + c.qk_rope_head_dim),
                    ("n_routed_experts*moe_intermediate_size", c.n_routed_experts * c.moe_intermediate_size * 2)):
        if n > INT32_MAX:
            _fail(what, n, f"overflows a 32-bit row count ({INT32_MAX})")
    if c.model_type == "deepseek_v32" and c.q_lora_rank is None:
        _fail("q_lora_rank", None, "deepseek_v32's indexer needs q LoRA")
    _check_rope_derived(c)


def _check_rope_derived(c):
    """The derived RoPE values must be finite: extreme (but individually valid) rope parameters can
    overflow them (e.g. a denormal factor)."""
    if c.rope.rope_type == "yarn":
        _yarn_ramp(c)  # names beta_fast / beta_slow
    with np.errstate(all="ignore"):
        inv = _rope_inv_freq(c)
    derived = {"rope_inv_freq": bool(np.isfinite(inv).all()) and bool((inv > 0).all())}
    try:
        derived["softmax_scale"] = math.isfinite(c.softmax_scale) and c.softmax_scale > 0
        derived["rope_attention_scaling"] = math.isfinite(c.rope_attention_scaling)
    except (OverflowError, ValueError, ZeroDivisionError):
        derived["softmax_scale"] = False
    for what, ok in derived.items():
        if not ok:
            _fail("rope_parameters", c.rope.to_dict(), f"gives a non-finite or zero {what}")


def _num(d, key, where, optional=True, minimum=None, strict_min=False):
    v = d.get(key)
    if v is None:
        if optional:
            return None
        _fail(f"{where}.{key}", v, "required")
    if _finite(v) is None:
        _fail(f"{where}.{key}", v, "must be a finite number (within the range of a float)")
    v = float(v) if isinstance(v, float) else v
    if minimum is not None and (v <= minimum if strict_min else v < minimum):
        _fail(f"{where}.{key}", v, f"must be {'>' if strict_min else '>='} {minimum}")
    return v


def _parse_rope(src, max_pos):
    # transformers 5.24 (convert_rope_params_to_dict): `rope_scaling or rope_parameters`, so a
    # non-empty legacy rope_scaling wins over rope_parameters when both are given
    for key in ("rope_scaling", "rope_parameters"):
        if not isinstance(src.get(key), (dict, type(None))):
            _fail(key, src[key], "must be an object (or null)")
    params, where = src.get("rope_scaling"), "rope_scaling"
    if not params:
        params, where = src.get("rope_parameters"), "rope_parameters"
    if params is None:
        params = {}
    if not isinstance(params, dict):
        _fail(where, params, "must be an object (or null)")
    params = dict(params)
    if "rope_theta" in src:  # transformers: the dict's own value wins
        params.setdefault("rope_theta", src["rope_theta"])
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type not in ROPE_TYPES:
        _fail(f"{where}.rope_type", rope_type, f"unsupported (expected one of {', '.join(ROPE_TYPES)})")
    theta = _num(params, "rope_theta", where, minimum=0, strict_min=True)
    if rope_type == "yarn" and theta is not None and theta <= 1:
        _fail(f"{where}.rope_theta", theta, "yarn needs rope_theta > 1 (its correction range divides by "
                                             "log(rope_theta))")
    kw = dict(rope_type=rope_type, rope_theta=float(10000.0 if theta is None else theta))
    if rope_type in ("yarn", "linear"):
        factor = _num(params, "factor", where, optional=rope_type == "yarn", minimum=0, strict_min=True)
        kw["factor"] = None if factor is None else float(factor)
    if rope_type == "yarn":
        orig = params.get("original_max_position_embeddings", max_pos)
        if not _is_int(orig) or orig <= 0:
            _fail(f"{where}.original_max_position_embeddings", orig, "must be a positive integer")
        kw["original_max_position_embeddings"] = orig
        for k in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor"):
            v = _num(params, k, where, minimum=0)  # beta 0: transformers' `or` default, as here
            kw[k] = None if v is None else float(v)
        t = params.get("truncate")
        if t is not None and not isinstance(t, bool):
            _fail(f"{where}.truncate", t, "must be true or false")
        kw["truncate"] = t
    return RopeConfig(**kw)


def _parse_quant(qc, hf_quant):
    if qc is None and hf_quant is not None:
        q = hf_quant.get("quantization")
        if not isinstance(q, dict):
            _fail("hf_quant_config.quantization", q, "must be an object")
        qc = dict(q, quant_method="modelopt")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        _fail("quantization_config", qc, "must be an object")
    qc = dict(qc)
    method = qc.pop("quant_method", None)
    if method == "fp8":
        fmt = qc.pop("fmt", "e4m3")
        if fmt != "e4m3":
            _fail("quantization_config.fmt", fmt, "only e4m3 FP8 is supported")
        bs = qc.pop("weight_block_size", None)
        if (not isinstance(bs, list) or len(bs) != 2 or not all(_is_int(b) and b > 0 for b in bs)):
            _fail("quantization_config.weight_block_size", bs, "must be two positive integers, e.g. [128, 128]")
        scale_fmt = qc.pop("scale_fmt", None)
        if scale_fmt not in (None, "ue8m0"):
            _fail("quantization_config.scale_fmt", scale_fmt, "expected 'ue8m0' or absent")
        act = qc.pop("activation_scheme", "dynamic")
        if act not in ("dynamic", "static"):
            _fail("quantization_config.activation_scheme", act, "expected 'dynamic' or 'static'")
        return QuantConfig(method="fp8_block", weight_block_size=tuple(bs), scale_fmt=scale_fmt,
                           activation_scheme=act, fmt=fmt, extra=_freeze_json(qc))
    if method == "modelopt":
        algo = qc.pop("quant_algo", None)
        if algo != "NVFP4":
            _fail("quantization_config.quant_algo", algo, "only ModelOpt 'NVFP4' is supported")
        gs = qc.pop("group_size", None)
        if gs is None:  # newer exports: config_groups.*.weights.group_size
            groups = qc.get("config_groups") or {}
            if not isinstance(groups, dict):
                _fail("quantization_config.config_groups", groups, "must be an object of objects")
            for gname, g in groups.items():
                if not isinstance(g, (dict, type(None))):
                    _fail(f"quantization_config.config_groups.{gname}", g, "must be an object")
                w = (g or {}).get("weights") or {}
                if not isinstance(w, dict):
                    _fail(f"quantization_config.config_groups.{gname}.weights", w, "must be an object")
                gs = w.get("group_size", gs)
        gs = 16 if gs is None else gs
        if gs != 16:
            _fail("quantization_config.group_size", gs, "NVFP4 blocks are 16 wide")
        excl = qc.pop("exclude_modules", None)
        if excl is None:
            excl = qc.pop("ignore", None) or []
        if not isinstance(excl, list) or not all(isinstance(e, str) for e in excl):
            _fail("quantization_config.exclude_modules", excl, "must be a list of strings")
        return QuantConfig(method="nvfp4", group_size=gs, exclude_modules=tuple(excl),
                           activation_scheme="static", fmt="e2m1", weight_block_size=(1, 16),
                           extra=_freeze_json(qc))
    _fail("quantization_config.quant_method", method, "supported: 'fp8' (block) and 'modelopt' (NVFP4)")

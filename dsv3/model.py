"""The DeepSeek-V3-family causal LM on the C core: load, forward, generate, per-module probes.

A forward pass (prefill or one decode step, all layers) is one C call with the GIL released; the
KV cache is the compressed latent cache ([kv_lora_rank | qk_rope_head_dim] values per token and
layer), so it costs 576 floats per token per layer for DeepSeek-V3.
"""
import os
import warnings

import ml_dtypes
import numpy as np

from ._native import lib
from .checkpoint import tensors_of_kind

__all__ = ["Model"]

_KINDS = ("input_layernorm", "post_attention_layernorm", "attention", "mlp", "router", "experts",
          "shared_experts", "decoder_layer", "final_norm", "indexer")
# transformers keeps the router in float32 whatever the model dtype (_keep_in_fp32_modules_strict), and the
# V3.2 indexer's weights_proj (_keep_in_fp32_modules): the C tensor table's 'router' rows
_KEEP_F32 = tensors_of_kind("router")
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def _native_config(config):
    if hasattr(config, "to_native"):
        return dict(config.to_native())
    if isinstance(config, dict):
        return dict(config)
    raise TypeError(f"config must be a DeepseekConfig (with .to_native()), a transformers DeepSeek config "
                    f"or a native dict, got {type(config).__name__}")


def _from_transformers_config(config):
    """A transformers config object (DeepseekV3Config, DeepseekV2Config, ...) -> DeepseekConfig; anything
    else is returned as is."""
    if hasattr(config, "to_native") or isinstance(config, dict) or not hasattr(config, "to_dict") \
            or not hasattr(config, "model_type"):
        return config
    from .config import load_config
    return load_config(config.to_dict())


def _as_numpy(name, value):
    """torch tensors (any object with ``__dlpack__``) -> zero-copy numpy views (bfloat16 included);
    numpy arrays and QuantizedTensors as they are."""
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__"):
        return value
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "is_contiguous") and not value.is_contiguous():
        value = value.contiguous()
    from .dtypes import as_array
    try:
        return as_array(value)
    except (TypeError, ValueError) as e:
        raise type(e)(f"tensor {name}: {e}") from None


def _canonical_tensors(tensors):
    """dict of canonical name -> numpy / QuantizedTensor: torch tensors imported without a copy, a
    transformers 5.x fused state dict (``mlp.experts.gate_up_proj`` / ``down_proj``) split per expert."""
    out = {k: _as_numpy(k, v) for k, v in tensors.items()}
    from . import fused_experts  # the one fused-expert split
    if any(fused_experts.is_fused(k) for k in out):
        out = fused_experts.split(out)
    return out


def _dtype_arg(dtype):
    """None, or 'float32' / 'bfloat16' from any spelling dsv3.dtypes.dtype_name reads."""
    if dtype is None:
        return None
    from .dtypes import dtype_name
    try:
        name = dtype_name(dtype)
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise ValueError(f"dtype must be None, float32 or bfloat16 (e.g. 'f32', 'bf16', numpy.float32, "
                         f"torch.bfloat16), got {dtype!r}")
    return name


def _config_attr(config, name, default=None):
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _is_float_dtype(dt):
    """numpy floating types and ml_dtypes' (bfloat16, float8_*), which numpy reports as kind 'V'."""
    if dt.kind == "f":
        return True
    if dt.kind != "V":
        return False
    try:
        ml_dtypes.finfo(dt)
    except ValueError:
        return False
    return True


def _prepare_tensor(name, value, dtype):
    """numpy array or QuantizedTensor -> what the binding accepts; returns (value, numel, nbytes, fmt)."""
    if hasattr(value, "to_native") and hasattr(value, "fmt"):
        shape = tuple(value.shape)
        return value.to_native(), int(np.prod(shape)), int(value.nbytes), str(value.fmt)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"tensor {name}: expected a numpy array or QuantizedTensor, got {type(value).__name__}")
    if not _is_float_dtype(value.dtype):  # checked before any dtype= conversion, which would hide it
        raise TypeError(f"tensor {name}: dtype {value.dtype} is not a floating type (expected float32 or bfloat16)")
    target = None
    if dtype is not None and not name.endswith(_KEEP_F32):
        target = _DTYPES[dtype]
    elif value.dtype not in (np.float32, ml_dtypes.bfloat16):
        target = np.float32
    if name.endswith(_KEEP_F32) and value.dtype != np.float32:
        target = np.float32
    if target is not None and value.dtype != target:
        value = value.astype(target)
    value = np.ascontiguousarray(value)
    return value, int(value.size), int(value.nbytes), str(value.dtype)


KV_CACHE_DTYPES = ("f32", "bf16", "fp8")  # the C table's names (lib.kv_cache_formats())


def check_kv_cache_dtype(value):
    """The kv_cache_dtype argument checked: one of KV_CACHE_DTYPES ("f32", "bf16", "fp8"), else ValueError."""
    if not isinstance(value, str) or value not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {', '.join(repr(d) for d in KV_CACHE_DTYPES)}, got {value!r}")
    return value


class Model:
    """A DeepSeek-V3-family model (V2, V3, R1, Kimi-K2, Moonlight) running on the C core.

    Build it with :meth:`from_pretrained` (a checkpoint directory) or :meth:`from_tensors`
    (a config and a dict of canonical tensors). ``forward`` appends tokens to the latent KV cache
    and returns float32 logits; ``reset`` empties the cache; ``generate`` decodes greedily or by
    seeded sampling. ``run_module`` and ``rope_cos_sin`` run single modules for parity checks.
    """

    def __init__(self, native, config, info):
        self._native = native
        self.config = config
        self._info = info
        self._eos = _config_attr(config, "eos_token_id")

    # ---- construction ----
    @classmethod
    def from_tensors(cls, config, tensors, dtype=None, attention="absorbed", max_seq_len=4096, precision=None,
                     index_keys="f32", kv_cache_dtype="f32", mtp=False, pack=None):
        """Build a model from a config and a dict ``canonical name -> tensor``.

        config: a ``DeepseekConfig`` (anything with ``.to_native()``), a transformers config object
        (DeepseekV3Config, DeepseekV2Config, ...) or the native dict itself.
        tensors: numpy or torch float32 / bfloat16 arrays (torch tensors are imported without a copy
        through DLPack; other float dtypes are converted to float32) or
        ``dsv3.quant.QuantizedTensor`` values; a transformers 5.x state dict with fused experts
        (``mlp.experts.gate_up_proj`` / ``down_proj``) is split per expert (views, no copy). Names: named by their canonical names (transformers' DeepSeek-V3 names, routed experts one per expert; ``dsv3.checkpoint.canonical_shapes(config)`` lists them with shapes). The model
        reads the arrays in place and keeps references to them.
        dtype: None (keep), float32 or bfloat16 in any spelling (``"bf16"``, ``"bfloat16"``,
        ``torch.bfloat16``, ``"f32"``, ``numpy.float32``, ...): convert every array at load (the
        router's gate and correction bias stay float32, as in transformers; QuantizedTensor
        values keep their format).
        attention: "absorbed" (latent-space attention) or "naive" (expanded K/V, transformers' way).
        max_seq_len: KV cache capacity in tokens.
        kv_cache_dtype: storage of the latent KV cache: "f32" (default; exact mode's parity with transformers),
        "bf16" (half the bytes: each value rounded to nearest even; logits within ~1e-2 relative of f32) or
        "fp8" (about a quarter: e4m3 latent with one f32 scale per 128 values, rope part bf16, FlashMLA's
        layout; looser). The layouts: ``dsv3._native.lib.kv_cache_formats()``; cache memory:
        :attr:`cache_bytes_per_token`, :attr:`cache_bytes`.
        precision: activation precision of the linear layers: "fast" (the engine default,
        ``dsv3.quant.DEFAULT_PRECISION``: int8/int4 weights with activations quantised per block of 32
        to int8 and integer dots, fp8_block/nvfp4/bf16 with x rounded to bf16 on AVX-512) or "exact"
        (f32-level activations, for parity with transformers fp32). None: the default.
        index_keys: DeepSeek-V3.2 only: "f32" (default; exact, transformers' keys) or "fp8" (the index-key
        cache as DeepSeek's reference stores it: Hadamard-rotated, e4m3 with a power-of-two scale per 128
        values; a quarter of the bytes; the selection can differ from f32 keys where two scores are close).
        mtp: also load DeepSeek's multi-token-prediction layer (``model.layers.<num_hidden_layers>.*``:
        enorm, hnorm, eh_proj, a decoder block, shared_head.norm, shared_head.head; the head falls back to
        lm_head and the embedding to embed_tokens when absent), the draft model of
        ``generate(..., speculative="mtp")``. Off by default: its weights and cache cost memory.
        pack: the packed kernel layout of the int4 weights (16 rows interleaved with pre-decoded scales,
        csrc/linear/int4p.h; every int4 weight but kv_b_proj), which the fast precision's int4 kernels read
        (measured faster at M = 1, BENCHMARKS.md). None (default): int4 weights stored in the checkpoint
        layout are packed at load in the fast precision (an owned copy of their size, built at ~1 GB/s; the
        stored pages are then dropped from the resident set) unless ``DSV3_PACK=0``; weights stored packed
        (``dsv3 convert --pack``, ``dsv3.quant.pack``) are read in place. True: pack (ValueError with
        precision="exact", whose kernels read the stored layout; ignores ``DSV3_PACK``). False: never pack;
        stored-packed weights are unpacked at load (an owned copy of their stored size). The exact
        precision unpacks stored-packed weights the same way (parity work on a ``--pack`` checkpoint works,
        at that cost). :attr:`packing` says what was done.
        """
        from .quant import check_precision, native_weight, unpack  # precision plumbing (kept local)

        precision = check_precision(precision)
        if pack not in (None, True, False):
            raise TypeError(f"pack must be None, True or False, got {pack!r}")
        if pack is True and precision == "exact":
            raise ValueError("pack=True: the packed int4 layout is read by the fast precision only; load with "
                             "precision='fast', or with pack=None / False for the exact precision")
        dtype = _dtype_arg(dtype)
        if attention not in ("absorbed", "naive"):
            raise ValueError(f"attention must be 'absorbed' or 'naive', got {attention!r}")
        kv_cache_dtype = check_kv_cache_dtype(kv_cache_dtype)
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)) or max_seq_len < 1:
            raise ValueError(f"max_seq_len must be a positive int, got {max_seq_len!r}")
        tensors = _canonical_tensors(dict(tensors))
        config = _from_transformers_config(config)
        native_cfg = _native_config(config)
        if index_keys not in ("f32", "fp8"):
            raise ValueError(f"index_keys must be 'f32' or 'fp8', got {index_keys!r}")
        native_cfg["index_key_fp8"] = int(index_keys == "fp8")
        prepared, numel, nbytes, fmts = {}, 0, 0, {}
        stored_packed = unpacked = 0
        for name, value in tensors.items():
            if getattr(value, "is_packed", False):
                if precision == "exact" or pack is False:  # the stored layout back: an owned copy
                    value = unpack(value)
                    unpacked += value.nbytes
                else:
                    stored_packed += value.nbytes
            v, n, b, f = _prepare_tensor(name, value, dtype)
            prepared[name] = native_weight(v, precision) if precision != "exact" else v
            numel += n
            nbytes += b
            fmts[f] = fmts.get(f, 0) + b
        native = lib.Model(native_cfg, prepared, int(max_seq_len), attention, kv_cache_dtype=kv_cache_dtype,
                           mtp=bool(mtp), pack=pack)
        info = {"params": numel, "bytes": nbytes, "formats": fmts, "attention": attention, "precision": precision,
                "kv_cache_dtype": kv_cache_dtype, "mtp": bool(mtp),
                "packing": {"stored": stored_packed, "at_load": int(native.packed_at_load_bytes),
                            "unpacked_at_load": unpacked}}
        return cls(native, config, info)

    @classmethod
    def from_pretrained(cls, path, dtype=None, attention="absorbed", max_seq_len=4096, precision=None, progress=None,
                        index_keys="f32", kv_cache_dtype="f32", mtp=False, pack=None):
        """Load a checkpoint: a directory (HF layouts, DeepSeek FP8, NVFP4 or converted dsv3) or a hub id
        in the local Hugging Face cache (:func:`dsv3.paths.resolve_checkpoint_dir`).
        Arguments as :meth:`from_tensors` (precision "fast" by default, "exact" for parity work);
        progress: True / False / None: a bar over the tensors read (None: only in notebooks and terminals).
        mtp: load the checkpoint's MTP layer too (hub layout or a ``dsv3 convert --keep-mtp`` checkpoint).
        pack: None / True / False, the packed int4 layout as :meth:`from_tensors` says: None packs int4 at load
        in the fast precision (unless ``DSV3_PACK=0``) and reads a ``dsv3 convert --pack`` checkpoint's packed
        weights in place (zero-copy: the mmapped file); False never packs (unpacks stored-packed weights);
        True packs (ValueError with precision="exact")."""
        from .checkpoint import open_checkpoint  # the io module; imported lazily
        from .display import progress as _bar

        ckpt = open_checkpoint(path, mtp=mtp)
        names = getattr(ckpt, "names", None)
        tensors = dict(_bar(ckpt.canonical_tensors(), total=len(names()) if names else None, desc="load",
                            enabled=progress, unit="tensor"))
        model = cls.from_tensors(ckpt.config, tensors, dtype=dtype, attention=attention, max_seq_len=max_seq_len,
                                 precision=precision, index_keys=index_keys, kv_cache_dtype=kv_cache_dtype, mtp=mtp,
                                 pack=pack)
        model._checkpoint = ckpt  # keeps memory-mapped shards open
        model._path = ckpt.path  # the tokenizer is loaded from here on first use (a hub id resolved)
        return model

    def _repr_html_(self):
        from .display import Summary, human_bytes
        i = self._info
        return Summary({"config": repr(self.config), "parameters": f"{i['params']:,}",
                        "memory": human_bytes(i["bytes"]),
                        "formats": {k: human_bytes(v) for k, v in i["formats"].items()},
                        "attention": i["attention"], "precision": i["precision"],
                        **({"int4 layout": self._packing_text()} if self._packing_text() else {}),
                        "cache": f"{self.cache_len}/{self.max_seq_len} tokens, {self.kv_cache_dtype}, "
                                 f"{human_bytes(self.cache_bytes)} ({self.cache_bytes_per_token:,} bytes/token)"},
                       title="dsv3.Model")._repr_html_()

    # ---- running ----
    @staticmethod
    def _ids(input_ids):
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"input_ids must be integers, got dtype {ids.dtype}")
        if ids.ndim != 1:
            raise ValueError(f"input_ids must be 1-dimensional [S], got shape {ids.shape}")
        return np.ascontiguousarray(ids, dtype=np.int64)

    def forward(self, input_ids, logits="all", hidden=False, step_attention=False):
        """Run tokens after the cached ones; returns float32 logits. One C call.

        logits: "all" (default) returns [S, vocab], one row per position; "last" returns [1, vocab] for
        the last position only (the lm_head runs on one row: what generation needs); "none" returns an
        empty [0, vocab] array (the tokens only enter the cache).
        hidden=True returns (logits, hidden [S, hidden_size]): the final-norm hidden states (what the
        lm_head reads; the MTP layer's input). step_attention=True runs each token's attention core as
        the one-token decode step at its position computes it: a verification forward of speculative
        decoding, whose logits equal token-by-token decoding bitwise (dsv3_mtp.h says where).
        """
        if logits not in ("all", "last", "none"):
            raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        return self._native.forward(self._ids(input_ids), logits=logits, hidden=bool(hidden),
                                    step_attention=bool(step_attention))

    __call__ = forward

    def reset(self):
        """Empty the KV cache (and the MTP layer's)."""
        self._native.reset()

    def truncate(self, length):
        """Cache rollback: keep the first ``length`` tokens of the KV cache (rejected draft tokens are
        forgotten; the next forward continues at position ``length``)."""
        self._native.truncate(int(length))

    # ---- the MTP layer (mtp=True) ----
    @property
    def has_mtp(self):
        """Whether the MTP layer is loaded (``mtp=True``)."""
        return self._native.mtp_cache_len is not None

    @property
    def mtp_cache_len(self):
        """Positions in the MTP layer's cache (None without an MTP layer)."""
        return self._native.mtp_cache_len

    def mtp_forward(self, input_ids, hidden, logits="last"):
        """The MTP layer over S positions after its cached ones; one C call (csrc/include/dsv3_mtp.h).

        Row i is position p = mtp_cache_len + i: ``input_ids[i]`` is the token at p + 1 and ``hidden[i]``
        the main model's final-norm hidden state at p (``forward(..., hidden=True)``), or the MTP layer's
        own output row of p - 1 for a chained draft. Returns (logits for t_{p+2} by ``logits`` as in
        :meth:`forward`, hidden_out [S, hidden_size]: shared_head.norm's output, the next chained input).
        """
        if logits not in ("all", "last", "none"):
            raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        h = np.ascontiguousarray(hidden, dtype=np.float32)
        return self._native.mtp_forward(self._ids(input_ids), h, logits=logits)

    def mtp_truncate(self, length):
        """Keep the first ``length`` positions of the MTP layer's cache."""
        self._native.mtp_truncate(int(length))

    @property
    def cache_len(self):
        """Tokens currently in the KV cache."""
        return self._native.cache_len

    @property
    def max_seq_len(self):
        """KV cache capacity in tokens."""
        return self._native.capacity

    @property
    def kv_cache_dtype(self):
        """Storage of the latent KV cache: "f32", "bf16" or "fp8"."""
        return self._native.kv_cache_dtype

    @property
    def cache_bytes_per_token(self):
        """KV cache bytes per token over all layers: one latent row of the dtype's layout per layer, plus for
        DeepSeek-V3.2 one index-key row per layer, plus the MTP layer's rows when it is loaded (``mtp=True``):
        what the model's own caches and a speculative engine's slot hold."""
        return self._native.cache_bytes_per_token

    @property
    def cache_bytes(self):
        """Bytes of the latent KV cache (allocated for max_seq_len tokens)."""
        return self.cache_bytes_per_token * self.max_seq_len

    def generate(self, inputs, max_new_tokens=16, *, do_sample=None, temperature=None, top_k=None, top_p=None,
                 min_p=None, repetition_penalty=None, stop=None, seed=None, eos_token_id=None, stream=False,
                 logprobs=None, return_dict=False, tokenizer=None, speculative=None, num_draft=2):
        """Generate up to ``max_new_tokens`` tokens after ``inputs``, transformers-style.

        inputs: token ids (returns the new ids, int64), a str or a list of chat messages
        ({"role", "content"} dicts, rendered with the chat template; returns the new text). Both need
        the model's ``tokenizer`` (loaded by ``from_pretrained`` when the checkpoint has tokenizer.json)
        or ``tokenizer=``. Starts from an empty cache (calls ``reset()``).
        Sampling (in C): ``do_sample`` (None: sample iff a temperature > 0 is given), ``temperature``,
        ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, seeded by ``seed`` (random when None);
        greedy is the argmax (first maximum). Stops after an end-of-sequence id (``eos_token_id``,
        default the config's and the tokenizer's; it is included in the ids), a ``stop`` id (included)
        or string (cut from the text), or when the cache is full (``RuntimeWarning``); a prompt that does
        not fit raises ``ValueError``.
        stream=True returns an iterator of :class:`dsv3.generation.GenerationChunk` (text piece, id,
        logprob); ``logprobs`` (True, or n for the n most likely alternatives) or ``return_dict``
        return a :class:`dsv3.generation.GenerationOutput`.
        speculative="mtp" (a model loaded with ``mtp=True``): draft ``num_draft`` tokens per step with the MTP
        layer and verify them in one forward (:mod:`dsv3.speculative`): greedy output is plain greedy's bit
        for bit, sampled output has plain sampling's distribution; ``self.speculative_stats`` then holds the
        rounds, drafted and accepted tokens (``acceptance_rate``).
        """
        from .generation import GenerationParams, SequenceState, prompt_ids

        tok = tokenizer if tokenizer is not None else self.tokenizer
        ids, kind = prompt_ids(inputs, tok)
        params = GenerationParams(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                  top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                  stop=stop, seed=seed, logprobs=logprobs)
        if len(ids) == 0:
            raise ValueError("input_ids must hold at least one token")
        if len(ids) > self.max_seq_len:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit in max_seq_len {self.max_seq_len}")
        state = SequenceState(ids, params, tok, self.eos_token_ids(eos_token_id, tok))
        if speculative is None:
            chunks = self._generate_chunks(state)
        else:
            from .speculative import SpeculativeStats, speculative_chunks
            if speculative != "mtp":
                raise ValueError(f"speculative must be None or 'mtp', got {speculative!r}")
            if not self.has_mtp:
                raise ValueError("speculative='mtp' needs the MTP layer: load the model with mtp=True")
            if isinstance(num_draft, bool) or not isinstance(num_draft, (int, np.integer)) or num_draft < 1:
                raise ValueError(f"num_draft must be an int >= 1, got {num_draft!r}")
            self.speculative_stats = SpeculativeStats()
            chunks = speculative_chunks(self, state, int(num_draft), self.speculative_stats)
        if stream:
            return chunks
        for _ in chunks:
            pass
        if return_dict or params.logprobs is not None:
            return state.output()
        return state.text if kind == "text" else np.asarray(state.ids, np.int64)

    def eos_token_ids(self, eos_token_id=None, tokenizer=None):
        """The ids that end a generation: ``eos_token_id`` when given, else the config's and the tokenizer's."""
        if eos_token_id is not None:
            return set([eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else eos_token_id)
        eos = self._eos
        out = set() if eos is None else set([eos] if isinstance(eos, (int, np.integer)) else eos)
        if tokenizer is not None:
            out |= set(tokenizer.eos_token_ids)
        return out

    def _generate_chunks(self, state):
        """Decode one sequence on this model's own cache; yields GenerationChunk per token."""
        from .generation import sample_states

        self.reset()
        if state.params.max_new_tokens == 0:
            state.finish_reason = "length"
            return
        logits = self.forward(state.prompt, logits="last")
        while True:
            tokens, lps, tops = sample_states(logits, [state])
            full = self.cache_len >= self.max_seq_len
            chunk = state.append(tokens[0], lps[0], tops[0], capacity_left=0 if full else None)
            if full and chunk.finish_reason == "length" and len(state.ids) < state.params.max_new_tokens:
                warnings.warn(f"generate: KV cache full ({self.max_seq_len} tokens, max_seq_len); "
                              f"stopped after {len(state.ids)} new tokens", RuntimeWarning, stacklevel=3)
            yield chunk
            if state.finished or state.cancelled:
                return
            logits = self.forward(np.array([tokens[0]], dtype=np.int64), logits="last")

    @property
    def tokenizer(self):
        """The checkpoint's :class:`dsv3.Tokenizer` (None when it has no tokenizer.json); settable."""
        if getattr(self, "_tokenizer", False) is False:
            self._tokenizer = None
            path = getattr(self, "_path", None)
            if path is not None and os.path.isfile(os.path.join(path, "tokenizer.json")):
                from .tokenizer import Tokenizer
                self._tokenizer = Tokenizer.from_pretrained(path)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value):
        self._tokenizer = value

    # ---- probes ----
    def run_module(self, kind, layer, x, **kw):
        """Run one module of one layer on hidden states x (float32 [S, hidden]).

        kind: "input_layernorm", "post_attention_layernorm", "final_norm" (layer ignored),
        "attention" and "decoder_layer" (kw start_pos=0: position of x[0]; use_cache=False: when
        True, read the layer's cached rows [0, start_pos) and write rows for x — call reset()
        before the next forward), "mlp" (dense MLP, or routed + shared experts in MoE layers),
        "router" -> (weights float32 [S, k], indices int64 [S, k]), "experts" (kw indices,
        weights [S, k]: routed experts only), "shared_experts", "indexer" (V3.2 only: x is the attention
        input at positions 0..S-1, no cache -> (rows int64 [S, index_topk]: the rows each query keeps,
        ascending, -1 past the first min(index_topk, i + 1); scores float32 [S, S], -inf above the diagonal)).
        """
        if kind not in _KINDS:
            raise ValueError(f"unknown module kind {kind!r}; expected one of {', '.join(_KINDS)}")
        allowed = {"attention": {"start_pos", "use_cache"}, "decoder_layer": {"start_pos", "use_cache"},
                   "experts": {"indices", "weights"}}.get(kind, set()) | {"isa"}
        bad = set(kw) - allowed
        if bad:
            raise TypeError(f"run_module({kind!r}) got unexpected keyword(s) {sorted(bad)}")
        if kind == "experts":
            kw["indices"] = np.ascontiguousarray(kw.get("indices"), dtype=np.int64) \
                if kw.get("indices") is not None else None
            kw["weights"] = np.ascontiguousarray(kw.get("weights"), dtype=np.float32) \
                if kw.get("weights") is not None else None
        if layer is None:
            layer = 0
        return self._native.run_module(kind, int(layer), x, **kw)

    def rope_cos_sin(self, positions):
        """(cos, sin) float32 [n, qk_rope_head_dim] for positions, as transformers' rotary module."""
        return self._native.rope_cos_sin(np.ascontiguousarray(positions, dtype=np.int64))

    # ---- description ----
    @property
    def num_parameters(self):
        """Number of weight values given at load (every tensor, quantised ones counted by their shape)."""
        return self._info["params"]

    @property
    def precision(self):
        """Activation precision of the linear layers: "fast" or "exact" (see :meth:`from_tensors`)."""
        return self._info["precision"]

    @property
    def packing(self):
        """Bytes of weights in the packed int4 kernel layout by origin: ``stored`` (read in place from the
        checkpoint, ``dsv3 convert --pack``), ``at_load`` (packed at load: an owned buffer), and
        ``unpacked_at_load`` (stored packed, unpacked for the exact precision or ``pack=False``: owned)."""
        return dict(self._info["packing"])

    def _packing_text(self):
        p = self._info["packing"]
        parts = [f"{what} {p[key] / 2**20:.1f} MiB" for key, what in
                 (("stored", "packed, stored (read in place)"), ("at_load", "packed at load (owned)"),
                  ("unpacked_at_load", "unpacked at load (owned)")) if p[key]]
        if not parts and "int4" not in self._info["formats"]:
            return None
        return "; ".join(parts) or "stored layout"

    @property
    def nbytes(self):
        """Bytes of weights the model reads (as stored: quantised formats count their packed size)."""
        return self._info["bytes"]

    def __repr__(self):
        c = _native_config(self.config)
        layers, dense = c["num_hidden_layers"], min(c["first_k_dense_replace"], c["num_hidden_layers"])
        moe = layers - dense
        arch = _config_attr(self.config, "model_type", None) or "deepseek"
        fmts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in
                         sorted(self._info["formats"].items(), key=lambda kv: -kv[1]))
        moe_txt = (f", {moe} MoE ({c['n_routed_experts']} experts, top-{c['num_experts_per_tok']}, "
                   f"{c['n_shared_experts']} shared, {c['scoring_func']}/{c['topk_method']})") if moe else ""
        p = self._info["params"]
        ptxt = f"{p / 1e9:.2f}B" if p >= 1e9 else f"{p / 1e6:.2f}M"
        return (f"dsv3.Model({arch}: {layers} layers ({dense} dense{moe_txt}), hidden {c['hidden_size']}, "
                f"{c['num_attention_heads']} heads, vocab {c['vocab_size']}; {ptxt} params, "
                f"{self._info['bytes'] / 2**20:.1f} MiB [{fmts}]; "
                + (f"int4 layout: {self._packing_text()}; " if self._packing_text() else "")
                + f"attention {self._info['attention']}, "
                f"cache {self.cache_len}/{self.max_seq_len} {self.kv_cache_dtype} "
                f"({self.cache_bytes / 2**20:.1f} MiB))")

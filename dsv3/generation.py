"""Generation shared by ``Model.generate`` (one sequence) and the batched :mod:`dsv3.engine`: argument
checks (transformers' names), the per-sequence state (sampling row, rng, detokeniser, stop strings,
finish reason) and the results (:class:`GenerationChunk` while streaming, :class:`GenerationOutput`).

The sampling math is in C (csrc/model/sample.c, ``_dsv3.sample_rows``); Python only keeps state.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from ._native import lib

__all__ = ["GenerationParams", "GenerationChunk", "GenerationOutput", "SequenceState", "prompt_ids"]


@dataclass
class GenerationChunk:
    """One generated token while streaming: its id, the text it released (may be "" while a UTF-8
    character or a possible stop string is incomplete), its log-probability and top alternatives
    (when asked), and the finish reason on the last chunk ("stop" or "length")."""
    text: str
    token_id: int = None
    logprob: float = None
    top_logprobs: list = None
    finish_reason: str = None


@dataclass
class GenerationOutput:
    """A finished generation: the text (stop string and special tokens removed), the new ids (an
    end-of-sequence or stop id included), per-token log-probabilities and alternatives when asked,
    ``finish_reason`` ("stop" or "length") and the prompt length."""
    text: str
    token_ids: np.ndarray
    finish_reason: str
    prompt_tokens: int
    logprobs: list = None
    top_logprobs: list = None

    def __str__(self):
        return self.text


def _int(name, v, lo, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


def _float(name, v, lo, hi, lo_open=False):
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if isinstance(v, bool) or not np.isfinite(x) or x < lo or x > hi or (lo_open and x == lo):
        raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")
    return x


@dataclass
class GenerationParams:
    """Checked generation arguments, transformers' names and meanings.

    ``do_sample`` None: sample when a temperature > 0 is given (the first dsv3 API), else greedy;
    True: sample (temperature default 1.0; 0 means greedy); False: greedy. ``top_k`` 0/None: off;
    ``top_p`` 1: off; ``min_p`` 0: off; ``repetition_penalty`` 1: off. ``stop``: strings and/or ids (one
    or a list). ``logprobs``: None/False, True (the chosen token's), or n (plus the n most likely).
    """
    max_new_tokens: int = 16
    do_sample: bool = None
    temperature: float = None
    top_k: int = None
    top_p: float = None
    min_p: float = None
    repetition_penalty: float = None
    stop: object = None
    seed: int = None
    logprobs: object = None
    eos_token_id: object = None
    stop_strings: tuple = field(default=(), init=False)
    stop_ids: frozenset = field(default=frozenset(), init=False)

    def __post_init__(self):
        self.max_new_tokens = _int("max_new_tokens", self.max_new_tokens, 0)
        if self.do_sample not in (None, True, False):
            raise ValueError(f"do_sample must be a bool, got {self.do_sample!r}")
        t = None if self.temperature is None else _float("temperature", self.temperature, 0.0, 1e6)
        sample = (t is not None and t > 0) if self.do_sample is None else self.do_sample
        self.temperature = (1.0 if t is None else t) if sample else 0.0
        self.top_k = _int("top_k", self.top_k, 0, allow_none=True) or 0
        self.top_p = 1.0 if self.top_p is None else _float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        self.min_p = 0.0 if self.min_p is None else _float("min_p", self.min_p, 0.0, 1.0)
        self.repetition_penalty = 1.0 if self.repetition_penalty is None else \
            _float("repetition_penalty", self.repetition_penalty, 0.0, 1e6, lo_open=True)
        if self.seed is not None:
            self.seed = _int("seed", self.seed, -(2**63)) & (2**64 - 1)
        lp = self.logprobs
        if lp is None or lp is False:
            self.logprobs = None
        elif lp is True:
            self.logprobs = 0
        else:
            self.logprobs = _int("logprobs", lp, 0)
        stops = self.stop
        if stops is None:
            stops = []
        elif isinstance(stops, (str, int, np.integer)):
            stops = [stops]
        strings, ids = [], set()
        for s in stops:
            if isinstance(s, str):
                if not s:
                    raise ValueError("stop strings must not be empty")
                strings.append(s)
            elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
                ids.add(int(s))
            else:
                raise ValueError(f"stop must hold strings and token ids, got {s!r}")
        self.stop_strings, self.stop_ids = tuple(strings), frozenset(ids)

    def row(self):
        """The C sampler's parameter row: temperature, top_k, top_p, min_p, repetition_penalty."""
        return (self.temperature, float(self.top_k), self.top_p, self.min_p, self.repetition_penalty)


def prompt_ids(inputs, tokenizer, add_special_tokens=True):
    """(ids int64, kind) for "text" | ids | messages; kind says what ``generate`` returns."""
    if isinstance(inputs, str):
        if tokenizer is None:
            raise ValueError("text input needs a tokenizer (the checkpoint has no tokenizer.json; pass token ids)")
        return np.asarray(tokenizer.encode(inputs, add_special_tokens=add_special_tokens), np.int64), "text"
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(m, dict) for m in inputs):
        if tokenizer is None:
            raise ValueError("chat messages need a tokenizer with a chat template")
        return np.asarray(tokenizer.apply_chat_template(list(inputs), add_generation_prompt=True), np.int64), "text"
    ids = np.asarray(inputs)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"input_ids must be integers (or pass a str / a list of chat messages), got dtype {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be 1-dimensional [S], got shape {ids.shape}")
    return np.ascontiguousarray(ids, dtype=np.int64), "ids"


class SequenceState:
    """One sequence being generated: prompt, new ids, rng, detokeniser and stop handling.

    ``sample_row()`` gives the C sampler's inputs; ``append(token, logprob, top)`` records a sampled
    token and returns its :class:`GenerationChunk` (``finished`` tells whether it was the last).
    """

    def __init__(self, prompt, params, tokenizer=None, eos_ids=()):
        self.prompt = np.asarray(prompt, np.int64)
        self.params = params
        self.tokenizer = tokenizer
        self.eos = set(int(e) for e in eos_ids) | set(params.stop_ids)
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.rng = np.array([seed], np.uint64).view(np.int64)
        self.ids, self.logprobs, self.top = [], [], []
        self.finish_reason = None
        self._decoder = tokenizer.decoder() if tokenizer is not None else None
        self._text = ""  # released by the decoder (stop strings still inside)
        self._sent = 0  # characters of _text given out
        self._hold = max((len(s) for s in params.stop_strings), default=1) - 1
        self.cancelled = False

    @property
    def finished(self):
        return self.finish_reason is not None

    @property
    def text(self):
        return self._text[:self._sent]

    def seen(self):
        """Ids the repetition penalty applies to (prompt and generated)."""
        if self.params.repetition_penalty == 1.0:
            return np.zeros(0, np.int64)
        return np.concatenate([self.prompt, np.asarray(self.ids, np.int64)])

    def _release(self, final):
        if self.params.stop_strings:
            start = max(0, self._sent - self._hold)
            cut = -1
            for s in self.params.stop_strings:
                p = self._text.find(s, start)
                if p >= 0 and (cut < 0 or p < cut):
                    cut = p
            if cut >= 0:
                self._text = self._text[:cut]
                self.finish_reason = "stop"
                final = True
        end = len(self._text)
        if not final and self._hold:
            for k in range(min(self._hold, end - self._sent), 0, -1):  # a suffix that may begin a stop string
                if any(s.startswith(self._text[end - k:]) for s in self.params.stop_strings):
                    end -= k
                    break
        piece = self._text[self._sent:end]
        self._sent = end
        return piece

    def append(self, token, logprob=None, top=None, capacity_left=None):
        """Record a sampled token; returns its chunk (text released by it)."""
        token = int(token)
        self.ids.append(token)
        if self.params.logprobs is not None:
            self.logprobs.append(float(logprob))
            self.top.append(top)
        if token in self.eos:
            self.finish_reason = "stop"
        elif len(self.ids) >= self.params.max_new_tokens or (capacity_left is not None and capacity_left <= 0):
            self.finish_reason = "length"
        if self._decoder is not None and token not in self.eos:
            self._text += self._decoder.push(token)
        if self.finished and self._decoder is not None:
            self._text += self._decoder.flush()
        piece = self._release(self.finished)
        return GenerationChunk(piece, token, float(logprob) if self.params.logprobs is not None else None,
                               top if self.params.logprobs else None, self.finish_reason)

    def output(self):
        """The :class:`GenerationOutput` of a finished (or stopped) sequence."""
        lp = self.params.logprobs
        return GenerationOutput(self.text, np.asarray(self.ids, np.int64), self.finish_reason or "length",
                                len(self.prompt), self.logprobs if lp is not None else None,
                                self.top if lp else None)


def sample_states(logits, states):
    """Sample one token per state from logits [len(states), vocab] (one C call); returns
    (tokens, logprobs, top lists) and advances each state's rng."""
    n = len(states)
    params = np.array([s.params.row() for s in states], np.float64).reshape(n, 5)
    seen = [s.seen() for s in states]
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum([len(x) for x in seen])
    seen_all = np.concatenate(seen) if n else np.zeros(0, np.int64)
    rngs = np.concatenate([s.rng for s in states]) if n else np.zeros(0, np.int64)
    n_top = max([s.params.logprobs or 0 for s in states] + [0])
    n_top = min(n_top, logits.shape[1])
    want_lp = any(s.params.logprobs is not None for s in states)  # else no log-softmax per row
    tokens, lps, top_ids, top_lps = lib.sample_rows(np.ascontiguousarray(logits, np.float32), params,
                                                    np.ascontiguousarray(seen_all, np.int64), off, rngs, n_top,
                                                    want_lp)
    tops = []
    for i, s in enumerate(states):
        s.rng[0] = rngs[i]
        k = s.params.logprobs or 0
        tops.append([(int(a), float(b)) for a, b in zip(top_ids[i, :k], top_lps[i, :k])] if k else None)
    return tokens, lps, tops

"""The batched engine: many sequences decoded together on one model (continuous batching).

    engine = dsv3.engine.Engine(model, max_batch=8)
    outs = engine.generate(["Hello", "Tell me a story"], max_new_tokens=32)   # list of GenerationOutput
    req = engine.submit("Hi", max_new_tokens=8); while not req.finished: engine.step()

Each step is one C call (``_dsv3.Batch.forward``) over a ragged batch: every active sequence adds its
next prefill chunk or its one decode token, with its own positions and its own latent KV cache slot;
the MLP/MoE linears run over all the step's tokens at once. Logits are computed only for the rows
that are sampled (a prompt's last token, each decode token) and sampled in one C call. Sequences join
when a slot is free and leave when they finish or are cancelled, between steps. A sequence's tokens do
not depend on what else is in the batch (tests/test_engine.py checks batched == one at a time).

With ``prefix_cache=True`` a slot keeps its cached tokens after its sequence leaves, and a new prompt that
starts with tokens some slot holds (a conversation's next turn, a shared system prompt, OpenAI ``n``
choices) copies those cache rows (``Batch.copy_prefix``) and feeds only the rest; a request whose prompt
shares more with a sequence still prefilling waits for those rows rather than computing them again. The
copied rows were computed in another step (perhaps in the other attention form, absorbed vs expanded), so
results then equal the uncached ones within f32 rounding rather than bitwise; off by default.

With ``speculative="mtp"`` (a model loaded with ``mtp=True``) each decoding sequence drafts ``num_draft``
tokens with DeepSeek's MTP layer and the step verifies them (:mod:`dsv3.engine_spec`); ``speculative_stats``
counts rounds, drafted and accepted tokens.

The engine is not thread-safe: one thread calls submit/cancel/step (the server's scheduler thread).
"""
import collections
import itertools

import numpy as np

from ._native import lib
from .model import _native_config
from .generation import GenerationParams, SequenceState, prompt_ids, sample_states

__all__ = ["Engine", "Request"]

_NONE, _LAST = 0, 1


class Request:
    """One sequence in the engine: its :class:`SequenceState` (``state``), the chunks produced by the
    last step (``new_chunks``), its slot while it runs, and ``finished``."""

    _ids = itertools.count()

    def __init__(self, state, kind):
        self.id = next(Request._ids)
        self.state = state
        self.kind = kind
        self.slot = None
        self.fed = 0  # prompt tokens already in the cache
        self.cached_tokens = 0  # prompt tokens taken from the prefix cache
        self.next_token = None  # sampled, not yet fed
        self.new_chunks = []
        self.error = None

    @property
    def finished(self):
        return self.state.finished or self.state.cancelled or self.error is not None

    def output(self):
        """The GenerationOutput (call when finished)."""
        return self.state.output()


class Engine:
    """Continuous batching over a :class:`dsv3.Model`.

    max_batch: sequence slots (at most this many run in one step). max_seq_len: tokens per slot
    (default the model's). The slots' latent caches use the model's ``kv_cache_dtype`` (chosen at
    ``Model.from_pretrained(..., kv_cache_dtype=...)``); a DeepSeek-V3.2 model's slots also cache their tokens'
    index keys, and with ``speculative="mtp"`` each slot also holds the MTP layer's latent cache.
    kv_budget_bytes: if given, the slots are limited so that all their caches fit in it (``kv_cache_bytes``:
    the bytes allocated). prefill_chunk: prompt tokens a sequence feeds per step (long prompts are chunked, so
    running sequences keep decoding meanwhile). max_step_tokens: tokens per step over all sequences.
    prefix_cache: reuse cached prompt prefixes across requests (module docstring); ``prefix_hit_tokens``
    counts the prompt tokens so taken.
    speculative, num_draft: as ``Model.generate`` (``"mtp"``: speculative decoding with the MTP layer,
    :mod:`dsv3.engine_spec`; greedy output unchanged bit for bit).
    """

    def __init__(self, model, max_batch=8, max_seq_len=None, kv_budget_bytes=None, prefill_chunk=256,
                 max_step_tokens=1024, tokenizer=None, prefix_cache=False, speculative=None, num_draft=2):
        cfg = _native_config(model.config)
        cap = int(max_seq_len or model.max_seq_len)
        if cap < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len!r}")
        slots = int(max_batch)
        if slots < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        # the model's kv_cache_dtype sets the row layout; a speculative engine's slots also hold an MTP cache
        per_slot = cap * lib.batch_token_bytes(model._native, mtp=speculative is not None)
        if kv_budget_bytes is not None:
            fit = int(kv_budget_bytes) // per_slot
            if fit < 1:
                raise ValueError(f"kv_budget_bytes {kv_budget_bytes} holds no slot of {cap} tokens "
                                 f"({per_slot} bytes each)")
            slots = min(slots, fit)
        if prefill_chunk < 1 or max_step_tokens < 1:
            raise ValueError("prefill_chunk and max_step_tokens must be >= 1")
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        self.vocab_size = cfg["vocab_size"]
        self.batch = lib.Batch(model._native, slots, cap)
        self.max_seq_len = cap
        self.kv_cache_bytes = slots * per_slot
        self.prefill_chunk = int(prefill_chunk)
        self.max_step_tokens = int(max(max_step_tokens, slots))
        self.free = list(range(slots))  # the longest-free first: a recent sequence's rows stay longest
        self.prefix_cache = bool(prefix_cache)
        self.slot_tokens = [[] for _ in range(slots)]  # the tokens whose rows each slot's cache holds
        self.prefix_hit_tokens = 0
        self.waiting = collections.deque()
        self.running = []
        self.steps = 0
        self.cancelled = 0  # requests cancelled before they finished
        self.spec = None
        if speculative is not None:
            from .engine_spec import MTPSpeculator
            self.spec = MTPSpeculator(self, speculative, num_draft)

    def __repr__(self):
        spec = f", speculative='mtp', num_draft={self.spec.num_draft}" if self.spec is not None else ""
        return (f"Engine(max_batch={self.max_batch}, max_seq_len={self.max_seq_len}, kv_cache_dtype="
                f"{self.kv_cache_dtype!r}, kv_cache_bytes={self.kv_cache_bytes:,}{spec})")

    @property
    def speculative_stats(self):
        """:class:`dsv3.speculative.SpeculativeStats` over every sequence (None without speculation)."""
        return self.spec.stats if self.spec is not None else None

    @property
    def kv_cache_dtype(self):
        """Storage of the slots' latent caches (the model's)."""
        return self.model.kv_cache_dtype

    @property
    def max_batch(self):
        return self.batch.slots

    def make_request(self, inputs, **kw):
        """Check and tokenise a request without touching the engine's state (any thread may call it):
        ``inputs`` and keyword arguments as ``Model.generate`` (stream, return_dict and tokenizer aside).
        Raises ValueError / TypeError for a bad argument or a prompt that cannot fit."""
        eos_token_id = kw.pop("eos_token_id", None)
        ids, kind = prompt_ids(inputs, self.tokenizer)
        params = GenerationParams(**kw)
        if len(ids) == 0:
            raise ValueError("the prompt must hold at least one token")
        if len(ids) > self.max_seq_len:
            raise ValueError(f"prompt of {len(ids)} tokens does not fit in max_seq_len {self.max_seq_len}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        state = SequenceState(ids, params, self.tokenizer, self.model.eos_token_ids(eos_token_id, self.tokenizer))
        return Request(state, kind)

    def add(self, req):
        """Queue a request made by :meth:`make_request`; returns it."""
        if req.state.params.max_new_tokens == 0:
            req.state.finish_reason = "length"
        else:
            self.waiting.append(req)
        return req

    def submit(self, inputs, **kw):
        """:meth:`make_request` then :meth:`add`; returns the :class:`Request`."""
        return self.add(self.make_request(inputs, **kw))

    @staticmethod
    def _common(toks, prompt):
        """Length of the common prefix of toks and prompt[:-1] (the last prompt token is always fed)."""
        m = min(len(toks), len(prompt) - 1)
        if m <= 0:
            return 0
        eq = np.asarray(toks[:m], np.int64) == np.asarray(prompt[:m], np.int64)
        return m if eq.all() else int(np.argmin(eq))

    def _shares_pending(self, req):
        """With the prefix cache: whether a running sequence still prefilling will cache more of this
        prompt than any slot holds now (OpenAI n, or the same system prompt arriving together); the
        request then waits for those rows instead of computing them again."""
        if not self.prefix_cache:
            return False
        prompt = req.state.prompt
        have = max([self._common(t, prompt) for t in self.slot_tokens] + [0])
        return any(r.next_token is None and self._common(r.state.prompt, prompt) > have for r in self.running)

    def _admit(self, req):
        """Give a waiting request a free slot; with the prefix cache, the slot holding the longest prefix
        of its prompt (at most all but its last token, whose logits are sampled) lends its rows."""
        src, hit = None, 0
        prompt = np.asarray(req.state.prompt, np.int64)
        if self.prefix_cache:
            for slot, toks in enumerate(self.slot_tokens):
                n = self._common(toks, prompt) if min(len(toks), len(prompt) - 1) > hit else 0
                if n > hit:
                    src, hit = slot, n
        if self.spec is not None:  # the slot's MTP cache must cover the same prefix
            hit = self.spec.prefix_hit(src, hit)
        dst = src if src in self.free else self.free[0]
        self.free.remove(dst)
        if hit:
            self.batch.copy_prefix(src, dst, hit)
            self.slot_tokens[dst] = self.slot_tokens[src][:hit]
        else:
            self.batch.release(dst)
            self.slot_tokens[dst] = []
        if self.spec is not None:
            self.spec.admit(src, dst, hit)
        req.slot, req.fed, req.cached_tokens = dst, hit, hit
        self.prefix_hit_tokens += hit
        self.running.append(req)

    def cancel(self, req):
        """Stop a request (a client went away); its slot is freed at once."""
        if not req.finished:
            self.cancelled += 1
        req.state.cancelled = True
        if req in self.waiting:
            self.waiting.remove(req)
        self._leave(req)

    def _leave(self, req):
        if req in self.running:
            self.running.remove(req)
        if req.slot is not None:
            if not self.prefix_cache:
                self.batch.release(req.slot)
                self.slot_tokens[req.slot] = []
            self.free.append(req.slot)
            req.slot = None

    @property
    def idle(self):
        return not self.waiting and not self.running

    def _prefill_chunks(self, budget):
        """This step's prompt chunks of the sequences still prefilling, ``budget`` tokens at most in all:
        [(req, ids, whether the chunk ends the prompt)]."""
        out = []
        for req in self.running:
            if req.next_token is None and budget > 0:
                left = len(req.state.prompt) - req.fed
                n = min(left, self.prefill_chunk, budget)
                out.append((req, req.state.prompt[req.fed:req.fed + n], n == left))
                budget -= n
        return out

    def step(self):
        """Admit waiting sequences into free slots, run one batched forward and sample; returns the
        requests that received chunks (in ``req.new_chunks``)."""
        while self.waiting and self.free and not self._shares_pending(self.waiting[0]):
            self._admit(self.waiting.popleft())
        if not self.running:
            return []
        if self.spec is not None:
            return self.spec.step()
        budget = self.max_step_tokens
        plan, ids = [], []
        for req in self.running:  # decode tokens first: they are cheap and keep latency low
            if req.next_token is not None:
                plan.append((req, 1, _LAST))
                ids.append([req.next_token])
                budget -= 1
        for req, x, last in self._prefill_chunks(budget):
            plan.append((req, len(x), _LAST if last else _NONE))
            ids.append(x)
        seqs = np.array([[r.slot, n, mode] for r, n, mode in plan], np.int64)
        logits = self.batch.forward(np.concatenate([np.asarray(x, np.int64) for x in ids]), seqs)
        self.steps += 1
        for (req, _, _), x in zip(plan, ids):
            self.slot_tokens[req.slot].extend(int(t) for t in x)
        sampled = []
        for req, n, mode in plan:
            req.new_chunks = []
            if req.next_token is None:
                req.fed += n
            req.next_token = None
            if mode == _LAST:
                sampled.append(req)
        if sampled:
            tokens, lps, tops = sample_states(logits, [r.state for r in sampled])
            for i, req in enumerate(sampled):
                left = self.max_seq_len - self.batch.length(req.slot)
                chunk = req.state.append(tokens[i], lps[i], tops[i], capacity_left=left)
                req.new_chunks.append(chunk)
                if req.finished:
                    self._leave(req)
                else:
                    req.next_token = int(tokens[i])
        return sampled

    def generate(self, prompts, **kw):
        """Run every prompt to completion together; returns their GenerationOutput in order."""
        reqs = [self.submit(p, **kw) for p in prompts]
        while not all(r.finished for r in reqs):
            self.step()
        return [r.output() for r in reqs]

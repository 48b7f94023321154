"""Speculative decoding in the batched engine: ``Engine(model, speculative="mtp", num_draft=k)``.

Each decoding sequence runs the rounds of :mod:`dsv3.speculative` (same drafts, same acceptance rule, so
greedy output is plain greedy's bit for bit and sampled output has plain sampling's distribution), all
sequences together:

1. draft: d_1 from the sequence's ``draft_logits``; d_j (j > 1) by chained MTP steps, one ragged
   ``BatchMTP.forward`` per chain step over every drafting sequence (each slot has its own MTP latent
   cache, and on DeepSeek-V3.2 the MTP layer's own index keys, ``_dsv3.BatchMTP``, slot i with the Batch's
   slot i); the chained positions are dropped after;
2. verify: one batched step (``Batch.forward``) holds every sequence's [pending, d_1..d_k] as a chunk of
   mode DSV3_BATCH_VERIFY (logits and hidden states of all k + 1 rows, each row's attention as decoding
   computes it), next to other sequences' prefill chunks and plain decode tokens;
3. accept (:func:`dsv3.speculative.accept`), truncate the rejected tail from the slot's cache, hand the
   accepted tokens one by one to the sequence's state (stop strings / ids, max_new_tokens, logprobs and
   streaming work as for one token: ``req.new_chunks`` may hold several chunks);
4. catch up: one ragged ``BatchMTP.forward`` over the new positions of every sequence with the main
   model's hidden states gives each one's next ``draft_logits``.

Prefill chunks ask for the hidden states of every row (the MTP layer needs the main model's hidden state at
each prompt position) and logits only at the prompt's last token (modes 4 / 5, DSV3_BATCH_HIDDEN_ALL: the
head runs on the rows that are sampled, as in the plain engine). The MTP forward of a step is one ragged C call like the main model's (dsv3_batch_mtp.h: the
layer's weights read once for all sequences, each sequence's attention over its own slot), so a sequence's
drafts do not depend on the other sequences (bitwise where the batched step's are). ``num_draft`` is each
sequence's own: a sequence drafts
``min(num_draft, room left in its slot - 1, tokens left to generate - 1)`` tokens whatever the batch holds
(the engine's step budget is raised to fit every slot's verification chunk).
"""
import numpy as np

from ._native import lib
from .speculative import SpeculativeStats, _rows, accept

__all__ = ["MTPSpeculator"]

_NONE, _LAST, _VERIFY = 0, 1, 3  # Batch.forward logits modes (dsv3_batch.h; 2: all)
_HIDDEN_ALL = 4  # added to _NONE / _LAST: hidden rows for every new token (DSV3_BATCH_HIDDEN_ALL)


class _Draft:
    """A decoding sequence's MTP state: logits [1, vocab] for the token after the pending one and the
    MTP layer's g row [1, hidden] there (the input of a chained step)."""
    __slots__ = ("logits", "g")

    def __init__(self, logits, g):
        self.logits, self.g = logits, g


class MTPSpeculator:
    """The speculative part of an :class:`dsv3.engine.Engine` (made by it for ``speculative="mtp"``): the
    slots' MTP caches, the step that drafts, verifies and accepts, and the totals in ``stats``."""

    def __init__(self, engine, speculative, num_draft):
        model = engine.model
        if speculative != "mtp":
            raise ValueError(f"speculative must be None or 'mtp', got {speculative!r}")
        if not model.has_mtp:
            raise ValueError("speculative='mtp' needs the MTP layer: load the model with mtp=True (a checkpoint "
                             "converted with --keep-mtp, or the hub layout)")
        if isinstance(num_draft, bool) or not isinstance(num_draft, (int, np.integer)) or num_draft < 1:
            raise ValueError(f"num_draft must be an int >= 1, got {num_draft!r}")
        self.engine = engine
        self.num_draft = int(num_draft)
        # one more latent row per token and slot (the MTP layer's): the engine's kv_cache_bytes and
        # kv_budget_bytes count it (lib.batch_token_bytes(..., mtp=True))
        self.mtp = lib.BatchMTP(model._native, engine.batch.slots, engine.max_seq_len)
        self.stats = SpeculativeStats()
        engine.max_step_tokens = max(engine.max_step_tokens, engine.batch.slots * (self.num_draft + 1))

    # ---- slot bookkeeping (the engine's admission) ----
    def prefix_hit(self, src, hit):
        """The prompt tokens a new sequence may take from slot ``src``'s caches, given ``hit`` main-cache
        tokens in common: the MTP row of position p reads token p + 1, so one fewer, and no more than
        the MTP cache of ``src`` holds."""
        if src is None or hit <= 1:
            return 0
        return min(hit - 1, self.mtp.length(src))

    def admit(self, src, dst, hit):
        """Slot ``dst`` starts a sequence with ``hit`` tokens of slot ``src`` (0: none)."""
        if hit:
            self.mtp.copy_prefix(src, dst, hit)
        else:
            self.mtp.release(dst)

    # ---- the step ----
    def _k(self, req):
        """Draft tokens for this sequence's next round (0: a plain decode step)."""
        if getattr(req, "draft", None) is None:
            return 0
        e, st = self.engine, req.state
        return max(0, min(self.num_draft, e.max_seq_len - e.batch.length(req.slot) - 1,
                          st.params.max_new_tokens - len(st.ids) - 1))

    def _draft_all(self, reqs_k):
        """Drafts of every (req, k): [drafts], [q rows]; chained MTP steps batched over the sequences."""
        drafts = {id(r): [] for r, _ in reqs_k}
        qrows = {id(r): [] for r, _ in reqs_k}
        cur = {id(r): (r.draft.logits, r.draft.g) for r, _ in reqs_k}
        start = {r.slot: self.mtp.length(r.slot) for r, _ in reqs_k}
        for j in range(max([k for _, k in reqs_k] + [0])):
            chain = []
            for r, k in reqs_k:
                if j >= k:
                    continue
                logits = cur[id(r)][0]
                tok, _, _ = _rows(r.state, logits, [drafts[id(r)]])
                drafts[id(r)].append(tok[0])
                qrows[id(r)].append(logits[0])
                if j + 1 < k:
                    chain.append(r)
            if chain:
                ids = np.array([drafts[id(r)][-1] for r in chain], np.int64)
                g = np.ascontiguousarray(np.concatenate([cur[id(r)][1] for r in chain]), np.float32)
                seqs = np.array([[r.slot, 1, _LAST] for r in chain], np.int64)
                lo, go = self.mtp.forward(ids, g, seqs)
                for i, r in enumerate(chain):
                    cur[id(r)] = (lo[i:i + 1], go[i:i + 1])
        for slot, n in start.items():  # the chained positions read draft states: dropped
            self.mtp.truncate(slot, n)
        return drafts, qrows

    def step(self):
        """One engine step (admission done by the engine): returns the requests that received chunks."""
        e = self.engine
        budget = e.max_step_tokens
        plan, ids = [], []  # (req, n, mode, drafts)
        decoding = [r for r in e.running if r.next_token is not None]
        reqs_k = [(r, self._k(r)) for r in decoding]
        drafting = [(r, k) for r, k in reqs_k if k > 0]
        drafts, qrows = self._draft_all(drafting) if drafting else ({}, {})
        for r, k in reqs_k:
            if k > 0:
                d = drafts[id(r)]
                plan.append((r, k + 1, _VERIFY, d))
                ids.append([r.next_token] + d)
                budget -= k + 1
            else:
                plan.append((r, 1, _LAST, None))
                ids.append([r.next_token])
                budget -= 1
        for r, x, last in e._prefill_chunks(budget):
            plan.append((r, len(x), _HIDDEN_ALL + (_LAST if last else _NONE), None))
            ids.append(x)
        lengths = {r.slot: e.batch.length(r.slot) for r, _, _, _ in plan}
        seqs = np.array([[r.slot, n, mode] for r, n, mode, _ in plan], np.int64)
        logits, hidden = e.batch.forward(np.concatenate([np.asarray(x, np.int64) for x in ids]), seqs, hidden=True)
        e.steps += 1
        for (r, _, _, _), x in zip(plan, ids):
            e.slot_tokens[r.slot].extend(int(t) for t in x)
        out, row, hrow, catch = [], 0, 0, []  # catch: (req, ids, hidden rows, logits mode) for the MTP layer
        for (r, n, mode, d), x in zip(plan, ids):
            rows = n if mode == _VERIFY else 0 if mode == _HIDDEN_ALL + _NONE else 1
            hrows = n if mode >= _VERIFY else 1
            lo, hi = logits[row:row + rows], hidden[hrow:hrow + hrows]
            row, hrow = row + rows, hrow + hrows
            r.new_chunks = []
            L = lengths[r.slot]
            if mode >= _HIDDEN_ALL:  # a prefill chunk: the MTP layer over its positions
                r.fed += n
                if r.fed < len(r.state.prompt):
                    catch.append((r, r.state.prompt[r.fed - n + 1:r.fed + 1], hi, _NONE))
                    continue
                new = list(zip(*_rows(r.state, lo, [[]])))
                after = list(r.state.prompt[r.fed - n + 1:]) + [new[0][0]]
                feed = (np.asarray(after, np.int64), hi)
            elif mode == _VERIFY:
                new = accept(r.state, lo, d, qrows[id(r)])
                a = len(new) - 1
                self.stats.rounds += 1
                self.stats.drafted += len(d)
                self.stats.accepted += a
                e.batch.truncate(r.slot, L + a + 1)
                del e.slot_tokens[r.slot][L + a + 1:]
                feed = (np.asarray(x[1:a + 1] + [new[-1][0]], np.int64), hi[:a + 1])
            else:  # a plain decode step: the MTP layer is not caught up (no more rounds for it)
                new = list(zip(*_rows(r.state, lo, [[]])))
                r.draft, feed = None, None
            r.next_token = None
            for tok, lp, top in new:
                left = e.max_seq_len - len(r.state.prompt) - len(r.state.ids)
                r.new_chunks.append(r.state.append(tok, lp, top, capacity_left=left))
                if r.finished:
                    break
            out.append(r)
            if r.finished:
                e._leave(r)
                continue
            r.next_token = int(new[-1][0])
            if feed is not None:
                catch.append((r, feed[0], feed[1], _LAST))
        if catch:
            self._catch_up(catch)
        return out

    def _catch_up(self, catch):
        """The MTP layer over the new positions of every sequence (one C call); sets each ``req.draft``."""
        ids = np.concatenate([np.asarray(x, np.int64) for _, x, _, _ in catch])
        hid = np.ascontiguousarray(np.concatenate([h for _, _, h, _ in catch]), np.float32)
        seqs = np.array([[r.slot, len(x), mode] for r, x, _, mode in catch], np.int64)
        lo, g = self.mtp.forward(ids, hid, seqs)
        i = 0
        for r, _, _, mode in catch:
            if mode == _LAST:
                r.draft = _Draft(lo[i:i + 1], g[i:i + 1])
                i += 1

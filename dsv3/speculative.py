"""Speculative decoding with DeepSeek's MTP layer as the draft model (``Model.generate(..., speculative="mtp")``).

Python orchestrates C forwards (all math, sampling included, is C). State between rounds: the main cache
holds L tokens, ``pending`` is the last sampled token (not fed yet), the MTP layer's cache holds positions
0..L-1 and ``draft_logits`` are its logits for the token after ``pending``. One round:

1. draft k tokens: d_1 from ``draft_logits``; d_j (j > 1) by a chained MTP step at the next position that
   reads d_{j-1} and the MTP layer's own output hidden state (SGLang's chaining);
2. verify: one main forward of [pending, d_1..d_k] with logits and hidden states for all k+1 rows
   (``step_attention``: each row's logits are bitwise those of token-by-token decoding, dsv3_mtp.h; on
   DeepSeek-V3.2 each row selects its own index_topk rows over its own prefix, as its decode step would);
3. accept: greedy keeps the longest prefix where d_{j+1} is the token the sampler picks from row j (so the
   output is plain greedy's, bit for bit); sampling uses the standard rule (Leviathan et al. 2023, Chen et
   al. 2023): accept d with probability min(1, p(d)/q(d)), else draw from norm(max(0, p - q)) and stop;
   when all k are accepted one more token comes from row k. p and q are the sampler's own distributions
   (penalty, temperature, top-k, top-p, min-p), so the output distribution is plain sampling's;
4. roll back: the main cache keeps L + a + 1 tokens (pending and the a accepted drafts), the MTP cache L
   positions (the chained steps used draft hidden states);
5. catch up: the MTP layer over the a + 1 new positions with the main model's hidden states gives the next
   round's ``draft_logits``.
"""
from dataclasses import dataclass

import numpy as np

from ._native import lib

__all__ = ["SpeculativeStats", "speculative_chunks", "accept"]


@dataclass
class SpeculativeStats:
    """Counts of one speculative generation: rounds (verification forwards), drafted and accepted tokens."""
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self):
        """Accepted / drafted draft tokens (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self):
        """New tokens per verification forward (accepted drafts + the one the main model adds)."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0


def _rows(state, logits, prefixes, rng=None):
    """The C sampler on logits rows [R, vocab]; row r sees the prompt, the generated ids and prefixes[r]
    (repetition penalty). Returns (tokens, logprobs, top lists); advances the state's rng per row drawn."""
    n = len(prefixes)
    seen = [np.concatenate([state.seen(), np.asarray(p, np.int64)]) if state.params.repetition_penalty != 1.0
            else np.zeros(0, np.int64) for p in prefixes]
    off = np.zeros(n + 1, np.int64)
    off[1:] = np.cumsum([len(x) for x in seen])
    params = np.array([state.params.row()] * n, np.float64).reshape(n, 5)
    rngs = np.repeat(state.rng if rng is None else rng, n)
    k = state.params.logprobs or 0
    n_top = min(k, logits.shape[1])
    toks, lps, top_ids, top_lps = lib.sample_rows(np.ascontiguousarray(logits, np.float32), params,
                                                  np.concatenate(seen) if n else np.zeros(0, np.int64), off, rngs,
                                                  n_top)
    if n:
        (state.rng if rng is None else rng)[0] = rngs[-1]
    tops = [[(int(a), float(b)) for a, b in zip(top_ids[i, :k], top_lps[i, :k])] if k else None for i in range(n)]
    return [int(t) for t in toks], lps, tops


def _draft(model, state, draft_logits, ghost, k):
    """k draft tokens: d_1 from draft_logits, then chained MTP steps. Returns (drafts, q rows [k, vocab])."""
    drafts, qrows = [], []
    logits = draft_logits
    for j in range(k):
        tok, _, _ = _rows(state, logits, [drafts])
        drafts.append(tok[0])
        qrows.append(logits[0])
        if j + 1 < k:
            logits, ghost = model.mtp_forward(np.array([tok[0]], np.int64), ghost[-1:], logits="last")
    return drafts, qrows


def speculative_chunks(model, state, num_draft, stats):
    """Decode one sequence with MTP drafts of ``num_draft`` tokens; yields GenerationChunk per token (the
    same chunks as plain decoding). ``stats``: a SpeculativeStats updated as it goes."""
    import warnings
    model.reset()
    if state.params.max_new_tokens == 0:
        state.finish_reason = "length"
        return
    cap, P = model.max_seq_len, len(state.prompt)
    logits, hid = model.forward(state.prompt, logits="last", hidden=True)
    fed = [int(t) for t in state.prompt]  # the tokens whose main hidden states are `hid`
    pending = None
    while True:
        if pending is None:  # the token after the prompt
            toks, lps, tops = _rows(state, logits, [[]])
            new = [(toks[0], lps[0], tops[0])]
        else:  # verification must fit in the cache; drafts past max_new_tokens are wasted
            k = min(num_draft, cap - model.cache_len - 1, state.params.max_new_tokens - len(state.ids) - 1)
            if k <= 0:  # a plain decode step
                lo = model.forward(np.array([pending], np.int64), logits="last")
                toks, lps, tops = _rows(state, lo, [[]])
                new, hid = [(toks[0], lps[0], tops[0])], None
            else:
                new, hid = _round(model, state, pending, draft_logits, ghost, k, stats)
                fed = [pending] + [t for t, _, _ in new[:-1]]
        for tok, lp, top in new:
            full = P + len(state.ids) >= cap
            chunk = state.append(tok, lp, top, capacity_left=0 if full else None)
            if full and chunk.finish_reason == "length" and len(state.ids) < state.params.max_new_tokens:
                warnings.warn(f"generate: KV cache full ({cap} tokens, max_seq_len); stopped after "
                              f"{len(state.ids)} new tokens", RuntimeWarning, stacklevel=3)
            yield chunk
            if state.finished or state.cancelled:
                return
        pending = new[-1][0]
        if hid is not None:  # catch the MTP layer up: the fed positions, each with the token after it
            nxt = np.asarray(fed[1:] + [pending], np.int64)
            draft_logits, ghost = model.mtp_forward(nxt, hid, logits="last")


def _round(model, state, pending, draft_logits, ghost, k, stats):
    """One draft-verify-accept round; returns ([(token, logprob, top)], main hidden rows of the fed tokens)."""
    L, Lm = model.cache_len, model.mtp_cache_len
    drafts, qrows = _draft(model, state, draft_logits, ghost, k)
    logits, hid = model.forward(np.array([pending] + drafts, np.int64), logits="all", hidden=True,
                                step_attention=True)
    new = accept(state, logits, drafts, qrows)
    a = len(new) - 1
    stats.rounds += 1
    stats.drafted += k
    stats.accepted += a
    model.truncate(L + a + 1)
    model.mtp_truncate(Lm)
    return new, hid[:a + 1]


def accept(state, logits, drafts, qrows):
    """The tokens one verification gives: [(token, logprob, top)] for the accepted drafts, then the one the
    main model adds (step 3 of the module docstring). logits: the verification rows [k + 1, vocab] of
    [pending, d_1..d_k]; qrows: the draft distributions' logits rows (used when sampling). Advances the
    state's rng as plain decoding's sampler would for greedy, by the acceptance rule's draws otherwise."""
    k = len(drafts)
    if state.params.temperature <= 0:
        toks, lps, tops = _rows(state, logits, [drafts[:j] for j in range(k + 1)])
        a = 0
        while a < k and drafts[a] == toks[a]:
            a += 1
        return [(toks[j], lps[j], tops[j]) for j in range(a + 1)]
    return _accept_sampled(state, logits, drafts, qrows)


def _accept_sampled(state, logits, drafts, qrows):
    """The standard speculative-sampling rule over the verification rows (C: sample_probs, spec_accept)."""
    params = np.array(state.params.row(), np.float64)
    k = len(drafts)
    out = []
    for j in range(k):
        seen = _seen(state, drafts[:j])
        p = lib.sample_probs(np.ascontiguousarray(logits[j], np.float32), params, seen)
        q = lib.sample_probs(np.ascontiguousarray(qrows[j], np.float32), params, seen)
        ok, tok = lib.spec_accept(p, q, int(drafts[j]), state.rng)
        out.append(_logprob(state, logits[j], tok))
        if not ok:
            return out
    toks, lps, tops = _rows(state, logits[k:k + 1], [drafts])
    out.append((toks[0], lps[0], tops[0]))
    return out


def _seen(state, prefix):
    if state.params.repetition_penalty == 1.0:
        return np.zeros(0, np.int64)
    return np.concatenate([state.seen(), np.asarray(prefix, np.int64)])


def _logprob(state, row, tok):
    """(token, raw log-probability, top alternatives) of a token chosen by the acceptance rule."""
    k = state.params.logprobs
    if k is None:
        return (int(tok), None, None)
    lp, top_ids, top_lps = lib.token_logprobs(np.ascontiguousarray(row, np.float32), int(tok), int(k))
    return (int(tok), float(lp), [(int(a), float(b)) for a, b in zip(top_ids, top_lps)] if k else None)

"""Speculative decoding with the MTP layer: acceptance rate and speed-up over plain greedy, in one run.

Models (random bf16 weights, a DeepSeek-V3-shaped config scaled down; fast precision):
- "agree" (damp 0): dsv3.testing.mtp.agreeing_mtp: every layer's output projections scaled to 0, so the
  main model is a bigram model (its residual stream carries the token embedding to the head), and an MTP
  layer built to predict that model's next-next token (eh_proj = [I | 0], its block a copy of the last
  layer with zero output projections, the model's final norm and lm_head). Every layer still does its full
  work, so times are those of a real model; acceptance is 1 by construction. The best case.
- "partial" (damp 0.3): the same with output projections scaled by 0.3: the layers move the main model
  away from the bigram and the MTP layer agrees only part of the time.
- "random": the same main model as "partial" with a random MTP layer: acceptance ~1/vocab, the cost of
  drafting and verifying with nothing gained (the slowdown).
For each, plain greedy and speculative greedy (num_draft k) generate the same tokens (checked); the table
gives tokens/s ratios (speculative / plain) as the median over interleaved repetitions in this process.

    PYTHONPATH=$PWD python benchmarks/bench_speculative.py            # ~3 minutes on 2 cores
    PYTHONPATH=$PWD python benchmarks/bench_speculative.py --quick

``--engine``: the batched engine instead (dsv3.engine.Engine, speculative="mtp" vs none) with 1 and 4
sequences decoding together: decode tokens/s of each (all sequences' new tokens over the wall time of
Engine.generate, prefill included) and the ratio, same models, greedy outputs checked equal first.

    PYTHONPATH=$PWD python benchmarks/bench_speculative.py --engine --num-draft 2

``--v32``: the same on a DeepSeek-V3.2 config (lightning indexer, index_topk 32 < prompt + new tokens).
"""
import argparse
import json
import time

import numpy as np

import dsv3
from dsv3.checkpoint import canonical_shapes, mtp_shapes
from dsv3.testing.checkpoints import tiny_config
from dsv3.testing.mtp import agreeing_mtp


def bench_config(layers, vocab, hidden, v32=False):
    """The benchmark's DeepSeek-V3-shaped config; v32: DeepSeek-V3.2 (lightning indexer, 8 heads of 64, index_topk
    32: the 16-token prompt plus the new tokens cross it, so the verification's and the MTP layer's selection run)."""
    extra = dict(model_type="deepseek_v32", architectures=["DeepseekV32ForCausalLM"], index_n_heads=8,
                 index_head_dim=64, index_topk=32) if v32 else {}
    return dsv3.load_config(tiny_config(
        **extra, vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=hidden // 2,
        num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8, q_lora_rank=hidden // 2,
        kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=32,
        n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1,
        max_position_embeddings=4096))


def random_tensors(entries, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, kind in entries:
        n = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("norm.weight"):
            out[name] = 1 + 0.1 * n
        elif name.endswith("e_score_correction_bias"):
            out[name] = 0.01 * n
        elif "embed_tokens" in name:
            out[name] = n
        else:
            out[name] = n / np.float32(np.sqrt(shape[-1]))
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def engine_bench(models, vocab, new, reps, k, json_path):
    """Engine tokens/s with and without speculation at 1 and 4 sequences (interleaved repetitions)."""
    from dsv3.engine import Engine
    prompts = [np.random.default_rng(10 + i).integers(0, vocab, 16) for i in range(4)]
    engines = {(name, spec): Engine(m, max_batch=4, max_seq_len=256, **({"speculative": "mtp", "num_draft": k}
                                                                         if spec else {}))
               for name, m in models.items() for spec in (False, True)}
    for name, m in models.items():  # warm up, check tokens (bf16 weights: bitwise only while a step's rows stay
        ref = [m.generate(p, new) for p in prompts]  # under the linear's GEMM threshold, dsv3_batch.h)
        outs = [[o.token_ids for o in engines[(name, spec)].generate(prompts, max_new_tokens=new)]
                for spec in (False, True)]
        for spec in (False, True):
            if not all(np.array_equal(r, o) for r, o in zip(outs[0] if spec else ref, outs[spec])):
                print(f"note: {name}: {'speculative vs plain engine' if spec else 'engine vs generate'} tokens differ")
    times = {(name, spec, n): [] for name in models for spec in (False, True) for n in (1, 4)}
    acc = {}
    for _ in range(reps):
        for name in models:
            for n in (1, 4):
                for spec in (False, True):
                    e = engines[(name, spec)]
                    before = (e.speculative_stats.drafted, e.speculative_stats.accepted) if spec else None
                    times[(name, spec, n)].append(timed(lambda: e.generate(prompts[:n], max_new_tokens=new))[0])
                    if spec:
                        d = e.speculative_stats.drafted - before[0]
                        acc[(name, n)] = (e.speculative_stats.accepted - before[1]) / d if d else 0.0
    print(f"engine, num_draft {k}: {new} new tokens per sequence (prompts of 16), {reps} interleaved reps, "
          f"{dsv3.cpu_info()['isa']}, {dsv3.cpu_info()['num_threads']} threads")
    print(f"{'MTP layer':10} {'seqs':>4} {'acceptance':>10} {'plain tok/s':>11} {'spec tok/s':>10} {'ratio':>6}")
    rows = []
    for name in models:
        for n in (1, 4):
            tp = n * new / float(np.median(times[(name, False, n)]))
            ts = n * new / float(np.median(times[(name, True, n)]))
            ratio = float(np.median(np.array(times[(name, False, n)]) / np.array(times[(name, True, n)])))
            rows.append({"mtp": name, "seqs": n, "k": k, "acceptance": acc[(name, n)], "plain_tok_s": tp,
                         "spec_tok_s": ts, "speedup": ratio})
            print(f"{name:10} {n:>4} {acc[(name, n)]:>10.2f} {tp:>11.1f} {ts:>10.1f} {ratio:>5.2f}x")
    with open(json_path, "w") as f:
        json.dump({"engine": True, "num_draft": k, "new_tokens": new, "rows": rows}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default="bench_speculative.json")
    ap.add_argument("--engine", action="store_true", help="the batched engine at 1 and 4 sequences instead")
    ap.add_argument("--num-draft", type=int, default=2, help="draft tokens per round with --engine (default 2)")
    ap.add_argument("--v32", action="store_true", help="a DeepSeek-V3.2 config (sparse attention, index_topk 32)")
    a = ap.parse_args()
    layers, vocab, hidden, new = (2, 4000, 512, 24) if a.quick else (4, 16000, 1024, 48)
    cfg = bench_config(layers, vocab, hidden, a.v32)
    main_t = random_tensors(canonical_shapes(cfg), 0)
    models = {}
    for name, damp in (("agree", 0.0), ("partial", 0.3)):
        models[name] = dsv3.Model.from_tensors(cfg, agreeing_mtp(main_t, layers, damp), dtype="bfloat16", mtp=True,
                                               max_seq_len=256)
    rand = {k: v for k, v in agreeing_mtp(main_t, layers, 0.3).items() if not k.startswith(f"model.layers.{layers}.")}
    rand.update(random_tensors([e for e in mtp_shapes(cfg) if "shared_head.head" not in e[0]], 1))
    models["random"] = dsv3.Model.from_tensors(cfg, rand, dtype="bfloat16", mtp=True, max_seq_len=256)
    if a.engine:
        return engine_bench(models, vocab, new, a.reps, a.num_draft, a.json)
    prompt = np.random.default_rng(2).integers(0, vocab, 16)
    ks = (1, 2, 3)
    times = {(m, k): [] for m in models for k in (0,) + ks}
    stats = {}
    for name, m in models.items():  # warm up, check tokens
        ref = m.generate(prompt, new)
        for k in ks:
            assert np.array_equal(ref, m.generate(prompt, new, speculative="mtp", num_draft=k)), (name, k)
    for _ in range(a.reps):  # interleaved: plain and speculative of every model in each repetition
        for name, m in models.items():
            times[(name, 0)].append(timed(lambda: m.generate(prompt, new))[0])
            for k in ks:
                times[(name, k)].append(timed(lambda: m.generate(prompt, new, speculative="mtp", num_draft=k))[0])
                s = m.speculative_stats
                stats[(name, k)] = (s.acceptance_rate, s.tokens_per_round)
    # the cost of the pieces relative to one plain decode step (interleaved in the same way)
    m = models["agree"]
    m.reset()
    m.forward(prompt, logits="none")
    _, hid = m.forward(prompt[:1], hidden=True)
    m.mtp_forward(prompt, np.repeat(hid, len(prompt), 0), logits="none")
    L, Lm = m.cache_len, m.mtp_cache_len

    def piece(fn, undo):
        def run():
            fn()
            undo()
        return run
    pieces = {"decode": piece(lambda: m.forward(prompt[:1], logits="last"), lambda: m.truncate(L)),
              "mtp step": piece(lambda: m.mtp_forward(prompt[:1], hid, logits="last"), lambda: m.mtp_truncate(Lm))}
    for k in ks:
        pieces[f"verify k={k}"] = piece(lambda k=k: m.forward(prompt[:k + 1], logits="all", hidden=True,
                                                             step_attention=True), lambda: m.truncate(L))
    ptimes = {n: [] for n in pieces}
    for _ in range(5 * a.reps):
        for n, fn in pieces.items():
            ptimes[n].append(timed(fn)[0])
    cost = {n: float(np.median(np.array(ptimes[n]) / np.array(ptimes["decode"]))) for n in pieces}
    rows = []
    print(f"config: {'DeepSeek-V3.2 (index_topk 32), ' if a.v32 else ''}{layers} layers, hidden {hidden}, vocab {vocab}, "
          f"32 experts top-4, bf16 fast; prompt 16, "
          f"{new} new tokens, {a.reps} interleaved reps, {dsv3.cpu_info()['isa']}, "
          f"{dsv3.cpu_info()['num_threads']} threads")
    print(f"{'MTP layer':10} {'k':>2} {'acceptance':>10} {'tokens/round':>12} {'speed-up vs plain':>18}")
    for name in models:
        for k in ks:
            ratio = float(np.median(np.array(times[(name, 0)]) / np.array(times[(name, k)])))
            acc, tpr = stats[(name, k)]
            rows.append({"mtp": name, "k": k, "acceptance": acc, "tokens_per_round": tpr, "speedup": ratio})
            print(f"{name:10} {k:>2} {acc:>10.2f} {tpr:>12.2f} {ratio:>17.2f}x")
    print("cost relative to one plain decode step: " + ", ".join(f"{n} {c:.2f}" for n, c in cost.items()))
    with open(a.json, "w") as f:
        json.dump({"v32": a.v32, "layers": layers, "hidden": hidden, "vocab": vocab, "new_tokens": new, "rows": rows,
                   "cost_vs_decode": cost}, f, indent=1)


if __name__ == "__main__":
    main()

"""Attention-only benchmark: MLA decode at depth 0 and D, prompts of S tokens, and the absorbed-vs-expanded
crossover, on a one-layer model with DeepSeek-V3 head dims (16 heads, kv_lora 512, nope 128, rope 64,
v 128, q_lora 64) and a tiny hidden size (256), so the projections are negligible next to the attention.

Every configuration runs in its own process (a tree on PYTHONPATH, DSV3_ISA, DSV3_MLA_FORM), rounds
interleaved, best of the rounds reported. With --threads 1 (default) times are the process CPU time,
which the other jobs on a shared machine disturb far less than wall time.

    PYTHONPATH=$PWD python benchmarks/bench_attention.py                        # this tree, avx512 + avx2
    PYTHONPATH=$PWD python benchmarks/bench_attention.py --baseline /path/to/other/tree --rounds 3
    PYTHONPATH=$PWD python benchmarks/bench_attention.py --crossover            # forms over (past, s)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r'''
import json, os, sys, time, numpy as np, dsv3
from dsv3.checkpoint import open_checkpoint
ck = open_checkpoint(sys.argv[1]); task = json.loads(sys.argv[2])
m = dsv3.Model.from_tensors(ck.config, dict(ck.canonical_tensors()), max_seq_len=task["cap"])
dsv3.set_num_threads(task["threads"])
clk = time.process_time if task["threads"] == 1 else time.perf_counter
x = np.random.default_rng(0).standard_normal((task["cap"], ck.config.hidden_size)).astype(np.float32)
def best(fn, reps, setup=None):
    b = 1e9
    for _ in range(reps):
        if setup: setup()
        t0 = clk(); fn(); b = min(b, clk() - t0)
    return b * 1e3
out = {}
for depth in task["depths"]:
    m.reset()
    if depth:
        m.run_module("attention", 0, x[:depth], start_pos=0, use_cache=True)
    pos = [depth]
    def step():
        m.run_module("attention", 0, x[pos[0]:pos[0] + 1], start_pos=pos[0], use_cache=True); pos[0] += 1
    step()
    out[f"decode@{depth}"] = best(step, task["steps"])
for s in task["prompts"]:
    out[f"prompt{s}"] = best(lambda: m.run_module("attention", 0, x[:s], start_pos=0), task["reps"])
for past, s in task["chunks"]:
    def setup():
        m.reset()
        if past:
            m.run_module("attention", 0, x[:past], start_pos=0, use_cache=True)
    out[f"chunk{past}+{s}"] = best(lambda: m.run_module("attention", 0, x[past:past + s], start_pos=past,
                                                        use_cache=True), task["reps"], setup)
print(json.dumps(out))
'''


def write_model(path):
    from dsv3.testing.checkpoints import tiny_config, write_checkpoint
    cfg = tiny_config(hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=16,
                      num_key_value_heads=16, q_lora_rank=64, kv_lora_rank=512, qk_nope_head_dim=128,
                      qk_rope_head_dim=64, v_head_dim=128, first_k_dense_replace=1, max_position_embeddings=8192)
    write_checkpoint(path, cfg, dtype="bfloat16", shards=1)


def run_child(tree, isa, form, ckpt, task):
    env = dict(os.environ, PYTHONPATH=tree, DSV3_ISA=isa)
    env.pop("DSV3_MLA_FORM", None)
    if form:
        env["DSV3_MLA_FORM"] = form
    r = subprocess.run([sys.executable, "-c", CHILD, ckpt, json.dumps(task)], env=env, capture_output=True,
                       text=True, check=False, cwd=os.path.dirname(ckpt))  # not the cwd's dsv3: tree's
    if r.returncode != 0:
        raise RuntimeError(f"{tree} {isa} {form}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=None, help="another source tree (built in place) to run interleaved")
    p.add_argument("--isas", default="avx512,avx2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--depth", type=int, default=1024)
    p.add_argument("--crossover", action="store_true", help="absorbed vs expanded over (past, s) chunks")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [("this", here)] + ([("baseline", os.path.abspath(a.baseline))] if a.baseline else [])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "ckpt")
        write_model(ckpt)
        if a.crossover:
            chunks = [(0, 2), (0, 8), (0, 32), (1024, 16), (1024, 64), (1024, 128), (1024, 256), (2048, 128),
                      (2048, 256)]
            task = dict(cap=2600, threads=a.threads, depths=[], prompts=[], chunks=chunks, steps=0, reps=2)
            configs = [("this", here, isa, form) for isa in a.isas.split(",") for form in ("absorbed", "expanded")]
        else:
            task = dict(cap=a.depth + 64, threads=a.threads, depths=[0, a.depth], prompts=[128, 512], chunks=[],
                        steps=16, reps=2)
            configs = [(name, tree, isa, None) for isa in a.isas.split(",") for name, tree in trees]
        best = {}
        for _ in range(a.rounds):
            for name, tree, isa, form in configs:
                r = run_child(tree, isa, form, ckpt, task)
                key = (name, isa, form or "auto")
                best[key] = {k: min(v, best.get(key, {}).get(k, v)) for k, v in r.items()}
    cols = list(next(iter(best.values())))
    clock = "CPU" if a.threads == 1 else "wall"
    print(f"attention only, ms ({clock} time, {a.threads} thread(s), best of {a.rounds} rounds)")
    print(f"{'tree':10s} {'isa':7s} {'form':9s} " + " ".join(f"{c:>14s}" for c in cols))
    for (name, isa, form), r in best.items():
        print(f"{name:10s} {isa:7s} {form:9s} " + " ".join(f"{r[c]:14.3f}" for c in cols))
    if a.baseline:
        for isa in a.isas.split(","):
            new, old = best[("this", isa, "auto")], best[("baseline", isa, "auto")]
            print(f"speed-up {isa:7s}" + " ".join(f"{c}: {old[c] / new[c]:.2f}x" for c in cols))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"|".join(k): v for k, v in best.items()}, f, indent=1)


if __name__ == "__main__":
    main()

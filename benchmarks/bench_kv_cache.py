"""Long-context decode with the latent cache in f32, bf16 and fp8 (Model(kv_cache_dtype=...)).

The model of bench_attention.py (DeepSeek-V3 head dims: 16 heads, kv_lora 512, rope 64; hidden 256, so the
projections are negligible) with --layers layers: every layer's cache is filled to each depth, then decode
steps (the attention module of every layer, one token) are timed. With several layers the caches together
outgrow the last-level cache (8 layers x 4096 rows: 75 MB in f32), as a real model's 61 layers do, so a
step streams them from memory. Each (dtype, ISA) runs in its own process, rounds interleaved, best of
the rounds; with --threads 1 (default) times are process CPU time. Reported: ms per step, the ratio to f32
on the same ISA, and the cache bytes one step reads (depth x row bytes of the dtype's layout).

    PYTHONPATH=$PWD python benchmarks/bench_kv_cache.py --depths 2048,4096 --rounds 3
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


DTYPES = ("f32", "bf16", "fp8")

CHILD = r'''
import json, sys, time, numpy as np, dsv3
from dsv3.checkpoint import open_checkpoint
ck = open_checkpoint(sys.argv[1]); task = json.loads(sys.argv[2])
m = dsv3.Model.from_tensors(ck.config, dict(ck.canonical_tensors()), max_seq_len=task["cap"],
                            kv_cache_dtype=task["dtype"])
dsv3.set_num_threads(task["threads"])
clk = time.process_time if task["threads"] == 1 else time.perf_counter
x = np.random.default_rng(0).standard_normal((task["cap"], ck.config.hidden_size)).astype(np.float32)
L = ck.config.num_hidden_layers
out = {"row_bytes": m.cache_bytes_per_token // L}
for depth in task["depths"]:
    m.reset()
    dsv3.set_num_threads(task["fill_threads"])
    for l in range(L):
        for c in range(0, depth, 512):  # fill every layer's cache in prompt chunks
            m.run_module("attention", l, x[c:min(c + 512, depth)], start_pos=c, use_cache=True)
    dsv3.set_num_threads(task["threads"])
    pos, b = depth, 1e9
    for _ in range(task["steps"]):
        t0 = clk()
        for l in range(L):
            m.run_module("attention", l, x[pos:pos + 1], start_pos=pos, use_cache=True)
        b = min(b, clk() - t0); pos += 1
    out[f"decode@{depth}"] = b * 1e3
print(json.dumps(out))
'''


def write_model(path, layers):
    """bench_attention.py's attention shapes with `layers` layers (all dense: the MLP does not run here)."""
    from dsv3.testing.checkpoints import tiny_config, write_checkpoint
    cfg = tiny_config(hidden_size=256, intermediate_size=256, num_hidden_layers=layers, num_attention_heads=16,
                      num_key_value_heads=16, q_lora_rank=64, kv_lora_rank=512, qk_nope_head_dim=128,
                      qk_rope_head_dim=64, v_head_dim=128, first_k_dense_replace=layers,
                      max_position_embeddings=16384)
    write_checkpoint(path, cfg, dtype="bfloat16", shards=1)


def run_child(isa, ckpt, task):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=here, DSV3_ISA=isa)
    r = subprocess.run([sys.executable, "-c", CHILD, ckpt, json.dumps(task)], env=env, capture_output=True,
                       text=True, check=False, cwd=os.path.dirname(ckpt))
    if r.returncode != 0:
        raise RuntimeError(f"{isa} {task['dtype']}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isas", default="avx512,avx2")
    p.add_argument("--depths", default="2048,4096")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--fill-threads", type=int, default=os.cpu_count() or 1, help="threads filling the caches")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    depths = [int(d) for d in a.depths.split(",")]
    isas = a.isas.split(",")
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "ckpt")
        write_model(ckpt, a.layers)
        for _ in range(a.rounds):
            for isa in isas:
                for dt in DTYPES:  # interleaved: every dtype of a round under the same load
                    task = dict(cap=max(depths) + a.steps + 1, threads=a.threads, depths=depths, steps=a.steps,
                                dtype=dt, fill_threads=a.fill_threads)
                    r = run_child(isa, ckpt, task)
                    key = (isa, dt)
                    best[key] = {k: min(v, best.get(key, {}).get(k, v)) for k, v in r.items()}
    clock = "CPU" if a.threads == 1 else "wall"
    print(f"attention decode step of {a.layers} layers at depth D, ms ({clock} time, {a.threads} thread(s), best of "
          f"{a.rounds} rounds); x f32: time relative to the f32 cache on the same ISA; MB read: cache bytes one step "
          f"reads (all layers); B/row: bytes per cached token and layer")
    print(f"{'isa':7s} {'cache':5s} {'B/row':>8s} " + " ".join(f"{'D=' + str(d):>10s} {'x f32':>6s} {'MB read':>8s}"
                                                              for d in depths))
    for (isa, dt), r in best.items():
        ref = best[(isa, "f32")]
        cells = [f"{r[f'decode@{d}']:10.3f} {r[f'decode@{d}'] / ref[f'decode@{d}']:6.2f} "
                 f"{a.layers * d * r['row_bytes'] / 1e6:8.2f}" for d in depths]
        print(f"{isa:7s} {dt:5s} {int(r['row_bytes']):8d} " + " ".join(cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"|".join(k): v for k, v in best.items()}, f, indent=1)


if __name__ == "__main__":
    main()

"""DeepSeek-V3.2 sparse attention: the cost of the lightning indexer and what the selection saves.

One attention layer with DeepSeek-V3 head dims (16 heads, kv_lora 512, nope 128, rope 64, v 128, q_lora 64,
hidden 256) and the real indexer shape (64 heads x 128, index_topk scaled to --topk), three variants of
the same weights, rounds interleaved in one process, best of the rounds, one thread, process CPU time:
  v32      sparse attention (indexer + MLA over the topk selected rows);
  v32-fp8  the same with FP8 index keys (index_keys="fp8");
  dense    the same V3.2 weights with index_topk = max_seq_len (every row kept: the indexer keys are
           still computed, no scores), i.e. what dsv3 ran for V3.2 before (with the indexer's keys);
  v3       the same attention without an indexer (deepseek_v3).
Decode: one token after D cached tokens (run_module("attention", use_cache=True)); prompt: S tokens.

    PYTHONPATH=$PWD python benchmarks/bench_v32.py --topk 256 --depths 256 1024 4096 --rounds 3
"""
import argparse
import json
import tempfile
import time

import numpy as np


def build(path, topk, cap):
    import dsv3
    from dsv3.checkpoint import open_checkpoint
    from dsv3.testing.checkpoints import tiny_config, write_checkpoint
    cfg = tiny_config(hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=16,
                      num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=64, qk_nope_head_dim=128,
                      qk_rope_head_dim=64, v_head_dim=128, first_k_dense_replace=1, model_type="deepseek_v32",
                      index_n_heads=64, index_head_dim=128, index_topk=topk, max_position_embeddings=2 * cap)
    ck = open_checkpoint(write_checkpoint(path, cfg, shards=1, dtype="float32", scale=0.1))
    t = dict(ck.canonical_tensors())
    native = ck.config.to_native()
    v3 = dict(native, index_n_heads=0, index_head_dim=0, index_topk=0)
    plain = {k: v for k, v in t.items() if ".indexer." not in k}
    mk = dsv3.Model.from_tensors
    return {"v32": mk(native, t, max_seq_len=cap, precision="exact"),
            "v32-fp8": mk(native, t, max_seq_len=cap, precision="exact", index_keys="fp8"),
            "dense": mk(dict(native, index_topk=cap), t, max_seq_len=cap, precision="exact"),
            "v3": mk(v3, plain, max_seq_len=cap, precision="exact")}, ck


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topk", type=int, default=256)
    ap.add_argument("--depths", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()
    import dsv3
    dsv3.set_num_threads(1)
    cap = max(a.depths + [a.prompt]) + a.steps + 2
    with tempfile.TemporaryDirectory() as tmp:
        models, ck = build(tmp + "/m", a.topk, cap)
        x = np.random.default_rng(0).standard_normal((cap, 256)).astype(np.float32)
        best = {}
        for _ in range(a.rounds):
            for name, m in models.items():
                for d in a.depths:
                    m.reset()
                    m.run_module("attention", 0, x[:d], start_pos=0, use_cache=True)
                    for j in range(a.steps):
                        t0 = time.process_time()
                        m.run_module("attention", 0, x[d + j:d + j + 1], start_pos=d + j, use_cache=True)
                        dt = time.process_time() - t0
                        key = (name, f"decode@{d}")
                        best[key] = min(best.get(key, 1e9), dt)
                t0 = time.process_time()
                m.run_module("attention", 0, x[:a.prompt], start_pos=0)
                key = (name, f"prompt{a.prompt}")
                best[key] = min(best.get(key, 1e9), time.process_time() - t0)
        ck.close()
    cols = [f"decode@{d}" for d in a.depths] + [f"prompt{a.prompt}"]
    print(f"index_topk {a.topk}; ms (best of {a.rounds}), and ratio to dense")
    print(f"{'variant':10s}" + "".join(f"{c:>22s}" for c in cols))
    for name in models:
        cells = [f"{best[(name, c)] * 1e3:9.2f} ({best[(name, c)] / best[('dense', c)]:5.2f}x)" for c in cols]
        print(f"{name:10s}" + "".join(f"{c:>22s}" for c in cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"topk": a.topk, "ms": {f"{n}|{c}": best[(n, c)] * 1e3 for n, c in best}}, f, indent=1)


if __name__ == "__main__":
    main()

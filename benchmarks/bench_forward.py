"""Forward-pass benchmark: dsv3 prefill and decode against the machine's roofline and transformers, in one run.

A random model in the real checkpoint layout (dsv3.testing.checkpoints.write_checkpoint) with a
DeepSeek-V3-shaped config scaled down to fit here (real head dims 128/64/128, kv_lora 512, q_lora 1536;
hidden 2048, 16 heads, 64 experts top-6 in 8 groups of which 4 kept, 1 shared, moe_intermediate 1408,
first layer dense, vocab 32000). In one process it measures:

- the machine's read bandwidth (dsv3.probe.read_bandwidth, all threads);
- dsv3 prefill tokens/s (S tokens into an empty cache) and decode tokens/s (one token at a time after
  a context of C tokens), for every weight format available in this build;
- decode's weight bytes per token (attention + dense MLP + router + shared + top-k experts + lm_head,
  in the checkpoint's storage format) times tokens/s over the bandwidth = fraction of the decode roofline;
- transformers (eager, DynamicCache) on the same weights in torch float32 and bfloat16, same threads,
  and dsv3's speed-up over each.

    PYTHONPATH=$PWD python benchmarks/bench_forward.py               # full run (~15 min on 2 cores)
    PYTHONPATH=$PWD python benchmarks/bench_forward.py --quick       # ~2 minutes: 2 layers, short sequences
    PYTHONPATH=$PWD python benchmarks/bench_forward.py --threads 1 --formats bf16 --no-torch

Formats other than bf16 need dsv3.quant (skipped with a note when it is not in this build): fp8_block
and nvfp4 are written in their checkpoint formats (DeepSeek FP8 e4m3 + weight_scale_inv; ModelOpt NVFP4
MLP linears), int8 is quantised at load from the bf16 checkpoint with dsv3.quant.quantize.
"""
import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

import dsv3
import dsv3._native
import dsv3.probe as probe
from dsv3.testing.checkpoints import tiny_config, write_checkpoint


def bench_config(layers, vocab):
    """DeepSeek-V3 shapes, scaled down (hidden, experts, layers, vocab); real MLA head dims."""
    return tiny_config(
        vocab_size=vocab, hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
        num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=1536,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64,
        n_shared_experts=1, num_experts_per_tok=6, n_group=8, topk_group=4, first_k_dense_replace=1,
        routed_scaling_factor=2.5, max_position_embeddings=4096,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "beta_fast": 32,
                      "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})


# ---------------------------------------------------------------- bytes read per decoded token

def _nbytes(v):
    return int(v.nbytes)


def decode_weight_bytes(tensors, cfg):
    """Weight bytes one decode step reads in the storage format: everything but the embedding
    table (one row), the router's unchosen experts; k of the routed experts per MoE layer."""
    total = 0
    expert = {}
    for name, v in tensors.items():
        if name == "model.embed_tokens.weight":
            total += _nbytes(v) // cfg.vocab_size
        elif ".mlp.experts." in name:
            layer = int(name.split(".")[2])
            expert[layer] = expert.get(layer, 0) + _nbytes(v)
        else:
            total += _nbytes(v)
    if cfg.tie_word_embeddings:
        total += _nbytes(tensors["model.embed_tokens.weight"])
    for layer, b in expert.items():
        total += b * cfg.num_experts_per_tok // cfg.n_routed_experts
    return total


# ---------------------------------------------------------------- timing

def best_time(fn, reps, setup=None):
    best = float("inf")
    for _ in range(reps):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def token_ids(n, vocab, seed=1):
    return np.random.default_rng(seed).integers(2, vocab, size=n, dtype=np.int64)


def bench_dsv3(model, prefill_lens, contexts, steps, reps, vocab):
    """{'prefill': {S: tok/s}, 'decode': {C: tok/s}} for a dsv3.Model."""
    out = {"prefill": {}, "decode": {}}
    for s in prefill_lens:
        ids = token_ids(s, vocab)
        t = best_time(lambda: model.forward(ids), reps, setup=model.reset)
        out["prefill"][s] = s / t
    for c in contexts:
        ids = token_ids(c + steps * reps, vocab)
        model.reset()
        model.forward(ids[:c])
        times = []
        for r in range(reps):  # each rep decodes `steps` tokens, then the cache is rolled back by a reset + prefill
            t0 = time.perf_counter()
            for i in range(steps):
                model.forward(ids[c + i: c + i + 1])
            times.append((time.perf_counter() - t0) / steps)
            if r + 1 < reps:
                model.reset()
                model.forward(ids[:c])
        out["decode"][c] = 1.0 / min(times)
    model.reset()
    return out


def bench_torch(path, dtype_name, prefill_lens, contexts, steps, reps, vocab):
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.utils import logging as tf_logging
    tf_logging.disable_progress_bar()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()
    out = {"prefill": {}, "decode": {}}
    with torch.inference_mode():
        for s in prefill_lens:
            ids = torch.from_numpy(token_ids(s, vocab))[None]
            t = best_time(lambda: model(ids, cache=DynamicCache(config=model.config), use_cache=True),
                          reps)
            out["prefill"][s] = s / t
        for c in contexts:
            ids = torch.from_numpy(token_ids(c + steps, vocab))[None]
            times = []
            for _ in range(reps):
                cache = DynamicCache(config=model.config)
                model(ids[:, :c], cache=cache, use_cache=True)
                t0 = time.perf_counter()
                for i in range(steps):
                    model(ids[:, c + i: c + i + 1], cache=cache, use_cache=True)
                times.append((time.perf_counter() - t0) / steps)
            out["decode"][c] = 1.0 / min(times)
    del model
    gc.collect()
    return out


# ---------------------------------------------------------------- formats

def quant_api():
    try:
        import dsv3.quant as quant
        return quant if hasattr(quant, "quantize") else None
    except ImportError:
        return None


def load_dsv3(fmt, dirs, cfg, max_seq_len):
    """(model, canonical tensors, how) for one format, or (None, reason, None). fp8_block and nvfp4
    come from their checkpoint formats; if that load fails, the bf16 weights are quantised at load
    with dsv3.quant.quantize (same kernels; noted in the output). int8 is always quantised at load."""
    from dsv3.checkpoint import open_checkpoint
    q = quant_api()
    if fmt != "bf16" and q is None:
        return None, "needs dsv3.quant (not in this build)", None
    how = "checkpoint"
    try:
        if fmt == "int8":
            raise LookupError("no int8 checkpoint format")
        ck = open_checkpoint(dirs[fmt])
        tensors = dict(ck.canonical_tensors())
    except Exception as e:  # noqa: BLE001 -- reported, then the quantise-at-load fallback
        if fmt == "bf16":
            raise
        how = "quantised at load" + ("" if isinstance(e, LookupError) else f" (checkpoint load failed: {e})")
        ck = open_checkpoint(dirs["bf16"])
        pick = (lambda n: ".mlp." in n) if fmt == "nvfp4" else (lambda n: True)
        tensors = {n: (q.quantize(np.asarray(v, np.float32), fmt) if _is_linear(n) and pick(n) else v)
                   for n, v in ck.canonical_tensors()}
    model = dsv3.Model.from_tensors(ck.config, tensors, max_seq_len=max_seq_len)
    model._checkpoint = ck
    return model, tensors, how


def _is_linear(name):
    return name.endswith("_proj.weight") or name.endswith("proj_with_mqa.weight")


# ---------------------------------------------------------------- report

def fmt_rate(x):
    return f"{x:8.2f}" if x < 100 else f"{x:8.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 layers, prefill 64, decode at context 64, 1 rep")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_forward.json"), help="where to write the results")
    p.add_argument("--threads", type=int, default=None, help="threads for dsv3 and torch (default: all)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 4, quick 2)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--formats", default="bf16,fp8_block,int8,nvfp4", help="dsv3 weight formats to run")
    p.add_argument("--prefill", default=None, help="comma list of prefill lengths (default 128,512)")
    p.add_argument("--contexts", default=None, help="comma list of decode contexts (default 128,1024)")
    p.add_argument("--steps", type=int, default=None, help="decode steps per measurement (default 8)")
    p.add_argument("--reps", type=int, default=None, help="repetitions, best taken (default 2)")
    p.add_argument("--no-torch", action="store_true", help="skip transformers")
    p.add_argument("--dir", default=None, help="checkpoint directory to reuse/keep (default: a temp dir)")
    args = p.parse_args(argv)

    q = args.quick
    layers = args.layers or (2 if q else 4)
    prefill = [int(v) for v in (args.prefill or ("64" if q else "128,512")).split(",")]
    contexts = [int(v) for v in (args.contexts or ("64" if q else "128,1024")).split(",")]
    steps = args.steps or (4 if q else 8)
    reps = args.reps or (1 if q else 2)
    formats = [f for f in args.formats.split(",") if f]
    if args.threads:
        dsv3.set_num_threads(args.threads)
    threads = dsv3.get_num_threads()
    max_seq = max(prefill + [c + steps * reps for c in contexts]) + 1

    cdict = bench_config(layers, args.vocab)
    cfg = dsv3.load_config(cdict)
    root = args.dir or tempfile.mkdtemp(prefix="dsv3_bench_forward_")
    dirs = {}
    t0 = time.perf_counter()
    for fmt in ["bf16"] + [f for f in formats if f in ("fp8_block", "nvfp4")]:
        d = os.path.join(root, fmt)
        if not os.path.exists(os.path.join(d, "config.json")):
            write_checkpoint(d, cdict, layout="hf" if fmt == "bf16" else fmt, dtype="bfloat16", shards=2)
        dirs[fmt] = d
        gc.collect()
    print(f"checkpoints in {root} ({time.perf_counter() - t0:.0f} s); config: {layers} layers, hidden 2048, "
          f"16 heads, 64 experts top-6, moe_intermediate 1408, vocab {args.vocab}")

    bw = probe.read_bandwidth(nbytes=1 << 29, repeats=3)["gbps"]
    policy = getattr(dsv3._native, "OMP_WAIT_POLICY_APPLIED", "libgomp default")
    print(f"read bandwidth ({threads} threads): {bw:.1f} GB/s; OpenMP wait: {policy} "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')})")

    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "threads": threads, "read_gbps": bw,
              "omp_wait": policy,
              "config": {"layers": layers, "vocab": args.vocab, "prefill": prefill, "contexts": contexts,
                         "steps": steps, "reps": reps}, "dsv3": {}, "torch": {}}
    for fmt in formats:
        model, tensors, how = load_dsv3(fmt, dirs, cfg, max_seq)
        if model is None:
            print(f"dsv3 {fmt}: skipped ({tensors})")
            continue
        print(f"dsv3 {fmt}: weights {how}")
        wbytes = decode_weight_bytes(tensors, cfg)
        r = bench_dsv3(model, prefill, contexts, steps, reps, args.vocab)
        r["decode_weight_bytes"] = wbytes
        r["weights"] = how
        r["roofline_fraction"] = {c: v * wbytes / (bw * 1e9) for c, v in r["decode"].items()}
        result["dsv3"][fmt] = r
        del model, tensors
        gc.collect()
        print(f"dsv3 {fmt}: done")
    if not args.no_torch:
        import torch
        torch.set_num_threads(threads)
        for dt in ("float32", "bfloat16"):
            result["torch"][dt] = bench_torch(dirs["bf16"], dt, prefill, contexts, steps, reps, args.vocab)
            print(f"transformers {dt}: done")

    # table
    cols = [f"prefill S={s}" for s in prefill] + [f"decode C={c}" for c in contexts]
    print(f"\ntokens/s ({threads} threads; read bandwidth {bw:.1f} GB/s)")
    print(f"{'':22s}" + "".join(f"{c:>16s}" for c in cols) + "   decode MB/token  roofline")
    rows = [(f"dsv3 {f}", r) for f, r in result["dsv3"].items()] + \
        [(f"transformers {d}", r) for d, r in result["torch"].items()]
    for name, r in rows:
        vals = [r["prefill"][s] for s in prefill] + [r["decode"][c] for c in contexts]
        extra = ""
        if "decode_weight_bytes" in r:
            extra = f"   {r['decode_weight_bytes'] / 1e6:10.1f}   " + \
                " ".join(f"{r['roofline_fraction'][c]:.0%}" for c in contexts)
        print(f"{name:22s}" + "".join(f"{fmt_rate(v):>16s}" for v in vals) + extra)
    for dt, tr in result["torch"].items():
        for f, r in result["dsv3"].items():
            ratios = [r["prefill"][s] / tr["prefill"][s] for s in prefill] + \
                [r["decode"][c] / tr["decode"][c] for c in contexts]
            result.setdefault("speedup", {}).setdefault(f, {})[dt] = ratios
            print(f"{'x ' + f + ' / tf ' + dt:22s}" + "".join(f"{v:15.2f}x" for v in ratios))

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"results: {args.json}")
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

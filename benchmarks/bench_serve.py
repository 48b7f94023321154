"""Serving benchmark: batched decode (8 sequences vs 1) and the HTTP server (N concurrent streaming clients
vs one at a time), in one run.

A random bf16 model in the real checkpoint layout with a tokenizer (dsv3.testing.checkpoints.write_checkpoint
with tokenizer=True). Default config: real MLA head dims (kv_lora 512, rope 64, nope 128, v 128), hidden 1024,
8 heads, q_lora 384, 1 dense layer (intermediate 4096) + 3 MoE layers (16 experts top-2, one shared,
moe_intermediate 1024), vocab 16384: ~140M parameters (~280 MB), larger than the caches, so decode reads
weights from memory as a real model does. The decode part also runs on the same shape with every layer
dense (first_k_dense_replace = layers, DeepSeek's first layers' MLP; `--models`): there 8 tokens read the
same weights as one, so it shows the batching gain the engine reaches when the routed experts' spread
does not cap it (on the MoE model 8 tokens read ~2x the weights of one, see the weight-traffic model).

1. decode: the engine (dsv3.engine.Engine, one C forward per step over every running sequence) decoding
   `--decode-steps` tokens per sequence for 1 and for 8 concurrent sequences after a short prompt;
   tokens/s of each, rounds interleaved, best of `--rounds`; the ratio is the batching gain. Also the
   process CPU time per step (best of the rounds), whose ratio moves less when other jobs take the cores
   (with 1 thread it counts only the time the step ran), and a weight-traffic model: the weight bytes one
   step reads for 1 and for 8 tokens (every linear once per step; routed experts: the expected number
   of distinct experts that 8 tokens' top-k choices touch under uniform routing), whose quotient is the
   ratio a purely bandwidth-bound decode would reach; the measured ratios are also printed as a fraction
   of it.
2. server: `dsv3 serve` on 127.0.0.1 (its own process), `--clients` streaming chat clients at once
   vs the same requests one after another, through the `openai` client: total generated tokens/s and
   the mean time to first token.

    PYTHONPATH=$PWD python benchmarks/bench_serve.py            # ~20 s on a quiet 2-core machine, minutes under load
    PYTHONPATH=$PWD python benchmarks/bench_serve.py --quick    # smaller model, fewer tokens
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time

import numpy as np

import dsv3
from dsv3.testing.checkpoints import tiny_config, write_checkpoint


def bench_config(hidden, layers, vocab, index_topk=0, dense=False):
    """The benchmark's model; index_topk > 0: DeepSeek-V3.2 (deepseek_v32, lightning indexer of 16 heads of 128);
    dense: every layer a dense MLP (first_k_dense_replace = layers)."""
    v32 = dict(model_type="deepseek_v32", architectures=["DeepseekV32ForCausalLM"], index_n_heads=16,
               index_head_dim=128, index_topk=index_topk) if index_topk > 0 else {}
    return tiny_config(**v32,
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, moe_intermediate_size=hidden,
        num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8, q_lora_rank=384,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=16,
        n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1,
        first_k_dense_replace=layers if dense else 1,
        max_position_embeddings=4096)


def step_weight_bytes(cfg, tokens, bytes_per_param=2):
    """Weight bytes one decode step over `tokens` sequences reads (bf16 weights; the absorbed attention reads
    W_UK/W_UV from kv_b_proj in its stored format once per step), with the expected count of distinct routed experts under uniform
    routing, E (1 - ((E - k) / E)^n) for n tokens of top-k (independent choices)."""
    h, heads, L = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers
    q = h * cfg.q_lora_rank + cfg.q_lora_rank * heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) \
        if cfg.q_lora_rank else h * heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
    attn = q + h * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + heads * cfg.v_head_dim * h
    uk_uv = heads * (cfg.qk_nope_head_dim + cfg.v_head_dim) * cfg.kv_lora_rank * bytes_per_param
    E, k, dense_layers = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.first_k_dense_replace
    distinct = E * (1 - ((E - k) / E) ** tokens) if tokens > 1 else k
    expert = 3 * h * cfg.moe_intermediate_size
    moe = (distinct + cfg.n_shared_experts) * expert + E * h
    params = L * attn + dense_layers * 3 * h * cfg.intermediate_size + (L - dense_layers) * moe \
        + cfg.vocab_size * h
    return params * bytes_per_param + L * uk_uv, distinct


def decode_rate(engine, n, steps, prompt_len=8, cpu=False):
    """Tokens/s of `steps` decode steps with n sequences running (prefill excluded); with cpu, also the
    process CPU seconds per step."""
    rng = np.random.default_rng(n)
    reqs = [engine.submit(rng.integers(5, engine.vocab_size, prompt_len), max_new_tokens=steps + 2) for _ in range(n)]
    while any(r.next_token is None for r in reqs):
        engine.step()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        engine.step()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    for r in reqs:
        engine.cancel(r)
    return (n * steps / dt, dc / steps) if cpu else n * steps / dt


def bench_decode(model, steps, rounds, batch):
    from dsv3.engine import Engine
    eng = Engine(model, max_batch=batch, max_seq_len=steps + 64)
    decode_rate(eng, 1, 2)  # warm the workspace
    best, cpu = {1: 0.0, batch: 0.0}, {1: float("inf"), batch: float("inf")}
    for _ in range(rounds):
        for n in (1, batch):
            rate, c = decode_rate(eng, n, steps, cpu=True)
            best[n], cpu[n] = max(best[n], rate), min(cpu[n], c)
    b1, _ = step_weight_bytes(model.config, 1)
    bn, distinct = step_weight_bytes(model.config, batch)
    return {"tokens_per_s_1": best[1], f"tokens_per_s_{batch}": best[batch], "ratio": best[batch] / best[1],
            "cpu_ms_per_step_1": cpu[1] * 1e3, f"cpu_ms_per_step_{batch}": cpu[batch] * 1e3,
            "cpu_ratio": batch * cpu[1] / cpu[batch], "weight_mb_per_step_1": b1 / 1e6,
            f"weight_mb_per_step_{batch}": bn / 1e6, f"expected_distinct_experts_{batch}": distinct,
            "bandwidth_bound_ratio": batch * b1 / bn, "ratio_of_bound": best[batch] / best[1] / (batch * b1 / bn),
            "cpu_ratio_of_bound": batch * cpu[1] / cpu[batch] / (batch * b1 / bn), "steps": steps, "rounds": rounds}


def bench_server(path, clients, max_tokens, max_batch):
    """`dsv3 serve` in its own process (clients here do not share its GIL), on a free loopback port."""
    import subprocess

    import httpx
    import openai

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "dsv3", "serve", path, "--port", str(port), "--model-name", "bench",
                             "--max-batch", str(max_batch), "--max-seq-len", str(max_tokens + 64)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):  # up to 2 minutes to load
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError("dsv3 serve exited")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def one(i, out):
        t0 = time.perf_counter()
        first, n = None, 0
        stream = client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": f"Tell me story number {i}."}],
            max_tokens=max_tokens, temperature=0.8, seed=i, stream=True, stream_options={"include_usage": False})
        for k, ev in enumerate(stream):  # event 0 carries the role; then one event per generated token
            if k == 1:
                first = time.perf_counter() - t0
            n += k > 0
        out[i] = (first if first is not None else time.perf_counter() - t0, n)

    one(-1, {})  # warm-up
    res = {}
    for mode in ("sequential", "concurrent"):
        out = {}
        t = time.perf_counter()
        if mode == "sequential":
            for i in range(clients):
                one(i, out)
        else:
            ts = [threading.Thread(target=one, args=(i, out)) for i in range(clients)]
            [x.start() for x in ts]
            [x.join() for x in ts]
        dt = time.perf_counter() - t
        tokens = sum(v[1] for v in out.values())  # fewer than max_tokens when a sequence drew the EOS id
        res[mode] = {"seconds": dt, "tokens": tokens, "tokens_per_s": tokens / dt,
                     "ttft_mean_s": float(np.mean([v[0] for v in out.values()]))}
    res["throughput_ratio"] = res["concurrent"]["tokens_per_s"] / res["sequential"]["tokens_per_s"]
    res["clients"], res["max_tokens"] = clients, max_tokens
    proc.terminate()
    proc.wait(30)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="hidden 512, 2 layers, fewer tokens")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--batch", type=int, default=8, help="concurrent sequences in the decode part (default 8)")
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--no-server", action="store_true")
    p.add_argument("--models", default="moe,dense",
                   help="decode on: moe (the default model; the server part runs on it), dense (the same shape with "
                        "every layer dense); comma list, default both")
    p.add_argument("--index-topk", type=int, default=0,
                   help="> 0: a DeepSeek-V3.2 model whose indexer keeps this many rows per query")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_serve.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.decode_steps, args.rounds, args.max_tokens = 512, 2, 16, 2, 16
    models = [x for x in args.models.split(",") if x]
    if not models or any(x not in ("moe", "dense") for x in models):
        p.error(f"--models: a comma list of moe, dense, got {args.models!r}")
    work = tempfile.mkdtemp(prefix="dsv3-bench-serve-")
    try:
        result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "load_average": os.getloadavg(),
                  "machine": platform.processor() or platform.machine(), "threads": dsv3.get_num_threads(),
                  "isa": dsv3.cpu_info().get("isa") if isinstance(dsv3.cpu_info(), dict) else None,
                  "argv": sys.argv[1:]}
        for kind in models:
            cfg = dsv3.load_config(bench_config(args.hidden, args.layers, args.vocab, args.index_topk,
                                                dense=kind == "dense"))
            path = os.path.join(work, kind)
            write_checkpoint(path, cfg, layout="hf", dtype="bfloat16", shards=1, scale=cfg.hidden_size ** -0.5,
                             tokenizer=True)
            model = dsv3.Model.from_pretrained(path, max_seq_len=args.decode_steps + 64)
            print(f"[{kind}] {model!r}")
            result["model" if kind == "moe" else "model_dense"] = repr(model)
            print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, {dsv3.get_num_threads()} threads")
            d = bench_decode(model, args.decode_steps, args.rounds, args.batch)
            result["decode" if kind == "moe" else "decode_dense"] = d
            print(f"[{kind}] decode: 1 sequence {d['tokens_per_s_1']:.1f} tokens/s, {args.batch} sequences "
                  f"{d[f'tokens_per_s_{args.batch}']:.1f} tokens/s: {d['ratio']:.2f}x")
            print(f"[{kind}] decode CPU time per step: 1 sequence {d['cpu_ms_per_step_1']:.1f} ms, {args.batch} "
                  f"sequences {d[f'cpu_ms_per_step_{args.batch}']:.1f} ms: {d['cpu_ratio']:.2f}x tokens per CPU second")
            experts = (f" (~{d[f'expected_distinct_experts_{args.batch}']:.1f} distinct routed experts per MoE layer)"
                       if kind == "moe" else "")
            print(f"[{kind}] weights read per step: 1 sequence {d['weight_mb_per_step_1']:.0f} MB, {args.batch} "
                  f"sequences {d[f'weight_mb_per_step_{args.batch}']:.0f} MB{experts}: a bandwidth-bound decode "
                  f"gains at most {d['bandwidth_bound_ratio']:.2f}x")
            print(f"[{kind}] batching gain as a fraction of that bound: {d['ratio_of_bound']:.0%} (wall time), "
                  f"{d['cpu_ratio_of_bound']:.0%} (CPU time)")
            del model
            if kind == "moe" and not args.no_server:
                s = bench_server(path, args.clients, args.max_tokens, args.batch)
                result["server"] = s
                for mode in ("sequential", "concurrent"):
                    print(f"server, {args.clients} streaming clients {mode}: {s[mode]['tokens_per_s']:.1f} "
                          f"tokens/s, time to first token {s[mode]['ttft_mean_s'] * 1000:.0f} ms (mean)")
                print(f"server throughput concurrent / sequential: {s['throughput_ratio']:.2f}x")
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

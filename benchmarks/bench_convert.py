"""Conversion throughput and peak memory against a plain read of the same files.

    python benchmarks/bench_convert.py [--formats bf16,fp8_block] [--experts 64] [--threads 2]

Writes (once, cached under benchmarks/results/) a multi-GB random BF16 checkpoint in the hub's
per-expert layout, then, each measurement in a fresh subprocess with the source dropped from the
page cache (posix_fadvise DONTNEED after sync):
  - read:    read every byte of the source files (the machine's own read speed for these files);
  - convert: dsv3.convert(SRC, DST, format=...) (reading, converting, hashing, writing the output;
    "incl. sync" also waits for the kernel to write the output back to disk, os.sync());
and reports input bytes/s, the ratio to the plain read, and peak RSS (VmHWM) against the largest
source tensor; plus the C quantiser's own speed on one expert tensor (bf16 input bytes/s), a
bound for conversions into a quantised format (for bf16: a memory copy). Targets: convert >= 0.5x read speed; peak RSS < 3x largest tensor + 200 MB.
Prints a table and writes benchmarks/results/bench_convert.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, ROOT)

from dsv3.testing.checkpoints import tiny_config  # noqa: E402 (after the sys.path line)

# DeepSeek-V3 architecture, scaled so the routed experts are ~2.4 GB of BF16 (default RoPE)
CONFIG = tiny_config(vocab_size=16384, hidden_size=2048, intermediate_size=8192, moe_intermediate_size=1024,
                     num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=768,
                     kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64,
                     num_experts_per_tok=4, max_position_embeddings=4096, rope_scaling=None)
SHARD_BYTES = 512 << 20

_CHILD_TAIL = r"""
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
print("RESULT " + json.dumps({"seconds": seconds, "bytes": nbytes, "peak_rss": _hwm()}))
"""


def write_source(path, experts):
    """The benchmark's source checkpoint (hf layout, BF16), streamed one tensor at a time."""
    from dsv3.checkpoint import canonical_shapes
    from dsv3.config import load_config
    from dsv3.convert.writer import ShardWriter
    from dsv3.safetensors_io import shard_name, write_index
    cfg_dict = dict(CONFIG, n_routed_experts=experts)
    cfg = load_config(cfg_dict)
    if os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
        return path
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    rng = np.random.default_rng(0)
    entries = canonical_shapes(cfg)
    groups, size = [[]], 0
    for name, shape, _ in entries:
        nbytes = int(np.prod(shape)) * (4 if name.endswith("e_score_correction_bias") else 2)
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for k, group in enumerate(groups, 1):
        fname = shard_name(k, len(groups))
        w = ShardWriter(os.path.join(path, fname), [n for n, _ in group])
        for name, shape in group:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= 1.0 if "norm" in name else 0.02
            a = a if name.endswith("e_score_correction_bias") else a.astype(ml_dtypes.bfloat16)
            w.add(name, a)
            weight_map[name] = fname
            total += a.nbytes
        w.finish()
        print(f"  wrote {fname}", flush=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    write_index(path, weight_map, total)
    return path


def source_files(path):
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))


def largest_tensor(path):
    from dsv3.safetensors_io import read_header
    biggest = 0
    for p in source_files(path):
        biggest = max([biggest] + [e - b for _, _, b, e in read_header(p).tensors.values()])
    return biggest


def drop_cache(files):
    """Evict the files from the page cache (clean pages only, hence the sync first)."""
    os.sync()
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_child(body, env_extra=None):
    code = "import json, os, sys, time\n" + body + _CHILD_TAIL
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"benchmark child failed:\n{r.stderr}")
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    for x in r.stdout.splitlines():
        if x.startswith("SYNC "):
            out["seconds_with_sync"] = float(x.split()[1])
    return out


def measure_read(files):
    drop_cache(files)
    body = f"""
files = {files!r}
buf = bytearray(16 << 20)
nbytes = 0
t = time.perf_counter()
for p in files:
    with open(p, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            nbytes += n
seconds = time.perf_counter() - t
"""
    return run_child(body)


def measure_convert(src, dst, fmt, threads):
    shutil.rmtree(dst, ignore_errors=True)
    drop_cache(source_files(src))
    body = f"""
import dsv3
nbytes = sum(os.path.getsize(os.path.join({src!r}, n)) for n in os.listdir({src!r}) if n.endswith(".safetensors"))
t = time.perf_counter()
dsv3.convert({src!r}, {dst!r}, format={fmt!r}, threads={threads!r}, quiet=True)
seconds = time.perf_counter() - t
os.sync()  # the output's write-back to disk, which dsv3.convert leaves to the kernel
print("SYNC", time.perf_counter() - t)
"""
    out = run_child(body)
    out["out_bytes"] = sum(os.path.getsize(p) for p in source_files(dst))
    shutil.rmtree(dst, ignore_errors=True)
    return out


def measure_quantizer(fmt, threads):
    """The C quantiser alone on one routed-expert tensor (bf16 input bytes/s; a bound for the
    conversion to fmt on this machine)."""
    n, k = CONFIG["moe_intermediate_size"], CONFIG["hidden_size"]
    body = f"""
import numpy as np, ml_dtypes, dsv3
dsv3.set_num_threads({threads!r})
w = np.random.default_rng(0).standard_normal(({n}, {k}), dtype=np.float32).astype(ml_dtypes.bfloat16)
best = 1e9
for _ in range(7):
    t = time.perf_counter()
    if {fmt!r} == "bf16":
        w.copy()
    else:
        dsv3.quant.quantize(np.asarray(w, dtype=np.float32), {fmt!r})
    best = min(best, time.perf_counter() - t)
seconds, nbytes = best, w.nbytes
"""
    return run_child(body)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--formats", default="bf16,fp8_block,int4", help="target formats, comma separated")
    ap.add_argument("--experts", type=int, default=64, help="routed experts per layer (size of the source)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per format (medians reported)")
    args = ap.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    src = os.path.join(RESULTS, f"bench_convert_src_e{args.experts}")
    print(f"source: {src}")
    write_source(src, args.experts)
    files = source_files(src)
    total = sum(os.path.getsize(p) for p in files)
    biggest = largest_tensor(src)
    rss_limit = 3 * biggest + (200 << 20)
    # Interleaved: read, convert A, read, convert B, read, ...; each conversion is compared with the
    # mean of the reads just before and after it (the machine is shared: absolute speeds drift).
    fmts = args.formats.split(",")
    reads, convs = [measure_read(files)], {f: [] for f in fmts}
    for _ in range(args.repeat):
        for fmt in fmts:
            cv = measure_convert(src, os.path.join(RESULTS, "bench_convert_dst"), fmt, args.threads)
            reads.append(measure_read(files))
            read_bps = (reads[-2]["bytes"] / reads[-2]["seconds"] + reads[-1]["bytes"] / reads[-1]["seconds"]) / 2
            cv.update(bytes_per_s=total / cv["seconds"], read_bytes_per_s=read_bps,
                      x_read=total / cv["seconds"] / read_bps,
                      x_read_with_sync=total / cv["seconds_with_sync"] / read_bps)
            convs[fmt].append(cv)
    med = lambda xs: float(np.median(xs))  # noqa: E731
    rows = [{"what": "plain read", "seconds": med([r["seconds"] for r in reads]),
             "bytes_per_s": med([r["bytes"] / r["seconds"] for r in reads]), "x_read": 1.0,
             "peak_rss": max(r["peak_rss"] for r in reads), "runs": len(reads)}]
    for fmt, cs in convs.items():
        q = measure_quantizer(fmt, args.threads)
        rows.append({"what": f"convert -> {fmt}", "seconds": med([c["seconds"] for c in cs]),
                     "quantizer_bytes_per_s": q["bytes"] / q["seconds"],
                     "bytes_per_s": med([c["bytes_per_s"] for c in cs]), "x_read": med([c["x_read"] for c in cs]),
                     "seconds_with_sync": med([c["seconds_with_sync"] for c in cs]),
                     "x_read_with_sync": med([c["x_read_with_sync"] for c in cs]),
                     "peak_rss": max(c["peak_rss"] for c in cs), "out_bytes": cs[0]["out_bytes"], "runs": len(cs)})
    print(f"\nsource {total / 2**30:.2f} GiB in {len(files)} files; largest tensor {biggest / 2**20:.1f} MiB; "
          f"RSS target < {rss_limit / 2**20:.0f} MiB; threads {args.threads}; medians of {args.repeat} interleaved runs")
    print(f"{'measurement':<22}{'seconds':>9}{'input MB/s':>12}{'x read':>8}{'x read incl. sync':>19}"
          f"{'quantiser MB/s':>16}{'peak RSS MiB':>14}{'RSS ok':>8}")
    for r in rows:
        ok = "-" if r["what"] == "plain read" else ("yes" if r["peak_rss"] < rss_limit else "NO")
        sync = f"{r['x_read_with_sync']:.2f}" if "x_read_with_sync" in r else "-"
        qz = f"{r['quantizer_bytes_per_s'] / 1e6:.0f}" if "quantizer_bytes_per_s" in r else "-"
        print(f"{r['what']:<22}{r['seconds']:>9.2f}{r['bytes_per_s'] / 1e6:>12.0f}{r['x_read']:>8.2f}{sync:>19}"
              f"{qz:>16}{r['peak_rss'] / 2**20:>14.0f}{ok:>8}")
    out = {"source_bytes": total, "files": len(files), "largest_tensor_bytes": biggest,
           "rss_limit_bytes": rss_limit, "threads": args.threads, "config": dict(CONFIG, n_routed_experts=args.experts),
           "rows": rows, "command": "python benchmarks/bench_convert.py " + " ".join(argv or sys.argv[1:])}
    with open(os.path.join(RESULTS, "bench_convert.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {os.path.join(RESULTS, 'bench_convert.json')}")


if __name__ == "__main__":
    main()

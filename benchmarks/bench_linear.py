"""Linear-layer benchmark: dsv3 kernels against the machine's roofline and the peers, in one run.

For every weight format (and mode), DeepSeek-V3 projection shape and number of rows M it reports the
time of y = x W^T, the weight bytes per second and their fraction of the read bandwidth measured in
this run, GFLOP/s and their fraction of the relevant compute peak measured in this run, and the
speed-up against torch (dequantise then matmul, as the public references do; torch's own bf16/f32
matmul) and against oneDNN (f32/bf16), both run in the same process on the same weights.

Decode is memory-bound: every timed call reads a different copy of the weight, and there are enough
copies that the working set is >= 8x the last-level cache (so nothing is served from cache).

Times are the best of the timed calls (the machine probes are best-of too, so the ratios compare
like with like on a shared, noisy machine); the median is kept in the JSON (``*_median_s``).

    PYTHONPATH=$PWD python benchmarks/bench_linear.py --quick
    PYTHONPATH=$PWD python benchmarks/bench_linear.py --formats bf16,int8 --shapes q_a_proj --m 1,16
"""
import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import ml_dtypes
import numpy as np

import dsv3
import dsv3.probe as probe
from dsv3._native import lib

L3_BYTES = 32 << 20
WORKING_SET = 8 * L3_BYTES

# name -> (K, N): y[M, N] = x[M, K] W[N, K]^T
SHAPES = {
    "q_a_proj": (7168, 1536),
    "q_b_proj": (1536, 24576),
    "kv_a_proj": (7168, 576),
    "kv_b_proj": (512, 32768),
    "o_proj": (16384, 7168),
    "expert_gate_up": (7168, 2048),
    "expert_down": (2048, 7168),
    # the routed-expert shapes of bench_peers' default model (hidden 2048, moe_intermediate 1024): the
    # decode that the dsv3-vs-llama.cpp table measures reads rows of 1-2 K columns
    "peers_gate_up": (2048, 1024),
    "peers_down": (1024, 2048),
    # bench_serve's default model (hidden 1024, intermediate 4096, moe_intermediate 1024, vocab 16384): the
    # batched decode whose 8-vs-1 ratio it reports runs these with M = 8 rows of x (K = 1024: one pass of
    # all rows per weight row in the small-M kernels)
    "serve_qkv": (1024, 576),
    "serve_mlp_up": (1024, 4096),
    "serve_mlp_down": (4096, 1024),
    "serve_lm_head": (1024, 16384),
}
# variant -> (format, quantize params, ops.linear mode or None, peak kind that bounds it)
VARIANTS = {
    "bf16": ("bf16", {}, None, "bf16_dot"),
    "fp8_block/wo": ("fp8_block", {}, "weight_only", "bf16_dot"),
    "fp8_block/dyn": ("fp8_block", {}, "dynamic", "bf16_dot"),
    "nvfp4": ("nvfp4", {}, "weight_only", "bf16_dot"),
    "int8/wo": ("int8", {}, "weight_only", "bf16_dot"),
    "int8/dyn": ("int8", {}, "dynamic", "int8_dot"),
    "int4": ("int4", {"group": 128}, "weight_only", "bf16_dot"),
    "f32": ("f32", {}, None, "f32_fma"),
    "bf16/own": ("bf16", {}, None, "bf16_dot"),
    "f32/own": ("f32", {}, None, "f32_fma"),
    "int4g32": ("int4", {"group": 32}, "weight_only", "bf16_dot"),
    # fast activation mode (precision="fast"): Q8 activations + integer dots for int8/int4, x as one bf16
    # for bf16/fp8_block/nvfp4 on AVX-512 (the others run with precision="exact")
    "bf16/fast": ("bf16", {}, None, "bf16_dot"),
    "fp8_block/fast": ("fp8_block", {}, "weight_only", "bf16_dot"),
    "nvfp4/fast": ("nvfp4", {}, "weight_only", "bf16_dot"),
    "int8/fast": ("int8", {}, "weight_only", "int8_dot"),
    "int4/fast": ("int4", {"group": 128}, "weight_only", "int8_dot"),
    "int4g32/fast": ("int4", {"group": 32}, "weight_only", "int8_dot"),
    # the fast mode on the packed int4 layout a model loads in the fast precision (dsv3.quant.packed_native,
    # csrc/linear/int4p.h); the /fast variants above read the stored layout
    "int4/fast+packed": ("int4", {"group": 128}, "weight_only", "int8_dot"),
    "int4g32/fast+packed": ("int4", {"group": 32}, "weight_only", "int8_dot"),
}
# The plain bf16/f32 variants measure dsv3.ops.linear with its opt-in oneDNN route
# (DSV3_LINEAR_ONEDNN=1: f32 M >= 8, bf16 M >= 32); the /own variants run with DSV3_LINEAR_ONEDNN=0,
# i.e. dsv3's own kernels, which is also the default of the library.
OWN = ("bf16/own", "f32/own")
M_VALUES = (1, 4, 16, 128, 512)
QUICK = {"shapes": ("q_a_proj", "expert_down"), "m": (1, 16, 128)}


def now():
    return time.perf_counter()


# ---------------------------------------------------------------- what exists in this build

def api():
    """The optional pieces of dsv3 this benchmark uses, or None where they are missing."""
    found = {"quantize": None, "pack": None, "dequantize": None, "linear": None, "onednn": None}
    try:
        import dsv3.quant as quant
        found["quantize"] = getattr(quant, "quantize", None)
        # the checkpoint layout the kernels read (dsv3.quant.pack now builds int4's packed layout, which the
        # "+packed" variants measure through packed_native; older builds: pack was this relabelling)
        found["pack"] = getattr(quant, "stored_layout", None) or getattr(quant, "pack", None)
        found["dequantize"] = getattr(quant, "dequantize", None)
    except ImportError:
        pass
    try:
        import dsv3.ops as ops
        found["linear"] = getattr(ops, "linear", None)
    except ImportError:
        pass
    found["onednn"] = getattr(lib, "onednn_linear", None)
    return found


# ---------------------------------------------------------------- torch peers

def torch_weight(arrays, fmt):
    """Zero-copy torch views of one weight's arrays (the peer reads the same memory)."""
    import torch

    def t(a):
        a = np.ascontiguousarray(a)
        if a.dtype == ml_dtypes.bfloat16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        if a.dtype == ml_dtypes.float8_e4m3fn:
            return torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn)
        return torch.from_numpy(a)

    return {k: t(np.asarray(v)) for k, v in arrays.items() if v is not None}


_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def torch_dequantize(tw, fmt, shape, params, int4_offset=False):
    """Dequantise to bf16 with plain torch ops, as the public references do before F.linear."""
    import torch
    n, k = shape
    if fmt == "f32" or fmt == "bf16":
        return tw["weight"]
    if fmt == "fp8_block":
        s = tw["weight_scale_inv"]
        full = s.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
        return (tw["weight"].to(torch.float32) * full).to(torch.bfloat16)
    if fmt in ("nvfp4", "int4"):
        p = tw["weight"]
        codes = torch.stack((p & 15, p >> 4), dim=-1).reshape(n, k)
        if fmt == "nvfp4":
            vals = torch.tensor(_E2M1, dtype=torch.float32)[codes.long()]
            s = tw["weight_scale"].to(torch.float32).repeat_interleave(16, 1)
            s2 = tw["weight_scale_2"].to(torch.float32).reshape(())
            return (vals * s * s2).to(torch.bfloat16)
        vals = codes.to(torch.float32) - 8.0 if int4_offset else \
            codes.to(torch.int8).where(codes < 8, codes.to(torch.int8) - 16).to(torch.float32)
        s = tw["weight_scale"].to(torch.float32).reshape(n, -1)
        return (vals * s.repeat_interleave(k // s.shape[1], 1)).to(torch.bfloat16)
    if fmt == "int8":
        s = tw["weight_scale"].to(torch.float32).reshape(n, -1)
        return (tw["weight"].to(torch.float32) * s.repeat_interleave(k // s.shape[1], 1)).to(torch.bfloat16)
    raise ValueError(f"no torch dequantisation for format {fmt!r}")


# ---------------------------------------------------------------- timing

def time_calls(call, budget, max_reps):
    """One warm-up call, then repeats (as many as fit in ``budget`` seconds, 1..max_reps);
    returns the best and the median seconds and the number of timed calls. call(i) uses weight copy i."""
    t0 = now()
    call(0)
    warm = now() - t0
    reps = max(1, min(max_reps, int(budget / max(warm, 1e-6))))
    times = []
    for i in range(1, reps + 1):
        t0 = now()
        call(i)
        times.append(now() - t0)
    return min(times), statistics.median(times), reps


class Estimator:
    """Skips a measurement whose estimated duration per call exceeds a cap: the time at a smaller
    M scaled by the ratio of M (an upper bound once compute-bound)."""

    def __init__(self, cap):
        self.cap, self.last = cap, {}

    def too_slow(self, key, m):
        if key not in self.last:
            return None
        m0, t0 = self.last[key]
        est = t0 * max(1.0, m / m0)
        return est if est > self.cap else None

    def record(self, key, m, t):
        self.last[key] = (m, t)


# ---------------------------------------------------------------- one (shape, variant)

def build_weights(w32, variant, found, notes):
    """The dsv3 weight (QuantizedTensor, or a numpy array when dsv3.quant is missing) and the
    seconds its quantisation took; None when the format cannot be built in this build."""
    fmt, params, _, _ = VARIANTS[variant]
    if found["quantize"] is not None:
        t0 = now()
        qt = found["quantize"](w32, fmt, **params)
        return qt, now() - t0
    if fmt == "f32":
        return w32, 0.0
    if fmt == "bf16":
        t0 = now()
        return w32.astype(ml_dtypes.bfloat16), now() - t0
    notes.add(f"{fmt}: skipped, dsv3.quant.quantize is not in this build")
    return None, 0.0


def weight_arrays(w):
    if isinstance(w, np.ndarray):
        return {"weight": w}
    return dict(w.arrays)


def weight_nbytes(w):
    return int(w.nbytes)


def replicate(w, n, notes):
    """n independent copies (distinct memory, same values) of a weight: deepcopy, else rebuilt
    with dsv3.quant.from_checkpoint over copied arrays, else the one weight (noted)."""
    if isinstance(w, np.ndarray):
        return [w] + [w.copy() for _ in range(n - 1)]
    try:
        return [w] + [copy.deepcopy(w) for _ in range(n - 1)]
    except Exception as e:  # noqa: BLE001 (any failure: try the next way)
        first_error = e
    try:
        from dsv3.quant import from_checkpoint
        a = w.arrays

        def rebuild():
            cp = {k: (np.array(v, copy=True) if v is not None else None) for k, v in a.items()}
            scale = cp.get("weight_scale_inv", cp.get("weight_scale"))
            return from_checkpoint(w.fmt, cp["weight"], scale=scale, scale2=cp.get("weight_scale_2"),
                                   input_scale=cp.get("input_scale"), **dict(w.params))
        return [w] + [rebuild() for _ in range(n - 1)]
    except Exception as e:  # noqa: BLE001
        notes.add(f"{w.fmt}: cannot copy weights ({first_error}; {e}): one copy, decode may be cache-served")
        return [w]


def dsv3_caller(found, mode, own=False, precision="exact"):
    import functools
    import inspect
    linear = found["linear"]
    if "precision" in inspect.signature(linear).parameters:  # builds before the fast mode have no precision
        linear = functools.partial(linear, precision=precision)
    elif precision != "exact":
        raise NotImplementedError("this build has no precision='fast'")
    if own:
        def call_own(x, w):
            os.environ["DSV3_LINEAR_ONEDNN"] = "0"
            try:
                return linear(x, w)
            finally:
                os.environ["DSV3_LINEAR_ONEDNN"] = "1"
        return call_own, "own"
    if mode is None:
        return (lambda x, w: linear(x, w)), "ops"
    return (lambda x, w: linear(x, w, mode=mode)), "ops"


def rel_err(y, ref):
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def derive(row, roof):
    """Rates and ratios of one row against the roofline ``roof``."""
    t = row.get("dsv3_s")
    if t:
        row["gbps"] = row["weight_bytes"] / t * 1e-9
        row["frac_bw"] = row["gbps"] / read_ref(roof)
        row["gflops"] = 2.0 * row["M"] * row["N"] * row["K"] / t * 1e-9
        peak = roof["peak_gflops"].get(row["peak_kind"])
        row["frac_peak"] = row["gflops"] / peak if peak else None
        row["x_torch"] = row["torch_s"] / t if row.get("torch_s") else None
        row["x_onednn"] = row["onednn_s"] / t if row.get("onednn_s") else None


def merge_rounds(rows, new):
    """Per (variant, shape, M), the best time of each implementation over the rounds so far."""
    if not rows:
        return new
    by_key = {(r["variant"], r["shape"], r["M"]): r for r in rows}
    for r in new:
        old = by_key.get((r["variant"], r["shape"], r["M"]))
        if old is None:
            rows.append(r)
            continue
        for who in ("dsv3", "torch", "onednn"):
            t = r.get(f"{who}_s")
            if t and (not old.get(f"{who}_s") or t < old[f"{who}_s"]):
                old[f"{who}_s"], old[f"{who}_median_s"] = t, r.get(f"{who}_median_s")
                old.pop(f"{who}_skipped", None)
            old[f"{who}_reps"] = (old.get(f"{who}_reps") or 0) + (r.get(f"{who}_reps") or 0)
    return rows


def read_ref(roof):
    """The read bandwidth %BW divides by: the higher of the all-threads and the one-thread probe
    (idle, all threads read more; on a loaded machine a thread of the all-threads probe is often
    descheduled and one thread reads more, so the higher figure is the conservative reference)."""
    return max(roof["read_gbps"], roof["read_gbps_1t"])


def best_roofline(a, b):
    """Figure by figure, the higher of two roofline measurements (both are best-of, so the higher
    one is the less disturbed by other jobs)."""
    out = dict(a)
    out["read_gbps"] = max(a["read_gbps"], b["read_gbps"])
    out["read_gbps_1t"] = max(a["read_gbps_1t"], b["read_gbps_1t"])
    out["peak_gflops"] = {k: (max(v, b["peak_gflops"][k]) if v is not None else None)
                          for k, v in a["peak_gflops"].items()}
    return out


def bench_variant(shape_name, variant, w32, args, found, roof, est, notes, out_rows, torch_cache):
    import torch
    fmt, params, mode, peak_kind = VARIANTS[variant]
    k, n = SHAPES[shape_name]
    if found["linear"] is None:
        notes.add(f"{variant}: skipped, dsv3.ops.linear is not in this build")
        return
    w0, t_quant = build_weights(w32, variant, found, notes)
    if w0 is None:
        return
    nbytes = weight_nbytes(w0)
    ncopies = max(1, math.ceil(WORKING_SET / nbytes))
    copies = replicate(w0, ncopies, notes)  # the format's arrays (the torch peer reads these)
    ncopies = len(copies)
    run_ws, t_pack = copies, None    # what dsv3 is given (packed when dsv3.quant.pack exists)
    if found["pack"] is not None:
        t0 = now()
        first = found["pack"](copies[0])
        t_pack = now() - t0
        packed = [first] + [found["pack"](c) for c in copies[1:]]
        run_ws = [p if p is not None else c for p, c in zip(packed, copies)]
    elif fmt not in ("f32", "bf16"):
        notes.add("packing cost: dsv3.quant.pack is not in this build")
    if variant.endswith("+packed"):
        packer = getattr(sys.modules.get("dsv3.quant"), "packed_native", None)
        if packer is None:
            notes.add(f"{variant}: skipped, dsv3.quant.packed_native is not in this build")
            return
        t0 = now()
        run_ws = [packer(copies[0])]
        t_pack = now() - t0
        run_ws += [packer(c) for c in copies[1:]]
    precision = "fast" if variant.endswith(("/fast", "+packed")) else "exact"
    try:
        call_dsv3, impl = dsv3_caller(found, mode, variant in OWN, precision)
    except NotImplementedError as e:
        notes.add(f"{variant}: skipped, {e}")
        return

    tws = [torch_weight(weight_arrays(c), fmt) for c in copies]
    int4_offset = False
    onednn_ws = None
    if fmt in ("f32", "bf16") and found["onednn"] is not None:
        onednn_ws = [weight_arrays(c)["weight"] for c in copies]

    rng = np.random.default_rng(1)
    for m in args.m:
        x = rng.standard_normal((m, k), dtype=np.float32)
        xt = torch.from_numpy(x)
        xt_b = xt.to(torch.bfloat16) if fmt != "f32" else xt
        row = {"variant": variant, "format": fmt, "mode": mode or "-", "precision": precision,
               "shape": shape_name, "K": k,
               "N": n, "M": m, "weight_bytes": nbytes, "copies": ncopies, "impl": impl,
               "peak_kind": peak_kind, "quantize_s": t_quant, "pack_s": t_pack}

        def peer_torch(i):
            tw = tws[i % ncopies]
            return torch.nn.functional.linear(xt_b, torch_dequantize(tw, fmt, (n, k), params, int4_offset))

        # correctness of the comparison (cheap, at the first M): same result as the peer?
        if m == args.m[0]:
            try:
                y = np.asarray(call_dsv3(x, run_ws[0]))
            except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
                notes.add(f"{variant}: skipped, dsv3 {impl} cannot run it: {e}")
                return
            errs = {}
            for off in ([False, True] if fmt == "int4" else [False]):
                int4_offset = off
                errs[off] = rel_err(y, peer_torch(0).float().numpy())
            int4_offset = min(errs, key=errs.get)
            row["rel_err_vs_torch"] = errs[int4_offset]
            if errs[int4_offset] > (0.1 if mode == "dynamic" else 0.05):
                notes.add(f"{variant} {shape_name}: dsv3 and torch disagree (rel err {errs[int4_offset]:.3g})")

        torch_key = (shape_name, fmt, m)  # weight-only and dynamic share the torch peer
        if torch_key in torch_cache:
            row["torch_s"], row["torch_median_s"], row["torch_reps"] = torch_cache[torch_key]
        for who, fn in (("dsv3", lambda i: call_dsv3(x, run_ws[i % ncopies])),
                        ("torch", peer_torch),
                        ("onednn", (lambda i: found["onednn"](x, onednn_ws[i % ncopies]))
                         if onednn_ws is not None else None)):
            if fn is None:
                row[f"{who}_s"] = None
                continue
            if who == "torch" and torch_key in torch_cache:
                continue
            key = (who, shape_name, fmt if who == "torch" else variant)
            skip = est.too_slow(key, m)
            if skip is not None:
                row[f"{who}_s"] = None
                row[f"{who}_skipped"] = f"estimated {skip:.1f} s/call > cap {est.cap:g} s"
                notes.add(f"{who} {variant} {shape_name} M={m}: skipped, {row[f'{who}_skipped']} (--cap)")
                continue
            try:
                t, tmed, reps = time_calls(fn, args.budget, args.max_reps)
            except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
                row[f"{who}_s"] = None
                notes.add(f"{who} {variant}: failed: {e}")
                continue
            est.record(key, m, t)
            row[f"{who}_s"], row[f"{who}_median_s"], row[f"{who}_reps"] = t, tmed, reps
            if who == "torch":
                torch_cache[torch_key] = (t, tmed, reps)
        derive(row, roof)
        out_rows.append(row)
        print_row(row)
        sys.stdout.flush()
    del copies, run_ws, tws, onednn_ws


# ---------------------------------------------------------------- table

HEADER = ("variant", "shape", "M", "impl", "ms", "GB/s", "%BW", "GFLOP/s", "%peak", "torch ms", "x torch",
          "oneDNN ms", "x oneDNN", "err", "pack ms")
WIDTHS = (13, 14, 4, 4, 9, 7, 6, 8, 6, 9, 7, 9, 8, 7, 8)


def fmt_num(v, spec):
    return "-" if v is None else format(v, spec)


def print_header():
    print(" ".join(h.rjust(w) for h, w in zip(HEADER, WIDTHS)))


def print_row(r):
    ms = lambda s: None if s is None else s * 1e3  # noqa: E731
    pct = lambda f: None if f is None else 100 * f  # noqa: E731
    t = "skip" if r.get("dsv3_skipped") else fmt_num(ms(r.get("dsv3_s")), ".3f")
    cells = (r["variant"], r["shape"], str(r["M"]), r["impl"], t,
             fmt_num(r.get("gbps"), ".1f"), fmt_num(pct(r.get("frac_bw")), ".0f"), fmt_num(r.get("gflops"), ".1f"),
             fmt_num(pct(r.get("frac_peak")), ".0f"), fmt_num(ms(r.get("torch_s")), ".3f"),
             fmt_num(r.get("x_torch"), ".2f"), fmt_num(ms(r.get("onednn_s")), ".3f"),
             fmt_num(r.get("x_onednn"), ".2f"), fmt_num(r.get("rel_err_vs_torch"), ".0e"),
             fmt_num(ms(r.get("pack_s")), ".1f"))
    print(" ".join(str(c).rjust(w) for c, w in zip(cells, WIDTHS)))


# ---------------------------------------------------------------- main

def parse_list(text, allowed, what):
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        hits = [a for a in allowed if a == item or a.split("/")[0] == item]
        if not hits:
            raise SystemExit(f"bench_linear: unknown {what} {item!r}; choose from {', '.join(allowed)}")
        out += [h for h in hits if h not in out]
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--formats", default=None,
                   help="comma list of variants or formats (a format selects all its modes): "
                        + ", ".join(VARIANTS))
    p.add_argument("--shapes", default=None, help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--m", default=None, help="comma list of row counts M (default 1,4,16,128,512)")
    p.add_argument("--quick", action="store_true",
                   help=f"small subset (~1 minute): shapes {','.join(QUICK['shapes'])}, M {QUICK['m']}")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_linear.json"), help="where to write the results")
    p.add_argument("--threads", type=int, default=None, help="threads for dsv3, torch and oneDNN")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per measurement (default 0.5, quick 0.3)")
    p.add_argument("--max-reps", type=int, default=50, help="most timed calls per measurement")
    p.add_argument("--cap", type=float, default=None,
                   help="skip a measurement estimated to take longer than this per call (s; default 20, quick 3)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole sweep this many times and keep each row's best time (and the best "
                        "roofline, re-measured after every round): spreads measurements over time on a shared machine")
    p.add_argument("--read-bytes", type=int, default=1 << 30,
                   help="buffer of the bandwidth probe (default 1 GiB, as dsv3.probe)")
    a = p.parse_args(argv)
    a.variants = parse_list(a.formats, list(VARIANTS), "format") if a.formats else list(VARIANTS)
    a.shapes = parse_list(a.shapes, list(SHAPES), "shape") if a.shapes else \
        list(QUICK["shapes"] if a.quick else SHAPES)
    try:
        a.m = [int(v) for v in a.m.split(",") if v.strip()] if a.m else list(QUICK["m"] if a.quick else M_VALUES)
    except ValueError:
        raise SystemExit(f"bench_linear: --m must be a comma list of integers, got {a.m!r}")
    if not a.m or min(a.m) < 1:
        raise SystemExit("bench_linear: --m values must be >= 1")
    a.m = sorted(set(a.m))
    a.budget = a.budget if a.budget is not None else (0.3 if a.quick else 0.5)
    a.cap = a.cap if a.cap is not None else (3.0 if a.quick else 20.0)
    if a.rounds < 1:
        raise SystemExit("bench_linear: --rounds must be >= 1")
    if a.threads is not None and a.threads < 1:
        raise SystemExit("bench_linear: --threads must be >= 1")
    return a


def main(argv=None):
    import torch
    args = parse_args(argv)
    os.environ["DSV3_LINEAR_ONEDNN"] = "1"  # measure the opt-in oneDNN route in the plain f32/bf16 rows
    start = now()
    if args.threads:
        dsv3.set_num_threads(args.threads)
    threads = dsv3.get_num_threads()
    torch.set_num_threads(threads)
    found = api()
    info = dsv3.cpu_info()
    print(f"dsv3 bench_linear  {datetime.datetime.now().isoformat(timespec='seconds')}  "
          f"path {info['isa']}  threads {threads}  torch {torch.__version__}")
    print("available: " + ", ".join(f"{k}={'yes' if v is not None else 'no'}" for k, v in found.items()))

    roof = probe.roofline(nbytes=args.read_bytes)
    details = roof.pop("details")
    pk = roof["peak_gflops"]
    print(f"roofline: read {roof['read_gbps']:.1f} GB/s ({threads} threads), {roof['read_gbps_1t']:.1f} GB/s "
          f"(1 thread); peaks f32 FMA {fmt_num(pk['f32_fma'], '.0f')} GFLOP/s, bf16 dot "
          f"{fmt_num(pk['bf16_dot'], '.0f')} GFLOP/s, int8 dot {fmt_num(pk['int8_dot'], '.0f')} GOPS")

    notes, rows = set(), []
    est = Estimator(args.cap)
    roof_start = roof
    details = {"round0": details}
    for rnd in range(args.rounds):
        if args.rounds > 1:
            print(f"round {rnd + 1} of {args.rounds}")
        print_header()
        round_rows, torch_cache = [], {}
        rng = np.random.default_rng(0)
        for shape_name in args.shapes:
            k, n = SHAPES[shape_name]
            w32 = (rng.standard_normal((n, k), dtype=np.float32) * np.float32(0.02))
            for variant in args.variants:
                bench_variant(shape_name, variant, w32, args, found, roof, est, notes, round_rows, torch_cache)
            del w32
        rows = merge_rounds(rows, round_rows)
        roof_end = probe.roofline(nbytes=args.read_bytes)
        details[f"end_of_round{rnd + 1}"] = roof_end.pop("details")
        roof = best_roofline(roof, roof_end)
    print(f"roofline again at the end: read {roof_end['read_gbps']:.1f} GB/s, bf16 dot "
          f"{fmt_num(roof_end['peak_gflops']['bf16_dot'], '.0f')} GFLOP/s; final table against the best of both: "
          f"read {read_ref(roof):.1f} GB/s (%BW reference), f32 FMA {fmt_num(roof['peak_gflops']['f32_fma'], '.0f')}, bf16 dot "
          f"{fmt_num(roof['peak_gflops']['bf16_dot'], '.0f')}, int8 dot {fmt_num(roof['peak_gflops']['int8_dot'], '.0f')}")
    print_header()
    for row in rows:
        derive(row, roof)
        print_row(row)
    elapsed = now() - start
    for note in sorted(notes):
        print("note: " + note)
    print(f"done in {elapsed:.0f} s")

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "seconds": elapsed, "machine": {"cpu": platform.processor() or platform.machine(),
                                              "isa": info["isa"], "threads": threads,
                                              "torch": torch.__version__, "onednn": info.get("onednn")},
              "roofline": roof, "roofline_start": roof_start, "roofline_end": roof_end, "probes": details, "available": {k: v is not None for k, v in found.items()},
              "args": {k: v for k, v in vars(args).items() if k not in ("formats",)},
              "notes": sorted(notes), "rows": rows}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

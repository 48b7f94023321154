"""A/B of the linear kernels between builds of dsv3 (and/or precisions), in one process, interleaved.

Each build's compiled module (dsv3/_dsv3*.so) is loaded side by side; every (build, precision) runs
``linear(x, W)`` (precision "fast" unless --precisions says otherwise) on the same weights (copies totalling
>= 256 MB at M = 1, so that decode streams from memory), alternating run by run, rep by rep; per run the best
call time, its weight bytes per second and the mean are printed, and whether the outputs are bitwise equal
to the first run's. The current build is ``cur`` (the dsv3 on
PYTHONPATH); any other argument is a directory holding a built ``dsv3`` package (e.g. a copy of main's).

    PYTHONPATH=$PWD python benchmarks/ab_linear_builds.py --builds /path/to/main,cur --formats int8,int4g32 --m 1
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/ab_linear_builds.py --builds /work/main,cur --isa avx2
    PYTHONPATH=$PWD python benchmarks/ab_linear_builds.py --builds cur --precisions exact,fast --m 128 --isa avx2
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/ab_linear_builds.py --builds /path/to/main,cur \
        --formats fp8_block --isa avx2 --nan-scanned
"""
import argparse
import copy
import glob
import importlib.util
import os
import time

import numpy as np

from dsv3._native import lib as current
from dsv3.quant import quantize

# name -> (K, N): the routed-expert shapes of bench_peers' default model, and DeepSeek-V3's
SHAPES = {"peers_gate_up": (2048, 1024), "peers_down": (1024, 2048),
          "expert_gate_up": (7168, 2048), "expert_down": (2048, 7168)}
FORMATS = {"bf16": ("bf16", {}), "int8": ("int8", {}), "int4": ("int4", {"group": 128}), "int4g32": ("int4", {"group": 32}),
           "fp8_block": ("fp8_block", {}), "nvfp4": ("nvfp4", {})}


def load(build):
    """The compiled module of a build directory (``cur``: the one dsv3 imported)."""
    if build == "cur":
        return current
    so = glob.glob(os.path.join(build, "dsv3", "_dsv3*.so"))
    if not so:
        raise SystemExit(f"no dsv3/_dsv3*.so under {build}")
    spec = importlib.util.spec_from_file_location("_dsv3", so[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import ml_dtypes  # the dtypes the current module knows (bf16 weights are checked against them)
    mod._register_dtypes(**{n: getattr(ml_dtypes, n) for n in ("bfloat16", "float8_e4m3fn", "float8_e5m2",
                                                                 "float8_e8m0fnu", "float4_e2m1fn")})
    return mod


def u8(d):
    """float8 arrays as uint8 views (each loaded module knows only its own import's float8 dtype)"""
    return {key: v.view(np.uint8) if isinstance(v, np.ndarray) and v.dtype.itemsize == 1 and v.dtype.kind == "V"
            else v for key, v in d.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", required=True, help="comma-separated build directories, or cur")
    ap.add_argument("--formats", default="int8,int4,int4g32")
    ap.add_argument("--shapes", default="peers_gate_up,peers_down,expert_gate_up,expert_down")
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--isa", default=None, help="kernel path (scalar, avx2, avx512); default: the active one")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--precisions", default="fast", help="comma-separated: exact, fast")
    ap.add_argument("--nan-scanned", action="store_true",
                    help="give the weights as the model loader prepares them: \"nan_free\" from one scan of the codes "
                         "(dsv3.quant.nan_scanned_native; builds without the key ignore it)")
    ap.add_argument("--kn", default=None, help="K,N: one shape of these sizes instead of --shapes")
    ap.add_argument("--in-cache", action="store_true",
                    help="compute rate: one weight copy (size it with --kn to stay in the L2), batches of 50 calls "
                         "timed by thread CPU time, the best batch per run (use OMP_NUM_THREADS=1)")
    args = ap.parse_args()
    if args.kn:
        SHAPES["custom"] = tuple(int(v) for v in args.kn.split(","))
        args.shapes = "custom"
    loaded = {b: load(b) for b in args.builds.split(",")}
    runs = [(b, p) for b in loaded for p in args.precisions.split(",")]
    names = [f"{b}/{p}" if len(args.precisions.split(",")) > 1 else b for b, p in runs]
    mods = [(loaded[b], p) for b, p in runs]
    rng = np.random.default_rng(0)
    for f in args.formats.split(","):
        fmt, params = FORMATS[f]
        for sn in args.shapes.split(","):
            k, n = SHAPES[sn]
            w = quantize(rng.standard_normal((n, k)).astype(np.float32) * 0.02, fmt, **params)
            nbytes = n * k * (0.5 if fmt in ("int4", "nvfp4") else 2 if fmt == "bf16" else 1)  # code bytes
            ncopy = 1 if args.in_cache else max(2, int(256e6 / nbytes / max(1, args.m // 8)))  # large M: fewer
            ws = [u8(w.to_native())] + [u8(copy.deepcopy(w).to_native()) for _ in range(ncopy - 1)]
            if args.nan_scanned:
                for d in ws:
                    d["nan_free"] = current.weight_nan_free(d)
            x = rng.standard_normal((args.m, k)).astype(np.float32)
            best, total, ys = [1e9] * len(mods), [0.0] * len(mods), [None] * len(mods)
            for _ in range(args.reps):
                for j, (mod, prec) in enumerate(mods):
                    if args.in_cache:
                        t1 = time.thread_time()
                        for _ in range(50):
                            ys[j] = mod.linear(x, ws[0], None, "weight_only", args.isa, prec)
                        best[j] = min(best[j], (time.thread_time() - t1) / 50)
                        total[j] += (time.thread_time() - t1) / 50
                        continue
                    t1 = time.perf_counter()
                    for i in range(ncopy):
                        t0 = time.perf_counter()
                        ys[j] = mod.linear(x, ws[i], None, "weight_only", args.isa, prec)
                        best[j] = min(best[j], time.perf_counter() - t0)
                    total[j] += time.perf_counter() - t1
            cols = []
            for j, name in enumerate(names):
                same = "" if np.array_equal(ys[j], ys[0]) else f" (max diff {np.abs(ys[j] - ys[0]).max():.1e})"
                cols.append(f"{name}: best {best[j] * 1e3:.3f} ms = {nbytes / best[j] / 1e9:5.1f} GB/s, mean "
                            f"{nbytes * ncopy * args.reps / total[j] / 1e9:5.1f}{same}")
            print(f"{f:8s} {sn:15s} M={args.m}  " + "   ".join(cols), flush=True)


if __name__ == "__main__":
    main()

"""Fast vs exact activation mode of the linear kernels, interleaved on the same weights (ratios from one run).

For each weight format, y = x W^T is timed with precision="exact" and precision="fast" alternately, over copies of
the weight totalling >= 96 MB (decode reads from memory, not cache); best time of the rounds; prints ms, weight
GB/s and fast/exact. The roofline and peers are bench_linear.py's job (its */fast variants).

    PYTHONPATH=$PWD python benchmarks/bench_fast_mode.py --isa avx512 --m 1,4 --threads 1
    DSV3_ISA=avx2 PYTHONPATH=$PWD python benchmarks/bench_fast_mode.py --isa avx2 --m 1,4 --threads 1
"""
import argparse
import time

import numpy as np

import dsv3
from dsv3 import quant
from dsv3._native import lib

FORMATS = [("bf16", {}), ("fp8_block", {}), ("nvfp4", {}), ("int8", {}), ("int4", {"group": 128}),
           ("int4", {"group": 32})]
SHAPES = {"expert_gate_up": (7168, 2048), "expert_down": (2048, 7168)}  # name -> (K, N)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--isa", default=None, help="scalar, avx2 or avx512 (default: the active path)")
    p.add_argument("--m", default="1,4", help="comma list of row counts")
    p.add_argument("--shapes", default="expert_gate_up", help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=12)
    a = p.parse_args()
    if a.threads:
        dsv3.set_num_threads(a.threads)
    print(f"bench_fast_mode: isa {a.isa or dsv3.cpu_info()['isa']}, threads {dsv3.get_num_threads()}")
    rng = np.random.default_rng(0)
    for shape in a.shapes.split(","):
        k, n = SHAPES[shape]
        w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
        for m in [int(v) for v in a.m.split(",")]:
            x = rng.standard_normal((m, k)).astype(np.float32)
            for fmt, params in FORMATS:
                qt = quant.quantize(w, fmt, **params)
                native = qt.to_native()
                copies = [native] + [{key: (v.copy() if isinstance(v, np.ndarray) else v) for key, v in native.items()}
                                     for _ in range(max(2, int(96e6 // qt.nbytes)) - 1)]
                best = {"exact": float("inf"), "fast": float("inf")}
                for _ in range(a.rounds):
                    for precision in best:
                        for c in copies:
                            t0 = time.perf_counter()
                            lib.linear(x, c, None, "weight_only", a.isa, precision)
                            best[precision] = min(best[precision], time.perf_counter() - t0)
                name = fmt + (f" g{params['group']}" if params else "")
                print(f"{shape:14s} M={m:<3d} {name:10s} exact {best['exact'] * 1e3:8.3f} ms "
                      f"({qt.nbytes / best['exact'] / 1e9:5.1f} GB/s)  fast {best['fast'] * 1e3:8.3f} ms "
                      f"({qt.nbytes / best['fast'] / 1e9:5.1f} GB/s)  fast/exact {best['fast'] / best['exact']:.2f}",
                      flush=True)


if __name__ == "__main__":
    main()

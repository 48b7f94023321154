"""A/B of the packed int4 layout (csrc/linear/int4p.h): dsv3 tg64 at 1 thread with int4 packed at load (the
default in the fast precision) vs the stored layout (DSV3_PACK=0), alternated ABBA per rep, each measurement a
fresh bench_peers worker process (the same measurement as bench_peers.py's dsv3 side); the ratio is per rep.

    PYTHONPATH=$PWD python benchmarks/ab_int4_pack.py [reps] [model dir]   (DSV3_ISA=avx2 for the AVX2 path)

The model defaults to bench_peers' cached int4 group-32 conversion (~/.cache/dsv3-bench/models/default-s0).
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_peers as bp  # noqa: E402


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    model = os.path.expanduser(sys.argv[2] if len(sys.argv) > 2 else
                               "~/.cache/dsv3-bench/models/default-s0/dsv3-int4g32")
    base = dict(os.environ, DSV3_NUM_THREADS="1", OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="1")
    res = {"packed": [], "natural": []}
    for r in range(reps):
        for v in (("packed", "natural") if r % 2 == 0 else ("natural", "packed")):
            env = dict(base)
            env.pop("DSV3_PACK", None)
            if v == "natural":
                env["DSV3_PACK"] = "0"
            got, _, _, _ = bp.dsv3_once(model, ["tg64"], 1, env, 0)
            res[v].append(got["tg64"])
        print(f"rep {r}: packed {res['packed'][-1]:.1f} natural {res['natural'][-1]:.1f} tok/s  "
              f"ratio {res['packed'][-1] / res['natural'][-1]:.2f}", flush=True)
    ratios = [p / n for p, n in zip(res["packed"], res["natural"])]
    print(f"ISA {os.environ.get('DSV3_ISA', 'auto')}: tg64 packed median {statistics.median(res['packed']):.1f} "
          f"tok/s, natural {statistics.median(res['natural']):.1f}; packed/natural per rep median "
          f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()

"""Load time and resident memory of an int4 model three ways (issue 10 item 6): the packed layout stored by
`dsv3 convert --pack` (read in place), the checkpoint layout packed at load (the fast-precision default), and the
checkpoint layout unpacked (`pack=False`). Each measurement is a fresh process (`Model.from_pretrained` wall time,
then /proc/self/status RssAnon / RssFile after load and after a few decoded tokens, and the decode tok/s), the
three variants rotated per rep so that ratios come from one run; both checkpoints are read once first (warm page
cache: the figures are the loader's own cost, not the disk's).

    PYTHONPATH=$PWD python benchmarks/bench_pack_load.py [--reps 5] [--plain DIR] [--packed DIR] [--tokens 8]

--plain defaults to bench_peers' cached int4 group-32 conversion (~/.cache/dsv3-bench/models/default-s0/
dsv3-int4g32); --packed to /tmp/dsv3-int4g32-packed, converted from it with --pack when missing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {  # name -> (which checkpoint, pack argument)
    "stored-packed": ("packed", None),
    "packed-at-load": ("plain", None),
    "unpacked": ("plain", False),
}


def _child(path, pack, tokens):
    import numpy as np

    import dsv3

    def rss():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    key, kb = line.split()[:2]
                    out[key[:-1]] = int(kb) / 1024
        return out

    t0 = time.perf_counter()
    m = dsv3.Model.from_pretrained(path, pack=pack, progress=False)
    load = time.perf_counter() - t0
    after_load = rss()
    m.forward(np.array([1, 2, 3, 4], dtype=np.int64), logits="last")
    t1 = time.perf_counter()
    for t in range(tokens):
        m.forward(np.array([5 + t], dtype=np.int64), logits="last")
    tok_s = tokens / (time.perf_counter() - t1)
    print(json.dumps({"load_s": load, "rss_load": after_load, "rss_decode": rss(), "tok_s": tok_s,
                      "packing": m.packing}))


def _measure(path, pack, tokens, env):
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_pack_load as b; b._child({path!r}, {pack!r}, {tokens})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _warm(path):
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            with open(os.path.join(path, name), "rb") as f:
                while f.read(64 << 20):
                    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--plain", default="~/.cache/dsv3-bench/models/default-s0/dsv3-int4g32")
    ap.add_argument("--packed", default="/tmp/dsv3-int4g32-packed")
    args = ap.parse_args()
    paths = {"plain": os.path.expanduser(args.plain), "packed": os.path.expanduser(args.packed)}
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DSV3_PACK", None)
    if not os.path.isfile(os.path.join(paths["packed"], "config.json")):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dsv3", "convert", paths["plain"], paths["packed"], "--format", "int4",
                        "--group", "32", "--pack", "--quiet"], check=True, env=env)
        print(f"converted {paths['plain']} -> {paths['packed']} with --pack in {time.perf_counter() - t0:.1f} s")
    for p in paths.values():
        _warm(p)
    names = list(VARIANTS)
    res = {n: [] for n in names}
    for r in range(args.reps):
        order = names[r % len(names):] + names[:r % len(names)]  # rotated: every variant in every position
        for n in order:
            which, pack = VARIANTS[n]
            got = _measure(paths[which], pack, args.tokens, env)
            res[n].append(got)
            print(f"rep {r} {n:15s} load {got['load_s']:.2f} s  RssAnon {got['rss_load']['RssAnon']:.0f} MiB  "
                  f"RssFile {got['rss_load']['RssFile']:.0f} MiB  decode {got['tok_s']:.1f} tok/s", flush=True)
    ref = res["packed-at-load"]
    print("\n| variant | load s (median) | load / packed-at-load per rep (median) | RssAnon / RssFile after load, "
          "MiB | after decode | decode tok/s |")
    print("|---|---|---|---|---|---|")
    for n in names:
        med = lambda key, sub=None: statistics.median(x[key][sub] if sub else x[key] for x in res[n])  # noqa: E731
        ratio = statistics.median(a["load_s"] / b["load_s"] for a, b in zip(res[n], ref))
        print(f"| {n} | {med('load_s'):.2f} | {ratio:.2f} | {med('rss_load', 'RssAnon'):.0f} / "
              f"{med('rss_load', 'RssFile'):.0f} | {med('rss_decode', 'RssAnon'):.0f} / "
              f"{med('rss_decode', 'RssFile'):.0f} | {med('tok_s'):.1f} |")


if __name__ == "__main__":
    main()

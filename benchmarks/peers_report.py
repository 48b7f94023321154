"""bench_peers.py's bookkeeping: test names, format pairs, per-rep samples -> spread and ratios -> markdown.

Pure Python (no dsv3, no llama.cpp), so tests/test_bench_peers.py can check it quickly.
"""
import re
import statistics

# dsv3 format -> the llama.cpp type it is compared with (issue 10)
PAIRS = {"bf16": "BF16", "int8": "Q8_0", "fp8_block": "Q8_0", "int4": "Q4_0", "nvfp4": "NVFP4"}
DEFAULT_TESTS = ("pp128", "pp512", "tg64", "tg64@d1024")
WAIT_ENV = {  # a wait policy name -> the libgomp environment both engines get (all others removed)
    "passive": {"OMP_WAIT_POLICY": "passive"},
    "active": {"OMP_WAIT_POLICY": "active"},
}
_TEST = re.compile(r"^(pp|tg)(\d+)(?:@d(\d+))?$")


def parse_test(name):
    """'pp512' -> ('pp', 512, 0); 'tg64@d1024' -> ('tg', 64, 1024) (llama-bench's names)."""
    m = _TEST.match(name)
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"test must look like pp512, tg64 or tg64@d1024, got {name!r}")
    kind, n, depth = m.group(1), int(m.group(2)), int(m.group(3) or 0)
    if kind == "pp" and depth:
        raise ValueError(f"{name!r}: only tg tests take a depth here")
    return kind, n, depth


def test_name(kind, n, depth=0):
    """Inverse of parse_test."""
    return f"{kind}{n}" + (f"@d{depth}" if depth else "")


def wait_env(name):
    """libgomp environment of a wait policy: passive, active, or spinN (GOMP_SPINCOUNT=N; dsv3's own default
    is spin1000)."""
    if name in WAIT_ENV:
        return dict(WAIT_ENV[name])
    m = re.match(r"^spin(\d+)$", name)
    if m:
        return {"GOMP_SPINCOUNT": m.group(1)}
    raise ValueError(f"wait policy must be passive, active or spinN, got {name!r}")


def spread(values):
    """min / median / max of a non-empty list of numbers."""
    if not values:
        raise ValueError("no samples")
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def summarize(samples):
    """samples: list of dicts {engine ('dsv3'|'llama'), fmt (the engine's format name), threads, wait, test,
    rep, tps}. Returns one row per (dsv3 format, threads, wait, test) whose pair has samples on both sides:
    dsv3 and llama.cpp tokens/s spread, and the ratio dsv3/llama.cpp: per rep (the two runs of one rep ran
    next to each other) -> spread, plus the ratio of medians."""
    by = {}
    for s in samples:
        by.setdefault((s["engine"], s["fmt"], s["threads"], s["wait"], s["test"]), {})[s["rep"]] = s["tps"]
    rows = []
    for (eng, fmt, threads, wait, test), d in sorted(by.items(), key=lambda kv: _row_key(kv[0])):
        if eng != "dsv3" or fmt not in PAIRS:
            continue
        peer = by.get(("llama", PAIRS[fmt], threads, wait, test))
        if not peer:
            continue
        reps = sorted(set(d) & set(peer))
        ratios = [d[r] / peer[r] for r in reps if peer[r] > 0]
        ds, ls = spread(list(d.values())), spread(list(peer.values()))
        rows.append({"fmt": fmt, "peer": PAIRS[fmt], "threads": threads, "wait": wait, "test": test,
                     "dsv3": ds, "llama": ls, "ratio": spread(ratios) if ratios else None,
                     "ratio_of_medians": ds["median"] / ls["median"] if ls["median"] > 0 else None})
    return rows


def _row_key(k):
    eng, fmt, threads, wait, test = k
    kind, n, depth = parse_test(test)
    fmts = list(PAIRS)
    return (wait, threads, fmts.index(fmt) if fmt in fmts else len(fmts), fmt, kind != "pp", depth, n, eng)


def _f(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(rows):
    """The markdown table of summarize()'s rows: tokens/s as median (min-max), ratio as median (min-max)."""
    out = ["| wait | thr | dsv3 ~ llama.cpp | test | dsv3 tok/s | llama.cpp tok/s | dsv3/llama.cpp |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        d, l, q = r["dsv3"], r["llama"], r["ratio"]
        rq = "-" if q is None else f"**{q['median']:.2f}x** ({q['min']:.2f}-{q['max']:.2f})"
        out.append(f"| {r['wait']} | {r['threads']} | {r['fmt']} ~ {r['peer']} | {r['test']} | "
                   f"{_f(d['median'])} ({_f(d['min'])}-{_f(d['max'])}) | "
                   f"{_f(l['median'])} ({_f(l['min'])}-{_f(l['max'])}) | {rq} |")
    return "\n".join(out)


def parity_markdown(check):
    """Markdown lines for the logits check (see bench_peers.check_logits)."""
    out = [f"logits check ({check['size']} model, {check['n_prompt']} prompt tokens, {check['n_gen']} greedy tokens; "
           f"reference transformers fp32 on the same bf16 checkpoint; logits std {check['ref_std']:.3g}):", "",
           "| engine | max abs err | max abs err / logits std | top-1 agreement | greedy tokens equal |",
           "|---|---|---|---|---|"]
    for eng, c in check["engines"].items():
        out.append(f"| {eng} | {c['max_abs_err']:.3g} | {c['max_abs_err'] / check['ref_std']:.3g} | "
                   f"{c['top1_agree']}/{check['n_prompt']} | {c['greedy_equal']}/{check['n_gen']} |")
    return "\n".join(out)

"""Pictures for BENCHMARKS.md, drawn from the benchmarks' JSON (never by hand).

    python benchmarks/plot_benchmarks.py [--linear benchmarks/results/bench_linear.json]
                                         [--peers benchmarks/results/bench_peers.json]
                                         [--out benchmarks/figures]

- roofline.png (from bench_linear.py): every measured (variant, shape, M) as a point at its arithmetic
  intensity (flop per weight byte read, 2*M*N*K / weight bytes) and its GFLOP/s, under the roofline of
  the same run: min(read bandwidth * intensity, peak) for the f32 FMA, bf16 dot and int8 dot peaks.
- decode_bw.png (from bench_linear.py): the M = 1 rows as the fraction of the run's read bandwidth they
  stream, per variant and shape, with the 85 % target line.
- peers.png (from bench_peers.py, when its JSON exists): dsv3 / llama.cpp throughput ratio (median over reps)
  per test and format pair, 1.0 marked.
Needs matplotlib (pip install 'dsv3[plot]').
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_bw(roof):
    """The read bandwidth bench_linear divides by (the higher of its 2-thread and 1-thread probes), GB/s."""
    return max(v for v in (roof.get("read_gbps"), roof.get("read_gbps_1thread")) if v)


def plot_roofline(data, path):
    plt = _plt()
    roof, rows = data["roofline"], [r for r in data["rows"] if r.get("gflops")]
    if not rows:
        raise ValueError("bench_linear JSON has no measured rows")
    bw = read_bw(roof)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ai = [2.0 * r["M"] * r["N"] * r["K"] / r["weight_bytes"] for r in rows]
    lo, hi = min(ai) / 2, max(ai) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for kind, style in (("f32_fma", ":"), ("bf16_dot", "-"), ("int8_dot", "--")):
        peak = roof["peak_gflops"].get(kind)
        if peak:
            ax.loglog(xs, [min(bw * x, peak) for x in xs], style, color="gray", lw=1,
                      label=f"roof: {bw:.0f} GB/s, {kind} {peak:.0f} GFLOP/s")
    variants = sorted({r["variant"] for r in rows})
    cmap = plt.get_cmap("tab10")
    for i, v in enumerate(variants):
        pts = [(a, r["gflops"]) for a, r in zip(ai, rows) if r["variant"] == v]
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o", ms=4, color=cmap(i % 10), label=v)
    ax.set_xlabel("arithmetic intensity (flop per weight byte)")
    ax.set_ylabel("GFLOP/s")
    m = data.get("machine", {})
    ax.set_title(f"dsv3 linear layers vs the roofline ({m.get('isa', '?')}, {m.get('threads', '?')} threads, "
                 f"{data.get('date', '')[:10]})", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(labels, values, colors, ylabel, title, line, path):
    """A bar chart with rotated labels and one horizontal reference line (value, style, legend or None)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(values)), 4.2))
    ax.bar(range(len(values)), values, color=colors)
    ax.axhline(line[0], **line[1])
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=70, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if line[1].get("label"):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_decode_bw(data, path):
    rows = [r for r in data["rows"] if r["M"] == 1 and r.get("frac_bw")]
    if not rows:
        raise ValueError("bench_linear JSON has no M = 1 rows")
    return _bars([f"{r['variant']}\n{r['shape']}" for r in rows], [100 * r["frac_bw"] for r in rows], "tab:blue",
                 "% of read bandwidth (M = 1)",
                 f"decode: weight bytes streamed per second / {read_bw(data['roofline']):.1f} GB/s",
                 (85, {"color": "tab:red", "ls": "--", "lw": 1, "label": "85 % target"}), path)


def plot_peers(data, path):
    """bench_peers.py JSON: rows with fmt, peer, test, threads and ratio {min, median, max} (dsv3 / llama.cpp)."""
    rows = [r for r in data.get("rows", []) if isinstance(r.get("ratio"), dict) and r["ratio"].get("median")]
    if not rows:
        raise ValueError("bench_peers JSON has no rows with a ratio")
    labels = [f"{r['fmt']}~{r['peer']} {r['test']} t{r['threads']}" for r in rows]
    med = [r["ratio"]["median"] for r in rows]
    return _bars(labels, med, ["tab:green" if v >= 1 else "tab:orange" for v in med],
                 "dsv3 / llama.cpp tokens/s (median over reps)",
                 "dsv3 vs llama.cpp on the same model (> 1: dsv3 faster)", (1.0, {"color": "black", "lw": 1}), path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--linear", default=os.path.join(RESULTS, "bench_linear.json"))
    p.add_argument("--peers", default=os.path.join(RESULTS, "bench_peers.json"))
    p.add_argument("--out", default=os.path.join(HERE, "figures"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    made = []
    if os.path.exists(args.linear):
        with open(args.linear) as f:
            lin = json.load(f)
        made.append(plot_roofline(lin, os.path.join(args.out, "roofline.png")))
        made.append(plot_decode_bw(lin, os.path.join(args.out, "decode_bw.png")))
    if os.path.exists(args.peers):
        with open(args.peers) as f:
            made.append(plot_peers(json.load(f), os.path.join(args.out, "peers.png")))
    if not made:
        print(f"no benchmark JSON found ({args.linear}, {args.peers}): run the benchmarks first", file=sys.stderr)
        return 1
    for m in made:
        print(m)
    return 0


if __name__ == "__main__":
    sys.exit(main())

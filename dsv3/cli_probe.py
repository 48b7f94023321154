"""`dsv3 probe`: measure this machine's read bandwidth and compute peaks (the roofline)."""
import json


def add_arguments(parser):
    parser.add_argument("--bytes", type=int, default=1 << 30, help="bandwidth buffer in bytes (default 1 GiB)")
    parser.add_argument("--iters", type=int, default=1 << 24, help="iterations of the peak loops")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all dsv3 threads)")
    parser.add_argument("--isa", default=None, help="kernel path: scalar, avx2 or avx512 (default: active)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args):
    from .probe import roofline
    r = roofline(nbytes=args.bytes, iters=args.iters, threads=args.threads, isa=args.isa)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    pk = r["peak_gflops"]
    show = lambda v, unit: "n/a on this path" if v is None else f"{v:.1f} {unit}"  # noqa: E731
    print(f"kernel path      : {r['isa']}, {r['threads']} threads")
    print(f"read bandwidth   : {r['read_gbps']:.1f} GB/s ({r['threads']} threads), "
          f"{r['read_gbps_1t']:.1f} GB/s (1 thread)")
    print(f"f32 FMA peak     : {show(pk['f32_fma'], 'GFLOP/s')}")
    print(f"bf16 dot peak    : {show(pk['bf16_dot'], 'GFLOP/s')}")
    print(f"int8 dot peak    : {show(pk['int8_dot'], 'GOPS')}")
    return 0

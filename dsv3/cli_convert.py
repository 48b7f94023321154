"""`dsv3 convert SRC DST --format FMT ...`: streaming, resumable checkpoint conversion."""
import logging
import re

from .convert.plan import FORMATS

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}


def parse_size(text):
    """'4GB', '512M', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise ValueError(f"invalid size {text!r} (e.g. 4GB, 512MB)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def add_arguments(p):
    p.add_argument("src", metavar="SRC", help="source checkpoint directory (HF, HF fused, FP8, NVFP4 or dsv3)")
    p.add_argument("dst", metavar="DST", help="output directory (re-running resumes an interrupted conversion)")
    p.add_argument("--format", required=True, choices=FORMATS, help="format of linear weights")
    p.add_argument("--experts", choices=FORMATS, help="format of routed experts (default: --format)")
    p.add_argument("--attention", choices=FORMATS, help="format of attention linears (default: --format)")
    p.add_argument("--lm-head", choices=FORMATS, help="quantise lm_head too (default: kept as stored)")
    p.add_argument("--group", type=int, choices=(32, 128), default=128,
                   help="K group of int4 scales (default 128; 32 = llama.cpp Q4_0 granularity)")
    p.add_argument("--pack", action="store_true",
                   help="store int4 weights in the packed kernel layout (16 rows interleaved, f32 scales; all but "
                        "kv_b_proj): a fast-precision load then reads them in place, no repacking and no owned "
                        "copy; an exact-precision load unpacks them (an owned copy of their stored size)")
    p.add_argument("--keep-mtp", action="store_true", help="copy the MTP layer verbatim")
    p.add_argument("--ep", type=int, default=1, metavar="N", help="write routed experts as N expert-parallel parts")
    p.add_argument("--threads", type=int, metavar="N", help="threads of the C quantisers")
    p.add_argument("--shard-size", default="4GB", help="target shard size (default 4GB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON (destination, tensors, shards, already_complete); implies --quiet")


def run(args):
    from .convert import convert
    quiet = args.quiet or args.json
    if not quiet:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    m = convert(args.src, args.dst, format=args.format, experts=args.experts, attention=args.attention,
                lm_head=args.lm_head, keep_mtp=args.keep_mtp, ep=args.ep, threads=args.threads,
                quiet=quiet, shard_bytes=parse_size(args.shard_size), group=args.group,
                pack=args.pack)
    done = bool(m.get("already_complete"))
    if args.json:
        import json
        print(json.dumps({"destination": args.dst, "tensors": len(m["tensors"]), "shards": len(m["shards"]),
                          "already_complete": done}))
    elif done:
        print(f"{args.dst}: already complete (nothing to do)")
    elif not quiet:
        print(f"wrote {len(m['tensors'])} tensors in {len(m['shards'])} shards to {args.dst}")
    return 0

"""`dsv3 parity`: module-by-module comparison of dsv3 with transformers (see dsv3.parity)."""
import json
import sys


def add_arguments(parser):
    from .parity_report import TOLERANCE_RULE
    parser.description = ("Compare dsv3 with transformers' DeepSeek implementation (float32, eager) module by "
                          "module on seeded random weights. Tolerances: " + TOLERANCE_RULE + ".")
    parser.add_argument("--config", help="config.json path or model directory (default: the embedded tiny "
                                         "DeepSeek-V3-shaped config); used as given, mind its size")
    parser.add_argument("--modules", nargs="+", metavar="MODULE",
                        help="checks to run: rmsnorm rotary indexer (V3.2) attention attention_prefill attention_decode router "
                             "experts moe mlp decoder_layer logits top1 generate (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    parser.add_argument("--layer", type=int, default=None,
                        help="decoder layer to probe (default: the first MoE layer)")
    parser.add_argument("--layers", default=None, metavar="all|L[,L...]",
                        help="also check these decoder layers (or 'all') and print the per-layer drift table")
    parser.add_argument("--attention", choices=("absorbed", "naive"), default="absorbed",
                        help="dsv3 attention path (default absorbed)")
    parser.add_argument("--seq-len", type=int, default=8, help="tokens in the module inputs (default 8)")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens to generate (default 16)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def print_report(report, as_json):
    """Print a ParityReport as a table or JSON; returns the exit code (0 iff everything passed)."""
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return 0 if report.passed else 1


def run(args):
    try:
        from . import parity
        report = parity.run(config=args.config, modules=args.modules, seed=args.seed, layer=args.layer,
                            attention=args.attention, seq_len=args.seq_len, new_tokens=args.new_tokens,
                            layers=args.layers)
    except ImportError as e:
        print(f"dsv3 parity: {e}", file=sys.stderr)
        return 1
    return print_report(report, args.json)

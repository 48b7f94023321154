"""`dsv3 demo`: the main job. Writes a tiny DeepSeek-V3 checkpoint (with a tokenizer), loads it with dsv3,
turns a text prompt into text (tokenise, generate, stream back), then prints the parity table against
transformers for the same weights (non-zero exit on failure)."""
import sys


def add_arguments(parser):
    parser.add_argument("--layout", choices=("fp8_block", "hf", "hf_fused"), default="fp8_block",
                        help="on-disk layout of the checkpoint written (default fp8_block: DeepSeek's FP8 hub "
                             "layout)")
    parser.add_argument("--keep", metavar="DIR", help="write the checkpoint into DIR and keep it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens to generate from the text prompt (default 8)")
    parser.add_argument("--json", action="store_true", help="print the parity report as JSON at the end")


def run(args):
    from . import demo
    from .cli_parity import print_report
    try:
        report = demo.run(layout=args.layout, keep=args.keep, seed=args.seed, new_tokens=args.new_tokens,
                          log=(lambda *a: print(*a, file=sys.stderr)) if args.json else print)
    except ImportError as e:
        print(f"dsv3 demo: {e}", file=sys.stderr)
        return 1
    return print_report(report, args.json)

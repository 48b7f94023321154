"""The ``--speculative`` / ``--num-draft`` options shared by ``dsv3 chat`` and ``dsv3 serve``: their arguments,
the check of ``--num-draft`` and the message for a checkpoint without an MTP layer."""
import sys


def add_arguments(parser, greedy):
    """Adds --speculative mtp and --num-draft; ``greedy`` ends the help ("replies are": "greedy replies are unchanged")."""
    parser.add_argument("--speculative", choices=("mtp",),
                        help="speculative decoding: 'mtp' drafts with the checkpoint's MTP layer (a checkpoint "
                             f"converted with --keep-mtp, or the hub layout); greedy {greedy} unchanged")
    parser.add_argument("--num-draft", type=int, default=2, help="draft tokens per step with --speculative (default 2)")


def bad_num_draft(args, command):
    """Prints why and returns 2 when --speculative is given with --num-draft < 1, else None."""
    if args.speculative and args.num_draft < 1:
        print(f"dsv3 {command}: --num-draft must be >= 1, got {args.num_draft}", file=sys.stderr)
        return 2
    return None


def no_mtp_layer(args, command, error):
    """Prints the advice and returns 1 when ``error`` (a CheckpointError) says --speculative mtp found no MTP
    layer, else None (the caller re-raises)."""
    if args.speculative and "no MTP layer" in str(error):
        print(f"dsv3 {command}: --speculative mtp needs the checkpoint's MTP layer, and {args.checkpoint} has none "
              "(convert the original checkpoint with `dsv3 convert --keep-mtp`, or run without --speculative)",
              file=sys.stderr)
        return 1
    return None

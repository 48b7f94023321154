"""The `dsv3` command line. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int`` (exit code); they are imported lazily.

Errors end a command with one line on stderr (``dsv3 CMD: error: ...``) and exit code 1; with
``--debug`` (or DSV3_DEBUG=1 in the environment) the traceback is printed instead."""
import argparse
import importlib
import os
import sys

DEBUG_ENV = "DSV3_DEBUG"
DESCRIPTION = ("Run DeepSeek-V3-family models (V2, V3, R1, Kimi-K2, Moonlight) on CPUs: convert and inspect "
               "checkpoints, check parity with transformers, chat and serve.")

# name -> (module, help)
SUBCOMMANDS = {
    "info-cpu": ("dsv3.cli_cpu", "show CPU features, kernel path, threads and oneDNN"),
    "probe": ("dsv3.cli_probe", "measure read bandwidth and compute peaks (the roofline)"),
    "parity": ("dsv3.cli_parity", "compare dsv3 with transformers module by module"),
    "demo": ("dsv3.cli_demo", "main job: write a tiny checkpoint, run it, check parity"),
    "convert": ("dsv3.cli_convert", "convert a checkpoint (streaming, resumable, verified)"),
    "verify": ("dsv3.cli_verify", "check a converted checkpoint against its manifest"),
    "info": ("dsv3.cli_info", "architecture, formats and tensors of a checkpoint"),
    "serve": ("dsv3.cli_serve", "OpenAI-compatible HTTP server over the batched engine"),
    "chat": ("dsv3.cli_chat", "interactive chat in the terminal (streams tokens, shows tokens/s)"),
}


def build_parser():
    from . import __version__
    p = argparse.ArgumentParser(prog="dsv3", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"dsv3 {__version__}")
    p.add_argument("--debug", action="store_true",
                   help=f"show the traceback of an error (also: {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in SUBCOMMANDS.items():
        m = importlib.import_module(mod)
        sp = sub.add_parser(name, help=help_, description=(m.__doc__ or help_).strip())
        sp.set_defaults(_module=mod)
        m.add_arguments(sp)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"dsv3 {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, not a traceback (unless --debug)
        if debug:
            raise
        expected = isinstance(e, (ValueError, TypeError, OSError, KeyError))
        what = str(e) if expected else f"{type(e).__name__}: {e}"
        print(f"dsv3 {args.command}: error: {what}" + ("" if expected else f" (run with --debug or {DEBUG_ENV}=1 "
                                                                              f"for the traceback)"),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

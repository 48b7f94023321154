"""`dsv3 info PATH`: architecture, formats, tensor counts and bytes of any supported checkpoint."""
import json


def add_arguments(p):
    p.add_argument("path", metavar="PATH", help="checkpoint directory (source or converted)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def run(args):
    """Print the summary; exit code 1 when the checkpoint could not be read as a whole (its
    problem is printed, with what the headers alone tell)."""
    from .convert import info
    out = info(args.path)
    status = 1 if out.get("error") else 0
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return status
    print(f"path        : {out['path']}")
    print(f"layout      : {out['layout']}")
    if out.get("error"):
        print(f"error       : {out['error']}")
    print("architecture: " + ", ".join(f"{k}={v}" for k, v in out["architecture"].items()))
    print(f"tensors     : {out['tensors']}")
    for fmt, (count, nbytes) in sorted(out["formats"].items()):
        print(f"  {fmt:<10}: {count:6d} tensors, {_size(nbytes)}")
    for key in ("missing", "unexpected"):
        names = out[key]
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        print(f"{key:<12}: {shown or 'none'}")
    if out["skipped"]:
        print("skipped     : " + ", ".join(f"{n} {why}" for why, n in sorted(out["skipped"].items())))
    return status

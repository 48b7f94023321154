"""`dsv3 verify DST`: checksums and shapes of a converted checkpoint against its manifest."""


def add_arguments(p):
    p.add_argument("path", metavar="DST", help="converted checkpoint directory")
    p.add_argument("--json", action="store_true", help='print {"path", "ok", "problems"} as JSON')


def run(args):
    from .convert import verify
    problems = verify(args.path)
    if args.json:
        import json
        print(json.dumps({"path": args.path, "ok": not problems, "problems": problems}))
        return 1 if problems else 0
    for line in problems:
        print(f"BAD {line}")
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)")
        return 1
    print(f"{args.path}: OK")
    return 0

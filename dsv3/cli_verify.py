"""`dsv3 verify DST`: checksums and shapes of a converted checkpoint against its manifest."""


def add_arguments(p):
    p.add_argument("path", metavar="DST", help="converted checkpoint directory")


def run(args):
    from .convert import verify
    problems = verify(args.path)
    for line in problems:
        print(f"BAD {line}")
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)")
        return 1
    print(f"{args.path}: OK")
    return 0

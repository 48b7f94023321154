"""Fuzz dsv3's input readers for a bounded time.

    python -m tests.fuzz TARGET [--seconds N] [--corpus DIR] [--random] [libFuzzer flags]

TARGET: safetensors, config or checkpoint (see tests/fuzz_targets.py). By default atheris
(``pip install .[fuzz]``) runs coverage-guided fuzzing with libFuzzer, mixing its byte mutations
with the structure-aware mutator of fuzz_targets; ``--random`` runs the seeded random mutator
instead (no atheris needed). The seed corpus is written by code into DIR (default: a temporary
directory). Findings (any exception other than ValueError / OSError / NotImplementedError) stop
the run with a traceback and, with atheris, a crash-* file in the current directory. The last
line printed is ``fuzz TARGET: N executions, F findings``.
"""
import argparse
import os
import random
import sys
import tempfile


def _write_corpus(target, directory):
    from .fuzz_targets import seeds
    os.makedirs(directory, exist_ok=True)
    for i, s in enumerate(seeds(target)):
        with open(os.path.join(directory, f"seed-{i:03d}"), "wb") as f:
            f.write(s)


def _atheris(target, seconds, corpus, extra):
    import atheris
    if any(m == "dsv3" or m.startswith("dsv3.") for m in sys.modules):
        raise RuntimeError("dsv3 was imported before atheris could instrument it")
    with atheris.instrument_imports(include=["dsv3"]):
        import dsv3.checkpoint  # noqa: F401
        import dsv3.config  # noqa: F401
        import dsv3.convert  # noqa: F401
        import dsv3.jsonio  # noqa: F401
        import dsv3.model  # noqa: F401
        import dsv3.quant  # noqa: F401
        import dsv3.safetensors_io  # noqa: F401
        import dsv3.testing.checkpoints  # noqa: F401
    from . import fuzz_targets as ft
    _write_corpus(target, corpus)
    tmp = tempfile.mkdtemp(prefix=f"dsv3-fuzz-{target}-")
    runner = ft.RUNNERS[target]

    def one_input(data):
        try:
            runner(data, tmp)
        except ft.CLEAN_ERRORS:
            pass

    def custom_mutator(data, max_size, seed):
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        out = ft.mutate(target, data, rng)
        return out[:max_size]

    max_len = max(os.path.getsize(os.path.join(corpus, n)) for n in os.listdir(corpus)) * 2
    argv = [sys.argv[0], f"-max_total_time={seconds}", f"-max_len={max_len}", "-timeout=60",
            "-rss_limit_mb=4096", "-print_final_stats=1", *extra, corpus]
    atheris.Setup(argv, one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("target", choices=("safetensors", "config", "checkpoint"))
    p.add_argument("--seconds", type=int, default=60, help="time budget (default 60)")
    p.add_argument("--corpus", help="corpus directory (seeds are added to it; default: temporary)")
    p.add_argument("--random", action="store_true", help="seeded random mutator instead of atheris")
    p.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    a, extra = p.parse_known_args(argv)  # the rest: libFuzzer flags, e.g. -artifact_prefix=DIR/
    a.libfuzzer = [x for x in extra if x != "--"]
    if any(not x.startswith("-") for x in a.libfuzzer):
        p.error(f"unexpected arguments {a.libfuzzer}")
    os.environ.setdefault("DSV3_NUM_THREADS", "1")
    import logging
    logging.disable(logging.WARNING)  # the readers' warnings (unaligned file, layout mismatch) are expected
    corpus = a.corpus or tempfile.mkdtemp(prefix=f"dsv3-corpus-{a.target}-")
    if a.random:
        import traceback
        from .fuzz_targets import random_fuzz
        runs, findings = random_fuzz(a.target, a.seconds, seed=a.seed)
        for data, err in findings:
            traceback.print_exception(err)
            path = f"crash-{a.target}-{abs(hash(data)):x}"
            with open(path, "wb") as f:
                f.write(data)
            print(f"input written to {path}", file=sys.stderr)
        print(f"fuzz {a.target}: {runs} executions, {len(findings)} findings")
        return 1 if findings else 0
    _atheris(a.target, a.seconds, corpus, a.libfuzzer)
    return 0


if __name__ == "__main__":
    sys.exit(main())

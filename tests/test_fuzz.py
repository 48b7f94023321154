"""CI-sized fuzzing of the input readers (issue 9): the targets of tests/fuzz_targets.py driven by
a seeded random structure-aware mutator (no atheris needed), about 10 s in all. Any exception other
than the documented ValueError / OSError / NotImplementedError fails the test with the input.
The long, coverage-guided runs: ``python -m tests.fuzz TARGET --seconds 600`` (extra ``fuzz``)."""
import logging
import os

import pytest

import fuzz_targets as ft

SECONDS = {"safetensors": 3.0, "config": 2.0, "checkpoint": 5.0}
MIN_RUNS = 50  # inputs run whatever the load (the seconds above are a target, this a floor)


@pytest.fixture(scope="module")
def corpora():
    return {t: ft.seeds(t) for t in ft.TARGETS}


def test_seeds_are_valid(corpora, tmp_path, monkeypatch):
    monkeypatch.setenv("DSV3_NUM_THREADS", "1")
    for target, seeds in corpora.items():
        assert len(seeds) >= 2
        for s in seeds:
            ft.RUNNERS[target](s, str(tmp_path))  # no exception at all: the seeds are good inputs


def test_mutator_and_packing():
    import random
    files = {"config.json": b"{}", "model.safetensors": b"\0" * 9}
    assert ft.unpack_files(ft.pack_files(files)) == files
    rng = random.Random(1)
    outs = {ft.mutate("config", b'{"a": [1, 2, {"b": "c"}]}', rng) for _ in range(50)}
    assert len(outs) > 10


@pytest.mark.parametrize("target", ft.TARGETS)
def test_random_fuzz(target, corpora, monkeypatch, caplog):
    monkeypatch.setenv("DSV3_NUM_THREADS", "1")
    caplog.set_level(logging.ERROR)
    seconds = SECONDS[target] * float(os.environ.get("DSV3_FUZZ_SCALE", "1"))
    runs, findings = ft.random_fuzz(target, seconds, seed=1234, corpus=corpora[target], min_runs=MIN_RUNS)
    assert runs >= MIN_RUNS
    if findings:
        data, err = findings[0]
        raise AssertionError(f"{target}: {type(err).__name__}: {err} on input {data[:300]!r}...") from err

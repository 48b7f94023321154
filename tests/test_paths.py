"""dsv3.paths.resolve_checkpoint_dir: directories, hub ids in a local (fake) Hugging Face cache, files."""
import os

import pytest

from dsv3.paths import hub_cache_dir, resolve_checkpoint_dir


def _fake_cache(root, repo_id, commits, main=None):
    repo = root / ("models--" + repo_id.replace("/", "--"))
    for c in commits:
        (repo / "snapshots" / c).mkdir(parents=True)
        (repo / "snapshots" / c / "config.json").write_text("{}")
    if main:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(main + "\n")
    return repo


def test_directory_is_returned_as_is(tmp_path):
    assert resolve_checkpoint_dir(tmp_path) == str(tmp_path)


def test_hub_id_resolves_through_refs_main(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    a, b = "a" * 40, "b" * 40
    repo = _fake_cache(tmp_path, "deepseek-ai/DeepSeek-V3", [a, b], main=b)
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint_dir("deepseek-ai/DeepSeek-V3") == str(repo / "snapshots" / b)
    assert resolve_checkpoint_dir(f"deepseek-ai/DeepSeek-V3@{a}") == str(repo / "snapshots" / a)
    with pytest.raises(FileNotFoundError, match="revision 'v9'"):
        resolve_checkpoint_dir("deepseek-ai/DeepSeek-V3@v9")


def test_hub_id_with_a_single_snapshot_and_no_ref(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = _fake_cache(tmp_path, "org/model", ["c" * 40])
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint_dir("org/model") == str(repo / "snapshots" / ("c" * 40))


def test_hub_id_not_cached_says_dsv3_does_not_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not download"):
        resolve_checkpoint_dir("deepseek-ai/DeepSeek-V3")


def test_cache_location_follows_huggingface_hub(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == str(tmp_path / "hf" / "hub")


@pytest.mark.parametrize("name, match", [("model.gguf", "GGUF files are not supported"),
                                         ("model.safetensors", "one safetensors file"),
                                         ("config.json", "JSON file"), ("weights.bin", "not a checkpoint directory")])
def test_files_get_a_clear_error(tmp_path, name, match):
    f = tmp_path / name
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match=match):
        resolve_checkpoint_dir(f)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_checkpoint_dir(tmp_path / "nope")


def test_from_pretrained_takes_a_cached_hub_id(tmp_path, monkeypatch):
    import numpy as np

    import dsv3
    from dsv3.testing.checkpoints import tiny_config, write_checkpoint
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    snap = tmp_path / "cache" / "models--org--tiny" / "snapshots" / ("d" * 40)
    write_checkpoint(snap, tiny_config(), layout="fp8_block")
    monkeypatch.chdir(tmp_path)
    a = dsv3.Model.from_pretrained("org/tiny").forward(np.array([1, 2, 3]))
    b = dsv3.Model.from_pretrained(snap).forward(np.array([1, 2, 3]))
    assert np.array_equal(a, b)

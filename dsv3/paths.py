"""What people pass as a checkpoint: a directory, a Hugging Face hub id found in the local cache, or a
file inside a checkpoint. One resolver for every entry point (open_checkpoint, Model.from_pretrained,
convert, info, verify): it never downloads, and says exactly what is wrong when it cannot resolve.
"""
import os
import re

# "org/name" (optionally "@revision"): the hub's id syntax.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")

# Files people point at instead of their directory, and what to say.
_FILE_HINTS = {
    ".gguf": "GGUF files are not supported: dsv3 reads safetensors checkpoints (the Hugging Face layouts, "
             "DeepSeek's FP8 and NVFP4 releases, or a dsv3-converted directory)",
    ".safetensors": "this is one safetensors file; pass the checkpoint directory that holds it with its "
                    "config.json",
    ".json": "this is a JSON file; pass the checkpoint directory that holds config.json and the safetensors "
             "shards",
}


def hub_cache_dir():
    """The local Hugging Face hub cache, as huggingface_hub finds it: HF_HUB_CACHE, else HF_HOME/hub,
    else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def _from_hub_cache(repo_id):
    """Snapshot directory of ``repo_id`` ("org/name[@revision]") in the local cache, or an explanation."""
    rev = "main"
    if "@" in repo_id:
        repo_id, rev = repo_id.split("@", 1)
    cache = hub_cache_dir()
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    if not os.path.isdir(repo):
        return None, (f"{repo_id!r} is neither a directory nor a model in the local Hugging Face cache "
                      f"({cache}); dsv3 does not download: fetch it first (e.g. `hf download {repo_id}`) "
                      f"or pass its directory")
    snaps = os.path.join(repo, "snapshots")
    ref = os.path.join(repo, "refs", rev)
    commit = None
    if os.path.isfile(ref):
        with open(ref) as f:
            commit = f.read().strip()
    elif re.fullmatch(r"[0-9a-f]{40}", rev):
        commit = rev
    if commit and os.path.isdir(os.path.join(snaps, commit)):
        return os.path.join(snaps, commit), None
    have = sorted(os.listdir(snaps)) if os.path.isdir(snaps) else []
    if commit is None and rev == "main" and len(have) == 1:
        return os.path.join(snaps, have[0]), None
    return None, (f"{repo_id!r} is in the Hugging Face cache ({repo}) but revision {rev!r} is not "
                  f"(snapshots: {', '.join(have) or 'none'}); pass repo@<commit> or the snapshot directory")


def resolve_checkpoint_dir(path):
    """A checkpoint directory for ``path``: an existing directory as is; a hub id ("org/name",
    "org/name@rev") resolved in the local Hugging Face cache; otherwise FileNotFoundError (nothing there)
    or ValueError (a file where a directory is expected: GGUF named as unsupported), each saying what to do."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        hint = _FILE_HINTS.get(ext, "pass the checkpoint directory (config.json + safetensors shards)")
        parent = os.path.dirname(os.path.abspath(path))
        raise ValueError(f"{path} is a file, not a checkpoint directory: {hint}"
                         + ("" if ext == ".gguf" else f" (here: {parent})"))
    if _HUB_ID.match(path) and not os.path.exists(path.split("/")[0]):
        snap, why = _from_hub_cache(path)
        if snap is None:
            raise FileNotFoundError(why)
        return snap
    raise FileNotFoundError(f"checkpoint directory {path} does not exist (not found)")

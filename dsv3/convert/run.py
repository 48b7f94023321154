"""dsv3.convert(): streaming, resumable, verified checkpoint conversion."""
import collections
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import queue
import shutil
import threading

from . import manifest as mf
from .memory import prefetch, release_pages
from ..checkpoint import skip_reason
from .plan import DEFAULT_SHARD_BYTES, Options, assign_shards, build_items
from .tensors import convert_value, fuse_rows, is_quantized, value_format
from .writer import PARTIAL_SUFFIX, ShardWriter, hash_file_tensors, sha256_of

log = logging.getLogger("dsv3.convert")
FAIL_AFTER_ENV = "DSV3_CONVERT_FAIL_AFTER"  # test hook: exit abruptly after K written tensors
QUANT_FORMATS = ("fp8_block", "nvfp4", "int8", "int4")
CONVERTERS = 2  # items converted concurrently
_NOT_COPIED = {"config.json", mf.INDEX, mf.MANIFEST, "hf_quant_config.json"}
LOCK_NAME = ".dsv3-convert.lock"  # in DST while a conversion writes there (holds the writer's pid)


class DestinationLocked(OSError):
    """Another conversion is writing to the destination directory."""


@contextlib.contextmanager
def _dst_lock(dst):
    """Hold an exclusive flock on DST/LOCK_NAME (its content: our pid) for the conversion; raise
    DestinationLocked naming the other writer's pid if one holds it. The file is removed on exit;
    a lock taken on a file that was unlinked meanwhile is retried on the new one."""
    path = os.path.join(dst, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise DestinationLocked(f"another conversion is writing to {dst} (pid {pid}); wait for it to finish, "
                                    f"or stop it (an interrupted conversion resumes when re-run)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and flock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)


def _check_paths(src, dst):
    from ..paths import resolve_checkpoint_dir  # a directory, a hub id in the local cache; clear errors
    src, dst = os.path.abspath(resolve_checkpoint_dir(src)), os.path.abspath(dst)
    if os.path.commonpath([src, dst]) == src:
        raise ValueError(f"destination {dst} is inside the source checkpoint {src}; choose another directory")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise NotADirectoryError(f"destination {dst} exists and is not a directory")
    return src, dst


def _version():
    from .. import __version__
    return __version__


def _plan(ckpt, src, opts):
    """Pass 1: names, shapes and formats of the source's tensors (no data is read)."""
    cfg = ckpt.config
    n_experts = cfg.n_routed_experts or 0
    if opts.ep > 1 and (not n_experts or n_experts % opts.ep):
        raise ValueError(f"--ep {opts.ep} must divide the number of routed experts ({n_experts})")
    entries = [(n, tuple(v.shape), int(v.nbytes), value_format(v)) for n, v in ckpt.canonical_tensors()]
    items = build_items(entries, opts, n_experts)
    items += _raw_items(src, cfg, opts.keep_mtp)
    return items, assign_shards(items, opts)


def _raw_items(src, cfg, keep_mtp):
    """Source tensors copied verbatim (names and formats kept): with keep_mtp, the MTP layer's (layers >=
    num_hidden_layers), and indexer tensors under a config without an indexer. (The V3.2 indexer's tensors
    are canonical tensors of a deepseek_v32 config and are converted like the other attention tensors.)"""
    from ..safetensors_io import open_safetensors
    from .plan import Item
    out, mtp = [], 0
    with open_safetensors(src) as r:
        for key in r.keys():
            why = skip_reason(key, cfg)
            is_mtp = why == "mtp"
            if (is_mtp and keep_mtp) or why == "indexer":
                nbytes = int(r.get(key).nbytes)
                out.append(Item(key, (key,), None, "shared", nbytes, nbytes, raw=True))
                mtp += is_mtp
    if keep_mtp and not mtp:
        log.info("--keep-mtp: the source has no MTP layer (layer >= %d)", cfg.num_hidden_layers)
    return out


def _prepare_dst(dst, src_id, opts, shards):
    """Create dst, or resume it: completed shards whose checksums match are kept."""
    os.makedirs(dst, exist_ok=True)
    old = mf.load(dst)
    if old is None:
        leftovers = [n for n in os.listdir(dst) if not n.endswith(PARTIAL_SUFFIX) and n != LOCK_NAME]
        if leftovers:
            raise ValueError(f"destination {dst} is not empty and has no {mf.MANIFEST} "
                             f"(found {', '.join(sorted(leftovers)[:3])}); choose an empty directory")
        return mf.new(src_id, opts.to_dict(), shards, _version())
    if old["source"] != src_id or old["options"] != opts.to_dict() or \
            {f: s["items"] for f, s in old["shards"].items()} != shards:
        raise ValueError(f"destination {dst} holds a conversion of another source or with other options "
                         f"(see {mf.MANIFEST}); remove it or choose another directory")
    kept = 0
    for fname, shard in old["shards"].items():
        if shard["complete"] and not _shard_ok(dst, fname, old):
            log.info("resume: %s failed verification, rewriting it", fname)
            shard["complete"] = False
        if not shard["complete"]:
            old["tensors"] = {k: v for k, v in old["tensors"].items() if v["shard"] != fname}
            old["items"] = {k: v for k, v in old.get("items", {}).items() if v["shard"] != fname}
        kept += shard["complete"]
    old["complete"] = False
    log.info("resume: keeping %d of %d shards", kept, len(old["shards"]))
    return old


def _shard_ok(dst, fname, m):
    path = os.path.join(dst, fname)
    if not os.path.isfile(path) or os.path.getsize(path) != m["shards"][fname]["size"]:
        return False
    try:
        hashes, header = hash_file_tensors(path)
    except (OSError, ValueError):
        return False
    want = {k: v for k, v in m["tensors"].items() if v["shard"] == fname}
    return set(hashes) == set(want) and all(
        hashes[k] == v["sha256"] and header[k]["shape"] == v["shape"] for k, v in want.items())


class _Streamer:
    """Pass 2: converts items as their sources arrive (CONVERTERS threads: dequantise / quantise in
    C, GIL released; one hasher thread: sha256) and hands them, in order, to one writer thread
    (write; shard header, rename and manifest on a finisher thread), through a queue of at most two
    items so memory stays bounded (a few tensors in flight)."""

    def __init__(self, dst, items, m, progress):
        self.dst, self.m, self.progress = dst, m, progress
        self.items = {it.name: it for it in items}
        self.by_source = {s: it for it in items if not it.raw for s in it.sources}
        self.pending = {}
        self.writers = {}
        self.left = {f: len(s["items"]) for f, s in m["shards"].items()}
        self.m.setdefault("items", {})
        fail = os.environ.get(FAIL_AFTER_ENV)
        self.fail_after = int(fail) if fail else None
        self.written = 0
        self.queue = queue.Queue(maxsize=2)
        self.lock = threading.Lock()  # the manifest is updated by the writer and the finisher
        self.finisher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dsv3-convert-finish")
        self.finishing = []
        self.hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dsv3-convert-hash")
        # two items convert at once (C code, GIL released): keeps both cores busy when one waits
        # on a page fault or an OpenMP barrier; the writer commits them in submission order
        self.converters = concurrent.futures.ThreadPoolExecutor(CONVERTERS, thread_name_prefix="dsv3-convert")
        self.error = None
        self.thread = threading.Thread(target=self._writer_loop, name="dsv3-convert-writer", daemon=True)
        self.thread.start()

    # ---- converting thread ----
    def feed(self, name, value):
        it = self.by_source.get(name)
        if it is None:
            raise ValueError(f"source tensor {name} appeared that the plan does not know")
        if self.m["shards"][it.shard]["complete"]:
            if name == it.sources[-1]:
                self.progress.update(it.src_bytes)
            return
        got = self.pending.setdefault(it.name, {})
        got[name] = value
        if len(got) == len(it.sources):
            del self.pending[it.name]
            self._put(self.converters.submit(self._prepare, it, [got[s] for s in it.sources]))

    def feed_raw(self, reader):
        for it in self.items.values():
            if not it.raw:
                continue
            if self.m["shards"][it.shard]["complete"]:
                self.progress.update(it.src_bytes)
            else:
                self._put(self.converters.submit(self._prepare, it, [reader.get(it.name)]))

    def _prepare(self, it, values):
        group = self.m["options"].get("group", 128)
        converted = []
        for src, v in zip(it.sources, values):
            try:
                converted.append(convert_value(v, it.fmt, group, pack=it.pack))
            except ValueError as e:  # e.g. a NaN weight quantize refuses: say which tensor
                raise ValueError(f"{src}: {e}") from e
        if len(converted) == 1:
            arrays, params = converted[0]
        else:
            arrays, params = fuse_rows(converted, it.fmt, values[0].shape[0])
        plain = it.raw or not it.name.endswith(".weight")
        stored_fmt = it.fmt or value_format(values[0])
        if plain and set(arrays) != {"weight"}:
            raise ValueError(f"{it.name}: a {stored_fmt} tensor must be named *.weight")
        out = [(it.name if plain else it.name[:-len("weight")] + key, arr, self.hasher.submit(sha256_of, arr))
               for key, arr in arrays.items()]
        sources = [a for v in values for a in (v.arrays.values() if is_quantized(v) else [v])]
        return it, out, params, stored_fmt, sources

    def _put(self, job):
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self):
        self._put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        self.converters.shutdown(wait=True)
        self.finisher.shutdown(wait=True)
        self.hasher.shutdown(wait=True)
        for f in self.finishing:
            f.result()
        if self.pending:
            raise ValueError(f"source ended before these tensors were complete: {sorted(self.pending)[:3]}")
        bad = [f for f, s in self.m["shards"].items() if not s["complete"]]
        if bad:
            raise ValueError(f"conversion incomplete: shards {bad[:3]} were not written (did the source change?)")

    def abort(self):
        """Stop the writer thread (after an error in the converting thread); partial shards are removed."""
        if self.thread.is_alive():
            self.error = self.error or RuntimeError("aborted")
            try:
                self.queue.put_nowait(None)
            except queue.Full:
                pass
            self.thread.join(timeout=60)
        self.converters.shutdown(wait=True, cancel_futures=True)
        self.finisher.shutdown(wait=True)
        self.hasher.shutdown(wait=True)
        for w in self.writers.values():
            w.abort()

    # ---- writer thread ----
    def _writer_loop(self):
        try:
            while True:
                job = self.queue.get()
                if job is None or self.error is not None:
                    return
                self._commit(*job.result())  # in submission order: the output is deterministic
        except BaseException as e:  # handed to the converting thread, which raises it
            self.error = e

    def _commit(self, it, arrays, params, stored_fmt, sources):
        w = self.writers.get(it.shard)
        align = _packed_align() if self.m["options"].get("pack") else None
        if w is None:
            w = self.writers[it.shard] = ShardWriter(os.path.join(self.dst, it.shard),
                                                     self.m["shards"][it.shard]["items"], align=align or 8)
        for disk, arr, digest in arrays:  # hashed concurrently by the hasher thread
            rec = w.add(disk, arr, digest.result, align=align if it.pack else None)
            rec.update(shard=it.shard, format=stored_fmt)
            with self.lock:
                self.m["tensors"][disk] = rec
        with self.lock:
            self.m["items"][it.name] = {"shard": it.shard, "format": stored_fmt, "params": params,
                                        "sources": list(it.sources), "raw": it.raw}
        release_pages(sources)
        self.progress.update(it.src_bytes)
        self.written += 1
        if self.fail_after is not None and self.written >= self.fail_after:
            os._exit(75)
        self.left[it.shard] -= 1
        if self.left[it.shard] == 0:  # header, rename, manifest: overlapped with the next shard's writes
            self.finishing.append(self.finisher.submit(self._finish_shard, it.shard, self.writers.pop(it.shard)))

    def _finish_shard(self, fname, writer):
        size = writer.finish()
        with self.lock:
            self.m["shards"][fname].update(complete=True, size=size)
            mf.save(self.dst, self.m)


def _packed_align():
    """Where a packed layout starts in a shard: the kernels' vector alignment (lib.PACKED_ALIGN, the loader
    checks it)."""
    from .._native import lib
    return lib.PACKED_ALIGN


def _lookahead(pairs, window=64 << 20):
    """Yield (name, value) pairs, having asked the kernel to start reading (WILLNEED) the source
    pages of the values up to `window` bytes ahead, so disk reads overlap conversion."""
    ahead, nbytes = collections.deque(), 0
    for pair in pairs:
        v = pair[1]
        prefetch(list(v.arrays.values()) if is_quantized(v) else [v])
        ahead.append(pair)
        nbytes += int(v.nbytes)
        while len(ahead) > 1 and nbytes > window:
            name, value = ahead.popleft()
            nbytes -= int(value.nbytes)
            yield name, value
    yield from ahead


def _dsv3_section(m, opts, cfg, shards):
    quantised = {k: v for k, v in m["items"].items() if v["format"] in QUANT_FORMATS and not v.get("raw")}
    formats, tensor_params = {}, {}
    for name, v in quantised.items():
        if formats.setdefault(v["format"], v["params"]) != v["params"]:
            tensor_params[name] = v["params"]
    sec = {"layout": "dsv3", "format_version": 1,
           "quantization": {"default": opts.format, "experts": opts.experts or opts.format,
                            "attention": opts.attention or opts.format, "lm_head": opts.lm_head,
                            "formats": formats,
                            "tensors": {k: v["format"] for k, v in quantised.items()},
                            "tensor_params": tensor_params},
           "mtp_kept": opts.keep_mtp}
    if opts.ep > 1:
        per = cfg.n_routed_experts // opts.ep
        sec["expert_parallel"] = {
            "size": opts.ep, "experts_per_rank": per,
            "ranks": [{"experts": [r * per, (r + 1) * per],
                       "files": [f for f in shards if f"-ep{r}-of-" in f]} for r in range(opts.ep)],
            "shared_files": [f for f in shards if f.startswith("model-shared-")]}
    return sec


def _finish(src, dst, m, opts, cfg):
    # sorted: a resumed run writes shards in another order, its outputs must still be byte-identical
    m["tensors"] = dict(sorted(m["tensors"].items()))
    m["items"] = dict(sorted(m["items"].items()))
    weight_map = {k: v["shard"] for k, v in m["tensors"].items()}
    total = sum(v["nbytes"] for v in m["tensors"].values())
    mf.write_json_atomic(os.path.join(dst, mf.INDEX), {"metadata": {"total_size": total}, "weight_map": weight_map})
    from ..jsonio import MAX_CONFIG_BYTES, read_json
    config = read_json(os.path.join(src, "config.json"), MAX_CONFIG_BYTES)
    config.pop("quantization_config", None)
    config["dsv3"] = _dsv3_section(m, opts, cfg, list(m["shards"]))
    from ..config import CONVERTED_ARCHITECTURES, CONVERTED_MODEL_TYPE  # transformers must refuse it
    config["dsv3"]["model_type"] = cfg.model_type
    config["model_type"], config["architectures"] = CONVERTED_MODEL_TYPE, CONVERTED_ARCHITECTURES
    mf.write_json_atomic(os.path.join(dst, "config.json"), config)
    for name in sorted(os.listdir(src)):
        p = os.path.join(src, name)
        if name in _NOT_COPIED or name.endswith(".safetensors") or not os.path.isfile(p):
            continue
        shutil.copyfile(p, os.path.join(dst, name + PARTIAL_SUFFIX))
        os.replace(os.path.join(dst, name + PARTIAL_SUFFIX), os.path.join(dst, name))
    m["complete"] = True
    mf.save(dst, m)


def convert(src, dst, format="bf16", experts=None, attention=None, lm_head=None, keep_mtp=False, ep=1,
            threads=None, quiet=False, shard_bytes=None, group=128, pack=False):
    """Convert checkpoint directory `src` (any layout dsv3.checkpoint.open_checkpoint reads) into a
    dsv3 checkpoint in `dst`.

    format: default format of linear weights ('bf16', 'fp8_block', 'nvfp4', 'int8', 'int4');
    experts / attention / lm_head: formats of the routed experts / attention linears / lm_head
    (lm_head stays as stored unless given); keep_mtp: copy the MTP layer verbatim; ep: split the
    routed experts into `ep` expert-parallel file sets; threads: dsv3.set_num_threads for the C
    quantisers; shard_bytes: target shard size; group: K group of int4 scales (32 or 128; 32 is
    llama.cpp's Q4_0 granularity); pack: store every int4 weight the engine packs (all but kv_b_proj,
    ``lib.tensor_packs``) in its packed kernel layout (``X.weight_packed``, 64-byte aligned; gate and up stay
    separate), so a fast-precision load reads it in place instead of repacking it (ValueError when no weight
    is int4). Re-running on an interrupted `dst` resumes it; on a finished one
    (same source and options, shards verified) does nothing and returns its manifest with
    ``"already_complete": True``. Returns the manifest (dict). Raises DestinationLocked (OSError) while another conversion
    writes to `dst`."""
    src, dst = _check_paths(src, dst)
    opts = Options(format=format, experts=experts, attention=attention, lm_head=lm_head,
                   keep_mtp=bool(keep_mtp), ep=ep, group=group, pack=pack,
                   shard_bytes=DEFAULT_SHARD_BYTES if shard_bytes is None else shard_bytes).validate()
    if threads is not None:
        from ..cpu import set_num_threads
        set_num_threads(threads)
    from ..checkpoint import open_checkpoint
    ckpt = open_checkpoint(src)
    items, shards = _plan(ckpt, src, opts)
    os.makedirs(dst, exist_ok=True)
    with _dst_lock(dst):
        return _convert_locked(src, dst, ckpt, opts, items, shards, quiet)


def _already_complete(dst, src_id, opts, shards):
    """The manifest of a finished conversion of the same source with the same options whose shards all
    verify (a re-run is then a no-op), else None."""
    old = mf.load(dst)
    if old is None or not old.get("complete") or old["source"] != src_id or old["options"] != opts.to_dict() \
            or {f: s["items"] for f, s in old["shards"].items()} != shards:
        return None
    return old if all(_shard_ok(dst, f, old) for f in old["shards"]) else None


def _convert_locked(src, dst, ckpt, opts, items, shards, quiet):
    done = _already_complete(dst, mf.source_identity(src, ckpt.layout), opts, shards)
    if done is not None:
        log.debug("%s: conversion already complete, nothing to do", dst)
        done["already_complete"] = True  # not saved: tells the caller nothing was written
        return done
    m = _prepare_dst(dst, mf.source_identity(src, ckpt.layout), opts, shards)
    mf.save(dst, m)
    for name in os.listdir(dst):
        if name.endswith(PARTIAL_SUFFIX):
            os.remove(os.path.join(dst, name))
    from tqdm.auto import tqdm
    progress = tqdm(total=sum(it.src_bytes for it in items), unit="B", unit_scale=True, unit_divisor=1024,
                    desc="convert", disable=quiet, mininterval=0.5)
    try:
        st = _Streamer(dst, items, m, progress)
        try:
            for name, value in _lookahead(ckpt.canonical_tensors()):
                st.feed(name, value)
            if any(it.raw for it in items):
                from ..safetensors_io import open_safetensors
                with open_safetensors(src) as r:
                    st.feed_raw(r)
            st.close()
        except BaseException:
            st.abort()
            raise
    finally:
        progress.close()
    _finish(src, dst, m, opts, ckpt.config)
    return m


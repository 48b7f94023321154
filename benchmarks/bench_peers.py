"""dsv3 against llama.cpp on the same DeepSeek-V3-architecture model, side by side and interleaved.

What it does (issue 10, item 1):

1. llama.cpp from source: the PyPI sdist of llama-cpp-python (``pip download --no-deps --no-binary
   llama-cpp-python``) carries a recent tree under vendor/llama.cpp; built with cmake (Release, OpenMP on,
   like dsv3's libgomp) into ``--cache`` (default ~/.cache/dsv3-bench; reused when present). Variants:
   ``native`` (GGML_NATIVE=ON) and ``avx2`` (GGML_NATIVE=OFF, AVX/AVX2/FMA/F16C/BMI2 on, AVX-512 off), the
   peer of ``DSV3_ISA=avx2``. The ISA flags apply to libggml-cpu alone, so ``avx2`` compiles only that library
   and borrows the native build's other files (LD_LIBRARY_PATH; the JSON records the library ldd resolves).
   No llama.cpp code is in this repository. The first build takes ~45 minutes on 2 busy cores.
2. One checkpoint with seeded random weights in the HF layout (bf16 safetensors, config.json and a real
   byte-level BPE tokenizer; benchmarks/peers_model.py), ``--size tiny|small|default`` (default: issue 10's
   1.84B model: hidden 2048, 16 heads, q_lora 768, kv_lora 512, 4 layers, 64 experts top-6 in 8 groups
   keeping 4, 2 shared, moe_intermediate 1024, vocab 32000) plus ``--set key=value`` overrides.
3. Conversions: llama.cpp's own convert_hf_to_gguf.py -> BF16 GGUF, then ``llama-quantize --pure`` -> Q8_0,
   Q4_0 and NVFP4 (this llama.cpp has no NVFP4 ftype in llama-quantize: the NVFP4 file is
   ``--pure --tensor-type .*=nvfp4`` on top of Q8_0, i.e. every quantisable tensor NVFP4); ``dsv3 convert``
   -> bf16, int8, fp8_block, int4 (--group 32, Q4_0's granularity), nvfp4. The converter needs a known BPE pre-tokenizer hash: ours is GPT-2's regex over a
   synthetic vocab, so the converter runs with get_vocab_base_pre returning "gpt-2" (same regex).
4. Timing, with llama-bench's definitions (tools/llama-bench/llama-bench.cpp): ppN = one prompt of N random
   tokens (BOS first) into an empty cache, logits of the last position only; tgN = N single-token decode
   steps, each followed by a synchronize; tgN@dD = the same after a D-token prompt (not timed). Each
   measurement is preceded by a warm-up (pp: one full prompt; tg: one token), as llama-bench does. dsv3's
   side is ``dsv3.Model.forward`` in a fresh worker process per rep (like llama-bench, started once per
   rep); ``forward(..., logits="last")`` is used when dsv3 has it (inspect), otherwise dsv3's prefill
   also computes logits for every position and the JSON says so (``dsv3_prefill_logits``).
5. Interleaving: for every rep, wait policy, thread count and format pair, llama-bench (``-r 1``) and the dsv3
   worker run back to back, in alternating order (ABBA) from rep to rep; the ratio is taken per rep and
   reported as min/median/max. Threads: llama-bench ``-t T``, dsv3 ``DSV3_NUM_THREADS=T`` (the worker
   reports dsv3.get_num_threads()); OMP_NUM_THREADS=T for both. Wait policy: both processes get the same
   libgomp environment (``--wait passive,active`` -> OMP_WAIT_POLICY; ``spinN`` -> GOMP_SPINCOUNT=N; all
   other OMP_WAIT_POLICY/GOMP_SPINCOUNT settings removed), so dsv3 does not apply its own default. Each
   process's CPU time / wall time (wait4 rusage) is recorded as evidence of how many cores it really used.
6. ``--check``: bf16 logits of a short prompt (and greedy tokens) from dsv3 and from llama.cpp (libllama
   through a 60-line C program compiled here against the built library) against transformers fp32 on the
   same checkpoint (``--check-size``, default small: transformers fp32 of the 1.84B model needs ~8 GB).

Output: a markdown table on stdout and JSON in benchmarks/results/bench_peers-<time>.json (not committed).

    PYTHONPATH=$PWD python benchmarks/bench_peers.py                 # default model, all pairs, 1,2 threads, passive+active
    PYTHONPATH=$PWD python benchmarks/bench_peers.py --quick         # tiny model, 2 reps, a few minutes
    DSV3_ISA=avx2 PYTHONPATH=$PWD python benchmarks/bench_peers.py --llama avx2 ...   # the AVX2 path vs AVX2 llama.cpp
    PYTHONPATH=$PWD python benchmarks/bench_peers.py --formats bf16,int4 --tests tg64,pp128 --threads 2 --wait passive --reps 3

``--worker`` is internal (one dsv3 measurement process).
"""
import argparse
import datetime
import inspect
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import peers_report as rep  # noqa: E402

LLAMA_PKG = "llama-cpp-python"
LLAMA_TARGETS = ("llama-bench", "llama-quantize", "llama")
LLAMA_VARIANTS = {
    "native": ["-DGGML_NATIVE=ON"],
    "avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
             "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VBMI=OFF", "-DGGML_AVX512_VNNI=OFF",
             "-DGGML_AVX512_BF16=OFF", "-DGGML_AVX_VNNI=OFF"],
}
LLAMA_COMMON = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_OPENMP=ON", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
                "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF"]
GGUF_QUANT = {"Q8_0": ["Q8_0"], "Q4_0": ["Q4_0"], "NVFP4": ["--tensor-type", ".*=nvfp4", "Q8_0"]}


def log(msg):
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, env=None, cwd=None, logfile=None):
    """Run a command; on failure raise with the tail of its output."""
    res = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if logfile:
        with open(logfile, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{res.stdout}\n")
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({res.returncode}):\n{res.stdout[-3000:]}")
    return res.stdout


# ---------------------------------------------------------------- llama.cpp: source and build
def llama_source(cache):
    """Path of vendor/llama.cpp from the newest llama-cpp-python sdist in ``cache``/src (downloaded if none)."""
    src = os.path.join(cache, "src")
    os.makedirs(src, exist_ok=True)
    tars = sorted(f for f in os.listdir(src) if f.startswith("llama_cpp_python-") and f.endswith(".tar.gz"))
    if not tars:
        log(f"downloading the {LLAMA_PKG} sdist into {src}")
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", LLAMA_PKG, LLAMA_PKG, "-d", src])
        tars = sorted(f for f in os.listdir(src) if f.startswith("llama_cpp_python-") and f.endswith(".tar.gz"))
    tar = tars[-1]
    top = os.path.join(src, tar[: -len(".tar.gz")])
    tree = os.path.join(top, "vendor", "llama.cpp")
    if not os.path.isfile(os.path.join(tree, "convert_hf_to_gguf.py")):
        log(f"extracting {tar}")
        with tarfile.open(os.path.join(src, tar)) as t:
            t.extractall(src, filter="data")
    return tree


def llama_commit(tree):
    """The llama.cpp commit the sdist was cut from (ggml's cmake prints it), or the sdist name."""
    log_path = os.path.join(os.path.dirname(tree), "..", "PKG-INFO")
    ver = None
    if os.path.exists(log_path):
        with open(log_path) as f:
            m = re.search(r"^Version: (.+)$", f.read(), re.M)
            ver = m.group(1) if m else None
    try:
        c = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        commit = c.stdout.strip() if c.returncode == 0 else None
    except OSError:
        commit = None
    return {"llama_cpp_python": ver, "llama_cpp_commit": commit}


def llama_build(cache, tree, variant, jobs):
    """Configure and build ``variant`` into cache/build-<variant> (incremental); returns its bin dir.

    Only ggml-cpu is compiled with ISA flags (GGML_NATIVE / GGML_AVX2... apply to that target alone), so the
    avx2 variant builds just libggml-cpu in build-avx2 and links the native build's other files next to it;
    llama_env() puts that directory first on LD_LIBRARY_PATH (the build uses RUNPATH, which it overrides).
    """
    if variant not in LLAMA_VARIANTS:
        raise ValueError(f"llama.cpp variant must be one of {sorted(LLAMA_VARIANTS)}, got {variant!r}")
    bdir = os.path.join(cache, f"build-{variant}")
    bindir = os.path.join(bdir, "bin")
    want = ["llama-bench", "llama-quantize", "libllama.so", "libggml-cpu.so"]
    if all(os.path.exists(os.path.join(bindir, t)) for t in want):
        return bindir
    native = None if variant == "native" else llama_build(cache, tree, "native", jobs)
    logfile = os.path.join(cache, f"build-{variant}.log")
    log(f"building llama.cpp ({variant}) into {bdir} (log: {logfile}); minutes on a busy machine")
    run(["cmake", "-S", tree, "-B", bdir] + LLAMA_COMMON + LLAMA_VARIANTS[variant], logfile=logfile)
    targets = list(LLAMA_TARGETS) if native is None else ["ggml-cpu"]
    run(["cmake", "--build", bdir, "--config", "Release", "-j", str(jobs), "--target"] + targets, logfile=logfile)
    if native is not None:
        for f in os.listdir(native):
            dst = os.path.join(bindir, f)
            if not f.startswith("libggml-cpu") and not os.path.lexists(dst):
                os.symlink(os.path.join(native, f), dst)
    return bindir


def llama_env(env, bindir):
    """``env`` with ``bindir`` first on LD_LIBRARY_PATH (selects the variant's libggml-cpu)."""
    env = dict(env)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([bindir] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    return env


def llama_cpu_lib(bindir):
    """The libggml-cpu llama-bench really loads under llama_env (ldd), as evidence of the variant."""
    out = subprocess.run(["ldd", os.path.join(bindir, "llama-bench")], env=llama_env(os.environ, bindir),
                         capture_output=True, text=True).stdout
    m = re.search(r"libggml-cpu\.so\S* => (\S+)", out)
    return os.path.realpath(m.group(1)) if m else None


LOGITS_C = r"""
/* bench_peers.py: logits of a token sequence (all positions) and greedy tokens from libllama. */
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
static void quiet(enum ggml_log_level l, const char *t, void *u) { (void)l; (void)t; (void)u; }
int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: model ids.bin n_gen threads out.bin\n"); return 1; }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model *m = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!m) { fprintf(stderr, "cannot load %s\n", argv[1]); return 2; }
    FILE *f = fopen(argv[2], "rb"); int32_t n = 0;
    if (!f || fread(&n, 4, 1, f) != 1 || n < 1) return 3;
    int32_t *ids = malloc(4 * (size_t)n);
    if (fread(ids, 4, (size_t)n, f) != (size_t)n) return 3;
    fclose(f);
    int n_gen = atoi(argv[3]), nt = atoi(argv[4]);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n + n_gen + 16); cp.n_batch = cp.n_ubatch = (uint32_t)(n + 16);
    cp.n_threads = cp.n_threads_batch = nt;
    struct llama_context *ctx = llama_init_from_model(m, cp);
    if (!ctx) return 4;
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(m));
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b)) return 5;
    FILE *o = fopen(argv[5], "wb");
    if (!o) return 6;
    fwrite(&nv, 4, 1, o);
    for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), 4, (size_t)nv, o);
    const float *lg = llama_get_logits_ith(ctx, n - 1);
    for (int g = 0; g < n_gen; g++) {
        int32_t best = 0;
        for (int v = 1; v < nv; v++) if (lg[v] > lg[best]) best = v;
        fwrite(&best, 4, 1, o);
        b.n_tokens = 1; b.token[0] = best; b.pos[0] = n + g; b.logits[0] = 1;
        if (llama_decode(ctx, b)) return 7;
        lg = llama_get_logits_ith(ctx, 0);
    }
    fclose(o);
    llama_batch_free(b); llama_free(ctx); llama_model_free(m);
    return 0;
}
"""


def llama_logits_tool(cache, tree, bindir):
    """Compile LOGITS_C against the built libllama (cached)."""
    exe = os.path.join(os.path.dirname(bindir), "dsv3-bench-logits")
    src = exe + ".c"
    if not os.path.exists(exe):
        with open(src, "w") as f:
            f.write(LOGITS_C)
        run(["gcc", "-O1", "-std=c11", src, "-I", os.path.join(tree, "include"), "-I",
             os.path.join(tree, "ggml", "include"), "-L", bindir, "-lllama", "-lggml", "-lggml-base",
             f"-Wl,-rpath,{bindir}", "-o", exe])
    return exe


# ---------------------------------------------------------------- model and conversions
CONVERT_WRAPPER = r"""
import sys
tree = sys.argv.pop(1)
sys.path.insert(0, tree + "/gguf-py"); sys.path.insert(0, tree)
import convert_hf_to_gguf as c
from conversion import base
# our tokenizer is byte-level BPE with GPT-2's pre-tokenizer regex over a synthetic vocab: its hash is unknown
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv[0] = "convert_hf_to_gguf.py"
c.main()
"""


def dsv3_convert_args(fmt):
    """dsv3 convert options for ``fmt``: lm_head in the same format (llama-quantize --pure quantises output.weight
    too; it is ~20% of the weights read per decoded token here)."""
    return ["--format", fmt] + (["--lm-head", fmt] if fmt != "bf16" else []) + \
        (["--group", "32"] if fmt == "int4" else [])  # Q4_0's granularity


def make_models(args, cfg, tree, bindir, formats, env):
    """HF checkpoint, GGUFs and dsv3 conversions under args.models/<size tag>; returns dict of paths."""
    import peers_model as pm

    tag = args.size + ("-" + "-".join(f"{k}{v}" for k, v in sorted(args.set_dict.items())) if args.set_dict else "") \
        + f"-s{args.seed}"
    base = os.path.join(args.models, tag)
    hf = os.path.join(base, "hf")
    if not os.path.exists(os.path.join(hf, "tokenizer.json")):
        log(f"writing the {args.size} checkpoint ({pm.param_count(cfg) / 1e9:.2f}B params) to {hf}")
        pm.write_hf_checkpoint(hf, cfg, seed=args.seed)
        pm.write_tokenizer(hf, cfg["vocab_size"])
    paths = {"hf": hf, "gguf": {}, "dsv3": {}}
    bf16 = os.path.join(base, "llama-BF16.gguf")
    if not os.path.exists(bf16):
        log("converting with llama.cpp's convert_hf_to_gguf.py -> BF16")
        run([sys.executable, "-c", CONVERT_WRAPPER, tree, hf, "--outtype", "bf16", "--outfile", bf16 + ".tmp"])
        os.replace(bf16 + ".tmp", bf16)
    paths["gguf"]["BF16"] = bf16
    for fmt in formats:
        q = rep.PAIRS[fmt]
        out = os.path.join(base, f"llama-{q}.gguf")
        if q != "BF16" and not os.path.exists(out):
            log(f"llama-quantize --pure -> {q}")
            run([os.path.join(bindir, "llama-quantize"), "--pure"] + GGUF_QUANT[q][:-1] +
                [bf16, out + ".tmp", GGUF_QUANT[q][-1], "2"], env=llama_env(env, bindir))
            os.replace(out + ".tmp", out)
        paths["gguf"][q] = out
        d = os.path.join(base, f"dsv3-{fmt}" + ("g32" if fmt == "int4" else ""))
        if not os.path.exists(os.path.join(d, "config.json")):
            log(f"dsv3 convert --format {fmt}")
            run([sys.executable, "-m", "dsv3", "convert", "--quiet"] + dsv3_convert_args(fmt) + [hf, d + ".tmp"], env=env)
            os.replace(d + ".tmp", d)
        paths["dsv3"][fmt] = d
    return paths


# ---------------------------------------------------------------- the dsv3 worker (one process per rep)
def worker(spec):
    """Run the tests of ``spec`` (model path, tests, seed) on dsv3; print one JSON line."""
    import dsv3
    import dsv3._native

    tests = [rep.parse_test(t) for t in spec["tests"]]
    need = max(max(n + d, n) for _, n, d in tests) + 8
    t0 = time.perf_counter()
    model = dsv3.Model.from_pretrained(spec["model"], max_seq_len=need)
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    has_logits = "logits" in inspect.signature(model.forward).parameters
    kw = {"logits": "last"} if has_logits else {}
    rng = np.random.default_rng(spec["seed"])

    def ids(n, first_bos):
        x = rng.integers(0, vocab, n, dtype=np.int64)
        if first_bos:
            x[0] = model.config.bos_token_id or 0
        return x

    out = []
    for kind, n, depth in tests:
        model.reset()
        if kind == "pp":
            model.forward(ids(n, True), **kw)  # warm-up: a full prompt, as llama-bench
            model.reset()
            x = ids(n, True)
            t = time.perf_counter()
            model.forward(x, **kw)
            dt = time.perf_counter() - t
        else:
            model.forward(ids(1, True))  # warm-up: one token
            model.reset()
            if depth:
                model.forward(ids(depth, True), **kw)
            tok = ids(n, not depth)
            t = time.perf_counter()
            for i in range(n):
                model.forward(tok[i:i + 1])
            dt = time.perf_counter() - t
        out.append({"test": rep.test_name(kind, n, depth), "s": dt, "tps": n / dt})
    print(json.dumps({"results": out, "load_s": load_s, "num_threads": dsv3.get_num_threads(),
                      "isa": dsv3.cpu_info()["isa"], "wait_policy_applied": dsv3._native.OMP_WAIT_POLICY_APPLIED,
                      "os_threads": len(os.listdir("/proc/self/task")),
                      "prefill_logits": "last" if has_logits else "all"}), flush=True)


def _child_cpu():
    r = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_measured(cmd, env):
    """Run cmd to completion; returns (stdout, wall s, CPU s used by it and its threads)."""
    c0, t0 = _child_cpu(), time.perf_counter()
    res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res.stdout, wall, cpu


def engine_env(base_env, threads, wait, isa):
    """The environment of one measured process: threads and the libgomp wait policy, same for both engines."""
    env = {k: v for k, v in base_env.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                                          "DSV3_NUM_THREADS")}
    env.update(rep.wait_env(wait))
    env["OMP_NUM_THREADS"] = str(threads)
    env["DSV3_NUM_THREADS"] = str(threads)
    if isa:
        env["DSV3_ISA"] = isa
    return env


def llama_bench_once(bindir, gguf, tests, threads, env):
    """One llama-bench run (-r 1) of ``tests``; returns ({test: tok/s}, wall, cpu, raw json)."""
    parsed = [rep.parse_test(t) for t in tests]
    calls = {}
    for kind, n, depth in parsed:  # llama-bench crosses -p, -n and -d: one call per depth
        calls.setdefault(depth, {"pp": [], "tg": []})[kind].append(n)
    got, wall, cpu, raw = {}, 0.0, 0.0, []
    for depth, d in sorted(calls.items()):
        cmd = [os.path.join(bindir, "llama-bench"), "-m", gguf, "-r", "1", "-t", str(threads), "-o", "json",
               "-p", ",".join(map(str, d["pp"])) or "0", "-n", ",".join(map(str, d["tg"])) or "0",
               "-d", str(depth)]
        out, w, c = run_measured(cmd, llama_env(env, bindir))
        wall += w
        cpu += c
        res = json.loads(out)
        raw += res
        for r in res:
            if r["n_threads"] != threads:
                raise RuntimeError(f"llama-bench ran {r['n_threads']} threads, asked {threads}")
            if r["n_prompt"] and not r["n_gen"]:
                name = rep.test_name("pp", r["n_prompt"])
            elif r["n_gen"] and not r["n_prompt"]:
                name = rep.test_name("tg", r["n_gen"], r["n_depth"])
            else:
                continue
            got[name] = r["n_prompt"] / (r["samples_ns"][0] * 1e-9) if r["n_prompt"] else \
                r["n_gen"] / (r["samples_ns"][0] * 1e-9)
    return got, wall, cpu, raw


def dsv3_once(model_dir, tests, threads, env, seed):
    spec = json.dumps({"model": model_dir, "tests": list(tests), "seed": seed})
    out, wall, cpu = run_measured([sys.executable, os.path.abspath(__file__), "--worker", spec], env)
    res = json.loads(out.strip().splitlines()[-1])
    if res["num_threads"] != threads:
        raise RuntimeError(f"dsv3 worker ran {res['num_threads']} threads, asked {threads}")
    return {r["test"]: r["tps"] for r in res["results"]}, wall, cpu, res


# ---------------------------------------------------------------- logits check
def check_logits(args, cache, tree, bindir, env):
    """bf16 logits (all prompt positions) and greedy tokens of dsv3 and llama.cpp vs transformers fp32."""
    import peers_model as pm

    cfg = pm.model_config(args.check_size)
    base = os.path.join(args.models, f"{args.check_size}-s{args.seed}")
    hf = os.path.join(base, "hf")
    if not os.path.exists(os.path.join(hf, "tokenizer.json")):
        pm.write_hf_checkpoint(hf, cfg, seed=args.seed)
        pm.write_tokenizer(hf, cfg["vocab_size"])
    bf16 = os.path.join(base, "llama-BF16.gguf")
    if not os.path.exists(bf16):
        run([sys.executable, "-c", CONVERT_WRAPPER, tree, hf, "--outtype", "bf16", "--outfile", bf16 + ".tmp"])
        os.replace(bf16 + ".tmp", bf16)
    n_prompt, n_gen = 16, 8
    rng = np.random.default_rng(args.seed + 1)
    ids = rng.integers(2, cfg["vocab_size"], n_prompt).astype(np.int32)
    ids[0] = 0  # BOS
    work = os.path.join(base, "check")
    os.makedirs(work, exist_ok=True)
    ids_path = os.path.join(work, "ids.bin")
    with open(ids_path, "wb") as f:
        f.write(np.array([n_prompt], np.int32).tobytes() + ids.tobytes())
    engines = {}
    # llama.cpp
    exe = llama_logits_tool(cache, tree, bindir)
    out = os.path.join(work, "llama.bin")
    run([exe, bf16, ids_path, str(n_gen), "2", out], env=llama_env(env, bindir))
    raw = np.fromfile(out, np.int32)
    nv = int(raw[0])
    engines["llama.cpp BF16"] = (raw[1:1 + n_prompt * nv].view(np.float32).reshape(n_prompt, nv),
                                 raw[1 + n_prompt * nv:].tolist())
    # dsv3 (own process: its libgomp environment)
    code = ("import sys, json, numpy as np, dsv3\n"
            "m = dsv3.Model.from_pretrained(sys.argv[1]); ids = np.fromfile(sys.argv[2], np.int32)[1:].astype(np.int64)\n"
            "lg = m.forward(ids); np.save(sys.argv[3], lg); t = int(np.argmax(lg[-1])); g = []\n"
            f"for _ in range({n_gen}):\n"
            "    g.append(t); t = int(np.argmax(m.forward(np.array([t]))[-1]))\n"
            "print(json.dumps(g))\n")
    npy = os.path.join(work, "dsv3.npy")
    g = json.loads(run([sys.executable, "-c", code, hf, ids_path, npy], env=env).strip().splitlines()[-1])
    engines["dsv3 bf16"] = (np.load(npy), g)
    # transformers fp32
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        x = torch.tensor(ids[None].astype(np.int64))
        ref = model(x).logits[0].float().numpy()
        seq, greedy = x, []
        for _ in range(n_gen):
            t = int(model(seq).logits[0, -1].argmax())
            greedy.append(t)
            seq = torch.cat([seq, torch.tensor([[t]])], 1)
    res = {"size": args.check_size, "n_prompt": n_prompt, "n_gen": n_gen, "ref_std": float(ref.std()),
           "ref_greedy": greedy, "engines": {}}
    for name, (lg, gg) in engines.items():
        res["engines"][name] = {"max_abs_err": float(np.abs(lg - ref).max()),
                                "top1_agree": int((lg.argmax(1) == ref.argmax(1)).sum()),
                                "greedy_equal": int(sum(a == b for a, b in zip(gg, greedy))), "greedy": gg}
    return res


# ---------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="default", choices=["tiny", "small", "default"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set num_hidden_layers=2 (repeatable)")
    ap.add_argument("--formats", default="bf16,int8,fp8_block,int4,nvfp4", help="dsv3 formats (pairs: %s)" %
                    ", ".join(f"{k}~{v}" for k, v in rep.PAIRS.items()))
    ap.add_argument("--tests", default=",".join(rep.DEFAULT_TESTS), help="llama-bench names: ppN, tgN, tgN@dD")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--wait", default="passive,active", help="libgomp wait policies: passive, active, spinN")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--llama", default="native", choices=sorted(LLAMA_VARIANTS), help="llama.cpp build variant")
    ap.add_argument("--isa", default=None, help="DSV3_ISA for dsv3 (default: the environment's, else auto)")
    ap.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                    help="compare logits with transformers fp32 (default on)")
    ap.add_argument("--check-size", default="small", choices=["tiny", "small", "default"])
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 reps, pp128/tg64/tg64@d256, bf16+int8+int4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/dsv3-bench"))
    ap.add_argument("--models", default=None, help="where models go (default CACHE/models)")
    ap.add_argument("--jobs", type=int, default=2, help="build jobs")
    ap.add_argument("--json", default=None)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.reps, args.check_size = "tiny", 2, "tiny"
        if args.tests == ",".join(rep.DEFAULT_TESTS):
            args.tests = "pp128,tg64,tg64@d256"
        if args.formats == ap.get_default("formats"):
            args.formats = "bf16,int8,int4"
    args.set_dict = {}
    for s in args.set:
        k, _, v = s.partition("=")
        args.set_dict[k] = json.loads(v) if v[:1] in "[{0123456789-tfn" else v
    args.models = args.models or os.path.join(args.cache, "models")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    import peers_model as pm

    formats = [f for f in args.formats.split(",") if f]
    for f in formats:
        if f not in rep.PAIRS:
            raise SystemExit(f"unknown format {f!r}; choose from {list(rep.PAIRS)}")
    tests = [t for t in args.tests.split(",") if t]
    for t in tests:
        rep.parse_test(t)
    threads = [int(t) for t in args.threads.split(",")]
    waits = [w for w in args.wait.split(",") if w]
    for w in waits:
        rep.wait_env(w)
    isa = args.isa or os.environ.get("DSV3_ISA")
    base_env = dict(os.environ)
    base_env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in base_env.get("PYTHONPATH", "").split(os.pathsep) if p])

    tree = llama_source(args.cache)
    bindir = llama_build(args.cache, tree, args.llama, args.jobs)
    if args.build_only:
        print(bindir)
        return 0
    cfg = pm.model_config(args.size, **args.set_dict)
    paths = make_models(args, cfg, tree, bindir, formats, base_env)

    check = None
    if args.check:
        log(f"logits check on the {args.check_size} model")
        check = check_logits(args, args.cache, tree, bindir, engine_env(base_env, 2, waits[0], isa))
        print(rep.parity_markdown(check) + "\n", flush=True)

    samples, procs = [], []
    outp = args.json or os.path.join(HERE, "results",
                                     f"bench_peers-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    log(f"measuring: {len(formats)} formats x threads {threads} x wait {waits} x {args.reps} reps, tests {tests}")
    for r in range(args.reps):
        k = r  # alternate the order pair by pair, and flip every pair's order from one rep to the next
        for wait in waits:
            for t in threads:
                env = engine_env(base_env, t, wait, isa)
                for fmt in formats:
                    q = rep.PAIRS[fmt]
                    order = ("llama", "dsv3") if k % 2 == 0 else ("dsv3", "llama")
                    k += 1
                    for eng in order:
                        if eng == "llama":
                            got, wall, cpu, raw = llama_bench_once(bindir, paths["gguf"][q], tests, t, env)
                            info = {}
                        else:
                            got, wall, cpu, info = dsv3_once(paths["dsv3"][fmt], tests, t, env, args.seed + r)
                        procs.append({"engine": eng, "fmt": q if eng == "llama" else fmt, "threads": t, "wait": wait,
                                      "rep": r, "wall_s": wall, "cpu_s": cpu, "cores_used": cpu / wall,
                                      **{k_: v for k_, v in info.items() if k_ != "results"}})
                        for test, tps in got.items():
                            samples.append({"engine": eng, "fmt": q if eng == "llama" else fmt, "threads": t,
                                            "wait": wait, "test": test, "rep": r, "tps": tps})
                    log(f"rep {r} {wait} t{t} {fmt}~{q}: " + ", ".join(
                        f"{s['test']} {s['engine']} {s['tps']:.1f}" for s in samples[-2 * len(tests):]))
        report(args, cfg, tree, bindir, isa, check, samples, procs, outp, r == args.reps - 1)
    return 0


def report(args, cfg, tree, bindir, isa, check, samples, procs, outp, final):
    """Print the table (and per-process core use) and write the JSON; called after every rep, so a run cut
    short keeps what it measured."""
    import peers_model as pm

    rows = rep.summarize(samples)
    table = rep.markdown(rows)
    print(table if final else f"(after rep {samples[-1]['rep'] if samples else '-'})\n" + table, flush=True)
    cores = {}
    for p in procs:
        cores.setdefault((p["engine"], p["threads"], p["wait"]), []).append(p["cores_used"])
    print("\nCPU time / wall time per process (median; 1 thread ~1, 2 threads up to 2 on an idle machine):")
    for (e, t, w), v in sorted(cores.items()):
        print(f"  {e:5s} threads {t} {w}: {np.median(v):.2f}")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv, "dsv3_commit": _git(ROOT), "llama": llama_commit(tree), "llama_variant": args.llama,
            "llama_cpu_lib": llama_cpu_lib(bindir), "dsv3_isa": isa or "auto", "size": args.size, "config": cfg,
            "params": pm.param_count(cfg),
            "loadavg": os.getloadavg(), "complete": final, "cpu": platform.processor() or _cpu_model(), "nproc": os.cpu_count()}
    os.makedirs(os.path.dirname(outp), exist_ok=True)
    with open(outp, "w") as f:
        json.dump({"meta": meta, "check": check, "rows": rows, "samples": samples, "processes": procs}, f, indent=1)
    print(f"\n{meta['date']} dsv3 {meta['dsv3_commit']} llama.cpp {meta['llama']} ({args.llama}), "
          f"DSV3_ISA={meta['dsv3_isa']}, load {meta['loadavg'][0]:.1f}; JSON: {outp}")


def _git(path):
    try:
        r = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return r.stdout.strip() or None
    except OSError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            return m.group(1) if m else None
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())

"""Build the dsv3._dsv3 extension from the C99 sources under csrc/.

Every ``*.c`` under csrc/ (except csrc/tests) is compiled. ISA-specific kernels are named for the
ISA they need and get only those flags:  ``*_avx2.c`` -> AVX2+FMA+F16C, ``*_avx512.c`` ->
AVX-512 F/BW/VL/DQ + BF16/VNNI/VBMI. Nothing is built with -march=native; the path used at run time
is chosen once from CPUID (csrc/core/cpu.c).
"""
import glob
import os
import sys

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
BASE_FLAGS = ["-std=c99", "-O3", "-fopenmp", "-Wall", "-Wextra", "-fno-strict-aliasing",
              "-D_GNU_SOURCE", "-fvisibility=hidden"]
ISA_FLAGS = {
    "_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512.c": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                  "-mavx512dq", "-mavx512bf16", "-mavx512vnni", "-mavx512vbmi"],
}


def onednn_include_dir():
    """Header dir of the onednn-devel-cpu-gomp wheel (installed as data files under a prefix)."""
    try:
        from importlib.metadata import distribution
        dist = distribution("onednn-devel-cpu-gomp")
        for f in dist.files or []:
            if str(f).endswith("oneapi/dnnl/dnnl.h"):
                return os.path.normpath(str(dist.locate_file(f))[: -len("oneapi/dnnl/dnnl.h")])
    except Exception:
        pass
    for prefix in (sys.prefix, sys.base_prefix, "/usr"):
        cand = os.path.join(prefix, "include")
        if os.path.exists(os.path.join(cand, "oneapi", "dnnl", "dnnl.h")):
            return cand
    raise RuntimeError("oneDNN headers not found: install onednn-devel-cpu-gomp==2023.2.0")


class BuildExt(build_ext):
    """Per-file ISA flags; compiles files in parallel (the build machine has 2 cores)."""

    def build_extension(self, ext):
        compiler = self.compiler
        orig = compiler._compile

        def _compile(obj, src, ext_, cc_args, extra_postargs, pp_opts):
            extra = list(extra_postargs)
            for suffix, flags in ISA_FLAGS.items():
                if src.endswith(suffix):
                    extra += flags
            return orig(obj, src, ext_, cc_args, extra, pp_opts)

        compiler._compile = _compile
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1
        try:
            super().build_extension(ext)
        finally:
            compiler._compile = orig


sources = sorted(s for s in glob.glob("csrc/**/*.c", recursive=True)
                 if not s.startswith(os.path.join("csrc", "tests")))
ext = Extension(
    "dsv3._dsv3",
    sources=sources,
    include_dirs=["csrc/include", "csrc", numpy.get_include(), onednn_include_dir()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION")],
    extra_compile_args=BASE_FLAGS,
    extra_link_args=["-fopenmp", "-ldl"],
)
setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})

"""Loads the C extension once: registers ml_dtypes' dtypes with it and loads oneDNN.

OpenMP wait policy. GNU OpenMP's default lets idle threads spin for ~300000 iterations after each
parallel region. On machines whose cores are shared with other work (cloud VMs, CI, several jobs on
2 cores), the spinning threads steal the CPU from the thread that still has work: decode was
measured 3-10x slower there. Unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT, dsv3 sets
GOMP_SPINCOUNT=1000 (~20 us of spinning, then sleep) before libgomp starts: on an idle machine this
costs nothing measurable (decode within noise of the default), under contention it keeps the fast
case (see BENCHMARKS.md, "Forward pass"). libgomp reads its environment once, when it is loaded:
if another library loaded it earlier (e.g. ``import torch`` before ``import dsv3``, which shares
torch's libgomp), the setting cannot apply; ``OMP_WAIT_POLICY_APPLIED`` says what happened.
"""
import os

import ml_dtypes

DEFAULT_SPINCOUNT = "1000"


def _set_default_wait_policy():
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "user"
    try:
        with open("/proc/self/maps") as f:
            if any("libgomp" in line for line in f):
                return "too late (libgomp already loaded)"
    except OSError:
        pass
    os.environ["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
    return f"GOMP_SPINCOUNT={DEFAULT_SPINCOUNT}"


OMP_WAIT_POLICY_APPLIED = _set_default_wait_policy()

from . import _dsv3  # noqa: E402  (after the environment above)

_dsv3._register_dtypes(bfloat16=ml_dtypes.bfloat16, float8_e4m3fn=ml_dtypes.float8_e4m3fn,
                       float8_e5m2=ml_dtypes.float8_e5m2, float8_e8m0fnu=ml_dtypes.float8_e8m0fnu,
                       float4_e2m1fn=ml_dtypes.float4_e2m1fn)

lib = _dsv3

"""Loads the C extension once: registers ml_dtypes' dtypes with it and loads oneDNN."""
import ml_dtypes

from . import _dsv3

_dsv3._register_dtypes(bfloat16=ml_dtypes.bfloat16, float8_e4m3fn=ml_dtypes.float8_e4m3fn,
                       float8_e5m2=ml_dtypes.float8_e5m2, float8_e8m0fnu=ml_dtypes.float8_e8m0fnu,
                       float4_e2m1fn=ml_dtypes.float4_e2m1fn)

lib = _dsv3

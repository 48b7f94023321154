"""benchmarks/plot_benchmarks.py draws its pictures from benchmark JSON of the shape the benchmarks write."""
import importlib.util
import json
import os

import pytest

pytest.importorskip("matplotlib")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
    spec = importlib.util.spec_from_file_location("plot_benchmarks", os.path.join(ROOT, "benchmarks",
                                                                                   "plot_benchmarks.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _linear_json():
    rows = []
    for variant, gbps in (("bf16", 30.0), ("int4", 20.0)):
        for m in (1, 16, 512):
            wb = 2048 * 7168 * (2 if variant == "bf16" else 0.53)
            t = wb / (gbps * 1e9) if m == 1 else 2 * m * 2048 * 7168 / 300e9
            rows.append({"variant": variant, "shape": "expert_down", "M": m, "N": 7168, "K": 2048,
                         "weight_bytes": wb, "dsv3_s": t, "gflops": 2 * m * 2048 * 7168 / t * 1e-9,
                         "gbps": wb / t * 1e-9, "frac_bw": wb / t * 1e-9 / 40.0})
    return {"date": "2026-11-29T00:00:00", "machine": {"isa": "avx512", "threads": 2},
            "roofline": {"read_gbps": 40.0, "read_gbps_1thread": 25.0,
                         "peak_gflops": {"f32_fma": 230.0, "bf16_dot": 460.0, "int8_dot": 920.0}},
            "rows": rows}


def test_plots_are_written(tmp_path):
    lin, peers = tmp_path / "lin.json", tmp_path / "peers.json"
    lin.write_text(json.dumps(_linear_json()))
    ratio = lambda v: {"min": v * 0.9, "median": v, "max": v * 1.1, "n": 2}  # noqa: E731 (bench_peers' row shape)
    peers.write_text(json.dumps({"rows": [
        {"fmt": "bf16", "peer": "BF16", "test": "tg64", "threads": 2, "wait": "passive", "ratio": ratio(1.2)},
        {"fmt": "int4", "peer": "Q4_0", "test": "pp512", "threads": 1, "wait": "passive", "ratio": ratio(0.7)}]}))
    out = tmp_path / "fig"
    mod = _module()
    assert mod.main(["--linear", str(lin), "--peers", str(peers), "--out", str(out)]) == 0
    for name in ("roofline.png", "decode_bw.png", "peers.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_missing_json_is_reported(tmp_path):
    mod = _module()
    assert mod.main(["--linear", str(tmp_path / "no.json"), "--peers", str(tmp_path / "no2.json"),
                     "--out", str(tmp_path / "fig")]) == 1

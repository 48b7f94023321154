"""Cross-checks with the io layer (dsv3.load_config / dsv3.checkpoint):
DeepseekConfig.to_native() must equal this suite's independent conversion, and
Model.from_pretrained on a checkpoint saved by transformers must give transformers' logits."""
import numpy as np
import pytest

import dsv3
from hf_reference import CONFIGS, build_hf, hf_logits, max_abs, native_config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_to_native_matches_independent_conversion(name):
    hf = build_hf(name)
    ours = native_config(hf.config)
    theirs = dsv3.load_config(hf.config.to_dict()).to_native()
    assert set(theirs) == set(ours)
    for key, value in ours.items():
        if key == "rope_inv_freq":
            np.testing.assert_array_equal(np.asarray(theirs[key], np.float32), value, err_msg=key)
        elif isinstance(value, float):
            assert theirs[key] == pytest.approx(value, rel=1e-12, abs=0), key
        else:
            assert theirs[key] == value, key


@pytest.mark.parametrize("name", ["tiny", "v2_lite"])
def test_from_pretrained_matches_transformers(name, tmp_path):
    hf = build_hf(name)
    hf.save_pretrained(tmp_path)
    m = dsv3.Model.from_pretrained(str(tmp_path), max_seq_len=32, precision="exact")
    ids = np.array([5, 1, 77, 3, 12], dtype=np.int64)
    assert max_abs(m.forward(ids), hf_logits(hf, ids)) < 1e-4

"""Attention leaf kernels (csrc/mla/attend_*.c): every ISA is bitwise equal to the scalar reference
(the summation order is part of the contract), the reference is close to a float64 numpy product, and
absorbed attention agrees across ISAs."""
import numpy as np
import pytest

from dsv3._native import lib
from hf_reference import build_pair

SUPPORTED = [i for i in lib.isa_info()[1] if i != "scalar"]
RNG = np.random.default_rng(7)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("na,nb,n", [(1, 1, 1), (3, 5, 15), (4, 2, 16), (5, 3, 17), (16, 9, 576), (7, 1, 40),
                                     (2, 64, 33), (0, 3, 8)])
def test_dots_matches_reference(na, nb, n):
    a, b = rand(na, n), rand(nb, n)
    ref = lib.mla_dots(a, b, isa="scalar")
    exact = a.astype(np.float64) @ b.astype(np.float64).T
    assert ref.shape == (na, nb)
    np.testing.assert_allclose(ref, exact, rtol=1e-5, atol=1e-5 * np.sqrt(n))
    for isa in SUPPORTED:
        np.testing.assert_array_equal(lib.mla_dots(a, b, isa=isa), ref, err_msg=isa)


@pytest.mark.parametrize("np_,T,n", [(1, 1, 1), (3, 7, 15), (8, 5, 32), (9, 3, 33), (16, 130, 128), (2, 128, 512),
                                     (17, 4, 48), (1, 0, 5), (5, 9, 0)])
def test_wsum_matches_reference(np_, T, n):
    p, x = rand(np_, T), rand(T, n)
    ref = lib.mla_wsum(p, x, isa="scalar")
    exact = p.astype(np.float64) @ x.astype(np.float64)
    assert ref.shape == (np_, n)
    np.testing.assert_allclose(ref, exact, rtol=1e-5, atol=1e-5 * np.sqrt(max(T, 1)))
    for isa in SUPPORTED:
        np.testing.assert_array_equal(lib.mla_wsum(p, x, isa=isa), ref, err_msg=isa)


def test_dots_order_is_sixteen_lanes():
    """Cancellation exposes the order: lane sums first, then the pairwise tree."""
    a = np.zeros((1, 32), np.float32)
    b = np.ones((1, 32), np.float32)
    a[0, 0], a[0, 16], a[0, 1] = 1e8, -1e8, 1.0  # lane 0 cancels exactly before meeting lane 1
    assert lib.mla_dots(a, b, isa="scalar")[0, 0] == 1.0
    for isa in SUPPORTED:
        assert lib.mla_dots(a, b, isa=isa)[0, 0] == 1.0


def test_kernel_bad_input():
    with pytest.raises(ValueError, match="columns"):
        lib.mla_dots(rand(2, 3), rand(2, 4))
    with pytest.raises(ValueError, match="rows"):
        lib.mla_wsum(rand(2, 3), rand(4, 3))
    with pytest.raises(TypeError):
        lib.mla_dots(rand(2, 3).astype(np.float64), rand(2, 3))
    with pytest.raises(ValueError):
        lib.mla_wsum(rand(2, 3), rand(3, 3), isa="sse9")


@pytest.mark.parametrize("isa", SUPPORTED)
def test_absorbed_attention_agrees_across_isas(isa):
    """Absorbed attention (prefill with a cache, then one decode token) on each ISA agrees with the
    scalar path (not bitwise: the linear layers around the kernels have per-ISA orders)."""
    _, m = build_pair("grouped", attention="absorbed")
    x = rand(7, 32)
    outs = {}
    for which in ("scalar", isa):
        m.reset()
        a = m.run_module("attention", 1, x[:6], start_pos=0, use_cache=True, isa=which)
        b = m.run_module("attention", 1, x[6:], start_pos=6, use_cache=True, isa=which)
        outs[which] = np.concatenate([a, b])
    m.reset()
    assert np.std(outs["scalar"]) > 1e-3
    np.testing.assert_allclose(outs[isa], outs["scalar"], rtol=1e-5, atol=1e-6)

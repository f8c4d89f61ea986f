"""jconv against the float64 NumPy reference (no lax, no torch)."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import arrays_for, jconv_grads, random_case, rel_err, tiered

import jconv


@pytest.mark.parametrize("seed", tiered(range(1000, 1080), 10))
def test_forward_matches_numpy_reference(seed):
    case = random_case(seed)
    cfg = case.cfg()
    x, w, b, _ = arrays_for(case, cfg)
    xb = x if case.batched else x[None]
    want = reference.conv(
        xb, w, b, cfg.stride, cfg.pads, cfg.dilation, cfg.groups, cfg.padding_mode
    )
    want = want if case.batched else want[0]
    got = jconv.apply(jconv.Params(jnp.asarray(w), b, cfg), x)
    chex.assert_shape(got, want.shape)
    assert rel_err(got, want) <= 2e-5, str(case)


@pytest.mark.parametrize("seed", tiered(range(2000, 2060), 8))
def test_gradients_match_numpy_reference(seed):
    case = random_case(seed)
    kwargs = dict(case.kwargs, padding_mode="zeros")
    cfg = type(case.cfg())(**kwargs)
    x, w, b, gy = arrays_for(case, cfg)
    y, dx, dw, db = jconv_grads(cfg, x, w, b, gy, case.jit)
    xb, gyb = (x, gy) if case.batched else (x[None], gy[None])
    rdx, rdw, rdb = reference.conv_vjp(xb, w, gyb, cfg.stride, cfg.pads, cfg.dilation, cfg.groups)
    rdx = rdx if case.batched else rdx[0]
    assert rel_err(dx, rdx) <= 2e-5, str(case)
    assert rel_err(dw, rdw) <= 2e-5, str(case)
    if cfg.bias:
        assert rel_err(db, rdb) <= 2e-5, str(case)


def test_reference_agrees_with_a_hand_computed_example():
    """A 1-d sanity check of the reference itself, worked out by hand."""
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    w = np.array([[[1.0, -1.0]]])
    y = reference.conv(x, w, None, (1,), ((1, 0),), (1,), 1)
    np.testing.assert_array_equal(y, [[[-1.0, -1.0, -1.0, -1.0]]])
    y = reference.conv(x, w, np.array([10.0]), (2,), ((0, 0),), (1,), 1)
    np.testing.assert_array_equal(y, [[[9.0, 9.0]]])

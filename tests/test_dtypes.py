"""Parameter dtype, compute dtype, preferred_element_type and precision."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import tiered

import jconv

X = jax.random.normal(jax.random.key(1), (2, 4, 9, 9))


def _pair(**kw):
    base = jconv.Conv2d(4, 8, 3, padding=1)
    params = jconv.init(jax.random.key(0), base)
    cfg = jconv.Conv2d(4, 8, 3, padding=1, **kw)
    return jconv.apply(params, X), jconv.Params(params.weight, params.bias, cfg)


def test_bf16_compute_with_float32_params():
    ref, params = _pair(compute_dtype=jnp.bfloat16)
    chex.assert_type(params.weight, jnp.float32)
    y = jconv.apply(params, X)
    chex.assert_type(y, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=0.05, atol=0.05)
    grads = jax.grad(lambda p: jnp.sum(jconv.apply(p, X).astype(jnp.float32)))(params)
    chex.assert_type(grads.weight, jnp.float32)  # gradients come back in the params' dtype


def test_bf16_params_and_input():
    cfg = jconv.Conv1d(3, 5, 3, dtype=jnp.bfloat16)
    params = jconv.init(jax.random.key(0), cfg)
    chex.assert_type([params.weight, params.bias], jnp.bfloat16)
    y = jconv.apply(params, jnp.ones((2, 3, 7), jnp.bfloat16))
    chex.assert_type(y, jnp.bfloat16)
    chex.assert_shape(y, (2, 5, 5))


def test_preferred_element_type_accumulates_wider():
    ref, params = _pair(compute_dtype=jnp.bfloat16, preferred_element_type=jnp.float32)
    y = jconv.apply(params, X)
    chex.assert_type(y, jnp.float32)
    np.testing.assert_allclose(y, ref, rtol=0.05, atol=0.05)


def test_precision_is_accepted_and_exact_on_cpu():
    ref, params = _pair(precision="highest")
    assert params.cfg.precision == jax.lax.Precision.HIGHEST
    chex.assert_trees_all_close(jconv.apply(params, X), ref, rtol=1e-6, atol=1e-6)
    ref, params = _pair(precision=("highest", "default"))
    chex.assert_trees_all_close(jconv.apply(params, X), ref, rtol=1e-6, atol=1e-6)


def test_float64_input_promotes_like_jax():
    params = jconv.init(jax.random.key(0), jconv.Conv2d(4, 8, 3))
    y = jconv.apply(params, np.asarray(X, np.float64))  # x64 disabled: computes in float32
    chex.assert_type(y, jnp.float32)


def _bf16_case(cfg, shape, seed=0):
    rng = np.random.RandomState(seed)
    params = jconv.init(jax.random.key(seed), cfg)
    x = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    out = jax.eval_shape(lambda: jconv.apply(params, x))
    gy = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
    y, vjp = jax.vjp(lambda p, x: jconv.apply(p, x), params, x)
    gp, gx = vjp(gy)
    return params, x, gy, y, gx, gp


def _ulps_off(mine, want64):
    """Per element, how many bfloat16 steps ``mine`` lies from ``want64`` rounded once."""
    once = np.asarray(want64.astype(jnp.bfloat16), np.float32)
    mine = np.asarray(mine, np.float32)
    step = np.spacing(np.abs(once).astype(jnp.bfloat16)).astype(np.float32)
    return np.abs(mine - once) / np.maximum(step, np.finfo(np.float32).tiny)


def test_bf16_bias_gradient_sums_in_float32():
    """db is the float32 sum of the bfloat16 cotangent, rounded once, as torch's is
    (a bfloat16 running sum of 8,192 terms would be hundreds of steps off)."""
    cfg = jconv.Conv2d(4, 6, 3, padding=1, dtype=jnp.bfloat16)
    _, _, gy, _, _, gp = _bf16_case(cfg, (8, 4, 32, 32))
    want = np.asarray(gy, np.float64).sum(axis=(0, 2, 3))
    assert _ulps_off(gp.bias, want).max() <= 1


BF16_CASES = [
    (jconv.Conv2d(16, 32, 3, padding=1, dtype=jnp.bfloat16), (4, 16, 20, 20)),
    (jconv.Conv2d(8, 8, 1, dtype=jnp.bfloat16), (4, 8, 20, 20)),
    (jconv.Conv2d(8, 8, 3, padding=1, groups=8, dtype=jnp.bfloat16), (4, 8, 20, 20)),
]


def _bf16_reference(params, x, gy):
    """float64 output and gradients of the bfloat16 values (bias included)."""
    cfg = params.cfg
    args = [np.asarray(a, np.float64) for a in (x, params.weight, gy)]
    conv = dict(stride=cfg.stride, pads=cfg.pads, dilation=cfg.dilation, groups=cfg.groups)
    y = reference.conv(args[0], args[1], np.asarray(params.bias, np.float64), **conv)
    return (y, *reference.conv_vjp(*args, **conv))


def test_bf16_with_a_bias_is_rounded_once():
    """The bias joins the float32 sums before the one rounding to bfloat16: the output
    and every gradient are the exact result rounded once, up to the float32 sums'
    own rounding (which may move an element near a rounding boundary by one step)."""
    for cfg, shape in BF16_CASES:
        params, x, gy, y, gx, gp = _bf16_case(cfg, shape)
        ref = _bf16_reference(params, x, gy)
        for name, mine, want in zip(("y", "dx", "dw", "db"), (y, gx, gp.weight, gp.bias), ref):
            chex.assert_type(mine, jnp.bfloat16)
            off = _ulps_off(mine, want)
            assert off.max() <= 1, f"{cfg} {name}: {off.max():.0f} bfloat16 steps off"
            assert np.mean(off == 0) >= 0.99, f"{cfg} {name}: {np.mean(off == 0):.2%} exact"


def test_bf16_with_a_bias_agrees_with_torch(torch):
    """torch's bfloat16 CPU kernels round differently on different instruction sets
    (bit-equality held on AVX-512 and failed on AVX2), so the comparison is within a
    bfloat16 tolerance: a few steps of the output's scale."""
    for cfg, shape in BF16_CASES:
        params, x, gy, y, gx, gp = _bf16_case(cfg, shape)
        t = torch.nn.Conv2d(
            cfg.in_channels, cfg.out_channels, cfg.kernel_size, padding=cfg.padding,
            groups=cfg.groups, dtype=torch.bfloat16,
        )  # fmt: skip
        with torch.no_grad():
            t.weight.copy_(torch.tensor(np.asarray(params.weight, np.float32)))
            t.bias.copy_(torch.tensor(np.asarray(params.bias, np.float32)))
        xt = torch.tensor(np.asarray(x, np.float32)).bfloat16().requires_grad_()
        yt = t(xt)
        yt.backward(torch.tensor(np.asarray(gy, np.float32)).bfloat16())
        pairs = [(y, yt), (gx, xt.grad), (gp.weight, t.weight.grad), (gp.bias, t.bias.grad)]
        for name, (mine, theirs) in zip(("y", "dx", "dw", "db"), pairs):
            mine, theirs = np.asarray(mine, np.float32), theirs.detach().float().numpy()
            scale = np.abs(theirs).max()
            err = np.abs(mine - theirs).max() / scale
            assert err <= 2.0**-5, f"{cfg} {name}: {err:.2e} of the scale {scale:.3g} off torch"


PREFERRED = [
    jconv.Conv2d(4, 4, 3, stride=2, algorithm="tapgrad"),
    jconv.Conv2d(8, 8, 3, padding=1, groups=4, algorithm="shift"),
    jconv.Conv2d(8, 8, 3, padding=1, groups=8, algorithm="shift"),
    jconv.Conv2d(8, 4, 1, algorithm="matmul"),
    jconv.Conv2d(4, 4, 9, padding=4, groups=4, algorithm="fft"),
    jconv.Conv2d(3, 8, 4, stride=2, algorithm="s2d"),
    jconv.Conv3d(4, 4, 3, padding=1, algorithm="fold"),
    jconv.Conv2d(4, 4, 3, padding=1, algorithm="widened"),
    jconv.ConvTranspose2d(4, 4, 4, stride=2, padding=1, algorithm="subpixel"),
    jconv.ConvTranspose2d(8, 8, 3, stride=2, groups=2, algorithm="pergroup"),
]


@pytest.mark.parametrize(
    "cfg", tiered(PREFERRED, [1, 7, 8], ids=[f"{c.algorithm}{i}" for i, c in enumerate(PREFERRED)])
)
def test_preferred_float32_gradients_keep_the_primal_dtypes_on_every_lowering(cfg):
    """bfloat16 in, float32 out: every lowering runs its gradients, in bfloat16."""
    wide = dataclasses.replace(cfg, dtype=jnp.bfloat16, preferred_element_type=jnp.float32)
    ref = dataclasses.replace(wide, algorithm="xla")
    shape = (2, cfg.in_channels) + (9,) * cfg.ndim
    _, _, _, y, gx, gp = _bf16_case(wide, shape)
    _, _, _, y0, gx0, gp0 = _bf16_case(ref, shape)
    chex.assert_type([y, gx, gp.weight, gp.bias], [jnp.float32] + [jnp.bfloat16] * 3)
    for mine, want in [(y, y0), (gx, gx0), (gp.weight, gp0.weight), (gp.bias, gp0.bias)]:
        mine, want = np.asarray(mine, np.float32), np.asarray(want, np.float32)
        assert np.abs(mine - want).max() <= 1e-2 * np.abs(want).max(), cfg

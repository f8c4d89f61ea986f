"""Parameter dtype, compute dtype, preferred_element_type and precision."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

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


def test_bf16_bias_gradient_sums_in_float32():
    """db is the float32 sum of the bfloat16 cotangent, rounded once, as torch's is."""
    cfg = jconv.Conv2d(4, 6, 3, padding=1, dtype=jnp.bfloat16)
    _, _, gy, _, _, gp = _bf16_case(cfg, (8, 4, 32, 32))
    want = np.asarray(gy, np.float32).sum(axis=(0, 2, 3)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(gp.bias), want)


def test_bf16_with_a_bias_is_rounded_once_as_in_torch(torch):
    """The bias joins the float32 sums before the one rounding to bfloat16, so the
    output and every gradient match torch's bfloat16 conv on CPU."""
    for cfg, shape in [
        (jconv.Conv2d(16, 32, 3, padding=1, dtype=jnp.bfloat16), (4, 16, 20, 20)),
        (jconv.Conv2d(8, 8, 1, dtype=jnp.bfloat16), (4, 8, 20, 20)),
        (jconv.Conv2d(8, 8, 3, padding=1, groups=8, dtype=jnp.bfloat16), (4, 8, 20, 20)),
    ]:
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
            same = np.mean(mine == theirs)
            assert same >= 0.999, f"{cfg} {name}: only {same:.2%} of elements equal torch's"


def test_preferred_float32_gradients_keep_the_primal_dtypes_on_every_lowering():
    """bfloat16 in, float32 out: every lowering runs its gradients, in bfloat16."""
    for cfg in [
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
    ]:
        wide = dataclasses.replace(cfg, dtype=jnp.bfloat16, preferred_element_type=jnp.float32)
        ref = dataclasses.replace(wide, algorithm="xla")
        shape = (2, cfg.in_channels) + (9,) * cfg.ndim
        _, _, _, y, gx, gp = _bf16_case(wide, shape)
        _, _, _, y0, gx0, gp0 = _bf16_case(ref, shape)
        chex.assert_type([y, gx, gp.weight, gp.bias], [jnp.float32] + [jnp.bfloat16] * 3)
        for mine, want in [(y, y0), (gx, gx0), (gp.weight, gp0.weight), (gp.bias, gp0.bias)]:
            mine, want = np.asarray(mine, np.float32), np.asarray(want, np.float32)
            assert np.abs(mine - want).max() <= 1e-2 * np.abs(want).max(), cfg

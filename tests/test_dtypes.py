"""Parameter dtype, compute dtype, preferred_element_type and precision."""

from __future__ import annotations

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

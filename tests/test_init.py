"""init: torch's distribution, the right fans, determinism, custom initializers."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv


@pytest.mark.parametrize(
    "cfg",
    [
        jconv.Conv2d(16, 32, 3),
        jconv.Conv1d(8, 64, 7, groups=4),
        jconv.Conv3d(4, 8, (1, 3, 5)),
        jconv.Conv2d(32, 32, 5, groups=32),
    ],
    ids=str,
)
def test_default_init_is_torch_uniform(cfg):
    params = jconv.init(jax.random.key(0), cfg)
    chex.assert_shape(params.weight, cfg.weight_shape)
    chex.assert_shape(params.bias, (cfg.out_channels,))
    chex.assert_type(params.weight, jnp.float32)
    fan_in = (cfg.in_channels // cfg.groups) * math.prod(cfg.kernel_size)
    bound = 1 / math.sqrt(fan_in)
    w = np.asarray(params.weight).ravel()
    assert np.all(np.abs(w) <= bound)
    # U(-b, b): mean 0, std b/sqrt(3); tolerances are 5 standard errors
    n = w.size
    assert abs(w.mean()) < 5 * bound / math.sqrt(3 * n)
    assert abs(w.std() - bound / math.sqrt(3)) < 5 * bound / math.sqrt(5 * n)
    # the values fill the interval: a Kolmogorov-Smirnov distance against U(-b, b)
    cdf = (np.sort(w) + bound) / (2 * bound)
    ks = np.max(np.abs(cdf - (np.arange(1, n + 1) - 0.5) / n))
    assert ks < 1.63 / math.sqrt(n) + 0.5 / n  # 1% level
    assert np.all(np.abs(np.asarray(params.bias)) <= bound)


def test_init_matches_torch_statistics():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ours = np.asarray(jconv.init(jax.random.key(0), jconv.Conv2d(64, 128, 3)).weight)
    theirs = torch.nn.Conv2d(64, 128, 3).weight.detach().numpy()
    assert np.isclose(ours.max(), theirs.max(), atol=1e-3)
    assert np.isclose(ours.min(), theirs.min(), atol=1e-3)
    assert np.isclose(ours.std(), theirs.std(), rtol=0.02)


def test_init_is_deterministic_per_key():
    cfg = jconv.Conv2d(3, 8, 3)
    a, b = jconv.init(jax.random.key(1), cfg), jconv.init(jax.random.key(1), cfg)
    chex.assert_trees_all_equal(a, b)
    c = jconv.init(jax.random.key(2), cfg)
    assert not np.allclose(a.weight, c.weight)
    legacy = jconv.init(jax.random.PRNGKey(1), cfg)  # raw uint32 keys work too
    chex.assert_shape(legacy.weight, cfg.weight_shape)


def test_bias_false_gives_none():
    params = jconv.init(jax.random.key(0), jconv.Conv1d(2, 3, 3, bias=False))
    assert params.bias is None
    assert jax.tree.leaves(params) == [params.weight]


def test_custom_initializer_gets_the_oihw_fans():
    """he_normal must see fan_in = (in/groups)·∏k, not the HWIO misreading."""
    cfg = jconv.Conv2d(64, 8, (3, 5), weight_init=jax.nn.initializers.he_normal())
    w = np.asarray(jconv.init(jax.random.key(0), cfg).weight)
    chex.assert_shape(w, (8, 64, 3, 5))
    fan_in = 64 * 15
    expected = math.sqrt(2 / fan_in)
    assert abs(w.std() - expected) / expected < 0.05


def test_custom_initializers_for_weight_and_bias():
    cfg = jconv.Conv2d(
        4,
        6,
        3,
        dtype=jnp.bfloat16,
        weight_init=jax.nn.initializers.zeros,
        bias_init=jax.nn.initializers.ones,
    )
    params = jconv.init(jax.random.key(0), cfg)
    chex.assert_type(params.weight, jnp.bfloat16)
    assert not np.any(np.asarray(params.weight, np.float32))
    np.testing.assert_array_equal(np.asarray(params.bias, np.float32), np.ones(6))


def test_zero_in_channels_like_torch():
    """torch accepts in_channels=0; the output is then the bias alone."""
    cfg = jconv.Conv2d(0, 3, 3)
    params = jconv.init(jax.random.key(0), cfg)
    y = jconv.apply(params, jnp.zeros((2, 0, 5, 5)))
    chex.assert_shape(y, (2, 3, 3, 3))
    np.testing.assert_allclose(y, jnp.broadcast_to(params.bias[:, None, None], (2, 3, 3, 3)))

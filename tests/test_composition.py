"""jit, vmap, grad, jacfwd, grad-of-grad and check_grads compose with jconv."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiered
from jax.test_util import check_grads

import jconv

CONFIGS = [
    jconv.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2),
    jconv.Conv1d(2, 2, 4, padding="causal", dilation=2, padding_mode="replicate"),
    jconv.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=((1, 0), (2, 1)), groups=2),
    jconv.Conv2d(3, 3, 3, padding="same", groups=3, padding_mode="reflect"),
    jconv.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False),
    jconv.Conv3d(2, 2, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(1, 1, 2)),
    # the class that aborts XLA with plain lax (see tests/test_crash.py)
    jconv.Conv2d(1, 1, (2, 4), stride=2, padding=(1, 0), dilation=(1, 2)),
    # transposed, on both lowerings
    jconv.ConvTranspose1d(3, 2, 4, stride=2, padding=1, output_padding=1, dilation=2),
    jconv.ConvTranspose2d(4, 6, 3, stride=2, padding=(1, 0), output_padding=1, groups=2),
    jconv.ConvTranspose2d(4, 6, 3, stride=2, padding=(1, 0), output_padding=1, algorithm="xla"),
    jconv.ConvTranspose3d(2, 2, (2, 3, 2), stride=(2, 1, 3), padding=((1, 0), (0, 1), (0, 0))),
    jconv.ConvTranspose2d(1, 2, (2, 4), stride=2, padding=1, output_padding=(0, 1)),  # crash class
]
SHAPES = [
    (2, 3, 9),
    (2, 2, 8),
    (2, 4, 6, 7),
    (2, 3, 5, 5),
    (2, 2, 4, 5),
    (1, 2, 4, 5, 6),
    (1, 1, 6, 9),
    (2, 3, 5),
    (2, 4, 4, 5),
    (2, 4, 4, 5),
    (1, 2, 3, 4, 3),
    (1, 1, 3, 2),
]


def _setup(i):
    cfg, shape = CONFIGS[i], SHAPES[i]
    params = jconv.init(jax.random.key(i), cfg)
    x = jax.random.normal(jax.random.key(100 + i), shape)
    return cfg, params, x


def _weight_and_input_fn(params):
    def f(w, x):
        return jconv.apply(jconv.Params(w, params.bias, params.cfg), x)

    return f


def _check_grads(variant, i):
    cfg, params, x = _setup(i)
    f = variant(_weight_and_input_fn(params))
    check_grads(f, (params.weight, x), order=2, modes=("rev",), atol=2e-2, rtol=2e-2)
    check_grads(f, (params.weight, x), order=1, modes=("fwd",), atol=2e-2, rtol=2e-2)


@pytest.mark.slow
class TestCheckGrads(chex.TestCase):
    """Every config, with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_check_grads(self):
        for i in range(len(CONFIGS)):
            _check_grads(self.variant, i)


class TestCheckGradsFastTier(chex.TestCase):
    """The fast tier's share: the XLA-abort class and a grouped transposed conv."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_check_grads(self):
        for i in (6, 8):
            _check_grads(self.variant, i)


@pytest.mark.parametrize("i", tiered(range(len(CONFIGS)), 4))
def test_vmap_over_inputs_equals_a_loop(i):
    cfg, params, x = _setup(i)
    xs = jnp.stack([x, 2 * x, -x])
    got = jax.vmap(jconv.apply, in_axes=(None, 0))(params, xs)
    want = jnp.stack([jconv.apply(params, xi) for xi in xs])
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("i", tiered(range(len(CONFIGS)), 2))
def test_vmap_over_params_gives_an_ensemble(i):
    cfg, _, x = _setup(i)
    keys = jax.random.split(jax.random.key(7), 4)
    ensemble = jax.vmap(jconv.init, in_axes=(0, None))(keys, cfg)
    chex.assert_shape(ensemble.weight, (4, *cfg.weight_shape))
    got = jax.jit(jax.vmap(jconv.apply, in_axes=(0, None)))(ensemble, x)
    for k in range(4):
        one = jconv.apply(jax.tree.map(lambda a, k=k: a[k], ensemble), x)
        chex.assert_trees_all_close(got[k], one, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("i", tiered(range(len(CONFIGS)), 2))
def test_jacfwd_equals_jacrev(i):
    cfg, params, x = _setup(i)
    x = x[:1]

    def f(x):
        return jconv.apply(params, x).ravel()[:5]

    chex.assert_trees_all_close(jax.jacfwd(f)(x), jax.jacrev(f)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("i", tiered(range(len(CONFIGS)), 2))
def test_grad_of_grad_runs_and_is_symmetric(i):
    cfg, params, x = _setup(i)

    def loss(x):
        return jnp.sum(jnp.tanh(jconv.apply(params, x)) ** 2)

    v1 = jax.random.normal(jax.random.key(1), x.shape)
    v2 = jax.random.normal(jax.random.key(2), x.shape)

    def hvp(v):
        return jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x), v))(x)

    # a Hessian is symmetric: v2·H·v1 == v1·H·v2
    a, b = jnp.vdot(v2, hvp(v1)), jnp.vdot(v1, hvp(v2))
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_grad_wrt_params_is_a_params_pytree_and_optax_updates_it():
    optax = pytest.importorskip("optax")
    cfg = jconv.Conv2d(3, 4, 3, padding=1)
    params = jconv.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 3, 6, 6))

    def loss(p):
        return jnp.mean(jconv.apply(p, x) ** 2)

    grads = jax.grad(loss)(params)
    assert isinstance(grads, jconv.Params) and grads.cfg == cfg
    chex.assert_trees_all_equal_shapes(grads, params)
    opt = optax.sgd(0.1)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert isinstance(new, jconv.Params) and new.cfg == cfg
    assert loss(new) < loss(params)


def test_no_retrace_for_an_equal_config():
    traces = []

    @jax.jit
    def f(params, x):
        traces.append(1)
        return jconv.apply(params, x)

    x = jnp.ones((1, 3, 6, 6))
    p1 = jconv.init(jax.random.key(0), jconv.Conv2d(3, 4, 3, padding=1))
    p2 = jconv.init(
        jax.random.key(1), jconv.Conv2d(3, 4, (3, 3), stride=(1, 1), padding=((1, 1), (1, 1)))
    )
    f(p1, x)
    f(p2, x)
    assert len(traces) == 1
    f(jconv.init(jax.random.key(0), jconv.Conv2d(3, 4, 3, padding=2)), x)
    assert len(traces) == 2


def test_jit_needs_no_static_arguments():
    cfg = jconv.Conv1d(2, 3, 3, padding="same")
    params = jconv.init(jax.random.key(0), cfg)
    x = jnp.arange(20.0).reshape(2, 10)
    chex.assert_trees_all_close(jax.jit(jconv.apply)(params, x), jconv.apply(params, x), rtol=1e-6)

"""jconv.nnx, jconv.linen and jconv.eqx: torch's arguments, torch's init, jconv.apply's
numbers and gradients, optax training, and torch's weights in and out by torch's names."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jconv

flax = pytest.importorskip("flax")
equinox = pytest.importorskip("equinox")

import flax.linen as linen  # noqa: E402
from flax import nnx  # noqa: E402

from jconv import eqx as jeqx  # noqa: E402
from jconv import linen as jlinen  # noqa: E402
from jconv import nnx as jnnx  # noqa: E402

# (name, torch positional args, keyword args, input shape)
LAYERS = [
    ("Conv1d", (4, 6, 5, 2, 2, 2), {}, (2, 4, 17)),
    ("Conv2d", (4, 6, 3, 1, "same", 1, 2), {"bias": False}, (2, 4, 9, 9)),
    ("Conv3d", (2, 4, 3), {"padding": 1, "padding_mode": "reflect"}, (1, 2, 5, 6, 5)),
    ("ConvTranspose1d", (4, 2, 8, 4, 2), {}, (2, 4, 7)),
    ("ConvTranspose2d", (4, 6, 3, 2, 1, 1, 2), {"bias": False}, (2, 4, 5, 5)),
    ("ConvTranspose3d", (2, 2, 2, 2), {"dtype": jnp.float32}, (1, 2, 3, 3, 3)),
]
IDS = [name for name, *_ in LAYERS]


def _nnx(name, args, kw, seed=0):
    return getattr(jnnx, name)(*args, rngs=nnx.Rngs(seed), **kw)


def _eqx(name, args, kw, seed=0):
    return getattr(jeqx, name)(*args, key=jax.random.key(seed), **kw)


def _linen(name, args, kw, x, seed=0):
    module = getattr(jlinen, name)(*args, **kw)
    return module, module.init(jax.random.key(seed), x)


def _params_of(framework, name, args, kw, x):
    """(the module called on x, the module's jconv.Params)."""
    if framework == "nnx":
        m = _nnx(name, args, kw)
        return m(x), m.params
    if framework == "eqx":
        m = _eqx(name, args, kw)
        return m(x), m.params
    module, variables = _linen(name, args, kw, x)
    p = variables["params"]
    return module.apply(variables, x), jconv.Params(p["weight"], p.get("bias"), module.config())


@pytest.mark.parametrize("framework", ["nnx", "linen", "eqx"])
@pytest.mark.parametrize("name,args,kw,shape", LAYERS, ids=IDS)
def test_torch_arguments_give_the_config_and_apply_numbers(framework, name, args, kw, shape):
    x = jax.random.normal(jax.random.key(1), shape)
    y, params = _params_of(framework, name, args, kw, x)
    cfg = getattr(jconv, name)(*args, **kw)
    assert params.cfg == cfg
    assert params.weight.shape == cfg.weight_shape
    assert (params.bias is None) == (not cfg.bias)
    chex.assert_trees_all_close(y, jconv.apply(params, x), atol=0, rtol=0)


def test_linen_fields_follow_torchs_order():
    conv = jlinen.Conv2d(3, 8, 3, 2, 1, 1, 1, False, "zeros")
    assert conv.config() == jconv.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    up = jlinen.ConvTranspose2d(4, 2, 3, 2, 1, 1, 2, True, 1)
    assert up.config() == jconv.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1,
                                                groups=2)  # fmt: skip
    assert [f.name for f in dataclasses.fields(up)][:9] == [
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding",
        "groups", "bias", "dilation",
    ]  # fmt: skip


def test_bad_arguments_raise_jconvs_errors():
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        jnnx.Conv2d(3, 6, 3, groups=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        jeqx.Conv2d(3, 6, 3, groups=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        jlinen.Conv2d(3, 6, 3, groups=2).init(jax.random.key(0), jnp.ones((1, 3, 4, 4)))


@pytest.mark.parametrize("framework", ["nnx", "linen", "eqx"])
def test_default_init_is_torchs(framework):
    """U(±1/√fan_in) for weight and bias, as torch's reset_parameters draws them."""
    args, x = (64, 32, 3), jnp.ones((1, 64, 4, 4))
    _, p = _params_of(framework, "Conv2d", args, {}, x)
    bound = 1 / np.sqrt(64 * 9)
    for a in (p.weight, p.bias):
        a = np.asarray(a)
        assert np.abs(a).max() <= bound
        assert np.abs(a).max() > 0.9 * bound
    w = np.asarray(p.weight)
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound  # a uniform's spread


@pytest.mark.parametrize("framework", ["nnx", "linen", "eqx"])
def test_transposed_layers_take_output_size(framework):
    args, x = (4, 2, 3, 2, 1), jnp.ones((1, 4, 5, 5))
    if framework == "nnx":
        y = _nnx("ConvTranspose2d", args, {})(x, output_size=(10, 10))
    elif framework == "eqx":
        y = _eqx("ConvTranspose2d", args, {})(x, output_size=(10, 10))
    else:
        module, v = _linen("ConvTranspose2d", args, {}, x)
        y = module.apply(v, x, output_size=(10, 10))
    assert y.shape == (1, 2, 10, 10)


# ---------------------------------------------------------------------------
# the same small CNN in each framework: torch names, gradients, training


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.features = nnx.Sequential(
            jnnx.Conv2d(3, 8, 3, padding=1, rngs=rngs),
            jax.nn.relu,
            jnnx.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, rngs=rngs),
            jax.nn.relu,
        )
        self.up = jnnx.ConvTranspose2d(8, 4, 2, stride=2, bias=False, rngs=rngs)
        self.head = jnnx.Conv1d(4, 2, 1, rngs=rngs)

    def __call__(self, x):
        h = self.up(self.features(x))
        return self.head(h.reshape(h.shape[0], 4, -1))


class LinenNet(linen.Module):
    def setup(self):  # submodules named as attributes, as torch names them
        self.features = linen.Sequential([
            jlinen.Conv2d(3, 8, 3, padding=1), jax.nn.relu,
            jlinen.Conv2d(8, 8, 3, stride=2, padding=1, groups=4), jax.nn.relu,
        ])  # fmt: skip
        self.up = jlinen.ConvTranspose2d(8, 4, 2, stride=2, bias=False)
        self.head = jlinen.Conv1d(4, 2, 1)

    def __call__(self, x):
        h = self.up(self.features(x))
        return self.head(h.reshape(h.shape[0], 4, -1))


class EqxNet(equinox.Module):
    features: equinox.nn.Sequential
    up: jeqx.ConvTranspose2d
    head: jeqx.Conv1d

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.features = equinox.nn.Sequential([
            jeqx.Conv2d(3, 8, 3, padding=1, key=k[0]), equinox.nn.Lambda(jax.nn.relu),
            jeqx.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, key=k[1]),
            equinox.nn.Lambda(jax.nn.relu),
        ])  # fmt: skip
        self.up = jeqx.ConvTranspose2d(8, 4, 2, stride=2, bias=False, key=k[2])
        self.head = jeqx.Conv1d(4, 2, 1, key=k[3])

    def __call__(self, x):  # one example (C, H, W), as Equinox layers take it
        return self.head(self.up(self.features(x)).reshape(4, -1))


NAMES = {"features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
         "up.weight", "head.weight", "head.bias"}  # fmt: skip
CFGS = {
    "features": {"0": jconv.Conv2d(3, 8, 3, padding=1),
                 "2": jconv.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)},
    "up": jconv.ConvTranspose2d(8, 4, 2, stride=2, bias=False),
    "head": jconv.Conv1d(4, 2, 1),
}  # fmt: skip


def _reference(params, x):
    """The same net from jconv.apply on a Params tree."""
    f = params["features"]
    h = jax.nn.relu(jconv.apply(f["2"], jax.nn.relu(jconv.apply(f["0"], x))))
    h = jconv.apply(params["up"], h)
    return jconv.apply(params["head"], h.reshape(h.shape[0], 4, -1))


def _models():
    x = jax.random.normal(jax.random.key(5), (4, 3, 8, 8))
    variables = LinenNet().init(jax.random.key(0), x)
    return x, {
        "nnx": NNXNet(nnx.Rngs(0)),
        "linen": variables,
        "eqx": EqxNet(jax.random.key(0)),
    }


def _call(framework, model, x):
    if framework == "linen":
        return LinenNet().apply(model, x)
    if framework == "eqx":
        return jax.vmap(model)(x)
    return model(x)


@pytest.mark.parametrize("framework", ["nnx", "linen", "eqx"])
def test_state_dict_has_torchs_names_and_round_trips(framework, tmp_path):
    x, models = _models()
    model = models[framework]
    sd = jconv.state_dict(model)
    assert set(sd) == NAMES
    params = jconv.load_state_dict(CFGS, sd)
    chex.assert_trees_all_close(_call(framework, model, x), _reference(params, x), atol=1e-6)
    # load another model's weights: NNX in place (as torch and nnx.update), the others
    # return a new tree and leave the old one as it was
    other = {k: v + 1 for k, v in sd.items()}
    loaded = jconv.load_state_dict(model, other)
    assert set(jconv.state_dict(loaded)) == NAMES
    for k, v in jconv.state_dict(loaded).items():
        np.testing.assert_array_equal(v, other[k])
    assert (loaded is model) == (framework == "nnx")
    for k, v in jconv.state_dict(model).items():
        np.testing.assert_array_equal(v, other[k] if framework == "nnx" else sd[k])
    # save / load through a safetensors file
    jconv.save(tmp_path / "m.safetensors", loaded)
    again = jconv.load(tmp_path / "m.safetensors", model)
    chex.assert_trees_all_close(_call(framework, again, x), _call(framework, loaded, x))


@pytest.mark.parametrize("framework", ["nnx", "linen", "eqx"])
def test_loading_checks_names_and_shapes(framework):
    _, models = _models()
    sd = jconv.state_dict(models[framework])
    with pytest.raises(ValueError, match='Missing key.*"up.weight"'):
        jconv.load_state_dict(models[framework], {k: v for k, v in sd.items() if k != "up.weight"})
    bad = dict(sd, **{"head.weight": np.zeros((3, 4, 1), np.float32)})
    with pytest.raises(ValueError, match="size mismatch for head.weight"):
        jconv.load_state_dict(models[framework], bad)
    with pytest.raises(ValueError, match='Unexpected key.*"extra"'):
        jconv.load_state_dict(models[framework], dict(sd, extra=np.zeros(1)))
    for k, v in jconv.state_dict(models[framework]).items():  # a failed load changes nothing
        np.testing.assert_array_equal(v, sd[k])
    loose = jconv.load_state_dict(models[framework], dict(sd, extra=np.zeros(1)), strict=False)
    assert set(jconv.state_dict(loose)) == NAMES


def _loss_and_grads(framework, model, x):
    def loss_of(y):
        return jnp.mean(jnp.sin(y) ** 2)

    if framework == "nnx":
        return nnx.value_and_grad(lambda m: loss_of(m(x)))(model)
    if framework == "linen":
        return jax.value_and_grad(lambda v: loss_of(LinenNet().apply(v, x)))(model)
    return equinox.filter_value_and_grad(lambda m: loss_of(jax.vmap(m)(x)))(model)


@pytest.mark.parametrize("framework", ["nnx", "linen", "eqx"])
def test_gradients_equal_jconv_apply(framework):
    x, models = _models()
    model = models[framework]
    params = jconv.load_state_dict(CFGS, jconv.state_dict(model))
    loss, grads = _loss_and_grads(framework, model, x)
    want_loss, want = jax.value_and_grad(lambda p: jnp.mean(jnp.sin(_reference(p, x)) ** 2))(params)
    chex.assert_trees_all_close(loss, want_loss, rtol=1e-6)
    if framework == "nnx":
        grads = nnx.merge(nnx.graphdef(model), grads)
    got = jconv.state_dict(grads)
    expected = jconv.state_dict(want)
    assert set(got) == set(expected) == NAMES
    for k in NAMES:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("framework", ["nnx", "linen", "eqx"])
def test_a_small_cnn_trains_with_optax(framework):
    x, models = _models()
    model = models[framework]
    target = jnp.zeros((4, 2, 64))
    tx = optax.adam(1e-2)

    def loss_of(y):
        return jnp.mean((y - target) ** 2)

    if framework == "nnx":
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, opt):
            loss, g = nnx.value_and_grad(lambda m: loss_of(m(x)))(model)
            opt.update(model, g)
            return loss

        losses = [float(step(model, opt)) for _ in range(5)]
    elif framework == "linen":
        state = tx.init(model)

        @jax.jit
        def step(v, state):
            loss, g = jax.value_and_grad(lambda v: loss_of(LinenNet().apply(v, x)))(v)
            updates, state = tx.update(g, state, v)
            return optax.apply_updates(v, updates), state, loss

        losses = []
        for _ in range(5):
            model, state, loss = step(model, state)
            losses.append(float(loss))
    else:
        state = tx.init(equinox.filter(model, equinox.is_array))

        @equinox.filter_jit
        def step(m, state):
            loss, g = equinox.filter_value_and_grad(lambda m: loss_of(jax.vmap(m)(x)))(m)
            updates, state = tx.update(g, state, m)
            return equinox.apply_updates(m, updates), state, loss

        losses = []
        for _ in range(5):
            model, state, loss = step(model, state)
            losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
    assert np.all(np.isfinite(losses))


@pytest.mark.parametrize("framework", ["nnx", "linen", "eqx"])
def test_torch_weights_give_torchs_output(framework):
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class TorchNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.features = tnn.Sequential(
                tnn.Conv2d(3, 8, 3, padding=1), tnn.ReLU(),
                tnn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4), tnn.ReLU(),
            )  # fmt: skip
            self.up = tnn.ConvTranspose2d(8, 4, 2, stride=2, bias=False)
            self.head = tnn.Conv1d(4, 2, 1)

        def forward(self, x):
            h = self.up(self.features(x))
            return self.head(h.reshape(h.shape[0], 4, -1))

    torch.manual_seed(0)
    net = TorchNet()
    x, models = _models()
    model = jconv.load_state_dict(models[framework], net.state_dict())
    with torch.no_grad():
        want = net(torch.tensor(np.asarray(x))).numpy()
    np.testing.assert_allclose(np.asarray(_call(framework, model, x)), want, rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def test_unbatched_equinox_input_and_jit():
    m = _eqx("Conv2d", (3, 4, 3), {"padding": 1})
    x = jax.random.normal(jax.random.key(0), (3, 6, 6))
    y = equinox.filter_jit(lambda m, x: m(x))(m, x)
    chex.assert_trees_all_close(y, jconv.apply(m.params, x[None])[0], atol=1e-6)


@pytest.mark.parametrize("framework", ["nnx", "linen", "eqx"])
def test_a_single_layer_has_torchs_plain_names(framework):
    x = jnp.ones((1, 4, 5, 5))
    if framework == "nnx":
        model = _nnx("ConvTranspose2d", (4, 2, 3), {})
    elif framework == "eqx":
        model = _eqx("ConvTranspose2d", (4, 2, 3), {})
    else:
        model = _linen("ConvTranspose2d", (4, 2, 3), {}, x)[1]
    sd = jconv.state_dict(model)
    assert sorted(sd) == ["bias", "weight"] and sd["weight"].shape == (4, 2, 3, 3)
    loaded = jconv.load_state_dict(model, {"weight": sd["weight"] * 0, "bias": sd["bias"]})
    assert not jconv.state_dict(loaded)["weight"].any()


@pytest.mark.parametrize("framework", ["nnx", "eqx"])
def test_a_plain_list_or_dict_of_layers_is_named_by_index_and_key(framework):
    make = _nnx if framework == "nnx" else _eqx
    layers = [make("Conv2d", (3, 4, 3), {}), make("Conv1d", (4, 2, 1), {"bias": False}, seed=1)]
    sd = jconv.state_dict(layers)
    assert sorted(sd) == ["0.bias", "0.weight", "1.weight"]
    named = {"stem": layers[0]}
    assert sorted(jconv.state_dict(named)) == ["stem.bias", "stem.weight"]
    loaded = jconv.load_state_dict(layers, {k: v * 0 for k, v in sd.items()})
    assert not any(v.any() for v in jconv.state_dict(loaded).values())
    assert isinstance(loaded, list) and len(loaded) == 2

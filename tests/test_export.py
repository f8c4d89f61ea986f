"""jax.export of jconv layers and models: serialize, deserialize, call, and gradients."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import pytest

import jconv
from jconv.export import config_from_json, config_to_json

pytest.importorskip("flatbuffers")  # jax.export's serializer needs it (a test extra)

CONFIGS = [
    jconv.Conv1d(3, 4, 5, stride=2, padding="valid", dilation=2, padding_mode="zeros"),
    jconv.Conv1d(2, 2, 3, padding="causal", bias=False),
    jconv.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=((1, 0), (2, 1)), groups=2),
    jconv.Conv2d(3, 3, 3, padding="same", groups=3, padding_mode="reflect"),
    jconv.Conv2d(2, 4, 3, dtype=jnp.bfloat16, preferred_element_type=jnp.float32),
    jconv.Conv2d(2, 4, 3, precision=("highest", "default"), compute_dtype=jnp.bfloat16),
    jconv.Conv3d(2, 2, 3, padding=1, algorithm="fold"),
    jconv.ConvTranspose1d(4, 2, 8, stride=4, padding=2),
    jconv.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
    jconv.ConvTranspose3d(2, 2, 2, stride=2, algorithm="xla"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: repr(c)[:50])
def test_every_config_round_trips_through_its_json(cfg):
    again = config_from_json(config_to_json(cfg))
    assert again == cfg and type(again) is type(cfg) and again.pads == cfg.pads


def _export(fn, *args, vjp_order=0):
    exp = jax.export.export(jax.jit(fn))(*args)
    return jax.export.deserialize(exp.serialize(vjp_order=vjp_order))


def _close(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        scale = float(jnp.abs(b).max()) or 1.0
        chex.assert_trees_all_close(a, b, atol=1e-5 * scale, rtol=1e-5)


def test_one_layer_exports_with_its_gradients():
    cfg = jconv.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    params = jconv.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 4, 5, 5))
    back = _export(jconv.apply, params, x, vjp_order=1)
    _close(back.call(params, x), jconv.apply(params, x))

    def loss(call):
        return lambda p, x: jnp.sum(jnp.sin(call(p, x)))

    _close(
        jax.grad(loss(back.call), (0, 1))(params, x), jax.grad(loss(jconv.apply), (0, 1))(params, x)
    )


def test_a_whole_model_of_lists_and_dicts_exports():
    cfgs = {
        "stem": jconv.Conv2d(3, 8, 3, stride=2, padding=1),
        "blocks": [jconv.Conv2d(8, 8, 3, padding=1, groups=8), jconv.Conv2d(8, 16, 1)],
        "up": jconv.ConvTranspose2d(16, 4, 4, stride=2, padding=1),
    }
    keys = iter(jax.random.split(jax.random.key(0), 4))
    params = jax.tree.map(lambda c: jconv.init(next(keys), c), cfgs)

    def net(p, x):
        h = jax.nn.relu(jconv.apply(p["stem"], x))
        for layer in p["blocks"]:
            h = jax.nn.relu(jconv.apply(layer, h))
        return jconv.apply(p["up"], h)

    x = jax.random.normal(jax.random.key(1), (2, 3, 16, 16))
    back = _export(net, params, x, vjp_order=1)
    assert back.in_tree == jax.tree.structure(((params, x), {}))  # configs restored equal
    _close(back.call(params, x), net(params, x))
    grads = jax.grad(lambda p: jnp.sum(back.call(p, x) ** 2))(params)
    _close(grads, jax.grad(lambda p: jnp.sum(net(p, x) ** 2))(params))
    assert set(jconv.state_dict(grads)) == set(jconv.state_dict(params))


def test_a_custom_initializer_is_refused_by_name():
    cfg = jconv.Conv2d(2, 2, 3, weight_init=jax.nn.initializers.zeros)
    params = jconv.init(jax.random.key(0), cfg)
    exp = jax.export.export(jax.jit(jconv.apply))(params, jnp.ones((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="custom weight_init=.*weight_init=None"):
        exp.serialize()


# ---------------------------------------------------------------------------
# a plan per platform, chosen when the program is lowered

# layers whose CPU plan is not plain XLA: depthwise (shift, fft), 1x1 (matmul),
# dense 3-d (fold), strided transposed (subpixel), a float32 3x3 on 8x32x32² (widened)
PLATFORM_CASES = [
    (jconv.Conv2d(16, 16, 3, padding=1, groups=16), (2, 16, 12, 12)),
    (jconv.Conv2d(16, 16, 7, padding=3, groups=16), (2, 16, 12, 12)),
    (jconv.Conv2d(16, 32, 1), (2, 16, 8, 8)),
    (jconv.Conv3d(4, 8, 3, padding=1), (1, 4, 6, 6, 6)),
    (jconv.ConvTranspose1d(8, 4, 8, stride=4, padding=2), (2, 8, 16)),
    (jconv.Conv2d(32, 32, 3, padding=1), (8, 32, 32, 32)),
]
PLATFORM_IDS = ["depthwise3", "depthwise7", "pointwise", "conv3d", "transposed1d", "widened"]


def _ops(fn, args, platforms) -> dict[str, int]:
    """How many of each stablehlo op the export of ``fn`` for ``platforms`` holds."""
    import collections
    import re

    text = jax.export.export(jax.jit(fn), platforms=platforms)(*args).mlir_module()
    return collections.Counter(re.findall(r"stablehlo\.(\w+)", text))


def _xla(params):
    return jconv.Params(
        params.weight, params.bias, dataclasses.replace(params.cfg, algorithm="xla")
    )


@pytest.mark.parametrize("cfg,shape", PLATFORM_CASES, ids=PLATFORM_IDS)
def test_accelerator_exports_hold_xlas_convolution(cfg, shape):
    params = jconv.init(jax.random.key(0), cfg)
    x = jnp.ones(shape)
    cpu = _ops(jconv.apply, (params, x), ("cpu",))
    for platform in ("cuda", "tpu"):
        auto = _ops(jconv.apply, (params, x), (platform,))
        forced = _ops(jconv.apply, (_xla(params), x), (platform,))
        assert auto["convolution"] == 1, (platform, auto)
        assert auto == forced, platform
        assert cpu != auto  # the CPU program is another one


@pytest.mark.parametrize("cfg,shape", PLATFORM_CASES, ids=PLATFORM_IDS)
def test_a_cpu_export_holds_the_cpu_plan(cfg, shape):
    from jconv.lowering import plan

    params = jconv.init(jax.random.key(0), cfg)
    x = jnp.ones(shape)
    name = plan(cfg, shape, jnp.float32, "cpu")
    assert name != "xla"
    planned = jconv.Params(params.weight, params.bias, dataclasses.replace(cfg, algorithm=name))
    got = _ops(jconv.apply, (params, x), ("cpu",))
    want = _ops(jconv.apply, (planned, x), ("cpu",))
    assert got == want


def test_one_export_for_three_platforms_carries_each_plan_and_runs_here():
    cfg = jconv.Conv2d(16, 16, 13, padding=6, groups=16)  # fft on CPU, xla elsewhere
    params = jconv.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 16, 12, 12))
    ops = _ops(jconv.apply, (params, x), ("cpu", "cuda", "tpu"))
    assert ops["fft"] >= 1 and ops["convolution"] >= 1 and ops["case"] >= 1
    exp = jax.export.export(jax.jit(jconv.apply), platforms=("cpu", "cuda", "tpu"))(params, x)
    assert exp.platforms == ("cpu", "cuda", "tpu")
    back = jax.export.deserialize(exp.serialize(vjp_order=1))
    _close(back.call(params, x), jconv.apply(params, x))
    grads = jax.grad(lambda p, x: jnp.sum(back.call(p, x) ** 2), (0, 1))(params, x)
    _close(grads, jax.grad(lambda p, x: jnp.sum(jconv.apply(p, x) ** 2), (0, 1))(params, x))


def test_a_jit_on_this_backend_compiles_no_conditional():
    # "matmul" on CPU, "xla" elsewhere (a planned "shift" has a conditional of its own:
    # ``custom.materialized``)
    cfg = jconv.Conv2d(16, 32, 1)
    params = jconv.init(jax.random.key(0), cfg)
    x = jnp.ones((2, 16, 12, 12))
    f = jax.jit(jax.grad(lambda p, x: jnp.sum(jconv.apply(p, x) ** 2)))
    import re

    text = f.lower(params, x).compile().as_text()
    assert re.search(r"= \S+ (convolution|fusion|multiply)\(", text)  # the pattern reads ops
    assert not re.search(r"= \S+ conditional\(", text)


@pytest.mark.parametrize("cfg,shape", PLATFORM_CASES[:3], ids=PLATFORM_IDS[:3])
def test_a_jit_lowered_for_another_platform_gets_its_plan(cfg, shape):
    """What a jit placed on a GPU or TPU device lowers: that platform's plan, not CPU's."""
    params = jconv.init(jax.random.key(0), cfg)
    traced = jax.jit(jconv.apply).trace(params, jnp.ones(shape))
    forced = jax.jit(jconv.apply).trace(_xla(params), jnp.ones(shape))
    for platform in ("cuda", "tpu"):
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        want = forced.lower(lowering_platforms=(platform,)).as_text()
        assert text.count("stablehlo.convolution") == want.count("stablehlo.convolution") == 1
    from jconv.lowering import plan

    name = plan(cfg, shape, jnp.float32, "cpu")
    planned = jconv.Params(params.weight, params.bias, dataclasses.replace(cfg, algorithm=name))
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    want = jax.jit(jconv.apply).trace(planned, jnp.ones(shape)).lower(lowering_platforms=("cpu",))
    assert name != "xla"
    assert cpu.count("stablehlo.convolution") == want.as_text().count("stablehlo.convolution")
    assert cpu.count("stablehlo.convolution") < 2

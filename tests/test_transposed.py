"""Transposed convolutions: torch parity, the NumPy reference, the inverse relation,
and the lowerings agreeing with each other."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import (
    CONV,
    CONV_T,
    arrays_for,
    assert_matches,
    jconv_grads,
    random_case,
    random_transposed_case,
    rel_err,
    tiered,
)

import jconv

N_TORCH = 160
TOL = 2e-4


@pytest.mark.parametrize("seed", tiered(range(N_TORCH), 15))
def test_forward_and_grads_match_torch(seed, torch):
    import torch_oracle

    case = random_transposed_case(seed)
    cfg = case.cfg()
    x, w, b, gy = arrays_for(case, cfg)
    mine = jconv_grads(cfg, x, w, b, gy, case.jit, case.output_size)
    ref = torch_oracle.conv_transpose_with_grads(
        case.ndim, case.kwargs, case.extra["pairs"], x, w, b, gy, case.output_size
    )
    assert_matches(mine, ref, case, TOL)


def test_the_cases_cover_the_configuration_space():
    cases = [random_transposed_case(s) for s in range(N_TORCH)]
    assert {c.ndim for c in cases} == {1, 2, 3}
    assert {c.batched for c in cases} == {c.jit for c in cases} == {True, False}
    assert {c.kwargs["bias"] for c in cases} == {True, False}
    sized = [c for c in cases if c.output_size is not None]
    assert len(sized) >= 20
    assert {len(c.output_size) == c.ndim for c in sized} == {True, False}
    assert sum(c.cfg().output_padding != (0,) * c.ndim for c in cases) >= 20
    paired = [c for c in cases if any(lo != hi for lo, hi in c.cfg().pads)]
    assert len(paired) >= 10
    assert sum(c.kwargs["groups"] > 1 for c in cases) >= 20
    assert any(max(c.kwargs["dilation"]) > 1 and max(c.kwargs["stride"]) > 1 for c in cases)


@pytest.mark.parametrize("seed", tiered(range(3000, 3060), 8))
def test_forward_matches_numpy_reference(seed):
    case = random_transposed_case(seed)
    cfg = case.cfg()
    x, w, b, _ = arrays_for(case, cfg)
    _, out_pad, _ = jconv.shapes.resolve(cfg, x.shape, case.output_size)
    xb = x if case.batched else x[None]
    want = reference.conv_transpose(
        xb, w, b, cfg.stride, cfg.pads, cfg.dilation, cfg.groups, out_pad
    )
    want = want if case.batched else want[0]
    got = jconv.apply(jconv.Params(jnp.asarray(w), b, cfg), x, case.output_size)
    chex.assert_shape(got, want.shape)
    assert rel_err(got, want) <= 2e-5, str(case)


@pytest.mark.parametrize("seed", tiered(range(4000, 4040), 4))
def test_lowerings_agree_forward_and_gradients(seed):
    """ "subpixel" and "pergroup" give "xla"'s numbers, forward and every gradient."""
    case = random_transposed_case(seed)
    results = []
    for algorithm in ("xla", "subpixel", "pergroup"):
        cfg = case.cfg(algorithm=algorithm)
        x, w, b, gy = arrays_for(case, cfg)
        results.append(jconv_grads(cfg, x, w, b, gy, case.jit, case.output_size))
    assert_matches(results[1], results[0], case, 1e-5)
    assert_matches(results[2], results[0], case, 1e-5)


def _output_and_gradients(cfg, algorithm: str, x):
    """``y`` and the gradients of weight, bias and input at cotangent ``cos(y)``."""
    forced = dataclasses.replace(cfg, algorithm=algorithm)
    params = jconv.init(jax.random.key(1), forced)

    def f(w, b, x):
        return jconv.apply(jconv.Params(w, b, forced), x)

    y, vjp = jax.vjp(f, params.weight, params.bias, x)
    return (y, *vjp(jnp.cos(y)))


@pytest.mark.parametrize(
    "cfg, shape, branch",
    [
        (jconv.ConvTranspose2d(3, 2, 2, stride=2), (2, 3, 3, 4), "matmul"),
        (jconv.ConvTranspose2d(3, 2, 2, stride=2, dtype=jnp.bfloat16), (2, 3, 3, 4), "matmul"),
        (
            jconv.ConvTranspose1d(4, 3, 3, stride=3, padding=1, output_padding=1),
            (3, 4, 2),
            "einsum",
        ),
        (
            jconv.ConvTranspose2d(2, 3, (2, 3), stride=(2, 3), padding=(0, 1)),
            (5, 2, 2, 3),
            "einsum",
        ),
        (jconv.ConvTranspose2d(8, 4, 2, stride=2), (1, 8, 1, 1), "xla"),
        (jconv.ConvTranspose2d(4, 4, 2, stride=2, groups=2), (2, 4, 3, 3), "xla"),
    ],
)
def test_subpixel_with_kernel_equal_to_stride_equals_xla(cfg, shape, branch):
    """Kernels equal to their stride: each phase's sub-kernel is one tap, and the sub-pixel
    forward is a matrix product over channels (the weight broadcast over the batch while
    that stays within one input: ``branch`` "matmul"; one product while the weight stays
    within four inputs: "einsum"; else XLA's conv). Forward and gradients equal xla's."""
    from jconv.lowering import subpixel

    sub = (math.prod(cfg.stride) * cfg.out_channels, cfg.in_channels // cfg.groups)
    assert subpixel.one_tap_form(shape, sub, cfg.groups) == branch
    x = jax.random.normal(jax.random.key(0), shape, cfg.dtype)
    results = [_output_and_gradients(cfg, name, x) for name in ("xla", "subpixel")]
    tol = 2e-2 if cfg.dtype == jnp.bfloat16 else 2e-5
    for got, want in zip(results[1], results[0]):
        chex.assert_trees_all_close(got, want, atol=tol * float(jnp.abs(want).max()))


def test_subpixel_with_a_heavy_one_tap_weight_runs_xlas_forward_and_equals_xla():
    """A kernel = stride weight past four inputs and 16 MiB (32 MiB here): the forward is
    XLA's own transposed conv (the sub-pixel one rearranges the weight on each call),
    the gradients stay sub-pixel; forward and gradients equal xla's. 8 MiB keeps the
    sub-pixel forward."""
    from jconv.lowering import subpixel
    from jconv.lowering.spec import ConvSpec

    spec = ConvSpec(True, (2, 2), ((0, 0), (0, 0)), (1, 1), 1, (0, 0), None, None, True)
    heavy = jax.ShapeDtypeStruct((2048, 1024, 2, 2), jnp.float32)
    assert subpixel._heavy_one_tap((1, 2048, 2, 2), heavy, spec)
    lighter = jax.ShapeDtypeStruct((1024, 512, 2, 2), jnp.float32)
    assert not subpixel._heavy_one_tap((1, 1024, 2, 2), lighter, spec)
    cfg = jconv.ConvTranspose2d(2048, 1024, 2, stride=2)
    x = jax.random.normal(jax.random.key(0), (1, 2048, 2, 2))
    results = [_output_and_gradients(cfg, name, x) for name in ("xla", "subpixel")]
    for got, want in zip(results[1], results[0]):
        chex.assert_trees_all_close(got, want, atol=2e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("seed", tiered(range(5000, 5040), 5))
def test_transpose_is_the_input_gradient_of_the_forward_conv(seed):
    """Conv(A -> B) with weight w (B, A/g, *k) maps z to y; ConvTranspose(B -> A) with
    the same w, stride, padding, dilation and groups is that map's adjoint, with
    output_size picking z's size among those the stride allows."""
    case = random_case(seed)
    fcfg = CONV[case.ndim](**dict(case.kwargs, padding_mode="zeros", bias=False))
    z, w, _, gy = arrays_for(case, fcfg)
    _, vjp = jax.vjp(lambda z: jconv.apply(jconv.Params(w, None, fcfg), z), z)
    (want,) = vjp(gy)
    tcfg = CONV_T[case.ndim](
        fcfg.out_channels,
        fcfg.in_channels,
        fcfg.kernel_size,
        stride=fcfg.stride,
        padding=fcfg.pads,
        groups=fcfg.groups,
        bias=False,
        dilation=fcfg.dilation,
    )
    got = jconv.apply(jconv.Params(w, None, tcfg), gy, output_size=z.shape[-case.ndim :])
    chex.assert_shape(got, z.shape)
    assert rel_err(got, want) <= 1e-5, str(case)


# ------------------------------------------------------------------ by hand


def test_output_shape_by_hand():
    # (in − 1)·s − 2·p + d·(k − 1) + output_padding + 1
    cfg = jconv.ConvTranspose2d(4, 2, 4, stride=2, padding=1)
    assert jconv.output_shape(cfg, (8, 4, 16, 16)) == (8, 2, 32, 32)
    cfg = jconv.ConvTranspose2d(1, 1, 3, stride=2, padding=1)
    assert jconv.output_shape(cfg, (1, 4, 4)) == (1, 7, 7)
    assert jconv.output_shape(cfg, (1, 4, 4), output_size=(8, 8)) == (1, 8, 8)
    cfg = jconv.ConvTranspose1d(2, 3, 5, stride=3, padding=2, output_padding=1, dilation=2)
    assert jconv.output_shape(cfg, (1, 2, 6)) == (1, 3, (6 - 1) * 3 - 4 + 2 * 4 + 1 + 1)
    cfg = jconv.ConvTranspose3d(2, 4, (1, 2, 3), stride=(1, 2, 3), groups=2)
    assert jconv.output_shape(cfg, (2, 3, 4, 5)) == (4, 3, 8, 15)


def test_output_size_accepts_torch_forms_and_sets_output_padding():
    cfg = jconv.ConvTranspose2d(1, 1, 3, stride=2, padding=1)
    params = jconv.init(jax.random.key(0), cfg)
    x = jnp.ones((2, 1, 4, 4))
    full = jconv.apply(params, x, output_size=(2, 1, 8, 8))
    short = jconv.apply(params, x, output_size=[8, 8])
    chex.assert_shape(full, (2, 1, 8, 8))
    chex.assert_trees_all_equal(full, short)
    padded = jconv.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1)
    same = jconv.apply(jconv.Params(params.weight, params.bias, padded), x)
    chex.assert_trees_all_close(full, same, rtol=1e-6, atol=1e-6)
    unbatched = jconv.apply(params, x[0], output_size=(1, 8, 8))
    chex.assert_trees_all_close(unbatched, full[0], rtol=1e-6, atol=1e-6)


def test_num_params_and_flops():
    cfg = jconv.ConvTranspose2d(8, 6, 3, groups=2)
    assert cfg.weight_shape == (8, 3, 3, 3)
    assert jconv.num_params(cfg) == 8 * 3 * 9 + 6
    # each input element meets each tap once: 2 · N · C_in · ∏in · (C_out/g) · ∏k
    nobias = jconv.ConvTranspose2d(8, 6, 3, stride=2, groups=2, bias=False)
    assert jconv.flops(nobias, (2, 8, 5, 5)) == 2 * (2 * 8 * 25 * 3 * 9)
    out = jconv.output_shape(cfg, (2, 8, 5, 5))
    assert jconv.flops(cfg, (2, 8, 5, 5)) == 2 * (2 * 8 * 25 * 3 * 9) + 2 * 6 * 7 * 7
    assert out == (2, 6, 7, 7)


def test_default_init_uses_torchs_transposed_fan():
    """torch computes fan_in from weight.shape[1]: (out_channels/groups)·∏k."""
    cfg = jconv.ConvTranspose2d(64, 8, 3, groups=2)
    params = jconv.init(jax.random.key(0), cfg)
    chex.assert_shape(params.weight, (64, 4, 3, 3))
    bound = 1 / (4 * 9) ** 0.5
    for a in (params.weight, params.bias):
        a = jnp.abs(a)
        assert float(a.max()) <= bound
    # the weights fill the interval: in_channels/groups·∏k would give a bound 4x smaller
    assert float(jnp.abs(params.weight).max()) > 0.95 * bound


def test_torch_module_weights_load_and_match(torch):
    mod = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    cfg = jconv.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    params = jconv.load_state_dict(cfg, mod.state_dict())
    x = np.random.RandomState(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    want = mod(torch.tensor(x)).detach().numpy()
    chex.assert_trees_all_close(jconv.apply(params, x), want, rtol=1e-5, atol=1e-5)
    back = jconv.state_dict(params)
    np.testing.assert_array_equal(back["weight"], mod.weight.detach().numpy())


@pytest.mark.parametrize("ndim", tiered([1, 2, 3], [1]))
def test_functional_equals_the_layer(ndim):
    cfg = CONV_T[ndim](4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    params = jconv.init(jax.random.key(ndim), cfg)
    x = jax.random.normal(jax.random.key(9), (2, 4) + (5,) * ndim)
    fn = getattr(jconv.functional, f"conv_transpose{ndim}d")
    got = fn(x, params.weight, params.bias, 2, 1, 1, 2, 1)
    chex.assert_trees_all_equal(got, jconv.apply(params, x))
    static = ("stride", "padding", "output_padding", "groups")
    got = jax.jit(fn, static_argnames=static)(
        x[0], params.weight, stride=2, padding=1, output_padding=1, groups=2
    )
    nobias = CONV_T[ndim](4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False)
    want = jconv.apply(jconv.Params(params.weight, None, nobias), x[0])
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


def test_planner_picks_subpixel_for_strided_transposed_on_cpu():
    from jconv.lowering import plan

    strided = jconv.ConvTranspose2d(4, 4, 4, stride=2, padding=1)
    assert plan(strided, (1, 4, 8, 8), jnp.float32, "cpu") == "subpixel"
    assert plan(strided, (1, 4, 8, 8), jnp.float32, "gpu") == "xla"
    assert plan(jconv.ConvTranspose2d(4, 4, 3), (1, 4, 8, 8), jnp.float32, "cpu") == "xla"
    forced = jconv.ConvTranspose2d(4, 4, 4, stride=2, algorithm="xla")
    assert plan(forced, (1, 4, 8, 8), jnp.float32, "cpu") == "xla"
    assert plan(jconv.Conv2d(4, 4, 3, stride=2), (1, 4, 8, 8), jnp.float32, "cpu") == "xla"


def test_upsampling_doubles_the_size_and_output_padding_resolves_ambiguity():
    """Two inputs, 7x7 and 8x8, go to 4x4 by a stride-2 conv; its transpose picks one."""
    down = jconv.Conv2d(1, 1, 3, stride=2, padding=1)
    assert jconv.output_shape(down, (1, 7, 7)) == jconv.output_shape(down, (1, 8, 8)) == (1, 4, 4)
    up = jconv.ConvTranspose2d(1, 1, 3, stride=2, padding=1)
    assert jconv.output_shape(up, (1, 4, 4)) == (1, 7, 7)
    up8 = jconv.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1)
    assert jconv.output_shape(up8, (1, 4, 4)) == (1, 8, 8)

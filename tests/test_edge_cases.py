"""Valid edge cases that must simply work, each against torch (issue 8)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SLOW, tiered

import jconv

F32 = np.float32


def _torch_apply(torch, cfg, w, b, x):
    n = cfg.ndim
    name = ("ConvTranspose" if cfg.transposed else "Conv") + f"{n}d"
    kw = dict(
        stride=cfg.stride, dilation=cfg.dilation, groups=cfg.groups, bias=cfg.bias,
        padding=cfg.padding,
    )  # fmt: skip
    if cfg.transposed:
        kw["output_padding"] = cfg.output_padding
    else:
        kw["padding_mode"] = cfg.padding_mode
    layer = getattr(torch.nn, name)(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **kw)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(np.asarray(w)))
        if b is not None:
            layer.bias.copy_(torch.tensor(np.asarray(b)))
        return layer(torch.tensor(np.asarray(x))).numpy()


def _both(torch, cfg, x, seed=0):
    params = jconv.init(jax.random.key(seed), cfg)
    mine = np.asarray(jconv.apply(params, jnp.asarray(x)))
    theirs = _torch_apply(torch, cfg, params.weight, params.bias, x)
    return mine, theirs


EDGE = [
    ("empty batch", jconv.Conv2d(3, 4, 3, padding=1), (0, 3, 5, 5)),
    ("empty batch, transposed", jconv.ConvTranspose2d(3, 4, 3, stride=2), (0, 3, 5, 5)),
    ("unbatched", jconv.Conv2d(3, 4, 3, padding=1), (3, 5, 5)),
    ("unbatched 1-d", jconv.Conv1d(3, 4, 3), (3, 9)),
    ("kernel as large as the padded input", jconv.Conv2d(2, 3, 7, padding=1), (1, 2, 5, 5)),
    ("kernel as large as the input", jconv.Conv3d(2, 3, (2, 3, 4)), (1, 2, 2, 3, 4)),
    ("1x1 input and kernel", jconv.Conv2d(3, 5, 1), (2, 3, 1, 1)),
    ("1x1 input, padded", jconv.Conv2d(3, 5, 3, padding=1), (2, 3, 1, 1)),
    ("circular pad as large as the input", jconv.Conv2d(2, 2, 7, padding=3, padding_mode="circular"),
     (1, 2, 3, 3)),
    ("circular pad as large as the input, 1-d", jconv.Conv1d(1, 1, 5, padding=2,
     padding_mode="circular"), (1, 1, 2)),
    ("replicate pad larger than the input", jconv.Conv2d(1, 1, 5, padding=4,
     padding_mode="replicate"), (1, 1, 2, 2)),
    ("many channels, depthwise", jconv.Conv2d(1024, 2048, 3, padding=1, groups=1024),
     (1, 1024, 4, 4)),
    ("many channels, many groups", jconv.Conv2d(2048, 512, 1, groups=256), (1, 2048, 2, 2)),
    ("many channels, grouped 3x3", jconv.Conv2d(512, 512, 3, padding=1, groups=64),
     (1, 512, 3, 3)),
    ("one group per channel, transposed", jconv.ConvTranspose2d(256, 256, 4, stride=2,
     padding=1, groups=256), (1, 256, 3, 3)),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, cfg, shape",
    [
        pytest.param(*e, id=e[0], marks=SLOW if i in (4, 5, 8, 11, 12, 13, 14) else ())
        for i, e in enumerate(EDGE)
    ],
)
def test_edge_case_works_and_matches_torch(torch, name, cfg, shape):
    x = np.random.RandomState(0).standard_normal(shape).astype(F32)
    mine, theirs = _both(torch, cfg, x)
    assert mine.shape == theirs.shape == jconv.output_shape(cfg, shape)
    np.testing.assert_allclose(
        mine, theirs, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(theirs).max(initial=0.0))
    )
    # and the gradients exist and are finite
    params = jconv.init(jax.random.key(0), cfg)
    g = jax.grad(lambda p, x: jnp.sum(jconv.apply(p, x) ** 2), argnums=(0, 1))(params, x)
    assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(g))


NONFINITE = [
    jconv.Conv2d(3, 4, 3, padding=1),  # xla
    jconv.Conv2d(32, 32, 3, padding=1, algorithm="widened"),
    jconv.Conv2d(32, 32, 3, padding=1, algorithm="tapgrad"),
    jconv.Conv2d(8, 8, 3, padding=1, groups=8),  # shift
    jconv.Conv2d(8, 8, 3, stride=2, padding=1, groups=4),  # shift, strided
    jconv.Conv2d(4, 4, 13, padding=6, groups=4),  # fft
    jconv.Conv2d(128, 128, 3, padding=1, groups=2),  # pergroup
    jconv.Conv2d(8, 4, 1),  # matmul
    jconv.Conv3d(4, 4, 3, padding=1),  # fold
    jconv.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
    jconv.ConvTranspose2d(4, 4, 4, stride=2, padding=1),  # subpixel
]


@pytest.mark.parametrize(
    "cfg", tiered(NONFINITE, [3, 5, 10], ids=[repr(c)[:60] for c in NONFINITE])
)
def test_nan_and_inf_propagate_as_in_torch(torch, cfg):
    """A NaN, a +inf and a -inf in the input: the same outputs are NaN and ±inf as in torch."""
    shape = (2, cfg.in_channels) + (14,) * cfg.ndim
    x = np.random.RandomState(1).standard_normal(shape).astype(F32)
    x[(0, 0) + (3,) * cfg.ndim] = np.nan
    x[(0, cfg.in_channels - 1) + (9,) * cfg.ndim] = np.inf
    x[(1, 0) + (5,) * cfg.ndim] = -np.inf
    mine, theirs = _both(torch, cfg, x)
    assert np.isnan(theirs).any() and np.isinf(theirs).any() or np.isnan(theirs).sum() > 1
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))
    np.testing.assert_array_equal(np.isposinf(mine), np.isposinf(theirs))
    np.testing.assert_array_equal(np.isneginf(mine), np.isneginf(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(mine[finite], theirs[finite], rtol=1e-4, atol=1e-4)


def test_fft_keeps_nan_and_inf_positions_inside_vjp_jvp_and_vmap():
    """The FFT's finiteness guard is in its forward form: the output that ``vjp``,
    ``jvp`` and ``vmap`` compute holds NaN and ±inf where XLA's direct sum does."""
    fft = jconv.Conv2d(4, 4, 9, padding=4, groups=4, algorithm="fft")
    ref = dataclasses.replace(fft, algorithm="xla")
    params = jconv.init(jax.random.key(0), fft)
    x = np.random.RandomState(2).standard_normal((2, 4, 12, 12)).astype(F32)
    x[0, 1, 3, 3], x[1, 2, 8, 5], x[1, 2, 2, 9] = np.nan, np.inf, -np.inf
    want = np.asarray(jconv.apply(dataclasses.replace(params, cfg=ref), x))
    assert np.isnan(want).any() and np.isposinf(want).any() and np.isneginf(want).any()

    def f(x):
        return jconv.apply(params, x)

    got = {
        "vjp": jax.vjp(f, x)[0],
        "jvp": jax.jvp(f, (x,), (np.ones_like(x),))[0],
        "vmap": jax.vmap(f)(x[:, None])[:, 0],
    }
    for name, y in got.items():
        y = np.asarray(y)
        for test in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(test(y), test(want), err_msg=name)
        finite = np.isfinite(want)
        np.testing.assert_allclose(y[finite], want[finite], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("algorithm", tiered(["auto", "xla"], [0]))
def test_bf16_input_gives_bf16_output_close_to_torch(torch, algorithm):
    cfg = jconv.Conv2d(8, 8, 3, padding=1, groups=2, algorithm=algorithm)
    params = jconv.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 8, 9, 9), jnp.bfloat16)
    p16 = dataclasses.replace(
        params, weight=params.weight.astype(jnp.bfloat16), bias=params.bias.astype(jnp.bfloat16)
    )
    y = jconv.apply(p16, x)
    assert y.dtype == jnp.bfloat16
    want = _torch_apply(
        torch, cfg, np.asarray(p16.weight, F32), np.asarray(p16.bias, F32), np.asarray(x, F32)
    )
    np.testing.assert_allclose(np.asarray(y, F32), want, rtol=2e-2, atol=2e-2)


EMPTY_BATCH = [
    jconv.Conv2d(3, 4, 3, padding=1, algorithm="xla"),
    jconv.Conv2d(4, 4, 3, stride=2, algorithm="tapgrad"),
    jconv.Conv2d(8, 4, 1, algorithm="matmul"),
    jconv.Conv1d(8, 4, 1, stride=2, groups=2, algorithm="matmul"),
    jconv.Conv2d(8, 8, 3, padding=1, groups=8, algorithm="shift"),
    jconv.Conv2d(4, 4, 9, padding=4, groups=4, algorithm="fft"),
    jconv.Conv2d(8, 8, 3, groups=2, algorithm="pergroup"),
    jconv.Conv2d(3, 8, 4, stride=2, algorithm="s2d"),
    jconv.Conv3d(4, 4, 3, padding=1, algorithm="fold"),
    jconv.Conv3d(4, 16, 3, stride=2, padding=1, algorithm="fold"),  # col2im input gradient
    jconv.Conv2d(32, 32, 3, padding=1, algorithm="widened"),
    jconv.ConvTranspose2d(4, 4, 4, stride=2, padding=1, algorithm="subpixel"),
    jconv.ConvTranspose2d(8, 8, 3, stride=2, groups=2, algorithm="pergroup"),
    jconv.ConvTranspose1d(4, 4, 1, stride=3, algorithm="auto"),
]


@pytest.mark.parametrize(
    "cfg",
    tiered(
        EMPTY_BATCH, [0, 2, 5, 10], ids=[f"{type(c).__name__}-{c.algorithm}" for c in EMPTY_BATCH]
    ),
)
def test_an_empty_batch_runs_on_every_lowering(cfg):
    """Batch 0 gives an empty output of torch's shape and zero-size gradients, jit or not."""
    shape = (0, cfg.in_channels) + (9,) * cfg.ndim
    params = jconv.init(jax.random.key(0), cfg)
    x = jnp.zeros(shape)
    loss = lambda p, x: jnp.sum(jconv.apply(p, x) ** 2)  # noqa: E731
    for run in (jconv.apply, jax.jit(jconv.apply)):
        assert run(params, x).shape == jconv.output_shape(cfg, shape)
    for grad in (jax.grad(loss, argnums=(0, 1)), jax.jit(jax.grad(loss, argnums=(0, 1)))):
        gp, gx = grad(params, x)
        assert gx.shape == shape
        assert gp.weight.shape == params.weight.shape
        assert not np.asarray(gp.weight).any()

"""Every forward lowering equals "xla", forward and gradients; the planner's contract."""

import dataclasses
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SLOW, arrays_for, assert_matches, jconv_grads, random_case, tiered
from jax import lax
from jax.test_util import check_grads

import jconv
from jconv.algorithms import FORWARD_ONLY
from jconv.lowering import ALGORITHMS, plan

FORWARD = (*FORWARD_ONLY, "pergroup")  # every forward lowering but "xla"


def _case_for(algorithm: str, seed: int):
    case = random_case(seed)
    while algorithm == "fold" and case.ndim != 3:  # the next 3-d config
        seed += 1000
        case = random_case(seed)
    if algorithm == "matmul":  # 1x1 kernels only; every other option stays random
        kwargs = dict(case.kwargs, kernel_size=1)
        if kwargs["padding"] in ("same", "causal"):
            kwargs["padding"] = 0
        case = dataclasses.replace(case, kwargs=kwargs)
    return case


@pytest.mark.parametrize("algorithm", FORWARD)
@pytest.mark.parametrize("seed", tiered(range(6000, 6010), 2))
def test_lowering_equals_xla_forward_and_gradients(algorithm, seed):
    """y, dx, dw and db of each lowering equal the "xla" lowering's on random configs
    (1/2/3-d, every padding form and mode, stride, dilation, dense/grouped/depthwise)."""
    case = _case_for(algorithm, seed)
    results = []
    for name in ("xla", algorithm):
        cfg = case.cfg(algorithm=name)
        x, w, b, gy = arrays_for(case, cfg)
        results.append(jconv_grads(cfg, x, w, b, gy, case.jit))
    assert_matches(results[1], results[0], case, 1e-4 if "fft" in algorithm else 2e-5)


SMALL = [
    ("shift", jconv.Conv2d(4, 8, 3, padding=1, groups=4), (1, 4, 5, 5)),
    ("shift", jconv.Conv2d(4, 4, 3, stride=2, padding=(1, 0), groups=2), (1, 4, 6, 5)),
    ("tapgrad", jconv.Conv2d(3, 2, 3, padding=1, dilation=(1, 2)), (2, 3, 5, 6)),
    ("matmul", jconv.Conv1d(4, 2, 1, stride=2, groups=2), (1, 4, 7)),  # broadcast weight
    ("matmul", jconv.Conv2d(6, 8, 1, groups=2), (2, 6, 2, 3)),  # one product over the batch
    ("fft", jconv.Conv2d(2, 2, 5, padding=2, groups=2), (1, 2, 6, 6)),
    ("fft", jconv.Conv1d(2, 4, 3, stride=2, dilation=2, groups=2), (1, 2, 9)),
    ("shift_fft", jconv.Conv2d(2, 2, 5, stride=(2, 1), padding=2, groups=2), (1, 2, 7, 6)),
    ("pergroup", jconv.Conv3d(4, 2, 2, padding=1, groups=2), (1, 4, 3, 3, 3)),
    ("s2d", jconv.Conv2d(3, 2, (3, 4), stride=(2, 3), padding=1), (1, 3, 7, 8)),
    ("fold", jconv.Conv3d(2, 4, (2, 3, 2), stride=(2, 1, 1), padding=1, groups=2), (1, 2, 4, 3, 3)),
    ("subpixel", jconv.ConvTranspose2d(4, 6, 3, stride=2, padding=(1, 0), groups=2), (1, 4, 3, 4)),
    (
        "unfold",
        jconv.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
        (2, 4, 5, 6),
    ),
    ("unfold", jconv.Conv1d(3, 4, 3, padding=((2, 0),)), (1, 3, 4)),
    ("unfold", jconv.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=(0, 1, 0)), (1, 2, 3, 4, 3)),
    # a batch: stacked as (C, N·q)
    ("unfold", jconv.Conv3d(4, 2, 2, padding=(1, 0, 0), groups=2), (3, 4, 2, 3, 2)),
    ("widened", jconv.Conv2d(3, 4, (3, 2), padding=(1, 0), dilation=(1, 2)), (2, 3, 5, 6)),
    ("widened", jconv.Conv2d(2, 4, 3, stride=(2, 1), padding=((0, 2), (1, 1))), (1, 2, 6, 5)),
    # blocked fold, ungrouped and strided: weight gradient by convolutions, input
    # gradient by sub-pixel; a 3-d sub-pixel one: weight gradient by matrix products
    ("fold", jconv.Conv3d(3, 4, 3, stride=(2, 2, 1), padding=1), (2, 3, 5, 6, 4)),
    # strided fold whose output channels outnumber its pixels: input gradient by col2im
    ("fold", jconv.Conv3d(2, 6, 3, stride=2, padding=(1, 0, 1), groups=2), (2, 2, 3, 5, 4)),
    (
        "subpixel",
        jconv.ConvTranspose3d(3, 2, 3, stride=2, padding=1, output_padding=1),
        (1, 3, 3, 4, 3),
    ),
    # kernels a multiple of the stride: the sub-pixel forward (padded inside XLA's conv)
    (
        "subpixel",
        jconv.ConvTranspose2d(3, 2, 4, stride=2, padding=(1, 2), output_padding=(1, 0)),
        (2, 3, 3, 4),
    ),
    ("subpixel", jconv.ConvTranspose1d(2, 3, 6, stride=3, padding=2), (1, 2, 5)),
    # kernels equal to the stride: the sub-pixel forward as products over channels
    ("subpixel", jconv.ConvTranspose2d(3, 2, 2, stride=2), (2, 3, 3, 4)),
    ("subpixel", jconv.ConvTranspose1d(4, 3, 3, stride=3, padding=1), (3, 4, 2)),
    # kernels shorter than the stride: phases without taps left out of the conv
    (
        "subpixel",
        jconv.ConvTranspose2d(4, 6, (1, 3), stride=(3, 2), padding=(0, 1), output_padding=1),
        (1, 4, 3, 4),
    ),
    (
        "subpixel",
        jconv.ConvTranspose3d(2, 3, (1, 2, 3), stride=2, padding=(0, 0, 1), output_padding=1),
        (1, 2, 2, 3, 3),
    ),
    ("subpixel", jconv.ConvTranspose1d(2, 3, 2, stride=5, dilation=2, padding=1), (2, 2, 4)),
    # transposed, the weight outweighing the input: col2im forward, stacked-window gradient
    (
        "subpixel",
        jconv.ConvTranspose2d(16, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
        (1, 16, 2, 2),
    ),
    ("subpixel", jconv.ConvTranspose1d(8, 3, 4, stride=3, padding=1, dilation=2), (1, 8, 3)),
    (
        "subpixel",
        jconv.ConvTranspose3d(16, 2, (2, 3, 1), stride=(2, 1, 3), padding=(0, 1, 0)),
        (1, 16, 2, 2, 1),
    ),
    # transposed, narrow outputs: the weight gradient from the output gradient's windows
    ("subpixel", jconv.ConvTranspose1d(16, 2, 3, stride=2, padding=1), (2, 16, 9)),
    (
        "subpixel",
        jconv.ConvTranspose2d(24, 2, 2, stride=2, padding=(0, 1), output_padding=(1, 0)),
        (2, 24, 4, 5),
    ),
    ("subpixel", jconv.ConvTranspose3d(20, 1, 2, stride=(2, 1, 2)), (1, 20, 3, 2, 4)),
    # strided depthwise with many taps: the weight gradient over stride phases
    ("shift", jconv.Conv2d(2, 4, 7, stride=2, padding=(3, 1), groups=2), (1, 2, 9, 8)),
    ("shift", jconv.Conv1d(2, 2, 17, stride=2, padding=((3, 8),), groups=2), (2, 2, 23)),
    # fft over blocks of groups, strided: the input gradient's rows past the last window
    ("fft", jconv.Conv2d(4, 4, 5, stride=(2, 3), padding=(2, 1), groups=4), (2, 4, 9, 10)),
]


def _small(i: int):
    """SMALL[i]'s config with its lowering forced, parameters and an input."""
    name, cfg, shape = SMALL[i]
    cfg = dataclasses.replace(cfg, algorithm=name)
    return (
        cfg,
        jconv.init(jax.random.key(i), cfg),
        jax.random.normal(jax.random.key(100 + i), shape),
    )


@pytest.mark.parametrize(
    "algorithm, cfg, shape",
    [
        # a 3-d sub-pixel phase whose cotangent planes outgrow its input's
        ("subpixel", jconv.ConvTranspose3d(6, 1, 4, stride=2), (2, 6, 3, 4, 3)),
        (
            "subpixel",
            jconv.ConvTranspose3d(8, 2, 4, stride=2, padding=1, dilation=(1, 2, 1)),
            (1, 8, 3, 4, 5),
        ),
        # fold with output channels at most a sixth of the folded input ones
        ("fold", jconv.Conv3d(6, 2, 3, padding=1, dilation=(1, 2, 1)), (2, 6, 4, 5, 4)),
        # tapgrad with fewer output than input channels, 1-d to 3-d, grouped
        ("tapgrad", jconv.Conv2d(8, 3, 3, padding=((0, 2), (1, 0))), (2, 8, 5, 6)),
        ("tapgrad", jconv.Conv1d(4, 2, 5, padding=((3, 1),), groups=2), (2, 4, 9)),
        ("tapgrad", jconv.Conv3d(4, 2, 2, padding=1, dilation=(1, 2, 1)), (1, 4, 3, 5, 3)),
    ],
)
def test_weight_gradient_from_shifted_cotangents_equals_xla(algorithm, cfg, shape, monkeypatch):
    """Weight gradients (fold's, tapgrad's) where each tap's product reads the cotangent
    shifted to where that tap meets the input (checked: that path runs). Forward and
    gradients equal xla's."""
    from jconv.lowering import folded, taps

    calls, real = [], folded.shifted_cotangents

    def spy(*args):
        calls.append(args)
        return real(*args)

    for module in (folded, taps):
        monkeypatch.setattr(module, "shifted_cotangents", spy)
    jax.clear_caches()  # trace afresh: the spy must see this config's gradient
    x = jax.random.normal(jax.random.key(0), shape)
    results = []
    for name in ("xla", algorithm):
        forced = dataclasses.replace(cfg, algorithm=name)
        p = jconv.init(jax.random.key(1), forced)
        y, vjp = jax.vjp(
            lambda w, b, x, c=forced: jconv.apply(jconv.Params(w, b, c), x), p.weight, p.bias, x
        )
        results.append((y, *vjp(jnp.cos(y))))
    assert calls
    for got, want in zip(results[1], results[0]):
        chex.assert_trees_all_close(got, want, atol=2e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("i", tiered(range(len(SMALL)), [11]))
def test_check_grads_second_order_and_forward_mode(i):
    """jax.test_util.check_grads, reverse to order 2 and forward to order 2, per lowering."""
    cfg, params, x = _small(i)

    def f(w, x):
        return jconv.apply(jconv.Params(w, params.bias, cfg), x)

    check_grads(f, (params.weight, x), order=2, modes=("rev", "fwd"), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("i", tiered(range(len(SMALL)), [10]))
def test_jacfwd_vmap_and_hessian_compose(i):
    """Forward mode (eager and jitted), vmap over a batch of params and jax.hessian
    run through each lowering."""
    cfg, params, x = _small(i)

    def f(w):
        return jconv.apply(jconv.Params(w, params.bias, cfg), x)

    ref_cfg = dataclasses.replace(cfg, algorithm="xla")

    def g(w):
        return jconv.apply(jconv.Params(w, params.bias, ref_cfg), x)

    want = jax.jacrev(g)(params.weight)
    chex.assert_trees_all_close(jax.jacfwd(f)(params.weight), want, atol=1e-4)
    chex.assert_trees_all_close(jax.jit(jax.jacfwd(f))(params.weight), want, atol=1e-4)
    ws = jnp.stack([params.weight, 2 * params.weight])
    chex.assert_trees_all_close(jax.vmap(f)(ws), jax.vmap(g)(ws), atol=1e-4)
    h = jax.hessian(lambda w: jnp.sum(jnp.sin(f(w))))(params.weight)
    h_ref = jax.hessian(lambda w: jnp.sum(jnp.sin(g(w))))(params.weight)
    chex.assert_trees_all_close(h, h_ref, atol=1e-4)


def test_fft_matches_a_direct_sum_on_a_31x31_depthwise_kernel():
    cfg = jconv.Conv2d(3, 3, 31, padding=15, groups=3)
    params = jconv.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 3, 20, 20))
    outs = [
        jconv.apply(dataclasses.replace(params, cfg=dataclasses.replace(cfg, algorithm=a)), x)
        for a in ("xla", "fft")
    ]
    assert plan(cfg, x.shape, jnp.float32, "cpu") == "fft"
    assert plan(cfg, x.shape, jnp.float32, "cpu", devices=8) == "xla"  # see the sharding test
    err = float(jnp.max(jnp.abs(outs[0] - outs[1])) / jnp.max(jnp.abs(outs[0])))
    assert err < 1e-5


@pytest.mark.parametrize(
    "cfg, want",
    [
        (jconv.Conv2d(64, 64, 3, padding=1), "widened"),
        (jconv.Conv2d(64, 64, 3, padding=2, dilation=2), "xla"),
        (jconv.Conv2d(16, 16, 3, padding=1), "xla"),
        (jconv.Conv2d(64, 64, 3, stride=2, padding=1), "xla"),
        (jconv.Conv2d(1, 32, 3, padding=1), "xla"),
        (jconv.Conv2d(128, 128, 3, padding=4, dilation=4), "xla"),
        (jconv.Conv2d(2048, 512, 1), "matmul"),
        (jconv.Conv3d(64, 64, 3, padding=1, groups=4), "xla"),
        (jconv.ConvTranspose2d(64, 64, 4, stride=2, padding=1, groups=4), "xla"),
        (jconv.Conv2d(3, 64, 7, stride=2, padding=3), "s2d"),
        (jconv.Conv2d(3, 32, 5, stride=2, padding=2), "s2d"),
        (jconv.Conv2d(1, 32, 4, stride=2, padding=1), "xla"),
        (jconv.Conv2d(16, 64, 7, stride=2, padding=3), "xla"),
        (jconv.Conv1d(64, 64, 7, padding=3), "xla"),
        (jconv.Conv2d(256, 128, 1), "matmul"),
        (jconv.Conv2d(128, 128, 3, padding=1, groups=128), "shift"),
        (jconv.Conv2d(64, 128, 3, groups=64), "shift"),
        (jconv.Conv2d(64, 128, 5, groups=64), "shift"),
        (jconv.Conv2d(96, 96, 7, padding=3, groups=96), "shift_fft"),
        (jconv.Conv2d(96, 96, 7, stride=2, padding=3, groups=96), "shift"),
        (jconv.Conv2d(96, 96, 9, stride=2, padding=4, groups=96), "shift_fft"),
        (jconv.Conv3d(16, 16, 5, stride=2, padding=2, groups=16), "shift"),
        (jconv.Conv3d(16, 16, 5, padding=2, groups=16), "shift_fft"),
        (jconv.Conv3d(16, 16, 7, padding=3, groups=16), "fft"),
        (jconv.Conv3d(16, 16, 3, padding=1, groups=16), "shift"),
        (jconv.Conv1d(64, 64, 25, padding=12, groups=64), "shift"),
        (jconv.Conv1d(64, 64, 31, padding=15, groups=64), "shift_fft"),
        (jconv.Conv1d(64, 64, 63, padding=31, groups=64), "fft"),
        (jconv.Conv2d(64, 64, 13, padding=6, groups=64), "fft"),
        (jconv.Conv2d(64, 64, 31, padding=15, groups=64), "fft"),
        (jconv.Conv2d(128, 128, 3, padding=1, groups=32), "shift"),
        (jconv.Conv2d(128, 128, 3, padding=1, groups=4), "pergroup"),
        (jconv.ConvTranspose2d(128, 64, 4, stride=2, padding=1), "subpixel"),
        (jconv.Conv3d(32, 32, 3, padding=1), "fold"),
        (jconv.Conv3d(32, 32, (3, 1, 1), padding=(1, 0, 0)), "xla"),
        (jconv.Conv3d(32, 32, (1, 1, 3), padding=(0, 0, 1)), "fold"),
        (jconv.Conv1d(64, 64, 3, padding=1), "xla"),
        # narrow heads: at most 16 outputs, at least 8 inputs per output, stride 1
        (jconv.Conv2d(64, 3, 3, padding=1), "tapgrad"),
        (jconv.Conv2d(128, 4, 5, padding=4, dilation=2), "tapgrad"),
        (jconv.Conv2d(64, 3, 7, padding=3), "xla"),
        (jconv.Conv1d(32, 1, 7, padding=3), "tapgrad"),
        (jconv.Conv2d(256, 32, 3, padding=1), "xla"),
        (jconv.Conv2d(64, 16, 3, padding=1), "xla"),
        (jconv.Conv2d(64, 3, 3, stride=2, padding=1), "xla"),
        (jconv.Conv2d(64, 4, 3, padding=1, groups=2), "pergroup"),
    ],
)
def test_planner_picks_by_layer_family_on_cpu_and_xla_elsewhere(cfg, want):
    size = {"widened": 16, "shift_fft": 64}.get(want, 8)
    shape = (16, cfg.in_channels) + (size,) * cfg.ndim
    assert plan(cfg, shape, jnp.float32, "cpu") == want
    for backend in ("gpu", "tpu"):
        assert plan(cfg, shape, jnp.float32, backend) == "xla"
    forced = dataclasses.replace(cfg, algorithm="xla")
    assert plan(forced, shape, jnp.float32, "cpu") == "xla"


BATCH_2D, HEIGHT_2D = (True, False, False, False), (False, False, True, False)
BATCH_3D, DEPTH_3D = (True, False, False, False, False), (False, False, True, False, False)


@pytest.mark.parametrize(
    "cfg, backend, sharded, want",
    [
        # what XLA's partitioner would gather is never planned on a split input
        (jconv.Conv2d(64, 64, 31, padding=15, groups=64), "cpu", BATCH_2D, "xla"),
        (jconv.Conv2d(64, 64, 31, padding=15, groups=64), "cpu", None, "xla"),
        (jconv.Conv3d(32, 32, 3, padding=1), "cpu", BATCH_3D, "fold"),
        (jconv.Conv3d(32, 32, 3, padding=1), "cpu", DEPTH_3D, "xla"),
        (jconv.Conv3d(32, 32, 3, padding=1), "cpu", None, "xla"),
        (jconv.Conv2d(128, 128, 3, padding=1, groups=4), "gpu", BATCH_2D, "pergroup"),
        (jconv.Conv2d(128, 128, 3, padding=1, groups=4), "tpu", None, "pergroup"),
        (jconv.Conv2d(128, 128, 3, padding=1, groups=128), "gpu", HEIGHT_2D, "xla"),
        (jconv.Conv2d(128, 128, 1, groups=4), "gpu", BATCH_2D, "pergroup"),
        (jconv.ConvTranspose2d(128, 64, 4, stride=2, padding=1), "gpu", HEIGHT_2D, "subpixel"),
        (jconv.ConvTranspose2d(128, 64, 4, stride=2, padding=1), "gpu", BATCH_2D, "xla"),
        (
            jconv.ConvTranspose2d(128, 64, 4, stride=2, padding=1, groups=2),
            "cpu",
            BATCH_2D,
            "pergroup",
        ),
        (jconv.ConvTranspose2d(128, 64, 3, padding=1, groups=2), "gpu", None, "pergroup"),
        # known to be unsplit: the one-device choice
        (jconv.Conv2d(64, 64, 31, padding=15, groups=64), "cpu", (False,) * 4, "fft"),
        (jconv.Conv2d(128, 128, 3, padding=1, groups=4), "gpu", (False,) * 4, "xla"),
    ],
)
def test_planner_keeps_split_inputs_on_lowerings_the_partitioner_keeps_local(
    cfg, backend, sharded, want
):
    shape = (8, cfg.in_channels) + (16,) * cfg.ndim
    assert plan(cfg, shape, jnp.float32, backend, 8, sharded) == want
    assert plan(cfg, shape, jnp.float32, backend, 1, sharded) == plan(
        cfg, shape, jnp.float32, backend
    )


def test_planner_is_a_pure_function_of_its_arguments():
    cfg = jconv.Conv2d(8, 8, 3, groups=8)
    first = plan(cfg, (2, 8, 9, 9), jnp.float32, "cpu")
    jax.jit(jconv.apply)(jconv.init(jax.random.key(0), cfg), jnp.ones((2, 8, 9, 9)))
    assert [plan(cfg, (2, 8, 9, 9), jnp.float32, "cpu") for _ in range(3)] == [first] * 3


@pytest.mark.parametrize("groups", [1, 4])
def test_default_off_cpu_lowers_to_the_same_program_as_plain_lax(groups):
    """The lowering planned for GPU and TPU ("xla") emits exactly plain lax's StableHLO."""
    cfg = jconv.Conv2d(8, 16, 3, stride=2, padding=1, groups=groups, bias=False)
    assert plan(cfg, (2, 8, 16, 16), jnp.float32, "gpu") == "xla"
    forced = dataclasses.replace(cfg, algorithm="xla")
    w = jnp.ones(cfg.weight_shape)
    x = jnp.ones((2, 8, 16, 16))

    def ours(x, w):
        return jconv.apply(jconv.Params(w, None, forced), x)

    def plain(x, w):
        return lax.conv_general_dilated(
            x, w, (2, 2), [(1, 1), (1, 1)], dimension_numbers=("NCHW", "OIHW", "NCHW"),
            feature_group_count=groups,
        )  # fmt: skip

    def convs(f):
        text = jax.jit(f).lower(x, w).as_text()
        return [
            line.split("=", 1)[1].strip() for line in text.splitlines() if "convolution" in line
        ]

    assert convs(ours) == convs(plain) and len(convs(plain)) == 1


def test_every_algorithm_is_named_in_the_error_for_an_unknown_one():
    with pytest.raises(ValueError) as e:
        jconv.Conv2d(1, 1, 3, algorithm="winograd")
    for name in ALGORITHMS:
        assert repr(name) in str(e.value)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(kernel_size=3, algorithm="matmul"), "needs a 1x1 kernel"),
        (dict(kernel_size=3, algorithm="subpixel"), "transposed convolutions only"),
    ],
)
def test_forced_lowering_that_does_not_fit_is_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        jconv.Conv2d(2, 2, **kwargs)
    if kwargs["algorithm"] == "matmul":
        with pytest.raises(ValueError, match="forward convolutions only"):
            jconv.ConvTranspose2d(2, 2, 1, algorithm="shift")


@pytest.mark.parametrize("groups", tiered([1, 2, 4], [2]))
def test_bfloat16_forward_and_gradients_stay_close_on_every_lowering(groups):
    """bf16 in, bf16 out, on every lowering; values and gradients within bf16 rounding
    of the "xla" lowering's (groups=4 is depthwise: its blocked weight gradient)."""
    cfg = jconv.Conv2d(4, 4, 3, padding=1, groups=groups, dtype=jnp.bfloat16)
    params = jconv.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, 4, 6, 6), jnp.bfloat16)

    def run(name):
        p = dataclasses.replace(params, cfg=dataclasses.replace(cfg, algorithm=name))
        y, vjp = jax.vjp(lambda p, x: jconv.apply(p, x), p, x)
        return [y, *jax.tree.leaves(vjp(jnp.ones_like(y)))]

    ref = [np.asarray(a, np.float32) for a in run("xla")]
    for name in (n for n in FORWARD if n not in ("matmul", "fold")):  # 1x1 only, 3-d only
        got = run(name)
        assert got[0].dtype == jnp.bfloat16, name
        for a, b in zip(got, ref):
            assert np.max(np.abs(np.asarray(a, np.float32) - b)) <= 0.05 * np.max(np.abs(b)), name


@pytest.mark.parametrize(
    "cfg, shape",
    [
        # fold's strided input gradient by col2im
        (jconv.Conv3d(4, 16, 3, stride=2, padding=1), (1, 4, 4, 4, 4)),
        # the transposed forward by col2im, its weight gradient from stacked windows
        (jconv.ConvTranspose2d(16, 4, 3, stride=2, padding=1, output_padding=1), (1, 16, 2, 2)),
    ],
)
def test_col2im_forms_keep_bfloat16(cfg, shape):
    """col2im sums in float32; its forms still give bfloat16 outputs and gradients,
    within bfloat16 rounding of the "xla" lowering's."""
    x = jax.random.normal(jax.random.key(1), shape, jnp.bfloat16)

    def run(name):
        c = dataclasses.replace(cfg, algorithm=name, dtype=jnp.bfloat16)
        p = jconv.init(jax.random.key(0), c)
        y, vjp = jax.vjp(lambda p, x: jconv.apply(p, x), p, x)
        return [y, *jax.tree.leaves(vjp(jnp.ones_like(y)))]

    got, ref = run("auto"), run("xla")
    assert plan(cfg, shape, jnp.bfloat16, "cpu") != "xla"
    for a, b in zip(got, ref):
        assert a.dtype == jnp.bfloat16
        b = np.asarray(b, np.float32)
        assert np.max(np.abs(np.asarray(a, np.float32) - b)) <= 0.05 * np.max(np.abs(b))


_CUSTOM = ("shift", "tapgrad", "subpixel", "widened", "matmul", "unfold")  # one case of each


@pytest.mark.parametrize("i", tiered([[n for n, *_ in SMALL].index(name) for name in _CUSTOM], [0]))
def test_vmap_over_inputs_keeps_the_lowering_and_its_gradients(i):
    """vmap over inputs alone folds the mapped axis into the batch: forward and
    gradients (weight and input) equal the "xla" lowering's."""
    cfg, params, x = _small(i)
    xs = jnp.stack([x, 2 * x, -x])
    ref_params = dataclasses.replace(params, cfg=dataclasses.replace(cfg, algorithm="xla"))

    def loss(p, xs):
        return jnp.sum(jnp.sin(jax.vmap(lambda x: jconv.apply(p, x))(xs)))

    got = jax.grad(loss, argnums=(0, 1))(params, xs)
    want = jax.grad(loss, argnums=(0, 1))(ref_params, xs)
    chex.assert_trees_all_close(got[0].weight, want[0].weight, atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_close(got[1], want[1], atol=1e-4, rtol=1e-4)
    ys = jax.vmap(lambda x: jconv.apply(params, x))(xs)
    chex.assert_trees_all_close(ys, jax.vmap(lambda x: jconv.apply(ref_params, x))(xs), atol=1e-5)


@pytest.mark.parametrize(
    "name, batch, cout",
    [
        ("widened", 33, 8),  # XLA's weight gradient over batch blocks of 8, ragged last
        ("s2d", 32, 64),  # blocks of <= 16 images and 16 output channels
        pytest.param("widened", 300, 4, marks=SLOW),  # past 32 blocks: larger ones
        pytest.param("s2d", 33, 17, marks=SLOW),  # ragged last blocks
        pytest.param("s2d", 32, 272, marks=SLOW),  # past 32 blocks: XLA's own
    ],
)
def test_blocked_weight_gradients_and_their_limits(name, batch, cout):
    """The weight gradients summed over blocks equal XLA's: "widened" sums XLA's own
    over blocks of 8 images; "s2d" (its inner widened conv) over blocks of <= 16
    images and 16 output channels, and keeps XLA's own beyond 32 blocks."""
    if name == "widened":
        cfg = jconv.Conv2d(8, cout, 3, padding=1, bias=False)
    else:
        cfg = jconv.Conv2d(3, cout, 4, stride=2, padding=1, bias=False)
    x = jax.random.normal(jax.random.key(0), (batch, cfg.in_channels, 6, 6))
    grads = []
    for algorithm in (name, "xla"):
        c = dataclasses.replace(cfg, algorithm=algorithm)
        p = jconv.init(jax.random.key(1), c)
        grads.append(jax.grad(lambda p: jnp.sum(jnp.sin(jconv.apply(p, x))))(p).weight)
    chex.assert_trees_all_close(grads[0], grads[1], atol=2e-5 * float(jnp.abs(grads[1]).max()))


@pytest.mark.parametrize(
    "cfg, shape, dtype, want",
    [
        # at least 0.85 output channels per output pixel of a batch, 1.25 of one image
        (jconv.Conv2d(512, 512, 3, padding=1), (8, 512, 7, 7), "float32", "unfold"),
        (jconv.Conv2d(512, 512, 3, padding=1), (11, 512, 7, 7), "float32", "unfold"),
        # 0.87 channels per pixel, but the estimate reads 1.905x xla's temporaries
        (jconv.Conv2d(512, 512, 3, padding=1), (12, 512, 7, 7), "float32", "xla"),
        (jconv.Conv2d(256, 512, 3, stride=2, padding=1), (8, 256, 14, 14), "float32", "unfold"),
        (jconv.Conv2d(256, 256, 3, padding=1), (8, 256, 6, 6), "float32", "unfold"),
        (jconv.Conv2d(256, 256, 3, padding=1), (16, 256, 4, 4), "float32", "unfold"),
        (jconv.Conv2d(256, 256, 3, padding=1), (16, 256, 5, 5), "float32", "xla"),
        (jconv.Conv2d(64, 64, 3, padding=1), (1, 64, 7, 7), "float32", "unfold"),
        (jconv.Conv2d(64, 64, 3, padding=1), (1, 64, 8, 8), "float32", "xla"),
        (jconv.Conv2d(64, 64, 3, padding=1), (2, 64, 6, 6), "float32", "unfold"),
        # ... while the stacked windows stay within 1.9x xla's temporaries (as estimated)
        (jconv.Conv2d(96, 96, 5, padding=2), (2, 96, 6, 6), "float32", "unfold"),
        (jconv.Conv2d(96, 96, 5, padding=2), (2, 96, 7, 7), "float32", "xla"),
        (jconv.Conv3d(112, 112, 3, padding=1), (2, 112, 3, 4, 4), "float32", "unfold"),
        (jconv.Conv3d(116, 116, 3, padding=1), (2, 116, 4, 4, 4), "float32", "fold"),
        (jconv.Conv2d(64, 64, 3, padding=1, dilation=2), (1, 64, 6, 7), "float32", "unfold"),
        (jconv.Conv1d(512, 512, 3, padding=1), (1, 512, 256), "float32", "unfold"),
        (jconv.Conv3d(256, 256, 3, padding=1), (2, 256, 4, 4, 4), "float32", "unfold"),
        (jconv.Conv3d(128, 128, 3, padding=1), (2, 128, 4, 4, 4), "float32", "fold"),
        # XLA's own 3-d conv from 256 input channels on at stride 1 (fold: 0.64-0.99x)
        (jconv.Conv3d(384, 384, 3, padding=1), (16, 384, 4, 4, 4), "float32", "xla"),
        (jconv.Conv3d(256, 256, 3, padding=1), (4, 256, 8, 8, 8), "float32", "xla"),
        (jconv.Conv3d(192, 192, 3, padding=1), (16, 192, 4, 4, 4), "float32", "fold"),
        (jconv.Conv3d(256, 512, 3, stride=2, padding=1), (8, 256, 8, 8, 8), "float32", "unfold"),
        (jconv.Conv3d(256, 512, 3, stride=2, padding=1), (16, 256, 8, 8, 8), "float32", "fold"),
        # bfloat16 from 256 channels in and out (it lost on small 64- and 128-channel
        # layers); float16 stays xla; groups have their own lowerings; 1x1 is "matmul"
        (jconv.Conv2d(512, 512, 3, padding=1), (1, 512, 7, 7), "bfloat16", "unfold"),
        (jconv.Conv1d(256, 256, 3, padding=1), (4, 256, 64), "bfloat16", "unfold"),
        (jconv.Conv2d(128, 128, 3, padding=1), (2, 128, 8, 8), "bfloat16", "xla"),
        (jconv.Conv2d(128, 128, 3, padding=1), (2, 128, 8, 8), "float32", "unfold"),
        (jconv.Conv2d(512, 512, 3, padding=1), (1, 512, 7, 7), "float16", "xla"),
        (jconv.Conv2d(512, 512, 3, padding=1, groups=2), (1, 512, 7, 7), "float32", "pergroup"),
        (jconv.Conv2d(512, 512, 1), (1, 512, 7, 7), "float32", "matmul"),
    ],
)
def test_planner_unfolds_where_the_weight_outweighs_the_input(cfg, shape, dtype, want):
    """``"unfold"`` where the output channels outnumber (a batch: nearly) the batch's output
    pixels (low resolution, wide channels, small batch), in float32 (bfloat16 from 256
    channels) on one device."""
    assert plan(cfg, shape, jnp.dtype(dtype), "cpu") == want
    assert plan(cfg, shape, jnp.dtype(dtype), "cpu", 8, (True,) + (False,) * cfg.ndim) != "unfold"
    assert plan(cfg, shape, jnp.dtype(dtype), "gpu") != "unfold"


def test_planner_keeps_small_or_wide_layers_and_small_batch_stems_on_xla():
    """Grid findings: widened loses on small images and wide layers; s2d's blocked weight
    gradient loses at small batches."""
    dense, stem = jconv.Conv2d(64, 64, 3, padding=1), jconv.Conv2d(3, 64, 7, stride=2, padding=3)
    assert plan(dense, (32, 64, 56, 56), jnp.float32, "cpu") == "widened"
    assert plan(dense, (1, 64, 56, 56), jnp.float32, "cpu") == "widened"
    assert plan(dense, (8, 64, 12, 12), jnp.float32, "cpu") == "xla"
    assert plan(dense, (8, 64, 56, 56), jnp.bfloat16, "cpu") == "widened"
    assert plan(dense, (8, 64, 56, 56), jnp.float16, "cpu") == "xla"
    wide = jconv.Conv2d(128, 128, 3, padding=1)
    assert plan(wide, (8, 128, 28, 28), jnp.float32, "cpu") == "xla"
    # layers outside the grid: widened only within the region where it won (WIDENED)
    assert plan(dense, (4, 64, 112, 112), jnp.float32, "cpu") == "xla"  # 64x64 x 112² > 3e7
    assert plan(dense, (4, 64, 64, 64), jnp.float32, "cpu") == "widened"
    assert plan(dense, (1, 64, 28, 28), jnp.float32, "cpu") == "xla"  # under 1e8 flops
    assert plan(dense, (2, 64, 28, 28), jnp.float32, "cpu") == "widened"
    narrow = jconv.Conv2d(32, 32, 3, padding=1)
    assert plan(narrow, (2, 32, 256, 256), jnp.float32, "cpu") == "widened"
    assert plan(jconv.Conv2d(32, 32, 5, padding=2), (8, 32, 128, 128), jnp.float32, "cpu") == "xla"
    assert plan(jconv.Conv2d(64, 128, 3, padding=1), (2, 64, 64, 64), jnp.float32, "cpu") == "xla"
    assert plan(stem, (16, 3, 224, 224), jnp.float32, "cpu") == "s2d"
    assert plan(stem, (1, 3, 224, 224), jnp.float32, "cpu") == "xla"
    wide = jconv.Conv2d(2048, 512, 1)  # heavy 1x1: one product over the batch, not xla
    assert plan(wide, (64, 2048, 7, 7), jnp.float32, "cpu") == "matmul"
    assert plan(wide, (2, 2048, 56, 56), jnp.float32, "cpu") == "matmul"
    # 1-d 1x1: XLA's own once the weight per image outweighs a quarter of the input, or
    # below 1e9 flops
    assert plan(jconv.Conv1d(512, 512, 1), (8, 512, 1024), jnp.float32, "cpu") == "xla"
    assert plan(jconv.Conv1d(512, 512, 1), (8, 512, 2048), jnp.float32, "cpu") == "matmul"
    assert plan(jconv.Conv1d(256, 256, 1), (8, 256, 2000), jnp.bfloat16, "cpu") == "matmul"
    assert plan(jconv.Conv1d(64, 64, 1), (4, 64, 2048), jnp.float32, "cpu") == "xla"
    assert plan(jconv.Conv1d(128, 128, 1), (4, 128, 2048), jnp.float32, "cpu") == "xla"


@pytest.mark.parametrize(
    "cfg, shape, mode, dtype",
    [
        # fft over blocks of groups (unblocked: 2.4x xla's temporaries forward; strided
        # training 2.2-3.0x) and strided shift's weight gradient over stride phases (2.5x)
        (jconv.Conv2d(96, 96, 7, padding=3, groups=96), (8, 96, 56, 56), "forward", "float32"),
        (jconv.Conv2d(384, 384, 7, padding=3, groups=384), (8, 384, 14, 14), "forward", "float32"),
        (
            jconv.Conv2d(96, 96, 9, stride=2, padding=4, groups=96),
            (8, 96, 56, 56),
            "train",
            "float32",
        ),
        (
            jconv.Conv2d(96, 96, 7, stride=2, padding=3, groups=96),
            (8, 96, 56, 56),
            "train",
            "float32",
        ),
        # shift's input gradient in a loop over channel blocks: given the cotangent of a
        # loss of the output whole, XLA re-ran the forward in each of its windows (3x3:
        # 3.0x xla's temporaries, 5x5 at stride 2: 3.6x, 3x3x3 at stride 2: 2.0x)
        (jconv.Conv2d(96, 96, 3, padding=1, groups=96), (8, 96, 56, 56), "train", "float32"),
        (
            jconv.Conv2d(96, 96, 5, stride=2, padding=2, groups=96),
            (8, 96, 56, 56),
            "train",
            "float32",
        ),
        (jconv.Conv1d(256, 256, 7, padding=3, groups=256), (8, 256, 2000), "train", "float32"),
        # ... and its weight gradient in a loop over tiles (of images, here of channels):
        # all taps in one pass over the whole input held 2.3-3.0x xla's on the rows above
        (jconv.Conv2d(96, 96, 3, padding=1, groups=96), (1, 96, 112, 112), "train", "float32"),
        (
            jconv.Conv3d(32, 32, 3, stride=2, padding=1, groups=32),
            (2, 32, 16, 32, 32),
            "train",
            "float32",
        ),
        # subpixel gradients at batch 8: widened's ragged batch block (was 2.2x)
        (
            jconv.ConvTranspose1d(256, 128, 8, stride=4, padding=2),
            (8, 256, 2000),
            "train",
            "float32",
        ),
        (
            jconv.ConvTranspose2d(64, 32, 3, stride=2, padding=1),
            (8, 64, 56, 56),
            "train",
            "float32",
        ),
        # fold over blocks of depth planes, never a padded copy (stacked whole: 3x)
        (jconv.Conv3d(32, 32, 3, padding=1), (4, 32, 16, 16, 16), "forward", "float32"),
        (jconv.Conv3d(32, 32, 3, padding=1), (4, 32, 16, 16, 16), "train", "float32"),
        (jconv.Conv3d(32, 64, 3, stride=2, padding=1), (2, 32, 32, 32, 32), "train", "float32"),
        # strided, many pixels per channel: the sub-pixel input gradient a block of
        # images at a time (its phases' output in one piece: 2.1x)
        (jconv.Conv3d(16, 16, 3, stride=2, padding=1), (16, 16, 16, 16, 16), "train", "float32"),
        # strided, low resolution, the weight outweighing the activations: input gradient
        # by col2im (the sub-pixel form's sub-kernels: 4.4x and 4.1x)
        (jconv.Conv3d(128, 256, 3, stride=2, padding=1), (8, 128, 8, 8, 8), "train", "float32"),
        (jconv.Conv3d(128, 128, 3, stride=2, padding=1), (8, 128, 8, 8, 8), "train", "float32"),
        # jax#31662's layer, smaller: sub-pixel through the blocked fold (was 6.6x)
        (
            jconv.ConvTranspose3d(64, 1, 3, stride=2, padding=1),
            (1, 64, 32, 32, 32),
            "train",
            "float32",
        ),
        # unfold: at most about the weight in stacked windows
        (jconv.Conv2d(512, 512, 3, padding=1), (8, 512, 7, 7), "train", "float32"),
        (jconv.Conv2d(256, 512, 3, stride=2, padding=1), (1, 256, 14, 14), "forward", "float32"),
        (jconv.Conv3d(256, 256, 3, padding=1), (2, 256, 4, 4, 4), "train", "float32"),
        # a batch from 0.85 channels per pixel, where the estimate reads up to 1.9x
        (jconv.Conv2d(256, 256, 3, padding=1), (8, 256, 6, 6), "forward", "float32"),
        (jconv.Conv3d(112, 112, 3, padding=1), (2, 112, 3, 4, 4), "forward", "float32"),
        # heavy 1x1: one product over the batch (the weight broadcast per image: 6.9x)
        (jconv.Conv2d(2048, 512, 1), (64, 2048, 7, 7), "train", "float32"),
        (jconv.Conv2d(768, 192, 1), (8, 768, 6, 6), "train", "float32"),
        # bfloat16: blocks sized for the float32 copies XLA's CPU convolves in (was 2.2x)
        (
            jconv.ConvTranspose3d(64, 1, 3, stride=2, padding=1),
            (1, 64, 32, 32, 32),
            "forward",
            "bfloat16",
        ),
        # transposed, the weight outweighing the input: col2im (sub-pixel form: 3.1x)
        (
            jconv.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1),
            (2, 256, 4, 4),
            "train",
            "float32",
        ),
        # transposed, narrow outputs: the weight gradient from the output gradient's
        # stacked windows (the sub-pixel form's padded input: 2.04x and 2.10x)
        (jconv.ConvTranspose2d(256, 3, 3, stride=2), (1, 256, 37, 37), "train", "float32"),
        (
            jconv.ConvTranspose2d(512, 8, 3, stride=2, padding=1),
            (1, 512, 28, 28),
            "train",
            "float32",
        ),
        # a kernel shorter than its stride: no sub-kernels for the phases without taps
        # (all 16 phases' sub-kernels: 7.8x)
        (jconv.ConvTranspose2d(512, 512, 1, stride=4), (1, 512, 4, 4), "train", "bfloat16"),
        # small 3-d layers: fold's taps gathered from unpadded copies (a depth-padded
        # copy of the input: 2.1x, 2.0x forward; 2.5x, 2.3x training)
        (jconv.Conv3d(96, 3, 4, padding=3, dilation=3), (4, 96, 8, 8, 8), "forward", "float32"),
        (jconv.Conv3d(48, 1, 7, padding=1), (8, 48, 8, 8, 8), "forward", "float32"),
        (jconv.Conv3d(24, 24, 3, padding=1), (32, 24, 4, 4, 4), "forward", "float32"),
        (jconv.Conv3d(96, 3, 4, padding=3, dilation=3), (4, 96, 8, 8, 8), "train", "float32"),
        # a weight larger than the input trains as XLA's (fold's gradients: 2.3-2.4x)
        (jconv.Conv3d(128, 96, 3), (4, 128, 6, 6, 6), "train", "float32"),
        (jconv.Conv3d(16, 24, 4, padding=2, dilation=2), (2, 16, 8, 8, 8), "train", "float32"),
        # ... and, its plane kernel reaching past the input's planes, infers as XLA's (2.0x)
        (jconv.Conv3d(24, 32, 5, padding=2), (4, 24, 4, 4, 4), "forward", "float32"),
        # 3-d transposed, narrow output: the phases' blocks count their outputs (2.25x)
        (
            jconv.ConvTranspose3d(128, 3, 5, stride=4, padding=1),
            (32, 128, 4, 4, 4),
            "forward",
            "float32",
        ),
        # 3-d transposed, few outputs: the weight gradient's taps read the shifted
        # cotangent, not the input's windows (then: 2.0-2.7x)
        (
            jconv.ConvTranspose3d(64, 4, 4, stride=2, padding=1),
            (1, 64, 16, 16, 16),
            "train",
            "float32",
        ),
        (jconv.ConvTranspose3d(256, 8, 4, stride=2), (4, 256, 4, 4, 4), "train", "float32"),
        (jconv.ConvTranspose3d(128, 4, 4, stride=2), (8, 128, 4, 4, 4), "train", "float32"),
        # narrow heads: the weight gradient by shifted cotangents (the input read as it
        # lies; no copy of its windows)
        (jconv.Conv2d(96, 3, 5, padding=2), (2, 96, 56, 56), "train", "float32"),
        (jconv.Conv2d(128, 16, 3, padding=1), (16, 128, 28, 28), "train", "float32"),
        # strided grouped shift: sub-pixel input gradient (autodiff's: 7.4x)
        (
            jconv.Conv2d(128, 128, 3, stride=2, padding=1, groups=32),
            (8, 128, 28, 28),
            "train",
            "float32",
        ),
    ],
)
def test_planned_lowering_needs_at_most_twice_xlas_temporary_memory(cfg, shape, mode, dtype):
    """Compiled temporaries (not time) of the planner's choice against ``"xla"``."""
    from jconv.lowering.tune import temp_bytes

    x = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    used = {}
    for name in ("auto", "xla"):
        forced = dataclasses.replace(cfg, algorithm=name, dtype=jnp.dtype(dtype))
        p = jconv.init(jax.random.key(0), forced)
        if mode == "forward":
            f = jax.jit(lambda p, x: jconv.apply(p, x))
        else:
            f = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(jconv.apply(p, x))), argnums=(0, 1)))
        used[name] = temp_bytes(f.lower(p, x).compile())
    assert plan(cfg, shape, jnp.dtype(dtype), "cpu") != "xla"
    assert used["auto"] <= 2 * used["xla"], used


def test_shift_output_read_by_a_reduction_needs_no_window_copies():
    """A channel mean right after a ``"shift"`` conv (a norm's first step) compiles with
    temporaries near xla's: the shift sum stays one XLA loop fusion instead of being
    taken into a YNNPACK fusion that copies out every tap window (then: 15x the input)."""
    from jconv.lowering.tune import temp_bytes

    cfg = jconv.Conv3d(64, 64, 3, padding=1, groups=64)
    x = jax.ShapeDtypeStruct((2, 64, 16, 16, 16), jnp.float32)
    used = {}
    for name in ("auto", "xla"):
        p = jconv.init(jax.random.key(0), dataclasses.replace(cfg, algorithm=name))
        f = jax.jit(lambda p, x: jnp.mean(jconv.apply(p, x), axis=1))
        used[name] = temp_bytes(f.lower(p, x).compile())
    assert plan(cfg, x.shape, jnp.float32, "cpu") == "shift"
    assert used["auto"] <= 2 * used["xla"], used


def _planned_transforms(cfg, shape, want):
    """Params planned ``want`` (checked) and forced ``"xla"``, and four functions of
    params on one input: ``infer``, ``batched`` (``vmap``), ``tangent`` (``jvp``) and
    ``grad`` (of ``sum(sin(y))`` in params and input)."""
    x = jax.random.normal(jax.random.key(0), shape)
    t = jax.random.normal(jax.random.key(1), x.shape)
    assert plan(cfg, x.shape, jnp.float32, "cpu") == want
    p, p_xla = (
        jconv.init(jax.random.key(2), dataclasses.replace(cfg, algorithm=a))
        for a in ("auto", "xla")
    )

    def infer(p):
        return jconv.apply(p, x)

    def batched(p):
        return jax.vmap(jconv.apply, (None, 0))(p, x[None])

    def tangent(p):
        return jax.jvp(lambda x: jconv.apply(p, x), (x,), (t,))

    def grad(p):
        return jax.grad(lambda p, x: jnp.sum(jnp.sin(jconv.apply(p, x))), (0, 1))(p, x)

    return p, p_xla, (infer, batched, tangent, grad)


@pytest.mark.parametrize("stride", [1, 2])
def test_shift_output_is_materialized(stride):
    """A planned ``"shift"`` conv computes its output inside a ``lax.cond`` (so that XLA
    materializes it once for all its consumers), under ``vmap`` and ``jvp`` too, and at
    stride 2 its input gradient as well. All equal xla's, gradients too, and with an
    infinite or NaN weight (the predicate holds for every float)."""
    cfg = jconv.Conv2d(8, 8, 3, stride=stride, padding=1, groups=8)
    p, p_xla, (infer, batched, tangent, grad) = _planned_transforms(cfg, (4, 8, 10, 10), "shift")

    # one predicate (``isfinite(w[0])``...) per materialized array
    conds = {
        f: str(jax.make_jaxpr(f)(p)).count("is_finite") for f in (infer, batched, tangent, grad)
    }
    assert conds[infer] == conds[batched] == conds[tangent] == 1, conds
    assert conds[grad] == 1 + (stride > 1), conds  # and the strided input gradient
    for f in conds:
        chex.assert_trees_all_close(
            *(jax.tree.leaves(f(q)) for q in (p, p_xla)), atol=1e-5, rtol=1e-5
        )
    for bad in (jnp.inf, jnp.nan):
        w = p.weight.at[0, 0, 0, 0].set(bad)
        got, want = (infer(dataclasses.replace(q, weight=w)) for q in (p, p_xla))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def _conds(jaxpr):
    """Every ``cond`` equation in ``jaxpr`` and the jaxprs nested in it."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cond":
            yield eqn
        for v in eqn.params.values():
            for sub in v if isinstance(v, tuple) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _conds(inner)


@pytest.mark.parametrize("size, want", [(10, "shift"), (24, "shift_fft")])  # 3x3 and 7x7 depthwise
def test_biased_lowerings_add_the_bias_inside_their_materialized_output(size, want):
    """The bias goes into the ``lax.cond`` that materializes a depthwise output (added
    after it, it was a pass of its own over the output: a lone layer 1.15-1.7x slower),
    and the result, with its gradients, equals xla's."""
    k = 3 if want == "shift" else 7
    cfg = jconv.Conv2d(8, 8, k, padding=k // 2, groups=8)
    p, p_xla, (infer, _, _, grad) = _planned_transforms(cfg, (4, 8, size, size), want)
    conds = list(_conds(jax.make_jaxpr(infer)(p).jaxpr))
    assert conds and all(any(v.aval.shape == (8,) for v in c.invars) for c in conds)  # bias
    for f in (infer, grad):
        chex.assert_trees_all_close(
            *(jax.tree.leaves(f(q)) for q in (p, p_xla)), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize(
    "shape, kernel, stride, mult, dtype, block, tiles",
    [
        ((4, 6, 9, 8), (3, 3), (1, 1), 1, "float32", None, (2, 6)),  # tiles of images
        ((3, 6, 9, 8), (5, 5), (2, 2), 2, "float32", None, (1, 6)),
        ((1, 6, 9, 8), (3, 3), (2, 2), 1, "float32", None, (1, 3)),  # one image: channels
        ((2, 4, 9, 8), (3, 3), (1, 1), 2, "float32", 576, (1, 2)),  # an image over a block
        ((4, 3, 20), (7,), (1,), 1, "float32", None, (2, 3)),
        ((1, 4, 5, 6, 7), (3, 3, 3), (2, 2, 2), 1, "float32", None, (1, 2)),
        ((4, 6, 9, 8), (3, 3), (1, 1), 1, "bfloat16", None, (2, 6)),
        ((1, 1, 9, 9), (3, 3), (1, 1), 1, "float32", None, None),  # no split: per tap
    ],
)
def test_depthwise_weight_gradient_over_tiles_equals_xla(
    monkeypatch, shape, kernel, stride, mult, dtype, block, tiles
):
    """The depthwise weight gradient sums every tap in one pass per tile, in a loop over
    tiles of images, or of one image's channels where an image outgrows a block or the
    batch is one; with neither to split, one sum per tap. Each equals XLA's."""
    from jconv.lowering import taps
    from jconv.lowering.spec import ConvSpec

    if block is not None:
        monkeypatch.setattr(taps, "BLOCK_BYTES", block)
    n, g, dt = len(kernel), shape[1], jnp.dtype(dtype)
    pads = tuple((k // 2, k // 2) for k in kernel)
    spec = ConvSpec(False, stride, pads, (1,) * n, g, (0,) * n, None, None, True)
    x = jax.random.normal(jax.random.key(0), shape, dt)
    w = jax.random.normal(jax.random.key(1), (g * mult, 1, *kernel), dt)
    assert taps._tiles(shape[0], g, x[0].size * dt.itemsize) == tiles

    def ref(x, w):
        return lax.conv_general_dilated(x, w, stride, pads, feature_group_count=g)

    dy = jax.random.normal(jax.random.key(2), jax.eval_shape(lambda: ref(x, w)).shape, dt)
    got = jax.jit(lambda x, dy: taps.depthwise_weight_grad(x, dy, kernel, spec))(x, dy)
    # the reference in float32 from the same (rounded) x and dy
    x32, w32, dy32 = (a.astype(jnp.float32) for a in (x, w, dy))
    want = jax.vjp(lambda w: ref(x32, w), w32)[1](dy32)[0]
    assert got.dtype == dt and got.shape == w.shape
    tol = 2e-5 if dt == jnp.float32 else 1e-2
    chex.assert_trees_all_close(got.astype(jnp.float32), want,
                                atol=tol * float(jnp.abs(want).max()))  # fmt: skip


@pytest.mark.parametrize("form", ["fold", "fold_phase"])
@pytest.mark.parametrize(
    "shape, out, kernel, stride, pads, dilation, groups",
    [
        ((2, 4, 10, 5, 6), 6, (3, 3, 3), (1, 1, 1), ((1, 1),) * 3, (1, 1, 1), 1),
        ((1, 3, 15, 4, 5), 4, (2, 3, 3), (1, 1, 1), ((1, 1),) * 3, (1, 1, 1), 1),
        ((1, 4, 13, 6, 7), 5, (3, 2, 3), (2, 1, 2), ((2, 1), (0, 0), (1, 1)), (2, 1, 1), 1),
        ((2, 4, 9, 5, 5), 6, (3, 3, 3), (1, 1, 1), ((1, 1),) * 3, (1, 1, 1), 2),
        ((1, 3, 11, 4, 5), 2, (2, 3, 3), (3, 1, 1), ((3, 3), (1, 1), (0, 2)), (1, 1, 1), 1),
        # depth padding as wide as the dilated kernel's reach: taps wholly in it
        ((2, 3, 8, 4, 5), 2, (4, 3, 3), (1, 1, 1), ((3, 3), (1, 1), (1, 1)), (3, 1, 1), 1),
    ],
)
def test_fold_whole_and_block_by_block_rearrangements_equal_xla(
    form, shape, out, kernel, stride, pads, dilation, groups
):
    """``"fold"`` makes its input channels-last once before its loop over blocks of depth
    planes; ``"fold_phase"`` (the sub-pixel form's phases) rearranges each block inside
    the loop. Over several blocks, strided, dilated, padded past the kernel's reach and
    grouped, both equal XLA's 3-d conv, forward and gradients (the second case's last
    block overlaps the one before)."""
    from jconv.lowering import folded
    from jconv.lowering.spec import ConvSpec

    spec = ConvSpec(False, stride, pads, dilation, groups, (0, 0, 0), None, None, True)
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (out, shape[1] // groups, *kernel))
    blocks = folded._Blocks(shape, 4, kernel, spec, copies=2 if form == "fold" else 1)
    assert blocks.count > 1

    def ref(x, w):
        return lax.conv_general_dilated(
            x, w, stride, pads, rhs_dilation=dilation, feature_group_count=groups,
            dimension_numbers=("NCDHW", "OIDHW", "NCDHW"),
        )  # fmt: skip

    def got(x, w):
        return folded.fold(x, w, spec, form)

    y, vjp = jax.vjp(jax.jit(got), x, w)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    gy = jax.random.normal(jax.random.key(2), y.shape)
    for a, b in zip((y, *vjp(gy)), (y_ref, *vjp_ref(gy))):
        chex.assert_trees_all_close(a, b, atol=2e-5 * float(jnp.abs(b).max()))


@pytest.mark.parametrize(
    "x_shape, cout, images",
    [
        ((8, 32, 48, 48), 32, 2),  # YNNPACK's: 576 KiB of input and cotangent per image
        ((8, 64, 56, 56), 64, 1),
        ((8, 64, 24, 24), 64, 4),
        ((32, 256, 6, 6), 256, 16),
        ((8, 32, 96, 96), 16, 8),  # 16 output channels: XLA's own kernel, BATCH images
        ((0, 32, 48, 48), 32, 8),  # an empty batch: one empty block
    ],
)
def test_widened_weight_gradient_blocks_of_images(x_shape, cout, images):
    """``"widened"``'s weight gradient sums XLA's over blocks of images: at most 2 MiB of
    input and cotangent per block where YNNPACK takes it, ``BATCH`` images where not."""
    from jconv.lowering import widened

    dy_shape = (x_shape[0], cout, *x_shape[2:])
    assert widened._dw_images(x_shape, dy_shape, 4) == images
    assert widened._dw_images(x_shape, dy_shape, 2) == images  # counted in float32


@pytest.mark.parametrize("cout", [20, 8])
def test_widened_weight_gradient_in_blocks_equals_xlas(monkeypatch, cout):
    """The blocked weight gradient (one image per block where YNNPACK takes it, here 4
    blocks; one block of ``BATCH`` where not) equals ``"xla"``'s, with the input's."""
    from jconv.lowering import widened

    jax.clear_caches()  # traces of the same config with another block budget
    monkeypatch.setattr(widened, "DW_BLOCK_BYTES", 1)
    cfg = jconv.Conv2d(6, cout, 3, padding=1, algorithm="widened")
    x = jax.random.normal(jax.random.key(1), (4, 6, 17, 16))
    assert widened._dw_images(x.shape, (4, cout, 17, 16), 4) == (1 if cout > 16 else 8)
    p = jconv.init(jax.random.key(0), cfg)
    ref = dataclasses.replace(p, cfg=dataclasses.replace(cfg, algorithm="xla"))

    def loss(p, x):
        return jnp.sum(jnp.sin(jconv.apply(p, x)))

    (gp, gx), (rp, rx) = (jax.grad(loss, argnums=(0, 1))(q, x) for q in (p, ref))
    chex.assert_trees_all_close((gp.weight, gp.bias, gx), (rp.weight, rp.bias, rx), atol=1e-4)


@pytest.mark.parametrize(
    "name",
    [
        "XLA_FORWARD_OUTPUTS",
        pytest.param("XLA_INFERENCE_CHANNELS", marks=SLOW),  # the same forms, inference
        pytest.param("XLA_FORWARD_CHANNELS", marks=SLOW),  # the same program, other gate
    ],
)
def test_wide_strided_fold_runs_xlas_forward_with_folds_gradients(monkeypatch, name):
    """A strided ``"fold"`` with many input (or output) channels runs XLA's own forward
    (where nothing differentiates it, or always) and fold's gradients; the numbers equal
    ``"xla"``'s: forward, reverse and forward mode to second order, and ``vmap``."""
    from jconv.lowering import folded

    jax.clear_caches()  # traces of the same config with other thresholds
    inference = name == "XLA_INFERENCE_CHANNELS"
    monkeypatch.setattr(folded, name, 4 if name == "XLA_FORWARD_OUTPUTS" else 8)
    cfg = jconv.Conv3d(8, 4, 3, stride=2, padding=(1, 0, 1), algorithm="fold")
    p = jconv.init(jax.random.key(0), cfg)
    ref = dataclasses.replace(p, cfg=dataclasses.replace(cfg, algorithm="xla"))
    x = jax.random.normal(jax.random.key(1), (2, 8, 5, 6, 4))

    def loss(p, x):
        return jnp.sum(jnp.sin(jconv.apply(p, x)))

    def forms(f):
        return set(re.findall(r"form=(\w+)", str(jax.make_jaxpr(f)(p, x))))

    want = set() if inference else {"fold_xla_forward"}
    assert forms(jconv.apply) == want  # XLA's conv, no fold primitive in inference
    assert forms(jax.grad(loss, argnums=(0, 1))) == ({"fold"} if inference else want)
    chex.assert_trees_all_close(jconv.apply(p, x), jconv.apply(ref, x), atol=1e-5)
    (gp, gx), (rp, rx) = (jax.grad(loss, argnums=(0, 1))(q, x) for q in (p, ref))
    chex.assert_trees_all_close((gp.weight, gp.bias, gx), (rp.weight, rp.bias, rx), atol=1e-4)
    ws = jnp.stack([p.weight, 2 * p.weight])
    chex.assert_trees_all_close(
        jax.vmap(lambda w: jconv.apply(dataclasses.replace(p, weight=w), x))(ws),
        jax.vmap(lambda w: jconv.apply(dataclasses.replace(ref, weight=w), x))(ws),
        atol=1e-4,
    )

    def f(w, x):
        return jconv.apply(dataclasses.replace(p, weight=w), x)

    check_grads(f, (p.weight, x), order=2, modes=("rev", "fwd"), atol=2e-2, rtol=2e-2)


def test_fold_of_a_weight_larger_than_its_input_infers_as_fold_and_trains_as_xla():
    """Where the weight outweighs the input, ``"fold"`` runs its own forward where nothing
    differentiates it and XLA's convolution (forward and gradients) under ``grad`` (and
    XLA's throughout where its plane kernel reaches past the input's planes); the
    numbers equal ``"xla"``'s either way."""
    cfg = jconv.Conv3d(8, 12, 3, padding=1, algorithm="fold")
    p = jconv.init(jax.random.key(0), cfg)
    ref = dataclasses.replace(p, cfg=dataclasses.replace(cfg, algorithm="xla"))
    x = jax.random.normal(jax.random.key(1), (2, 8, 3, 4, 4))
    assert p.weight.size > x.size

    def loss(p, x):
        return jnp.sum(jnp.sin(jconv.apply(p, x)))

    def forms(f):
        return set(re.findall(r"form=(\w+)", str(jax.make_jaxpr(f)(p, x))))

    assert forms(jconv.apply) == {"fold"}
    assert forms(jax.grad(loss, argnums=(0, 1))) == set()
    # a plane kernel reaching past the input's planes: XLA's convolution in inference too
    far = jconv.init(jax.random.key(0), jconv.Conv3d(8, 12, 5, padding=2, algorithm="fold"))
    assert "form=" not in str(jax.make_jaxpr(jconv.apply)(far, x))
    chex.assert_trees_all_close(
        jconv.apply(far, x),
        jconv.apply(dataclasses.replace(far, cfg=dataclasses.replace(far.cfg, algorithm="xla")), x),
        atol=1e-5,
    )
    chex.assert_trees_all_close(jconv.apply(p, x), jconv.apply(ref, x), atol=1e-5)
    (gp, gx), (rp, rx) = (jax.grad(loss, argnums=(0, 1))(q, x) for q in (p, ref))
    chex.assert_trees_all_close((gp.weight, gp.bias, gx), (rp.weight, rp.bias, rx), atol=1e-4)


@pytest.mark.parametrize("batch", [4, 3])
def test_fold_strided_input_gradient_in_blocks_of_images_equals_xlas(monkeypatch, batch):
    """The strided ``"fold"``'s sub-pixel input gradient, made a block of images at a
    time where its phases' output outgrows the block budget (2 images per block, and 1
    where the batch is odd), equals the transpose of XLA's 3-d conv."""
    from jconv.lowering import folded
    from jconv.lowering.spec import ConvSpec

    monkeypatch.setattr(folded, "BLOCK_BYTES", 40_000)  # per image: 2·4·9·8·8 floats
    spec = ConvSpec(False, (2, 2, 2), ((1, 1),) * 3, (1, 1, 1), 1, (0, 0, 0), None, None, True)
    x = jax.random.normal(jax.random.key(0), (batch, 4, 9, 8, 8))
    w = jax.random.normal(jax.random.key(1), (6, 4, 3, 3, 3))
    y, vjp = jax.vjp(jax.jit(lambda x: folded.fold(x, w, spec)), x)
    # more output pixels per channel than col2im takes: the sub-pixel form
    assert batch * math.prod(y.shape[2:]) > folded.COL2IM_WEIGHT * y.shape[1]

    def ref(x):
        return lax.conv_general_dilated(
            x, w, (2, 2, 2), ((1, 1),) * 3, dimension_numbers=("NCDHW", "OIDHW", "NCDHW")
        )

    y_ref, vjp_ref = jax.vjp(ref, x)
    gy = jax.random.normal(jax.random.key(2), y.shape)
    (got,), (want,) = vjp(gy), vjp_ref(gy)

    # the blocks are a loop of their own: one more than under the default budget
    def loops(vjp):
        return jax.jit(vjp).lower(gy).as_text().count("stablehlo.while")

    blocked = loops(vjp)
    monkeypatch.setattr(folded, "BLOCK_BYTES", 4 << 20)
    assert blocked == loops(jax.vjp(lambda x: folded.fold(x, w, spec), x)[1]) + 1
    chex.assert_trees_all_close(y, y_ref, atol=2e-5 * float(jnp.abs(y_ref).max()))
    chex.assert_trees_all_close(got, want, atol=2e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize(
    "shape, out, kernel, stride, pads, dilation, groups",
    [
        ((2, 4, 9, 7), 6, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
        ((2, 4, 9, 7), 6, (3, 2), (2, 3), ((2, 0), (0, 3)), (2, 1), 2),  # rows past the last
        ((1, 3, 11), 5, (4,), (3,), ((5, 2),), (2,), 1),  # a window wholly in the padding
        ((3, 2, 5, 6, 7), 4, (3, 3, 3), (2, 2, 2), ((1, 1),) * 3, (1, 1, 1), 1),
        ((2, 2, 5, 6, 4), 4, (3, 2, 3), (1, 2, 3), ((3, 0), (0, 0), (2, 2)), (1, 2, 1), 2),
    ],
)
@pytest.mark.parametrize("blocks", ["whole", "images", "planes"])
def test_col2im_input_gradient_equals_xlas(
    shape, out, kernel, stride, pads, dilation, groups, blocks
):
    """``col2im`` (the strided ``"fold"``'s input gradient where the weight outweighs the
    output) equals the transpose of XLA's conv: strided, dilated, grouped, padded past
    the kernel's reach, with input rows past the last window, in 1-d to 3-d, with its
    product made for the whole batch, an image at a time, or a plane at a time."""
    from jconv.lowering import common
    from jconv.lowering.spec import ConvSpec

    n = len(kernel)
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (out, shape[1] // groups, *kernel))

    def ref(x):
        return lax.conv_general_dilated(
            x, w, stride, pads, rhs_dilation=dilation, feature_group_count=groups,
            precision="highest",
        )  # fmt: skip

    y, vjp = jax.vjp(ref, x)
    gy = jax.random.normal(jax.random.key(2), y.shape)
    spec = ConvSpec(False, stride, pads, dilation, groups, (0,) * n, "highest", None, True)
    # one image's product: ∏out·C·∏k floats
    image = 4 * shape[1] * math.prod(kernel) * math.prod(y.shape[2:])
    budget = {"whole": shape[0] * image, "images": image, "planes": 1}[blocks]
    got = common.col2im(w, gy, common.with_input_past(shape, kernel, spec), budget)
    (want,) = vjp(gy)
    assert got.shape == want.shape
    chex.assert_trees_all_close(got, want, atol=2e-5 * float(jnp.abs(want).max()))


def test_subpixel_weight_gradient_holds_one_weight_sized_buffer():
    """A transposed conv whose weight outweighs its activations (HiFi-GAN's 16-tap
    stride-8 upsampler at batch 1: 8.4 MB of weight, 64 KB of input): the sub-kernels'
    transpose is a copy, not a scatter into a second weight-sized buffer (then 2.1x
    xla's temporaries)."""
    from jconv.lowering.tune import temp_bytes

    cfg = jconv.ConvTranspose1d(512, 256, 16, stride=8, padding=4)
    x = jax.ShapeDtypeStruct((1, 512, 32), jnp.float32)
    used = {}
    for name in ("auto", "xla"):
        forced = dataclasses.replace(cfg, algorithm=name)
        p = jconv.init(jax.random.key(0), forced)

        def loss(w, x, b=p.bias, c=forced):
            return jnp.sum(jnp.sin(jconv.apply(jconv.Params(w, b, c), x)))

        used[name] = temp_bytes(jax.jit(jax.grad(loss)).lower(p.weight, x).compile())
    assert plan(cfg, x.shape, jnp.float32, "cpu") == "subpixel"
    assert used["auto"] <= 1.25 * used["xla"], used


def test_fft_plans_a_depthwise_layer_whose_one_channel_outgrows_a_block():
    """One group's padded input (8x524² floats, 8.8 MB) is more than a block may hold:
    the fft then runs one group per block instead of failing to pick a block size."""
    cfg = jconv.Conv2d(4, 4, 13, padding=6, groups=4)
    x = jax.ShapeDtypeStruct((8, 4, 512, 512), jnp.float32)
    p = jconv.init(jax.random.key(0), cfg)
    assert plan(cfg, x.shape, jnp.float32, "cpu") == "fft"
    out = jax.jit(jconv.apply).lower(p, x).compile().out_info
    assert out.shape == x.shape


@pytest.mark.parametrize(
    "batch, size, want",
    [
        (8, 56, "shift_fft"),
        (8, 24, "shift_fft"),
        (8, 14, "fft"),
        (8, 7, "fft"),
        (1, 7, "shift_fft"),
    ],
)
def test_shift_fft_gives_way_to_the_fft_where_the_padded_input_outgrows_it(batch, size, want):
    """``"shift_fft"``'s inference pads its input once: where that copy would be more
    than 1.8x the input (7x7 at 24²: 1.56x; at 14²: 2.04x) and more than 1 MiB (batch 1
    at 7²: 0.26 MB; batch 8: 2.1 MB), the planner keeps ``"fft"``."""
    cfg = jconv.Conv2d(384, 384, 7, padding=3, groups=384)
    assert plan(cfg, (batch, 384, size, size), jnp.float32, "cpu") == want


def test_shift_fft_infers_with_multiply_adds_and_trains_through_the_fft():
    """``"shift_fft"`` (depthwise 7x7) runs no FFT where nothing differentiates it, and
    the FFT's forms under ``jvp`` and ``grad``; each equals xla's, under ``vmap`` too."""
    cfg = jconv.Conv2d(8, 8, 7, padding=3, groups=8)
    p, p_xla, (infer, batched, tangent, grad) = _planned_transforms(
        cfg, (2, 8, 32, 32), "shift_fft"
    )

    for f, ffts in ((infer, False), (batched, False), (tangent, True), (grad, True)):
        assert ("fft" in str(jax.make_jaxpr(f)(p))) == ffts, f.__name__
        chex.assert_trees_all_close(
            *(jax.tree.leaves(f(q)) for q in (p, p_xla)), atol=2e-4, rtol=2e-4
        )


def test_widened_bfloat16_weight_gradient_over_batch_blocks_sums_in_float32():
    """Over several batch blocks the bfloat16 weight gradient sums in float32: within
    one bfloat16 step of the float32 gradient of the same values (a sum of the blocks
    in bfloat16 is not)."""
    cfg = jconv.Conv2d(8, 8, 3, padding=1, bias=False, algorithm="widened", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (40, 8, 6, 6), jnp.bfloat16)
    ct = jax.random.normal(jax.random.key(2), (40, 8, 6, 6), jnp.bfloat16)
    p = jconv.init(jax.random.key(1), cfg)
    got = jax.grad(lambda p: jnp.sum(jconv.apply(p, x).astype(jnp.float32) * ct))(p).weight
    ref = dataclasses.replace(cfg, algorithm="xla", dtype=jnp.float32)
    p32 = jconv.Params(p.weight.astype(jnp.float32), None, ref)
    x32, ct32 = x.astype(jnp.float32), ct.astype(jnp.float32)
    want = jax.grad(lambda p: jnp.sum(jconv.apply(p, x32) * ct32))(p32).weight
    step = 2.0 ** (jnp.floor(jnp.log2(jnp.abs(want))) - 7)  # one bfloat16 step at |want|
    assert got.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.abs(got.astype(jnp.float32) - want) <= step))

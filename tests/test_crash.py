"""Derivatives that abort the whole process with plain lax run fine through jconv.

Each check runs in a subprocess, so a regression fails one test instead of
killing pytest. The control test shows that each case really aborts with plain
``lax.conv_general_dilated`` on this XLA build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import SLOW, tiered

# (ndim, kernel, stride, padding, dilation, input shape): XLA's operand-swap class
CRASHERS = [
    # input gradient: a dimension with kernel 2, stride 2, dilation 1, low padding 1
    (2, (2, 4), 2, (1, 0), (1, 2), (1, 1, 6, 9)),
    (3, (2, 3, 4), (2, 1, 2), (1, 1, 0), (1, 1, 2), (1, 1, 6, 4, 9)),
    (2, (2, 4), 2, ((1, 2), (0, 0)), (1, 2), (2, 1, 6, 9)),
    (2, (4, 2), 2, (0, 1), (2, 1), (1, 1, 9, 6)),
    (2, (2, 3), (2, 1), (1, 0), (1, 2), (1, 1, 8, 5)),
    (3, (3, 2, 3), (1, 2, 1), (0, 1, 0), (2, 1, 2), (1, 1, 5, 8, 5)),
    # second order: output size 2 in a dimension with stride 1 and dilation 2
    (3, (5, 4, 1), (1, 2, 1), ((1, 1), (1, 3), (2, 1)), (2, 2, 1), (1, 1, 8, 6, 5)),
]

# (ndim, kernel, stride, padding, output_padding, dilation, out_channels, input shape):
# transposed convolutions whose plain-lax forward (input-dilated) already aborts
TRANSPOSED_CRASHERS = [
    (2, (2, 4), (2, 2), (1, 1), (0, 1), (1, 1), 2, (1, 1, 3, 2)),
    (2, (2, 4), (2, 1), (1, 1), (0, 0), (1, 1), 2, (1, 1, 5, 2)),
    (2, (5, 2), (1, 2), (0, 1), (0, 0), (1, 1), 1, (1, 1, 2, 3)),
    (3, (3, 3, 2), (2, 2, 2), (0, 0, 1), (0, 0, 0), (2, 1, 1), 1, (1, 1, 1, 1, 5)),
    (3, (2, 2, 4), (2, 1, 2), (1, 0, 1), (0, 0, 0), (1, 1, 2), 2, (1, 1, 5, 2, 1)),
    (3, (2, 2, 2), (1, 1, 2), (1, 1, 1), (0, 0, 0), (2, 2, 1), 1, (1, 1, 1, 1, 5)),
]

# Shared by both scripts: the derivative tower of ``apply`` and a finite-difference check.
_HEAD = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax import lax
import jconv
sys.path.insert(0, sys.argv[3])
import reference
cases, plain = json.loads(sys.argv[1]), sys.argv[2] == "plain"


def tower(apply, params, x):
    loss = lambda p, x: jnp.sum(apply(p, x) ** 2)
    jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    gx = jax.grad(loss, argnums=1)(params, x).block_until_ready()  # eager too
    jax.jit(jax.grad(lambda x: jnp.sum(jax.grad(loss)(params, x).weight ** 2)))(x)
    jax.jit(jax.grad(lambda p: jnp.sum(jax.grad(loss, argnums=1)(p, x) ** 2)))(params)
    jax.jacfwd(lambda x: apply(params, x).ravel()[:4])(x)
    # the routing changes no number: compare with a central finite difference
    eps, v = 1e-2, jax.random.normal(jax.random.key(2), x.shape)
    fd = (loss(params, x + eps * v) - loss(params, x - eps * v)) / (2 * eps)
    assert abs(fd - jnp.vdot(gx, v)) <= 2e-2 * (1 + abs(fd)), (fd, jnp.vdot(gx, v))


def rel(got, want):
    return np.max(np.abs(np.asarray(got) - want)) / max(np.max(np.abs(want)), 1e-6)
"""

SCRIPT = _HEAD + textwrap.dedent(
    """
    for nd, k, s, p, d, shape in cases:
        cls = {1: jconv.Conv1d, 2: jconv.Conv2d, 3: jconv.Conv3d}[nd]
        p = tuple(tuple(v) for v in p) if isinstance(p, list) and isinstance(p[0], list) else p
        cfg = cls(shape[1], 3, k, stride=s, padding=p, dilation=d)
        params = jconv.init(jax.random.key(0), cfg)
        x = jax.random.normal(jax.random.key(1), shape)
        sp = "DHW"[3 - nd:]

        def apply(p, x):
            if not plain:
                return jconv.apply(p, x)
            y = lax.conv_general_dilated(x, p.weight, cfg.stride, cfg.pads, rhs_dilation=cfg.dilation,
                                         dimension_numbers=("NC" + sp, "OI" + sp, "NC" + sp))
            return y + p.bias.reshape((-1,) + (1,) * nd)

        tower(apply, params, x)
        if not plain:  # and equals the float64 NumPy reference, forward and gradients
            y, vjp = jax.vjp(lambda x, w: apply(jconv.Params(w, params.bias, cfg), x), x, params.weight)
            g = jnp.ones_like(y)
            dx, dw = vjp(g)
            w64 = np.asarray(params.weight)
            ry = reference.conv(x, w64, params.bias, cfg.stride, cfg.pads, cfg.dilation, 1)
            rdx, rdw, _ = reference.conv_vjp(x, w64, g, cfg.stride, cfg.pads, cfg.dilation, 1)
            for got, want in ((y, ry), (dx, rdx), (dw, rdw)):
                assert rel(got, want) < 2e-5, rel(got, want)
        print("ok", nd, k, flush=True)
    print("all done")
    """
)

SCRIPT_T = _HEAD + textwrap.dedent(
    """
    for nd, k, s, p, op, d, cout, shape in cases:
        cls = {2: jconv.ConvTranspose2d, 3: jconv.ConvTranspose3d}[nd]
        cfg = cls(shape[1], cout, k, s, p, op, 1, True, d, algorithm="xla")
        params = jconv.init(jax.random.key(0), cfg)
        x = jax.random.normal(jax.random.key(1), shape)
        sp = "DHW"[3 - nd:]

        def apply(p, x):
            if not plain:
                return jconv.apply(p, x)
            pads = [(di * (ki - 1) - lo, di * (ki - 1) - hi + o)
                    for ki, di, (lo, hi), o in zip(cfg.kernel_size, cfg.dilation, cfg.pads,
                                                   cfg.output_padding)]
            y = lax.conv_transpose(x, p.weight, cfg.stride, pads, rhs_dilation=cfg.dilation,
                                   dimension_numbers=("NC" + sp, "OI" + sp, "NC" + sp),
                                   transpose_kernel=True)
            return y + p.bias.reshape((-1,) + (1,) * nd)

        y = jax.jit(apply)(params, x)
        tower(apply, params, x)
        want = reference.conv_transpose(x, np.asarray(params.weight), params.bias, cfg.stride,
                                        cfg.pads, cfg.dilation, 1, cfg.output_padding)
        assert rel(y, want) < 2e-5, rel(y, want)
        print("ok", nd, k, flush=True)
    print("all done")
    """
)


def _run(cases, mode, script=SCRIPT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps(cases), mode, os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_the_hazard_predicate_covers_every_crasher():
    from jconv import Conv1d, Conv2d, Conv3d
    from jconv.lowering.xla import swap_hazard

    for nd, k, s, p, d, shape in CRASHERS:
        cfg = {1: Conv1d, 2: Conv2d, 3: Conv3d}[nd](shape[1], 3, k, stride=s, padding=p, dilation=d)
        assert swap_hazard(shape[2:], cfg.kernel_size, cfg.stride, cfg.dilation, cfg.pads, 1)
    # common layers stay on the plain path: a 2x2 stride-2 patchify, a 3x3 ResNet conv
    assert not swap_hazard((56, 56), (2, 2), (2, 2), (1, 1), ((0, 0), (0, 0)), 1)
    assert not swap_hazard((56, 56), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), 1)
    assert not swap_hazard((6, 9), (2, 4), (2, 2), (1, 2), ((1, 1), (0, 0)), 2)  # grouped


def _halves(cases):
    """The first case for the fast tier, the rest for the slow one."""
    return [
        pytest.param(cases[:1], id="first"),
        pytest.param(cases[1:], id="rest", marks=SLOW),
    ]


@pytest.mark.parametrize("cases", _halves(CRASHERS))
def test_jconv_survives_every_known_crasher(cases):
    proc = _run(cases, "jconv")
    assert proc.returncode == 0 and "all done" in proc.stdout, (
        f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )
    assert proc.stdout.count("ok ") == len(cases)


@pytest.mark.parametrize(
    "case", tiered(CRASHERS, [0], ids=[f"case{i}" for i in range(len(CRASHERS))])
)
def test_plain_lax_really_aborts_on_these(case):
    """The control: without jconv's routing the same derivatives kill the process."""
    proc = _run([case], "plain")
    if proc.returncode == 0:
        pytest.skip("this XLA build no longer aborts on plain lax; jconv's routing is harmless")
    assert proc.returncode in (-6, 134), proc.stderr[-2000:]
    assert "Check failed" in proc.stderr


def test_the_hazard_predicate_covers_every_transposed_crasher():
    from jconv import ConvTranspose2d, ConvTranspose3d
    from jconv.lowering.xla import swap_hazard
    from jconv.shapes import output_spatial

    for nd, k, s, p, op, d, cout, shape in TRANSPOSED_CRASHERS:
        cls = {2: ConvTranspose2d, 3: ConvTranspose3d}[nd]
        cfg = cls(shape[1], cout, k, s, p, op, 1, True, d)
        out = output_spatial(cfg, shape[2:])
        pads = [(lo, hi - o) for (lo, hi), o in zip(cfg.pads, cfg.output_padding)]
        assert swap_hazard(out, cfg.kernel_size, cfg.stride, cfg.dilation, pads, 1)
    # a DCGAN-style upsampling layer stays on the plain path
    assert not swap_hazard((16, 16), (4, 4), (2, 2), (1, 1), ((1, 1), (1, 1)), 1)


@pytest.mark.parametrize("cases", _halves(TRANSPOSED_CRASHERS))
def test_jconv_survives_every_known_transposed_crasher(cases):
    proc = _run(cases, "jconv", SCRIPT_T)
    assert proc.returncode == 0 and "all done" in proc.stdout, (
        f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )
    assert proc.stdout.count("ok ") == len(cases)


@pytest.mark.parametrize(
    "case",
    tiered(TRANSPOSED_CRASHERS, [0], ids=[f"case{i}" for i in range(len(TRANSPOSED_CRASHERS))]),
)
def test_plain_lax_conv_transpose_really_aborts_on_these(case):
    """The control: ``lax.conv_transpose``, as a JAX user writes it, kills the process."""
    proc = _run([case], "plain", SCRIPT_T)
    if proc.returncode == 0:
        pytest.skip("this XLA build no longer aborts on plain lax; jconv's routing is harmless")
    assert proc.returncode in (-6, 134), proc.stderr[-2000:]
    assert "Check failed" in proc.stderr

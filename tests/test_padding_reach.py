"""Padding past the kernel's reach: no convolution XLA runs gets a negative padding.

XLA's CPU convolution reads outside its input when a dimension is padded
negatively on one side and positively on the other (jaxlib 0.10.2). Autodiff of a
plain ``lax`` conv padded past ``d·(k − 1)`` on one side emits exactly that for the
input gradient, which then holds garbage that changes from run to run. jconv pads
the excess explicitly (``jconv.lowering.xla.within_reach``) and crops instead of
padding negatively in transposed convolutions. These tests read every
convolution in the compiled programs of the forward pass and the first- and
second-order derivatives, on every lowering, and check the numbers, repeatedly,
against the float64 NumPy reference.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import SLOW, tiered

import jconv
from jconv.algorithms import ALGORITHMS, fits

# (ndim, in, out, kernel, padding pairs, stride, dilation, spatial); padded past the
# reach on the low side and not on the high side: the input gradient's trigger
CASES = [
    (1, 1, 4, (2,), ((2, 0),), (1,), (1,), (3,)),
    (1, 2, 6, (3,), ((4, 1),), (1,), (1,), (2,)),
    (1, 3, 4, (2,), ((3, 0),), (2,), (1,), (7,)),
    (2, 3, 6, (2, 2), ((2, 0), (2, 0)), (1, 1), (1, 1), (3, 5)),
    (2, 4, 4, (2, 2), ((4, 0), (4, 1)), (1, 1), (1, 1), (2, 2)),
    (2, 2, 5, (3, 2), ((3, 1), (0, 2)), (1, 2), (2, 1), (4, 5)),
    (3, 2, 4, (2, 1, 2), ((2, 0), (1, 0), (2, 0)), (1, 1, 1), (1, 1, 1), (2, 3, 2)),
]
# transposed: (ndim, in, out, kernel, padding, output_padding, stride, dilation, spatial),
# padding past the reach, so the conv XLA would run pads negatively
TRANSPOSED = [
    (1, 4, 2, (2,), (2,), (1,), (2,), (1,), (4,)),
    (2, 3, 4, (2, 3), (2, 3), (1, 0), (2, 1), (1, 1), (3, 6)),
    (2, 2, 3, (2, 2), (1, 2), (0, 0), (1, 1), (1, 1), (4, 4)),
]

_PAD = re.compile(r"convolution\(.*window=\{[^}]*pad=([-\d_x]+)")


def _conv(case, algorithm):
    n, cin, cout, k, pads, s, d, _ = case
    cls = getattr(jconv, f"Conv{n}d")
    return cls(cin, cout, k, stride=s, padding=pads, dilation=d, bias=False, algorithm=algorithm)


def _transposed(case, algorithm):
    n, cin, cout, k, p, op, s, d, _ = case
    cls = getattr(jconv, f"ConvTranspose{n}d")
    return cls(cin, cout, k, stride=s, padding=p, output_padding=op, dilation=d, bias=False,
               algorithm=algorithm)  # fmt: skip


def _params(cfg, spatial):
    params = jconv.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (2, cfg.in_channels, *spatial))
    return params, x


def _programs(cfg, spatial) -> list[str]:
    """Optimized HLO of the forward pass, the gradients and a second-order derivative."""
    params, x = _params(cfg, spatial)

    def loss(p, x):
        return jnp.sum(jnp.sin(jconv.apply(p, x)))

    def second(p, x):
        return jnp.sum(jax.grad(loss, argnums=1)(p, x) ** 2)

    fns = [jconv.apply, jax.grad(loss, argnums=(0, 1)), jax.grad(second, argnums=(0, 1))]
    return [jax.jit(f).lower(params, x).compile().as_text() for f in fns]


def _negative_pads(hlo: str) -> list[str]:
    bad = []
    for pads in _PAD.findall(hlo):
        for dim in pads.split("x"):
            lo, hi = (int(v) for v in re.findall(r"-?\d+", dim))
            if lo < 0 or hi < 0:
                bad.append(dim)
    return bad


def _all():
    """Each case on "xla" and, in turn, on one of the other lowerings that fit it."""
    for i, case in enumerate(CASES + TRANSPOSED):
        transposed = i >= len(CASES)
        others = [
            a for a in ALGORITHMS if a not in ("auto", "xla") and fits(a, transposed, case[3])
        ]
        picked = {"xla", others[i % len(others)]}
        name = f"{'transposed' if transposed else 'conv'}{case[0]}d-{case[4]}"
        marks = () if i in (0, len(CASES)) else SLOW  # the fast tier: the first of each kind
        for a in sorted(picked):
            yield pytest.param(case, a, transposed, id=f"{name}-{a}", marks=marks)


@pytest.mark.parametrize("case, algorithm, transposed", list(_all()))
def test_no_convolution_is_padded_negatively(case, algorithm, transposed):
    cfg = (_transposed if transposed else _conv)(case, algorithm)
    for hlo in _programs(cfg, case[-1]):
        assert not _negative_pads(hlo), (cfg, _negative_pads(hlo))


def test_the_check_sees_negative_padding_in_plain_lax():
    """The control: plain lax's input gradient of the first case pads (-1, 1)."""
    from jax import lax

    w = jnp.ones((4, 1, 2))

    def loss(x):
        y = lax.conv_general_dilated(x, w, (1,), [(2, 0)], dimension_numbers=("NCH", "OIH", "NCH"))
        return jnp.sum(y)

    hlo = jax.jit(jax.grad(loss)).lower(jnp.ones((1, 1, 3))).compile().as_text()
    assert _negative_pads(hlo) == ["-1_1"]


@pytest.mark.parametrize("case", tiered(CASES, [0], ids=[f"conv{c[0]}d-{c[4]}" for c in CASES]))
def test_input_gradient_is_right_every_time(case):
    """Garbage from out-of-bounds reads changes from run to run: check it repeatedly."""
    n, cin, cout, k, pads, s, d, spatial = case
    cfg = _conv(case, "xla")
    params, x = _params(cfg, spatial)
    y = jconv.apply(params, x)
    gy = jax.random.normal(jax.random.key(2), y.shape)
    x64, w64, gy64 = (np.asarray(a, np.float64) for a in (x, params.weight, gy))
    want, _, _ = reference.conv_vjp(x64, w64, gy64, s, [tuple(p) for p in pads], d, 1)
    for _ in range(3):
        got = jax.vjp(lambda x: jconv.apply(params, x), x)[1](gy)[0]
        np.testing.assert_allclose(
            np.asarray(got, np.float64), want, atol=2e-5 * np.abs(want).max()
        )
        jax.clear_caches()

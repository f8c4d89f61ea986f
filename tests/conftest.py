"""Shared test helpers: a random generator of valid configs and the torch oracle."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jconv  # noqa: E402

CONV = {1: jconv.Conv1d, 2: jconv.Conv2d, 3: jconv.Conv3d}
CONV_T = {1: jconv.ConvTranspose1d, 2: jconv.ConvTranspose2d, 3: jconv.ConvTranspose3d}


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        help="fuzz thousands of examples (JCONV_FUZZ_EXAMPLES, default 5000) instead of CI's few",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: the slow tier: CI runs it after the fast one (pytest -m slow); the README's "
        "command deselects it (-m 'not slow')",
    )


SLOW = pytest.mark.slow


def tiered(values, fast, ids=None):
    """Parameters for a sweep whose full length runs in the slow tier.

    ``fast`` is how many of ``values`` (spread evenly over them) also run in the
    fast tier, or the indices of those that do; the rest are marked ``slow``.
    Nothing is dropped: both tiers together run every value.
    """
    values = list(values)
    if isinstance(fast, int):
        step = max(1, len(values) // max(fast, 1))
        keep = set(range(0, len(values), step)[:fast])
    else:
        keep = set(fast)
    return [
        pytest.param(v, marks=() if i in keep else SLOW, id=None if ids is None else ids[i])
        for i, v in enumerate(values)
    ]


@dataclass
class Case:
    """One random convolution: the config's arguments and an input shape."""

    ndim: int
    kwargs: dict
    shape: tuple
    batched: bool
    jit: bool
    seed: int
    extra: dict = field(default_factory=dict)
    transposed: bool = False

    @property
    def output_size(self):
        return self.extra.get("output_size")

    def cfg(self, **extras):
        return (CONV_T if self.transposed else CONV)[self.ndim](**self.kwargs, **extras)

    def __str__(self):
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        name = f"ConvTranspose{self.ndim}d" if self.transposed else f"Conv{self.ndim}d"
        size = f" output_size={self.output_size}" if self.output_size is not None else ""
        return f"{name}({kw}) x{list(self.shape)}{size} jit={self.jit}"


def _padding_form(rng: random.Random, n: int, k, d, stride):
    """One of torch's and jconv's padding forms, with its (lo, hi) pairs."""
    forms = ["int", "tuple", "pairs", "valid"]
    if all(s == 1 for s in stride):
        forms.append("same")
    if n == 1:
        forms.append("causal")
    form = rng.choice(forms)
    if form == "int":
        p = rng.randint(0, 2)
        return p, [(p, p)] * n
    if form == "tuple":
        ps = tuple(rng.randint(0, 2) for _ in range(n))
        return ps, [(p, p) for p in ps]
    if form == "pairs":
        pairs = tuple((rng.randint(0, 2), rng.randint(0, 2)) for _ in range(n))
        return pairs, list(pairs)
    if form == "valid":
        return "valid", [(0, 0)] * n
    if form == "causal":
        return "causal", [(d[0] * (k[0] - 1), 0)]
    tot = [di * (ki - 1) for ki, di in zip(k, d)]
    return "same", [(t // 2, t - t // 2) for t in tot]


def _channels(rng: random.Random) -> tuple[int, int, int]:
    """(groups, in_channels, out_channels): dense, grouped or depthwise (multiplier 1 or 2)."""
    kind = rng.choice(["dense", "dense", "grouped", "depthwise"])
    if kind == "dense":
        return 1, rng.randint(1, 4), rng.randint(1, 4)
    if kind == "grouped":
        groups = rng.choice([2, 3])
        return groups, groups * rng.randint(1, 2), groups * rng.randint(1, 2)
    groups = rng.randint(2, 4)
    return groups, groups, groups * rng.choice([1, 2])


def _kernel_form(rng: random.Random, k: tuple[int, ...]):
    """The kernel as a tuple, or as one int when it is square (as torch users write it)."""
    return k if rng.random() < 0.7 else (k[0] if len(set(k)) == 1 else k)


def random_case(seed: int) -> Case:
    """A random valid Conv{1,2,3}d config and input, covering every option."""
    rng = random.Random(seed)
    n, (groups, cin, cout) = rng.choice([1, 1, 2, 2, 2, 3]), _channels(rng)
    kmax = {1: 5, 2: 4, 3: 3}[n]
    k = tuple(rng.randint(1, kmax) for _ in range(n))
    d = tuple(rng.choice([1, 1, 2]) for _ in range(n))
    stride = tuple(rng.choice([1, 1, 2, 3]) for _ in range(n))
    padding, pairs = _padding_form(rng, n, k, d, stride)
    mode = rng.choice(["zeros", "zeros", "zeros", "reflect", "replicate", "circular"])
    smax = {1: 12, 2: 8, 3: 6}[n]
    spatial = []
    for ki, di, (lo, hi) in zip(k, d, pairs):
        eff = di * (ki - 1) + 1
        low = max(1, eff - lo - hi, lo + 1, hi + 1) if mode != "zeros" else max(1, eff - lo - hi)
        spatial.append(rng.randint(low, max(low, smax)))
    batched = rng.random() < 0.75
    shape = ((rng.randint(1, 2),) if batched else ()) + (cin, *spatial)
    if not isinstance(padding, str) and rng.random() < 0.2 and n == 2:
        padding = list(padding) if isinstance(padding, tuple) else padding
    kwargs = dict(
        in_channels=cin,
        out_channels=cout,
        kernel_size=_kernel_form(rng, k),
        stride=stride,
        padding=padding,
        dilation=d,
        groups=groups,
        bias=rng.random() < 0.7,
        padding_mode=mode,
    )
    return Case(
        n, kwargs, shape, batched, jit=rng.random() < 0.5, seed=seed, extra={"pairs": pairs}
    )


def random_transposed_case(seed: int) -> Case:
    """A random valid ConvTranspose{1,2,3}d config and input, output_size included."""
    rng = random.Random(seed)
    n, (groups, cin, cout) = rng.choice([1, 1, 2, 2, 2, 3]), _channels(rng)
    k = tuple(rng.randint(1, {1: 5, 2: 4, 3: 3}[n]) for _ in range(n))
    d = tuple(rng.choice([1, 1, 2]) for _ in range(n))
    stride = tuple(rng.choice([1, 2, 2, 3]) for _ in range(n))
    form = rng.choice(["int", "tuple", "tuple", "pairs"])
    if form == "int":
        p = rng.randint(0, 2)
        padding, pairs = p, [(p, p)] * n
    elif form == "tuple":
        padding = tuple(rng.randint(0, 2) for _ in range(n))
        pairs = [(v, v) for v in padding]
    else:
        padding = tuple((rng.randint(0, 2), rng.randint(0, 2)) for _ in range(n))
        pairs = list(padding)
    out_pad = tuple(rng.randint(0, max(s, di) - 1) for s, di in zip(stride, d))
    spatial = []
    for ki, di, s, (lo, hi) in zip(k, d, stride, pairs):
        # smallest input whose output is non-empty even without output_padding
        low = max(1, -(-(lo + hi - di * (ki - 1)) // s) + 1)
        spatial.append(rng.randint(low, low + {1: 6, 2: 4, 3: 2}[n]))
    batched = rng.random() < 0.75
    shape = ((rng.randint(1, 2),) if batched else ()) + (cin, *spatial)
    extra = {"pairs": pairs}
    if form != "pairs" and rng.random() < 0.3:
        # torch's forward(output_size=): any size within the stride's range
        base = [
            (i - 1) * s - lo - hi + di * (ki - 1) + 1
            for i, s, (lo, hi), di, ki in zip(spatial, stride, pairs, d, k)
        ]
        size = [b + rng.randint(0, s - 1) for b, s in zip(base, stride)]
        extra["output_size"] = tuple(shape[:-n] + tuple(size)) if rng.random() < 0.5 else size
        out_pad = 0
    kwargs = dict(
        in_channels=cin,
        out_channels=cout,
        kernel_size=_kernel_form(rng, k),
        stride=stride,
        padding=padding,
        output_padding=out_pad,
        groups=groups,
        bias=rng.random() < 0.7,
        dilation=d,
    )
    return Case(
        n, kwargs, shape, batched, jit=rng.random() < 0.5, seed=seed, extra=extra, transposed=True
    )


def arrays_for(case: Case, cfg=None):
    """Deterministic float32 input, weight, bias and output cotangent for ``case``."""
    cfg = cfg or case.cfg()
    rs = np.random.RandomState(case.seed)
    x = rs.standard_normal(case.shape).astype(np.float32)
    w = rs.standard_normal(cfg.weight_shape).astype(np.float32)
    b = rs.standard_normal(cfg.bias_shape).astype(np.float32) if cfg.bias else None
    out = jconv.output_shape(cfg, case.shape, case.output_size)
    gy = rs.standard_normal(out).astype(np.float32)
    return x, w, b, gy


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


def assert_matches(mine, ref, case, tol: float) -> None:
    """(y, dx, dw, db) against a reference's, each within ``tol`` (None where no bias)."""
    for name, got, want in zip(("y", "dx", "dw", "db"), mine, ref):
        if want is None:
            assert got is None, f"{name} should be None for {case}"
            continue
        assert np.shape(got) == np.shape(want), f"{name}: shape {np.shape(got)} for {case}"
        err = rel_err(got, want)
        assert err <= tol, f"{name}: relative error {err:.2e} for {case}"


def jconv_grads(cfg, x, w, b, gy, jit: bool, output_size=None):
    """jconv's output and (dx, dw, db) of ``sum(y * gy)``."""

    def f(x, w, b):
        return jconv.apply(jconv.Params(w, b, cfg), x, output_size)

    def run(x, w, b, gy):
        y, vjp = jax.vjp(f, x, w, b)
        return (y, *vjp(gy))

    run = jax.jit(run) if jit else run
    return run(x, w, b, gy)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")

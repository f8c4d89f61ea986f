"""jconv under JAX's own sharding, on 8 host devices (issue 7).

Each test runs a script in a subprocess, because the device count must be set
before jax starts. The scripts print JSON; the assertions are here.

* Batch-, height-, length- and depth-sharded inputs, and a batch x height mesh:
  the default planner's lowering gives one device's results, keeps the output
  and the input gradient split like the input, and its compiled forward and
  backward programs hold no all-gather and no all-to-all; a split space axis
  communicates by collective-permute (the halo) only.
* The same in explicit-sharding mode (``jax.make_mesh`` + ``jax.set_mesh``).
* A data-parallel optax step equals one device's.
* Every lowering runs inside ``shard_map``: gradients (a replicated weight's
  summed over devices) and jvp equal one device's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = textwrap.dedent(
    """
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import jconv
    from jconv.lowering import plan

    def collectives(hlo):
        return {k: len(re.findall(re.escape(k) + r"(-start)?\\(", hlo))
                for k in ("all-gather", "all-to-all", "collective-permute")}

    def rel_err(got, want):
        return max(
            float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))
        )
    """
)

CASES = textwrap.dedent(
    """
    # name, config, mesh shape, mesh axis names, input spec
    CASES = [
        ("batch dense", jconv.Conv2d(16, 16, 3, padding=1), (8,), ("b",), P("b")),
        ("batch grouped g4", jconv.Conv2d(16, 32, 3, padding=1, groups=4), (8,), ("b",), P("b")),
        ("batch grouped wide", jconv.Conv2d(64, 64, 3, padding=1, groups=4), (8,), ("b",), P("b")),
        ("batch depthwise", jconv.Conv2d(16, 16, 3, padding=1, groups=16), (8,), ("b",), P("b")),
        ("batch depthwise 13x13", jconv.Conv2d(8, 8, 13, padding=6, groups=8), (8,), ("b",), P("b")),
        ("batch 1x1", jconv.Conv2d(16, 8, 1), (8,), ("b",), P("b")),
        ("batch conv3d", jconv.Conv3d(4, 8, 3, padding=1), (8,), ("b",), P("b")),
        ("batch transposed", jconv.ConvTranspose2d(16, 8, 4, stride=2, padding=1), (8,), ("b",), P("b")),
        ("batch transposed g2", jconv.ConvTranspose2d(16, 8, 4, stride=2, padding=1, groups=2),
         (8,), ("b",), P("b")),
        ("height dense", jconv.Conv2d(16, 16, 3, padding=1), (8,), ("h",), P(None, None, "h")),
        ("height dense stride 2", jconv.Conv2d(8, 16, 3, stride=2, padding=1), (8,), ("h",),
         P(None, None, "h")),
        ("height depthwise", jconv.Conv2d(16, 16, 3, padding=1, groups=16), (8,), ("h",),
         P(None, None, "h")),
        ("height depthwise 5x5 stride 2", jconv.Conv2d(8, 8, 5, stride=2, padding=2, groups=8),
         (8,), ("h",), P(None, None, "h")),
        ("height grouped g4", jconv.Conv2d(16, 16, 3, padding=1, groups=4), (8,), ("h",),
         P(None, None, "h")),
        ("height transposed", jconv.ConvTranspose2d(8, 8, 4, stride=2, padding=1), (8,), ("h",),
         P(None, None, "h")),
        ("height transposed g2", jconv.ConvTranspose2d(8, 8, 3, padding=1, groups=2), (8,), ("h",),
         P(None, None, "h")),
        ("length conv1d", jconv.Conv1d(8, 8, 7, padding=3), (8,), ("l",), P(None, None, "l")),
        ("depth conv3d", jconv.Conv3d(4, 8, 3, padding=1), (8,), ("d",), P(None, None, "d")),
        ("depth conv3d depthwise", jconv.Conv3d(8, 8, 3, padding=1, groups=8), (8,), ("d",),
         P(None, None, "d")),
        ("batch x height dense", jconv.Conv2d(16, 16, 3, padding=1), (2, 4), ("b", "h"),
         P("b", None, "h")),
        ("batch x height depthwise", jconv.Conv2d(16, 16, 3, padding=1, groups=16), (2, 4),
         ("b", "h"), P("b", None, "h")),
        ("batch x depth conv3d", jconv.Conv3d(4, 4, 3, padding=1), (2, 4), ("b", "d"),
         P("b", None, "d")),
        ("unbatched height", jconv.Conv2d(8, 8, 3, padding=1), (8,), ("h",), P(None, "h")),
    ]
    """
)

RUN_CASES = textwrap.dedent(
    """
    import sys
    mode, names = sys.argv[1], sys.argv[2:]
    rows = []
    for name, cfg, shape, axes, spec in CASES:
        if names and name not in names:
            continue
        kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
        mesh = jax.make_mesh(shape, axes, axis_types=(kind,) * len(axes))
        params = jconv.init(jax.random.key(0), cfg)
        batch = () if name.startswith("unbatched") else (8,)
        x = jax.random.normal(jax.random.key(1), batch + (cfg.in_channels,) + (16,) * cfg.ndim)

        def grads(p, x):
            return jax.grad(lambda p, x: jnp.sum(jconv.apply(p, x) ** 2), argnums=(0, 1))(p, x)

        want = jax.jit(jconv.apply)(params, x), jax.jit(grads)(params, x)
        with jax.set_mesh(mesh):
            xs = jax.device_put(x, NamedSharding(mesh, spec))
            ps = jax.device_put(params, NamedSharding(mesh, P()))
            fwd, bwd = (collectives(jax.jit(f).lower(ps, xs).compile().as_text())
                        for f in (jconv.apply, grads))
            got = jax.jit(jconv.apply)(ps, xs), jax.jit(grads)(ps, xs)
        rows.append(dict(
            name=name, fwd=fwd, bwd=bwd, err=rel_err(got, want),
            space=any(e is not None for e in list(spec)[len(batch) + 1:]),
            spec=[e for e in spec], out=[e for e in got[0].sharding.spec],
            dx=[e for e in got[1][1].sharding.spec],
        ))
    print(json.dumps(rows))
    """
)

DP_STEP = textwrap.dedent(
    """
    import optax
    layers = [
        jconv.Conv2d(3, 16, 3, padding=1),
        jconv.Conv2d(16, 16, 3, stride=2, padding=1, groups=16),   # depthwise
        jconv.Conv2d(16, 32, 3, stride=2, padding=1, groups=4),    # grouped
        jconv.Conv2d(32, 10, 1),
    ]
    keys = jax.random.split(jax.random.key(0), len(layers))
    params = [jconv.init(k, c) for k, c in zip(keys, layers)]
    optimizer = optax.adam(1e-2)

    def loss_fn(params, x, y):
        h = x
        for p in params[:-1]:
            h = jax.nn.relu(jconv.apply(p, h))
        logits = jconv.apply(params[-1], h.mean(axis=(2, 3), keepdims=True))[:, :, 0, 0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    x = jax.random.normal(jax.random.key(1), (32, 3, 16, 16))
    y = jnp.arange(32) % 10
    one = jax.jit(step)
    state = optimizer.init(params)
    want = []
    p, s = params, state
    for _ in range(3):
        p, s, loss, g = one(p, s, x, y)
        want.append((loss, g, p))

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    xs, ys = jax.device_put(x, data), jax.device_put(y, data)
    p, s = jax.device_put(params, replicated), jax.device_put(state, replicated)
    sharded = jax.jit(step, out_shardings=(replicated, replicated, replicated, replicated))
    hlo = collectives(sharded.lower(p, s, xs, ys).compile().as_text())
    got = []
    for _ in range(3):
        p, s, loss, g = sharded(p, s, xs, ys)
        got.append((loss, g, p))
    print(json.dumps(dict(
        hlo=hlo,
        loss_err=max(abs(float(a[0]) - float(b[0])) for a, b in zip(got, want)),
        grad_err=max(rel_err(a[1], b[1]) for a, b in zip(got, want)),
        param_err=max(rel_err(a[2], b[2]) for a, b in zip(got, want)),
        losses=[float(a[0]) for a in got],
        x_spec=[e for e in xs.sharding.spec],
    )))
    """
)


SHARD_MAP = textwrap.dedent(
    """
    import dataclasses
    mesh = jax.make_mesh((8,), ("b",), axis_types=(AxisType.Explicit,))
    cases = [
        ("xla", jconv.Conv2d(8, 8, 3, padding=1, groups=2)),
        ("shift", jconv.Conv2d(16, 16, 3, padding=1, groups=4)),
        ("shift", jconv.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)),
        ("tapgrad", jconv.Conv2d(16, 16, 3, padding=1)),
        ("widened", jconv.Conv2d(32, 32, 3, padding=1)),
        ("matmul", jconv.Conv2d(8, 8, 1)),
        ("fft", jconv.Conv2d(8, 8, 5, padding=2, groups=8)),
        ("pergroup", jconv.Conv2d(8, 8, 3, padding=1, groups=2)),
        ("s2d", jconv.Conv2d(3, 8, 3, stride=2, padding=1)),
        ("fold", jconv.Conv3d(4, 4, 3, padding=1)),
        ("subpixel", jconv.ConvTranspose2d(8, 4, 4, stride=2, padding=1)),
        ("pergroup", jconv.ConvTranspose2d(8, 4, 3, padding=1, groups=2)),
    ]
    import sys
    picked = [int(i) for i in sys.argv[1:]] or range(len(cases))
    rows = []
    for name, cfg in [cases[i] for i in picked]:
        cfg = dataclasses.replace(cfg, algorithm=name)
        p = jconv.init(jax.random.key(0), cfg)
        x = jax.random.normal(jax.random.key(1), (16, cfg.in_channels) + (8,) * cfg.ndim)
        loss = lambda p, x: jnp.sum(jconv.apply(p, x) ** 2)
        local_grads = jax.shard_map(
            jax.grad(loss, argnums=(0, 1)), mesh=mesh, in_specs=(P(), P("b")),
            out_specs=(P(), P("b")),
        )
        local_jvp = jax.shard_map(
            lambda p, x: jax.jvp(lambda x: jconv.apply(p, x), (x,), (x,))[1], mesh=mesh,
            in_specs=(P(), P("b")), out_specs=P("b"),
        )
        with jax.set_mesh(mesh):
            xs = jax.device_put(x, P("b"))
            got = jax.jit(local_grads)(p, xs), jax.jit(local_jvp)(p, xs)
        unbiased = dataclasses.replace(p, bias=jnp.zeros_like(p.bias))
        want = jax.grad(loss, argnums=(0, 1))(p, x), jconv.apply(unbiased, x)
        rows.append(dict(name=name, err=rel_err(got, want)))
    print(json.dumps(rows))
    """
)


def _run(script: str, *args: str):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check(row):
    for program in ("fwd", "bwd"):
        assert row[program]["all-gather"] == 0, row  # never a whole-activation gather
        assert row[program]["all-to-all"] == 0, row
    if not row["space"]:  # batch only: no communication at all but the weight-gradient sum
        assert row["fwd"]["collective-permute"] == 0 and row["bwd"]["collective-permute"] == 0, row
    else:  # a halo exchange
        assert row["fwd"]["collective-permute"] > 0, row

    def padded(spec):
        return spec + [None] * (8 - len(spec))

    for got in (row["out"], row["dx"]):  # the output and dx stay split like the input
        assert padded(got) == padded(row["spec"]), row
    assert row["err"] < 1e-5, row


FAST_SUBSET = ["batch grouped g4", "height transposed"]


@pytest.mark.parametrize(
    "mode",
    [
        "auto-fast",
        pytest.param("auto", marks=pytest.mark.slow),
        pytest.param("explicit", marks=pytest.mark.slow),
    ],
)
def test_sharded_convs_stay_local_and_equal_one_device(mode):
    # the fast tier runs three cases; explicit mode a representative subset
    subset = (
        FAST_SUBSET
        if mode == "auto-fast"
        else []
        if mode == "auto"
        else [
            "batch grouped g4",
            "batch depthwise 13x13",
            "batch conv3d",
            "height dense",
            "height depthwise",
            "height transposed",
            "depth conv3d",
            "batch x height depthwise",
        ]
    )
    rows = _run(CASES + RUN_CASES, mode.removesuffix("-fast"), *subset)
    assert len(rows) == (len(subset) or 23)
    for row in rows:
        _check(row)


@pytest.mark.slow
def test_data_parallel_optax_step_equals_one_device():
    pytest.importorskip("optax")
    result = _run(DP_STEP)
    assert result["x_spec"] == ["data"]
    assert result["hlo"]["all-gather"] == 0 and result["hlo"]["all-to-all"] == 0, result
    assert result["loss_err"] < 1e-5, result
    assert result["grad_err"] < 1e-5, result
    assert result["param_err"] < 1e-5, result
    assert result["losses"][-1] < result["losses"][0], result  # it trains


@pytest.mark.parametrize(
    "picked", [(10,), pytest.param((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11), marks=pytest.mark.slow)]
)
def test_every_lowering_runs_inside_shard_map(picked):
    rows = _run(SHARD_MAP, *map(str, picked))
    assert len(rows) == len(picked)
    for row in rows:
        assert row["err"] < 1e-5, row

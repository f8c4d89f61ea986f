"""Sharded inputs on 8 host devices: every lowering the planner may pick for a
split input stays local.

Batch-split: every lowering, forced (``"widened"`` and ``"fold"`` then run plain XLA inside). Height-split: every lowering but ``"fold"``
and ``"s2d"``, whose reshapes move a split space axis (the planner never picks
them for a space-split input; ``"s2d"`` is never planned at all) and ``"fft"``
(never planned for a split input). Runs in a subprocess, because the device
count must be set before jax starts.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import dataclasses, json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jconv
    from jconv.lowering import plan

    import sys
    split = sys.argv[1]
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    where = P("batch") if split == "batch" else P(None, None, "batch")
    cases = [
        ("xla", jconv.Conv2d(8, 8, 3, padding=1)),
        ("tapgrad", jconv.Conv2d(16, 16, 3, padding=1)),
        ("widened", jconv.Conv2d(32, 32, 3, padding=1)),
        ("shift", jconv.Conv2d(8, 16, 3, padding=1, groups=8)),
        ("shift", jconv.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)),
        ("pergroup", jconv.Conv2d(8, 8, 3, padding=1, groups=2)),
        ("matmul", jconv.Conv2d(8, 4, 1)),
        ("s2d", jconv.Conv2d(3, 8, 7, stride=2, padding=3)),
        ("fold", jconv.Conv3d(4, 4, 3, padding=1)),
        ("subpixel", jconv.ConvTranspose2d(8, 4, 4, stride=2, padding=1)),
        ("pergroup", jconv.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=2)),
        ("auto", jconv.Conv2d(8, 8, 13, padding=6, groups=8)),
    ]
    if split == "height":
        cases = [c for c in cases if c[0] not in ("s2d", "fold")]
    out = []
    for name, cfg in cases:
        cfg = dataclasses.replace(cfg, algorithm=name)
        params = jconv.init(jax.random.key(0), cfg)
        x = jax.random.normal(jax.random.key(1), (16, cfg.in_channels) + (16,) * cfg.ndim)

        def grads(p, x):
            return jax.grad(lambda p, x: jnp.sum(jconv.apply(p, x) ** 2), argnums=(0, 1))(p, x)

        xs = jax.device_put(x, NamedSharding(mesh, where))
        ps = jax.device_put(params, NamedSharding(mesh, P()))
        hlo = [jax.jit(f).lower(ps, xs).compile().as_text() for f in (jconv.apply, grads)]
        y, g = jax.jit(jconv.apply)(ps, xs), jax.jit(grads)(ps, xs)
        y1, g1 = jax.jit(jconv.apply)(params, x), jax.jit(grads)(params, x)
        err = max(
            float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
            for a, b in zip(jax.tree.leaves((y, g)), jax.tree.leaves((y1, g1)))
        )
        out.append(dict(
            name=name,
            planned=plan(cfg, x.shape, x.dtype, "cpu", jax.device_count()),
            gathers=sum(h.count("all-gather") + h.count("all-to-all") for h in hlo),
            out=list(y.sharding.spec) + [None] * (5 - len(y.sharding.spec)),
            err=err,
        ))
    print(json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["batch", "height"])
def test_every_lowering_keeps_a_sharded_conv_local(split):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, split],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(rows) == (12 if split == "batch" else 10)
    want = (
        ["batch", None, None, None, None] if split == "batch" else [None, None, "batch", None, None]
    )
    for row in rows:
        assert row["gathers"] == 0, row  # no all-gather or all-to-all, forward or gradients
        assert row["out"] == want, row  # the output stays split like the input
        assert row["err"] < 1e-5, row
    # with 8 devices a large depthwise kernel is not planned on the FFT, whose
    # batch XLA's partitioner gathers
    assert rows[-1]["planned"] == "xla"

"""Batch-sharded inputs on 8 host devices: every lowering stays local.

Runs in a subprocess, because the device count must be set before jax starts.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import dataclasses, json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jconv
    from jconv.lowering import plan

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    cases = [
        ("xla", jconv.Conv2d(8, 8, 3, padding=1)),
        ("tapgrad", jconv.Conv2d(16, 16, 3, padding=1)),
        ("shift", jconv.Conv2d(8, 16, 3, padding=1, groups=8)),
        ("shift", jconv.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)),
        ("pergroup", jconv.Conv2d(8, 8, 3, padding=1, groups=2)),
        ("matmul", jconv.Conv2d(8, 4, 1)),
        ("s2d", jconv.Conv2d(3, 8, 7, stride=2, padding=3)),
        ("fold", jconv.Conv3d(4, 4, 3, padding=1)),
        ("subpixel", jconv.ConvTranspose2d(8, 4, 4, stride=2, padding=1)),
        ("auto", jconv.Conv2d(8, 8, 13, padding=6, groups=8)),
    ]
    out = []
    for name, cfg in cases:
        cfg = dataclasses.replace(cfg, algorithm=name)
        params = jconv.init(jax.random.key(0), cfg)
        x = jax.random.normal(jax.random.key(1), (16, cfg.in_channels) + (10,) * cfg.ndim)

        def grads(p, x):
            return jax.grad(lambda p, x: jnp.sum(jconv.apply(p, x) ** 2), argnums=(0, 1))(p, x)

        xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
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
            gathers=sum(h.count("all-gather(") for h in hlo),
            out_spec=str(y.sharding.spec),
            err=err,
        ))
    print(json.dumps(out))
    """
)


def test_every_lowering_keeps_a_batch_sharded_conv_local():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(rows) == 10
    for row in rows:
        assert row["gathers"] == 0, row  # no all-gather, forward or gradients
        assert row["out_spec"] in ("P('batch',)", "PartitionSpec('batch',)"), row
        assert row["err"] < 1e-5, row
    # with 8 devices a large depthwise kernel is not planned on the FFT, whose
    # batch XLA's partitioner gathers
    assert rows[-1]["planned"] == "xla"

"""One process of a multi-process data-parallel jconv training run (or the single-process one).

Run as ``python multiprocess_worker.py OUT PROCESS_ID NUM_PROCESSES PORT``: with
NUM_PROCESSES > 1 it joins the others through ``jax.distributed`` on a localhost
coordinator with gloo CPU collectives; each process holds 2 host devices and feeds
its half of the global batch with ``make_array_from_process_local_data``. It runs a
few data-parallel optax steps of a small CNN (dense, grouped, depthwise and
transposed layers) and writes its final parameters and losses to OUT (.npz).
"""

from __future__ import annotations

import os
import sys

out, pid, nproc, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
local_devices = 4 // nproc
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=nproc,
        process_id=pid,
        initialization_timeout=60,
    )

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jconv  # noqa: E402

LAYERS = [
    jconv.Conv2d(3, 16, 3, stride=2, padding=1),  # dense, strided
    jconv.Conv2d(16, 16, 3, padding=1, groups=4),  # grouped
    jconv.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
    jconv.ConvTranspose2d(16, 8, 4, stride=2, padding=1),  # transposed
    jconv.Conv2d(8, 10, 1),  # 1x1 classifier
]
GLOBAL_BATCH, STEPS = 16, 3


def loss_fn(params, x, y):
    h = x
    for p in params[:-1]:
        h = jax.nn.relu(jconv.apply(p, h))
    logits = jconv.apply(params[-1], h.mean(axis=(2, 3), keepdims=True))[:, :, 0, 0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main():
    assert jax.process_count() == nproc and len(jax.devices()) == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch_split, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    keys = jax.random.split(jax.random.key(0), len(LAYERS))
    params = [jconv.init(k, c) for k, c in zip(keys, LAYERS)]
    params = jax.device_put(params, replicated)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rs = np.random.RandomState(1)
    per_process = GLOBAL_BATCH // nproc
    losses = []
    for _ in range(STEPS):
        x_all = rs.standard_normal((GLOBAL_BATCH, 3, 16, 16)).astype(np.float32)
        y_all = rs.randint(0, 10, GLOBAL_BATCH).astype(np.int32)
        mine = slice(pid * per_process, (pid + 1) * per_process)  # this process's rows
        x = jax.make_array_from_process_local_data(batch_split, x_all[mine], x_all.shape)
        y = jax.make_array_from_process_local_data(batch_split, y_all[mine], y_all.shape)
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    flat = {k: np.asarray(v) for k, v in jconv.state_dict(jax.device_get(params)).items()}
    np.savez(out, losses=np.asarray(losses), **flat)
    if nproc > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()

"""Data-parallel training across two processes joined by ``jax.distributed`` (gloo on CPU).

Two worker processes on this machine, 2 host devices each, train the same small
CNN on a global batch that each assembles from its own half; both must end with
the parameters of one process training on the whole batch on 4 devices.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("multiprocess_worker.py")
TIMEOUT = 240  # seconds for the whole run; a hung coordinator must not hang CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, pid: int, nproc: int, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), str(pid), str(nproc), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def _run_all(procs: list[subprocess.Popen]) -> list[str]:
    """Waits for every process; on a timeout or a failure kills them all."""
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"worker exited {p.returncode}:\n{log[-3000:]}"
    return logs


@pytest.mark.slow  # three processes on two cores: about 25 s
def test_two_processes_train_like_one(tmp_path):
    port = _free_port()
    outs = [tmp_path / f"process{i}.npz" for i in range(2)]
    single = tmp_path / "single.npz"
    procs = [_launch(outs[i], i, 2, port) for i in range(2)] + [_launch(single, 0, 1, 0)]
    _run_all(procs)
    want = dict(np.load(single))
    assert len(want["losses"]) == 3 and want["losses"][-1] < want["losses"][0]
    assert sum(k.endswith("weight") for k in want) == 5
    for out in outs:
        got = dict(np.load(out))
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=2e-6, err_msg=key)

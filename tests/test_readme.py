"""The README's code runs as written."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

README = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()


def _python_block(section: str) -> str:
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.DOTALL).group(1)


def test_training_loop_snippet_trains_and_saves(tmp_path, monkeypatch):
    pytest.importorskip("optax")
    import jconv

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_python_block("Using jconv in a training loop"), "README.md", "exec"), scope)
    losses = [float(scope["loss_fn"](scope["params"], scope["x"], scope["y"]))]
    for _ in range(5):
        scope["params"], scope["opt_state"], loss = scope["train_step"](
            scope["params"], scope["opt_state"], scope["x"], scope["y"]
        )
        losses.append(float(loss))
    assert losses[-1] < losses[0]  # it trains
    loaded = jconv.load(tmp_path / "model.safetensors", scope["layers"])
    assert sorted(jconv.state_dict(loaded)) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    first = jconv.state_dict(loaded)["0.weight"]
    assert first.shape == (16, 1, 3, 3) and np.isfinite(first).all()


def test_scaling_out_snippet_runs_on_8_host_devices():
    pytest.importorskip("optax")
    code = _python_block("Scaling out")
    assert code.startswith('import os\nos.environ["XLA_FLAGS"]')  # set before jax starts
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "x on ('data',)" in out
    assert "output (1, 16, 2048, 2048) split (None, None, 'data')" in out
    assert "all-gather: 0  collective-permute: True" in out

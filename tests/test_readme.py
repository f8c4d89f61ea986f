"""The README's code runs as written."""

from __future__ import annotations

import pathlib
import re

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

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


def test_flax_and_equinox_snippets_run(tmp_path):
    pytest.importorskip("flax")
    pytest.importorskip("equinox")
    import jax
    import jax.numpy as jnp

    import jconv
    import jconv.eqx

    body = README.split("## Flax and Equinox\n", 1)[1].split("\n## ", 1)[0]
    nnx_code, linen_code, eqx_code = re.findall(r"```python\n(.*?)```", body, re.DOTALL)

    class TorchLike:  # what the snippet loads: a state_dict with the same names
        def __init__(self, sd):
            self.sd = {k: v + 1 for k, v in sd.items()}

        def state_dict(self):
            return self.sd

    scope: dict = {"jax": jax, "jnp": jnp, "jconv": jconv}
    first, rest = nnx_code.split("model = jconv.load_state_dict", 1)
    exec(compile(first, "README.md", "exec"), scope)
    assert scope["y"].shape == (2, 3, 32, 32)
    assert set(scope["sd"]) == {
        "features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
        "up.weight", "up.bias",
    }  # fmt: skip
    scope["torch_model"] = TorchLike(scope["sd"])
    exec(compile("model = jconv.load_state_dict" + rest, "README.md", "exec"), scope)
    np.testing.assert_array_equal(
        jconv.state_dict(scope["model"])["up.bias"], scope["torch_model"].sd["up.bias"]
    )

    scope = {"jax": jax, "jnp": jnp, "jconv": jconv, "x": jnp.ones((2, 3, 16, 16))}
    exec(compile(linen_code, "README.md", "exec"), scope)
    assert sorted(scope["sd"]) == ["0.bias", "0.weight", "2.bias", "2.weight"]

    scope = {"jax": jax, "jnp": jnp, "jconv": jconv, "x": jnp.ones((2, 3, 16, 16)),
             "k1": jax.random.key(1), "k2": jax.random.key(2), "path": tmp_path / "m.st"}  # fmt: skip
    saved = jconv.eqx.Conv2d(3, 16, 3, padding=1, key=jax.random.key(9))
    other = jconv.eqx.Conv2d(16, 8, 3, stride=2, key=jax.random.key(8))
    jconv.save(scope["path"], {"0": saved.params, "2": other.params})
    exec(compile(eqx_code, "README.md", "exec"), scope)
    assert scope["y"].shape == (2, 8, 7, 7)
    np.testing.assert_array_equal(jconv.state_dict(scope["model"])["0.weight"], saved.weight)

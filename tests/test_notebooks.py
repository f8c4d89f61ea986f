"""Every notebook under notebooks/ runs top to bottom on a fresh kernel.

``python tests/test_notebooks.py --write`` re-executes them and stores the
outputs that run produced (the only way outputs get into the repository).
"""

from __future__ import annotations

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(path: pathlib.Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return nb


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_there_are_notebooks():
    assert any(p.name.startswith("01_") for p in NOTEBOOKS)
    assert any(p.name.startswith("02_") for p in NOTEBOOKS)
    assert any(p.name.startswith("03_") for p in NOTEBOOKS)
    assert any(p.name.startswith("04_") for p in NOTEBOOKS)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.name, marks=() if p.name.startswith("01_") else pytest.mark.slow)
        for p in NOTEBOOKS
    ],
)
def test_notebook_runs_on_a_fresh_kernel(path):
    if path.name.startswith("04_"):  # the framework modules
        pytest.importorskip("flax")
        pytest.importorskip("equinox")
    if path.name.startswith("03_"):  # ports a torch model: needs the oracle
        pytest.importorskip("torch")
        pytest.importorskip("optax")
    nb = execute(path)
    text = _text(nb)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    if path.name.startswith("01_"):
        assert "expected input[1, 2, 5, 5] to have 3 channels, but got 2 channels instead" in text
        assert "jconv.output_shape: (1, 1, 3, 3)" in text
        # the ConvTranspose2d section: output_padding and output_size resolve 7 vs 8
        assert "up, output_padding=1:   (1, 1, 8, 8)" in text
        assert "valid sizes range from (7, 7) to (8, 8)" in text
        assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    if path.name.startswith("02_"):
        accuracy = re.search(r"^test accuracy: ([0-9.]+)$", text, re.MULTILINE)
        assert accuracy is not None, text[-2000:]
        assert float(accuracy.group(1)) >= 0.97
        assert "training: 100%" in text  # the progress bar reached the end
        pngs = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        assert pngs >= 4  # digits, loss curve, first-layer kernels, feature maps
    if path.name.startswith("03_"):
        assert "output (16, 10)  max |jconv - torch| =" in text
        assert "same as load_state_dict: True" in text
        assert "is a torch.save checkpoint" in text and "never unpickles" in text
    if path.name.startswith("04_"):
        assert "features.4.weight    (32, 1, 3, 3)" in text  # torch's names, through nnx
        assert "same start: True" in text  # the NNX weights loaded into Equinox
        for framework in ("nnx", "equinox"):
            acc = re.search(rf"^{framework} test accuracy: ([0-9.]+)$", text, re.MULTILINE)
            assert acc is not None and float(acc.group(1)) >= 0.85, text[-1500:]
        agree = re.search(r"test predictions that agree: (\d+)/(\d+)", text)
        assert agree is not None and int(agree.group(1)) >= 0.97 * int(agree.group(2))


if __name__ == "__main__":
    nbformat = pytest.importorskip("nbformat")
    targets = [p for p in NOTEBOOKS if not sys.argv[2:] or p.name in sys.argv[2:]]
    for path in targets:
        if "--write" in sys.argv:
            nbformat.write(execute(path), path)
            print("wrote", path.name)

"""``python -m jconv``: the demo a new user runs first, and the subcommand help."""

from __future__ import annotations

import json
import subprocess
import sys

from jconv.cli import main
from jconv.demo import walkthrough
from jconv.lowering import ALGORITHMS


def test_module_runs_the_walkthrough():
    out = subprocess.run(
        [sys.executable, "-m", "jconv"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    for part in (
        "(1, 1, 5, 5)",
        "N = N_old + 2*padding = 5 + 2*1 = 7",
        "jconv.output_shape gives (1, 1, 3, 3)",
        "expected input[1, 2, 5, 5] to have 3 channels, but got 2 channels instead",
        "(out_channels, in_channels/groups, kH, kW)",
    ):
        assert part in out.stdout


def test_walkthrough_rows_are_constant_without_padding():
    text = walkthrough(seed=3)
    block = text.split("along every row:\n")[1].split("\n\n")[0]
    for row in block.strip("[]").split("\n"):
        values = row.strip(" []").split()
        assert len(set(values)) == 1, row


def test_help_lists_the_subcommands(capsys):
    try:
        main(["--help"])
    except SystemExit as done:
        assert done.code == 0
    assert "demo" in capsys.readouterr().out


def test_demo_subcommand_takes_a_seed(capsys):
    assert main(["demo", "--seed", "1"]) == 0
    assert walkthrough(seed=1) in capsys.readouterr().out


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "jconv", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    for command in ("demo", "bench"):
        assert command in out.stdout


def test_bench_writes_json_and_chart_and_shows_progress(tmp_path):
    """One small case, one round: the report's structure, not its speed."""
    out = subprocess.run(
        [sys.executable, "-m", "jconv", "bench", "--cases", "conv1d_k7", "--repeat", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "1/1 conv1d_k7" in out.stderr  # the progress bar
    assert "geomean speedup, forward vs lax" in out.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    (row,) = report["rows"]
    assert row["case"]["name"] == "conv1d_k7" and row["lowering"] in ALGORITHMS
    assert row["max_rel_diff_vs_lax"] < 1e-5
    for impl in ("jconv", "lax"):
        assert row["ms"][impl]["forward"] > 0 and row["ms"][impl]["forward_backward"] > 0
        assert row["compile_s"][impl] > 0
    assert report["matmul_peak_gflops"] > 0
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_an_unknown_case():
    assert main(["bench", "--cases", "resnet3x3,nope"]) == 2

"""``python -m jconv``: the demo a new user runs first, and the subcommand help."""

from __future__ import annotations

import subprocess
import sys

from jconv.cli import main
from jconv.demo import walkthrough


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

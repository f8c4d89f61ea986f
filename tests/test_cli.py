"""``python -m jconv``: the demo a new user runs first, and the subcommand help."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiered

import jconv
from jconv.chain import parse_layer, trace
from jconv.cli import main
from jconv.demo import walkthrough
from jconv.lowering import ALGORITHMS
from jconv.models import COLUMNS, RUNS, run_model


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
    for command in ("demo", "shape", "bench"):
        assert command in out.stdout


def test_bench_writes_json_and_chart_and_shows_progress(tmp_path, capsys):
    """One small case, one round: the report's structure, not its speed."""
    code = main(["bench", "--cases", "conv1d_k7", "--repeat", "1", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "1/1 conv1d_k7" in out.err  # the progress bar
    assert "geomean speedup, forward vs lax" in out.out
    report = json.loads((tmp_path / "bench.json").read_text())
    (row,) = report["rows"]
    assert row["case"]["name"] == "conv1d_k7" and row["lowering"] in ALGORITHMS
    assert row["max_rel_diff_vs_lax"] < 1e-5
    for impl in ("jconv", "lax"):
        assert row["ms"][impl]["forward"] > 0 and row["ms"][impl]["forward_backward"] > 0
        assert row["compile_s"][impl] > 0
    assert report["matmul_peak_gflops"] > 0
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_reports_auto_against_xla_with_memory(tmp_path, capsys):
    """One grid shape, one round: the report's structure and its memory columns."""
    from jconv.grid import GRID

    assert len(GRID) >= 100
    assert {c.nd for c, _ in GRID} == {1, 2, 3} and {d for _, d in GRID} == {"float32", "bfloat16"}
    assert any(c.transposed for c, _ in GRID) and any(c.groups == c.cin > 1 for c, _ in GRID)
    code = main(
        ["bench", "--grid", "--cases", "pointwise:0", "--repeat", "1", "--out", str(tmp_path)]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads((tmp_path / "grid.json").read_text())
    (row,) = report["rows"]
    assert row["case"]["name"] == "pointwise:0" and row["lowering"] in ALGORITHMS
    for impl in ("auto", "xla"):
        assert row["temp_bytes"][impl]["forward_backward"] >= 0
        assert row["ms"][impl]["forward"] > 0
    assert set(report["summary"]) >= {"slower_than_0.95_xla", "over_2x_xla_memory"}
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["bench", "--grid", "--cases", "nope"]) == 2


def test_grid_times_the_autotuners_choices(tmp_path, capsys, monkeypatch):
    """``--tuned``: each mode's choice (one of its candidates), its cost and its ratio."""
    from jconv.lowering import tune

    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(tune, "_report", [])
    args = ["bench", "--grid", "--tuned", "--cases", "pointwise:0", "--repeat", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "grid.json").read_text())
    (row,) = report["rows"]
    assert set(row["tuned"]) == {"forward", "train"}
    for choice in row["tuned"].values():
        assert choice["algorithm"] in choice["ms"] and "xla" in choice["ms"]
        assert choice["seconds"] > 0
    assert row["tuned_vs_xla"]["forward"] > 0 and row["temp_bytes"]["tuned"]["forward"] >= 0
    same = row["same_program_as_xla"]  # a choice of xla compiles to xla's very program
    assert set(same) == {"auto", "tuned"}
    assert same["tuned"]["forward"] == (row["tuned"]["forward"]["algorithm"] == "xla")
    assert report["summary"]["tuning_seconds"] > 0
    assert "tuned_slower_than_xla" in report["summary"]
    assert tune.settings().enabled is False  # tuning stayed inside the grid's blocks


@pytest.mark.parametrize("flag", ["--grid", "--models"])
def test_bench_list_names_the_grid_and_model_cases_without_running_them(flag, capsys, monkeypatch):
    from jconv import grid, models

    def refuse(*args, **kwargs):
        raise AssertionError("--list ran a case")

    monkeypatch.setattr(grid, "run_grid_case", refuse)
    monkeypatch.setattr(models, "run_model", refuse)
    assert main(["bench", flag, "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = (
        [c.name for c, _ in grid.GRID] if flag == "--grid" else [f"{m}:{d}" for m, d in models.RUNS]
    )
    assert [line.split()[0] for line in lines] == names


def test_sweep_draws_valid_varied_layers_the_same_for_a_seed():
    """``--grid --sweep``: random layers torch accepts, within the flop bounds, one list
    per seed, covering every rank, transposed, grouped, depthwise and both dtypes."""
    import jconv
    from jconv.grid import _FLOPS, sweep

    cases = sweep(60, seed=3)
    assert len(cases) == 60 and sweep(60, seed=3) == cases and sweep(60, seed=4) != cases
    assert [c.name for c, _ in cases] == [f"sweep:3:{i}" for i in range(60)]
    for case, _ in cases:
        cfg = case.config()  # validated at construction: a bad draw would raise here
        assert _FLOPS[0] <= jconv.flops(cfg, case.input_shape) <= _FLOPS[1]
        assert all(n > 0 for n in jconv.output_shape(cfg, case.input_shape))
        assert type(case.cin) is int and type(case.cout) is int  # JSON-able in the report
    assert {c.nd for c, _ in cases} == {1, 2, 3} and {d for _, d in cases} == {
        "float32",
        "bfloat16",
    }
    assert any(c.transposed for c, _ in cases) and any(c.groups == c.cin > 1 for c, _ in cases)
    assert any(1 < c.groups < c.cin for c, _ in cases) and any(c.dilation > 1 for c, _ in cases)


def test_sweep_runs_only_layers_planned_off_xla(tmp_path, capsys, monkeypatch):
    from jconv import grid

    ran = []
    ones = {"forward": 1.0, "forward_backward": 1.0}

    def fake(case, dtype, *args, **kwargs):  # times nothing: which layers run is the point
        ran.append(case)
        row = {"case": {"name": case.name}, "dtype": dtype, "lowering": "fake"}
        return {**row, "auto_vs_xla": ones, "memory_vs_xla": ones}

    monkeypatch.setattr(grid, "run_grid_case", fake)
    monkeypatch.setattr(grid, "summarize", lambda rows: {})
    monkeypatch.setattr(grid, "write_report", lambda *a: None)
    assert main(["bench", "--grid", "--sweep", "20", "--seed", "5", "--out", str(tmp_path)]) == 0
    planned = {c.name: grid._planned(c, d) for c, d in grid.sweep(20, 5)}
    assert 0 < len(ran) < 20 and all(planned[c.name] != "xla" for c in ran)
    assert [c.name for c in ran] == [n for n, a in planned.items() if a != "xla"]
    assert f"{len(ran)} of 20 random layers planned off xla" in capsys.readouterr().err
    assert main(["bench", "--grid", "--sweep", "4", "--seed", "5", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [f"sweep:5:{i}" for i in range(4)]


def test_bench_rejects_an_unknown_case():
    assert main(["bench", "--cases", "resnet3x3,nope"]) == 2


EXAMPLE = [
    "1,3,224,224",
    "Conv2d(3,64,7,stride=2,padding=3)",
    "Conv2d(64,128,3,stride=2,padding=1,groups=4)",
    "ConvTranspose2d(128,64,4,stride=2,padding=1)",
]


def _shape_json(capsys, *argv):
    code = main(["shape", "--json", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_shape_prints_the_table_of_the_issue_example():
    out = subprocess.run(
        [sys.executable, "-m", "jconv", "shape", *EXAMPLE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "output shape" in lines[0] and "receptive field" in lines[0]
    assert "(1, 64, 112, 112)" in out.stdout and "(1, 128, 56, 56)" in out.stdout
    last = next(line for line in lines if line.startswith("3 "))
    assert "(1, 64, 112, 112)" in last and "131,136" in last and last.endswith("15x15")
    assert lines[-1].split()[:2] == ["total", "159,168"]


def test_shape_json_agrees_with_the_library(capsys):
    code, report, err = _shape_json(capsys, *EXAMPLE)
    assert code == 0 and err == ""
    shape = (1, 3, 224, 224)
    for row, text in zip(report["layers"], EXAMPLE[1:], strict=True):
        cfg = parse_layer(text)
        assert row["input_shape"] == list(shape)
        assert row["params"] == jconv.num_params(cfg)
        assert row["flops"] == jconv.flops(cfg, shape)
        shape = jconv.output_shape(cfg, shape)
        assert row["output_shape"] == list(shape)
    assert [r["receptive_field"] for r in report["layers"]] == [[7, 7], [11, 11], [15, 15]]
    assert report["output_shape"] == [1, 64, 112, 112]
    assert report["total_params"] == sum(r["params"] for r in report["layers"])
    assert "error" not in report


def test_shape_takes_unbatched_input_and_torch_prefixes(capsys):
    code, report, _ = _shape_json(
        capsys, "4x100", "nn.Conv1d(4, 8, 5, dilation=2)", "jconv.Conv1d(8, 8, 3, padding='same')"
    )
    assert code == 0
    assert [r["output_shape"] for r in report["layers"]] == [[8, 92], [8, 92]]
    assert [r["receptive_field"] for r in report["layers"]] == [[9], [11]]


CHAINS = [
    [
        "Conv2d(3, 8, 3, stride=2)",
        "Conv2d(8, 8, 3, dilation=2)",
        "ConvTranspose2d(8, 4, 3, stride=2)",
    ],
    ["ConvTranspose2d(3, 4, 4, stride=2, padding=1)", "Conv2d(4, 4, 3, padding=1)"],
    [
        "ConvTranspose2d(3, 4, 3, stride=3)",
        "ConvTranspose2d(4, 4, 2, stride=2, dilation=2)",
        "Conv2d(4, 4, 3, stride=2)",
    ],
    [
        "Conv2d(3, 6, (3, 5), stride=(1, 2), dilation=(2, 1), padding=2, groups=3)",
        "Conv2d(6, 6, 1)",
    ],
]


@pytest.mark.parametrize("layers", tiered(CHAINS, [0], ids=[str(i) for i in range(len(CHAINS))]))
def test_receptive_field_matches_the_gradients_support(layers):
    """With positive weights, d out[pos] / d input is non-zero exactly where out[pos] looks."""
    size = 40
    rows = trace((1, 3, size, size), layers)
    cfgs = [parse_layer(t) for t in layers]
    params = [
        jconv.load_state_dict(
            c, {"weight": np.ones(c.weight_shape), "bias": np.zeros(c.out_channels)}
        )
        for c in cfgs
    ]

    def net(x):
        for p in params:
            x = jconv.apply(p, x)
        return x

    y, pullback = jax.vjp(net, jnp.ones((1, 3, size, size)))
    out_h, out_w = y.shape[-2:]
    widest = [0, 0]
    for ph in range(out_h // 2 - 3, out_h // 2 + 3):  # central positions: borders do not clip
        for pw in range(out_w // 2 - 3, out_w // 2 + 3):
            (g,) = pullback(jnp.zeros_like(y).at[0, 0, ph, pw].set(1.0))
            rows_hit = np.flatnonzero(np.asarray(jnp.abs(g).sum(axis=(0, 1, 3))))
            cols_hit = np.flatnonzero(np.asarray(jnp.abs(g).sum(axis=(0, 1, 2))))
            assert 0 < rows_hit[0] and rows_hit[-1] < size - 1
            widest = [max(widest[0], np.ptp(rows_hit) + 1), max(widest[1], np.ptp(cols_hit) + 1)]
    assert tuple(widest) == rows[-1].receptive_field


BAD_CHAINS = [
    # (argv after "shape", layer that fails, words in the reason)
    (["1,3,32,32", "Conv2d(3,64,3)", "Conv2d(32,64,3)"], 2, ["32 channels", "64 channels"]),
    (["1,3,8,8", "Conv2d(3,4,5)", "Conv2d(4,4,5)"], 2, ["Kernel size", "(4 x 4)"]),
    (["1,3,8,8", "Conv2d(3,4,3,stride=2)", "ConvTranspose2d(4,4,3,padding=5)"], 2, ["too small"]),
    (["1,3,8,8", "Conv2d(3,4,3)", "Conv1d(4,4,3)"], 2, ["1-d layer cannot follow a 2-d"]),
    (["1,3,8,8", "Conv2d(3,4,3,groups=2)"], 1, ["in_channels", "groups"]),
    (["1,3,8,8", "Conv2d(3,4,3,padding='middle')"], 1, ["padding", "'middle'"]),
    (["1,3,8,8", "Conv2d(3,4,3,stride=0)"], 1, ["stride"]),
    (["1,3,8,8", "Linear(3,4)"], 1, ["'Linear(3,4)' is not a layer", "Conv2d"]),
    (["1,3,8,8", "__import__('os').system('true')"], 1, ["is not a layer"]),
    (["1,3,8,8", "Conv2d(3, 4, k)"], 1, ["arguments must be literals"]),
    (["1,3,8,8", "Conv2d(3, 4"], 1, ["cannot parse"]),
    (["1,3,8,8", "Conv2d(3, 4, 3, nope=1)"], 1, ["nope"]),
]


@pytest.mark.parametrize("argv, index, words", BAD_CHAINS, ids=range(len(BAD_CHAINS)))
def test_shape_reports_the_failing_layer(capsys, argv, index, words):
    code = main(["shape", *argv])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith(f"error: layer {index} ")
    for word in words:
        assert word in captured.err
    for earlier in range(1, index):  # the layers that fit are still shown
        assert any(line.startswith(f"{earlier} ") for line in captured.out.splitlines())
    code, report, _ = _shape_json(capsys, *argv)
    assert code == 1
    assert report["error"]["layer"] == index and len(report["layers"]) == index - 1
    assert all(word in report["error"]["reason"] for word in words)


@pytest.mark.parametrize("shape", ["a,b", "", "1,-3,8,8"])
def test_shape_rejects_a_bad_input_shape(capsys, shape):
    assert main(["shape", shape, "Conv2d(3,4,3)"]) == 2
    assert "input shape" in capsys.readouterr().err


def test_shape_needs_at_least_one_layer(capsys):
    with pytest.raises(SystemExit) as done:
        main(["shape", "1,3,8,8"])
    assert done.value.code == 2


def test_models_bench_runs_one_model_through_the_cli(tmp_path, capsys):
    code = main(["bench", "--models", "--cases", "audio1d:float32", "--scale", "0.125",
                 "--repeat", "1", "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads((tmp_path / "models.json").read_text())
    (row,) = report["rows"]
    assert row["model"] == "audio1d" and row["dtype"] == "float32"
    for column in ("jconv", "flax", "lax"):
        assert row["ms"][column]["step"] > 0 and row["ms"][column]["inference"] > 0
        assert row["temp_bytes"][column]["step"] >= 0 and row["compile_s"][column] > 0
    assert "vs_flax_step_geomean" in report["summary"]
    losses = row["first_loss"]  # every column trains the same network (all models: below)
    assert {"jconv", "flax", "lax"} <= set(losses)
    for name, value in losses.items():
        assert abs(value - losses["jconv"]) <= 1e-4 * abs(losses["jconv"]), (name, losses)
    assert main(["bench", "--models", "--cases", "nope"]) == 2


@pytest.mark.parametrize("run", tiered(RUNS, [], ids=[f"{m}:{d}" for m, d in RUNS]))
def test_every_benchmark_column_trains_the_same_network(run):
    """jconv, torch, flax-style NHWC lax and plain lax compute the same first loss from the
    same weights: the benchmark compares one network, not four."""
    model, dtype = run
    columns = COLUMNS if _has_torch() else ("jconv", "flax", "lax")
    row = run_model(model, dtype, 1, scale=0.25, columns=columns)
    losses = row["first_loss"]
    assert set(losses) == set(columns)
    tol = 1e-4 if dtype == "float32" else 2e-2
    for name, value in losses.items():
        assert abs(value - losses["jconv"]) <= tol * abs(losses["jconv"]), (name, losses)


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True

"""The opt-in autotuner's mechanics (never its speed): choices, the cache file, traces."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import pytest

import jconv
from jconv.lowering import tune


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """Each test starts with no tuned choices and its own cache file."""
    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(tune, "_report", [])
    monkeypatch.setenv("JCONV_TUNE_CACHE", str(tmp_path / "autotune.json"))
    jax.clear_caches()
    yield
    jax.clear_caches()


def _rigged(winner: str, wins: float = 1.0):
    """A stand-in for ``tune.measure`` under which ``winner`` is fastest (its median),
    beating xla in a share ``wins`` of the rounds."""

    def measure(cfgs, *args):
        fast = {"ms": 1.0, "temp_bytes": 0, "wins": wins}
        slow = {"ms": 10.0, "temp_bytes": 0, "wins": 0.0}
        return {n: fast if n == winner else slow for n in cfgs}, {}, []

    return measure


@pytest.mark.parametrize("wins, chosen", [(1.0, "shift"), (0.8, "shift"), (0.6, "xla")])
def test_a_faster_median_wins_only_if_it_beat_xla_in_most_rounds(monkeypatch, wins, chosen):
    monkeypatch.setattr(tune, "measure", _rigged("shift", wins))
    cfg = jconv.Conv2d(8, 8, 3, padding=1, groups=8)
    with jconv.autotune(cache=False):
        jconv.apply(jconv.init(jax.random.key(0), cfg), jnp.ones((1, 8, 6, 6)))
    assert tune.report()[-1]["algorithm"] == chosen


CASES = [  # (config, input shape): one per family, with the lowerings that fit it
    (jconv.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 10, 10)),
    (jconv.Conv2d(8, 8, 9, padding=4, groups=8), (1, 8, 12, 12)),
    (jconv.Conv2d(6, 8, 3, stride=2, padding=1), (2, 6, 9, 9)),
    (jconv.Conv2d(8, 4, 1), (2, 8, 5, 5)),
    (jconv.Conv2d(8, 8, 3, padding=1, groups=2), (2, 8, 6, 6)),
    (jconv.Conv3d(4, 4, 3, padding=1), (1, 4, 5, 5, 5)),
    (jconv.ConvTranspose1d(4, 6, 8, stride=4, padding=2), (2, 4, 9)),
]


def _forward(cfg, w, b, x):
    return jconv.apply(jconv.Params(w, b, cfg), x)


def _run(params, x):
    y, vjp = jax.vjp(lambda p, x: jconv.apply(p, x), params, x)
    return y, vjp(jnp.ones_like(y))


@pytest.mark.parametrize(
    "cfg, shape",
    [
        pytest.param(c, s, id=repr(c)[:40], marks=() if i in (0, 6) else pytest.mark.slow)
        for i, (c, s) in enumerate(CASES)
    ],
)
def test_every_tuned_choice_gives_xlas_numbers(monkeypatch, cfg, shape):
    x = jax.random.normal(jax.random.key(1), shape)
    params = jconv.init(jax.random.key(0), cfg)
    want = _run(dataclasses.replace(params, cfg=dataclasses.replace(cfg, algorithm="xla")), x)
    names = tune.candidates(cfg)
    assert "xla" in names and len(names) >= 2, names
    for winner in names:
        monkeypatch.setattr(tune, "_memory", {})
        monkeypatch.setattr(tune, "measure", _rigged(winner))
        with jconv.autotune(cache=False):
            got = _run(params, x)
        assert tune.report()[-1]["algorithm"] == winner
        scale = float(jnp.abs(want[0]).max())
        chex.assert_trees_all_close(
            jax.tree.leaves(got), jax.tree.leaves(want), rtol=2e-4, atol=2e-4 * scale
        )


def test_the_choice_reaches_code_traced_under_jit(monkeypatch):
    cfg = jconv.Conv2d(4, 4, 9, padding=4, groups=4)
    params, x = jconv.init(jax.random.key(0), cfg), jnp.ones((1, 4, 12, 12))
    loss = jax.jit(jax.grad(lambda p, x: jnp.sum(jconv.apply(p, x) ** 2)))
    untuned = loss.lower(params, x).as_text()
    monkeypatch.setattr(tune, "measure", _rigged("xla"))
    with jconv.autotune(cache=False):
        tuned_xla = jax.jit(jax.grad(lambda p, x: jnp.sum(jconv.apply(p, x) ** 2)))
        text = tuned_xla.lower(params, x).as_text()
    assert "fft" in untuned and "fft" not in text  # the planner's fft, replaced by xla
    assert tune.report()[-1]["algorithm"] == "xla"


def test_off_by_default_and_outside_the_block():
    assert not tune.settings().enabled
    with jconv.autotune(mode="forward", cache=False):
        assert tune.settings() == tune.Settings(True, "forward", False, 2.0, 5)
    assert not tune.settings().enabled
    cfg = jconv.Conv2d(2, 2, 3)
    jconv.apply(jconv.init(jax.random.key(0), cfg), jnp.ones((1, 2, 5, 5)))
    assert tune.report() == []


def test_real_timing_reports_every_candidate_and_its_memory():
    cfg = jconv.Conv2d(8, 8, 3, padding=1, groups=8)
    params, x = jconv.init(jax.random.key(0), cfg), jnp.ones((2, 8, 10, 10))
    with jconv.autotune(repeat=2, cache=False):
        jconv.apply(params, x)
        jconv.apply(params, x)  # the second call finds the choice in memory
    (entry,) = tune.report()
    assert set(entry["results"]) | set(entry["same_as_xla"]) == set(tune.candidates(cfg))
    assert all(r["ms"] > 0 and r["temp_bytes"] >= 0 for r in entry["results"].values())
    assert all(0 <= r["wins"] <= 1 for r in entry["results"].values())
    assert entry["algorithm"] in entry["results"] and entry["seconds"] > 0


def test_the_training_program_takes_a_random_cotangent():
    """A constant cotangent let XLA simplify some lowerings' backward away (a 1x1
    conv's ``"shift"`` timed 34x faster than it runs), so it is an argument."""
    cfg = jconv.Conv2d(4, 6, 3, stride=2)
    fn, args = tune._program(cfg, (2, 4, 9, 9), jnp.float32, jnp.float32, "train", _forward)
    gy = args[-1]
    assert gy.shape == (2, 6, 4, 4) and float(jnp.std(gy)) > 0.5
    y, grads = fn(*args)  # the output too: it is live in a training step
    assert y.shape == gy.shape
    assert [g.shape for g in grads] == [(6, 4, 3, 3), (6,), (2, 4, 9, 9)]


def test_a_lowering_that_compiles_to_xlas_program_is_not_timed():
    """``"tapgrad"``'s forward is XLA's: in inference tuning it is xla, untimed."""
    cfg = jconv.Conv2d(4, 4, 3, stride=2, padding=1)
    params, x = jconv.init(jax.random.key(0), cfg), jnp.ones((2, 4, 9, 9))
    with jconv.autotune(mode="forward", repeat=2, cache=False):
        jconv.apply(params, x)
    (entry,) = tune.report()
    assert "tapgrad" in entry["same_as_xla"] and "tapgrad" not in entry["results"]
    assert "xla" in entry["results"] and entry["algorithm"] != "tapgrad"
    assert "s2d" in entry["results"]  # a program of its own (space-to-depth): timed


def test_the_memory_cap_keeps_a_hungry_lowering_out(monkeypatch):
    def measure(cfgs, *args):
        return (
            {
                n: {
                    "ms": 1.0 if n == "shift" else 10.0,
                    "temp_bytes": (100 if n == "shift" else 1) << 20,
                    "wins": 1.0 if n == "shift" else 0.0,
                }
                for n in cfgs
            },
            {},
            [],
        )

    monkeypatch.setattr(tune, "measure", measure)
    cfg = jconv.Conv2d(8, 8, 3, padding=1, groups=8)
    with jconv.autotune(cache=False, memory_cap=2):
        jconv.apply(jconv.init(jax.random.key(0), cfg), jnp.ones((1, 8, 6, 6)))
    assert tune.report()[-1]["algorithm"] != "shift"


@pytest.mark.parametrize(
    "text, why",
    [
        ("{not json", "Expecting"),
        (json.dumps({"format": "something else", "entries": {}}), "not a jconv autotune cache"),
        (json.dumps({"format": tune.FORMAT, "version": 0, "entries": {}}), "version 0"),
        (json.dumps({"format": tune.FORMAT, "version": tune.VERSION, "entries": []}), "malformed"),
    ],
)
def test_a_broken_cache_file_is_ignored_with_a_warning(monkeypatch, tmp_path, text, why):
    path = tmp_path / "autotune.json"
    path.write_text(text)
    monkeypatch.setattr(tune, "measure", _rigged("xla"))
    cfg = jconv.Conv2d(2, 2, 3)
    with pytest.warns(UserWarning, match=why), jconv.autotune():
        y = jconv.apply(jconv.init(jax.random.key(0), cfg), jnp.ones((1, 2, 5, 5)))
    assert y.shape == (1, 2, 3, 3)
    data = json.loads(path.read_text())  # rewritten whole, with the new entry
    assert data["format"] == tune.FORMAT and len(data["entries"]) == 1


def test_bad_settings_name_the_parameter():
    with pytest.raises(ValueError, match="mode=.*'fast'"):
        jconv.set_autotune(True, mode="fast")
    with pytest.raises(ValueError, match="memory_cap=0.5"):
        with jconv.autotune(memory_cap=0.5):
            pass
    with pytest.raises(ValueError, match="repeat=0"):
        jconv.set_autotune(True, repeat=0)


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, jconv
    from jconv.lowering import tune
    seed = int(sys.argv[1])
    cfg = jconv.Conv2d(4 + seed, 4, 3, padding=1)
    params = jconv.init(jax.random.key(0), cfg)
    x = jnp.ones((1, 4 + seed, 8, 8))
    jax.jit(jax.grad(lambda p: jnp.sum(jconv.apply(p, x))))(params)
    print(json.dumps([e["algorithm"] for e in tune.report()]))
    """
)


def _processes(cache, seeds):
    env = dict(os.environ, JCONV_AUTOTUNE="1", JCONV_TUNE_CACHE=str(cache))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(s)], stdout=subprocess.PIPE, text=True, env=env
        )
        for s in seeds
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


@pytest.mark.slow
def test_a_second_process_reuses_the_cache_and_times_nothing(tmp_path):
    cache = tmp_path / "shared.json"
    (first,) = _processes(cache, [0])
    assert len(first) == 1  # tuned once (the environment variable switched it on)
    (second,) = _processes(cache, [0])
    assert second == []  # found in the file: nothing timed
    assert len(json.loads(cache.read_text())["entries"]) == 1


@pytest.mark.slow
def test_processes_writing_the_cache_at_once_keep_it_whole(tmp_path):
    cache = tmp_path / "shared.json"
    reports = _processes(cache, [0, 1, 2, 3])
    assert all(len(r) == 1 for r in reports)
    data = json.loads(cache.read_text())
    assert len(data["entries"]) == 4  # every writer's entry, none lost
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

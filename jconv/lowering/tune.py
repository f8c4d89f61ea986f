"""Opt-in autotuning: time the lowerings that fit a call once, keep the fastest.

Like ``torch.backends.cudnn.benchmark``: off by default, because the first call
of each new (config, input shape, dtype, device kind, jax and jaxlib version)
then compiles and times every candidate lowering. Switch it on with

* ``jconv.set_autotune(True)`` (global), or ``with jconv.autotune():`` (a block);
* the environment variable ``JCONV_AUTOTUNE=1`` (``=forward`` for inference).

What it does, per new key:

* candidates: ``"xla"`` always, and every other lowering that fits the config
  and is plausible for it (``shift`` only with few terms per output, ``fft``
  only for depthwise kernels of 9 taps or more, ...; see :func:`candidates`);
* each is compiled and timed on random inputs of the call's shape and dtype,
  forward+backward (input, weight and bias gradients) by default, or forward
  only with ``mode="forward"``: all compiled first, then timed in interleaved
  rounds in shuffled order after a warm-up, medians;
* among those whose compiled temporary memory is at most ``memory_cap`` times
  xla's, the fastest wins; ``xla`` unless another is faster by more than 3% (medians)
  and faster than xla's sample in at least 80% of the rounds: identical programs
  timed 0.79–1.26x of each other on the grid, so a median alone picked noise.

Timing runs in a worker thread, outside the caller's trace, so the first call may
come under ``jit``, ``grad`` or ``vmap``; the choice is then baked into that
trace. Choices are kept in memory and in a JSON file (``$JCONV_TUNE_CACHE``, or
``jconv/autotune.json`` under ``$XDG_CACHE_HOME`` or ``~/.cache``; ``cache=False``
keeps them in memory only). A file that is corrupt, of another format or of
another version is ignored with a warning; writers take a lock and replace the
file atomically, so processes can share it. Inputs split across devices keep
the planner's placement rules and are never tuned: timing one device's block
would not say what the partitioned program costs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from jconv.algorithms import ALGORITHMS, fits

FORMAT, VERSION = "jconv-autotune", 1
MODES = ("train", "forward")
MARGIN = 0.97  # another lowering must beat xla by 3% to be chosen: timing noise
WINS = 0.8  # ... and be faster than xla in this share of the interleaved rounds
log = logging.getLogger("jconv.autotune")


class Settings(NamedTuple):
    enabled: bool = False
    mode: str = "train"
    cache: str | os.PathLike | bool | None = None  # None: the default file; False: memory only
    memory_cap: float = 2.0
    repeat: int = 5


def _from_env() -> Settings:
    value = os.environ.get("JCONV_AUTOTUNE", "").strip().lower()
    if value in ("", "0", "false", "off", "no"):
        return Settings()
    return Settings(enabled=True, mode="forward" if value in ("forward", "inference") else "train")


_settings = _from_env()
_local = threading.local()  # a ``with autotune()`` block's settings, per thread
_memory: dict[str, dict] = {}  # key -> entry, this process
_report: list[dict] = []  # what this process tuned, with the cost
_lock = threading.Lock()


def _checked(enabled, mode: str, cache, memory_cap: float, repeat: int) -> Settings:
    """Settings from the arguments of :func:`set_autotune` / :func:`autotune`, checked."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got mode={mode!r}")
    if not (isinstance(memory_cap, (int, float)) and memory_cap >= 1):
        raise ValueError(f"memory_cap must be a number >= 1, got memory_cap={memory_cap!r}")
    if not (isinstance(repeat, int) and repeat >= 1):
        raise ValueError(f"repeat must be a positive int, got repeat={repeat!r}")
    return Settings(bool(enabled), mode, cache, float(memory_cap), repeat)


def set_autotune(
    enabled: bool = True,
    *,
    mode: str = "train",
    cache: str | os.PathLike | bool | None = None,
    memory_cap: float = 2.0,
    repeat: int = 5,
) -> None:
    """Switches autotuning on or off for the whole process (see the module doc)."""
    global _settings
    _settings = _checked(enabled, mode, cache, memory_cap, repeat)


@contextlib.contextmanager
def autotune(
    enabled: bool = True,
    *,
    mode: str = "train",
    cache: str | os.PathLike | bool | None = None,
    memory_cap: float = 2.0,
    repeat: int = 5,
):
    """``with jconv.autotune():`` tunes the calls traced inside the block."""
    new = _checked(enabled, mode, cache, memory_cap, repeat)
    before = getattr(_local, "settings", None)
    _local.settings = new
    try:
        yield
    finally:
        _local.settings = before


def settings() -> Settings:
    """The settings in force in this thread."""
    return getattr(_local, "settings", None) or _settings


def report() -> list[dict]:
    """What this process tuned: key, candidates' times and memory, choice, seconds spent."""
    return list(_report)


def cache_path(s: Settings | None = None) -> Path | None:
    s = s or settings()
    if s.cache is False:
        return None
    if s.cache not in (None, True):
        return Path(s.cache)
    if os.environ.get("JCONV_TUNE_CACHE"):
        return Path(os.environ["JCONV_TUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jconv" / "autotune.json"


# ------------------------------------------------------------------ candidates


def candidates(cfg: Any) -> list[str]:
    """``"xla"`` and the other lowerings that fit ``cfg`` and could plausibly win."""
    taps = math.prod(cfg.kernel_size)
    per_group = cfg.in_channels // cfg.groups
    depthwise = cfg.groups > 1 and per_group == 1
    strided = any(s > 1 for s in cfg.stride)
    plausible = {
        "xla": True,
        "subpixel": strided,
        "shift": per_group * taps <= 256,
        "tapgrad": cfg.groups == 1 and taps <= 49,
        "matmul": taps == 1,
        "fft": depthwise and taps >= 9,
        "shift_fft": depthwise and taps >= 9,
        "pergroup": cfg.groups > 1 and not depthwise,
        "s2d": strided and cfg.groups == 1,
        "fold": cfg.ndim == 3,
        "widened": cfg.groups == 1 and jax.default_backend() == "cpu",
    }
    return [
        name
        for name in ALGORITHMS[1:]
        if plausible.get(name, False) and fits(name, cfg.transposed, cfg.kernel_size)
    ]


# ------------------------------------------------------------------ keys and the file


def key(cfg: Any, x_shape, x_dtype, w_dtype, mode: str) -> str:
    device = jax.devices()[0]
    auto = dataclasses.replace(cfg, algorithm="auto")
    return json.dumps(
        [
            repr(auto),
            list(x_shape),
            str(jnp.dtype(x_dtype)),
            str(jnp.dtype(w_dtype)),
            mode,
            device.platform,
            getattr(device, "device_kind", ""),
            jax.__version__,
            jaxlib.__version__,
        ]
    )


def _read(path: Path) -> dict[str, dict]:
    """The entries of the cache file; {} with a warning when it is unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        warnings.warn(f"jconv autotune cache {path} unreadable ({err}); ignoring it", stacklevel=3)
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a jconv autotune cache")
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, this jconv writes {VERSION}")
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(
            isinstance(v, dict) and v.get("algorithm") in ALGORITHMS for v in entries.values()
        ):
            raise ValueError("malformed entries")
    except (ValueError, KeyError, TypeError) as err:
        warnings.warn(f"jconv autotune cache {path} ignored: {err}", stacklevel=3)
        return {}
    return entries


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``path``.lock between processes (where fcntl exists)."""
    try:
        import fcntl
    except ImportError:  # no advisory locks: the atomic replace still keeps the file whole
        yield
        return
    with open(str(path) + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(path: Path, key_: str, entry: dict) -> None:
    """Adds one entry: under the lock, read, merge and replace the file atomically."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a broken file was already reported
                entries = _read(path)
            entries[key_] = entry
            text = json.dumps({"format": FORMAT, "version": VERSION, "entries": entries})
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError as err:
        warnings.warn(f"jconv autotune cache {path} not written ({err})", stacklevel=3)


# ------------------------------------------------------------------ timing


def _program(cfg: Any, x_shape, x_dtype, w_dtype, mode: str, forward):
    """The jitted program that a call runs (``forward(cfg, w, b, x)``), and random
    arguments for it.

    The training program returns the output and the gradients (the output is live
    until the next layer reads it, and with it a 4x4 stride-2 ``"subpixel"`` layer
    at batch 1 needs 1.5x xla's temporaries, 2.03x without). Its output cotangent
    is a random argument too: with a constant one (``ones_like``) XLA simplified
    the backward of some lowerings and not others (a 1x1 conv's ``"shift"`` timed
    0.42 ms in tuning, 13.9 ms with a real cotangent).
    """
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.standard_normal(x_shape), x_dtype)
    w = jnp.asarray(rs.standard_normal(cfg.weight_shape) * 0.1, w_dtype)
    b = jnp.asarray(rs.standard_normal(cfg.bias_shape), w_dtype) if cfg.bias else None

    def run(w, b, x):
        return forward(cfg, w, b, x)

    if mode == "forward":
        return jax.jit(run), (w, b, x)

    out = jax.eval_shape(run, w, b, x)
    gy = jnp.asarray(rs.standard_normal(out.shape), out.dtype)

    def train(w, b, x, gy):  # forward+backward, as the grid measures it
        y, vjp = jax.vjp(run, w, b, x)
        return y, vjp(gy)

    return jax.jit(train), (w, b, x, gy)


SAMPLE_S = 0.02  # one timed sample lasts about this long: single ms-scale calls are noisy


def sampler(call: Callable[[], object]) -> Callable[[], float]:
    """A timer of ``call()`` (which blocks until done): seconds per call.

    Each sample follows one untimed call (the first call after another layer's pays
    for its cache misses and page faults) and times enough back-to-back calls to
    last about ``SAMPLE_S``; the first sample sets that count. Identical programs
    timed one call per sample measured 0.67–1.24x of each other on the grid
    (``python -m jconv bench --grid``).
    """
    calls = 0

    def once() -> float:
        nonlocal calls
        call()
        t = time.perf_counter()
        for _ in range(calls or 1):
            call()
        seconds = (time.perf_counter() - t) / (calls or 1)
        calls = calls or max(1, min(100, round(SAMPLE_S / max(seconds, 1e-6))))
        return seconds

    return once


def rounds(timers: dict, repeat: int, budget_s: float | None = None) -> dict[Any, list[float]]:
    """Samples of each timer: one warm-up call each (which also sets how many calls a
    :func:`sampler` sample times), then ``repeat`` rounds, each in a new shuffled order,
    so that a slow spell of the machine falls on all of them alike. With ``budget_s``,
    rounds stop after at least 2 once that many seconds have passed."""
    for once in timers.values():
        once()
    names, times = list(timers), {name: [] for name in timers}
    order = np.random.default_rng(0)
    end = None if budget_s is None else time.perf_counter() + budget_s
    for round_ in range(repeat):
        if end is not None and round_ >= 2 and time.perf_counter() > end:
            break
        for i in order.permutation(len(names)):
            times[names[i]].append(timers[names[i]]())
    return times


def program_text(compiled) -> str:
    """A compiled program's HLO without its header, metadata or source locations:
    two lowerings with the same text run the very same program."""
    text = re.sub(r", metadata=\{[^}]*\}", "", compiled.as_text())
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"(%|ENTRY)", line)), 0)
    return "\n".join(lines[start:])


def temp_bytes(compiled) -> int:
    """A compiled program's temporary memory (0 where the backend does not say)."""
    analysis = compiled.memory_analysis()
    return int(getattr(analysis, "temp_size_in_bytes", 0) or 0) if analysis is not None else 0


def measure(
    cfgs: dict[str, Any], x_shape, x_dtype, w_dtype, mode: str, repeat: int, forward
) -> tuple[dict[str, dict], dict[str, str], list[str]]:
    """Each forced lowering's milliseconds (median) and compiled temporary bytes, the
    ones that failed to build (name: error) and those that compiled to ``"xla"``'s
    very program (not timed: e.g. ``"tapgrad"``'s forward is XLA's).

    All are compiled first, then timed in interleaved rounds (each round in a new
    order), so that a slow spell of the machine falls on all of them alike; at least
    2 rounds, up to ``repeat`` within about 2 seconds per candidate.
    """
    built, failed, texts = {}, {}, {}
    for name, cfg in cfgs.items():
        try:
            fn, args = _program(cfg, x_shape, x_dtype, w_dtype, mode, forward)
            compiled = fn.lower(*args).compile()
            texts[name] = program_text(compiled)
            built[name] = (compiled, args)
        except Exception as err:  # a candidate that fails to build is not chosen
            failed[name] = f"{type(err).__name__}: {err}"[:200]
    same = [n for n in built if n != "xla" and texts[n] == texts.get("xla")]
    timers = {
        name: sampler(lambda c=compiled, a=args: jax.block_until_ready(c(*a)))
        for name, (compiled, args) in built.items()
        if name not in same
    }
    times = rounds(timers, repeat, budget_s=2.0 * len(timers))
    base = times.get("xla")
    results = {
        name: {
            "ms": 1e3 * float(np.median(times[name])),
            "temp_bytes": temp_bytes(built[name][0]),
            # the share of rounds in which it beat xla's sample of the same round
            "wins": 1.0 if base is None else float(np.mean(np.less(times[name], base))),
        }
        for name in timers
    }
    return results, failed, same


def _tune(cfg: Any, x_shape, x_dtype, w_dtype, s: Settings, forward) -> dict:
    start = time.perf_counter()
    cfgs = {name: dataclasses.replace(cfg, algorithm=name) for name in candidates(cfg)}
    results, failed, same = measure(cfgs, x_shape, x_dtype, w_dtype, s.mode, s.repeat, forward)
    base = results["xla"]
    cap = s.memory_cap * max(base["temp_bytes"], 1 << 20)  # a floor for tiny programs
    fits_and_wins = [
        name
        for name, r in results.items()
        if r["temp_bytes"] <= cap and r["ms"] < MARGIN * base["ms"] and r["wins"] >= WINS
    ]
    best = min(fits_and_wins, key=lambda n: results[n]["ms"], default="xla")
    return {
        "algorithm": best,
        "results": results,
        "failed": failed,
        "same_as_xla": same,
        "seconds": round(time.perf_counter() - start, 3),
    }


def choose(cfg: Any, x_shape, x_dtype, w_dtype, forward) -> str | None:
    """The tuned lowering for this call, or None when tuning is off.

    ``forward(cfg, weight, bias, x)`` runs one call (:func:`jconv.core.forward`).
    """
    s = settings()
    if not s.enabled:
        return None
    key_ = key(cfg, x_shape, x_dtype, w_dtype, s.mode)
    with _lock:
        if key_ in _memory:
            return _memory[key_]["algorithm"]
        path = cache_path(s)
        if path is not None:
            _memory.update(_read(path))
            if key_ in _memory:
                return _memory[key_]["algorithm"]
        # outside the caller's trace: a thread has its own (empty) trace context
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            job = pool.submit(_tune, cfg, tuple(x_shape), x_dtype, w_dtype, s, forward)
            entry = job.result()
        _memory[key_] = entry
        _report.append({"key": key_, **entry})
        log.info(
            "tuned %s on %s: %s in %.1f s (%s)",
            repr(cfg),
            tuple(x_shape),
            entry["algorithm"],
            entry["seconds"],
            ", ".join(f"{n} {r['ms']:.2f} ms" for n, r in entry["results"].items()),
        )
        if path is not None:
            _write(path, key_, entry)
        return entry["algorithm"]

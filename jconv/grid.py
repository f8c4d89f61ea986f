"""``python -m jconv bench --grid``: the planner against plain ``"xla"`` on a wide grid.

Over a hundred layer shapes, far more than the planner's rules were fitted on:
1/2/3-d, transposed, dense, grouped, depthwise from 3x3 to 31x31, strided,
dilated, 1x1, stems, batch 1 and training batches, long 1-d sequences,
high-resolution narrow layers and low-resolution wide ones, in float32 and
bfloat16. Each is timed forward and forward+backward for jconv's planner
(``auto``), jconv forced to ``xla`` and torch (when installed), interleaved and
shuffled, medians; and the compiled temporary memory of both jconv programs
(``compiled.memory_analysis().temp_size_in_bytes``) is recorded. The report says
where ``auto`` is slower than 0.95x ``xla`` or needs more than 2x its memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jconv.bench import (
    Case,
    Progress,
    _timer,
    _torch_pair,
    compile_both,
    compile_forward,
    compile_pair,
    geomean,
    interleaved,
    write_report,
)
from jconv.lowering.tune import program_text, temp_bytes


def _family(prefix: str, specs) -> list[Case]:
    """Cases named ``prefix:i`` from (nd, batch, cin, cout, size, kernel[, options])."""
    return [
        Case(f"{prefix}:{i}", *s[:6], **(s[6] if len(s) > 6 else {})) for i, s in enumerate(specs)
    ]


GRID_F32 = (
    # dense 3x3, stride 1
    _family(
        "dense3x3",
        [
            (2, 1, 64, 64, 56, 3, dict(padding=1)),
            (2, 32, 64, 64, 56, 3, dict(padding=1)),
            (2, 8, 128, 128, 28, 3, dict(padding=1)),
            (2, 8, 256, 256, 14, 3, dict(padding=1)),
            (2, 4, 512, 512, 7, 3, dict(padding=1)),
            (2, 16, 32, 32, 112, 3, dict(padding=1)),
            (2, 1, 16, 16, 512, 3, dict(padding=1)),
            (2, 4, 8, 8, 256, 3, dict(padding=1)),
            (2, 8, 1024, 1024, 7, 3, dict(padding=1)),
            (2, 2, 64, 128, 64, 3, dict(padding=1)),
        ],
    )
    + _family(
        "dense3x3s2",
        [
            (2, 8, 64, 128, 56, 3, dict(stride=2, padding=1)),
            (2, 32, 128, 256, 28, 3, dict(stride=2, padding=1)),
            (2, 1, 64, 64, 112, 3, dict(stride=2, padding=1)),
            (2, 8, 256, 512, 14, 3, dict(stride=2, padding=1)),
            (2, 16, 32, 64, 64, 3, dict(stride=2, padding=1)),
        ],
    )
    + _family(
        "lowres",  # low resolution, wide channels, small batch: "unfold" and its edges
        [
            (2, 1, 512, 512, 7, 3, dict(padding=1)),
            (2, 1, 256, 512, 14, 3, dict(stride=2, padding=1)),
            (2, 8, 1024, 1024, 4, 3, dict(padding=1)),
            (2, 8, 256, 256, 2, 3, dict(padding=1)),
            (2, 2, 2048, 512, 7, 3, dict(padding=1)),
            (2, 16, 256, 256, 4, 3, dict(padding=1)),
            (2, 64, 128, 128, 4, 3, dict(padding=1)),
            (2, 2, 64, 128, 16, 3, dict(stride=2, padding=1)),
            (1, 1, 512, 512, 256, 3, dict(padding=1)),
            (1, 4, 256, 256, 64, 7, dict(padding=3)),
            (3, 2, 256, 256, 4, 3, dict(padding=1)),
            (3, 2, 128, 256, 8, 3, dict(stride=2, padding=1)),
            (3, 16, 384, 384, 4, 3, dict(padding=1)),
            (3, 8, 128, 256, 8, 3, dict(stride=2, padding=1)),
        ],
    )
    + _family(
        "pointwise",
        [
            (2, 1, 256, 256, 14, 1),
            (2, 32, 64, 256, 56, 1),
            (2, 8, 512, 128, 28, 1),
            (2, 2, 1024, 256, 14, 1),
            (2, 32, 256, 64, 56, 1),
            (2, 8, 256, 512, 28, 1, dict(stride=2)),
            (2, 1, 96, 384, 56, 1),
            (2, 16, 384, 96, 28, 1),
            (2, 64, 2048, 512, 7, 1),
            (1, 8, 512, 512, 1024, 1),
        ],
    )
    + _family(
        "depthwise",
        [
            (2, 8, 96, 96, 56, 3, dict(padding=1, groups=96)),
            (2, 32, 144, 144, 28, 3, dict(padding=1, groups=144)),
            (2, 1, 32, 32, 112, 3, dict(padding=1, groups=32)),
            (2, 8, 384, 384, 14, 3, dict(padding=1, groups=384)),
            (2, 8, 96, 96, 56, 3, dict(stride=2, padding=1, groups=96)),
            (2, 32, 144, 144, 56, 3, dict(stride=2, padding=1, groups=144)),
            (2, 8, 96, 96, 56, 5, dict(padding=2, groups=96)),
            (2, 8, 240, 240, 28, 5, dict(padding=2, groups=240)),
            (2, 8, 96, 96, 32, 7, dict(padding=3, groups=96)),
            (2, 32, 96, 96, 56, 7, dict(padding=3, groups=96)),
            (2, 8, 384, 384, 14, 7, dict(padding=3, groups=384)),
            (2, 1, 192, 192, 28, 7, dict(padding=3, groups=192)),
            (2, 8, 64, 64, 32, 9, dict(padding=4, groups=64)),
            (2, 8, 64, 64, 32, 13, dict(padding=6, groups=64)),
            (2, 8, 64, 64, 32, 31, dict(padding=15, groups=64)),
            (2, 2, 128, 128, 16, 31, dict(padding=15, groups=128)),
            (2, 8, 96, 192, 28, 3, dict(padding=1, groups=96)),
            (1, 8, 256, 256, 2048, 7, dict(padding=3, groups=256)),
            (3, 2, 64, 64, 16, 3, dict(padding=1, groups=64)),
        ],
    )
    + _family(
        "grouped",
        [
            (2, 32, 128, 128, 28, 3, dict(padding=1, groups=32)),
            (2, 8, 64, 64, 56, 3, dict(padding=1, groups=4)),
            (2, 8, 256, 256, 14, 3, dict(padding=1, groups=8)),
            (2, 8, 64, 64, 28, 3, dict(padding=1, groups=2)),
            (2, 8, 128, 128, 28, 3, dict(stride=2, padding=1, groups=32)),
            (1, 8, 256, 256, 1024, 3, dict(padding=1, groups=16)),
        ],
    )
    + _family(
        "stem",
        [
            (2, 16, 3, 64, 224, 7, dict(stride=2, padding=3)),
            (2, 16, 3, 96, 224, 4, dict(stride=4)),
            (2, 16, 3, 32, 224, 3, dict(stride=2, padding=1)),
            (2, 1, 3, 64, 224, 7, dict(stride=2, padding=3)),
            (2, 8, 1, 32, 128, 3, dict(padding=1)),
        ],
    )
    + _family(
        "dilated",
        [
            (2, 16, 64, 64, 32, 3, dict(padding=2, dilation=2)),
            (2, 8, 128, 128, 28, 3, dict(padding=4, dilation=4)),
            (1, 8, 64, 64, 4096, 3, dict(padding=9, dilation=9)),
            (1, 4, 32, 32, 8192, 7, dict(padding=9, dilation=3)),
        ],
    )
    + _family(
        "conv1d",
        [
            (1, 8, 64, 64, 4096, 7, dict(padding=3)),
            (1, 32, 128, 128, 1024, 3, dict(padding=1)),
            (1, 8, 32, 32, 4096, 31, dict(padding=15)),
            (1, 8, 64, 128, 8192, 4, dict(stride=2, padding=1)),
            (1, 1, 256, 256, 8000, 7, dict(padding=3)),
            (1, 16, 80, 256, 400, 3, dict(padding=1)),
            (1, 4, 1, 32, 16000, 7, dict(padding=3)),
            (1, 8, 256, 512, 2000, 8, dict(stride=4, padding=2)),
        ],
    )
    + _family(
        "transposed1d",
        [
            (1, 8, 256, 128, 2000, 8, dict(stride=4, padding=2, transposed=True)),
            (1, 8, 128, 128, 8000, 4, dict(stride=2, padding=1, transposed=True)),
            (1, 4, 512, 256, 500, 16, dict(stride=8, padding=4, transposed=True)),
            (1, 8, 64, 64, 4096, 2, dict(stride=2, transposed=True)),
            (1, 2, 32, 16, 16000, 7, dict(padding=3, transposed=True)),
        ],
    )
    + _family(
        "transposed2d",
        [
            (2, 16, 128, 64, 16, 4, dict(stride=2, padding=1, transposed=True)),
            (2, 8, 256, 128, 28, 2, dict(stride=2, transposed=True)),
            (2, 8, 64, 32, 56, 3, dict(stride=2, padding=1, transposed=True)),
            (2, 1, 512, 256, 8, 4, dict(stride=2, padding=1, transposed=True)),
            (2, 8, 64, 64, 32, 3, dict(padding=1, transposed=True)),
            (2, 8, 64, 64, 32, 4, dict(stride=2, padding=1, groups=4, transposed=True)),
        ],
    )
    + _family(
        "conv3d",
        [
            (3, 4, 32, 32, 16, 3, dict(padding=1)),
            (3, 2, 64, 64, 16, 3, dict(padding=1)),
            (3, 1, 16, 16, 32, 3, dict(padding=1)),
            (3, 2, 32, 64, 32, 3, dict(stride=2, padding=1)),
            (3, 2, 64, 64, 16, 1),
            (3, 2, 1, 16, 32, 3, dict(padding=1)),
            (3, 2, 64, 64, 8, 3, dict(padding=1, groups=4)),
        ],
    )
    + _family(
        "transposed3d",
        [
            (3, 2, 64, 32, 16, 3, dict(stride=2, padding=1, transposed=True)),
            (3, 2, 128, 64, 8, 2, dict(stride=2, transposed=True)),
            (3, 1, 64, 1, 32, 3, dict(stride=2, padding=1, transposed=True)),
            (3, 1, 32, 32, 16, 3, dict(padding=1, transposed=True)),
        ],
    )
    + _family(
        "heads",  # few outputs from many inputs: segmentation and waveform heads
        [
            (2, 4, 64, 3, 96, 3, dict(padding=1)),
            (2, 1, 128, 8, 96, 3, dict(padding=1)),
            (2, 16, 256, 16, 28, 3, dict(padding=1)),
            (2, 8, 32, 4, 56, 3, dict(padding=1)),
            (2, 4, 64, 3, 64, 7, dict(padding=3)),
            (1, 4, 32, 1, 4096, 7, dict(padding=3)),
            (3, 2, 64, 3, 32, 3, dict(padding=1)),
            (2, 2, 256, 32, 28, 3, dict(padding=1)),
        ],
    )
)

# bfloat16 twins of the layer families users train in bfloat16
GRID_BF16 = tuple(
    dataclasses.replace(c, name=c.name + ":bf16")
    for c in GRID_F32
    if c.name
    in {
        "dense3x3:1",
        "dense3x3:3",
        "dense3x3s2:0",
        "pointwise:1",
        "pointwise:4",
        "depthwise:0",
        "depthwise:9",
        "grouped:0",
        "stem:0",
        "conv1d:0",
        "transposed1d:0",
        "transposed2d:0",
        "conv3d:0",
        "transposed3d:0",
        "transposed3d:2",
        "dilated:0",
        "heads:0",
    }
)
GRID = tuple((c, "float32") for c in GRID_F32) + tuple((c, "bfloat16") for c in GRID_BF16)


# ---------------------------------------------------------------------------
# random layers: shapes nobody fitted a rule to (``--grid --sweep COUNT --seed S``)

_WIDTHS = (1, 3, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_SIZES = {
    1: (64, 256, 1000, 2000, 4096, 16000),
    2: (4, 7, 14, 28, 37, 56, 64, 112),
    3: (4, 6, 8, 12, 16, 24, 32),
}
_FLOPS = (1e7, 5e8)  # forward flops of a drawn layer: enough to time, small enough to run


def sweep(count: int, seed: int = 0) -> tuple[tuple[Case, str], ...]:
    """``count`` random valid layers (and dtypes), the same for the same ``seed``.

    Drawn: 1-d to 3-d; a third transposed; dense, grouped and depthwise; kernels of 1
    to 7 taps (depthwise up to 13); strides 1 to 4; dilation 1 to 3; batch 1 to 32;
    a fifth in bfloat16. A draw is kept when torch would accept the layer and its
    forward costs 1e7 to 5e8 flops (some XLA gradients run at 0.1 GFLOP/s, and each is
    timed); names are ``sweep:SEED:i``.
    """
    rng = np.random.default_rng(seed)
    cases: list[tuple[Case, str]] = []
    while len(cases) < count:
        case = _draw(rng, f"sweep:{seed}:{len(cases)}")
        if case is not None:
            cases.append((case, "bfloat16" if rng.random() < 0.2 else "float32"))
    return tuple(cases)


def _draw(rng, name: str) -> Case | None:
    """One random layer, or None when the draw is invalid or outside ``_FLOPS``."""
    import jconv

    nd = int(rng.choice((1, 2, 2, 2, 3)))
    transposed = bool(rng.random() < 1 / 3)
    cin, cout = (int(rng.choice(_WIDTHS)) for _ in range(2))
    kind = rng.choice(("dense", "dense", "dense", "grouped", "depthwise"))
    groups = 1
    if kind == "depthwise":
        cout = cin * int(rng.choice((1, 1, 1, 2)))
        groups = cin
    elif kind == "grouped":
        groups = int(rng.choice((2, 4, 8, 16, 32)))
        cin, cout = (int(c * groups // np.gcd(c, groups)) for c in (cin, cout))
    kernel = int(rng.choice((1, 2, 3, 3, 3, 4, 5, 7) + ((9, 13) if kind == "depthwise" else ())))
    stride = int(rng.choice((1, 1, 1, 2, 2, 3, 4)))
    dilation = int(rng.choice((1, 1, 1, 1, 2, 3))) if kernel > 1 and stride == 1 else 1
    padding = int(rng.integers(0, dilation * (kernel - 1) // 2 + 1))
    case = Case(
        name, nd, int(rng.choice((1, 2, 4, 8, 16, 32))), cin, cout,
        int(rng.choice(_SIZES[nd])), kernel, stride, padding, dilation, groups, transposed,
    )  # fmt: skip
    try:
        cfg = case.config()
        flops = jconv.flops(cfg, case.input_shape)
    except (ValueError, TypeError):
        return None
    return case if _FLOPS[0] <= flops <= _FLOPS[1] else None


def _facts(fwd, fb, x, w, b, gy):
    """Timers of a compiled forward and forward+backward, their temp bytes, and a
    digest of each compiled program (equal digests: the very same program)."""
    timers = (_timer(fwd, x, w, b), _timer(fb, x, w, b, gy))
    memory = {"forward": temp_bytes(fwd), "forward_backward": temp_bytes(fb)}
    digest = {
        m: hashlib.sha256(program_text(c).encode()).hexdigest()[:16]
        for m, c in (("forward", fwd), ("forward_backward", fb))
    }
    return timers, memory, digest


def _compiled(f, x, w, b, gy):
    """:func:`_facts` of ``f(x, w, b)``'s forward and forward+backward, compile seconds."""
    fwd, fb, seconds = compile_pair(f, x, w, b, gy)
    return *_facts(fwd, fb, x, w, b, gy), seconds


def _tuned(f, x, w, b, gy):
    """:func:`_facts` of ``f``'s forward tuned for inference and forward+backward tuned
    for training (``jconv.autotune``, choices kept in memory only), compile seconds,
    and what the tuner chose and spent."""
    import jconv
    from jconv.lowering import tune

    done = len(tune.report())
    begin = time.perf_counter()
    with jconv.autotune(mode="forward", cache=False):
        fwd = compile_forward(f, x, w, b)
    with jconv.autotune(mode="train", cache=False):
        fb = compile_both(f, x, w, b, gy)
    seconds = time.perf_counter() - begin
    tuned = {
        json.loads(entry["key"])[4]: {  # the key's mode: "forward" or "train"
            "algorithm": entry["algorithm"],
            "seconds": entry["seconds"],
            "ms": {n: r["ms"] for n, r in entry["results"].items()},
        }
        for entry in tune.report()[done:]
    }
    return *_facts(fwd, fb, x, w, b, gy), seconds, tuned


def run_grid_case(case: Case, dtype: str, repeat: int, tuned: bool = False) -> dict:
    import jconv

    jdtype = jnp.dtype(dtype)
    cfg = case.config("auto", dtype=jdtype)
    params = jconv.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), case.input_shape, jdtype)
    gy = jax.random.normal(jax.random.key(2), jconv.output_shape(cfg, x.shape), jdtype)
    w, b = params.weight, params.bias
    timers, memory, digest, compile_s = {}, {}, {}, {}
    for name in ("auto", "xla"):
        forced = dataclasses.replace(cfg, algorithm=name)

        def f(x, w, b, forced=forced):
            return jconv.apply(jconv.Params(w, b, forced), x)

        timers[name], memory[name], digest[name], compile_s[name] = _compiled(f, x, w, b, gy)
    choices = {}
    if tuned:
        timers["tuned"], memory["tuned"], digest["tuned"], compile_s["tuned"], choices = _tuned(
            lambda x, w, b: jconv.apply(jconv.Params(w, b, cfg), x), x, w, b, gy
        )
    torch_pair = _torch_pair(case, x, w, b, gy, dtype)
    if torch_pair is not None:
        timers["torch"] = torch_pair
    ms = interleaved(timers, repeat)
    modes = ("forward", "forward_backward")
    row = {
        "case": dataclasses.asdict(case),
        "dtype": dtype,
        "lowering": _planned(case, dtype),
        "gflop": jconv.flops(cfg, x.shape) / 1e9,
        "ms": ms,
        "temp_bytes": memory,
        "compile_s": compile_s,
        "auto_vs_xla": {m: ms["xla"][m] / ms["auto"][m] for m in modes},
        "auto_vs_torch": {m: ms["torch"][m] / ms["auto"][m] for m in modes}
        if "torch" in ms
        else {},
        "memory_vs_xla": {m: memory["auto"][m] / max(memory["xla"][m], 1) for m in modes},
        # the same compiled program as xla's: its ratio to xla's only measures noise
        "same_program_as_xla": {
            name: {m: digest[name][m] == digest["xla"][m] for m in modes}
            for name in digest
            if name != "xla"
        },
    }
    if tuned:
        row["tuned"] = choices
        row["tuned_vs_xla"] = {m: ms["xla"][m] / ms["tuned"][m] for m in modes}
        row["tuned_memory_vs_xla"] = {
            m: memory["tuned"][m] / max(memory["xla"][m], 1) for m in modes
        }
    return row


def summarize(rows: list[dict]) -> dict:
    modes = ("forward", "forward_backward")
    out = {}
    for m in modes:
        out[f"auto_vs_xla_{m}_geomean"] = geomean([r["auto_vs_xla"][m] for r in rows])
        out[f"auto_vs_xla_{m}_min"] = min(r["auto_vs_xla"][m] for r in rows)
        torch_rows = [r["auto_vs_torch"][m] for r in rows if r["auto_vs_torch"]]
        if torch_rows:
            out[f"auto_vs_torch_{m}_geomean"] = geomean(torch_rows)
        out[f"memory_vs_xla_{m}_max"] = max(r["memory_vs_xla"][m] for r in rows)
    # Where a program is xla's own, its measured ratio is noise: those give the
    # noise's range and are left out of the lists of losses.
    same = [
        (r, name, m)
        for r in rows
        for name, by_mode in r.get("same_program_as_xla", {}).items()
        for m in modes
        if by_mode[m]
    ]
    ratios = [r[f"{name}_vs_xla"][m] for r, name, m in same]
    out["same_program_as_xla"] = len(same)
    out["same_program_ratio_range"] = [min(ratios), max(ratios)] if ratios else []

    def differs(r, name, m):
        return not r.get("same_program_as_xla", {}).get(name, {}).get(m, False)

    out["slower_than_0.95_xla"] = [
        f"{r['case']['name']} ({r['lowering']}, {m}: {r['auto_vs_xla'][m]:.2f}x)"
        for r in rows
        for m in modes
        if r["auto_vs_xla"][m] < 0.95 and differs(r, "auto", m)
    ]
    out["over_2x_xla_memory"] = [
        f"{r['case']['name']} ({r['lowering']}, {m}: {r['memory_vs_xla'][m]:.1f}x)"
        for r in rows
        for m in modes
        if r["memory_vs_xla"][m] > 2 and r["temp_bytes"]["auto"][m] > (1 << 20)
    ]
    tuned = [r for r in rows if "tuned" in r]
    if tuned:
        for m in modes:
            out[f"tuned_vs_xla_{m}_geomean"] = geomean([r["tuned_vs_xla"][m] for r in tuned])
            out[f"tuned_vs_xla_{m}_min"] = min(r["tuned_vs_xla"][m] for r in tuned)
        mode_of = {"forward": "forward", "forward_backward": "train"}
        out["tuned_slower_than_xla"] = [
            f"{r['case']['name']} ({r['tuned'][mode_of[m]]['algorithm']}, {m}: "
            f"{r['tuned_vs_xla'][m]:.2f}x)"
            for r in tuned
            for m in modes
            if r["tuned_vs_xla"][m] < 1.0 and differs(r, "tuned", m)
        ]
        out["tuning_seconds"] = sum(t["seconds"] for r in tuned for t in r["tuned"].values())
    return out


def chart(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(14, 7), sharex=True)
    xs = np.arange(len(rows))
    for ax, key, label in (
        (axes[0], "auto_vs_xla", "auto speedup over xla"),
        (axes[1], "memory_vs_xla", "auto temp memory / xla's"),
    ):
        for m, marker in (("forward", "o"), ("forward_backward", "x")):
            ax.scatter(xs, [r[key][m] for r in rows], marker=marker, s=14, label=m)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[1].set_xticks(xs, [r["case"]["name"] for r in rows], rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _line(r: dict) -> str:
    a, m = r["auto_vs_xla"], r["memory_vs_xla"]
    line = (
        f"{r['case']['name']:22s} {r['dtype']:8s} {r['lowering']:9s} "
        f"fwd {a['forward']:5.2f}x f+b {a['forward_backward']:5.2f}x vs xla, "
        f"memory {m['forward']:5.1f}x/{m['forward_backward']:5.1f}x"
    )
    if "tuned" in r:
        t, c = r["tuned_vs_xla"], r["tuned"]
        line += (
            f"; tuned {c['forward']['algorithm']}/{c['train']['algorithm']} "
            f"fwd {t['forward']:5.2f}x f+b {t['forward_backward']:5.2f}x"
        )
    return line


def _planned(case: Case, dtype: str) -> str:
    from jconv.lowering import plan

    cfg = case.config("auto", dtype=jnp.dtype(dtype))
    return plan(cfg, case.input_shape, cfg.dtype, jax.default_backend(), jax.device_count())


def run(args) -> int:
    cases = sweep(args.sweep, args.seed) if args.sweep else GRID
    if args.list:
        for case, dtype in cases:
            print(f"{case.name:18s} {dtype:9s} {case}")
        return 0
    picked = [
        (c, d)
        for c, d in cases
        if args.cases == "all" or any(c.name.startswith(p) for p in args.cases.split(","))
    ]
    if args.sweep:  # a layer planned "xla" compiles xla's very program: nothing to compare
        picked = [(c, d) for c, d in picked if _planned(c, d) != "xla"]
        print(f"{len(picked)} of {args.sweep} random layers planned off xla", file=sys.stderr)
    if not picked:
        print(f"no grid case matches {args.cases!r}", file=sys.stderr)
        return 2
    progress = Progress(len(picked))
    rows = []
    for case, dtype in picked:  # each row as it is measured: a long run can be read early
        rows.append(run_grid_case(case, dtype, args.repeat, tuned=args.tuned))
        progress.say(_line(rows[-1]))
        progress.step(case.name)
    summary = summarize(rows)
    print(json.dumps(summary, indent=1))
    report = {"repeat": args.repeat, "summary": summary, "rows": rows}
    write_report(args.out, "grid", report, lambda path: chart(rows, path))
    return 0

"""``python -m jconv bench``: jconv against plain lax and torch on typical layers.

Every layer is timed forward and forward+backward (gradients of input, weight
and bias) for jconv (``algorithm="auto"`` unless forced), plain
``lax.conv_general_dilated`` (what Flax, Equinox and Haiku run) and torch when
it is installed. Implementations are interleaved in a shuffled order, after a
warm-up, and the median of ``repeat`` rounds is kept. GFLOP/s are reported as a fraction of a
matrix product's speed measured in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jconv.lowering.tune import rounds, sampler


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer: ``Conv{nd}d`` (or ``ConvTranspose{nd}d``) on a (batch, in, *size) input."""

    name: str
    nd: int
    batch: int
    cin: int
    cout: int
    size: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    transposed: bool = False

    def config(self, algorithm: str = "auto", dtype=jnp.float32):
        import jconv

        kind = "ConvTranspose" if self.transposed else "Conv"
        cls = getattr(jconv, f"{kind}{self.nd}d")
        return cls(
            self.cin,
            self.cout,
            self.kernel,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            algorithm=algorithm,
            dtype=dtype,
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.cin) + (self.size,) * self.nd


CASES = (
    Case("resnet3x3", 2, 32, 64, 64, 56, 3, padding=1),
    Case("stem7x7", 2, 16, 3, 64, 224, 7, stride=2, padding=3),
    Case("pointwise1x1", 2, 32, 256, 128, 28, 1),
    Case("depthwise3x3", 2, 32, 128, 128, 56, 3, padding=1, groups=128),
    Case("depthwise31x31", 2, 8, 64, 64, 32, 31, padding=15, groups=64),
    Case("grouped3x3_g32", 2, 32, 128, 128, 28, 3, padding=1, groups=32),
    Case("transposed4x4_s2", 2, 16, 128, 64, 16, 4, stride=2, padding=1, transposed=True),
    Case("conv1d_k7", 1, 8, 64, 64, 4096, 7, padding=3),
    Case("conv3d_3x3x3", 3, 4, 32, 32, 16, 3, padding=1),
    Case("dilated3x3_d2", 2, 16, 64, 64, 32, 3, padding=2, dilation=2),
)

_DN = {1: ("NCH", "OIH", "NCH"), 2: ("NCHW", "OIHW", "NCHW"), 3: ("NCDHW", "OIDHW", "NCDHW")}


def plain_lax(case: Case) -> Callable:
    """The layer as plain JAX code writes it: one ``lax`` call plus the bias."""
    n, k, s, p, d = case.nd, case.kernel, case.stride, case.padding, case.dilation

    def f(x, w, b):
        if case.transposed:  # what flax.linen.ConvTranspose(transpose_kernel=True) runs
            pad = d * (k - 1) - p
            y = lax.conv_transpose(
                x, w, (s,) * n, [(pad, pad)] * n, rhs_dilation=(d,) * n,
                dimension_numbers=_DN[n], transpose_kernel=True,
            )  # fmt: skip
        else:
            y = lax.conv_general_dilated(
                x, w, (s,) * n, [(p, p)] * n, rhs_dilation=(d,) * n,
                dimension_numbers=_DN[n], feature_group_count=case.groups,
            )  # fmt: skip
        return y + b.reshape((-1,) + (1,) * n)

    return f


def _timer(fn: Callable, *args) -> Callable[[], float]:
    return sampler(lambda: jax.block_until_ready(fn(*args)))


def compile_forward(f: Callable, x, w, b):
    """Compiled forward of ``f(x, w, b)``."""
    return jax.jit(f).lower(x, w, b).compile()


def compile_both(f: Callable, x, w, b, gy):
    """Compiled forward+backward of ``f(x, w, b)``: the output and every gradient at ``gy``."""

    def both(x, w, b, gy):
        y, vjp = jax.vjp(f, x, w, b)
        return y, vjp(gy)

    return jax.jit(both).lower(x, w, b, gy).compile()


def compile_pair(f: Callable, x, w, b, gy):
    """Compiled forward and forward+backward of ``f(x, w, b)``, and their compile seconds."""
    t = time.perf_counter()
    fwd, bwd = compile_forward(f, x, w, b), compile_both(f, x, w, b, gy)
    return fwd, bwd, time.perf_counter() - t


def _jax_pair(f: Callable, x, w, b, gy) -> tuple[Callable, Callable, float]:
    """Timers of the jitted forward and forward+backward of ``f(x, w, b)``, compile seconds."""
    fwd, bwd, seconds = compile_pair(f, x, w, b, gy)
    return _timer(fwd, x, w, b), _timer(bwd, x, w, b, gy), seconds


def interleaved(timers: dict, repeat: int) -> dict:
    """Median milliseconds per implementation and mode, from ``repeat`` shuffled rounds
    after a warm-up (a call right after a large one runs slower, so the order changes)."""
    calls = {
        (name, mode): timer for name, pair in timers.items() for mode, timer in enumerate(pair)
    }
    samples = rounds(calls, repeat)
    return {
        name: {
            "forward": 1e3 * float(np.median(samples[name, 0])),
            "forward_backward": 1e3 * float(np.median(samples[name, 1])),
        }
        for name in timers
    }


def _torch_pair(case: Case, x, w, b, gy, dtype: str):
    try:
        import torch
    except ImportError:
        return None
    F = torch.nn.functional
    op = getattr(F, f"conv_transpose{case.nd}d" if case.transposed else f"conv{case.nd}d")
    kw = dict(stride=case.stride, padding=case.padding, dilation=case.dilation, groups=case.groups)
    tdtype = getattr(torch, dtype)

    def tensor(a, grad=False):
        return torch.tensor(np.asarray(a, np.float32)).to(tdtype).requires_grad_(grad)

    xt, wt, bt, gt = tensor(x, True), tensor(w, True), tensor(b, True), tensor(gy)

    def fwd():
        with torch.no_grad():
            return op(xt, wt, bt, **kw)

    def both():
        xt.grad = wt.grad = bt.grad = None
        op(xt, wt, bt, **kw).backward(gt)

    return sampler(fwd), sampler(both)


def matmul_peak(dtype, n: int = 2048, repeat: int = 5) -> float:
    """GFLOP/s of an n×n matrix product, the machine's practical peak for XLA."""
    a = jnp.ones((n, n), dtype)
    once = _timer(jax.jit(lambda a: a @ a), a)
    once()
    return 2 * n**3 / float(np.median([once() for _ in range(repeat)])) / 1e9


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, width: int = 30, stream=None):
        # sys.stderr at the time of use, not of import (a caller may have replaced it)
        self.total, self.width, self.stream, self.done = total, width, stream or sys.stderr, 0

    def step(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label:<24}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()

    def say(self, line: str) -> None:
        """``line`` on stdout, on a line of its own: the bar's line is cleared first."""
        self.stream.write("\r" + " " * (self.width + 40) + "\r")
        self.stream.flush()
        print(line, flush=True)


def run_case(case: Case, repeat: int, dtype: str, algorithm: str, progress=None) -> dict:
    """Times one case; returns its row (milliseconds, ratios, GFLOP/s, lowering)."""
    import jconv
    from jconv.lowering import plan

    jdtype = jnp.dtype(dtype)
    cfg = case.config(algorithm, dtype=jdtype)
    params = jconv.init(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), case.input_shape, jdtype)
    gy = jax.random.normal(jax.random.key(2), jconv.output_shape(cfg, x.shape), jdtype)
    w, b = params.weight, params.bias

    def ours(x, w, b):
        return jconv.apply(jconv.Params(w, b, cfg), x)

    impls = {"jconv": _jax_pair(ours, x, w, b, gy), "lax": _jax_pair(plain_lax(case), x, w, b, gy)}
    compile_s = {name: pair[2] for name, pair in impls.items()}
    timers = {name: pair[:2] for name, pair in impls.items()}
    torch_pair = _torch_pair(case, x, w, b, gy, dtype)
    if torch_pair is not None:
        timers["torch"] = torch_pair

    y_ours = np.asarray(jax.jit(ours)(x, w, b), np.float32)
    y_lax = np.asarray(jax.jit(plain_lax(case))(x, w, b), np.float32)
    err = float(np.max(np.abs(y_ours - y_lax)) / max(np.max(np.abs(y_lax)), 1e-30))

    ms = interleaved(timers, repeat)
    if progress:
        progress.step(case.name)
    flops = jconv.flops(cfg, x.shape)
    return {
        "case": dataclasses.asdict(case),
        "lowering": plan(cfg, x.shape, jdtype, jax.default_backend(), jax.device_count()),
        "gflop": flops / 1e9,
        "ms": ms,
        "compile_s": compile_s,
        "max_rel_diff_vs_lax": err,
    }


def environment() -> dict:
    """What a report was measured on."""
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
    }


def write_report(folder, name: str, report: dict, draw: Callable | None = None) -> None:
    """Writes ``name.json`` (the environment, then ``report``) into ``folder``, and
    ``name.png`` through ``draw(path)`` when given (it returns whether it drew)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({**environment(), **report}, indent=1))
    drawn = draw is not None and draw(out / f"{name}.png")
    print(f"wrote {out / f'{name}.json'}" + (f" and {out / f'{name}.png'}" if drawn else ""))


def geomean(values: Sequence[float]) -> float:
    return (
        float(math.exp(sum(math.log(v) for v in values) / len(values))) if values else float("nan")
    )


def summarize(rows: list[dict], peak: float) -> dict:
    """Speedups of jconv (> 1: jconv faster) per row and their geometric means."""
    summary = {}
    for mode in ("forward", "forward_backward"):
        for other in ("lax", "torch"):
            ratios = [
                r["ms"][other][mode] / r["ms"]["jconv"][mode] for r in rows if other in r["ms"]
            ]
            for r, v in zip((r for r in rows if other in r["ms"]), ratios):
                r.setdefault("speedup", {}).setdefault(mode, {})[other] = v
            summary[f"{mode}_vs_{other}_geomean"] = geomean(ratios)
    for r in rows:
        r["fraction_of_peak"] = {
            mode: (r["gflop"] * (1 if mode == "forward" else 3))
            / (r["ms"]["jconv"][mode] / 1e3)
            / peak
            for mode in ("forward", "forward_backward")
        }
    return summary


def table(rows: list[dict], summary: dict, peak: float) -> str:
    has_torch = any("torch" in r["ms"] for r in rows)
    head = f"{'case':18s} {'lowering':9s} {'mode':5s} {'jconv':>9s} {'lax':>9s}"
    head += f" {'torch':>9s}" if has_torch else ""
    head += (
        f" {'x lax':>7s}"
        + (f" {'x torch':>8s}" if has_torch else "")
        + f" {'%peak':>6s} {'compile':>8s}"
    )
    lines = [
        f"matrix-product peak: {peak:.0f} GFLOP/s; times are medians in ms",
        head,
        "-" * len(head),
    ]
    for r in rows:
        for mode, tag in (("forward", "fwd"), ("forward_backward", "f+b")):
            ms = r["ms"]
            line = f"{r['case']['name'] if tag == 'fwd' else '':18s} {r['lowering'] if tag == 'fwd' else '':9s} {tag:5s}"
            line += f" {ms['jconv'][mode]:9.2f} {ms['lax'][mode]:9.2f}"
            if has_torch:
                line += f" {ms['torch'][mode]:9.2f}" if "torch" in ms else f" {'-':>9s}"
            sp = r["speedup"][mode]
            line += f" {sp['lax']:6.2f}x"
            if has_torch:
                line += f" {sp['torch']:7.2f}x" if "torch" in sp else f" {'-':>8s}"
            line += f" {100 * r['fraction_of_peak'][mode]:5.1f}%"
            line += f" {r['compile_s']['jconv']:7.2f}s" if tag == "fwd" else ""
            lines.append(line)
    lines.append("")
    for key, value in summary.items():
        lines.append(
            f"geomean speedup, {key.replace('_geomean', '').replace('_', ' ')}: {value:.2f}x"
        )
    return "\n".join(lines)


def chart(rows: list[dict], path: Path) -> bool:
    """A PNG of jconv's speedups per case; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [r["case"]["name"] for r in rows]
    series = [
        (mode, other)
        for mode in ("forward", "forward_backward")
        for other in ("lax", "torch")
        if any(other in r["speedup"][mode] for r in rows)
    ]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(len(series), 1)
    for i, (mode, other) in enumerate(series):
        values = [r["speedup"][mode].get(other, np.nan) for r in rows]
        ax.bar(
            np.arange(len(rows)) + i * width,
            values,
            width,
            label=f"{mode.replace('_', '+')} vs {other}",
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("jconv speedup (x, log scale)")
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, names, rotation=30, ha="right")
    ax.legend(fontsize=8)
    ax.set_title(f"jconv speedups on {jax.default_backend()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m jconv bench", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser) -> None:
    parser.add_argument("--cases", default="all", help="comma-separated case names (see --list)")
    parser.add_argument(
        "--list", action="store_true", help="list the cases (of --grid or --models too) and exit"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per case (median)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--algorithm", default="auto", help="force one jconv lowering")
    parser.add_argument(
        "--out", default="bench-results", help="folder for bench.json and bench.png"
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="the wide grid (jconv.grid): auto against xla and torch, time and memory; "
        "--cases then takes name prefixes (dense3x3, depthwise, ...); writes grid.json/.png",
    )
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="--grid: also time jconv.autotune's choices (forward tuned for inference, "
        "forward+backward for training) against xla",
    )
    parser.add_argument(
        "--sweep",
        type=int,
        default=0,
        metavar="COUNT",
        help="--grid: COUNT random layers (jconv.grid.sweep) instead of the grid's shapes; "
        "those planned xla are left out (the same program)",
    )
    parser.add_argument("--seed", type=int, default=0, help="--sweep: which random layers")
    parser.add_argument(
        "--models",
        action="store_true",
        help="whole training steps of six architectures (jconv.models) against torch, "
        "flax-style NHWC lax and plain lax; --cases then takes model names "
        "(resnet, resnet:bfloat16, ...); writes models.json",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="--models: input size factor (e.g. 0.5)"
    )


def run(args) -> int:
    by_name = {c.name: c for c in CASES}
    if args.list:
        for c in CASES:
            print(f"{c.name:18s} {c}")
        return 0
    names = list(by_name) if args.cases == "all" else [n.strip() for n in args.cases.split(",")]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {', '.join(by_name)}", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print(f"--repeat must be at least 1, got {args.repeat}", file=sys.stderr)
        return 2
    peak = matmul_peak(jnp.dtype(args.dtype))
    progress = Progress(len(names))
    rows = [run_case(by_name[n], args.repeat, args.dtype, args.algorithm, progress) for n in names]
    summary = summarize(rows, peak)
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), {args.dtype}"
    )
    print(table(rows, summary, peak))
    report = {
        "dtype": args.dtype,
        "repeat": args.repeat,
        "matmul_peak_gflops": peak,
        "summary": summary,
        "rows": rows,
    }
    write_report(args.out, "bench", report, lambda path: chart(rows, path))
    return 0

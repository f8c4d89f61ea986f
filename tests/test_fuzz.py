"""Property-based fuzzing of every convolution against two references, crash-isolated.

hypothesis draws configurations over the whole space: Conv1d/2d/3d and
ConvTranspose1d/2d/3d; every padding form (int, tuple, (lo, hi) pairs, "valid",
"same", "causal") and mode; stride, dilation, groups (dense, grouped, depthwise),
bias, output_padding and output_size; batched, unbatched and empty-batch input;
float32, bfloat16, and bfloat16 in with float32 out (``preferred_element_type``);
jit or eager; and the planner's choice or any lowering that fits. Each example runs in a worker subprocess (``tests/fuzz_worker.py``), so an
XLA abort becomes a failing example that names its configuration. The output and
the input, weight and bias gradients must match the float64 NumPy reference and,
for float32 when torch is installed, torch.

Budget: ``FUZZ_EXAMPLES`` examples in CI (derandomized); ``pytest --fuzz-long``
(or ``JCONV_FUZZ_EXAMPLES=N``) runs thousands. Every configuration ever found
failing goes into ``tests/fuzz_regressions.json``, which always runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jconv.lowering import ALGORITHMS, check_algorithm

HERE = pathlib.Path(__file__).resolve().parent
REGRESSIONS = HERE / "fuzz_regressions.json"
FUZZ_EXAMPLES = 40
TOL = {"float32": 2e-5, "bfloat16": 2e-2, "bfloat16->float32": 2e-2}
TOL_FFT = {"float32": 1e-4, "bfloat16": 2e-2, "bfloat16->float32": 2e-2}


class Worker:
    """One long-lived ``fuzz_worker.py``; restarted after it dies."""

    def __init__(self):
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fuzz_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, spec: dict, timeout: float = 300.0) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            code = self.proc.wait()
            err = self.proc.stderr.read()[-2000:]
            self.proc = None
            raise AssertionError(
                f"the worker died (exit code {code}) or hung on this configuration:\n"
                f"{describe(spec)}\n{err}"
            )
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def describe(spec: dict) -> str:
    kw = ", ".join(f"{k}={v!r}" for k, v in spec["kwargs"].items())
    name = ("ConvTranspose" if spec["transposed"] else "Conv") + f"{spec['ndim']}d"
    size = spec["extra"].get("output_size")
    return (
        f"{name}({kw}, algorithm={spec['algorithm']!r}) input {spec['shape']}"
        f"{' (batch emptied)' if spec['empty_batch'] else ''} {spec['dtype']} jit={spec['jit']}"
        f"{f' output_size={size}' if size is not None else ''}"
    )


def _ints(draw, n, lo, hi):
    return tuple(draw(st.integers(lo, hi)) for _ in range(n))


def _numeric_padding(draw, n, form):
    """An int, per-dimension tuple or (lo, hi) pairs padding, with its pairs."""
    if form == "int":
        p = draw(st.integers(0, 2))
        return p, [(p, p)] * n
    if form == "tuple":
        padding = _ints(draw, n, 0, 2)
        return padding, [(p, p) for p in padding]
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(n))
    return padding, list(padding)


@st.composite
def specs(draw) -> dict:
    """One valid configuration and input, as the JSON the worker reads."""
    transposed = draw(st.booleans())
    n = draw(st.sampled_from([1, 2, 3]))
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups, cin, cout = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "grouped":
        groups = draw(st.integers(2, 3))
        cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    else:
        groups = draw(st.integers(2, 4))
        cin, cout = groups, groups * draw(st.integers(1, 2))
    k = _ints(draw, n, 1, {1: 5, 2: 4, 3: 3}[n])
    d = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(n))
    stride = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(n))
    smax = {1: 12, 2: 8, 3: 5}[n]
    extra: dict = {}
    if not transposed:
        forms = ["int", "tuple", "pairs", "valid"]
        forms += ["same"] if all(s == 1 for s in stride) else []
        forms += ["causal"] if n == 1 else []
        form = draw(st.sampled_from(forms))
        if form in ("int", "tuple", "pairs"):
            padding, pairs = _numeric_padding(draw, n, form)
        elif form == "valid":
            padding, pairs = "valid", [(0, 0)] * n
        elif form == "causal":
            padding, pairs = "causal", [(d[0] * (k[0] - 1), 0)]
        else:
            tot = [di * (ki - 1) for ki, di in zip(k, d)]
            padding, pairs = "same", [(t // 2, t - t // 2) for t in tot]
        mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
        spatial = []
        for ki, di, (lo, hi) in zip(k, d, pairs):
            low = max(1, di * (ki - 1) + 1 - lo - hi)
            if mode == "reflect":  # torch: each pad below the size
                low = max(low, lo + 1, hi + 1)
            elif mode == "circular":  # torch: each pad at most the size
                low = max(low, lo, hi)
            spatial.append(draw(st.integers(low, max(low, smax))))
        kwargs = dict(
            in_channels=cin, out_channels=cout, kernel_size=k, stride=stride, padding=padding,
            dilation=d, groups=groups, bias=draw(st.booleans()), padding_mode=mode,
        )  # fmt: skip
    else:
        form = draw(st.sampled_from(["int", "tuple", "pairs"]))
        padding, pairs = _numeric_padding(draw, n, form)
        out_pad = tuple(draw(st.integers(0, max(s, di) - 1)) for s, di in zip(stride, d))
        spatial = []
        for ki, di, s, (lo, hi) in zip(k, d, stride, pairs):
            low = max(1, -(-(lo + hi - di * (ki - 1)) // s) + 1)
            spatial.append(draw(st.integers(low, low + {1: 6, 2: 3, 3: 2}[n])))
        if form != "pairs" and draw(st.booleans()):  # torch's forward(output_size=)
            base = [
                (i - 1) * s - lo - hi + di * (ki - 1) + 1
                for i, s, (lo, hi), di, ki in zip(spatial, stride, pairs, d, k)
            ]
            extra["output_size"] = [b + draw(st.integers(0, s - 1)) for b, s in zip(base, stride)]
            out_pad = 0
        kwargs = dict(
            in_channels=cin, out_channels=cout, kernel_size=k, stride=stride, padding=padding,
            output_padding=out_pad, groups=groups, bias=draw(st.booleans()), dilation=d,
        )  # fmt: skip
    batched = draw(st.booleans())
    shape = ((draw(st.integers(1, 2)),) if batched else ()) + (cin, *spatial)
    fitting = [a for a in ALGORITHMS if a != "auto" and _fits(a, transposed, k)]
    algorithm = draw(st.one_of(st.just("auto"), st.sampled_from(fitting)))
    extra["pairs"] = [list(p) for p in pairs]
    return dict(
        ndim=n, kwargs=kwargs, shape=list(shape), batched=batched, transposed=transposed,
        extra=extra, jit=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(["float32"] * 6 + ["bfloat16"] * 2 + ["bfloat16->float32"])),
        algorithm=algorithm, empty_batch=batched and draw(st.integers(0, 9)) == 0,
    )  # fmt: skip


def _fits(algorithm: str, transposed: bool, kernel) -> bool:
    try:
        check_algorithm(algorithm, transposed, tuple(kernel))
    except ValueError:
        return False
    return True


def check(worker: Worker, spec: dict) -> None:
    """The worker's verdict on ``spec``: no exception, both references matched."""
    result = worker.run(spec)
    where = describe(spec)
    assert "raised" not in result, f"{where}\nraised {result.get('raised')}\n{result.get('trace')}"
    tol = (TOL_FFT if spec["algorithm"] == "fft" else TOL)[spec["dtype"]]
    for oracle in ("numpy", "torch"):
        errs = result[oracle]
        if errs is None:
            continue
        for name, err in zip(("y", "dx", "dw", "db"), errs):
            assert err is None or err <= tol, f"{where}\n{name} vs {oracle}: {err:.2e} > {tol}"


def _examples(config) -> int:
    if config.getoption("--fuzz-long"):
        return int(os.environ.get("JCONV_FUZZ_EXAMPLES", 5000))
    return int(os.environ.get("JCONV_FUZZ_EXAMPLES", FUZZ_EXAMPLES))


def test_fuzz_against_numpy_and_torch(worker, request):
    long = request.config.getoption("--fuzz-long")
    passed = []

    @settings(
        max_examples=_examples(request.config),
        deadline=None,
        derandomize=not long,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )
    @given(specs())
    def fuzz(spec):
        check(worker, spec)
        passed.append(spec["algorithm"])

    start = time.perf_counter()
    fuzz()
    seconds = time.perf_counter() - start
    lowerings = {a: passed.count(a) for a in sorted(set(passed))}
    print(f"\nfuzz: {len(passed)} examples passed in {seconds:.0f} s; lowerings {lowerings}")
    assert len(passed) >= _examples(request.config)


def _regressions() -> list[dict]:
    return json.loads(REGRESSIONS.read_text())["cases"]


@pytest.mark.parametrize("entry", _regressions(), ids=lambda e: e["why"][:40])
def test_regression(worker, entry):
    check(worker, entry["spec"])


def test_a_worker_abort_is_a_failure_that_names_the_configuration():
    """Crash isolation: the worker process dying fails one example, with its config."""
    w = Worker()
    w._start()
    w.proc.kill()  # stands in for an XLA abort
    w.proc.wait()
    w.proc = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; sys.stdin.readline(); os.abort()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    spec = json.loads(REGRESSIONS.read_text())["cases"][0]["spec"]
    with pytest.raises(AssertionError, match="worker died") as failure:
        w.run(spec)
    assert describe(spec) in str(failure.value)
    assert w.proc is None  # the next example starts a fresh worker

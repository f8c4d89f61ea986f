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

Budget: ``FUZZ_EXAMPLES``, 12 examples in the fast tier and 40 in the slow one
(derandomized); ``pytest tests/test_fuzz.py --fuzz-long -m slow`` (or
``JCONV_FUZZ_EXAMPLES=N``) runs thousands. Every configuration ever found
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
from fuzz_space import specs
from hypothesis import HealthCheck, given, settings

HERE = pathlib.Path(__file__).resolve().parent
REGRESSIONS = HERE / "fuzz_regressions.json"
FUZZ_EXAMPLES = {"fast": 12, "slow": 40}  # per tier
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


def check(worker: Worker, spec: dict) -> None:
    """The worker's verdict on ``spec``: no exception, both references matched."""
    result = worker.run(spec)
    where = describe(spec)
    assert "raised" not in result, f"{where}\nraised {result.get('raised')}\n{result.get('trace')}"
    tol = (TOL_FFT if spec["algorithm"] in ("fft", "shift_fft") else TOL)[spec["dtype"]]
    for oracle in ("numpy", "torch"):
        errs = result[oracle]
        if errs is None:
            continue
        for name, err in zip(("y", "dx", "dw", "db"), errs):
            assert err is None or err <= tol, f"{where}\n{name} vs {oracle}: {err:.2e} > {tol}"


def _examples(config, tier: str) -> int:
    if config.getoption("--fuzz-long"):
        return int(os.environ.get("JCONV_FUZZ_EXAMPLES", 5000))
    return int(os.environ.get("JCONV_FUZZ_EXAMPLES", FUZZ_EXAMPLES[tier]))


@pytest.mark.parametrize("tier", ["fast", pytest.param("slow", marks=pytest.mark.slow)])
def test_fuzz_against_numpy_and_torch(worker, request, tier):
    long = request.config.getoption("--fuzz-long")
    passed = []

    @settings(
        max_examples=_examples(request.config, tier),
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
    assert len(passed) >= _examples(request.config, tier)


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

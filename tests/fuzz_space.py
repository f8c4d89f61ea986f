"""The fuzzed configuration space: one valid convolution and input per draw.

``specs()`` draws Conv1d/2d/3d or ConvTranspose1d/2d/3d kwargs, an input shape
that fits them and the run's options, as the JSON dict that
``tests/fuzz_worker.py`` reads. ``tests/test_fuzz.py`` checks the draws against
two references; ``tests/test_fuzz_errors.py`` spoils one part of a draw and
checks the error.
"""

from __future__ import annotations

from hypothesis import strategies as st

from jconv.algorithms import ALGORITHMS, fits


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
    fitting = [a for a in ALGORITHMS if a != "auto" and fits(a, transposed, k)]
    algorithm = draw(st.one_of(st.just("auto"), st.sampled_from(fitting)))
    extra["pairs"] = [list(p) for p in pairs]
    return dict(
        ndim=n, kwargs=kwargs, shape=list(shape), batched=batched, transposed=transposed,
        extra=extra, jit=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(["float32"] * 6 + ["bfloat16"] * 2 + ["bfloat16->float32"])),
        algorithm=algorithm, empty_batch=batched and draw(st.integers(0, 9)) == 0,
    )  # fmt: skip

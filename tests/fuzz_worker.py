"""A fuzz worker: checks one convolution per line of stdin against two references.

Each input line is a JSON case (see ``tests/test_fuzz.py``); each output line is a
JSON result: the errors of jconv's output and input, weight and bias gradients
against the float64 NumPy reference and, for float32 when torch is installed,
against torch, each relative to the magnitude of its sums (the same sums over
|x|, |w|, |b| and |gy|, which rounding errors scale with); or the exception jconv
raised, or a gradient whose dtype is not its primal's. The test process runs
this in a subprocess, so an XLA abort kills the worker, not pytest.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import reference  # noqa: E402
from conftest import Case, arrays_for, jconv_grads  # noqa: E402

import jconv  # noqa: E402

try:
    import torch_oracle
except ImportError:  # torch is optional
    torch_oracle = None

_NP_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def case_of(spec: dict) -> Case:
    return Case(
        spec["ndim"],
        spec["kwargs"],
        tuple(spec["shape"]),
        spec["batched"],
        spec["jit"],
        spec["seed"],
        {k: (tuple(map(tuple, v)) if k == "pairs" else v) for k, v in spec["extra"].items()},
        spec["transposed"],
    )


def _unpad(dxp, pairs, mode, spatial):
    """The adjoint of ``np.pad(x, pairs, mode)`` over the trailing dimensions."""
    dx = dxp
    for axis, ((lo, hi), size) in enumerate(zip(pairs, spatial), start=2):
        source = np.pad(np.arange(size), (lo, hi), mode=_NP_MODE[mode])
        out = np.zeros(dx.shape[:axis] + (size,) + dx.shape[axis + 1 :])
        np.add.at(np.moveaxis(out, axis, 0), source, np.moveaxis(dx, axis, 0))
        dx = out
    return dx


def numpy_reference(case: Case, cfg, x, w, b, gy):
    """(y, dx, dw, db) in float64, batched, for the batched arrays given."""
    pairs = [tuple(p) for p in case.extra["pairs"]]
    s, d, g = cfg.stride, cfg.dilation, cfg.groups
    if not cfg.transposed:
        y = reference.conv(x, w, b, s, pairs, d, g, cfg.padding_mode)
        if cfg.padding_mode == "zeros":
            dx, dw, db = reference.conv_vjp(x, w, gy, s, pairs, d, g)
        else:
            mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
            xp = np.pad(x, [(0, 0), (0, 0), *pairs], mode=mode[cfg.padding_mode])
            dxp, dw, db = reference.conv_vjp(xp, w, gy, s, [(0, 0)] * cfg.ndim, d, g)
            dx = _unpad(dxp, pairs, cfg.padding_mode, x.shape[2:])
        return y, dx, dw, (db if b is not None else None)
    _, out_pad, _ = jconv.shapes.resolve(cfg, x.shape, case.output_size)
    y = reference.conv_transpose(x, w, b, s, pairs, d, g, out_pad)
    # the transposed conv is the adjoint of the forward conv C_w in its input:
    # dx = C_w(gy), and dw is C's weight gradient at input gy, cotangent x
    dx_full = reference.conv(gy, w, None, s, pairs, d, g)
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in x.shape[2:])
    dx = dx_full[crop]
    cot = np.zeros(dx_full.shape)
    cot[crop] = x
    _, dw, _ = reference.conv_vjp(gy, w, cot, s, pairs, d, g)
    db = gy.sum(axis=(0, *range(2, gy.ndim))) if b is not None else None
    return y, dx, dw, db


def check(spec: dict) -> dict:
    case = case_of(spec)
    # "bfloat16->float32": bfloat16 in, float32 out (preferred_element_type)
    wide = spec["dtype"] == "bfloat16->float32"
    extras = {"preferred_element_type": jnp.float32} if wide else {}
    cfg = case.cfg(algorithm=spec["algorithm"], **extras)
    x, w, b, gy = arrays_for(case, cfg)
    if spec["empty_batch"]:
        x, gy = x[:0], gy[:0]
    dtype = jnp.float32 if spec["dtype"] == "float32" else jnp.bfloat16
    xs, ws = (jnp.asarray(a, dtype) for a in (x, w))
    gys = jnp.asarray(gy, jnp.float32 if wide else dtype)
    bs = None if b is None else jnp.asarray(b, dtype)
    try:
        mine = jconv_grads(cfg, xs, ws, bs, gys, case.jit, case.output_size)
    except Exception as err:  # reported, and the test decides
        return {"raised": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-1500:]}
    # a gradient has its primal's dtype; the output is the compute (or preferred) dtype
    want = [jnp.float32 if wide else dtype, xs.dtype, ws.dtype, None if bs is None else bs.dtype]
    for name, got, dt in zip(("y", "dx", "dw", "db"), mine, want):
        if got is not None and got.dtype != dt:
            return {
                "raised": f"{name} has dtype {got.dtype}, expected {jnp.dtype(dt)}",
                "trace": "",
            }
    mine = [None if m is None else np.asarray(m, np.float64) for m in mine]
    # the references see exactly the (rounded) values jconv saw
    xr, wr, gyr = (np.asarray(a, np.float64) for a in (xs, ws, gys))
    br = None if bs is None else np.asarray(bs, np.float64)
    lift = (lambda a: a) if case.batched else (lambda a: a[None])
    drop = (lambda a: a) if case.batched else (lambda a: a[0])
    y, dx, dw, db = numpy_reference(case, cfg, lift(xr), wr, br, lift(gyr))
    ref = [drop(y), drop(dx), dw, db]
    # the same sums over |x|, |w|, |b|, |gy|: the magnitude that rounding errors scale
    # with, so an output that cancels to (near) zero is not judged by its own size
    ay, adx, adw, adb = numpy_reference(
        case, cfg, lift(np.abs(xr)), np.abs(wr), None if br is None else np.abs(br),
        lift(np.abs(gyr)),
    )  # fmt: skip
    scale = [ay, adx, adw, adb]
    if spec["algorithm"] in ("fft", "shift_fft"):
        # an FFT spreads its rounding over every output, even those whose sums are
        # empty: its error bound is global, |x|₂·|w|₂ (and likewise per gradient)
        norm = np.linalg.norm
        scale[:3] = [
            max(np.max(ay, initial=0), norm(xr) * norm(wr)),
            max(np.max(adx, initial=0), norm(gyr) * norm(wr)),
            max(np.max(adw, initial=0), norm(xr) * norm(gyr)),
        ]
    result = {"numpy": _errors(mine, ref, scale), "torch": None}
    if torch_oracle is not None and spec["dtype"] == "float32" and not spec["empty_batch"]:
        pairs = [tuple(p) for p in case.extra["pairs"]]
        if cfg.transposed:
            got = torch_oracle.conv_transpose_with_grads(
                case.ndim, case.kwargs, pairs, x, w, b, gy, case.output_size
            )
        else:
            got = torch_oracle.conv_with_grads(case.ndim, case.kwargs, pairs, x, w, b, gy)
        result["torch"] = _errors(mine, [None if t is None else np.asarray(t) for t in got], scale)
    return result


def _errors(mine, ref, scale):
    """Per quantity: max |mine − ref| over the largest magnitude of its sums."""
    out = []
    for got, want, size in zip(mine, ref, scale):
        if want is None or got is None:
            out.append(None if want is None and got is None else float("inf"))
        elif np.isnan(got).any() or np.isinf(got).any() or got.shape != want.shape:
            out.append(float("inf"))
        elif got.size == 0:
            out.append(0.0)
        else:
            out.append(float(np.max(np.abs(got - want)) / max(np.max(size), 1e-6)))
    return out


CLEAR_EVERY = 100  # compiled programs of every shape seen pile up over a long run


def main() -> None:
    for count, line in enumerate(sys.stdin, start=1):
        spec = json.loads(line)
        print(json.dumps(check(spec)), flush=True)
        if count % CLEAR_EVERY == 0:
            jax.clear_caches()


if __name__ == "__main__":
    main()

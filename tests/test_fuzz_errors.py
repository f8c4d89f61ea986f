"""Property-based fuzzing of the bad-input space: every spoiled call gets a clear error.

hypothesis draws a valid convolution from the fuzzed space
(``tests/fuzz_space.py``) and spoils exactly one thing, one test per kind of
spoiling:

* a config argument: a value out of range, of the wrong type or length, an
  unknown string, a lowering that does not fit;
* the input of ``jconv.apply``: rank, channels, a spatial size too small for
  the kernel or the padding mode, dtype, not an array, a transposed
  ``output_size`` out of range or of the wrong length, an ``output_size`` for a
  forward conv; run eagerly, under ``jit`` or under ``vmap``;
* the weight or bias given to the matching ``jconv.functional`` op.

Each must raise jconv's own ``ValueError`` or ``TypeError`` whose message names
the parameter and the value received, with no lax or XLA wording. When torch is
installed, torch must refuse the same spoiled layer or input too, except where
jconv is documented as stricter (README, *Known limits*) or has no torch
counterpart (``algorithm``, ``dtype``, ``(lo, hi)`` pairs, ``"causal"``).

Budget: ``PER_KIND`` examples per kind, 2 in the fast tier and 5 in the slow one
(derandomized);
``pytest --fuzz-long`` (or ``JCONV_FUZZ_EXAMPLES=N``, spread over the kinds)
runs thousands.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fuzz_space import specs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_errors import LAX_WORDS

import jconv
import jconv.functional as F

PER_KIND = {"fast": 2, "slow": 5}  # per tier

CONFIG_KEYS = (
    "in_channels", "out_channels", "groups", "kernel_size", "stride", "dilation",
    "padding", "padding_mode", "output_padding", "dtype", "algorithm",
)  # fmt: skip
INPUT_KINDS = (
    "rank", "channels", "dtype", "not_array", "too_small", "mode_too_large",
    "empty_spatial", "output_size_range", "output_size_length", "output_size_forward",
)  # fmt: skip
FUNCTIONAL_KINDS = ("weight_rank", "weight_channels", "bias_size")
KINDS = (
    [("config", k) for k in CONFIG_KEYS]
    + [("input", k) for k in INPUT_KINDS]
    + [("functional", k) for k in FUNCTIONAL_KINDS]
)

# values no int argument takes, in jconv or torch (a bool or 3.0 torch would take)
_NOT_INTS = [2.5, "3", None, 1 + 2j, [[1]]]


def _tuple(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def _shown(value) -> str:
    """The forms a message may show a value in (alternatives split by "|")."""
    forms = {repr(value), str(value)}
    if isinstance(value, (list, tuple)):
        forms.add(repr(tuple(value)))
    return "|".join(sorted(forms))


def _cfg(spec: dict, kwargs: dict):
    kind = "ConvTranspose" if spec["transposed"] else "Conv"
    return getattr(jconv, f"{kind}{spec['ndim']}d")(**kwargs)


def _torch_kwargs(spec: dict, kwargs: dict) -> dict | None:
    """torch's layer kwargs, or None where the call has no torch spelling."""
    pad = kwargs.get("padding", 0)
    if pad == "causal" or (isinstance(pad, tuple) and any(isinstance(p, tuple) for p in pad)):
        return None  # jconv's own padding forms
    return {k: v for k, v in kwargs.items() if k not in ("dtype", "algorithm")}


def _torch_refuses(spec: dict, kwargs: dict, x_shape, dtype=np.float32, extra=None) -> bool:
    """Whether torch refuses this layer, or this input to it."""
    import torch

    extra = extra or {}
    kind = "ConvTranspose" if spec["transposed"] else "Conv"
    try:
        layer = getattr(torch.nn, f"{kind}{spec['ndim']}d")(**kwargs)
        raw = extra.get("raw")
        if raw is not None:
            x = {"list": np.zeros(x_shape).tolist(), "none": None, "str": "x"}[raw]
        else:
            x = torch.from_numpy(np.zeros(x_shape, dtype))
        if "output_size" in extra:
            if not spec["transposed"]:
                return True  # torch's Conv.forward takes no output_size
            layer(x, output_size=extra["output_size"])
        else:
            layer(x)
    except Exception:  # noqa: BLE001 - any refusal counts
        return True
    return False


def _check_message(err: BaseException, fragments: list[str], where: str) -> None:
    msg = str(err)
    assert isinstance(err, (ValueError, TypeError)), f"{where}\n{type(err).__name__}: {msg}"
    for fragment in fragments:
        assert any(f in msg for f in fragment.split("|")), f"{where}\n{fragment!r} not in {msg!r}"
    lowered = msg.replace("lax.Precision", "").replace("'xla'", "").lower()
    for word in LAX_WORDS:
        assert word not in lowered, f"{where}\nlax wording {word!r} in {msg!r}"


# ---------------------------------------------------------------- config arguments
def _bad_value(draw, spec: dict, key: str) -> tuple[object, bool]:
    """A value that ``key`` never takes here, and whether torch refuses it too."""
    kw, n, transposed = spec["kwargs"], spec["ndim"], spec["transposed"]
    if key in ("in_channels", "out_channels", "groups"):
        pool = [-3, -1, *_NOT_INTS] + ([0] if key != "in_channels" else [])
        if key == "groups":
            pool.append(kw["in_channels"] + 1)  # never divides in_channels (>= 1)
        return draw(st.sampled_from(pool)), True
    if key in ("kernel_size", "stride", "dilation"):
        pool = [0, -1, -2, (2,) * n + (0,), (1,) * (n - 1) + (0,), *_NOT_INTS]
        pool += [(1,) * (n + 1)] if n > 1 else []  # a 2-tuple for 1-d torch reads as 2
        value = draw(st.sampled_from(pool))
        # documented: torch's grouped ConvTranspose path takes dilation=0; jconv refuses it
        lax_torch = key == "dilation" and transposed and 0 in _tuple(value, n)
        return value, not lax_torch
    if key == "padding":
        pool = [-1, (-1,) * n, (0,) * (n + 1), "full", "SAME", 1.5, None]
        if transposed:
            pool += ["same", "valid"]
        elif any(s != 1 for s in _tuple(kw["stride"], n)):
            pool.append("same")
        if n > 1 and not transposed:
            pool.append("causal")
        value = draw(st.sampled_from(pool))
        return value, value != "causal"  # torch has no "causal" (jconv refuses it too)
    if key == "padding_mode":
        pool = ["constant", "wrap", "", "Zeros", 0] + (["reflect"] if transposed else [])
        return draw(st.sampled_from(pool)), True
    if key == "output_padding":
        stride, dil = _tuple(kw["stride"], n), _tuple(kw["dilation"], n)
        big = tuple(max(s, d) for s, d in zip(stride, dil))
        return draw(st.sampled_from([big, -1, (0,) * (n + 1), 1.5, "1"])), True
    if key == "dtype":
        return draw(st.sampled_from([jnp.int32, "float31", np.bool_, "int8", object])), False
    pool = ["winograd", "FFT", None, "subpixel" if not transposed else "shift"]
    pool += ["matmul"] if any(k != 1 for k in _tuple(kw["kernel_size"], n)) else []
    pool += ["fold"] if n != 3 and not transposed else []
    return draw(st.sampled_from(pool)), False


def _config_fragments(key: str, value) -> list[str]:
    if key == "dtype":
        return ["dtype"]
    if key == "output_padding":
        return ["output padding|output_padding", _shown(value)]
    if key == "padding" and value == "causal":
        return ["causal", "1-d"]
    return [key, _shown(value)]


def _spoil_config(draw, key: str) -> None:
    spec = draw(specs())
    if key == "output_padding":
        assume(spec["transposed"])
    if key == "padding" and spec["transposed"] is False:
        assume(spec["kwargs"]["padding_mode"] == "zeros")
    value, torch_too = _bad_value(draw, spec, key)
    kwargs = {**spec["kwargs"], key: value}
    where = f"{spec['ndim']}-d transposed={spec['transposed']} {kwargs}"
    with pytest.raises(Exception) as info:
        _cfg(spec, kwargs)
    _check_message(info.value, _config_fragments(key, value), where)
    torch_kw = _torch_kwargs(spec, kwargs)
    if torch_too and torch_kw is not None and _have_torch():
        assert _torch_refuses(spec, torch_kw, spec["shape"]), f"{where}: torch accepts it"


# ---------------------------------------------------------------- the input
def _spoil_input(draw, kind: str) -> None:
    spec = draw(specs())
    cfg, n, shape = _cfg(spec, spec["kwargs"]), spec["ndim"], list(spec["shape"])
    lead = 2 if spec["batched"] else 1  # the first spatial axis
    dtype, extra = np.float32, {}
    if kind == "rank":
        shape = draw(st.sampled_from([shape[-n:-1] or [1], [1, 1, *shape[-n - 1 :]]]))
        fragments = ["input", f"{len(shape)}-d"]
    elif kind == "channels":
        shape[lead - 1] = cfg.in_channels + draw(st.integers(1, 3))
        fragments = [f"{cfg.in_channels} channels", f"{shape[lead - 1]} channels"]
    elif kind == "dtype":
        dtype = draw(st.sampled_from([np.int32, np.bool_, np.uint8, np.complex64]))
        fragments = ["floating-point input", np.dtype(dtype).name]
    elif kind == "not_array":
        extra["raw"] = draw(st.sampled_from(["list", "none", "str"]))
        fragments = ["input must be an array"]
    elif kind == "too_small":
        assume(not cfg.transposed and cfg.padding_mode == "zeros")
        axis = draw(st.integers(0, n - 1))
        (lo, hi), k, d = cfg.pads[axis], cfg.kernel_size[axis], cfg.dilation[axis]
        assume(d * (k - 1) - lo - hi >= 1)
        shape[lead + axis] = d * (k - 1) - lo - hi  # one short of the dilated kernel
        fragments = ["Kernel size", "padded input"]
    elif kind == "mode_too_large":
        assume(cfg.padding_mode in ("reflect", "circular"))
        axis = max(range(n), key=lambda i: max(cfg.pads[i]))
        pad = max(cfg.pads[axis])
        size = pad if cfg.padding_mode == "reflect" else pad - 1  # torch: < size, <= size
        assume(size >= 1)
        shape[lead + axis] = size
        fragments = ["padding", cfg.padding_mode]
    elif kind == "empty_spatial":
        assume(cfg.transposed)
        shape[lead + draw(st.integers(0, n - 1))] = 0
        fragments = ["empty dimension"]
    elif kind == "output_size_range":
        assume(cfg.transposed)
        axis = draw(st.integers(0, n - 1))
        base = jconv.output_shape(cfg, tuple(shape))[-n:]
        size = [b - op for b, op in zip(base, cfg.output_padding)]
        reach = max(cfg.stride[axis], cfg.dilation[axis])  # valid: base .. base + reach - 1
        size[axis] += draw(st.sampled_from([reach, reach + 1, -1]))
        assume(size[axis] >= 0)
        extra["output_size"] = size
        fragments = ["output_size", str(size[axis])]
    elif kind == "output_size_length":
        assume(cfg.transposed)
        # torch takes the spatial sizes, or the input's whole shape (with C, and N if batched)
        wrong = [n + 3, n + (1 if spec["batched"] else 2)] + ([n - 1] if n > 1 else [])
        extra["output_size"] = [4] * draw(st.sampled_from(wrong))
        fragments = ["output_size", _shown(extra["output_size"])]
    else:  # output_size_forward
        assume(not cfg.transposed)
        extra["output_size"] = [4] * n
        fragments = ["output_size"]
    mode = draw(st.sampled_from(["eager", "jit", "vmap"]))
    where = f"{cfg!r} input {shape} {np.dtype(dtype).name} {extra} {mode}"
    with pytest.raises(Exception) as info:
        _apply(cfg, shape, dtype, extra, mode)
    _check_message(info.value, fragments, where)
    torch_kw = _torch_kwargs(spec, spec["kwargs"])
    if torch_kw is not None and _have_torch():
        assert _torch_refuses(spec, torch_kw, shape, dtype, extra), f"{where}: torch accepts it"


def _apply(cfg, shape, dtype, extra: dict, mode: str):
    params = jconv.init(jax.random.key(0), cfg)
    kw = {"output_size": extra["output_size"]} if "output_size" in extra else {}
    raw = extra.get("raw")
    if raw is not None:
        x = {"list": np.zeros(shape).tolist(), "none": None, "str": "x"}[raw]
        return jconv.apply(params, x, **kw)
    x = jnp.zeros(shape, dtype)
    if mode == "jit":
        return jax.jit(lambda p, x: jconv.apply(p, x, **kw))(params, x)
    if mode == "vmap":
        return jax.vmap(lambda x: jconv.apply(params, x, **kw))(x[None])
    return jconv.apply(params, x, **kw)


# ---------------------------------------------------------------- jconv.functional
def _spoil_functional(draw, kind: str) -> None:
    spec = draw(specs())
    good = _cfg(spec, spec["kwargs"])
    weight, bias = list(good.weight_shape), [good.out_channels]
    if kind == "weight_rank":
        weight = weight[:-1] if draw(st.booleans()) else [*weight, 1]
        fragments = ["weight", str(weight)]
    elif kind == "weight_channels":
        weight[0 if good.transposed else 1] += draw(st.integers(1, 2))
        fragments = ["weight", str(weight)]
    else:
        bias = [good.out_channels + draw(st.sampled_from([1, 2] + [-1] * (good.out_channels > 1)))]
        fragments = ["bias", str(bias[0])]
    n, kw = spec["ndim"], spec["kwargs"]
    op = getattr(F, f"conv_transpose{n}d" if good.transposed else f"conv{n}d")
    args = {k: kw[k] for k in ("stride", "padding", "dilation", "groups")}
    if good.transposed:
        args["output_padding"] = kw["output_padding"]
    elif kw["padding_mode"] != "zeros":
        args["padding_mode"] = kw["padding_mode"]
    where = f"{op.__name__} input {spec['shape']} weight {weight} bias {bias} {args}"
    x = jnp.zeros(spec["shape"], jnp.float32)
    with pytest.raises(Exception) as info:
        op(x, jnp.zeros(weight), jnp.zeros(bias), **args)
    _check_message(info.value, fragments, where)


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _examples(config, tier: str) -> int:
    total = os.environ.get("JCONV_FUZZ_EXAMPLES")
    if config.getoption("--fuzz-long"):
        return -(-int(total or 5000) // len(KINDS))
    return -(-int(total) // len(KINDS)) if total else PER_KIND[tier]


@pytest.mark.parametrize("tier", ["fast", pytest.param("slow", marks=pytest.mark.slow)])
@pytest.mark.parametrize("target,kind", KINDS, ids=[f"{t}-{k}" for t, k in KINDS])
def test_fuzz_spoiled_calls_get_clear_errors(request, target, kind, tier):
    spoil = {"config": _spoil_config, "input": _spoil_input, "functional": _spoil_functional}
    ran = []

    @settings(
        max_examples=_examples(request.config, tier),
        deadline=None,
        derandomize=not request.config.getoption("--fuzz-long"),
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=True,
    )
    @given(st.data())
    def fuzz(data):
        spoil[target](data.draw, kind)
        ran.append(1)

    fuzz()
    assert len(ran) >= _examples(request.config, tier)

"""``python -m jconv bench --models``: whole training steps of common architectures.

Six small networks written once against a tiny op set (``nn``) and run four
ways, with the same weights and the same step:

* ``jconv``: ``jconv.apply`` (NCHW, the planner's choice);
* ``torch``: torch eager, ``torch.nn.functional`` (when installed);
* ``flax``: NHWC ``lax.conv_general_dilated`` / ``lax.conv_transpose`` with HWIO
  kernels, what ``flax.linen.Conv``/``nnx.Conv`` and ``ConvTranspose`` lower to;
* ``lax``: plain NCHW ``lax`` calls with torch's weight layout.

A step is forward, loss, gradients of every parameter and an SGD update, one
jitted program; ``inference`` is the forward alone. Reported: median step and
inference milliseconds from shuffled, interleaved rounds, the step's compile
seconds (each column from empty caches) and the compiled temporary memory
(``memory_analysis().temp_size_in_bytes``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jconv
from jconv.bench import Progress, _timer, geomean, interleaved, write_report
from jconv.lowering import custom
from jconv.lowering.tune import temp_bytes
from jconv.lowering.xla import dimension_numbers, transposed_pads

# ---------------------------------------------------------------------------
# the architectures: layer configs, and a forward written against ``nn``


def _resnet(width: int = 32):
    w = [width, 2 * width, 4 * width, 8 * width]
    layers = {"stem": jconv.Conv2d(3, w[0], 7, stride=2, padding=3)}
    blocks = []
    for i, c in enumerate(w):
        cin = w[max(i - 1, 0)]
        stride = 1 if i == 0 else 2
        for j in range(2):
            name = f"s{i}b{j}"
            s, ci = (stride, cin) if j == 0 else (1, c)
            layers[f"{name}.conv1"] = jconv.Conv2d(ci, c, 3, stride=s, padding=1)
            layers[f"{name}.conv2"] = jconv.Conv2d(c, c, 3, padding=1)
            if s != 1 or ci != c:
                layers[f"{name}.down"] = jconv.Conv2d(ci, c, 1, stride=s)
            blocks.append(name)
    layers["head"] = jconv.Conv2d(w[-1], 10, 1)

    def forward(nn, x):
        x = nn.relu(nn.conv("stem", x))
        for name in blocks:
            h = nn.relu(nn.bnorm(nn.conv(f"{name}.conv1", x)))
            h = nn.bnorm(nn.conv(f"{name}.conv2", h))
            short = nn.conv(f"{name}.down", x) if f"{name}.down" in layers else x
            x = nn.relu(h + short)
        return nn.pool(nn.conv("head", x))

    return layers, forward


def _mobilenet():
    # (expansion, out channels, stride) per inverted-residual block
    spec = [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 64, 2), (6, 64, 1)]
    layers = {"stem": jconv.Conv2d(3, 32, 3, stride=2, padding=1)}
    blocks, cin = [], 32
    for i, (t, c, s) in enumerate(spec):
        hidden = cin * t
        if t != 1:
            layers[f"b{i}.expand"] = jconv.Conv2d(cin, hidden, 1, bias=False)
        layers[f"b{i}.dw"] = jconv.Conv2d(
            hidden, hidden, 3, stride=s, padding=1, groups=hidden, bias=False
        )
        layers[f"b{i}.project"] = jconv.Conv2d(hidden, c, 1, bias=False)
        blocks.append((f"b{i}", s == 1 and cin == c))
        cin = c
    layers["last"] = jconv.Conv2d(cin, 256, 1)
    layers["head"] = jconv.Conv2d(256, 10, 1)

    def forward(nn, x):
        x = nn.relu6(nn.conv("stem", x))
        for name, residual in blocks:
            h = x
            if f"{name}.expand" in layers:
                h = nn.relu6(nn.bnorm(nn.conv(f"{name}.expand", h)))
            h = nn.relu6(nn.bnorm(nn.conv(f"{name}.dw", h)))
            h = nn.bnorm(nn.conv(f"{name}.project", h))
            x = x + h if residual else h
        return nn.pool(nn.conv("head", nn.relu6(nn.conv("last", x))))

    return layers, forward


def _convnext(dims=(48, 96, 192), depth: int = 2):
    layers = {"stem": jconv.Conv2d(3, dims[0], 4, stride=4)}
    for i, c in enumerate(dims):
        if i:
            layers[f"down{i}"] = jconv.Conv2d(dims[i - 1], c, 2, stride=2)
        for j in range(depth):
            layers[f"s{i}b{j}.dw"] = jconv.Conv2d(c, c, 7, padding=3, groups=c)
            layers[f"s{i}b{j}.pw1"] = jconv.Conv2d(c, 4 * c, 1)
            layers[f"s{i}b{j}.pw2"] = jconv.Conv2d(4 * c, c, 1)
    layers["head"] = jconv.Conv2d(dims[-1], 10, 1)

    def forward(nn, x):
        x = nn.norm(nn.conv("stem", x))
        for i in range(len(dims)):
            if i:
                x = nn.conv(f"down{i}", nn.norm(x))
            for j in range(depth):
                h = nn.norm(nn.conv(f"s{i}b{j}.dw", x))
                x = x + nn.conv(f"s{i}b{j}.pw2", nn.gelu(nn.conv(f"s{i}b{j}.pw1", h)))
        return nn.pool(nn.conv("head", nn.norm(x)))

    return layers, forward


def _encoder(conv, cin: int, widths) -> dict:
    """A UNet's encoder: an input conv, then per level a strided 3x3 down and a 3x3."""
    layers = {"in": conv(cin, widths[0], 3, padding=1)}
    for i, c in enumerate(widths):
        if i:
            layers[f"down{i}"] = conv(widths[i - 1], c, 3, stride=2, padding=1)
        layers[f"enc{i}"] = conv(c, c, 3, padding=1)
    return layers


def _encode(nn, x, levels: int, norm: bool) -> list:
    """The encoder's skips, deepest last."""
    x = nn.relu(nn.conv("in", x))
    skips = []
    for i in range(levels):
        if i:
            x = nn.relu(nn.conv(f"down{i}", x))
        h = nn.conv(f"enc{i}", x)
        x = nn.relu(nn.bnorm(h) if norm else h)
        skips.append(x)
    return skips


def _unet(widths=(16, 32, 64, 128)):
    layers = _encoder(jconv.Conv2d, 3, widths)
    for i in reversed(range(len(widths) - 1)):
        c = widths[i]
        layers[f"up{i}"] = jconv.ConvTranspose2d(widths[i + 1], c, 2, stride=2)
        layers[f"dec{i}a"] = jconv.Conv2d(2 * c, c, 3, padding=1)
        layers[f"dec{i}b"] = jconv.Conv2d(c, c, 3, padding=1)
    layers["out"] = jconv.Conv2d(widths[0], 3, 1)

    def forward(nn, x):
        skips = _encode(nn, x, len(widths), norm=True)
        x = skips[-1]
        for i in reversed(range(len(widths) - 1)):
            x = nn.cat(nn.conv(f"up{i}", x), skips[i])
            x = nn.relu(nn.bnorm(nn.conv(f"dec{i}a", x)))
            x = nn.relu(nn.conv(f"dec{i}b", x))
        return nn.conv("out", x)

    return layers, forward


def _audio(latent: int = 64, widths=(256, 128, 64, 32), strides=(8, 4, 2)):
    layers = {"in": jconv.Conv1d(latent, widths[0], 7, padding=3)}
    for i, s in enumerate(strides):
        cin, c = widths[i], widths[i + 1]
        layers[f"up{i}"] = jconv.ConvTranspose1d(cin, c, 2 * s, stride=s, padding=s // 2)
        for d in (1, 3, 9):
            layers[f"res{i}d{d}.conv"] = jconv.Conv1d(c, c, 7, padding=3 * d, dilation=d)
            layers[f"res{i}d{d}.pw"] = jconv.Conv1d(c, c, 1)
    layers["out"] = jconv.Conv1d(widths[-1], 1, 7, padding=3)

    def forward(nn, x):
        x = nn.conv("in", x)
        for i in range(len(strides)):
            x = nn.conv(f"up{i}", nn.leaky(x))
            for d in (1, 3, 9):
                h = nn.conv(f"res{i}d{d}.conv", nn.leaky(x))
                x = x + nn.conv(f"res{i}d{d}.pw", nn.leaky(h))
        return nn.tanh(nn.conv("out", nn.leaky(x)))

    return layers, forward


def _unet3d(widths=(16, 32, 64)):
    layers = _encoder(jconv.Conv3d, 1, widths)
    for i in reversed(range(len(widths) - 1)):
        c = widths[i]
        layers[f"up{i}"] = jconv.ConvTranspose3d(
            widths[i + 1], c, 3, stride=2, padding=1, output_padding=1
        )
        layers[f"dec{i}"] = jconv.Conv3d(2 * c, c, 3, padding=1)
    layers["out"] = jconv.Conv3d(widths[0], 1, 1)

    def forward(nn, x):
        skips = _encode(nn, x, len(widths), norm=False)
        x = skips[-1]
        for i in reversed(range(len(widths) - 1)):
            x = nn.cat(nn.relu(nn.conv(f"up{i}", x)), skips[i])
            x = nn.relu(nn.conv(f"dec{i}", x))
        return nn.conv("out", x)

    return layers, forward


# name: (builder, input shape, loss kind); "classes" -> cross-entropy, else MSE
MODELS: dict[str, tuple[Callable, tuple[int, ...], str]] = {
    "resnet": (_resnet, (8, 3, 96, 96), "classes"),
    "mobilenetv2": (_mobilenet, (16, 3, 96, 96), "classes"),
    "convnext": (_convnext, (8, 3, 96, 96), "classes"),
    "unet": (_unet, (4, 3, 96, 96), "mse"),
    "audio1d": (_audio, (4, 64, 64), "mse"),
    "unet3d": (_unet3d, (2, 1, 32, 32, 32), "mse"),
}
# the (model, dtype) pairs that ``--models`` runs by default
RUNS = tuple((m, "float32") for m in MODELS) + (
    ("resnet", "bfloat16"),
    ("audio1d", "bfloat16"),
    ("unet", "bfloat16"),
)


# ---------------------------------------------------------------------------
# the op set, for JAX (either channel layout) and torch


class JaxNN:
    """Elementwise and shape ops over a channel axis, and ``conv`` by layer name."""

    def __init__(self, params: dict, conv: Callable, channel_axis: int):
        self.params, self._conv, self.c = params, conv, channel_axis

    def conv(self, name, x):
        return self._conv(self.params[name], x)

    relu = staticmethod(jax.nn.relu)
    relu6 = staticmethod(jax.nn.relu6)
    gelu = staticmethod(functools.partial(jax.nn.gelu, approximate=False))  # torch default
    tanh = staticmethod(jnp.tanh)

    @staticmethod
    def leaky(x):
        return jax.nn.leaky_relu(x, 0.1)

    def norm(self, x):  # layer norm over channels, no affine (ConvNeXt's LayerNorm)
        return _standardize(x, self.c, 1e-6)

    def bnorm(self, x):  # batch statistics per channel, no affine (BatchNorm, training)
        return _standardize(x, self._other_axes(x, 0), 1e-5)

    def cat(self, a, b):
        return jnp.concatenate([a, b], axis=self.c)

    def pool(self, x):  # global mean -> (N, C)
        return x.astype(jnp.float32).mean(self._other_axes(x, 1))

    def _other_axes(self, x, start: int) -> tuple:
        """The axes from ``start`` on but the channel axis."""
        return tuple(a for a in range(start, x.ndim) if a != x.ndim + self.c and a != self.c)


def _standardize(x, axes, eps):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axes, keepdims=True)
    var = jnp.square(x32 - mean).mean(axes, keepdims=True)
    return ((x32 - mean) * lax.rsqrt(var + eps)).astype(x.dtype)


def _loss_jax(out, target, kind):
    out = out.astype(jnp.float32)
    if kind == "classes":
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), target[:, None], 1))
    return jnp.mean(jnp.square(out - target.astype(jnp.float32)))


def _lax_conv(cfg, layout: str) -> Callable:
    """``cfg`` as one lax call; ``layout`` "nchw" (torch weights) or "nhwc" (flax kernels)."""
    n = cfg.ndim
    sp = "DHW"[3 - n :]
    dn = dimension_numbers(n) if layout == "nchw" else ("N" + sp + "C", sp + "IO", "N" + sp + "C")
    bias_shape = (-1,) + (1,) * n if layout == "nchw" else (-1,)
    if cfg.transposed:
        pads = transposed_pads(cfg.kernel_size, cfg.dilation, cfg.pads, cfg.output_padding)

        def conv(x, w):  # nchw: torch's (I, O, *k), flipped by lax; nhwc: flax's (*k, I, O)
            return lax.conv_transpose(
                x, w, cfg.stride, pads, rhs_dilation=cfg.dilation, dimension_numbers=dn,
                transpose_kernel=layout == "nchw",
            )  # fmt: skip
    else:

        def conv(x, w):
            return lax.conv_general_dilated(
                x, w, cfg.stride, cfg.pads, rhs_dilation=cfg.dilation,
                dimension_numbers=dn, feature_group_count=cfg.groups,
            )  # fmt: skip

    def f(p, x):
        y = conv(x, p["weight"])
        return y if p["bias"] is None else y + p["bias"].reshape(bias_shape)

    return f


def _to_flax_kernel(cfg, w):
    """torch's weight as the HWIO kernel flax stores (transposed: flipped, (*k, I, O))."""
    n = cfg.ndim
    sp = tuple(range(2, 2 + n))
    if cfg.transposed:  # flax's ConvTranspose(transpose_kernel=False) convolves unflipped
        return jnp.transpose(jnp.flip(w, sp), sp + (0, 1))
    return jnp.transpose(w, sp + (1, 0))


def _sgd(params, grads, lr=1e-3):
    return jax.tree.map(
        lambda p, g: (p - lr * g.astype(jnp.float32)).astype(p.dtype), params, grads
    )


def jax_variant(name: str, layers: dict, forward: Callable, kind: str, params: dict):
    """(step, inference, params, to_input) for the "jconv", "flax" or "lax" column."""
    if name == "jconv":
        p, convs, axis = params, None, 1
    else:
        nhwc = name == "flax"
        convs = {k: _lax_conv(cfg, "nhwc" if nhwc else "nchw") for k, cfg in layers.items()}
        kernel = _to_flax_kernel if nhwc else (lambda cfg, w: w)
        p = {
            k: {"weight": kernel(cfg, params[k].weight), "bias": params[k].bias}
            for k, cfg in layers.items()
        }
        axis = -1 if nhwc else 1

    def to_input(a):
        return jnp.moveaxis(a, 1, -1) if axis == -1 and a.ndim > 2 else a

    def model(p, x):
        nn = JaxNN(p, jconv.apply if convs is None else None, axis)
        if convs is not None:
            nn.conv = lambda k, x: convs[k](p[k], x)
        return forward(nn, x)

    @jax.jit
    def step(p, x, t):
        value, grads = jax.value_and_grad(lambda p: _loss_jax(model(p, x), t, kind))(p)
        return _sgd(p, grads), value

    return step, jax.jit(model), p, to_input


class TorchNN:
    def __init__(self, params: dict, layers: dict):
        import torch

        self.F, self.torch, self.params, self.layers = torch.nn.functional, torch, params, layers

    def conv(self, name, x):
        cfg, (w, b) = self.layers[name], self.params[name]
        kw = dict(stride=cfg.stride, padding=[lo for lo, _ in cfg.pads], dilation=cfg.dilation,
                  groups=cfg.groups)  # fmt: skip
        if cfg.transposed:
            op = getattr(self.F, f"conv_transpose{cfg.ndim}d")
            return op(x, w, b, output_padding=cfg.output_padding, **kw)
        return getattr(self.F, f"conv{cfg.ndim}d")(x, w, b, **kw)

    def relu(self, x):
        return self.F.relu(x)

    def relu6(self, x):
        return self.F.relu6(x)

    def gelu(self, x):
        return self.F.gelu(x)

    def tanh(self, x):
        return self.torch.tanh(x)

    def leaky(self, x):
        return self.F.leaky_relu(x, 0.1)

    def norm(self, x):
        x32 = x.float()
        mean = x32.mean(1, keepdim=True)
        var = (x32 - mean).square().mean(1, keepdim=True)
        return ((x32 - mean) * self.torch.rsqrt(var + 1e-6)).to(x.dtype)

    def bnorm(self, x):
        return self.F.batch_norm(x.float(), None, None, training=True, eps=1e-5).to(x.dtype)

    def cat(self, a, b):
        return self.torch.cat([a, b], 1)

    def pool(self, x):
        return x.float().mean(tuple(range(2, x.ndim)))


def torch_variant(layers, forward, kind, params, dtype):
    """(step, inference, loss of the first step) for torch eager, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    tdtype = getattr(torch, dtype)

    def tensor(a):
        return torch.tensor(np.asarray(a, np.float32)).to(tdtype)

    tp = {
        k: (
            tensor(p.weight).requires_grad_(),
            None if p.bias is None else tensor(p.bias).requires_grad_(),
        )
        for k, p in params.items()
    }
    leaves = [t for pair in tp.values() for t in pair if t is not None]
    nn = TorchNN(tp, layers)

    def loss(x, t):
        out = forward(nn, x).float()
        if kind == "classes":
            return torch.nn.functional.cross_entropy(out, t)
        return (out - t.float()).square().mean()

    def step(x, t):
        for p in leaves:
            p.grad = None
        value = loss(x, t)
        value.backward()
        with torch.no_grad():
            for p in leaves:
                p.sub_(1e-3 * p.grad)
        return value.detach()

    def inference(x):
        with torch.no_grad():
            return forward(nn, x)

    return step, inference, tensor


def _data(shape, kind, out_shape, dtype, key=3):
    kx, kt = jax.random.split(jax.random.key(key))
    x = jax.random.normal(kx, shape, dtype)
    if kind == "classes":
        t = jax.random.randint(kt, (shape[0],), 0, 10)
    else:
        t = jax.random.normal(kt, out_shape, dtype)
    return x, t


def build(model: str, dtype: str, *, algorithm: str = "auto", scale: float = 1.0):
    """The model's layers (configs in ``dtype``), forward, loss kind, params and data.

    ``scale`` shrinks the input's spatial size (tests use small models).
    """
    builder, shape, kind = MODELS[model]
    layers, forward = builder()
    jd = jnp.dtype(dtype)
    layers = {k: dataclasses.replace(c, dtype=jd, algorithm=algorithm) for k, c in layers.items()}
    shape = shape[:2] + tuple(max(8, int(s * scale)) for s in shape[2:])
    keys = jax.random.split(jax.random.key(0), len(layers))
    params = {k: jconv.init(key, c) for key, (k, c) in zip(keys, layers.items())}
    nn = JaxNN(params, jconv.apply, 1)
    out_shape = jax.eval_shape(lambda x: forward(nn, x), jax.ShapeDtypeStruct(shape, jd)).shape
    x, t = _data(shape, kind, out_shape, jd)
    return layers, forward, kind, params, x, t


# ---------------------------------------------------------------------------
# running and reporting

COLUMNS = ("jconv", "torch", "flax", "lax")


def run_model(model: str, dtype: str, repeat: int, *, scale: float = 1.0, columns=COLUMNS) -> dict:
    """Times one model's training step and inference in every column; losses of step one."""
    layers, forward, kind, params, x, t = build(model, dtype, scale=scale)
    timers, compile_s, memory, losses = {}, {}, {}, {}
    for name in columns:
        if name == "torch":
            tv = torch_variant(layers, forward, kind, params, dtype)
            if tv is None:
                continue
            step, infer, tensor = tv
            import torch

            xt = tensor(x)
            tt = torch.tensor(np.asarray(t)).long() if kind == "classes" else tensor(t)
            losses[name] = float(step(xt, tt))
            timers[name] = (_timer(step, xt, tt), _timer(infer, xt))
            continue
        step, infer, p, to_input = jax_variant(name, layers, forward, kind, params)
        xi, ti = to_input(x), to_input(t)
        _cold()
        begin = time.perf_counter()
        step_c = step.lower(p, xi, ti).compile()
        compile_s[name] = time.perf_counter() - begin
        infer_c = infer.lower(p, xi).compile()
        memory[name] = {"step": temp_bytes(step_c), "inference": temp_bytes(infer_c)}
        losses[name] = float(step_c(p, xi, ti)[1])
        timers[name] = (_timer(step_c, p, xi, ti), _timer(infer_c, p, xi))
    ms = _interleave(timers, repeat)
    row = {
        "model": model,
        "dtype": dtype,
        "input_shape": list(x.shape),
        "layers": len(layers),
        "params": int(sum(jconv.num_params(c) for c in layers.values())),
        "ms": ms,
        "compile_s": compile_s,
        "temp_bytes": memory,
        "first_loss": losses,
    }
    for other in columns[1:]:
        if other in ms:
            row[f"jconv_vs_{other}"] = {m: ms[other][m] / ms["jconv"][m] for m in ms["jconv"]}
    if "flax" in compile_s:
        row["compile_vs_flax"] = compile_s["jconv"] / compile_s["flax"]
        row["memory_vs_flax"] = memory["jconv"]["step"] / max(memory["flax"]["step"], 1)
    return row


def _cold() -> None:
    """Each column's step compiles from empty caches: the first one compiled had paid
    for tracing what later ones reused (jnp's jitted helpers, jconv's output types)."""
    jax.clear_caches()
    custom.clear_cache()


def _interleave(timers: dict, repeat: int) -> dict:
    """Median ms of each column's (step, inference), shuffled and interleaved."""
    ms = interleaved(timers, repeat)
    return {k: {"step": v["forward"], "inference": v["forward_backward"]} for k, v in ms.items()}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for other in COLUMNS[1:]:
        for m in ("step", "inference"):
            vals = [r[f"jconv_vs_{other}"][m] for r in rows if f"jconv_vs_{other}" in r]
            if vals:
                out[f"vs_{other}_{m}_geomean"] = geomean(vals)
                out[f"vs_{other}_{m}_min"] = min(vals)
    comp = [r["compile_vs_flax"] for r in rows if "compile_vs_flax" in r]
    if comp:
        out["compile_vs_flax_max"] = max(comp)
        out["compile_vs_flax_geomean"] = geomean(comp)
    return out


def _fmt(row: dict) -> str:
    ms = row["ms"]
    parts = [f"{row['model']:12s} {row['dtype']:8s}"]
    for name in COLUMNS:
        if name in ms:
            parts.append(f"{name} {ms[name]['step']:7.1f}/{ms[name]['inference']:6.1f}")
    for other in COLUMNS[1:]:
        r = row.get(f"jconv_vs_{other}")
        if r:
            parts.append(f"vs {other} {r['step']:4.2f}x/{r['inference']:4.2f}x")
    if "compile_vs_flax" in row:
        parts.append(
            f"compile {row['compile_s']['jconv']:4.1f}s ({row['compile_vs_flax']:3.1f}x flax), "
            f"memory {row['memory_vs_flax']:3.1f}x flax"
        )
    return "  ".join(parts)


def run(args) -> int:
    if args.list:
        for m, d in RUNS:
            print(f"{m + ':' + d:20s} input {MODELS[m][1]}")
        return 0
    wanted = [s.strip() for s in args.cases.split(",")] if args.cases != "all" else None
    picked = [(m, d) for m, d in RUNS if wanted is None or m in wanted or f"{m}:{d}" in wanted]
    if not picked:
        known = ", ".join(MODELS) + " (or model:dtype, e.g. resnet:bfloat16)"
        print(f"no model matches {args.cases!r}; known: {known}", file=sys.stderr)
        return 2
    progress = Progress(len(picked))
    rows = []
    for m, d in picked:
        rows.append(run_model(m, d, args.repeat, scale=args.scale))
        progress.step(f"{m}:{d}")
        print(_fmt(rows[-1]), flush=True)
    summary = summarize(rows)
    print("ms: step/inference; ratios: the other column's time / jconv's (> 1: jconv faster)")
    print(json.dumps(summary, indent=1))
    report = {"repeat": args.repeat, "scale": args.scale, "summary": summary, "rows": rows}
    write_report(args.out, "models", report)
    return 0

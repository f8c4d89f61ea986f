"""Mutation check: break one capability at a time, run the fast tier, count what it catches.

Usage: ``python tools/mutation_check.py REPO PYTHON [FILTER]``. Each mutation edits
one line of a copy of REPO (torch parity of transposed convs, error messages, the
safetensors reader, each custom lowering's gradients, weight norm, state_dict
names, the framework modules, per-platform plans) and runs the fast tier there
(``pytest -n 2 -x -m "not slow"``); a mutation the tier does not fail is a gap in it. FILTER runs only the mutations whose
description contains it.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MUTATIONS = [
    # (capability, file, old, new)
    (
        "transposed conv parity: kernel not flipped",
        "jconv/lowering/xla.py",
        "w = jnp.flip(w.reshape(groups * per_group, cin // groups, *kernel), range(2, nd + 2))",
        "w = w.reshape(groups * per_group, cin // groups, *kernel)",
    ),
    (
        "transposed conv parity: output_padding on the low side",
        "jconv/lowering/xla.py",
        "(d * (k - 1) - lo, d * (k - 1) - hi + op)",
        "(d * (k - 1) - lo + op, d * (k - 1) - hi)",
    ),
    (
        "error message: out_channels",
        "jconv/config.py",
        'f"out_channels must be positive, got out_channels={out_ch}"',
        'f"out_channels is wrong: {out_ch}"',
    ),
    (
        "error message: padding_mode",
        "jconv/padding.py",
        'f"padding_mode must be one of {list(PADDING_MODES)}, but got "',
        'f"bad padding mode "',
    ),
    (
        "safetensors reader: offsets of the data",
        "jconv/checkpoint.py",
        "flat = np.frombuffer(data, dtype, count=count, offset=8 + n + start)",
        "flat = np.frombuffer(data, dtype, count=count, offset=8 + n)",
    ),
    (
        "safetensors reader: bf16 read as f16",
        "jconv/checkpoint.py",
        '"BF16": np.dtype(ml_dtypes.bfloat16)',
        '"BF16": np.dtype("<f2")',
    ),
    (
        "safetensors reader: coverage check dropped",
        "jconv/checkpoint.py",
        "    if end != buffer:\n",
        "    if False:\n",
    ),
    (
        "shift lowering: input gradient",
        "jconv/lowering/taps.py",
        "return shift_conv(dy, flip_swap(w, spec.groups), transposed_spec(spec, w.shape[2:]))",
        "return shift_conv(dy, w, transposed_spec(spec, w.shape[2:]))",
    ),
    (
        "tapgrad lowering: weight gradient",
        "jconv/lowering/taps.py",
        "    return dw.reshape(cout, cin // g, *kernel)\n",
        "    return 1.001 * dw.reshape(cout, cin // g, *kernel)\n",
    ),
    (
        "widened lowering: weight gradient",
        "jconv/lowering/widened.py",
        "    return total.astype(dy.dtype)\n",
        "    return (total * 1.001).astype(dy.dtype)\n",
    ),
    (
        "widened lowering: input gradient",
        "jconv/lowering/widened.py",
        "return conv(dy, flip_swap(w, spec.groups), transposed_spec(spec, w.shape[2:]))",
        "return conv(dy, flip_swap(w, spec.groups), spec)",
    ),
    (
        "subpixel lowering: input gradient",
        "jconv/lowering/subpixel.py",
        "    return xla.conv(dy, w, _forward_spec(spec))\n",
        "    return 0.999 * xla.conv(dy, w, _forward_spec(spec))\n",
    ),
    (
        "subpixel lowering: weight gradient",
        "jconv/lowering/subpixel.py",
        "return custom.transpose(lambda v: conv_transpose(x, v, spec), shape, dy.dtype, dy)",
        "return custom.transpose(lambda v: conv_transpose(x, v, spec), shape, dy.dtype, -dy)",
    ),
    (
        "depthwise weight gradient",
        "jconv/lowering/taps.py",
        "    return dw.reshape(g * mult, 1, *kernel).astype(dy.dtype)\n",
        "    return (1.01 * dw.reshape(g * mult, 1, *kernel)).astype(dy.dtype)\n",
    ),
    (
        "weight norm fold",
        "jconv/weightnorm.py",
        "return (v64 * (g64.reshape(norm.shape) / norm)).astype(v.dtype)",
        "return (v64 * g64.reshape(norm.shape)).astype(v.dtype)",
    ),
    (
        "state_dict names",
        "jconv/io.py",
        'return "".join(key_name(p) + "." for p in path)',
        'return "".join(key_name(p) + "_" for p in path)',
    ),
    (
        "ecosystem: NNX Sequential layers not named by index",
        "jconv/nnx.py",
        'if not (p == "layers" and isinstance(nodes.get(path[:i]), nnx.Sequential))',
        'if not (p == "layer" and isinstance(nodes.get(path[:i]), nnx.Sequential))',
    ),
    (
        "ecosystem: Equinox Sequential layers not named by index",
        "jconv/eqx.py",
        'if not (part == "layers" and isinstance(node, equinox.nn.Sequential)):',
        "if True:",
    ),
    (
        "ecosystem: Linen Sequential layers_N kept as layers.N",
        "jconv/linen.py",
        'return m.group(2) if m.group(1) == "layers" else',
        'return m.group(2) if m.group(1) == "nothing" else',
    ),
    (
        "ecosystem: NNX load writes no weight",
        "jconv/nnx.py",
        "m.weight[...] = params[name].weight",
        "m.weight[...] = m.weight[...]",
    ),
    (
        "ecosystem: the CPU plan on every platform",
        "jconv/core.py",
        "name = lowering.plan(cfg, shape, dtype, backend, place.devices, place.sharded)",
        'name = lowering.plan(cfg, shape, dtype, "cpu", place.devices, place.sharded)',
    ),
]

FAST = ["-m", "pytest", "-n", "2", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow"]


def main():
    src, python = Path(sys.argv[1]), sys.argv[2]
    rows = []
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    for i, (what, path, old, new) in enumerate(MUTATIONS):
        if only not in what:
            continue
        work = Path(tempfile.gettempdir()) / f"jconv-mutant{i}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__"))
        text = (work / path).read_text()
        assert text.count(old) == 1, (what, old)
        (work / path).write_text(text.replace(old, new))
        start = time.time()
        done = subprocess.run(
            [python, *FAST],
            cwd=work,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(work)},
        )
        failed = [ln for ln in done.stdout.splitlines() if ln.startswith("FAILED")]
        rows.append(
            dict(
                what=what,
                caught=done.returncode != 0,
                seconds=round(time.time() - start),
                by=failed[:1],
            )
        )
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"caught {sum(r['caught'] for r in rows)} of {len(rows)}")


if __name__ == "__main__":
    main()

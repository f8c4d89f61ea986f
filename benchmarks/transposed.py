"""Transposed convolution on CPU: jconv's lowerings against each other and torch.

    python benchmarks/transposed.py            # forward, and forward + backward

Times are the best of ``--repeat`` runs after a warm-up, in milliseconds, with
the ratio to torch (when installed; > 1 means slower than torch). Every lowering
is checked against "xla" before it is timed.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jconv

# (batch, in, out, size, kernel, stride, padding, output_padding)
CASES = [
    (16, 128, 64, 16, 4, 2, 1, 0),  # the case in issue 3 (a DCGAN / U-Net decoder step)
    (8, 64, 32, 32, 3, 2, 1, 1),
    (4, 32, 16, 64, 4, 2, 1, 0),
    (16, 64, 64, 16, 3, 1, 1, 0),
]


def best(fn, *args, repeat: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def jconv_times(case, algorithm, x, repeat):
    n, cin, cout, size, k, s, p, op = case
    cfg = jconv.ConvTranspose2d(cin, cout, k, s, p, op, algorithm=algorithm)
    params = jconv.init(jax.random.key(0), cfg)
    fwd = jax.jit(jconv.apply)
    both = jax.jit(jax.grad(lambda p, x: jnp.sum(jconv.apply(p, x) ** 2), argnums=(0, 1)))
    return fwd(params, x), best(fwd, params, x, repeat=repeat), best(both, params, x, repeat=repeat)


def torch_times(case, x, repeat):
    try:
        import torch
    except ImportError:
        return None
    n, cin, cout, size, k, s, p, op = case
    mod = torch.nn.ConvTranspose2d(cin, cout, k, s, p, op)
    xt = torch.tensor(np.asarray(x), requires_grad=True)

    def fwd():
        with torch.no_grad():
            return mod(xt)

    def both():
        xt.grad = None
        mod.zero_grad()
        (mod(xt) ** 2).sum().backward()
        return xt.grad

    return best(fwd, repeat=repeat), best(both, repeat=repeat)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, best of {args.repeat}, ms")
    for case in CASES:
        n, cin, cout, size, k, s, p, op = case
        x = jax.random.normal(jax.random.key(1), (n, cin, size, size))
        ref = torch_times(case, x, args.repeat)
        print(f"\n{n}x{cin}x{size}x{size} -> {cout}, k={k} s={s} p={p} op={op}")
        base = None
        for algorithm in ("xla", "subpixel"):
            y, fwd, both = jconv_times(case, algorithm, x, args.repeat)
            if base is None:
                base = y
            err = float(jnp.max(jnp.abs(y - base)) / jnp.max(jnp.abs(base)))
            if err > 1e-5:
                raise SystemExit(f"{algorithm} differs from xla by {err:.1e}")
            line = f"  {algorithm:9s} forward {fwd:8.1f}   forward+backward {both:8.1f}"
            if ref:
                line += f"   (x torch: {fwd / ref[0]:.2f}, {both / ref[1]:.2f})"
            print(line)
        if ref:
            print(f"  {'torch':9s} forward {ref[0]:8.1f}   forward+backward {ref[1]:8.1f}")


if __name__ == "__main__":
    main()

"""The seed walkthrough in the terminal: ``python -m jconv``.

A 5×5 one-channel image with a line, a 3×3 kernel, then stride, padding and
several input and output channels, each step printed with its shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jconv


def _show(a) -> str:
    return np.array2string(np.asarray(a), precision=4, suppress_small=True, floatmode="fixed")


def line_image() -> jax.Array:
    """(1, 1, 5, 5) zeros with a horizontal line of ones in row 2."""
    return jnp.zeros((1, 1, 5, 5)).at[0, 0, 2, :].set(1.0)


def two_channel_image() -> jax.Array:
    """(1, 2, 5, 5): row 2 holds −2 in channel 0 and 1 in channel 1."""
    image = jnp.zeros((1, 2, 5, 5))
    return image.at[0, 0, 2, :].set(-2.0).at[0, 1, 2, :].set(1.0)


def walkthrough(seed: int = 0) -> str:
    """The whole walkthrough as text."""
    key = jax.random.key(seed)
    out: list[str] = []
    say = out.append

    image = line_image()
    say("jconv: PyTorch's convolutions as pure JAX functions\n")
    say("1. A 5x5 one-channel image, shape (N, C, H, W) = (1, 1, 5, 5), a line in row 2:")
    say(_show(image[0, 0]))

    cfg = jconv.Conv2d(in_channels=1, out_channels=1, kernel_size=3)
    params = jconv.init(key, cfg)
    y = jconv.apply(params, image)
    say(f"\n2. {cfg}: weight {params.weight.shape} = (out_channels, in_channels/groups, kH, kW),")
    say("   drawn like torch from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 1*3*3:")
    say(_show(params.weight[0, 0]))
    say(f"   output {y.shape}; each output row is constant, because the image is the same")
    say("   along every row:")
    say(_show(y[0, 0]))

    cfg = jconv.Conv2d(1, 1, 3, stride=2)
    y = jconv.apply(jconv.init(key, cfg), image)
    say(f"\n3. {cfg}: the kernel jumps 2 pixels, output {y.shape}:")
    say(_show(y[0, 0]))

    cfg = jconv.Conv2d(1, 1, 3, stride=2, padding=1)
    y = jconv.apply(jconv.init(key, cfg), image)
    n_old, p, k, s, d = 5, 1, 3, 2, 1
    n = n_old + 2 * p
    formula = (n_old + 2 * p - d * (k - 1) - 1) // s + 1
    say(f"\n4. {cfg}: zeros around the image, N = N_old + 2*padding = {n_old} + 2*{p} = {n}")
    say(
        f"   out = floor((N_old + 2p - d(k-1) - 1)/s) + 1 = floor(({n_old} + 2 - 2 - 1)/2) + 1 = {formula}"
    )
    say(f"   jconv.output_shape gives {jconv.output_shape(cfg, image.shape)}. The edge columns")
    say("   now see padded zeros, so the line's row is no longer constant:")
    say(_show(y[0, 0]))

    cfg = jconv.Conv2d(in_channels=1, out_channels=3, kernel_size=3)
    params = jconv.init(key, cfg)
    y = jconv.apply(params, image)
    say(f"\n5. {cfg}: one kernel per output channel, weight {params.weight.shape},")
    say(f"   output {y.shape}, one 3x3 map per channel.")

    image2 = two_channel_image()
    say("\n6. A two-channel image (1, 2, 5, 5): row 2 is -2 in channel 0 and 1 in channel 1.")
    wrong = jconv.Conv2d(in_channels=3, out_channels=1, kernel_size=3)
    try:
        jconv.apply(jconv.init(key, wrong), image2)
    except ValueError as err:
        say(f"   Feeding it to {wrong} is a mistake, and jconv says so:")
        say(f"   ValueError: {err}")

    cfg = jconv.Conv2d(in_channels=2, out_channels=3, kernel_size=3)
    params = jconv.init(key, cfg)
    y = jconv.apply(params, image2)
    say(f"\n7. {cfg}: weight {params.weight.shape}; every output channel sums over both")
    say(f"   input channels. Output {y.shape}, channel 0:")
    say(_show(y[0, 0]))
    say(
        "\nThe weight layout is (out_channels, in_channels/groups, kH, kW), as in torch,"
        "\nso torch weights load unchanged with jconv.load_state_dict."
    )
    return "\n".join(out)

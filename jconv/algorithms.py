"""The names of the lowerings a config may force, and the check of that choice.

A leaf: :mod:`jconv.config` validates ``algorithm=`` with it, and the planner
(:mod:`jconv.lowering`) reads the same names, so neither imports the other.
"""

from __future__ import annotations

ALGORITHMS = (
    "auto",
    "xla",
    "subpixel",
    "shift",
    "tapgrad",
    "matmul",
    "fft",
    "shift_fft",
    "pergroup",
    "s2d",
    "fold",
    "widened",
    "unfold",
)
TRANSPOSED_ONLY = ("subpixel",)
FORWARD_ONLY = (
    "shift",
    "tapgrad",
    "matmul",
    "fft",
    "shift_fft",
    "s2d",
    "fold",
    "widened",
    "unfold",
)


def check_algorithm(algorithm: object, transposed: bool, kernel_size: tuple[int, ...] = ()) -> None:
    """Raises ValueError unless ``algorithm`` names a lowering that fits the config."""
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"algorithm must be one of {list(ALGORITHMS)}, got algorithm={algorithm!r}"
        )
    if algorithm in TRANSPOSED_ONLY and not transposed:
        raise ValueError(
            f"algorithm={algorithm!r} computes transposed convolutions only; use "
            "algorithm='auto' or 'xla' here"
        )
    if algorithm in FORWARD_ONLY and transposed:
        raise ValueError(
            f"algorithm={algorithm!r} computes forward convolutions only; use "
            "algorithm='auto', 'xla', 'subpixel' or 'pergroup' for a transposed one"
        )
    if algorithm == "fold" and len(kernel_size) != 3:
        raise ValueError(
            f"algorithm='fold' computes 3-d convolutions only, got a {len(kernel_size)}-d "
            "kernel; use algorithm='auto' or 'xla'"
        )
    if algorithm == "matmul" and any(k != 1 for k in kernel_size):
        raise ValueError(
            f"algorithm='matmul' needs a 1x1 kernel, got kernel_size={kernel_size}; use "
            "algorithm='auto' or 'xla'"
        )


def fits(algorithm: str, transposed: bool, kernel_size) -> bool:
    """Whether :func:`check_algorithm` accepts ``algorithm`` for such a config."""
    try:
        check_algorithm(algorithm, transposed, tuple(kernel_size))
    except ValueError:
        return False
    return True

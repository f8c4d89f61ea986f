"""jconv: PyTorch's convolutions as pure JAX functions.

>>> cfg = jconv.Conv2d(in_channels=1, out_channels=1, kernel_size=3, stride=2, padding=1)
>>> params = jconv.init(jax.random.key(0), cfg)   # weight (1, 1, 3, 3), bias (1,)
>>> y = jconv.apply(params, x)                    # x (N, 1, H, W) -> (N, 1, H', W')
"""

from jconv import export as _export  # noqa: F401  (registers Params for jax.export)
from jconv import functional
from jconv.checkpoint import load, save
from jconv.config import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvNd,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    ConvTransposeNd,
)
from jconv.io import load_state_dict, state_dict
from jconv.layer import Params, apply, init
from jconv.lowering.tune import autotune, set_autotune
from jconv.lowering.tune import report as autotune_report
from jconv.shapes import flops, num_params, output_shape, receptive_field
from jconv.weightnorm import weight_norm

__version__ = "0.1.0"

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvNd",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "ConvTransposeNd",
    "Params",
    "apply",
    "autotune",
    "autotune_report",
    "flops",
    "functional",
    "init",
    "load",
    "load_state_dict",
    "num_params",
    "output_shape",
    "receptive_field",
    "save",
    "set_autotune",
    "state_dict",
    "weight_norm",
]

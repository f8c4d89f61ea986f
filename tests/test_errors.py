"""Invalid inputs: each raises jconv's own clear error, before lax sees anything.

Every message names the parameter (or the array) and the value received, and
none carries lax or XLA wording.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
import jconv.functional as F

LAX_WORDS = ("lax", "xla", "conv_general_dilated", "dimension_numbers", "lhs", "rhs", "stablehlo")


def _apply(cfg, shape, dtype=jnp.float32, **kw):
    params = jconv.init(jax.random.key(0), cfg)
    return jconv.apply(params, jnp.zeros(shape, dtype), **kw)


def _jit_apply(cfg, shape):
    params = jconv.init(jax.random.key(0), cfg)
    return jax.jit(jconv.apply)(params, jnp.zeros(shape))


_FILES = {"dir": None}  # set to each test's tmp_path by an autouse fixture
_CKPT_CFG = jconv.Conv2d(3, 8, 3)


@pytest.fixture(autouse=True)
def _files_in(tmp_path):
    _FILES["dir"] = tmp_path


def _written(data: bytes) -> str:
    path = _FILES["dir"] / "model.safetensors"
    path.write_bytes(data)
    return str(path)


def _valid_file(**arrays) -> str:
    """A real safetensors file holding the checkpoint config's arrays, edited by ``arrays``."""
    from safetensors.numpy import save_file

    good = {"weight": np.zeros((8, 3, 3, 3), np.float32), "bias": np.zeros(8, np.float32)}
    path = str(_FILES["dir"] / "model.safetensors")
    save_file({k: v for k, v in {**good, **arrays}.items() if v is not None}, path)
    return path


def _header_file(header: bytes, claimed: int | None = None) -> str:
    """A file whose header is ``header`` and whose length field says ``claimed``."""
    n = len(header) if claimed is None else claimed
    return _written(struct.pack("<Q", n) + header + bytes(16))


def _torch_save_zip() -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # the layout torch.save writes
        z.writestr("archive/data.pkl", pickle.dumps({"weight": 0}))
        z.writestr("archive/version", "3\n")
    return _written(buf.getvalue())


def _vmap_apply(cfg, shape):
    params = jconv.init(jax.random.key(0), cfg)
    return jax.vmap(jconv.apply, in_axes=(None, 0))(params, jnp.zeros(shape))


CATALOGUE = [
    # --- configs
    (
        "groups not dividing in_channels",
        lambda: jconv.Conv2d(3, 4, 3, groups=2),
        ValueError,
        ["in_channels", "groups=2", "in_channels=3"],
    ),
    (
        "groups not dividing out_channels",
        lambda: jconv.Conv2d(4, 3, 3, groups=2),
        ValueError,
        ["out_channels", "out_channels=3"],
    ),
    (
        "groups zero",
        lambda: jconv.Conv2d(4, 4, 3, groups=0),
        ValueError,
        ["groups", "positive", "groups=0"],
    ),
    ("negative in_channels", lambda: jconv.Conv1d(-1, 4, 3), ValueError, ["in_channels=-1"]),
    ("zero out_channels", lambda: jconv.Conv1d(2, 0, 3), ValueError, ["out_channels=0"]),
    ("zero kernel", lambda: jconv.Conv2d(1, 1, 0), ValueError, ["kernel_size", "kernel_size=0"]),
    (
        "kernel of the wrong length",
        lambda: jconv.Conv2d(1, 1, (3, 3, 3)),
        ValueError,
        ["kernel_size", "(3, 3, 3)", "2 ints"],
    ),
    ("float kernel", lambda: jconv.Conv2d(1, 1, 3.0), TypeError, ["kernel_size", "3.0"]),
    ("bool stride", lambda: jconv.Conv2d(1, 1, 3, stride=True), TypeError, ["stride", "True"]),
    (
        "zero stride",
        lambda: jconv.Conv3d(1, 1, 3, stride=(1, 0, 1)),
        ValueError,
        ["stride", "(1, 0, 1)"],
    ),
    (
        "zero dilation",
        lambda: jconv.Conv1d(1, 1, 3, dilation=0),
        ValueError,
        ["dilation", "dilation=0"],
    ),
    ("negative padding", lambda: jconv.Conv2d(1, 1, 3, padding=-1), ValueError, ["padding", "-1"]),
    (
        "negative pair",
        lambda: jconv.Conv2d(1, 1, 3, padding=((0, -2), (1, 1))),
        ValueError,
        ["padding", "-2"],
    ),
    (
        "unknown padding string",
        lambda: jconv.Conv2d(1, 1, 3, padding="full"),
        ValueError,
        ["padding", "'full'", "'same'"],
    ),
    (
        "same with stride",
        lambda: jconv.Conv2d(1, 1, 3, padding="same", stride=2),
        ValueError,
        ["padding='same'", "strided", "stride=(2, 2)"],
    ),
    (
        "causal in 2-d",
        lambda: jconv.Conv2d(1, 1, 3, padding="causal"),
        ValueError,
        ["causal", "1-d"],
    ),
    (
        "padding of the wrong length",
        lambda: jconv.Conv2d(1, 1, 3, padding=(1, 1, 1)),
        ValueError,
        ["padding", "(1, 1, 1)"],
    ),
    (
        "mixed ints and pairs",
        lambda: jconv.Conv2d(1, 1, 3, padding=(1, (1, 2))),
        ValueError,
        ["padding", "mix"],
    ),
    (
        "bad pair length",
        lambda: jconv.Conv2d(1, 1, 3, padding=((1, 2, 3), (1, 1))),
        ValueError,
        ["padding", "(1, 2, 3)"],
    ),
    (
        "unknown padding mode",
        lambda: jconv.Conv2d(1, 1, 3, padding_mode="zero"),
        ValueError,
        ["padding_mode", "'zero'", "'zeros'"],
    ),
    ("bias not a bool", lambda: jconv.Conv2d(1, 1, 3, bias="yes"), TypeError, ["bias", "'yes'"]),
    (
        "integer param dtype",
        lambda: jconv.Conv2d(1, 1, 3, dtype=jnp.int32),
        TypeError,
        ["dtype", "int32"],
    ),
    (
        "unknown dtype",
        lambda: jconv.Conv2d(1, 1, 3, compute_dtype="float33"),
        TypeError,
        ["compute_dtype", "float33"],
    ),
    (
        "bad precision",
        lambda: jconv.Conv2d(1, 1, 3, precision="ultra"),
        ValueError,
        ["precision", "'ultra'"],
    ),
    (
        "initializer not callable",
        lambda: jconv.Conv2d(1, 1, 3, weight_init=0.1),
        TypeError,
        ["weight_init", "0.1"],
    ),
    (
        "unknown algorithm",
        lambda: jconv.Conv2d(1, 1, 3, algorithm="winograd"),
        ValueError,
        ["algorithm", "'winograd'"],
    ),
    # --- init
    (
        "init without a config",
        lambda: jconv.init(jax.random.key(0), {"in_channels": 1}),
        TypeError,
        ["jconv.init", "dict"],
    ),
    (
        "init with a bad key",
        lambda: jconv.init("seed", jconv.Conv1d(1, 1, 1)),
        TypeError,
        ["PRNG key", "'seed'"],
    ),
    # --- apply
    (
        "wrong channel count",
        lambda: _apply(jconv.Conv2d(3, 1, 3), (1, 2, 5, 5)),
        ValueError,
        ["expected input[1, 2, 5, 5] to have 3 channels, but got 2 channels instead"],
    ),
    (
        "channels-last input",
        lambda: _apply(jconv.Conv2d(3, 1, 3), (1, 5, 5, 3)),
        ValueError,
        ["channels-last", "jnp.moveaxis(x, -1, 1)"],
    ),
    (
        "channels-last unbatched",
        lambda: _apply(jconv.Conv2d(3, 1, 3), (5, 5, 3)),
        ValueError,
        ["channels-last", "jnp.moveaxis(x, -1, 0)"],
    ),
    (
        "input rank too low",
        lambda: _apply(jconv.Conv2d(1, 1, 3), (5, 5)),
        ValueError,
        ["3-d unbatched", "4-d batched", "[5, 5]"],
    ),
    (
        "input rank too high",
        lambda: _apply(jconv.Conv1d(1, 1, 3), (1, 1, 5, 5)),
        ValueError,
        ["2-d unbatched", "[1, 1, 5, 5]"],
    ),
    (
        "kernel larger than padded input",
        lambda: _apply(jconv.Conv2d(1, 1, 7), (1, 1, 5, 5)),
        ValueError,
        ["(5 x 5)", "(7 x 7)", "padded input"],
    ),
    (
        "dilated kernel larger",
        lambda: _apply(jconv.Conv1d(1, 1, 3, dilation=3), (1, 6)),
        ValueError,
        ["(6)", "(7)"],
    ),
    (
        "empty spatial dimension",
        lambda: _apply(jconv.Conv2d(1, 1, 1), (1, 1, 0, 5)),
        ValueError,
        ["(0 x 5)"],
    ),
    (
        "reflect pad as large as the input",
        lambda: _apply(jconv.Conv2d(1, 1, 3, padding=5, padding_mode="reflect"), (1, 1, 5, 5)),
        ValueError,
        ["reflect", "(5, 5)", "smaller than the input"],
    ),
    (
        "circular pad larger than the input",
        lambda: _apply(jconv.Conv2d(1, 1, 3, padding=6, padding_mode="circular"), (1, 1, 5, 5)),
        ValueError,
        ["circular", "(6, 6)", "wrap"],
    ),
    (
        "integer input",
        lambda: _apply(jconv.Conv2d(1, 1, 3), (1, 1, 5, 5), jnp.int32),
        TypeError,
        ["floating-point", "int32"],
    ),
    (
        "output_size on a plain conv",
        lambda: _apply(jconv.Conv2d(1, 1, 3), (1, 1, 5, 5), output_size=(3, 3)),
        TypeError,
        ["output_size", "transposed"],
    ),
    (
        "wrong channels under jit",
        lambda: _jit_apply(jconv.Conv2d(3, 1, 3), (1, 2, 5, 5)),
        ValueError,
        ["to have 3 channels, but got 2"],
    ),
    (
        "too small under vmap",
        lambda: _vmap_apply(jconv.Conv2d(1, 1, 5), (4, 1, 3, 3)),
        ValueError,
        ["(3 x 3)", "(5 x 5)"],
    ),
    (
        "params that are not Params",
        lambda: jconv.apply({"weight": jnp.zeros((1, 1, 3))}, jnp.zeros((1, 1, 5))),
        TypeError,
        ["Params", "dict"],
    ),
    (
        "weight of the wrong shape",
        lambda: jconv.apply(
            jconv.Params(jnp.zeros((1, 2, 3)), jnp.zeros(1), jconv.Conv1d(1, 1, 3)),
            jnp.zeros((1, 5)),
        ),
        ValueError,
        ["weight", "(1, 2, 3)", "(1, 1, 3)"],
    ),
    (
        "bias missing",
        lambda: jconv.apply(
            jconv.Params(jnp.zeros((1, 1, 3)), None, jconv.Conv1d(1, 1, 3)), jnp.zeros((1, 5))
        ),
        ValueError,
        ["bias=True", "no bias"],
    ),
    # --- functional
    (
        "functional weight rank",
        lambda: F.conv2d(jnp.zeros((1, 2, 5, 5)), jnp.zeros((3, 2, 3))),
        ValueError,
        ["conv2d", "weight", "[3, 2, 3]"],
    ),
    (
        "functional groups and weight",
        lambda: F.conv2d(jnp.zeros((1, 2, 5, 5)), jnp.zeros((3, 1, 3, 3)), groups=2),
        ValueError,
        ["groups=2", "[3, 1, 3, 3]"],
    ),
    (
        "functional bias size",
        lambda: F.conv2d(jnp.zeros((1, 2, 5, 5)), jnp.zeros((3, 2, 3, 3)), jnp.zeros(2)),
        ValueError,
        ["bias", "3 elements", "[2]"],
    ),
    (
        "functional same with stride",
        lambda: F.conv1d(jnp.zeros((1, 2, 5)), jnp.zeros((3, 2, 3)), padding="same", stride=2),
        ValueError,
        ["conv1d:", "padding='same'", "strided"],
    ),
    (
        "functional channel mismatch",
        lambda: F.conv3d(jnp.zeros((1, 2, 4, 4, 4)), jnp.zeros((3, 3, 1, 1, 1))),
        ValueError,
        ["to have 3 channels, but got 2"],
    ),
    # --- transposed
    (
        "output_padding not below stride or dilation",
        lambda: jconv.ConvTranspose2d(1, 1, 3, stride=2, output_padding=2),
        ValueError,
        ["output padding must be smaller than either stride or dilation", "(2, 2)"],
    ),
    (
        "negative output_padding",
        lambda: jconv.ConvTranspose1d(1, 1, 3, stride=2, output_padding=-1),
        ValueError,
        ["output_padding", "output_padding=-1"],
    ),
    (
        "transposed groups not dividing in_channels",
        lambda: jconv.ConvTranspose2d(3, 4, 3, groups=2),
        ValueError,
        ["ConvTranspose2d", "in_channels=3", "groups=2"],
    ),
    (
        "transposed string padding",
        lambda: jconv.ConvTranspose2d(1, 1, 3, padding="same"),
        ValueError,
        ["padding='same'", "transposed", "ints"],
    ),
    (
        "transposed padding mode",
        lambda: jconv.ConvTranspose3d(1, 1, 3, padding_mode="reflect"),
        ValueError,
        ['Only "zeros" padding mode', "ConvTranspose3d", "'reflect'"],
    ),
    (
        "subpixel on a forward conv",
        lambda: jconv.Conv2d(1, 1, 3, algorithm="subpixel"),
        ValueError,
        ["algorithm='subpixel'", "transposed"],
    ),
    (
        "output_size out of range",
        lambda: _apply(
            jconv.ConvTranspose2d(1, 1, 3, stride=2, padding=1), (1, 1, 4, 4), output_size=(9, 9)
        ),
        ValueError,
        ["(9, 9)", "from (7, 7) to (8, 8)"],
    ),
    (
        "output_size of the wrong length",
        lambda: _apply(
            jconv.ConvTranspose2d(1, 1, 3, stride=2), (1, 1, 4, 4), output_size=(9, 9, 9)
        ),
        ValueError,
        ["output_size", "2 or 4 elements", "got 3"],
    ),
    (
        "output_size not ints",
        lambda: _apply(jconv.ConvTranspose1d(1, 1, 3, stride=2), (1, 1, 4), output_size=9.0),
        TypeError,
        ["output_size", "9.0"],
    ),
    (
        "transposed output empty",
        lambda: _apply(jconv.ConvTranspose2d(1, 1, 3, padding=3), (1, 1, 1, 1)),
        ValueError,
        ["(1 x 1)", "(-3 x -3)", "too small"],
    ),
    (
        "transposed empty input",
        lambda: _apply(jconv.ConvTranspose2d(1, 1, 3), (1, 1, 0, 3)),
        ValueError,
        ["(0 x 3)", "empty"],
    ),
    (
        "transposed wrong channels",
        lambda: _apply(jconv.ConvTranspose2d(3, 4, 3), (1, 2, 5, 5)),
        ValueError,
        ["weight of shape [3, 4, 3, 3]", "to have 3 channels, but got 2"],
    ),
    (
        "a conv weight loaded into a transposed config",
        lambda: jconv.load_state_dict(
            jconv.ConvTranspose2d(2, 4, 3),
            {"weight": np.zeros((4, 2, 3, 3)), "bias": np.zeros(4)},
        ),
        ValueError,
        ["size mismatch for weight", "(4, 2, 3, 3)", "(2, 4, 3, 3)"],
    ),
    (
        "functional transposed weight rank",
        lambda: F.conv_transpose2d(jnp.zeros((1, 2, 5, 5)), jnp.zeros((2, 3, 3))),
        ValueError,
        ["conv_transpose2d", "(in_channels, out_channels/groups", "[2, 3, 3]"],
    ),
    (
        "functional transposed bias size",
        lambda: F.conv_transpose2d(jnp.zeros((1, 2, 5, 5)), jnp.zeros((2, 3, 3, 3)), jnp.zeros(2)),
        ValueError,
        ["conv_transpose2d", "3 elements", "[2]"],
    ),
    (
        "functional output_padding with stride 1",
        lambda: F.conv_transpose1d(jnp.zeros((1, 2, 5)), jnp.zeros((2, 3, 3)), output_padding=1),
        ValueError,
        ["conv_transpose1d:", "output padding must be smaller"],
    ),
    (
        "functional groups traced under jit",
        lambda: jax.jit(F.conv_transpose1d)(jnp.zeros((1, 2, 5)), jnp.zeros((2, 3, 3)), groups=1),
        TypeError,
        ["groups", "static"],
    ),
    # --- load_state_dict
    (
        "state_dict with a wrong shape",
        lambda: jconv.load_state_dict(
            jconv.Conv2d(1, 2, 3), {"weight": np.zeros((2, 1, 5, 5)), "bias": np.zeros(2)}
        ),
        ValueError,
        ["size mismatch for weight", "(2, 1, 5, 5)", "(2, 1, 3, 3)"],
    ),
    (
        "state_dict missing a key",
        lambda: jconv.load_state_dict(jconv.Conv2d(1, 2, 3), {"weight": np.zeros((2, 1, 3, 3))}),
        ValueError,
        ['Missing key(s) in state_dict: "bias"'],
    ),
    (
        "state_dict with an extra key",
        lambda: jconv.load_state_dict(
            jconv.Conv2d(1, 2, 3, bias=False),
            {"weight": np.zeros((2, 1, 3, 3)), "running_mean": np.zeros(2)},
        ),
        ValueError,
        ['Unexpected key(s) in state_dict: "running_mean"'],
    ),
    (
        "state_dict that is not a mapping",
        lambda: jconv.load_state_dict(jconv.Conv2d(1, 2, 3), [np.zeros(3)]),
        TypeError,
        ["mapping", "list"],
    ),
    # --- inputs and parameters that are not arrays
    (
        "input given as a list",
        lambda: jconv.apply(jconv.init(jax.random.key(0), jconv.Conv1d(1, 1, 3)), [[1.0] * 5]),
        TypeError,
        ["Conv1d", "input must be an array", "got list", "jnp.asarray(x)"],
    ),
    (
        "input None",
        lambda: jconv.apply(jconv.init(jax.random.key(0), jconv.Conv1d(1, 1, 3)), None),
        TypeError,
        ["input must be an array", "got NoneType"],
    ),
    (
        "functional weight None",
        lambda: F.conv1d(jnp.zeros((1, 1, 5)), None),
        TypeError,
        ["conv1d:", "weight must be an array", "got NoneType"],
    ),
    (
        "functional bias as a list",
        lambda: F.conv1d(jnp.zeros((1, 1, 5)), jnp.zeros((2, 1, 3)), [0.0, 0.0]),
        TypeError,
        ["conv1d:", "bias must be an array", "got list"],
    ),
    (
        "functional integer input, named as the op",
        lambda: F.conv2d(jnp.zeros((1, 1, 5, 5), jnp.int32), jnp.zeros((1, 1, 3, 3))),
        TypeError,
        ["conv2d expects a floating-point input", "int32", "astype(jnp.float32)"],
    ),
    (
        "params with an integer weight",
        lambda: jconv.apply(
            jconv.Params(
                weight=jnp.zeros((1, 1, 3), jnp.int32),
                bias=None,
                cfg=jconv.Conv1d(1, 1, 3, bias=False),
            ),
            jnp.zeros((1, 1, 5)),
        ),
        TypeError,
        ["Conv1d", "weight must be a floating-point array", "got int32"],
    ),
    (
        "a config called like a torch module",
        lambda: jconv.Conv2d(1, 1, 3)(jnp.zeros((1, 1, 5, 5))),
        TypeError,
        ["Conv2d config holds no weights", "jconv.init(key, cfg)", "jconv.apply(params, x)"],
    ),
    (
        "misspelt keyword",
        lambda: jconv.ConvTranspose2d(1, 1, 3, stride=2, output_pading=1),
        TypeError,
        ["ConvTranspose2d.__init__()", "'output_pading'", "did you mean 'output_padding'?"],
    ),
    (
        "state_dict value that is a ragged list",
        lambda: jconv.load_state_dict(
            jconv.Conv1d(1, 1, 2), {"weight": [[[1.0, 2.0]], [[3.0]]], "bias": np.zeros(1)}
        ),
        ValueError,
        ["could not read weight (list) as an array"],
    ),
    (
        "init under jit with the config traced",
        lambda: jax.jit(jconv.init)(jax.random.key(0), jconv.Conv2d(3, 4, 3)),
        TypeError,
        ["jconv.init got a traced config", "static_argnums=1"],
    ),
    # --- shape helpers
    (
        "output_shape of a shape with a float",
        lambda: jconv.output_shape(jconv.Conv1d(1, 1, 3), (1, 1, 5.0)),
        TypeError,
        ["Conv1d", "input shape[2] must be an int", "5.0"],
    ),
    (
        "output_shape of a string",
        lambda: jconv.output_shape(jconv.Conv1d(1, 1, 3), "1,1,5"),
        TypeError,
        ["input shape must be a tuple of ints", "'1,1,5'"],
    ),
    (
        "output_shape of a negative size",
        lambda: jconv.output_shape(jconv.Conv1d(1, 1, 3), (1, 1, -5)),
        ValueError,
        ["negative size", "(1, 1, -5)"],
    ),
    (
        "num_params of something not a config",
        lambda: jconv.num_params({"in_channels": 3}),
        TypeError,
        ["jconv.num_params expects a jconv config", "got dict"],
    ),
    # --- checkpoint files (jconv.load / jconv.save)
    (
        "checkpoint that is a pickle",
        lambda: jconv.load(_written(pickle.dumps({"weight": 0})), _CKPT_CFG),
        ValueError,
        ["model.safetensors is a pickle", "never unpickles", "safetensors.torch.save_file"],
    ),
    (
        "checkpoint written by torch.save",
        lambda: jconv.load(_torch_save_zip(), _CKPT_CFG),
        ValueError,
        ["torch.save checkpoint", "weights_only=True", "safetensors.torch.save_file"],
    ),
    (
        "checkpoint that is a .npy array",
        lambda: jconv.load(_written(b"\x93NUMPY\x01\x00" + bytes(120)), _CKPT_CFG),
        ValueError,
        ["is a .npy file, not safetensors"],
    ),
    (
        "checkpoint shorter than its length field",
        lambda: jconv.load(_written(b"\x10\x00\x00"), _CKPT_CFG),
        ValueError,
        ["not a valid safetensors file", "it has 3 bytes", "8-byte header length"],
    ),
    (
        "checkpoint header longer than the file",
        lambda: jconv.load(_header_file(b"{}", claimed=2**40), _CKPT_CFG),
        ValueError,
        ["not a valid safetensors file", "header claims 1099511627776 bytes", "has 18"],
    ),
    (
        "checkpoint header that is not JSON",
        lambda: jconv.load(_header_file(b"{weight: F32"), _CKPT_CFG),
        ValueError,
        ["not a valid safetensors file", "the header is not JSON"],
    ),
    (
        "checkpoint tensor of an unknown dtype",
        lambda: jconv.load(
            _header_file(b'{"weight": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 16]}}'),
            _CKPT_CFG,
        ),
        ValueError,
        ["not a valid safetensors file", "'weight' has an unknown dtype 'Q4'"],
    ),
    (
        "checkpoint tensor with a negative shape",
        lambda: jconv.load(
            _header_file(b'{"weight": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}'),
            _CKPT_CFG,
        ),
        ValueError,
        ["not a valid safetensors file", "'weight' has an invalid shape [-4]"],
    ),
    (
        "checkpoint with a wrong kernel size",
        lambda: jconv.load(_valid_file(weight=np.zeros((8, 3, 5, 5), np.float32)), _CKPT_CFG),
        ValueError,
        ["size mismatch for weight", "(8, 3, 5, 5)", "the shape in Conv2d is (8, 3, 3, 3)"],
    ),
    (
        "checkpoint without the bias",
        lambda: jconv.load(_valid_file(bias=None), _CKPT_CFG),
        ValueError,
        ['Missing key(s) in state_dict: "bias"'],
    ),
    (
        "checkpoint with integer values",
        lambda: jconv.load(_valid_file(bias=np.zeros(8, np.int64)), _CKPT_CFG),
        ValueError,
        ["dtype mismatch for bias", "int64", "floating-point"],
    ),
    (
        "checkpoint with a layer the config lacks",
        lambda: jconv.load(_valid_file(**{"bn.running_mean": np.zeros(8, np.float32)}), _CKPT_CFG),
        ValueError,
        ['Unexpected key(s) in state_dict: "bn.running_mean"'],
    ),
    (
        "checkpoint loaded into something not a config",
        lambda: jconv.load(_valid_file(), "Conv2d"),
        TypeError,
        ["cfg_tree must be a config", "found str at 'the root'"],
    ),
    (
        "save of a tree holding a stranger",
        lambda: jconv.save(
            _FILES["dir"] / "out.safetensors",
            {"conv": jconv.init(jax.random.key(0), _CKPT_CFG), "act": "relu"},
        ),
        TypeError,
        ["tree must be Params", "found str at 'act'"],
    ),
    (
        "save with metadata that is not strings",
        lambda: jconv.save(
            _FILES["dir"] / "out.safetensors",
            jconv.init(jax.random.key(0), _CKPT_CFG),
            metadata={"epoch": 3},
        ),
        TypeError,
        ["metadata must map strings to strings", "{'epoch': 3}"],
    ),
    (
        "config tree with a stranger",
        lambda: jconv.load_state_dict({"0": jconv.Conv2d(1, 2, 3), "1": "relu"}, {}),
        TypeError,
        ["'1'", "str"],
    ),
]


@pytest.mark.parametrize("name,fn,exc,parts", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_invalid_input_gets_a_clear_error(name, fn, exc, parts):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    # option values that are public names (lax.Precision, the 'xla' lowering) are not leaks
    lowered = msg.replace("lax.Precision", "").replace("'xla'", "").lower()
    for word in LAX_WORDS:
        assert word not in lowered, (word, msg)


def test_catalogue_is_large_and_distinct():
    assert len(CATALOGUE) >= 40
    assert len({c[0] for c in CATALOGUE}) == len(CATALOGUE)


def test_checks_survive_python_O(tmp_path):
    """No validation uses assert: the same errors fire under ``python -O``."""
    import subprocess
    import sys

    code = (
        "import jconv\n"
        "try:\n    jconv.Conv2d(3, 4, 3, groups=2)\nexcept ValueError as e:\n    print('raised', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert "raised Conv2d: in_channels must be divisible by groups" in out.stdout, out.stderr


def test_no_assert_statements_in_the_package():
    import ast
    import pathlib

    root = pathlib.Path(jconv.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        asserts = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
        assert not asserts, f"{path.name} validates with assert on lines {asserts}"

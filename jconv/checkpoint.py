"""Checkpoints as safetensors files: ``save`` and ``load``.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes
of JSON (``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``)
and one data buffer. Nothing in it can run code. Files are written by the
``safetensors`` package. jconv reads a file once and checks every claim of its
header against the bytes before it builds a tensor from them, so a lying or
truncated file gets a precise ValueError. Pickles (``torch.save``,
``pickle.dump``) are recognized and refused, unopened, with a message saying how
to convert them. Loading either returns the whole tree or raises.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
import tempfile
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from jconv.io import load_state_dict, state_dict

# safetensors dtype codes as numpy dtypes (little-endian, as the format stores them)
_DTYPES = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "I16": np.dtype("<i2"), "U16": np.dtype("<u2"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I32": np.dtype("<i4"), "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"), "I64": np.dtype("<i8"), "U64": np.dtype("<u8"),
    "F64": np.dtype("<f8"),
}  # fmt: skip
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors package's own limit

_CONVERT = (
    "jconv.load reads safetensors files only and never unpickles. Convert the "
    "checkpoint once, where you trust it, with torch: "
    "`sd = torch.load(path, weights_only=True)` (for a whole pickled model, "
    "`sd = model.state_dict()`), then "
    "`safetensors.torch.save_file(sd, 'model.safetensors')`."
)


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:  # pragma: no cover - safetensors is a dependency
        raise ImportError(
            "jconv.save and jconv.load need the safetensors package: pip install safetensors"
        ) from None
    return safetensors


def _refuse_other_formats(path: str, data: bytes) -> None:
    """Raises ValueError, naming the format, for pickles, torch.save zips and numpy files."""
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()  # the directory only
        except zipfile.BadZipFile:
            names = []
        if any(n.endswith(".pkl") for n in names):
            raise ValueError(
                f"{path} is a torch.save checkpoint (a zip holding a pickle). {_CONVERT}"
            )
        raise ValueError(f"{path} is a zip archive (such as a .npz), not safetensors. {_CONVERT}")
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        raise ValueError(
            f"{path} is a pickle (torch.save's legacy format or pickle.dump); "
            f"loading it could run code, so jconv refuses it. {_CONVERT}"
        )
    if data[:6] == b"\x93NUMPY":
        raise ValueError(f"{path} is a .npy file, not safetensors. {_CONVERT}")


def _tensors(path: str, data: bytes) -> dict[str, np.ndarray]:
    """The tensors, once the header is checked to be well-formed and truthful."""

    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid safetensors file: {why}")

    if len(data) < 8:
        raise bad(f"it has {len(data)} bytes, fewer than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, _MAX_HEADER):
        raise bad(f"the header claims {n} bytes but the file has {len(data) - 8} after the length")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"the header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object")
    buffer, spans = len(data) - 8 - n, []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"the entry for {name!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise bad(f"{name!r} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise bad(f"{name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= buffer
        ):
            raise bad(
                f"{name!r} claims bytes {offsets!r} of a data buffer of {buffer} bytes "
                "(the file may be truncated)"
            )
        size = math.prod(shape) * _DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != size:
            raise bad(
                f"{name!r} is {dtype} {tuple(shape)}, {size} bytes, but its offsets "
                f"span {offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1], name, _DTYPES[dtype], tuple(shape)))
    spans.sort()
    end, tensors = 0, {}
    for start, stop, name, dtype, shape in spans:
        if start != end:
            raise bad(f"the data of {name!r} starts at byte {start}, expected {end}")
        end = stop
        count = math.prod(shape)
        flat = np.frombuffer(data, dtype, count=count, offset=8 + n + start)
        tensors[name] = flat.reshape(shape).copy()
    if end != buffer:
        raise bad(f"the tensors cover {end} bytes of a {buffer}-byte data buffer")
    return tensors


def save(path: str | os.PathLike, tree: Any, metadata: dict[str, str] | None = None) -> None:
    """Writes a tree of :class:`Params` to ``path`` as safetensors, with torch's names.

    ``safetensors.torch.load_file(path)`` gives a state_dict that a torch model with
    the same layers loads as it is. The file is written to a temporary name and
    renamed, so a failed save leaves no partial file.
    """
    st = _safetensors()
    flat = {k: np.ascontiguousarray(v) for k, v in state_dict(tree).items()}
    meta = {"format": "pt", **(metadata or {})}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise TypeError(f"metadata must map strings to strings, got {metadata!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"cannot save to {path}: it is a folder; give a file path such as "
            f"{os.path.join(path, 'model.safetensors')}"
        )
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path}: the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".jconv-", suffix=".safetensors")
    os.close(fd)
    try:
        st.numpy.save_file(flat, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file, by name, after every check in :func:`load`."""
    path = os.fspath(path)
    with open(path, "rb") as f:  # OSError for a missing file, a folder, no permission
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file (a device or a pipe?)")
        data = f.read()
    _refuse_other_formats(path, data)
    return _tensors(path, data)


def load(path: str | os.PathLike, cfg_tree: Any, strict: bool = True):
    """Params for ``cfg_tree`` from a safetensors file (jconv's or torch's).

    Same names and checks as :func:`jconv.load_state_dict`. Pickles and
    ``torch.save`` files are refused, never opened; a malformed or truncated file
    raises ValueError, a missing one OSError.
    """
    return load_state_dict(cfg_tree, read(path), strict=strict)

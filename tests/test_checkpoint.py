"""jconv.save / jconv.load: safetensors both ways, bit-exact, and safe on hostile files."""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv

TREE = {
    "stem": jconv.Conv2d(3, 8, 3, padding=1),
    "mix": jconv.Conv2d(8, 8, 3, groups=4, bias=False, padding_mode="reflect", padding=1),
    "seq": jconv.Conv1d(4, 2, 5, dtype=jnp.bfloat16),
    "vol": jconv.Conv3d(2, 2, (1, 2, 3), bias=False, dtype=jnp.float16),
    "up": [
        jconv.ConvTranspose1d(2, 3, 4, stride=2),
        jconv.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False),
        jconv.ConvTranspose3d(2, 4, 2, stride=2, groups=2),
    ],
}


def _params(seed=0):
    leaves, treedef = jax.tree.flatten(
        TREE, is_leaf=lambda c: isinstance(c, jconv.ConvNd | jconv.ConvTransposeNd)
    )
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jconv.init(k, c) for k, c in zip(keys, leaves)])


def _bits(a):
    a = np.asarray(a)
    return a.dtype.name, a.shape, a.view(np.uint8).tobytes()


def _save_valid(tmp_path, name="ok.safetensors"):
    path = tmp_path / name
    jconv.save(path, _params())
    return path


# ------------------------------------------------------------------ round trips


def test_round_trip_is_bit_exact_for_every_layer_kind_and_dtype(tmp_path):
    params = _params()
    path = tmp_path / "model.safetensors"
    jconv.save(path, params)
    back = jconv.load(path, TREE)
    want, got = jconv.state_dict(params), jconv.state_dict(back)
    assert sorted(want) == sorted(got)
    for key in want:
        assert _bits(got[key]) == _bits(want[key]), key
    assert back["up"][1].bias is None and back["seq"].weight.dtype == jnp.bfloat16
    assert jax.tree.structure(back) == jax.tree.structure(params)


def test_save_writes_torch_metadata_and_no_temporary_files(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    jconv.save(str(path), _params(), metadata={"note": "hello"})
    with safe_open(str(path), "numpy") as f:
        assert f.metadata() == {"format": "pt", "note": "hello"}
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_a_failed_save_leaves_nothing_behind(tmp_path):
    with pytest.raises(TypeError):
        jconv.save(tmp_path / "bad.safetensors", {"0": "not params"})
    with pytest.raises(TypeError, match="metadata"):
        jconv.save(tmp_path / "bad.safetensors", _params(), metadata={"n": 1})
    assert os.listdir(tmp_path) == []


def test_saving_to_a_folder_or_into_a_missing_one_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match="it is a folder; give a file path such as"):
        jconv.save(tmp_path, _params())
    with pytest.raises(FileNotFoundError, match="the folder .*absent does not exist"):
        jconv.save(tmp_path / "absent" / "m.safetensors", _params())
    assert os.listdir(tmp_path) == []


def test_torch_reads_jconv_files_and_jconv_reads_torch_files(tmp_path, torch):
    from safetensors.torch import load_file, save_file

    params = _params(3)
    path = tmp_path / "from_jconv.safetensors"
    jconv.save(path, params)
    loaded = load_file(str(path))
    conv = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False)
    conv.load_state_dict({"weight": loaded["up.1.weight"]})
    x = np.random.RandomState(0).standard_normal((1, 8, 5, 5)).astype(np.float32)
    want = conv(torch.tensor(x)).detach().numpy()
    got = jconv.apply(params["up"][1], x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert loaded["seq.weight"].dtype == torch.bfloat16

    module = torch.nn.Conv3d(2, 2, (1, 2, 3), bias=False, dtype=torch.float16)
    path = tmp_path / "from_torch.safetensors"
    save_file(module.state_dict(), str(path))
    params = jconv.load(path, TREE["vol"])
    assert _bits(params.weight) == _bits(module.weight.detach().numpy())


# ------------------------------------------------------------------ hostile files


def _refused(path, *parts, exc=ValueError):
    with pytest.raises(exc) as info:
        jconv.load(path, TREE)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    return str(info.value)


class _RunsCode:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_is_refused_and_its_code_never_runs(tmp_path):
    marker = str(tmp_path / "code_ran")
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"weight": _RunsCode(marker)}, protocol=4))
    msg = _refused(path, "pickle", "safetensors.torch.save_file", "weights_only=True")
    assert "never unpickles" in msg
    assert not os.path.exists(marker)


def test_a_torch_save_zip_is_refused_without_opening_its_pickle(tmp_path):
    marker = str(tmp_path / "code_ran")
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:  # the layout torch.save writes
        z.writestr("archive/data.pkl", pickle.dumps(_RunsCode(marker)))
        z.writestr("archive/version", "3\n")
    _refused(path, "torch.save checkpoint", "safetensors.torch.save_file")
    assert not os.path.exists(marker)
    other = tmp_path / "arrays.npz"
    np.savez(other, weight=np.zeros(3))
    _refused(other, "zip archive", "not safetensors")
    npy = tmp_path / "w.npy"
    np.save(npy, np.zeros(3))
    _refused(npy, ".npy")


def test_real_torch_save_files_are_refused(tmp_path, torch):
    sd = torch.nn.Conv2d(3, 8, 3).state_dict()
    for legacy in (False, True):
        path = tmp_path / f"legacy{legacy}.pt"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        _refused(path, "torch.save" if not legacy else "pickle")


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_refused(tmp_path, seed):
    rng = np.random.RandomState(seed)
    path = tmp_path / "noise"
    path.write_bytes(rng.bytes(rng.randint(0, 4096)))
    _refused(path, "not a valid safetensors file")


def test_every_truncation_is_refused(tmp_path):
    data = _save_valid(tmp_path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cuts = sorted(set(range(0, 8 + n + 16)) | set(range(8 + n, len(data), 97)))
    path = tmp_path / "cut.safetensors"
    for cut in cuts:
        path.write_bytes(data[:cut])
        _refused(path, "not a valid safetensors file")


def _rewrite(tmp_path, edit, name="lie.safetensors"):
    data = _save_valid(tmp_path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header = edit(header)
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return path


def _set(key, field, value):
    def edit(header):
        header[key][field] = value
        return header

    return edit


@pytest.mark.parametrize(
    "edit, part",
    [
        (_set("stem.weight", "shape", [8, 3, 3, 4]), "offsets span"),
        (_set("stem.weight", "dtype", "F64"), "offsets span"),
        (_set("stem.weight", "dtype", "Q4"), "unknown dtype"),
        (_set("stem.weight", "data_offsets", [0, 10**12]), "data buffer"),
        (_set("stem.weight", "data_offsets", [-4, 860]), "data buffer"),
        (_set("stem.weight", "shape", [-8, 3, 3, 3]), "invalid shape"),
        (_set("stem.bias", "data_offsets", [0, 32]), "starts at byte"),
        (lambda h: {**h, "stem.extra": {"dtype": "F32"}}, "exactly dtype, shape"),
        (lambda h: {**h, "__metadata__": {"format": 1}}, "__metadata__"),
        (lambda h: [1, 2], "not an object"),
        (lambda h: b"{not json", "not JSON"),
        (lambda h: b"\xff\xfe\x00", "not JSON"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_header_that_lies_is_refused(tmp_path, edit, part):
    _refused(_rewrite(tmp_path, edit), "not a valid safetensors file", part)


def test_a_header_length_beyond_the_file_is_refused(tmp_path):
    data = _save_valid(tmp_path).read_bytes()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    _refused(path, "the header claims")


def test_bytes_no_tensor_claims_are_refused(tmp_path):
    """Data past the last tensor (appended, or a tensor dropped from the header) is not
    silently ignored: the tensors must cover the whole data buffer."""
    data = _save_valid(tmp_path).read_bytes()
    path = tmp_path / "trailing.safetensors"
    path.write_bytes(data + b"\x00" * 16)
    _refused(path, "not a valid safetensors file", "the tensors cover")


def test_wrong_shapes_and_dtypes_in_a_valid_file_are_reported(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "wrong.safetensors"
    good = jconv.state_dict(_params())
    save_file({**good, "stem.weight": np.zeros((8, 3, 5, 5), np.float32)}, str(path))
    _refused(path, "size mismatch for stem.weight", "(8, 3, 5, 5)", "(8, 3, 3, 3)")
    save_file({**good, "stem.bias": np.zeros(8, np.int64)}, str(path))
    _refused(path, "dtype mismatch for stem.bias", "int64")


def test_missing_files_and_folders_raise_oserror(tmp_path):
    _refused(tmp_path / "absent.safetensors", exc=FileNotFoundError)
    _refused(tmp_path, exc=OSError)
    if os.path.exists("/dev/zero"):  # endless: refused before anything is read
        _refused("/dev/zero", "not a regular file", exc=OSError)


def test_random_header_mutations_never_escape_as_other_errors(tmp_path):
    """Flipped bytes anywhere in the header give a tree or a ValueError, nothing else."""
    data = _save_valid(tmp_path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    rng = random.Random(0)
    path = tmp_path / "mutant.safetensors"
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(150):
        mutant = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutant[rng.randrange(0, 8 + n)] = rng.randrange(256)
        path.write_bytes(bytes(mutant))
        try:
            tree = jconv.load(path, TREE)
        except ValueError:
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
            assert jax.tree.structure(tree) == jax.tree.structure(_params())
    assert outcomes["refused"] > 100, outcomes

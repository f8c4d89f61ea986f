"""load_state_dict and state_dict: torch's names, strict checks, every array kind."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv


def _sd(cfg):
    rs = np.random.RandomState(0)
    out = {"weight": rs.standard_normal(cfg.weight_shape).astype(np.float32)}
    if cfg.bias:
        out["bias"] = rs.standard_normal(cfg.bias_shape).astype(np.float32)
    return out


def test_load_from_numpy_and_jax():
    cfg = jconv.Conv2d(3, 4, 3)
    sd = _sd(cfg)
    for convert in (np.asarray, jnp.asarray):
        params = jconv.load_state_dict(cfg, {k: convert(v) for k, v in sd.items()})
        np.testing.assert_array_equal(params.weight, sd["weight"])
        np.testing.assert_array_equal(params.bias, sd["bias"])
        assert params.cfg == cfg


def test_load_from_torch_without_importing_it_ourselves():
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(2, 4, 3, groups=2, padding=1, padding_mode="reflect")
    cfg = jconv.Conv2d(2, 4, 3, groups=2, padding=1, padding_mode="reflect")
    params = jconv.load_state_dict(cfg, conv.state_dict())
    x = torch.randn(1, 2, 5, 5)
    np.testing.assert_allclose(
        jconv.apply(params, x.numpy()), conv(x).detach().numpy(), rtol=1e-5, atol=1e-6
    )
    # tensors that require grad, and bf16 tensors, load too
    params = jconv.load_state_dict(cfg, {"weight": conv.weight, "bias": conv.bias})
    np.testing.assert_array_equal(params.weight, conv.weight.detach().numpy())
    bf = jconv.Conv2d(2, 4, 3, groups=2, dtype=jnp.bfloat16)
    params = jconv.load_state_dict(
        bf, {k: v.to(torch.bfloat16) for k, v in conv.state_dict().items()}
    )
    chex.assert_type(params.weight, jnp.bfloat16)
    np.testing.assert_array_equal(
        np.asarray(params.weight, np.float32),
        conv.weight.to(torch.bfloat16).float().detach().numpy(),
    )


def test_dtype_follows_the_config():
    cfg = jconv.Conv1d(2, 2, 3, dtype=jnp.float16)
    params = jconv.load_state_dict(cfg, {k: v.astype(np.float64) for k, v in _sd(cfg).items()})
    chex.assert_type(params.weight, jnp.float16)


def test_tree_of_configs_with_dotted_names_round_trips():
    tree = {
        "0": jconv.Conv2d(3, 8, 3),
        "2": jconv.Conv2d(8, 8, 3, bias=False),
        "head": [jconv.Conv1d(8, 2, 1)],
    }
    sd = {}
    for name, cfg in (("0", tree["0"]), ("2", tree["2"]), ("head.0", tree["head"][0])):
        sd.update({f"{name}.{k}": v for k, v in _sd(cfg).items()})
    params = jconv.load_state_dict(tree, sd)
    assert params["2"].bias is None and isinstance(params["head"], list)
    back = jconv.state_dict(params)
    assert sorted(back) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


def test_strict_errors_list_everything_at_once():
    tree = {"0": jconv.Conv2d(3, 8, 3), "1": jconv.Conv2d(8, 4, 3)}
    sd = {
        "0.weight": np.zeros((8, 3, 3, 3)),
        "0.bias": np.zeros(8),
        "1.weight": np.zeros((4, 8, 5, 5)),
        "2.weight": np.zeros(1),
    }
    with pytest.raises(ValueError) as err:
        jconv.load_state_dict(tree, sd)
    msg = str(err.value)
    assert 'Missing key(s) in state_dict: "1.bias"' in msg
    assert 'Unexpected key(s) in state_dict: "2.weight"' in msg
    assert "size mismatch for 1.weight" in msg and "(4, 8, 5, 5)" in msg and "(4, 8, 3, 3)" in msg


def test_non_strict_ignores_unexpected_keys_only():
    cfg = jconv.Conv1d(1, 1, 2)
    sd = dict(_sd(cfg), extra=np.zeros(3))
    jconv.load_state_dict(cfg, sd, strict=False)
    with pytest.raises(ValueError, match="Missing key"):
        jconv.load_state_dict(cfg, {"weight": sd["weight"]}, strict=False)


def test_loaded_arrays_are_copies():
    cfg = jconv.Conv1d(1, 1, 2, bias=False)
    w = np.ones((1, 1, 2), np.float32)
    params = jconv.load_state_dict(cfg, {"weight": w})
    w[:] = 5
    np.testing.assert_array_equal(params.weight, np.ones((1, 1, 2)))


def test_state_dict_of_a_single_layer():
    params = jconv.init(jax.random.key(0), jconv.Conv3d(1, 2, 2))
    sd = jconv.state_dict(params)
    assert sorted(sd) == ["bias", "weight"] and isinstance(sd["weight"], np.ndarray)

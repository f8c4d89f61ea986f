"""torch checkpoints whose convolutions run under weight norm, in both of torch's forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*:FutureWarning")

# (torch module, jconv config) pairs of the layers audio models wrap in weight norm
LAYERS = [
    ("Conv1d", dict(in_channels=4, out_channels=6, kernel_size=7, padding=3, dilation=1)),
    ("Conv1d", dict(in_channels=6, out_channels=6, kernel_size=3, padding=2, dilation=2)),
    ("ConvTranspose1d", dict(in_channels=6, out_channels=3, kernel_size=8, stride=4, padding=2)),
    ("Conv2d", dict(in_channels=3, out_channels=5, kernel_size=3, padding=1, groups=1)),
]


def _torch_layer(torch, kind, kw, form, dim):
    torch.manual_seed(0)
    layer = getattr(torch.nn, kind)(**kw)
    if form == "parametrizations":
        layer = torch.nn.utils.parametrizations.weight_norm(layer, dim=dim)
    else:
        layer = torch.nn.utils.weight_norm(layer, dim=dim)
    with torch.no_grad():  # g away from its initial value ‖v‖, so the fold matters
        g = (
            layer.parametrizations.weight.original0
            if form == "parametrizations"
            else layer.weight_g
        )
        g.mul_(torch.rand_like(g) + 0.5)
    return layer


def _input(cfg, length=20):
    rs = np.random.RandomState(1)
    return rs.standard_normal((2, cfg.in_channels) + (length,) * cfg.ndim).astype(np.float32)


@pytest.mark.parametrize("form", ["parametrizations", "legacy"])
@pytest.mark.parametrize("dim", [0, 1, None, -1, 2])
@pytest.mark.parametrize("kind,kw", LAYERS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(LAYERS)])
def test_weight_norm_layers_load_and_give_torchs_output(torch, form, dim, kind, kw):
    layer = _torch_layer(torch, kind, kw, form, dim)
    keys = set(layer.state_dict())
    g_key = "parametrizations.weight.original0" if form == "parametrizations" else "weight_g"
    assert g_key in keys and "weight" not in keys
    cfg = getattr(jconv, kind)(**kw)
    params = jconv.load_state_dict(cfg, layer.state_dict())
    x = _input(cfg)
    want = layer(torch.tensor(x)).detach().numpy()  # the legacy form computes weight here
    np.testing.assert_allclose(params.weight, layer.weight.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jconv.apply(params, x), want, rtol=1e-5, atol=1e-5)


def test_a_sequential_of_weight_norm_layers_and_a_safetensors_file(torch, tmp_path):
    from safetensors.torch import save_file

    wn = torch.nn.utils.parametrizations.weight_norm
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        wn(torch.nn.Conv1d(4, 8, 7, padding=3)),
        torch.nn.LeakyReLU(0.1),
        torch.nn.utils.weight_norm(torch.nn.ConvTranspose1d(8, 4, 8, stride=4, padding=2)),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Conv1d(4, 1, 7, padding=3),  # a plain layer beside them
    )
    cfgs = {
        "0": jconv.Conv1d(4, 8, 7, padding=3),
        "2": jconv.ConvTranspose1d(8, 4, 8, stride=4, padding=2),
        "4": jconv.Conv1d(4, 1, 7, padding=3),
    }
    path = str(tmp_path / "decoder.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    for tree in (jconv.load_state_dict(cfgs, model.state_dict()), jconv.load(path, cfgs)):
        x = _input(cfgs["0"], 32)
        h = jax.nn.leaky_relu(jconv.apply(tree["0"], x), 0.1)
        h = jax.nn.leaky_relu(jconv.apply(tree["2"], h), 0.1)
        y = jconv.apply(tree["4"], h)
        want = model(torch.tensor(x)).detach().numpy()
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        assert set(jconv.state_dict(tree)) == {
            f"{i}.{p}" for i in "024" for p in ("weight", "bias")
        }


def _pair(torch, form="parametrizations"):
    layer = _torch_layer(
        torch, "Conv1d", dict(in_channels=2, out_channels=3, kernel_size=3), form, 0
    )
    return jconv.Conv1d(2, 3, 3), dict(layer.state_dict())


def test_half_a_pair_is_a_missing_key(torch):
    cfg, sd = _pair(torch)
    del sd["parametrizations.weight.original1"]
    with pytest.raises(ValueError, match=r'Missing key\(s\).*"parametrizations.weight.original1"'):
        jconv.load_state_dict(cfg, sd)
    cfg, sd = _pair(torch, "legacy")
    del sd["weight_g"]
    with pytest.raises(ValueError, match=r'Missing key\(s\).*"weight_g"'):
        jconv.load_state_dict(cfg, sd)


def test_a_g_that_does_not_fit_v_names_the_key(torch):
    cfg, sd = _pair(torch)
    sd["parametrizations.weight.original0"] = np.ones((3, 2, 1), np.float32)
    with pytest.raises(ValueError, match=r"weight norm mismatch for parametrizations\.weight\.original0: shape \(3, 2, 1\)"):  # fmt: skip
        jconv.load_state_dict(cfg, sd)


def test_a_v_of_the_wrong_shape_names_the_key(torch):
    cfg, sd = _pair(torch, "legacy")
    with pytest.raises(ValueError, match=r"size mismatch for weight_v: .*\(3, 2, 3\).* is \(3, 2, 5\)"):  # fmt: skip
        jconv.load_state_dict(jconv.Conv1d(2, 3, 5), sd)
    assert jconv.load_state_dict(cfg, sd).weight.shape == (3, 2, 3)


def test_weight_norm_for_training_matches_torch_values_and_gradients(torch):
    rs = np.random.RandomState(0)
    v = rs.standard_normal((6, 4, 3)).astype(np.float32)
    for dim in (0, 1, 2, None):
        shape = [1, 1, 1]
        if dim is not None:
            shape[dim] = v.shape[dim]
        g = (rs.random_sample(shape if dim is not None else ()) + 0.5).astype(np.float32)
        vt, gt = torch.tensor(v, requires_grad=True), torch.tensor(g, requires_grad=True)
        wt = torch._weight_norm(vt, gt, -1 if dim is None else dim)
        ct = rs.standard_normal(v.shape).astype(np.float32)
        (wt * torch.tensor(ct)).sum().backward()
        w, vjp = jax.vjp(
            lambda a, b, d=dim: jconv.weight_norm(a, b, d), jnp.asarray(v), jnp.asarray(g)
        )
        dv, dg = vjp(jnp.asarray(ct))
        np.testing.assert_allclose(w, wt.detach().numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(dv, vt.grad.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dg, gt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_weight_norm_refuses_a_dim_outside_the_weight():
    with pytest.raises(ValueError, match="dim=3"):
        jconv.weight_norm(jnp.ones((2, 2, 3)), jnp.ones((1, 1, 1)), dim=3)

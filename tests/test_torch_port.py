"""End to end: a torch nn.Sequential moves into jconv and back, by state_dict and by file."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv

torch = pytest.importorskip("torch")
nn = torch.nn

CFG = {
    "0": jconv.Conv2d(3, 8, 3, padding=1),
    "2": jconv.Conv2d(8, 8, 3, padding=1, groups=4, padding_mode="reflect", bias=False),
    "4": jconv.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
    "6": jconv.Conv1d(4, 2, 5, stride=2, padding=2),
}


def torch_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4, padding_mode="reflect", bias=False),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
        nn.Flatten(2),  # (N, 4, H, W) -> (N, 4, H·W): a 1-d signal per channel
        nn.Conv1d(4, 2, 5, stride=2, padding=2),
    )


def forward(params, x):
    """The same network in jconv."""
    h = jax.nn.relu(jconv.apply(params["0"], x))
    h = jax.nn.relu(jconv.apply(params["2"], h))
    h = jconv.apply(params["4"], h)
    return jconv.apply(params["6"], h.reshape(*h.shape[:2], -1))


X = np.random.RandomState(0).standard_normal((2, 3, 6, 7)).astype(np.float32)


def _torch_out(model, x=X):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def test_state_dict_into_jconv_matches_torch():
    model = torch_model(0)
    params = jconv.load_state_dict(CFG, model.state_dict())
    got = jax.jit(forward)(params, X)
    np.testing.assert_allclose(got, _torch_out(model), rtol=1e-5, atol=1e-5)


def test_a_torch_safetensors_file_into_jconv_matches_torch(tmp_path):
    from safetensors.torch import save_file

    model = torch_model(1)
    path = tmp_path / "torch_model.safetensors"
    save_file(model.state_dict(), str(path))
    params = jconv.load(path, CFG)
    np.testing.assert_allclose(forward(params, X), _torch_out(model), rtol=1e-5, atol=1e-5)


def test_train_in_jconv_then_hand_back_to_a_fresh_torch_model(tmp_path):
    optax = pytest.importorskip("optax")
    from safetensors.torch import load_file

    params = jconv.load_state_dict(CFG, torch_model(2).state_dict())
    target = jnp.zeros(forward(params, X).shape)
    opt = optax.sgd(1e-2)
    state = opt.init(params)

    def loss(p):
        return jnp.mean((forward(p, X) - target) ** 2)

    for _ in range(3):
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert loss(params) < loss(jconv.load_state_dict(CFG, torch_model(2).state_dict()))

    path = tmp_path / "trained.safetensors"
    jconv.save(path, params)
    fresh = torch_model(99)  # different init: everything must come from the file
    fresh.load_state_dict(load_file(str(path)))
    for key, value in jconv.state_dict(params).items():
        np.testing.assert_array_equal(fresh.state_dict()[key].numpy(), value)
    np.testing.assert_allclose(_torch_out(fresh), forward(params, X), rtol=1e-5, atol=1e-5)
    # and the state_dict route gives torch the very same tensors
    again = torch_model(7)
    again.load_state_dict({k: torch.tensor(v) for k, v in jconv.state_dict(params).items()})
    np.testing.assert_array_equal(_torch_out(again), _torch_out(fresh))

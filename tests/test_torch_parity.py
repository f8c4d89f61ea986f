"""jconv against PyTorch on random configurations: forward and every gradient."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import arrays_for, assert_matches, jconv_grads, random_case, tiered

torch = pytest.importorskip("torch")
import torch_oracle  # noqa: E402

N_CASES = 240
TOL = 2e-4


@pytest.mark.parametrize("seed", tiered(range(N_CASES), 20))
def test_forward_and_grads_match_torch(seed):
    case = random_case(seed)
    cfg = case.cfg()
    x, w, b, gy = arrays_for(case, cfg)
    mine = jconv_grads(cfg, x, w, b, gy, case.jit)
    ref = torch_oracle.conv_with_grads(case.ndim, case.kwargs, case.extra["pairs"], x, w, b, gy)
    assert_matches(mine, ref, case, TOL)


def test_the_cases_cover_the_configuration_space():
    cases = [random_case(s) for s in range(N_CASES)]
    seen = {
        "ndim": {c.ndim for c in cases},
        "mode": {c.kwargs["padding_mode"] for c in cases},
        "form": {
            c.kwargs["padding"]
            if isinstance(c.kwargs["padding"], str)
            else type(c.kwargs["padding"]).__name__
            for c in cases
        },
        "batched": {c.batched for c in cases},
        "jit": {c.jit for c in cases},
        "bias": {c.kwargs["bias"] for c in cases},
    }
    assert seen["ndim"] == {1, 2, 3}
    assert seen["mode"] == {"zeros", "reflect", "replicate", "circular"}
    assert {"valid", "same", "causal", "int", "tuple", "list"} <= seen["form"]
    assert seen["batched"] == seen["jit"] == seen["bias"] == {True, False}
    pair_cases = [
        c
        for c in cases
        if isinstance(c.kwargs["padding"], tuple)
        and any(isinstance(p, tuple) for p in c.kwargs["padding"])
    ]
    assert len(pair_cases) >= 10
    groups = [c.kwargs["groups"] for c in cases]
    depthwise = [c for c in cases if c.kwargs["groups"] == c.kwargs["in_channels"] > 1]
    assert max(groups) > 1 and len(depthwise) >= 10
    assert any(max(c.kwargs["stride"]) > 1 for c in cases)
    assert any(max(c.kwargs["dilation"]) > 1 for c in cases)


def test_seed_walkthrough_numbers_match_torch():
    """The notebook's 5x5 line image through torch's Conv2d weights, loaded into jconv."""
    import jconv

    torch.manual_seed(0)
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, :] = 1
    for kw in (dict(), dict(stride=2), dict(stride=2, padding=1)):
        conv = torch.nn.Conv2d(1, 3, 3, **kw)
        cfg = jconv.Conv2d(1, 3, 3, **kw)
        params = jconv.load_state_dict(cfg, conv.state_dict())
        got = np.asarray(jconv.apply(params, image.numpy()))
        want = conv(image).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

"""The PyTorch port of the reference used by the benchmarks (benchmarks/reference_torch.py)
computes what the library computes, given the same weights. Skipped without torch."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_torch as ref  # noqa: E402

from numpyro_sda.guidance import ObservationModel, SDAGuidance  # noqa: E402
from numpyro_sda.prior import TrajectoryPrior  # noqa: E402
from numpyro_sda.score import LocalScore  # noqa: E402
from numpyro_sda.tracing import trace_model  # noqa: E402

L = 17


def _score():
    return LocalScore.mlp(3, window=5, hidden=32, depth=2, rngs=3)


def test_window_net_and_composition_match_the_library():
    score = _score()
    port = ref.from_local_score(score, bessel=False)
    x = np.random.default_rng(0).standard_normal((4, L, 3)).astype(np.float32)
    for t in (0.1, 0.7):
        ours = np.asarray(jax.vmap(lambda xi, t=t: score(xi, jnp.float32(t)))(x))
        theirs = port(torch.as_tensor(x), torch.tensor(t)).detach().numpy()
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    # batched times (training): one time per window
    w = x[:, :5]
    tt = np.array([0.1, 0.3, 0.5, 0.9], np.float32)
    ours = np.asarray(score.local(jnp.asarray(w), jnp.asarray(tt)))
    theirs = port.net(torch.as_tensor(w.reshape(4, -1)), torch.as_tensor(tt)).detach().numpy()
    np.testing.assert_allclose(theirs.reshape(w.shape), ours, rtol=1e-4, atol=1e-5)


def test_guided_noise_matches_sda_guidance():
    score = _score()
    prior = TrajectoryPrior(score, length=L)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::8, :1], 0.05), obs=y)

    y = np.array([[0.3], [-0.2], [0.5]], np.float32)
    obs = ObservationModel(trace_model(model, (prior,), {"y": jnp.asarray(y)}))
    eps_y = SDAGuidance(gamma=3e-2)(prior.eps, prior.sde, obs)
    port = ref.from_local_score(score, bessel=False)
    guide = ref.GaussianGuidance(port, torch.as_tensor(y), lambda x: x[..., ::8, :1], 0.05, 3e-2)
    x = np.random.default_rng(1).standard_normal((3, L, 3)).astype(np.float32)
    for t in (0.2, 0.6):
        ours = np.asarray(jax.vmap(lambda xi, t=t: eps_y(xi, jnp.float32(t)))(x))
        theirs = guide(torch.as_tensor(x), torch.tensor(t)).detach().numpy()
        np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-4)


def test_training_and_sampling_steps_run():
    net = ref.WindowNet(width=32, depth=2)
    data = np.random.default_rng(2).standard_normal((8, 40, 3)).astype(np.float32)
    trainer = ref.Trainer(net, data, batch=16)
    before = [p.detach().clone() for p in net.parameters()]
    assert trainer.run(5)[0] == 5
    assert trainer.run(10**6, max_seconds=0.01)[0] >= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    guide = ref.GaussianGuidance(ref.ComposedScore(net), torch.zeros(3, 1),
                                 lambda x: x[..., ::8, :1], 0.05)
    x, done, wall = ref.Sampler(guide, corrections=1).run(torch.randn(4, L, 3), steps=2, total=8)
    assert x.shape == (4, L, 3) and bool(torch.isfinite(x).all()) and done == 2 and wall > 0

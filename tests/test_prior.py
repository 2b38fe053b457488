"""TrajectoryPrior: a NumPyro distribution over whole trajectories defined by a noise predictor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from numpyro_sda.prior import TrajectoryPrior, gaussian_eps
from numpyro_sda.sde import VPSDE


class FakeLocalScore:
    """Duck-typed LocalScore: eps_fn(), window, state_shape."""

    window = 5
    state_shape = (3,)

    def eps_fn(self):
        return lambda x, t: jnp.zeros_like(x)


def _gaussian(L=6, d=2, seed=0):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((L * d, L * d)) / np.sqrt(L * d)
    P = B @ B.T + 0.2 * np.eye(L * d)
    m = rng.standard_normal((L, d))
    return m, P


def test_shapes_schedule_and_sampling_moments():
    m, P = _gaussian()
    prior = TrajectoryPrior(gaussian_eps(m, P), length=6, state_shape=(2,), steps=256,
                            corrections=0)
    assert prior.event_shape == (6, 2) and prior.batch_shape == ()
    assert isinstance(prior, dist.Distribution)
    assert float(prior.sde.mu(0.0)) == pytest.approx(1.0)
    assert float(prior.sde.sigma(1.0)) == pytest.approx(1.0, abs=1e-5)
    xs = prior.sample(jax.random.key(0), (2000,))
    assert xs.shape == (2000, 6, 2) and xs.dtype == jnp.float32
    flat = np.asarray(xs, np.float64).reshape(2000, -1)
    sd = np.sqrt(np.diag(P))
    # exact score + 256 DDIM steps: the moments of the Gaussian (4 MC s.e. + 5 % DDIM bias)
    assert np.all(np.abs(flat.mean(0) - m.reshape(-1)) < 4 * sd / np.sqrt(2000) + 0.05 * sd)
    assert np.all(np.abs(flat.std(0) / sd - 1) < 4 / np.sqrt(4000) + 0.05)
    assert prior.sample(jax.random.key(1)).shape == (6, 2)
    assert prior.sample(jax.random.key(1), (2, 3)).shape == (2, 3, 6, 2)


def test_numpyro_site_and_probability_flow_log_prob():
    m, P = _gaussian()
    prior = TrajectoryPrior(gaussian_eps(m, P), length=6, state_shape=(2,), steps=8)

    def model():
        return numpyro.sample("x", prior)

    tr = handlers.trace(handlers.seed(model, 0)).get_trace()
    assert tr["x"]["value"].shape == (6, 2)
    assert tr["x"]["fn"] is prior
    # the probability-flow ODE density of the exact Gaussian score is the Gaussian density
    rng = np.random.default_rng(3)
    xs = m + (rng.standard_normal((3, 12)) @ np.linalg.cholesky(P).T).reshape(3, 6, 2)
    xs = jnp.asarray(xs, jnp.float32)
    got = prior.log_prob(xs)
    want = dist.MultivariateNormal(jnp.asarray(m.reshape(-1)), jnp.asarray(P)).log_prob(
        xs.reshape(3, -1))
    assert got.shape == (3,)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-2)
    with pytest.raises(ValueError, match="event shape"):
        prior.log_prob(jnp.zeros((6, 3)))


def test_local_score_duck_typing_and_errors():
    prior = TrajectoryPrior(FakeLocalScore(), length=9)
    assert prior.event_shape == (9, 3)
    assert prior.score is not None
    with pytest.raises(ValueError, match="length 4 is shorter than the local score's window 5"):
        TrajectoryPrior(FakeLocalScore(), length=4)
    with pytest.raises(ValueError, match="state_shape"):
        TrajectoryPrior(FakeLocalScore(), length=9, state_shape=(2,))
    with pytest.raises(ValueError, match="state_shape is required"):
        TrajectoryPrior(lambda x, t: x, length=9)
    with pytest.raises(TypeError, match="callable"):
        TrajectoryPrior(3.0, length=9, state_shape=(1,))
    with pytest.raises(ValueError, match="length"):
        TrajectoryPrior(lambda x, t: x, length=0, state_shape=(1,))
    with pytest.raises(ValueError, match="steps"):
        TrajectoryPrior(lambda x, t: x, length=3, state_shape=(1,), steps=0)
    with pytest.raises(ValueError, match="cov must have shape"):
        gaussian_eps(np.zeros((3, 2)), np.eye(5))
    assert prior.sde == VPSDE()

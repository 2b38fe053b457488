"""The automatic split of the observation likelihood over time, and particle-filter input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from test_baselines_linear import M0, P0, A, D, Q, dense_reference, make_prior

from numpyro_sda.baselines import ParticleSmoother
from numpyro_sda.baselines.timesplit import (
    dependence_times,
    flat_log_likelihood,
    probe_points,
    split_over_time,
)
from numpyro_sda.markov import MarkovPrior
from numpyro_sda.tracing import trace_model


def small_prior(length: int, d: int = 3) -> MarkovPrior:
    return MarkovPrior(
        dist.Normal(jnp.zeros(d), 1.0).to_event(1),
        lambda x: dist.Normal(0.9 * jnp.roll(x, 1), 0.5).to_event(1),
        length,
    )


def split_of(obs_fn, y, length: int = 17):
    prior = small_prior(length)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(obs_fn(x), 0.1), obs=y)

    traced = trace_model(model, (prior,), {"y": y})
    key = jax.random.key(0)
    points = probe_points(traced, key)
    first, last = dependence_times(lambda x: flat_log_likelihood(traced, x), points, key=key)
    return split_over_time(first, last, length)


def test_sliced_operator_depends_on_its_times():
    s = split_of(lambda x: x[::8, :1], jnp.zeros((3, 1)))
    np.testing.assert_array_equal(s.last, [0, 8, 16])
    np.testing.assert_array_equal(s.first, s.last)
    assert s.lag == 1
    np.testing.assert_array_equal(np.flatnonzero(s.has_obs), [0, 8, 16])
    assert s.index[8, 0] == 1 and s.mask[8].sum() == 1


def test_strided_and_nonlinear_operators():
    s = split_of(lambda x: x[1::3, 1], jnp.zeros(6))
    np.testing.assert_array_equal(s.last, [1, 4, 7, 10, 13, 16])
    H = jnp.array([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])
    s = split_of(
        lambda x: jnp.concatenate([jnp.sin(x[:, :1]) * x[:, 2:] ** 2, x @ H.T], axis=1),
        jnp.zeros((17, 3)),
    )
    np.testing.assert_array_equal(s.last.reshape(17, 3), np.repeat(np.arange(17)[:, None], 3, 1))
    assert s.lag == 1 and s.mask.sum(1).tolist() == [3] * 17


def test_non_markov_observation_has_lag():
    s = split_of(lambda x: x[2:, 0] - x[:-2, 0], jnp.zeros(15))
    np.testing.assert_array_equal(s.first, np.arange(15))
    np.testing.assert_array_equal(s.last, np.arange(2, 17))
    assert s.lag == 3


def test_to_event_site_is_split_into_elements():
    prior = small_prior(10)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[1::4], 0.1).to_event(2), obs=y)

    traced = trace_model(model, (prior,), {"y": jnp.zeros((3, 3))})
    x = prior.sample(jax.random.key(1))
    ll = flat_log_likelihood(traced, x)
    assert ll.shape == (9,)
    np.testing.assert_allclose(ll.sum(), traced.log_likelihood(x), rtol=1e-5)


def test_particle_smoother_with_lagged_observation_matches_exact():
    """y_t = x_{t+1,0} - x_{t,0}: a non-Markov observation, handled by carrying 2 states."""
    L, s = 10, 0.3
    prior = make_prior(L)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[1:, 0] - x[:-1, 0], s), obs=y)

    x_true = prior.sample(jax.random.key(0))
    y = x_true[1:, 0] - x_true[:-1, 0] + s * jax.random.normal(jax.random.key(1), (L - 1,))
    H = np.zeros((L - 1, L * D))
    for t in range(L - 1):
        H[t, (t + 1) * D] = 1.0
        H[t, t * D] = -1.0
    mean, std, logz = dense_reference(H, s**2 * np.eye(L - 1), np.asarray(y, np.float64), L)
    pf = ParticleSmoother(model, num_particles=4096).run(jax.random.key(2), prior, y=y)
    assert pf.split.lag == 2
    xs = np.asarray(pf.get_samples()["x"])
    assert np.max(np.abs(xs.mean(0) - mean) / std) < 0.25
    assert np.max(np.abs(xs.std(0) / std - 1)) < 0.25
    assert abs(float(pf.sample_stats["log_evidence"]) - logz) < 0.1
    assert A.shape == Q.shape == P0.shape and M0.shape == (D,)
    with pytest.raises(ValueError, match="not Markov"):
        ParticleSmoother(model, num_particles=64, smoother="ffbsi").run(
            jax.random.key(0), prior, y=y
        )


def test_whole_trajectory_observation_is_rejected_as_not_markov():
    prior = small_prior(20)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x.sum(0), 1.0), obs=y)

    with pytest.raises(ValueError, match="not Markov"):
        ParticleSmoother(model, num_particles=64).run(jax.random.key(0), prior, y=jnp.zeros(3))


def test_non_markov_prior_is_rejected():
    from numpyro_sda.prior import TrajectoryPrior

    prior = TrajectoryPrior(lambda x, t: jnp.zeros_like(x), 4, state_shape=(2,), steps=2,
                            corrections=0)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, 0], 1.0), obs=y)

    with pytest.raises(TypeError, match="Markov prior"):
        ParticleSmoother(model, num_particles=64).run(jax.random.key(0), prior, y=jnp.zeros(4))


def test_degeneracy_warns_and_nonfinite_weights_raise():
    prior = small_prior(6, d=2)

    def sharp(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, 0], 1e-3), obs=y)

    y = jnp.full((6,), 3.0)
    with pytest.warns(RuntimeWarning, match="degeneracy"):
        pf = ParticleSmoother(sharp, num_particles=16).run(jax.random.key(0), prior, y=y)
    assert pf.sample_stats["ess"].shape == (6,)
    assert float(pf.sample_stats["ess"].min()) < 2.0

    # an observation so far out that every particle's float32 log-weight overflows to -inf
    with pytest.raises(ValueError, match="non-finite particle log-weights at time 0"):
        ParticleSmoother(sharp, num_particles=16).run(
            jax.random.key(0), prior, y=jnp.full((6,), 1e30)
        )

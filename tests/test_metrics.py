"""Tests of numpyro_sda.metrics against hand computations and independent libraries."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import properscoring
import pytest
import scipy.optimize
import scipy.stats
import scoringrules

from numpyro_sda import metrics
from numpyro_sda.markov import MarkovPrior


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_rmse_and_spread_by_hand():
    samples = np.array([[[1.0, 2.0]], [[3.0, 6.0]]])  # (2 draws, 1 time, 2 states)
    truth = np.array([[1.0, 1.0]])
    # mean = [2, 4]; errors [1, 3]; RMSE = sqrt((1 + 9) / 2)
    assert float(metrics.rmse(samples, truth)) == pytest.approx(np.sqrt(5.0))
    # unbiased variances: [2, 8]; spread = sqrt(5)
    assert float(metrics.spread(samples)) == pytest.approx(np.sqrt(5.0))
    np.testing.assert_allclose(metrics.rmse(samples, truth, axis=0), [1.0, 3.0])
    ratio = metrics.spread_skill_ratio(samples, truth)
    assert float(ratio) == pytest.approx(np.sqrt(3 / 2))
    assert np.isnan(float(metrics.spread(samples[:1])))


def test_spread_skill_calibrated_and_overconfident(rng):
    # truth and draws from the same N(mu_i, 1): calibrated; draws with std 0.3: over-confident
    mu = rng.normal(size=(4000,))
    truth = mu + rng.normal(size=mu.shape)
    calibrated = mu + rng.normal(size=(5, *mu.shape))
    narrow = mu + 0.3 * rng.normal(size=(5, *mu.shape))
    assert float(metrics.spread_skill_ratio(calibrated, truth)) == pytest.approx(1.0, abs=0.05)
    assert float(metrics.spread_skill_ratio(narrow, truth)) < 0.5


@pytest.mark.parametrize("m", [1, 2, 7, 64])
def test_crps_matches_properscoring_and_scoringrules(rng, m):
    samples = rng.normal(size=(m, 6, 3))
    truth = rng.normal(size=(6, 3))
    ours = np.asarray(metrics.crps(samples, truth, elementwise=True))
    ps = properscoring.crps_ensemble(truth, np.moveaxis(samples, 0, -1))
    np.testing.assert_allclose(ours, ps, rtol=1e-5, atol=1e-6)
    sr = np.asarray(scoringrules.crps_ensemble(truth, samples, m_axis=0, estimator="nrg",
                                               backend="jax"))
    np.testing.assert_allclose(ours, sr, rtol=1e-5, atol=1e-6)
    assert float(metrics.crps(samples, truth)) == pytest.approx(ps.mean(), rel=1e-5)
    if m > 1:
        fair = np.asarray(metrics.crps(samples, truth, estimator="fair", elementwise=True))
        sr_fair = scoringrules.crps_ensemble(truth, samples, m_axis=0, estimator="fair")
        np.testing.assert_allclose(fair, sr_fair, rtol=1e-5, atol=1e-6)


def test_crps_point_ensemble_is_mae(rng):
    point = rng.normal(size=(5, 4))
    truth = rng.normal(size=(5, 4))
    ens = np.broadcast_to(point, (10, 5, 4))
    mae = np.mean(np.abs(point - truth))
    assert float(metrics.crps(ens, truth)) == pytest.approx(mae, rel=1e-6)
    assert float(metrics.crps(point[None], truth)) == pytest.approx(mae, rel=1e-6)
    assert float(metrics.crps(ens, truth, estimator="fair")) == pytest.approx(mae, rel=1e-6)


def test_crps_gaussian_limit(rng):
    # CRPS of N(0,1) at y=0 is (sqrt(2) - 1)/sqrt(pi) (Gneiting & Raftery 2007, eq. 5)
    samples = rng.normal(size=(20000, 1))
    exact = (np.sqrt(2) - 1) / np.sqrt(np.pi)
    assert float(metrics.crps(samples, np.zeros(1), estimator="fair")) == pytest.approx(exact,
                                                                                       rel=0.02)


def test_energy_score_vs_scoringrules_and_by_hand(rng):
    samples = rng.normal(size=(9, 5, 3))
    truth = rng.normal(size=(5, 3))
    whole = scoringrules.es_ensemble(truth.reshape(-1), samples.reshape(9, -1), estimator="nrg")
    assert float(metrics.energy_score(samples, truth)) == pytest.approx(float(whole), rel=1e-5)
    per_time = scoringrules.es_ensemble(truth, np.moveaxis(samples, 0, 1), estimator="nrg")
    assert float(metrics.energy_score(samples, truth, per_time=True)) == pytest.approx(
        float(np.mean(per_time)), rel=1e-5)
    fair = scoringrules.es_ensemble(truth.reshape(-1), samples.reshape(9, -1), estimator="fair")
    assert float(metrics.energy_score(samples, truth, estimator="fair")) == pytest.approx(
        float(fair), rel=1e-5)
    # two draws a, b in 1-D reduce to (|a-y| + |b-y|)/2 - |a-b|/4
    two = np.array([[0.0], [2.0]])
    assert float(metrics.energy_score(two, np.array([3.0]))) == pytest.approx(2.0 - 0.5)
    # a point ensemble: the Euclidean error of the flattened trajectory
    point = samples[0]
    assert float(metrics.energy_score(point[None], truth)) == pytest.approx(
        np.linalg.norm(point - truth), rel=1e-5)


def test_rank_histogram_uniform_for_calibrated_toy(rng):
    m, n = 9, 20000
    mu = rng.normal(size=(n,))
    truth = mu + rng.normal(size=(n,))
    draws = mu + rng.normal(size=(m, n))
    counts = np.asarray(metrics.rank_histogram(draws, truth))
    assert counts.shape == (m + 1,) and counts.sum() == n
    expected = n / (m + 1)
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < scipy.stats.chi2.ppf(0.999, df=m)
    # an over-confident ensemble gives a U shape that fails the same bound
    narrow = mu + 0.3 * rng.normal(size=(m, n))
    c2 = np.asarray(metrics.rank_histogram(narrow, truth))
    assert np.sum((c2 - expected) ** 2 / expected) > scipy.stats.chi2.ppf(0.999, df=m)
    assert c2[0] > 3 * expected and c2[-1] > 3 * expected


def test_rank_histogram_by_hand_and_ties():
    draws = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, 7.0]])
    truth = np.array([1.5, 10.0])
    np.testing.assert_array_equal(metrics.rank_histogram(draws, truth), [0, 0, 1, 1])
    point = np.zeros((4, 1000))
    ties = np.asarray(metrics.rank_histogram(point, np.zeros(1000), key=jax.random.key(0)))
    assert ties.sum() == 1000 and ties.min() > 120  # spread over all 5 bins, not piled up


def test_wasserstein_1d_matches_scipy(rng):
    a = rng.normal(size=(50, 1))
    b = rng.normal(loc=0.7, size=(80, 1))
    expected = scipy.stats.wasserstein_distance(a[:, 0], b[:, 0])
    assert metrics.wasserstein1(a, b) == pytest.approx(expected, rel=1e-9)


def test_wasserstein_equal_sizes_matches_scipy_and_pot(rng):
    """Equal sizes take the assignment path: it must agree with the 1-D closed form and with
    POT's network simplex on multivariate trajectories."""
    import ot

    a, b = rng.normal(size=(64, 1)), rng.normal(loc=0.3, scale=1.5, size=(64, 1))
    expected = scipy.stats.wasserstein_distance(a[:, 0], b[:, 0])
    assert metrics.wasserstein1(a, b) == pytest.approx(expected, rel=1e-9)
    a, b = rng.normal(size=(40, 5, 3)), rng.normal(size=(40, 5, 3)) + 0.4
    cost = ot.dist(a.reshape(40, -1), b.reshape(40, -1), metric="euclidean")
    simplex = ot.emd2(np.full(40, 1 / 40), np.full(40, 1 / 40), cost)
    assert metrics.wasserstein1(a, b) == pytest.approx(simplex, rel=1e-9)


def test_wasserstein_matches_assignment(rng):
    a = rng.normal(size=(12, 4, 3))
    b = rng.normal(size=(12, 4, 3)) + 0.5
    fa, fb = a.reshape(12, -1), b.reshape(12, -1)
    cost = np.linalg.norm(fa[:, None] - fb[None], axis=-1)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    assert metrics.wasserstein1(a, b) == pytest.approx(cost[rows, cols].mean(), rel=1e-9)
    assert metrics.wasserstein1(a, a) == pytest.approx(0.0, abs=1e-12)
    # translation by c moves every point by |c|: W1 = |c| * sqrt(dims)
    assert metrics.wasserstein1(a, a + 2.0) == pytest.approx(2.0 * np.sqrt(12), rel=1e-9)


def _prior(length=6):
    initial = dist.Normal(jnp.zeros(2), 1.0).to_event(1)
    return MarkovPrior(initial, lambda x: dist.Normal(0.5 * x, 0.2).to_event(1), length)


def _model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::2, 0], 0.1), obs=y)


def test_log_likelihood_and_prior_by_hand(rng):
    prior = _prior()
    xs = jnp.asarray(rng.normal(size=(5, 6, 2)), dtype=jnp.float32)
    y = jnp.asarray(rng.normal(size=(3,)), dtype=jnp.float32)
    ll = np.asarray(metrics.log_likelihood(_model, xs, (prior,), {"y": y}))
    expected = scipy.stats.norm.logpdf(np.asarray(y), np.asarray(xs[:, ::2, 0]), 0.1).sum(-1)
    np.testing.assert_allclose(ll, expected, rtol=1e-5)
    lp = np.asarray(metrics.log_prior(prior, xs))
    x = np.asarray(xs)
    by_hand = scipy.stats.norm.logpdf(x[:, 0]).sum(-1) + scipy.stats.norm.logpdf(
        x[:, 1:], 0.5 * x[:, :-1], 0.2).sum((-1, -2))
    np.testing.assert_allclose(lp, by_hand, rtol=1e-5)


def test_bad_inputs(rng):
    s = rng.normal(size=(4, 3, 2))
    with pytest.raises(ValueError, match="truth must have the shape"):
        metrics.rmse(s, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.crps(np.full((4, 3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.rmse(s, np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="estimator"):
        metrics.crps(s, np.zeros((3, 2)), estimator="pwm")
    with pytest.raises(ValueError, match="fair"):
        metrics.energy_score(s[:1], np.zeros((3, 2)), estimator="fair")
    with pytest.raises(ValueError, match="same shape"):
        metrics.wasserstein1(s, rng.normal(size=(4, 3, 3)))
    with pytest.raises(ValueError, match="max_samples"):
        metrics.wasserstein1(s, s, max_samples=3)
    with pytest.raises(ValueError, match="shape"):
        metrics.log_prior(_prior(), s)
    with pytest.raises(TypeError, match="Distribution"):
        metrics.log_prior(object(), s)
    with pytest.raises(ValueError, match="shape"):
        metrics.log_likelihood(_model, s, (_prior(),), {"y": np.zeros(3)})


def test_log_likelihood_with_a_trajectory_prior_is_not_sampled(rng):
    """A TrajectoryPrior argument is only traced (never sampled); same values as a MarkovPrior."""
    from numpyro_sda.prior import TrajectoryPrior

    calls = []

    def eps(x, t):
        calls.append(1)
        raise AssertionError("the prior must not be sampled to evaluate log p(y|x)")

    xs = jnp.asarray(rng.normal(size=(4, 6, 2)), dtype=jnp.float32)
    y = jnp.asarray(rng.normal(size=(3,)), dtype=jnp.float32)
    ll = metrics.log_likelihood(_model, xs, (TrajectoryPrior(eps, 6, (2,)),), {"y": y})
    ref = metrics.log_likelihood(_model, xs, (_prior(),), {"y": y})
    np.testing.assert_allclose(np.asarray(ll), np.asarray(ref), rtol=1e-6)
    assert not calls

"""Baselines against the exact posterior of a linear-Gaussian model.

The reference is dense Gaussian conditioning in float64 NumPy (independent of the Kalman code):
prior moments of the whole trajectory, observation matrix written by hand, then
``m = mu + S H^T (H S H^T + R)^{-1} (y - H mu)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_sda.baselines import EnKS, FourDVar, KalmanSmoother, ParticleSmoother
from numpyro_sda.markov import LinearGaussianDynamics, MarkovPrior

L, D, SIGMA = 16, 2, 0.3
A = np.array([[0.9, 0.25], [-0.25, 0.9]])
Q = 0.1 * np.eye(D)
M0 = np.array([1.0, -0.5])
P0 = np.eye(D)


def make_prior(length: int = L) -> MarkovPrior:
    Aj, Qj = jnp.asarray(A, jnp.float32), jnp.asarray(Q, jnp.float32)
    return MarkovPrior(
        dist.MultivariateNormal(jnp.asarray(M0, jnp.float32), jnp.asarray(P0, jnp.float32)),
        lambda x: dist.MultivariateNormal(Aj @ x, Qj),
        length,
        linear=LinearGaussianDynamics(Aj, jnp.zeros(D), Qj, jnp.asarray(M0), jnp.asarray(P0)),
    )


def model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::2, :1], SIGMA), obs=y)


def dense_reference(H: np.ndarray, R: np.ndarray, y: np.ndarray, length: int = L):
    """Exact posterior mean (L, D), marginal std (L, D), log-evidence by dense algebra."""
    mu = [M0]
    P = [P0]
    for _ in range(length - 1):
        mu.append(A @ mu[-1])
        P.append(A @ P[-1] @ A.T + Q)
    S = np.zeros((length * D, length * D))
    for i in range(length):
        for j in range(i, length):
            C = np.linalg.matrix_power(A, j - i) @ P[i]  # Cov(x_j, x_i)
            S[j * D:(j + 1) * D, i * D:(i + 1) * D] = C
            S[i * D:(i + 1) * D, j * D:(j + 1) * D] = C.T
    m = np.concatenate(mu)
    G = H @ S @ H.T + R
    K = S @ H.T @ np.linalg.inv(G)
    mean = m + K @ (y - H @ m)
    cov = S - K @ H @ S
    r = y - H @ m
    _, logdet = np.linalg.slogdet(2 * np.pi * G)
    logz = -0.5 * (r @ np.linalg.solve(G, r) + logdet)
    return mean.reshape(length, D), np.sqrt(np.diag(cov)).reshape(length, D), logz


@pytest.fixture(scope="module")
def problem():
    prior = make_prior()
    x_true = prior.sample(jax.random.key(0))
    y = x_true[::2, :1] + SIGMA * jax.random.normal(jax.random.key(1), (L // 2, 1))
    H = np.zeros((L // 2, L * D))
    for k, t in enumerate(range(0, L, 2)):
        H[k, t * D] = 1.0
    R = SIGMA**2 * np.eye(L // 2)
    mean, std, logz = dense_reference(H, R, np.asarray(y, np.float64).ravel())
    return prior, y, mean, std, logz


@pytest.fixture(scope="module")
def kalman(problem):
    prior, y, *_ = problem
    return KalmanSmoother(model).run(jax.random.key(2), prior, y=y, num_samples=4000)


def test_kalman_matches_dense_reference(problem, kalman):
    _, _, mean, std, logz = problem
    np.testing.assert_allclose(kalman.mean, mean, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(kalman.std, std, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(float(kalman.log_evidence), logz, rtol=1e-5, atol=1e-4)
    draws = kalman.get_samples()["x"]
    assert draws.shape == (4000, L, D)
    # exact draws: mean within 4.5 standard errors, std within 10%
    z = np.abs(draws.mean(0) - mean) / (std / np.sqrt(4000))
    assert z.max() < 4.5
    np.testing.assert_allclose(draws.std(0), std, rtol=0.1)
    assert kalman.posterior_predictive["y"].shape == (4000, L // 2, 1)


@pytest.mark.parametrize("smoother", ["ancestral", pytest.param("ffbsi", marks=pytest.mark.slow)])
def test_particle_smoother_matches_kalman(problem, smoother):
    prior, y, mean, std, logz = problem
    pf = ParticleSmoother(model, num_particles=4096, smoother=smoother)
    pf.run(jax.random.key(3), prior, y=y, num_samples=1024)
    xs = np.asarray(pf.get_samples()["x"])
    assert xs.shape == (1024, L, D)
    # Monte-Carlo error of a smoothed mean with ~1024 (correlated) draws: std / sqrt(1024) ~ 3%
    # of std per entry; path degeneracy inflates it at early times. 0.25 std bounds the max over
    # 32 entries; a wrong weighting or time split moves means by O(1) std.
    assert np.max(np.abs(xs.mean(0) - mean) / std) < 0.25
    assert np.max(np.abs(xs.std(0) / std - 1)) < 0.25
    assert abs(float(pf.sample_stats["log_evidence"]) - logz) < 0.1
    assert pf.sample_stats["ess"].shape == (L,)
    assert pf.wall_time > 0 and pf.compile_time > 0


def test_particle_multinomial_and_filter_mean(problem, kalman):
    prior, y, *_ = problem
    pf = ParticleSmoother(model, num_particles=2048, resampling="multinomial", ess_threshold=1.0)
    pf.run(jax.random.key(4), prior, y=y)
    assert bool(pf.sample_stats["resampled"][1:].all())
    # the final filtering mean equals the final smoothing mean
    np.testing.assert_allclose(pf.sample_stats["filter_mean"][-1], kalman.mean[-1], atol=0.1)


@pytest.mark.parametrize("variant", ["stochastic", pytest.param("sqrt", marks=pytest.mark.slow)])
def test_enks_large_ensemble_matches_kalman(problem, variant):
    prior, y, mean, std, _ = problem
    en = EnKS(model, ensemble_size=2000, variant=variant).run(jax.random.key(5), prior, y=y)
    xs = np.asarray(en.get_samples()["x"])
    assert xs.shape == (2000, L, D)
    assert np.max(np.abs(xs.mean(0) - mean) / std) < 0.15, variant
    assert np.max(np.abs(xs.std(0) / std - 1)) < 0.12, variant


def test_fourdvar_weak_equals_kalman_mean(problem):
    prior, y, mean, _, _ = problem
    var = FourDVar(model, weak=True, tol=1e-10, precision="float64").run(
        jax.random.key(6), prior, y=y
    )
    x = np.asarray(var.get_samples()["x"][0], np.float64)
    assert np.linalg.norm(x - mean) / np.linalg.norm(mean) < 1e-4
    assert bool(var.sample_stats["converged"])
    assert int(var.sample_stats["iterations"]) > 1


def test_fourdvar_strong_is_least_squares_over_initial_state(problem):
    prior, y, *_ = problem
    var = FourDVar(model, weak=False, tol=1e-10, precision="float64").run(
        jax.random.key(7), prior, y=y
    )
    # closed form: x_t = A^t x0, y_k ~ N(e1^T A^{2k} x0, s^2), x0 ~ N(M0, P0)
    G = np.stack([np.linalg.matrix_power(A, t)[0] for t in range(0, L, 2)])
    prec = np.linalg.inv(P0) + G.T @ G / SIGMA**2
    x0 = np.linalg.solve(prec, np.linalg.solve(P0, M0) + G.T @ np.asarray(y, np.float64).ravel()
                         / SIGMA**2)
    x = np.asarray(var.get_samples()["x"][0])
    np.testing.assert_allclose(x[0], x0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x[5], np.linalg.matrix_power(A, 5) @ x0, rtol=1e-4, atol=1e-5)


def test_kalman_rejects_nonlinear_and_non_gaussian(problem):
    prior, y, *_ = problem

    def nonlinear(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(jnp.sin(x[::2, :1]), SIGMA), obs=y)

    def laplace(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Laplace(x[::2, :1], SIGMA), obs=y)

    with pytest.raises(ValueError, match="linear"):
        KalmanSmoother(nonlinear).run(jax.random.key(0), prior, y=y)
    with pytest.raises(TypeError, match="Gaussian"):
        KalmanSmoother(laplace).run(jax.random.key(0), prior, y=y)
    nolin = MarkovPrior(prior.initial, prior.transition, L)
    with pytest.raises(ValueError, match="linear-Gaussian prior"):
        KalmanSmoother(model).run(jax.random.key(0), nolin, y=y)

"""EnKF / EnKS with Gaspari–Cohn localisation (Lorenz-96; a 2-D periodic field against the
Kalman smoother), and their input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_sda.baselines import EnKF, EnKS, KalmanSmoother
from numpyro_sda.baselines.enkf import (
    _component_locations,
    gaspari_cohn,
    localization_grid,
    mean_preserving_rotation,
    periodic_tapers,
)
from numpyro_sda.markov import LinearGaussianDynamics, MarkovPrior
from numpyro_sda.systems import Lorenz96

L = 30


def test_gaspari_cohn_shape():
    r = jnp.linspace(0.0, 3.0, 301)
    g = np.asarray(gaspari_cohn(r))
    assert g[0] == pytest.approx(1.0)
    assert np.all(g[r >= 2.0] == 0.0)
    assert np.all(np.diff(g) <= 1e-6)  # non-increasing
    left, right = gaspari_cohn(jnp.array([1 - 1e-4, 1 + 1e-4]))
    assert abs(float(left - right)) < 1e-3  # continuous at r = 1
    assert float(gaspari_cohn(jnp.array(1.0))) == pytest.approx(5 / 24, abs=1e-6)


def test_rotation_preserves_mean():
    O = mean_preserving_rotation(jax.random.key(0), 7)
    np.testing.assert_allclose(O @ O.T, np.eye(7), atol=1e-5)
    np.testing.assert_allclose(O @ np.ones(7), np.ones(7), atol=1e-5)


def l96_model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::2, ::2], 1.0), obs=y)


@pytest.fixture(scope="module")
def l96():
    system = Lorenz96(n=16, F=8.0)
    prior = system.markov_prior(L, normalized=False, spinup=200)
    draws = jax.jit(lambda k: prior.sample(k, (17,)))(jax.random.key(0))
    x_true, free = draws[0], draws[1:].mean(0)
    clean = x_true[::2, ::2]
    y = clean + jax.random.normal(jax.random.key(1), clean.shape)
    return prior, x_true, y, free


def _rmse(a, b, times=slice(L // 2, None)):
    return float(jnp.sqrt(jnp.mean((a[times] - b[times]) ** 2)))


@pytest.mark.parametrize(
    "variant", ["sqrt", pytest.param("stochastic", marks=pytest.mark.slow)]
)
def test_localized_enkf_and_enks_track_lorenz96(l96, variant):
    prior, x_true, y, free = l96
    kw = dict(ensemble_size=12, variant=variant, inflation=1.05, localization=3.0)
    enkf = EnKF(l96_model, **kw).run(jax.random.key(3), prior, y=y)
    enks = EnKS(l96_model, **kw).run(jax.random.key(3), prior, y=y)
    assert enkf.get_samples()["x"].shape == (12, L, 16)
    e_free = _rmse(free, x_true)
    e_f = _rmse(enkf.sample_stats["mean"], x_true, slice(L // 2, None, 2))
    e_s = _rmse(enks.sample_stats["mean"], x_true, slice(0, None))
    e_f_all = _rmse(enkf.sample_stats["mean"], x_true, slice(0, None))
    # with 12 members (< 16 variables) only localisation keeps the filter on track
    assert e_f < 0.35 * e_free, (e_f, e_free)
    assert e_s <= e_f_all, (e_s, e_f_all)  # the smoother uses future observations too


def test_enkf_input_errors(l96):
    prior, _, y, _ = l96

    def laplace(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Laplace(x[::2, ::2], 1.0), obs=y)

    def lagged(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[1::2, ::2] - x[:-1:2, ::2], 1.0), obs=y)

    with pytest.raises(TypeError, match="Gaussian"):
        EnKF(laplace, ensemble_size=4).run(jax.random.key(0), prior, y=y)
    with pytest.raises(ValueError, match="one time step"):
        EnKF(lagged, ensemble_size=4).run(jax.random.key(0), prior, y=y[:15])
    with pytest.raises(ValueError, match="variant"):
        EnKF(l96_model, variant="etkf")
    field = MarkovPrior(  # two channels on a 3 x 3 grid: no single grid to localise on
        dist.Normal(jnp.zeros((2, 3, 3)), 1.0).to_event(3),
        lambda x: dist.Normal(x, 1.0).to_event(3), 4,
    )

    def model2d(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, 0, 0, 0], 1.0), obs=y)

    with pytest.raises(ValueError, match="1-D or 2-D periodic grid"):
        EnKF(model2d, ensemble_size=4, localization=1.0).run(
            jax.random.key(0), field, y=jnp.zeros(4)
        )


def test_periodic_tapers_wrap_each_axis():
    # 1-D: the distance wraps around the ring; a (M,) or (M, 1) position array is the same
    xy, yy = periodic_tapers(jnp.array([0.0, 5.0]), 8, 2.0)
    np.testing.assert_allclose(xy[:, 0], gaspari_cohn(jnp.array([0, 1, 2, 3, 4, 3, 2, 1]) / 2.0))
    np.testing.assert_allclose(yy[0, 1], gaspari_cohn(jnp.array(3.0 / 2.0)))
    np.testing.assert_allclose(periodic_tapers(jnp.array([[0.0], [5.0]]), (8,), 2.0)[0], xy)
    # 2-D: Euclidean distance with each axis wrapped, cells in row-major (flat state) order
    xy2, yy2 = periodic_tapers(jnp.array([[0.0, 0.0], [3.5, 1.0]]), (6, 4), 3.0)
    rows, cols = np.unravel_index(np.arange(24), (6, 4))
    for m, (pr, pc) in enumerate([(0.0, 0.0), (3.5, 1.0)]):
        dr = np.minimum(np.abs(rows - pr), 6 - np.abs(rows - pr))
        dc = np.minimum(np.abs(cols - pc), 4 - np.abs(cols - pc))
        want = gaspari_cohn(jnp.asarray(np.hypot(dr, dc) / 3.0))
        np.testing.assert_allclose(xy2[:, m], want, atol=1e-6)
    np.testing.assert_allclose(yy2[0, 1], gaspari_cohn(jnp.array(np.hypot(2.5, 1.0) / 3.0)),
                               atol=1e-6)


def test_observation_positions_on_a_2d_grid():
    # pixels, a 2 x 2 block mean and a block that wraps around the periodic edge of a 6 x 6 grid
    def loc_of(x):  # (L, 1, 6, 6) -> flat observed means
        f = x[:, 0]
        return jnp.concatenate([f[:, 1, 4][:, None], f[:, 2:4, 2:4].mean((1, 2))[:, None],
                                (f[:, 0, 0] + f[:, 5, 0])[:, None]], axis=1).reshape(-1)

    points = jax.random.normal(jax.random.key(0), (2, 3, 1, 6, 6))
    pos = _component_locations(loc_of, points, 3, (6, 6), jax.random.key(1), chunk=8)
    assert pos.shape == (9, 2)
    np.testing.assert_allclose(pos[:3], [[1.0, 4.0], [2.5, 2.5], [5.5, 0.0]], atol=1e-6)
    assert localization_grid((1, 64, 64)) == (64, 64) and localization_grid((32,)) == (32,)


def _field_problem(n=8, L=10, stride=2, noise=0.3):
    """A linear-Gaussian field on an n x n torus: x' = 0.9 * (five-point average) x + N(0, 0.3²),
    every ``stride``-th pixel of each axis observed; as a (1, n, n) field and as flat vectors."""
    eye = np.eye(n)
    shift = np.roll(eye, 1, axis=1)
    lap1 = 0.1 * (shift + shift.T)
    A = 0.9 * (0.6 * np.eye(n * n) + np.kron(lap1, eye) + np.kron(eye, lap1))
    A, Q, P0 = jnp.asarray(A), 0.09 * jnp.eye(n * n), jnp.eye(n * n)
    m0 = jnp.zeros(n * n)
    flat = MarkovPrior(dist.MultivariateNormal(m0, P0),
                       lambda x: dist.MultivariateNormal(A @ x, Q), L,
                       linear=LinearGaussianDynamics(A, m0, Q, m0, P0))
    field = MarkovPrior(dist.Normal(jnp.zeros((1, n, n)), 1.0).to_event(3),
                        lambda x: dist.Normal((A @ x.reshape(-1)).reshape(1, n, n),
                                              0.3).to_event(3), L)

    def model(prior, y=None):
        x = numpyro.sample("x", prior).reshape(L, n, n)
        numpyro.sample("y", dist.Normal(x[:, ::stride, ::stride], noise), obs=y)

    truth = flat.sample(jax.random.key(0)).reshape(L, n, n)
    clean = truth[:, ::stride, ::stride]
    y = clean + noise * jax.random.normal(jax.random.key(1), clean.shape)
    return flat, field, model, y


def test_2d_localized_enks_is_closer_to_the_kalman_smoother():
    # 12 members for 64 variables: without localisation spurious long-range correlations spoil
    # the update; the 2-D taper removes them, so the EnKS mean moves toward the exact RTS mean
    flat, field, model, y = _field_problem()
    exact = KalmanSmoother(model).run(jax.random.key(2), flat, y=y, num_samples=2)
    m_exact = np.asarray(exact.sample_stats["mean"]).reshape(-1)

    def error(localization):  # RMSE of the ensemble mean to the exact smoother mean
        enks = EnKS(model, ensemble_size=12, variant="sqrt", localization=localization)
        m = np.asarray(enks.run(jax.random.key(0), field, y=y).sample_stats["mean"])
        return float(np.sqrt(np.mean((m.reshape(-1) - m_exact) ** 2)))

    # measured over keys 0-3: localised 0.28-0.32, global 0.44-0.61 (ratio 0.53-0.69 per key)
    e_local, e_global = error(1.5), error(None)
    assert e_local < 0.75 * e_global, (e_local, e_global)
    assert e_local < 0.35, e_local  # the prior's standard deviation is about 1

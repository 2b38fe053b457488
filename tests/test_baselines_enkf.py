"""EnKF / EnKS with Gaspari–Cohn localisation on Lorenz-96, and their input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_sda.baselines import EnKF, EnKS
from numpyro_sda.baselines.enkf import gaspari_cohn, mean_preserving_rotation
from numpyro_sda.markov import MarkovPrior
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
    field = MarkovPrior(
        dist.Normal(jnp.zeros((2, 2)), 1.0).to_event(2),
        lambda x: dist.Normal(x, 1.0).to_event(2), 4,
    )

    def model2d(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, 0, 0], 1.0), obs=y)

    with pytest.raises(ValueError, match="1-D"):
        EnKF(model2d, ensemble_size=4, localization=1.0).run(
            jax.random.key(0), field, y=jnp.zeros(4)
        )

"""ScoreEnsemble: the weighted average of independently trained local scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_sda as nsda
from numpyro_sda.ensemble import ScoreEnsemble
from numpyro_sda.prior import TrajectoryPrior
from numpyro_sda.score import LocalScore


def _scores():
    a = LocalScore.mlp(3, window=5, hidden=16, depth=1, rngs=0)
    b = LocalScore.mlp(3, window=5, hidden=8, depth=2, prediction="v", rngs=1)
    return a, b


def test_ensemble_averages_window_and_composed_predictions():
    a, b = _scores()
    ens = ScoreEnsemble([a, b], weights=[1.0, 3.0])
    assert ens.weights == (0.25, 0.75)
    w = jax.random.normal(jax.random.key(0), (4, 5, 3))
    np.testing.assert_allclose(ens.local(w, 0.4), 0.25 * a.local(w, 0.4) + 0.75 * b.local(w, 0.4),
                               rtol=1e-6, atol=1e-6)
    x = jax.random.normal(jax.random.key(1), (12, 3))
    for options in ({}, {"average": 1}, {"stride": 2}):
        want = 0.25 * a(x, 0.3, **options) + 0.75 * b(x, 0.3, **options)
        np.testing.assert_allclose(ens(x, 0.3, **options), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(jax.jit(ens.eps_fn(**options))(x, 0.3), want, rtol=1e-5,
                                   atol=1e-6)
    assert ens.num_params() == a.num_params() + b.num_params()


def test_ensemble_sparse_gradient_is_exact_for_observed_cotangents():
    a, b = _scores()
    ens = ScoreEnsemble([a, b])
    observed = np.zeros(12, bool)
    observed[[0, 5, 11]] = True
    x = jax.random.normal(jax.random.key(2), (12, 3))
    cot = jnp.where(jnp.asarray(observed)[:, None], jax.random.normal(jax.random.key(3), x.shape),
                    0.0)
    dense, sparse = ens.eps_fn(average=1), ens.eps_fn(observed, average=1)
    g_dense = jax.grad(lambda z: jnp.sum(dense(z, 0.5) * cot))(x)
    g_sparse = jax.grad(lambda z: jnp.sum(sparse(z, 0.5) * cot))(x)
    np.testing.assert_allclose(g_sparse, g_dense, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:SDA. the draws do not fit")  # untrained members, 4 steps
def test_ensemble_is_a_prior_and_runs_through_sda():
    a, b = _scores()
    for s in (a, b):
        s.set_data_range(-np.ones(3), np.ones(3))
    b.set_data_range(-2 * np.ones(3), 0.5 * np.ones(3))
    ens = ScoreEnsemble([a, b])
    lo, hi = ens.data_range
    np.testing.assert_array_equal(lo, -2.0)
    np.testing.assert_array_equal(hi, 1.0)
    prior = TrajectoryPrior(ens, length=10, average=1)
    assert prior.event_shape == (10, 3)
    y = np.full((10, 1), np.nan, np.float32)
    y[::3, 0] = 0.5

    def model(y=None):
        import numpyro
        import numpyro.distributions as dist

        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::3, :1], 0.1), obs=None if y is None else y[::3])

    sda = nsda.SDA(model, steps=4, corrections=1, progress=False)
    x = np.asarray(sda.run(jax.random.key(0), y=y, num_samples=3).get_samples()["x"])
    assert x.shape == (3, 10, 3) and np.isfinite(x).all()


def test_ensemble_errors_name_the_problem():
    a, b = _scores()
    with pytest.raises(ValueError, match="at least two"):
        ScoreEnsemble([a])
    with pytest.raises(ValueError, match="window"):
        ScoreEnsemble([a, LocalScore.mlp(3, window=3, hidden=8, depth=1)])
    with pytest.raises(ValueError, match="state_shape"):
        ScoreEnsemble([a, LocalScore.mlp(2, window=5, hidden=8, depth=1)])
    c = LocalScore.mlp(3, window=5, hidden=8, depth=1)
    c.set_normalization((np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="normalised"):
        ScoreEnsemble([a, c])
    for bad in ([1.0], [-1.0, 2.0], [0.0, 0.0], [np.nan, 1.0]):
        with pytest.raises(ValueError, match="weights"):
            ScoreEnsemble([a, b], weights=bad)

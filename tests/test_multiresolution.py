"""MultiResolutionScore: a coarse local score on every stride-th state at high noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_sda as nsda
from numpyro_sda.multiresolution import MultiResolutionScore
from numpyro_sda.prior import TrajectoryPrior
from numpyro_sda.score import LocalScore


def _scores():
    fine = LocalScore.mlp(3, window=5, hidden=16, depth=1, rngs=0)
    coarse = LocalScore.mlp(3, window=3, hidden=8, depth=2, rngs=1)
    return fine, coarse


def test_coarse_states_take_the_coarse_score_above_the_switch_only():
    fine, coarse = _scores()
    mr = MultiResolutionScore(fine, coarse, stride=2, coarse_above=0.3)
    x = jax.random.normal(jax.random.key(0), (13, 3))
    for options in ({}, {"average": 1}):
        eps = jax.jit(mr.eps_fn(**options))
        f = fine.eps_fn(**options)
        c = coarse.eps_fn(**options)
        low, high = eps(x, 0.2), eps(x, 0.6)
        np.testing.assert_allclose(low, f(x, 0.2), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(high[1::2], f(x, 0.6)[1::2], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(high[0::2], c(x[0::2], 0.6), rtol=1e-5, atol=1e-6)
        assert not np.allclose(high[0::2], f(x, 0.6)[0::2])  # the switch did change them
    assert mr.num_params() == fine.num_params() + coarse.num_params()
    assert "stride 2" in repr(mr)


def test_sparse_gradient_is_exact_for_observed_cotangents():
    fine, coarse = _scores()
    mr = MultiResolutionScore(fine, coarse, stride=3, coarse_above=0.25)
    observed = np.zeros(16, bool)
    observed[[0, 4, 9, 15]] = True
    x = jax.random.normal(jax.random.key(2), (16, 3))
    cot = jnp.where(jnp.asarray(observed)[:, None], jax.random.normal(jax.random.key(3), x.shape),
                    0.0)
    dense, sparse = mr.eps_fn(average=1), mr.eps_fn(observed, average=1)
    for t in (0.1, 0.7):
        g_dense = jax.grad(lambda z, t=t: jnp.sum(dense(z, t) * cot))(x)
        g_sparse = jax.grad(lambda z, t=t: jnp.sum(sparse(z, t) * cot))(x)
        np.testing.assert_allclose(g_sparse, g_dense, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:SDA. the draws do not fit")  # untrained scores, 4 steps
def test_multiresolution_prior_runs_through_sda():
    fine, coarse = _scores()
    fine.set_data_range(-np.ones(3), np.ones(3))
    prior = TrajectoryPrior(MultiResolutionScore(fine, coarse), length=11, average=1)
    y = np.full((11, 1), np.nan, np.float32)
    y[::2, 0] = 0.5

    def model(y=None):
        import numpyro
        import numpyro.distributions as dist

        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::2, :1], 0.1), obs=None if y is None else y[::2])

    sda = nsda.SDA(model, steps=4, corrections=1, correct_below=1.0, progress=False)
    x = np.asarray(sda.run(jax.random.key(0), y=y, num_samples=3).get_samples()["x"])
    assert x.shape == (3, 11, 3) and np.isfinite(x).all()


def test_multiresolution_errors_name_the_problem():
    fine, coarse = _scores()
    with pytest.raises(ValueError, match="stride"):
        MultiResolutionScore(fine, coarse, stride=1)
    with pytest.raises(ValueError, match="coarse_above"):
        MultiResolutionScore(fine, coarse, coarse_above=1.0)
    with pytest.raises(ValueError, match="state_shape"):
        MultiResolutionScore(fine, LocalScore.mlp(2, window=3, hidden=8, depth=1))
    c = LocalScore.mlp(3, window=3, hidden=8, depth=1)
    c.set_normalization((np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="normalised"):
        MultiResolutionScore(fine, c)
    mr = MultiResolutionScore(fine, LocalScore.mlp(3, window=5, hidden=8, depth=1), stride=3)
    assert mr.min_length() == 13
    with pytest.raises(ValueError, match="too short"):
        mr.eps_fn()(jnp.zeros((12, 3)), 0.5)
    with pytest.raises(ValueError, match="too short"):
        mr.eps_fn(np.ones(12, bool))

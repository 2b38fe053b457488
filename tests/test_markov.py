"""MarkovPrior: a user-built chain as a NumPyro distribution, and tracing of user models."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer import MCMC, NUTS

from numpyro_sda.markov import MarkovPrior
from numpyro_sda.tracing import trace_model


def ar1(length=5, phi=0.8, q=0.5):
    return MarkovPrior(
        dist.Normal(0.0, 1.0).expand([1]).to_event(1),
        lambda x: dist.Normal(phi * x, q).to_event(1),
        length,
    )


def test_user_built_markov_prior_log_prob():
    prior = ar1()
    x = prior.sample(jax.random.PRNGKey(0), (4,))
    assert x.shape == (4, 5, 1)
    from scipy.stats import norm

    xs = np.asarray(x)[..., 0]
    expected = norm(0, 1).logpdf(xs[:, 0]) + norm(0.8 * xs[:, :-1], 0.5).logpdf(xs[:, 1:]).sum(-1)
    np.testing.assert_allclose(prior.log_prob(x), expected, rtol=1e-5)


def test_markov_prior_sample_statistics():
    prior = ar1(length=3)
    x = np.asarray(prior.sample(jax.random.PRNGKey(1), (20000,)))[..., 0]
    # Var x_2 = 0.64 + 0.25, Var x_3 = 0.64 * 0.89 + 0.25
    np.testing.assert_allclose(x.var(0), [1.0, 0.89, 0.8196], rtol=0.05)


def test_markov_prior_works_with_nuts():
    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, 0], 0.3), obs=y)

    y = jnp.array([0.5, 0.2, -0.1, 0.3, 0.9])
    mcmc = MCMC(NUTS(model), num_warmup=200, num_samples=400, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), ar1(), y=y)
    assert mcmc.get_samples()["x"].shape == (400, 5, 1)


def test_spun_up_initial_samples_but_has_no_density():
    prior = ar1().spun_up(10)
    x = prior.sample(jax.random.PRNGKey(0), (2,))
    assert x.shape == (2, 5, 1)
    with pytest.raises(ValueError, match="no closed-form density"):
        prior.log_prob(x)


def test_markov_prior_bad_input():
    with pytest.raises(ValueError, match="batch_shape must be"):
        MarkovPrior(dist.Normal(jnp.zeros(3), 1.0), lambda x: dist.Normal(x, 1.0), 4)
    with pytest.raises(ValueError, match="length must be a positive integer"):
        ar1(length=0)
    with pytest.raises(TypeError, match="numpyro Distribution"):
        MarkovPrior("normal", lambda x: x, 4)


# ---------------------------------------------------------------------- tracing
def model_two_sites(prior, y=None, z=None, mask=None):
    x = numpyro.sample("traj", prior)
    numpyro.sample("y", dist.Normal(x[::2, 0], 0.1), obs=y, obs_mask=mask)
    numpyro.sample("z", dist.Poisson(jnp.exp(x[-1, 0])), obs=z)


def test_trace_model_finds_sites_and_builds_likelihood():
    prior = ar1(length=5)
    y = jnp.array([0.1, 0.2, 0.3])
    z = jnp.array(2.0)
    mask = jnp.array([True, False, True])
    traced = trace_model(model_two_sites, (prior,), {"y": y, "z": z, "mask": mask})
    assert traced.prior_name == "traj"
    assert set(traced.observed) == {"y_observed", "z"}
    assert traced.imputed == ["y_unobserved"]
    assert traced.latent == []
    x = prior.sample(jax.random.PRNGKey(0))
    expected = (
        dist.Normal(x[::2, 0], 0.1).log_prob(y)[jnp.array([0, 2])].sum()
        + dist.Poisson(jnp.exp(x[-1, 0])).log_prob(z)
    )
    np.testing.assert_allclose(traced.log_likelihood(x), expected, rtol=1e-5)
    grad = jax.grad(traced.log_likelihood)(x)
    assert grad.shape == x.shape and np.all(np.isfinite(grad))
    # the masked element (time 2) carries no gradient, the last time does (Poisson)
    assert grad[2, 0] == 0 and grad[4, 0] != 0
    xs = prior.sample(jax.random.PRNGKey(1), (7,))
    pp = traced.posterior_predictive(jax.random.PRNGKey(2), xs)
    # the obs_mask site is returned under the user's name, as numpyro's Predictive does
    assert pp["y"].shape == (7, 3) and pp["z"].shape == (7,)
    assert set(traced.public_observations) == {"y", "z"}


def test_trace_model_errors_name_the_problem():
    def no_prior(y=None):
        x = numpyro.sample("x", dist.Normal(0, 1))
        numpyro.sample("y", dist.Normal(x, 1), obs=y)

    with pytest.raises(ValueError, match="no trajectory site.*'x'"):
        trace_model(no_prior, (), {"y": 1.0})

    def two_priors(prior, y=None):
        a = numpyro.sample("a", prior)
        b = numpyro.sample("b", prior)
        numpyro.sample("y", dist.Normal(a + b, 1).to_event(2), obs=y)

    with pytest.raises(ValueError, match=r"2 trajectory sites \['a', 'b'\]"):
        trace_model(two_priors, (ar1(),), {"y": jnp.zeros((5, 1))})

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, 0], 1), obs=y)

    with pytest.raises(ValueError, match=r"site 'y'.*shape \(4,\).*\(5,\)"):
        trace_model(model, (ar1(),), {"y": jnp.zeros(4)})
    with pytest.raises(ValueError, match="site 'y' contains NaN"):
        trace_model(model, (ar1(),), {"y": jnp.array([0.0, jnp.nan, 0, 0, 0])})
    with pytest.raises(ValueError, match="no observed site"):
        trace_model(model, (ar1(),), {})
    traced = trace_model(model, (ar1(),), {"y": jnp.zeros(5)})
    with pytest.raises(ValueError, match=r"must have shape \(5, 1\)"):
        traced.log_likelihood(jnp.zeros((4, 1)))


def test_trace_model_reports_other_latent_sites():
    def model(prior, y=None):
        s = numpyro.sample("noise", dist.HalfNormal(1.0))
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, 0], s), obs=y)

    traced = trace_model(model, (ar1(),), {"y": jnp.zeros(5)})
    assert traced.latent == ["noise"]
    x = jnp.zeros((5, 1))
    np.testing.assert_allclose(
        traced.log_likelihood(x, {"noise": 2.0}), dist.Normal(0, 2.0).log_prob(0.0) * 5, rtol=1e-6)
    with handlers.seed(rng_seed=0):
        pass


def test_dependent_states_of_sliced_strided_and_nonlinear_operators():
    def model(prior, y=None, z=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[1::3, 0], 0.1), obs=y)
        numpyro.sample("z", dist.Normal(jnp.sin(x[-1, 0]) * x[4, 0], 0.1), obs=z)

    prior = ar1(length=8)
    traced = trace_model(model, (prior,), {"y": jnp.zeros(3), "z": jnp.array(0.0)})
    np.testing.assert_array_equal(np.flatnonzero(traced.dependent_states()), [1, 4, 7])

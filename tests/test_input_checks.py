"""Bad input raises a clear error naming the problem (issue 12, items 1-5, 15, 19)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numpyro_sda.guidance import MMPS
from numpyro_sda.infer import SDA
from numpyro_sda.prior import TrajectoryPrior, gaussian_eps
from numpyro_sda.score import LocalScore
from numpyro_sda.sde import VPSDE
from numpyro_sda.tracing import trace_model

L, D = 8, 3


@pytest.fixture(scope="module")
def prior():
    return TrajectoryPrior(gaussian_eps(np.zeros((L, D)), np.eye(L * D)), length=L,
                           state_shape=(D,))


def test_observations_that_only_broadcast_are_refused(prior):
    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:5, :1], 0.1), obs=y)

    with pytest.raises(ValueError, match=r"'y'.*shape \(5,\).*\(5, 1\)"):
        trace_model(model, (prior,), {"y": jnp.zeros(5)})
    trace_model(model, (prior,), {"y": jnp.zeros((5, 1))})  # the right shape works


def test_an_observation_that_selects_nothing_is_refused(prior):
    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::8, 3:4], 0.1), obs=y)

    with pytest.raises(ValueError, match="'y'.*selects no element"):
        SDA(model).run(jax.random.key(0), prior, y=jnp.zeros((1, 0)), num_samples=2)


def test_obs_mask_of_the_wrong_shape_is_refused(prior):
    def model(prior, y=None, mask=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, :1], 0.1), obs=y, obs_mask=mask)

    with pytest.raises(ValueError, match=r"obs_mask of site 'y'.*\(8, 1\)"):
        trace_model(model, (prior,), {"y": jnp.zeros((L, 1)), "mask": jnp.ones(L, bool)})
    traced = trace_model(model, (prior,), {"y": jnp.zeros((L, 1)),
                                           "mask": jnp.ones((L, 1), bool)})
    assert set(traced.public_observations) == {"y"}


def test_obs_mask_keeps_the_users_site_name(prior):
    def model(prior, y=None, mask=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, :1], 0.1), obs=y, obs_mask=mask)

    mask = jnp.arange(L)[:, None] % 2 == 0
    out = SDA(model, steps=4, corrections=0, progress=False).run(
        jax.random.key(0), prior, y=jnp.zeros((L, 1)), mask=mask, num_samples=3)
    assert set(out.observations) == {"y"}
    assert set(out.posterior_predictive) == {"y"}
    assert out.posterior_predictive["y"].shape == (3, L, 1)


def test_non_integer_counts_are_refused(prior):
    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, :1], 0.1), obs=y)

    with pytest.raises((TypeError, ValueError), match="num_samples must be an integer"):
        SDA(model).run(jax.random.key(0), prior, y=jnp.zeros((L, 1)), num_samples=2.5)
    with pytest.raises(TypeError, match="length must be an integer"):
        TrajectoryPrior(gaussian_eps(np.zeros((L, D)), np.eye(L * D)), length=33.7,
                        state_shape=(D,))
    with pytest.raises(TypeError, match="steps must be an integer"):
        SDA(model, steps=10.5)


def test_rng_key_is_checked_before_compiling(prior):
    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, :1], 0.1), obs=y)

    with pytest.raises(TypeError, match="rng_key must be a JAX PRNG key"):
        SDA(model).run(0, prior, y=jnp.zeros((L, 1)), num_samples=2)


def test_a_prior_with_another_noise_schedule_is_refused():
    score = LocalScore.mlp(D, window=3, hidden=16, depth=1)
    with pytest.raises(ValueError, match="noise schedule.*differs"):
        TrajectoryPrior(score, length=L, sde=VPSDE(alpha="lin"))
    assert TrajectoryPrior(score, length=L).sde == score.sde


# ---------------------------------------------------------------------------------- property
OPS = {
    "identity": lambda x: x,
    "square": lambda x: x**2,
    "tanh": jnp.tanh,
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(
    every=st.integers(1, 4),
    channels=st.lists(st.integers(0, D - 1), min_size=1, max_size=D, unique=True),
    op=st.sampled_from(sorted(OPS)),
    shape_error=st.sampled_from(["none", "flat", "extra"]),
    masked=st.booleans(),
)
def test_random_observation_models_work_or_fail_clearly(prior, every, channels, op, shape_error,
                                                        masked):
    """Every combination either samples finite draws with the observed values under the user's
    name, or raises a ValueError naming the site."""
    ch = np.asarray(sorted(channels))
    f = OPS[op]

    def model(prior, y=None, mask=None):
        x = numpyro.sample("x", prior)
        kw = {"obs_mask": mask} if masked else {}
        numpyro.sample("y", dist.Normal(f(x[::every][:, ch]), 0.1), obs=y, **kw)

    n = len(range(0, L, every))
    shape = (n, len(ch))
    y = jnp.zeros(shape)
    if shape_error == "flat":
        y = y.reshape(-1)
    elif shape_error == "extra":
        y = y[None]
    kwargs = {"y": y}
    if masked:
        kwargs["mask"] = jnp.ones(shape, bool).at[0].set(False)
    sda = SDA(model, steps=2, corrections=0, guidance=MMPS(), progress=False, predictive=False)
    if shape_error != "none":
        with pytest.raises(ValueError, match="'y'"):
            sda.run(jax.random.key(0), prior, **kwargs, num_samples=2)
        return
    out = sda.run(jax.random.key(0), prior, **kwargs, num_samples=2)
    assert set(out.observations) == {"y"}
    assert bool(jnp.all(jnp.isfinite(out.get_samples()["x"])))


def test_a_prior_inside_a_plate_gets_a_clear_error(prior):
    def model(prior, y=None):
        with numpyro.plate("members", 2):
            x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[..., 0, :1], 0.1), obs=y)

    with pytest.raises(ValueError, match="'x' is inside a plate.*num_samples"):
        trace_model(model, (prior,), {"y": jnp.zeros((2, 1))})


def test_local_score_repr_is_one_line():
    score = LocalScore.mlp(D, window=3, hidden=16, depth=1)
    text = repr(score)
    assert "\n" not in text and "window=3" in text and "params=" in text and len(text) < 300

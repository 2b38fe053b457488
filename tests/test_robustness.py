"""Guided sampling on a learned prior never diverges: nonlinear operators, tiny noise, outliers.

The shipped Lorenz-63 prior records the range of its training data; SDA keeps its guided
denoiser in that range (plus 10% of the span), so every draw is finite and bounded whatever the
guidance, and a likelihood the sampler cannot honour is reported, never silent.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_sda import pretrained
from numpyro_sda.guidance import DPS, MMPS, SDAGuidance
from numpyro_sda.infer import SDA
from numpyro_sda.prior import TrajectoryPrior
from numpyro_sda.systems import Lorenz63

LENGTH = 17
OPERATORS = {
    "quadratic": lambda x: x[::4, :1] ** 2,
    "saturating": lambda x: jnp.tanh(2.0 * x[::2, :2]),
    "norm": lambda x: jnp.linalg.norm(x[::4], axis=-1, keepdims=True),
}


@pytest.fixture(scope="module")
def setup():
    score = pretrained.load("lorenz63")
    prior = TrajectoryPrior(score, length=LENGTH)
    system = Lorenz63()
    x_true = system.normalize(system.simulate(jax.random.key(5), 1, LENGTH, burn_in=512)[0])
    lo, hi = score.data_range
    margin = 0.1 * (hi - lo)
    return prior, x_true, lo - margin, hi + margin


def _model(op, noise):
    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(op(x), noise), obs=y)

    return model


@pytest.fixture(scope="module")
def setup_default_prior(setup):
    """The demo's prior: the two-resolution window-9 prior, composed with ``average=1``."""
    score = pretrained.load("lorenz63_multiresolution")
    lo, hi = score.data_range
    margin = 0.1 * (hi - lo)
    prior = TrajectoryPrior(score, length=LENGTH, average=1)
    return prior, setup[1], lo - margin, hi + margin


@pytest.mark.parametrize("guidance", [SDAGuidance(), DPS(), MMPS()], ids=["sda", "dps", "mmps"])
@pytest.mark.parametrize("which", ["window5", "multiresolution"])
def test_nonlinear_operators_give_finite_bounded_draws(setup, setup_default_prior, guidance,
                                                       which):
    """Quadratic, saturating and norm operators observed together (three sites, one model), on
    the window-5 prior and on the demo's two-resolution prior."""
    prior, x_true, lo, hi = setup if which == "window5" else setup_default_prior

    def model(prior, **obs):
        x = numpyro.sample("x", prior)
        for name, op in OPERATORS.items():
            numpyro.sample(name, dist.Normal(op(x), 0.05), obs=obs.get(name))

    ys = {name: op(x_true) + 0.05 * jax.random.normal(jax.random.key(i), op(x_true).shape)
          for i, (name, op) in enumerate(OPERATORS.items())}
    sda = SDA(model, steps=16, corrections=1, guidance=guidance, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fit warning is allowed here
        out = sda.run(jax.random.key(2), prior, num_samples=8, **ys)
    xs = np.asarray(out.get_samples()["x"])
    assert np.all(np.isfinite(xs)), f"{guidance.name}: non-finite draws"
    assert np.all(xs >= lo - 1e-6) and np.all(xs <= hi + 1e-6), (
        f"{guidance.name}: draws leave the training range: {xs.min()} .. {xs.max()}")
    assert not bool(np.any(out.sample_stats["diverging"]))


def test_default_settings_fit_a_nonlinear_operator(setup):
    """The default guidance (MMPS) on a quadratic operator: finite, bounded, and the draws fit
    the observations (mean squared standardised residual of order one)."""
    prior, x_true, lo, hi = setup
    op = OPERATORS["quadratic"]
    y = op(x_true) + 0.1 * jax.random.normal(jax.random.key(3), op(x_true).shape)
    out = SDA(_model(op, 0.1), steps=32, progress=False).run(jax.random.key(4), prior, y=y,
                                                              num_samples=16)
    xs = np.asarray(out.get_samples()["x"])
    assert np.all(np.isfinite(xs)) and np.all(xs >= lo - 1e-6) and np.all(xs <= hi + 1e-6)
    chi2 = np.asarray(out.sample_stats["chi2"])
    print(f"\nquadratic operator, default SDA: median chi2 {np.median(chi2):.2f}")
    assert np.median(chi2) < 4.0


def test_unfittable_observations_are_reported_not_silent(setup):
    """Observations far outside what the prior can produce (y = 1e3) and a likelihood far sharper
    than the sampler resolves: bounded draws and a warning naming the problem."""
    prior, x_true, lo, hi = setup
    model = _model(lambda x: x[::4, :1], 0.05)
    y = jnp.full((5, 1), 1e3)
    with pytest.warns(RuntimeWarning, match="do not fit the observations"):
        out = SDA(model, steps=8, corrections=0, progress=False).run(jax.random.key(0), prior,
                                                                     y=y, num_samples=4)
    xs = np.asarray(out.get_samples()["x"])
    assert np.all(np.isfinite(xs)) and np.all(xs <= hi + 1e-6)

    tiny = _model(lambda x: x[::4, :1], 1e-6)
    y = x_true[::4, :1]
    with pytest.warns(RuntimeWarning, match="do not fit the observations"):
        SDA(tiny, steps=4, corrections=0, guidance=SDAGuidance(), progress=False).run(
            jax.random.key(0), prior, y=y, num_samples=4)


def test_explicit_bounds_and_no_bounds(setup):
    prior, x_true, lo, hi = setup
    model = _model(lambda x: x[::4, :1], 0.05)
    y = jnp.full((5, 1), 1e3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = SDA(model, steps=8, corrections=0, bounds=(-1.0, 1.0), progress=False).run(
            jax.random.key(0), prior, y=y, num_samples=4)
    assert float(jnp.max(jnp.abs(out.get_samples()["x"]))) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="bounds"):
        SDA(model, bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="bounds"):
        SDA(model, bounds="everywhere")


def test_every_shipped_prior_records_its_training_range():
    """bounds='auto' needs the range: without it the KS UNet's guided draws diverged at SDA's
    default settings (max |x| 3e6 at 4 steps, 3e10 at 8, a non-finite draw at 32)."""
    for name in pretrained.available():
        rng = pretrained.load(name).data_range
        assert rng is not None, name
        assert np.all(rng[0] < 0) and np.all(rng[1] > 0), name  # normalised data straddle 0


def test_ks_prior_at_default_settings_gives_finite_bounded_draws():
    from numpyro_sda.scenarios import ks_scenario

    score = pretrained.load("ks")
    scn = ks_scenario(jax.random.PRNGKey(0), "sparse", length=9)
    sda = SDA(scn.model, steps=8, progress=False, predictive=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sda.run(jax.random.PRNGKey(1), TrajectoryPrior(score, length=9), y=scn.y, num_samples=4)
    x = np.asarray(sda.get_samples()["x"])
    lo, hi = score.data_range
    span = hi - lo
    assert np.all(np.isfinite(x))
    # the last step adds noise of order sigma(0) to the boxed denoiser: allow a little
    assert x.min() > lo.min() - 0.2 * span.max() and x.max() < hi.max() + 0.2 * span.max()
    assert not [w for w in caught if "not finite" in str(w.message)]

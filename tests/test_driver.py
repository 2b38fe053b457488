"""Tests of the inference driver (numpyro_sda.results.InferenceMethod) and of what it gives every
method: typed settings, argument checks before compilation, deterministic sites, kept model
arguments, chains, and the baselines' own fixes that go through it (x64, MVN sites, paths)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_sda.baselines import EnKF, EnKS, FourDVar, KalmanSmoother, ParticleSmoother
from numpyro_sda.baselines.enkf import EnsembleSettings
from numpyro_sda.baselines.particle import ParticleSettings
from numpyro_sda.baselines.var4d import FourDVarSettings
from numpyro_sda.markov import MarkovPrior
from numpyro_sda.results import InferenceMethod, check_int, check_rng_key
from numpyro_sda.systems import LinearGaussian

LENGTH, DIM = 6, 2


def make_prior(length: int = LENGTH) -> MarkovPrior:
    initial = dist.Normal(jnp.zeros(DIM), 1.0).to_event(1)
    return MarkovPrior(initial, lambda x: dist.Normal(0.9 * x, 0.3).to_event(1), length)


def model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.deterministic("energy", jnp.sum(x**2, axis=-1))
    numpyro.sample("y", dist.Normal(x[::2, :1], 0.1), obs=y)


Y = jnp.array([[0.5], [-0.3], [0.8]])


# ---------------------------------------------------------------------------------- a toy method
@dataclass(frozen=True)
class ToySettings:
    num_proposals: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_proposals",
                           check_int("num_proposals", self.num_proposals, 1))


class ToyImportance(InferenceMethod):
    """Importance resampling from the prior, written only through the driver's hooks."""

    method = "toy"

    def __init__(self, model, num_proposals: int = 512, num_chains: int = 1) -> None:
        super().__init__(model, ToySettings(num_proposals))
        self.num_chains = num_chains
        self.calls: list[str] = []

    def default_num_samples(self, traced):
        return 8 * self.num_chains

    def _prepare(self, traced, rng_key, num_samples):
        self.calls.append("prepare")
        n = self.settings.num_proposals

        def draw(key):
            k1, k2 = jax.random.split(key)
            xs = traced.prior.sample(k1, (n,))
            logw = jax.vmap(traced.log_likelihood)(xs)
            idx = jax.random.categorical(k2, logw, shape=(num_samples,))
            return xs[idx], logw[idx]

        return jax.jit(draw).lower(rng_key).compile()

    def _draw(self, state, rng_key, num_samples):
        self.calls.append("draw")
        xs, logw = state(rng_key)
        return {"x": xs}, {"log_weight": logw, "num_proposals": jnp.asarray(512)}

    def _finish(self, state, samples, sample_stats):
        self.calls.append("finish")

    def _num_model_evals(self, state, num_samples):
        return self.settings.num_proposals * LENGTH


def test_driver_runs_the_hooks_once_in_order():
    toy = ToyImportance(model)
    out = toy.run(jax.random.key(0), make_prior(), y=Y, num_samples=16)
    assert out is toy and toy.calls == ["prepare", "draw", "finish"]
    s = toy.get_samples()
    assert s["x"].shape == (16, LENGTH, DIM)
    np.testing.assert_allclose(s["energy"], np.sum(np.asarray(s["x"]) ** 2, -1), rtol=1e-5)
    assert toy.prior_site == "x" and set(toy.observations) == {"y"}
    assert toy.posterior_predictive["y"].shape == (16, 3, 1)
    assert toy.compile_time > 0 and toy.wall_time > 0
    assert toy.num_model_evals == 512 * LENGTH
    assert toy.model_kwargs["y"] is Y and len(toy.model_args) == 1
    assert toy.settings_dict() == {"num_proposals": 512}
    assert repr(toy) == "ToyImportance(num_proposals=512)"
    # default number of draws comes from the method
    assert toy.run(jax.random.key(1), make_prior(), y=Y).num_draws == 8


def test_bad_run_arguments_fail_before_tracing_or_compiling():
    toy = ToyImportance(model)
    for key in (0, np.int64(3), jnp.zeros(2, jnp.float32), jax.random.split(jax.random.key(0))):
        with pytest.raises((TypeError, ValueError), match="rng_key"):
            toy.run(key, make_prior(), y=Y)
    with pytest.raises(ValueError, match="num_samples must be an integer"):
        toy.run(jax.random.key(0), make_prior(), y=Y, num_samples=2.5)
    with pytest.raises(TypeError, match="num_samples must be an integer"):
        toy.run(jax.random.key(0), make_prior(), y=Y, num_samples="4")
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        toy.run(jax.random.key(0), make_prior(), y=Y, num_samples=0)
    assert toy.calls == []  # nothing was prepared (compiled)
    assert check_rng_key(jax.random.PRNGKey(0)).shape == (2,)  # raw keys stay accepted


def test_settings_dataclasses_are_frozen_and_validated():
    for settings in (ParticleSettings(), EnsembleSettings(), FourDVarSettings(), ToySettings()):
        field = dataclasses.fields(settings)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, field, 3)
    assert ParticleSettings(num_particles=64.0).num_particles == 64
    with pytest.raises(ValueError, match="num_particles must be an integer"):
        ParticleSmoother(model, num_particles=10.5)
    with pytest.raises(ValueError, match="ensemble_size must be an integer"):
        EnKS(model, ensemble_size=20.5)
    with pytest.raises(ValueError, match="max_iter must be an integer"):
        FourDVar(model, max_iter=10.5)
    with pytest.raises(TypeError, match="max_lag must be an integer"):
        ParticleSettings(max_lag=True)
    with pytest.raises(ValueError, match="smoother must be one of"):
        ParticleSmoother(model, smoother="backward")
    with pytest.raises(ValueError, match="inflation must be >"):
        EnKF(model, inflation=0.0)
    with pytest.raises(TypeError, match="settings must be a ParticleSettings"):
        ParticleSmoother(model, settings=EnsembleSettings())
    pf = ParticleSmoother(model, settings=ParticleSettings(num_particles=32))
    assert pf.settings.num_particles == 32 and not isinstance(pf.settings, dict)
    assert FourDVarSettings(precision="float64").ftol == 0.0


def test_deprecated_constructor_num_samples_still_works():
    with pytest.warns(DeprecationWarning, match="pass num_samples to run"):
        kal = KalmanSmoother(model, num_samples=12)
    lg = LinearGaussian(0.9 * jnp.eye(DIM), 0.3 * jnp.eye(DIM), jnp.zeros(DIM), jnp.eye(DIM))
    kal.run(jax.random.key(0), lg.markov_prior(LENGTH), y=Y)
    assert kal.num_draws == 12
    with pytest.raises(ValueError, match="num_samples must be an integer"):
        with pytest.warns(DeprecationWarning):
            ParticleSmoother(model, num_particles=64, num_samples=2.5)


# ---------------------------------------------------------------------------------- every baseline
def _baselines():
    lg = LinearGaussian(0.9 * jnp.eye(DIM), 0.3 * jnp.eye(DIM), jnp.zeros(DIM), jnp.eye(DIM))
    return [
        (ParticleSmoother(model, num_particles=128), make_prior(), 32),
        (EnKS(model, ensemble_size=16), make_prior(), 16),
        (FourDVar(model, max_iter=50), make_prior(), 1),
        (KalmanSmoother(model), lg.markov_prior(LENGTH), 32),
    ]


def test_every_baseline_returns_deterministic_sites_and_keeps_model_arguments():
    for method, prior, n in _baselines():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            method.run(jax.random.key(0), prior, y=Y, num_samples=n)
        s = method.get_samples()
        name = type(method).__name__
        assert set(s) == {"x", "energy"}, name
        assert s["energy"].shape == (n, LENGTH), name
        np.testing.assert_allclose(s["energy"], np.sum(np.asarray(s["x"]) ** 2, -1), rtol=1e-4,
                                   err_msg=name)
        assert method.model_kwargs["y"] is Y and method.model_args[0] is prior, name
        assert method.compile_time > 0 and method.wall_time > 0, name


def test_particle_smoother_and_fourdvar_run_with_x64():
    from numpyro_sda.systems import Lorenz63

    jax.config.update("jax_enable_x64", True)
    try:
        prior = make_prior()
        pf = ParticleSmoother(model, num_particles=64).run(jax.random.key(0), prior, y=Y,
                                                          num_samples=16)
        assert np.all(np.isfinite(pf.get_samples()["x"]))
        l63 = Lorenz63().markov_prior(9)  # float32 system constants, float64 elsewhere
        y = jnp.ones((3, 1))

        def l63_model(prior, y=None):
            x = numpyro.sample("x", prior)
            numpyro.sample("y", dist.Normal(x[::4, :1], 0.1), obs=y)

        for precision in ("float32", "float64"):
            var = FourDVar(l63_model, precision=precision, max_iter=20).run(
                jax.random.key(0), l63, y=y)
            assert np.all(np.isfinite(var.get_samples()["x"])), precision
            assert var.get_samples()["x"].shape == (1, 9, 3)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_particle_path_degeneracy_is_counted_and_warned():
    prior = make_prior(12)
    y = jnp.linspace(-1.0, 1.0, 6)[:, None]
    pf = ParticleSmoother(model, num_particles=64, smoother="ancestral", ess_threshold=1.0)
    with pytest.warns(RuntimeWarning, match=r"path degeneracy.*smoother='ffbsi'"):
        pf.run(jax.random.key(0), prior, y=y, num_samples=64)
    distinct = np.asarray(pf.sample_stats["distinct_paths"])
    assert distinct.shape == (12,) and distinct.min() < 0.1 * 64
    # the counts are what the draws hold: distinct states at each time
    xs = np.asarray(pf.get_samples()["x"])
    for t in (0, 11):
        assert distinct[t] == len(np.unique(xs[:, t], axis=0))
    # "auto" picks FFBSi when affordable, ancestral tracing beyond the budget
    auto = ParticleSmoother(model, num_particles=64, ess_threshold=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no path warning with FFBSi here
        auto.run(jax.random.key(0), prior, y=y, num_samples=64)
    assert auto.smoother_used == "ffbsi"
    assert np.asarray(auto.sample_stats["distinct_paths"]).min() >= 0.1 * 64
    assert ParticleSettings(ffbsi_budget=0).choose_smoother(64, 12, 1) == "ancestral"
    assert ParticleSettings().choose_smoother(64, 12, 2) == "ancestral"  # lagged: not Markov


def _mvn_model(prior, R, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.MultivariateNormal(x, R), obs=y)


def _normal_model(prior, R, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x, jnp.sqrt(jnp.diagonal(R))).to_event(2), obs=y)


def test_enkf_accepts_multivariate_normal_sites():
    L = 3
    A, Qs = 0.5, 0.5
    prior = MarkovPrior(dist.Normal(jnp.zeros(DIM), 1.0).to_event(1),
                        lambda x: dist.Normal(A * x, Qs).to_event(1), L)
    y = jnp.array([[0.6, -0.4], [1.0, 0.2], [-0.3, 0.5]])
    # diagonal covariance: the same analysis as independent Normal elements
    Rd = jnp.diag(jnp.array([0.2, 0.5]) ** 2)
    a = EnKS(_mvn_model, ensemble_size=32).run(jax.random.key(1), prior, Rd, y=y)
    b = EnKS(_normal_model, ensemble_size=32).run(jax.random.key(1), prior, Rd, y=y)
    np.testing.assert_allclose(a.get_samples()["x"], b.get_samples()["x"], rtol=1e-4, atol=1e-4)
    assert a.posterior_predictive["y"].shape == (32, L, DIM)
    # full covariance: the large-ensemble mean matches the exact Gaussian posterior mean
    R = jnp.array([[0.3, 0.2], [0.2, 0.4]])
    enks = EnKS(_mvn_model, ensemble_size=4000, variant="sqrt").run(
        jax.random.key(2), prior, R, y=y)
    cov = np.zeros((L * DIM, L * DIM))  # prior covariance of the stacked trajectory
    var = [1.0]
    for _ in range(1, L):
        var.append(A**2 * var[-1] + Qs**2)
    for s in range(L):
        for t in range(L):
            c = var[min(s, t)] * A ** abs(s - t)
            cov[s * DIM:(s + 1) * DIM, t * DIM:(t + 1) * DIM] = c * np.eye(DIM)
    Rb = np.kron(np.eye(L), np.asarray(R))
    mean = cov @ np.linalg.solve(cov + Rb, np.asarray(y).ravel())
    post_cov = cov - cov @ np.linalg.solve(cov + Rb, cov)
    std = np.sqrt(np.diag(post_cov))
    est = np.asarray(enks.get_samples()["x"]).mean(0).ravel()
    assert np.max(np.abs(est - mean) / std) < 0.15

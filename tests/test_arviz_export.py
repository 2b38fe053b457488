"""Tests of numpyro_sda.arviz_export.to_inference_data on small concrete InferenceMethods."""

from __future__ import annotations

import json
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_sda.arviz_export import arviz_major, group_names, to_inference_data
from numpyro_sda.markov import MarkovPrior
from numpyro_sda.results import InferenceMethod
from numpyro_sda.tracing import trace_model

matplotlib.use("Agg")
warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

pytestmark = pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")

LENGTH, DIM, DRAWS = 9, 3, 40


def make_prior(length: int = LENGTH, dim: int = DIM) -> MarkovPrior:
    initial = dist.Normal(jnp.zeros(dim), 1.0).to_event(1)
    return MarkovPrior(initial, lambda x: dist.Normal(0.9 * x, 0.3).to_event(1), length)


def model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::4, :1], 0.1), obs=y)


class ImportanceSampler(InferenceMethod):
    """A tiny real method: prior draws, self-normalised importance weights, resampling."""

    method = "IS"

    def __init__(self, model, num_draws: int = DRAWS, num_proposals: int = 400):
        super().__init__(model, num_draws=num_draws, num_proposals=num_proposals)

    def run(self, rng_key, *args, **kwargs):
        traced = trace_model(self.model, args, kwargs)
        k1, k2, k3 = jax.random.split(rng_key, 3)
        n = self.settings["num_proposals"]
        xs = traced.prior.sample(k1, (n,))
        logw = jax.vmap(traced.log_likelihood)(xs)
        w = jax.nn.softmax(logw)
        idx = jax.random.choice(k2, n, (self.settings["num_draws"],), p=w)
        draws = xs[idx]
        self._samples = {"x": draws}
        self.prior_site = traced.prior_name
        self.observations = dict(traced.observed)
        self.posterior_predictive = traced.posterior_predictive(k3, draws)
        self.sample_stats = {
            "log_weight": logw[idx],  # per draw
            "ess": jnp.full((LENGTH,), 1.0 / jnp.sum(w**2)),  # per-time trace
            "log_evidence": jax.scipy.special.logsumexp(logw) - jnp.log(n),  # scalar
            "cost": jnp.linspace(3.0, 1.0, 5),  # a per-iteration trace
        }
        self.wall_time, self.compile_time, self.num_model_evals = 0.1, None, n * LENGTH
        return self


class FixedDraws(InferenceMethod):
    """Fills the fields from given arrays (for field-shaped states)."""

    method = "Fixed"

    def __init__(self, draws, observations=None, predictive=None, **settings):
        super().__init__(lambda: None, **settings)
        self._payload = (draws, observations or {}, predictive or {})

    def run(self, rng_key=None, *args, **kwargs):
        draws, obs, pred = self._payload
        self._samples = {"x": jnp.asarray(draws)}
        self.prior_site = "x"
        self.observations, self.posterior_predictive = obs, pred
        self.wall_time, self.num_model_evals = 1.0, 7
        return self


@pytest.fixture(scope="module")
def setup():
    prior = make_prior()
    x_true = prior.sample(jax.random.key(0))
    y = x_true[::4, :1] + 0.1 * jax.random.normal(jax.random.key(1), (3, 1))
    res = ImportanceSampler(model).run(jax.random.key(2), prior, y=y)
    return prior, y, res


@pytest.fixture(scope="module")
def idata(setup):
    _, _, res = setup
    return to_inference_data(res, state_names=["a", "b", "c"], time=0.025 * np.arange(LENGTH),
                             obs_times=0.025 * np.arange(0, LENGTH, 4))


def test_groups_dims_and_coords(idata):
    assert group_names(idata) >= {"posterior", "posterior_predictive", "observed_data",
                                   "sample_stats", "constant_data"}
    x = idata.posterior["x"]
    assert x.dims == ("chain", "draw", "time", "state")
    assert x.shape == (1, DRAWS, LENGTH, DIM)
    assert list(idata.posterior["state"].values) == ["a", "b", "c"]
    np.testing.assert_allclose(idata.posterior["time"].values, 0.025 * np.arange(LENGTH))
    y = idata.observed_data["y"]
    assert y.dims == ("y_time", "y_dim_1")
    np.testing.assert_allclose(y["y_time"].values, [0.0, 0.1, 0.2])
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "y_time", "y_dim_1")
    # per-draw stats in sample_stats, per-method traces in constant_data
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw")
    assert "ess" not in idata.sample_stats and "log_evidence" not in idata.sample_stats
    assert idata.constant_data["ess"].dims == ("time",)
    assert idata.constant_data["log_evidence"].ndim == 0
    assert idata.constant_data["cost"].dims == ("cost_dim_0",)


def test_values_match_result(setup, idata):
    _, y, res = setup
    np.testing.assert_array_equal(idata.posterior["x"].values[0], np.asarray(res.get_samples()["x"]))
    np.testing.assert_array_equal(idata.observed_data["y"].values, np.asarray(y))
    np.testing.assert_array_equal(idata.sample_stats["log_weight"].values[0],
                                  np.asarray(res.sample_stats["log_weight"]))


def test_attrs(idata):
    attrs = idata.posterior.attrs
    assert attrs["method"] == "IS" and attrs["prior_site"] == "x"
    assert json.loads(attrs["settings"]) == {"num_draws": DRAWS, "num_proposals": 400}
    for lib in ("numpyro_sda", "jax", "numpyro", "arviz"):
        assert isinstance(attrs[f"{lib}_version"], str) and attrs[f"{lib}_version"]
    assert attrs["jax_version"] == jax.__version__
    assert attrs["num_model_evals"] == 400 * LENGTH and attrs["num_draws"] == DRAWS
    assert np.isnan(attrs["compile_time"])


def test_arviz_functions_run(idata):
    summary = az.summary(idata, var_names=["x"], kind="stats")
    assert len(summary) == LENGTH * DIM
    assert "x[0.0, a]" in summary.index
    ess = az.ess(idata, var_names=["x"])
    assert ess["x"].dims == ("time", "state")
    assert bool(np.all(np.isfinite(ess["x"].values)))
    sel = {"time": [0.0, 0.1], "state": ["a"]}
    if arviz_major() >= 1:  # ArviZ 1.x: arviz_plots, one panel per selected element
        pc = az.plot_dist(idata, var_names=["x"], coords=sel, backend="matplotlib")
        assert pc.viz["title"]["x"].shape == (2, 1)
        assert len(matplotlib.pyplot.gcf().axes) == 2
    else:
        axes = az.plot_posterior(idata, var_names=["x"], coords=sel)
        assert np.asarray(axes).size == 2
    matplotlib.pyplot.close("all")


def test_netcdf_round_trip(idata, tmp_path):
    path = tmp_path / "r.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert group_names(back) == group_names(idata)
    for group in group_names(idata):
        a, b = idata[group], back[group]
        for name in a.data_vars:
            np.testing.assert_array_equal(a[name].values, b[name].values)
            assert a[name].dims == b[name].dims
    assert list(back.posterior["state"].values) == ["a", "b", "c"]
    assert back.posterior.attrs["settings"] == idata.posterior.attrs["settings"]


def test_mask_and_log_likelihood(setup, tmp_path):
    prior, y, res = setup
    mask = np.array([[True], [False], [True]])
    idata = to_inference_data(res, obs_mask={"y": mask}, log_likelihood=True,
                              model_args=(prior,), model_kwargs={"y": y})
    assert idata.constant_data["y_mask"].dtype == bool
    np.testing.assert_array_equal(idata.constant_data["y_mask"].values, mask)
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "y_dim_0", "y_dim_1")
    # element-wise Gaussian log-density, checked by hand
    xs = np.asarray(res.get_samples()["x"])
    expected = -0.5 * ((np.asarray(y) - xs[:, ::4, :1]) / 0.1) ** 2 - np.log(0.1 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(ll.values[0], expected, rtol=1e-4, atol=1e-4)
    path = tmp_path / "m.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    np.testing.assert_array_equal(back.constant_data["y_mask"].values, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # WAIC's small-sample variance warning
        if arviz_major() >= 1:  # ArviZ 1.x has no WAIC; PSIS-LOO reads the same group
            assert np.isfinite(az.loo(idata).elpd)
        else:
            assert np.isfinite(az.waic(idata).elpd_waic)  # the group is usable by ArviZ


def test_field_states_and_system_units():
    class Sys:
        def denormalize(self, x):
            return 2.0 * x + 1.0

    rng = np.random.default_rng(0)
    draws = rng.normal(size=(4, 5, 6, 7)).astype(np.float32)
    res = FixedDraws(draws).run()
    idata = to_inference_data(res, system=Sys())
    assert idata.posterior["x"].dims == ("chain", "draw", "time", "grid_y", "grid_x")
    np.testing.assert_allclose(idata.posterior["x"].values[0], 2.0 * draws + 1.0)
    assert idata.posterior.attrs["units"] == "physical"
    res3 = FixedDraws(rng.normal(size=(4, 5, 2, 6, 7))).run()
    assert to_inference_data(res3).posterior["x"].dims == ("chain", "draw", "time", "channel", "grid_y",
                                                           "grid_x")


def test_bad_inputs(setup):
    _, _, res = setup
    with pytest.raises(TypeError, match="InferenceMethod"):
        to_inference_data({"x": np.zeros((2, 3))})
    with pytest.raises(RuntimeError, match="run"):
        to_inference_data(ImportanceSampler(model))
    with pytest.raises(ValueError, match="state_names"):
        to_inference_data(res, state_names=["a", "b"])
    with pytest.raises(ValueError, match="time"):
        to_inference_data(res, time=np.arange(LENGTH + 1))
    with pytest.raises(ValueError, match="obs_times"):
        to_inference_data(res, obs_times=np.arange(5))
    with pytest.raises(ValueError, match="not observed"):
        to_inference_data(res, obs_mask={"z": np.ones(3, bool)})
    with pytest.raises(ValueError, match="shape"):
        to_inference_data(res, obs_mask={"y": np.ones(3, bool)})
    with pytest.raises(ValueError, match="both as variable and as dim"):
        to_inference_data(res, dims={"y": ["x", "y_dim_1"]})


@pytest.fixture(scope="module")
def real_results():
    """SDA (analytic N(0, I) score, MMPS guidance) and the exact Kalman smoother, same model."""
    from numpyro_sda.baselines import KalmanSmoother, ParticleSmoother
    from numpyro_sda.infer import SDA
    from numpyro_sda.prior import TrajectoryPrior
    from numpyro_sda.sde import VPSDE
    from numpyro_sda.systems import LinearGaussian

    sde = VPSDE()

    def eps(x, t):  # exact noise prediction of x ~ N(0, I): sigma x_t / (mu^2 + sigma^2)
        mu, sigma = sde.mu(t), sde.sigma(t)
        return sigma * x / (mu**2 + sigma**2)

    y = jnp.array([[0.5], [-1.0], [0.2]])
    sda = SDA(model, steps=16, corrections=0, guidance="mmps", progress=False).run(
        jax.random.key(0), TrajectoryPrior(eps, LENGTH, (DIM,), sde=sde), y=y, num_samples=32)
    lg = LinearGaussian(jnp.zeros((DIM, DIM)), jnp.eye(DIM), jnp.zeros(DIM), jnp.eye(DIM))
    kal = KalmanSmoother(model).run(jax.random.key(1), lg.markov_prior(LENGTH), y=y,
                                   num_samples=32)
    bpf = ParticleSmoother(model, num_particles=256).run(
        jax.random.key(2), make_prior(), y=y, num_samples=32)
    return sda, kal, bpf


def test_real_methods_export(real_results, tmp_path):
    sda, kal, bpf = real_results
    for res in (sda, kal, bpf):
        idata = to_inference_data(res, state_names=["a", "b", "c"], obs_times=[0, 4, 8])
        assert idata.posterior["x"].dims == ("chain", "draw", "time", "state")
        assert idata.posterior["x"].shape == (1, 32, LENGTH, DIM)
        assert idata.posterior.attrs["method"] == res.method
        assert json.loads(idata.posterior.attrs["settings"]) == json.loads(
            json.dumps(res.settings_dict()))
        assert idata.posterior_predictive["y"].dims == ("chain", "draw", "y_time", "y_dim_1")
        path = tmp_path / f"{res.method}.nc"
        idata.to_netcdf(str(path))
        back = az.from_netcdf(str(path))
        np.testing.assert_array_equal(back.posterior["x"].values, idata.posterior["x"].values)
    sda_id = to_inference_data(sda)
    assert sda_id.sample_stats["obs_log_likelihood"].dims == ("chain", "draw")  # per draw
    np.testing.assert_array_equal(sda_id.sample_stats["obs_log_likelihood"].values[0],
                                  np.asarray(sda.sample_stats["log_likelihood"]))
    kal_id = to_inference_data(kal, state_names=["a", "b", "c"])
    assert kal_id.constant_data["mean"].dims == ("time", "state")  # per-method traces
    assert kal_id.constant_data["log_evidence"].ndim == 0
    assert "sample_stats" not in group_names(kal_id)
    bpf_id = to_inference_data(bpf)
    assert bpf_id.sample_stats["log_weight"].dims == ("chain", "draw")
    assert bpf_id.constant_data["ess"].dims == ("time",)
    assert bpf_id.constant_data["resampled"].dims == ("time",)
    assert bpf_id.constant_data["filter_mean"].dims == ("time", "state")
    np.testing.assert_allclose(bpf_id.constant_data["log_evidence"].values,
                               np.asarray(bpf.sample_stats["log_evidence"]))


class Chains(InferenceMethod):
    """Given draws of ``num_chains`` chains (chain-major), through the driver's fields."""

    method = "Chains"

    def __init__(self, draws, num_chains, stats=None):
        super().__init__(model, settings_note="given")
        self.num_chains = num_chains
        self._payload = (np.asarray(draws), stats or {})

    def run(self, rng_key=None, *args, **kwargs):
        draws, self.sample_stats = self._payload
        self._samples = {"x": jnp.asarray(draws)}
        self.prior_site = "x"
        self.observations = {"y": jnp.zeros((3, 1))}
        self.posterior_predictive = {"y": jnp.asarray(draws[:, ::4, :1])}
        self.wall_time, self.num_model_evals = 1.0, 1
        return self


def test_chains_export_so_that_rhat_is_defined():
    rng = np.random.default_rng(1)
    draws = rng.normal(size=(4 * 25, LENGTH, DIM)).astype(np.float32)
    res = Chains(draws, num_chains=4, stats={"accept": rng.uniform(size=100)}).run()
    idata = to_inference_data(res)
    assert idata.posterior["x"].shape == (4, 25, LENGTH, DIM)
    np.testing.assert_array_equal(idata.posterior["x"].values[1], draws[25:50])  # chain-major
    assert idata.posterior_predictive["y"].shape[:2] == (4, 25)
    assert idata.sample_stats["accept"].shape == (4, 25)
    assert idata.posterior.attrs["num_chains"] == 4
    rhat = az.rhat(idata, var_names=["x"])["x"].values
    assert np.all(np.isfinite(rhat)) and rhat.max() < 1.3  # independent draws: r_hat ~ 1
    with pytest.raises(ValueError, match="num_chains=3"):
        to_inference_data(Chains(draws, num_chains=3).run())


def test_nonfinite_draws_are_excluded_and_reported():
    rng = np.random.default_rng(2)
    draws = rng.normal(size=(10, LENGTH, DIM)).astype(np.float32)
    draws[3, 2, 1] = np.nan
    draws[7, 0, 0] = np.inf
    res = Chains(draws, num_chains=1, stats={"w": np.arange(10.0)}).run()
    with pytest.warns(RuntimeWarning, match=r"2 of 10 Chains draws contain NaN or infinite"):
        idata = to_inference_data(res)
    assert idata.posterior["x"].shape == (1, 8, LENGTH, DIM)
    np.testing.assert_array_equal(idata.constant_data["excluded_draws"].values, [3, 7])
    np.testing.assert_array_equal(idata.sample_stats["w"].values[0], [0, 1, 2, 4, 5, 6, 8, 9])
    assert idata.posterior.attrs["num_excluded_draws"] == 2
    summary = az.summary(idata, var_names=["x"], kind="stats")
    assert np.all(np.isfinite(np.asarray(summary["mean"], float)))
    # several chains stay rectangular: the chains holding a bad draw are dropped
    clean = rng.normal(size=(10, LENGTH, DIM)).astype(np.float32)
    res4 = Chains(np.concatenate([draws, clean]), num_chains=4).run()  # bad: chains 0, 1
    with pytest.warns(RuntimeWarning, match=r"2 of 4 chains dropped"):
        assert to_inference_data(res4).posterior["x"].shape == (2, 5, LENGTH, DIM)
    with pytest.raises(ValueError, match="every draw"):
        to_inference_data(Chains(np.full((2, LENGTH, DIM), np.nan), num_chains=1).run())


def test_log_likelihood_uses_the_model_arguments_kept_by_run(setup):
    from numpyro_sda.baselines import KalmanSmoother
    from numpyro_sda.systems import LinearGaussian

    _, y, _ = setup
    lg = LinearGaussian(0.5 * jnp.eye(DIM), jnp.eye(DIM), jnp.zeros(DIM), jnp.eye(DIM))
    kal = KalmanSmoother(model).run(jax.random.key(0), lg.markov_prior(LENGTH), y=y,
                                    num_samples=8)
    ll = to_inference_data(kal, log_likelihood=True).log_likelihood["y"].values[0]
    xs = np.asarray(kal.get_samples()["x"])
    expected = -0.5 * ((np.asarray(y) - xs[:, ::4, :1]) / 0.1) ** 2 - np.log(0.1 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(ll, expected, rtol=1e-4, atol=1e-4)

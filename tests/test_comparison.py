"""Tests of numpyro_sda.compare on small concrete InferenceMethods."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
import scipy.stats

from numpyro_sda import metrics
from numpyro_sda.comparison import compare, to_markdown
from numpyro_sda.markov import MarkovPrior
from numpyro_sda.results import InferenceMethod

LENGTH, DIM = 8, 3


def make_prior(length: int = LENGTH) -> MarkovPrior:
    initial = dist.Normal(jnp.zeros(DIM), 1.0).to_event(1)
    return MarkovPrior(initial, lambda x: dist.Normal(0.8 * x, 0.5).to_event(1), length)


def model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::2, 0], 0.2), obs=y)


class Given(InferenceMethod):
    """Fills the result fields from given arrays, as a method would after run()."""

    def __init__(self, draws, method="Given", wall_time=1.5, evals=10, stats=None):
        super().__init__(model, note="fake")
        self.method = method
        self._payload = (np.asarray(draws, np.float32), wall_time, evals, stats or {})

    def run(self, rng_key=None, *args, **kwargs):
        draws, self.wall_time, self.num_model_evals, self.sample_stats = self._payload
        self._samples = {"x": jnp.asarray(draws)}
        self.prior_site = "x"
        return self


class Affine:
    """A stand-in for a DynamicalSystem's normalisation: physical = mean + std * model."""

    mean = np.array([0.0, 1.0, 25.0])
    std = np.array([8.0, 9.0, 8.6])

    def denormalize(self, x):
        return self.mean + self.std * np.asarray(x)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(LENGTH, DIM)).astype(np.float32)
    good = truth + 0.3 * rng.normal(size=(64, LENGTH, DIM))
    biased = truth + 1.0 + 0.3 * rng.normal(size=(32, LENGTH, DIM))
    point = truth[None] + 0.1
    reference = truth + 0.3 * rng.normal(size=(48, LENGTH, DIM))
    results = {
        "good": Given(good, "A", evals=640, stats={"log_evidence": jnp.asarray(-3.5)}).run(),
        "biased": Given(biased, "B").run(),
        "point": Given(point, "4D-Var", wall_time=0.2, evals=3).run(),
    }
    return truth, reference.astype(np.float32), results


def test_columns_and_values(problem):
    truth, reference, results = problem
    df = compare(results, truth=truth, reference=reference)
    assert list(df.index) == ["good", "biased", "point"]
    for col in ("draws", "rmse", "spread", "spread_skill", "crps", "energy_score", "w1",
                "wall_time", "compile_time", "model_evals"):
        assert col in df.columns
    good = np.asarray(results["good"].get_samples()["x"])
    assert df.loc["good", "draws"] == 64
    assert df.loc["good", "rmse"] == pytest.approx(float(metrics.rmse(good, truth)), rel=1e-6)
    assert df.loc["good", "crps"] == pytest.approx(float(metrics.crps(good, truth)), rel=1e-6)
    assert df.loc["good", "w1"] == pytest.approx(metrics.wasserstein1(good, reference), rel=1e-6)
    assert df.loc["good", "log_evidence"] == pytest.approx(-3.5)
    assert np.isnan(df.loc["biased", "log_evidence"])
    # the biased method scores worse on every accuracy metric
    for col in ("rmse", "crps", "energy_score", "w1"):
        assert df.loc["biased", col] > 2 * df.loc["good", col]
    # one draw: no spread, CRPS equals the MAE, RMSE is 0.1
    assert np.isnan(df.loc["point", "spread"]) and np.isnan(df.loc["point", "spread_skill"])
    assert df.loc["point", "crps"] == pytest.approx(0.1, rel=1e-4)
    assert df.loc["point", "rmse"] == pytest.approx(0.1, rel=1e-4)
    assert df.loc["point", "model_evals"] == 3 and df.loc["point", "wall_time"] == 0.2


def test_physical_units(problem):
    truth, reference, results = problem
    sys = Affine()
    df = compare(results, truth=truth, reference=reference, system=sys)
    good = sys.denormalize(results["good"].get_samples()["x"])
    assert df.loc["good", "rmse"] == pytest.approx(
        float(metrics.rmse(good, sys.denormalize(truth))), rel=1e-5)
    assert df.loc["point", "crps"] == pytest.approx(0.1 * sys.std.mean(), rel=1e-4)
    assert df.attrs["units"] == "physical"
    assert df.loc["good", "w1"] > 5 * compare(results, reference=reference).loc["good", "w1"]


def test_log_likelihood_and_prior_columns(problem):
    truth, _, results = problem
    prior = make_prior()
    y = truth[::2, 0] + 0.05
    df = compare(results, truth=truth, model_args=(prior,), model_kwargs={"y": y}, prior=prior)
    xs = np.asarray(results["good"].get_samples()["x"])
    by_hand = scipy.stats.norm.logpdf(y, xs[:, ::2, 0], 0.2).sum(-1).mean()
    assert df.loc["good", "log_likelihood"] == pytest.approx(by_hand, rel=1e-4)
    assert df.loc["good", "log_prior"] == pytest.approx(
        float(np.mean(prior.log_prob(jnp.asarray(xs)))), rel=1e-5)
    assert df.loc["good", "log_likelihood"] > df.loc["biased", "log_likelihood"]


def test_arrays_as_results_and_no_truth(problem):
    _, reference, results = problem
    df = compare({"run": results["good"], "floor": reference}, reference=reference)
    assert df.loc["floor", "w1"] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(df.loc["floor", "wall_time"])
    assert "rmse" not in df.columns


def test_text_and_markdown(problem):
    truth, reference, results = problem
    df = compare(results, truth=truth, reference=reference)
    text = df.to_string()
    assert "good" in text and "rmse" in text
    md = to_markdown(df)
    lines = md.splitlines()
    assert lines[0].startswith("| method | draws | rmse |")
    assert set(lines[1]) <= set("|:-")
    assert len(lines) == 2 + 3
    assert all(line.count("|") == len(df.columns) + 2 for line in lines)
    assert "| point | 1 |" in md and "–" in md  # NaN spread of the point estimate
    assert f"{df.loc['good', 'rmse']:.4g}" in md


def test_bad_inputs(problem):
    truth, reference, results = problem
    with pytest.raises(ValueError, match="truth must have the shape"):
        compare(results, truth=truth[:-1])
    with pytest.raises(ValueError, match="truth must have the shape"):
        compare(results, truth=truth[..., :2])
    short = Given(np.zeros((4, LENGTH - 2, DIM))).run()
    with pytest.raises(ValueError, match=r"same shape.*good: \(8, 3\).*short: \(6, 3\)"):
        compare({"good": results["good"], "short": short}, truth=truth)
    with pytest.raises(ValueError, match="reference"):
        compare(results, reference=reference[:, :-1])
    with pytest.raises(ValueError, match="non-empty"):
        compare({})
    with pytest.raises(TypeError, match="InferenceMethod"):
        compare({"a": [1, 2, 3]})
    with pytest.raises(RuntimeError, match="run"):
        compare({"a": Given(np.zeros((2, LENGTH, DIM)))})


def test_real_methods_sda_against_exact_kalman():
    """SDA with the exact N(0, I) score vs the exact Kalman posterior of the same model."""
    from numpyro_sda.baselines import KalmanSmoother
    from numpyro_sda.infer import SDA
    from numpyro_sda.prior import TrajectoryPrior
    from numpyro_sda.sde import VPSDE
    from numpyro_sda.systems import LinearGaussian

    sde = VPSDE()

    def eps(x, t):
        mu, sigma = sde.mu(t), sde.sigma(t)
        return sigma * x / (mu**2 + sigma**2)

    def obs_model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::3, :1], 0.1), obs=y)

    length = 7
    y = jnp.array([[0.8], [-0.5], [1.2]])
    lg = LinearGaussian(jnp.zeros((2, 2)), jnp.eye(2), jnp.zeros(2), jnp.eye(2))
    mp = lg.markov_prior(length)
    sda = SDA(obs_model, steps=32, corrections=0, guidance="mmps", progress=False).run(
        jax.random.key(0), TrajectoryPrior(eps, length, (2,), sde=sde), y=y, num_samples=256)
    k1 = KalmanSmoother(obs_model).run(jax.random.key(1), mp, y=y, num_samples=256)
    # A = 0: the exact posterior factorises over time, so independent exact draws for the W1
    # noise floor come straight from the smoother's marginals
    exact_mean = np.asarray(k1.mean)
    chol = np.linalg.cholesky(np.asarray(k1.cov, np.float64))
    z = np.random.default_rng(3).normal(size=(256, length, 2))
    floor = exact_mean + np.einsum("tij,ntj->nti", chol, z)
    df = compare({"SDA": sda, "exact": floor}, truth=exact_mean, reference=k1,
                 model_args=(mp,), model_kwargs={"y": y}, prior=mp)
    assert list(df.index) == ["SDA", "exact"]
    # both posterior means sit on the exact smoother mean (Monte Carlo error ~ 1/sqrt(256))
    assert df.loc["SDA", "rmse"] < 0.15 and df.loc["exact", "rmse"] < 0.15
    # W1 to the exact reference is at most a little above the exact-vs-exact noise floor
    assert df.loc["SDA", "w1"] < 1.3 * df.loc["exact", "w1"]
    assert "log_evidence" not in df.columns and np.isnan(df.loc["exact", "wall_time"])
    kal = compare({"Kalman": k1}, truth=exact_mean)
    assert kal.loc["Kalman", "log_evidence"] == pytest.approx(float(k1.log_evidence))
    assert kal.loc["Kalman", "rmse"] < 0.15
    assert df.loc["SDA", "model_evals"] == sda.num_model_evals > 0


def test_package_level_compare_is_the_function(problem):
    truth, _, results = problem
    import numpyro_sda
    import numpyro_sda.comparison  # noqa: F401  (importing the module must not shadow it)

    df = numpyro_sda.compare(results, truth=truth)
    assert list(df.index) == ["good", "biased", "point"]
    assert numpyro_sda.to_markdown(df).startswith("|")


def test_nonfinite_draws_name_the_method(problem):
    truth, _, results = problem
    bad = np.asarray(results["good"].get_samples()["x"]).copy()
    bad[5, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"results\['diverged'\]: 1 of 64 draws contain NaN"):
        compare({"good": results["good"], "diverged": Given(bad).run()}, truth=truth)


def test_log_likelihood_column_from_the_run_arguments():
    from numpyro_sda.baselines import KalmanSmoother
    from numpyro_sda.systems import LinearGaussian

    lg = LinearGaussian(0.5 * jnp.eye(DIM), jnp.eye(DIM), jnp.zeros(DIM), jnp.eye(DIM))
    prior = lg.markov_prior(LENGTH)
    y = jnp.linspace(-1.0, 1.0, LENGTH // 2)
    kal = KalmanSmoother(model).run(jax.random.key(0), prior, y=y, num_samples=16)
    df = compare({"kalman": kal}, log_likelihood=True)
    given = compare({"kalman": kal}, model_args=(prior,), model_kwargs={"y": y})
    assert df.loc["kalman", "log_likelihood"] == given.loc["kalman", "log_likelihood"]
    assert np.isfinite(df.loc["kalman", "log_likelihood"])
    assert "log_likelihood" not in compare({"kalman": kal}).columns


def test_medians_over_sets_rows_and_atomic_json(tmp_path):
    import json

    from numpyro_sda.comparison import medians_over_sets, set_rows, write_json

    def one(a, b):
        return pd.DataFrame({"crps": [a, b], "note": ["x", "y"]},
                            index=pd.Index(["SDA", "EnKS"], name="method"))

    tables = {"sparse": [one(1.0, 4.0), one(3.0, 2.0), one(2.0, 9.0)]}
    med = medians_over_sets(tables)["sparse"]
    assert list(med.columns) == ["sets", "crps"]  # non-numeric columns are dropped
    assert med.loc["SDA", "crps"] == 2.0 and med.loc["EnKS", "crps"] == 4.0
    assert (med["sets"] == 3).all()
    rows = set_rows(tables, first_set=4)
    assert [(r["set"], r["method"]) for r in rows[:3]] == [(4, "SDA"), (4, "EnKS"), (5, "SDA")]
    path = tmp_path / "t.json"
    write_json(path, rows)
    assert json.loads(path.read_text()) == rows
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temporary file left

"""Tests of numpyro_sda.plots: figures render, carry the expected artists and save to files.

Copies of the rendered images go to /tmp/nsda_plots/ for inspection by eye.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from numpyro_sda import metrics, plots  # noqa: E402
from numpyro_sda.baselines import KalmanSmoother  # noqa: E402
from numpyro_sda.systems import LinearGaussian  # noqa: E402

LENGTH = 49
COPY_DIR = Path("/tmp/nsda_plots")


def _keep(path: Path) -> None:
    """Save a copy for inspection; never fail the test for it."""
    try:
        COPY_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, COPY_DIR / path.name)
    except OSError:
        pass


def model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::4, :1], 0.1), obs=y)


@pytest.fixture(scope="module")
def oscillator():
    """A damped 2-D rotation observed in its first component: exact posterior by Kalman."""
    th = 0.25
    A = 0.98 * jnp.array([[jnp.cos(th), -jnp.sin(th)], [jnp.sin(th), jnp.cos(th)]])
    system = LinearGaussian(A, 0.02 * jnp.eye(2), jnp.array([2.0, 0.0]), 0.1 * jnp.eye(2),
                            mean=np.array([1.0, -1.0]), std=np.array([3.0, 2.0]))
    prior = system.markov_prior(LENGTH)
    truth = prior.sample(jax.random.key(0))
    y = truth[::4, :1] + 0.1 * jax.random.normal(jax.random.key(1), (truth[::4].shape[0], 1))
    res = KalmanSmoother(model).run(jax.random.key(2), prior, y=y, num_samples=200)
    return system, truth, y, res


def test_trajectories(oscillator, tmp_path):
    system, truth, y, res = oscillator
    fig = plots.plot_trajectories(res, truth=truth, observations=y,
                                  obs_times=np.arange(0, LENGTH, 4), obs_states=[0],
                                  state_names=["u", "v"], num_draws=3, system=system,
                                  title="Kalman smoother")
    axes = fig.get_axes()
    assert len(axes) == 2
    assert [a.get_ylabel() for a in axes] == ["u", "v"]
    # two credible bands per panel; median + truth + 3 draws (+ observations on panel 0)
    assert all(len(a.collections) == 2 for a in axes)
    assert len(axes[0].lines) == 6 and len(axes[1].lines) == 5
    labels = axes[0].get_legend_handles_labels()[1]
    assert {"truth", "observations", "90% band", "50% band"} <= set(labels)
    # physical units: the truth line is the denormalised truth
    truth_line = next(ln for ln in axes[1].lines if ln.get_label() == "truth")
    np.testing.assert_allclose(truth_line.get_ydata(), system.denormalize(truth)[:, 1], rtol=1e-5)
    obs_line = next(ln for ln in axes[0].lines if ln.get_label() == "observations")
    np.testing.assert_allclose(obs_line.get_ydata(), 1.0 + 3.0 * np.asarray(y)[:, 0], rtol=1e-5)
    path = tmp_path / "trajectories.png"
    fig.savefig(path, dpi=90)
    assert Image.open(path).size[0] > 300
    _keep(path)
    plt.close(fig)


def test_rank_histogram_plot(oscillator, tmp_path):
    _, truth, _, res = oscillator
    xs = res.get_samples()["x"]
    fig = plots.plot_rank_histogram(res, truth, bins=10, title="exact posterior")
    ax = fig.get_axes()[0]
    heights = np.array([p.get_height() for p in ax.patches])
    assert heights.size == 10
    counts = np.asarray(metrics.rank_histogram(xs, truth))
    # bar heights are mean frequencies per rank, so they integrate to 1 over the ranks
    widths = np.array([p.get_width() for p in ax.patches])
    assert np.sum(heights * widths) == pytest.approx(1.0)
    assert counts.sum() == truth.size
    path = tmp_path / "rank_histogram.png"
    fig.savefig(path, dpi=90)
    _keep(path)
    plt.close(fig)
    with pytest.raises(ValueError, match="bins"):
        plots.plot_rank_histogram(counts=counts, bins=0)


def _vortex_fields(rng, length=12, n=32):
    """Decaying, drifting Taylor-Green-like vorticity ``(length, n, n)`` on [0, 2pi)^2."""
    g = np.linspace(0, 2 * np.pi, n, endpoint=False)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    t = np.arange(length)[:, None, None]
    return np.exp(-0.05 * t) * (np.cos(xx - 0.2 * t) * np.cos(yy) + 0.5 * np.sin(2 * yy + 0.1 * t))


def test_fields(tmp_path):
    rng = np.random.default_rng(0)
    truth = _vortex_fields(rng)
    draws = truth + 0.15 * rng.normal(size=(8, *truth.shape))
    obs_t = np.arange(0, 12, 3)
    obs = truth[obs_t].reshape(4, 8, 4, 8, 4).mean((2, 4))  # 4x coarse-grained
    fig = plots.plot_fields(draws, truth=truth, observations=obs, obs_times=obs_t,
                            times=[0, 3, 5, 9], title="2-D field")
    axes = fig.get_axes()
    assert len(axes) == 4 * 4 + 2  # panels + two colour bars
    assert len(axes[4].texts) == 0 and len(axes[4].images) == 1  # t=0 observed
    assert [t.get_text() for t in axes[6].texts] == ["no obs"]  # t=5 not observed
    assert len(axes[6].images) == 0
    np.testing.assert_allclose(axes[8].images[0].get_array(), draws.mean(0)[0])
    path = tmp_path / "fields.png"
    fig.savefig(path, dpi=80)
    _keep(path)
    plt.close(fig)
    multi = plots.plot_fields(np.stack([draws, -draws], axis=2), channel=1, times=[2])
    np.testing.assert_allclose(multi.get_axes()[0].images[0].get_array(), -draws.mean(0)[2])
    plt.close(multi)


def test_vorticity_spectral():
    n = 32
    g = np.linspace(0, 2 * np.pi, n, endpoint=False)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    u, v = -np.sin(yy), np.sin(xx)  # omega = dv/dx - du/dy = cos x + cos y
    w = plots.vorticity(np.stack([u, v])[None])
    assert w.shape == (1, n, n)
    np.testing.assert_allclose(w[0], np.cos(xx) + np.cos(yy), atol=1e-10)


def test_vorticity_movie(tmp_path):
    rng = np.random.default_rng(1)
    truth = _vortex_fields(rng, length=6, n=24)
    path = tmp_path / "movie.gif"
    anim = plots.vorticity_movie({"truth": truth, "mean": 0.9 * truth}, path=str(path), fps=4)
    gif = Image.open(path)
    assert gif.n_frames == 6
    assert len(anim._fig.get_axes()) == 3
    _keep(path)
    plt.close(anim._fig)


def test_scalar_state_trajectories():
    rng = np.random.default_rng(2)
    truth = np.sin(np.linspace(0, 6, 30))
    fig = plots.plot_trajectories(truth + 0.2 * rng.normal(size=(50, 30)), truth=truth,
                                  credible=(0.8,))
    (ax,) = fig.get_axes()
    assert len(ax.collections) == 1
    np.testing.assert_allclose(ax.lines[-1].get_ydata(), truth)
    plt.close(fig)


def test_bad_inputs(oscillator):
    _, truth, y, res = oscillator
    with pytest.raises(ValueError, match="plot_fields"):
        plots.plot_trajectories(np.zeros((2, 5, 3, 3)))
    with pytest.raises(ValueError, match="truth must have shape"):
        plots.plot_trajectories(res, truth=truth[:-1])
    with pytest.raises(ValueError, match="obs_times"):
        plots.plot_trajectories(res, observations=y)
    with pytest.raises(ValueError, match="shape"):
        plots.plot_trajectories(res, observations=y, obs_times=[0, 4], obs_states=[0])
    with pytest.raises(ValueError, match="credible"):
        plots.plot_trajectories(res, credible=(0.5, 1.5))
    with pytest.raises(ValueError, match="plot_fields needs"):
        plots.plot_fields(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="same length"):
        plots.vorticity_movie([np.zeros((3, 4, 4)), np.zeros((2, 4, 4))])
    with pytest.raises(ValueError, match="velocity"):
        plots.vorticity(np.zeros((3, 4, 4)))
    plt.close("all")


def test_trajectories_exclude_nonfinite_draws_and_say_so(oscillator):
    system, truth, y, res = oscillator
    xs = np.asarray(res.get_samples()["x"]).copy()
    xs[:3, 5, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="3 of 200 draws contain NaN or infinite"):
        fig = plots.plot_trajectories(xs)
    ax = fig.axes[0]
    median = next(line for line in ax.get_lines() if "median" in str(line.get_label()))
    np.testing.assert_allclose(median.get_ydata(), np.median(xs[3:, :, 0], axis=0), rtol=1e-6)
    assert len(ax.collections) == 2  # both credible bands are drawn
    plt.close(fig)
    with pytest.raises(ValueError, match="all 2 draws"):
        plots.plot_trajectories(np.full((2, LENGTH, 2), np.nan))

"""Kuramoto–Sivashinsky and Kolmogorov flow (exponax): shapes, statistics, conventions, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from numpyro_sda.systems import KolmogorovFlow, KuramotoSivashinsky


# ------------------------------------------------------------------------ Kuramoto–Sivashinsky
@pytest.fixture(scope="module")
def ks():
    return KuramotoSivashinsky()


@pytest.fixture(scope="module")
def ks_run(ks):
    # 4 trajectories of 200 states after 100 time units of burn-in (stats + 64-step stability)
    return np.asarray(ks.simulate(jax.random.PRNGKey(0), 4, 200, burn_in=400))


def test_ks_shapes_dtype_finite(ks, ks_run):
    assert ks.state_shape == (1, 64)
    assert ks_run.shape == (4, 200, 1, 64)
    assert ks_run.dtype == np.float32
    assert np.isfinite(ks_run).all()
    assert np.abs(ks_run).max() < 5.0  # bounded attractor (|u| <~ 3.3 at L = 22)


def test_ks_statistics_match_stored_normalisation(ks, ks_run):
    # the conserved mean is zero and the stored std matches a fresh simulation
    assert np.abs(ks_run.mean(axis=-1)).max() < 1e-4
    assert abs(ks_run.std() - float(ks.std.ravel()[0])) < 0.1 * float(ks.std.ravel()[0])
    z = np.asarray(ks.normalize(ks_run))
    assert abs(z.std() - 1.0) < 0.1


def test_ks_step_is_the_simulated_transition(ks, ks_run):
    x = jnp.asarray(ks_run[0])
    nxt = jax.jit(jax.vmap(ks.step))(x[:-1])
    np.testing.assert_allclose(nxt, x[1:], atol=1e-4)
    # batched call of step on (..., 1, N)
    np.testing.assert_allclose(ks.step(x[:3]), nxt[:3], atol=1e-5)


def test_ks_trajectories_are_chaotic_not_stationary(ks_run):
    # the field evolves (states 100 steps = 25 time units apart decorrelate) and trajectories
    # differ
    assert np.abs(np.diff(ks_run, axis=1)).mean() > 0.01
    assert np.abs(ks_run[:, 100:] - ks_run[:, :-100]).mean() > 0.5
    assert np.abs(ks_run[0] - ks_run[1]).mean() > 0.5


def test_ks_markov_prior_log_prob_independent(ks, ks_run):
    with pytest.raises(ValueError, match="model_error"):
        ks.markov_prior(4)
    sigma = 0.1
    prior = ks.markov_prior(4, model_error=sigma)
    x = jnp.asarray(ks.normalize(ks_run[0, :4]))
    lp = float(prior.log_prob(x))
    # independent: N(0, 1) initial density in normalised units + Gaussian transitions
    s = float(ks.std.ravel()[0])
    phys = ks_run[0, :4].astype(np.float64)
    pred = np.asarray(jax.vmap(ks.step)(jnp.asarray(ks_run[0, :3])), np.float64)
    ref = norm.logpdf(phys[0] / s).sum()
    ref += norm.logpdf((phys[1:] - pred) / s, scale=sigma / s).sum()
    assert lp == pytest.approx(ref, rel=1e-4)


def test_ks_bad_input(ks):
    with pytest.raises(ValueError, match="dt"):
        KuramotoSivashinsky(dt=0.0)
    with pytest.raises(ValueError, match="dt"):
        KuramotoSivashinsky(dt=-0.25)
    with pytest.raises(ValueError, match="num_points"):
        KuramotoSivashinsky(num_points=4)
    with pytest.raises(ValueError, match="noise_std"):
        KuramotoSivashinsky(noise_std=-1.0)
    with pytest.raises(ValueError, match="shape"):
        ks.step(jnp.zeros((64,)))
    with pytest.raises(ValueError, match="shape"):
        ks.step(jnp.zeros((1, 32)))
    with pytest.raises(ValueError, match="length"):
        ks.simulate(jax.random.PRNGKey(0), 1, -3)
    with pytest.raises(ValueError, match="burn_in"):
        ks.simulate(jax.random.PRNGKey(0), 1, 4, burn_in=-1)
    with pytest.raises(ValueError, match="num_trajectories"):
        ks.simulate(jax.random.PRNGKey(0), 0, 4)


# ------------------------------------------------------------------------ Kolmogorov flow
@pytest.fixture(scope="module")
def kf():
    return KolmogorovFlow()


@pytest.fixture(scope="module")
def kf_short(kf):
    # 1 trajectory x 8 saved states at 64², simulated at 256² (fast default check)
    return np.asarray(kf.simulate(jax.random.PRNGKey(1), 1, 8, burn_in=0))


def test_kolmogorov_parameters(kf):
    assert kf.state_shape == (1, 64, 64)
    assert kf.dt == pytest.approx(0.2)
    fine = kf._fine
    assert fine.num_points == 256 and fine.domain_extent == pytest.approx(2 * math.pi)
    assert fine.diffusivity == pytest.approx(1e-3)  # Re = 1000
    assert fine.drag == pytest.approx(-0.1)  # exponax: +lambda * w, i.e. drag 0.1
    assert fine.injection_mode == 4
    assert fine.dt * kf.substeps == pytest.approx(0.2)


def test_kolmogorov_shapes_dtype_finite(kf_short):
    assert kf_short.shape == (1, 8, 1, 64, 64)
    assert kf_short.dtype == np.float32
    assert np.isfinite(kf_short).all()
    # the domain mean of the vorticity is zero and stays zero
    assert np.abs(kf_short.mean(axis=(-1, -2))).max() < 1e-4
    assert np.abs(np.diff(kf_short, axis=1)).mean() > 1e-2  # the flow evolves


def test_kolmogorov_fine_step_is_the_simulated_transition(kf_short):
    # from a band-limited first state the faithful model (refine -> 256² -> truncate) is exactly
    # what the simulator does for the first interval
    fine = KolmogorovFlow(model_resolution=256)
    nxt = fine.step(jnp.asarray(kf_short[0, 0]))
    np.testing.assert_allclose(nxt, kf_short[0, 1], atol=2e-3 * np.abs(kf_short[0, 1]).max())
    # faithful_model() keeps a system's own physics and normalisation, only the model grid moves
    other = KolmogorovFlow(reynolds=500.0, drag=0.2, std=3.0, noise_std=0.1)
    twin = other.faithful_model()
    assert twin.model_resolution == other.sim_resolution == 256
    assert (twin.reynolds, twin.drag, twin.noise_std) == (500.0, 0.2, 0.1)
    np.testing.assert_array_equal(twin.std, other.std)
    assert twin != other and twin == KolmogorovFlow(reynolds=500.0, drag=0.2, std=3.0,
                                                     noise_std=0.1, model_resolution=256)


def test_kolmogorov_true_model_prior_spins_up_coarse_then_forecasts_fine(kf, kf_short):
    # the true-model EnKS row's prior: the coarse row's spun-up initial law, the 256² transition
    from numpyro_sda.demo import faithful_markov_prior

    cfg = dict(model_error=1.0, spinup=2, exact_model_error=0.3)
    prior = faithful_markov_prior(kf, 3, cfg)
    coarse = kf.markov_prior(3, model_error=1.0, spinup=2)
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(prior.initial.sample(key), coarse.initial.sample(key))
    x = kf.normalize(jnp.asarray(kf_short[0, 0]))
    step = prior.transition(x)
    fine = kf.faithful_model()
    expected = kf.normalize(fine.step(kf.denormalize(x)))
    np.testing.assert_allclose(step.mean, expected, atol=1e-5)
    np.testing.assert_allclose(step.base_dist.scale, 0.3 / kf.std.ravel()[0] * np.ones((1, 64, 64)),
                               rtol=1e-6)
    # and not the coarse model's transition
    assert float(jnp.abs(step.mean - coarse.transition(x).mean).max()) > 1e-2


def test_kolmogorov_coarse_step_and_markov_prior(kf, kf_short):
    x = jnp.asarray(kf_short[0, :3])
    nxt = kf.step(x)  # batch of states
    assert nxt.shape == (3, 1, 64, 64) and np.isfinite(np.asarray(nxt)).all()
    with pytest.raises(ValueError, match="model_error"):
        kf.markov_prior(3)
    prior = kf.markov_prior(3, model_error=1.0)
    assert prior.event_shape == (3, 1, 64, 64)
    lp = prior.log_prob(kf.normalize(x))
    assert np.isfinite(float(lp))
    draw = prior.sample(jax.random.PRNGKey(0))
    assert draw.shape == (3, 1, 64, 64) and np.isfinite(np.asarray(draw)).all()


def test_kolmogorov_resolution_maps_roundtrip(kf, kf_short):
    w = jnp.asarray(kf_short[0, :2])
    fine = kf.refine(w)
    assert fine.shape == (2, 1, 256, 256)
    np.testing.assert_allclose(kf.coarsen(fine), w, atol=1e-4)


def test_kolmogorov_velocity_analytic():
    n = 32
    x = np.arange(n) * 2 * np.pi / n
    x0, x1 = np.meshgrid(x, x, indexing="ij")
    psi = np.sin(x0) * np.cos(2 * x1)
    w = (-5.0 * psi)[None].astype(np.float32)  # Laplacian of psi
    u = np.asarray(KolmogorovFlow.to_velocity(w))
    assert u.shape == (2, n, n)
    np.testing.assert_allclose(u[0], -2 * np.sin(x0) * np.sin(2 * x1), atol=1e-5)  # d1 psi
    np.testing.assert_allclose(u[1], -np.cos(x0) * np.cos(2 * x1), atol=1e-5)  # -d0 psi
    np.testing.assert_allclose(KolmogorovFlow.from_velocity(u), w, atol=1e-4)


def test_kolmogorov_velocity_roundtrip_divergence_free(kf_short):
    w = jnp.asarray(kf_short[0])
    u = KolmogorovFlow.to_velocity(w)
    assert u.shape == (8, 2, 64, 64)
    np.testing.assert_allclose(KolmogorovFlow.from_velocity(u), w, atol=1e-3)
    k = jnp.fft.fftfreq(64, 1 / 64)
    div = jnp.fft.ifft2(1j * k[:, None] * jnp.fft.fft2(u[:, 0]) + 1j * k[None, :] * jnp.fft.fft2(u[:, 1])).real
    assert float(jnp.abs(div).max()) < 1e-3


def test_kolmogorov_bad_input(kf):
    with pytest.raises(ValueError, match="dt"):
        KolmogorovFlow(dt=0.0)
    with pytest.raises(ValueError, match="reynolds"):
        KolmogorovFlow(reynolds=-1.0)
    with pytest.raises(ValueError, match="drag"):
        KolmogorovFlow(drag=0.0)
    with pytest.raises(ValueError, match="sim_resolution"):
        KolmogorovFlow(resolution=64, sim_resolution=32)
    with pytest.raises(ValueError, match="model_resolution"):
        KolmogorovFlow(model_resolution=128)
    with pytest.raises(ValueError, match="shape"):
        kf.step(jnp.zeros((64, 64)))
    with pytest.raises(ValueError, match="shape"):
        kf.step(jnp.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="length"):
        kf.simulate(jax.random.PRNGKey(0), 1, -1)
    with pytest.raises(ValueError, match="burn_in"):
        kf.simulate(jax.random.PRNGKey(0), 1, 2, burn_in=-5)
    with pytest.raises(ValueError, match="vorticity"):
        KolmogorovFlow.to_velocity(jnp.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="velocity"):
        KolmogorovFlow.from_velocity(jnp.zeros((1, 8, 8)))


@pytest.mark.slow
def test_kolmogorov_64_states_statistics_and_forcing(kf):
    # 2 trajectories x 64 saved states at 64² (256² simulated) after the protocol's 64 burn-in
    x = np.asarray(kf.simulate(jax.random.PRNGKey(7), 2, 64, burn_in=64))
    assert x.shape == (2, 64, 1, 64, 64) and np.isfinite(x).all()
    s = float(kf.std.ravel()[0])
    assert abs(x.std() - s) < 0.1 * s
    assert abs(x.mean()) < 1e-3
    u = np.asarray(KolmogorovFlow.to_velocity(x))
    speed = np.sqrt((u**2).sum(axis=2))
    assert 2.0 < speed.max() < 8.0  # on the attractor, and within the CFL budget of the solver
    # the mean flow follows the body force (-sin 4 x1, 0) (module docstring)
    y = np.arange(64) * 2 * np.pi / 64
    profile = u[:, :, 0].mean(axis=(0, 1, 2))
    assert np.corrcoef(profile, -np.sin(4 * y))[0, 1] > 0.5
    # the coarse model stays stable over 64 transitions from an attractor state
    roll = jax.jit(lambda w: jax.lax.scan(lambda w, _: (kf.step(w), w), w, None, length=64)[1])
    traj = np.asarray(roll(jnp.asarray(x[0, -1])))
    assert np.isfinite(traj).all() and abs(traj.std() - s) < 0.3 * s

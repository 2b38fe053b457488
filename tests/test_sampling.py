"""The predictor–corrector sampler on an analytic Gaussian score, and the VP schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_sda.sampling import predictor_corrector, sample_trajectories
from numpyro_sda.sde import VPSDE


@pytest.mark.parametrize("alpha", ["cos", "lin", "exp"])
def test_schedule_boundaries(alpha):
    sde = VPSDE(alpha)
    assert np.isclose(sde.mu(0.0), 1.0, atol=1e-6)
    assert np.isclose(sde.sigma(0.0), 1e-3, atol=1e-6)
    assert float(sde.mu(1.0)) < 2e-3
    assert np.isclose(sde.sigma(1.0), 1.0, atol=1e-3)
    t = jnp.linspace(0, 1, 11)
    assert np.all(np.diff(np.asarray(sde.mu(t))) < 0)  # monotone


def test_schedule_rejects_unknown():
    with pytest.raises(ValueError, match="unknown alpha schedule"):
        VPSDE("quadratic")


def test_perturb_and_denoise_invert():
    sde = VPSDE()
    x = jnp.arange(6.0).reshape(3, 2)
    xt, eps = sde.perturb(jax.random.PRNGKey(0), x, 0.3)
    np.testing.assert_allclose(sde.denoise(xt, 0.3, eps), x, atol=1e-4)


def _gaussian_eps(mean, cov, sde):
    """Exact noise predictor of N(mean, cov) under the VP kernel (flattened trajectory)."""
    shape = mean.shape
    m = mean.reshape(-1)
    eye = jnp.eye(m.size)

    def eps(x, t):
        mu, sigma = sde.mu(t), sde.sigma(t)
        cov_t = mu**2 * cov + sigma**2 * eye
        return (sigma * jnp.linalg.solve(cov_t, x.reshape(-1) - mu * m)).reshape(shape)

    return eps


def _small_gaussian():
    """A random Gaussian over (3, 2) trajectories, its schedule and exact noise predictor."""
    rng = np.random.default_rng(0)
    n = 6
    B = rng.normal(size=(n, n)) / np.sqrt(n)
    cov = jnp.asarray(B @ B.T + 0.1 * np.eye(n), jnp.float32)
    mean = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    sde = VPSDE()
    return mean, cov, sde, _gaussian_eps(mean, cov, sde)


@pytest.mark.parametrize(("corrections", "tau", "eta", "spacing"),
                         [(0, 1.0, 0.0, "uniform"), (1, 1e-3, 0.0, "uniform"),
                          (0, 1.0, 1.0, "uniform"), (0, 1.0, 0.0, "edm")],
                         ids=["ddim", "langevin", "ancestral", "edm-grid"])
def test_sampler_recovers_gaussian_moments(corrections, tau, eta, spacing):
    # Unadjusted Langevin with step h = tau sigma^2 inflates a Gaussian of variance v by
    # 1 / (1 - h / 2v): tau = 0.25 (the paper's value) biases the spread by ~10% at high noise,
    # and the excess compounds over steps (measured here: +5-10% at tau = 0.05, +7-18% at
    # tau = 0.25 with 64-256 steps), so exactness is checked with a small tau.
    rng = np.random.default_rng(0)
    shape = (4, 2)
    n = 8
    B = rng.normal(size=(n, n)) / np.sqrt(n)
    cov = jnp.asarray(B @ B.T + 0.1 * np.eye(n), jnp.float32)
    mean = jnp.asarray(rng.normal(size=shape), jnp.float32)
    sde = VPSDE()
    eps = _gaussian_eps(mean, cov, sde)
    draws = jax.jit(
        lambda k: sample_trajectories(k, eps, 4000, shape, sde, steps=64,
                                      corrections=corrections, tau=tau, eta=eta,
                                      spacing=spacing)
    )(jax.random.PRNGKey(1))
    flat = np.asarray(draws).reshape(4000, -1)
    sd = np.sqrt(np.diag(np.asarray(cov)))
    # Monte-Carlo standard error of the mean is sd / sqrt(4000) ~ 0.016 sd: allow 5 s.e. plus
    # discretisation error of 64 steps
    assert np.all(np.abs(flat.mean(0) - np.asarray(mean).reshape(-1)) < 0.08 * sd + 0.02)
    emp_sd = flat.std(0)
    assert np.all(np.abs(emp_sd / sd - 1) < 0.08)
    emp_cov = np.cov(flat.T)
    assert np.abs(emp_cov - np.asarray(cov)).max() < 0.15 * np.asarray(cov).diagonal().max()


def test_sampler_bad_arguments():
    eps = lambda x, t: x
    with pytest.raises(ValueError, match="steps must be >= 1"):
        predictor_corrector(jax.random.PRNGKey(0), eps, (3,), steps=0)
    with pytest.raises(ValueError, match="corrections must be >= 0"):
        predictor_corrector(jax.random.PRNGKey(0), eps, (3,), corrections=-1)
    with pytest.raises(ValueError, match="tau must be positive"):
        predictor_corrector(jax.random.PRNGKey(0), eps, (3,), tau=0.0)


def test_time_grids():
    from numpyro_sda.sampling import diffusion_times

    for spacing in ("uniform", "edm"):
        t = np.asarray(diffusion_times(32, sde=VPSDE(), spacing=spacing))
        assert t[0] == 1.0 and t[-1] == 0.0 and np.all(np.diff(t) < 0)
    # EDM spacing refines the low-noise end far below the uniform grid's first step 1/32
    assert 0 < float(diffusion_times(32, spacing="edm")[-2]) < 0.1 / 32
    with pytest.raises(ValueError, match="spacing"):
        diffusion_times(8, spacing="log")


def test_explicit_and_piecewise_time_grids():
    """An explicit grid is used as given: the uniform grid passed explicitly gives the same
    draws as ``"uniform"`` (same key); ``piecewise_times`` places its steps per band and stays
    exact on a Gaussian; malformed grids are refused with the reason."""
    from numpyro_sda.sampling import (
        check_time_grid,
        corrected_steps,
        diffusion_times,
        piecewise_times,
    )

    grid = piecewise_times((1, 0.75, 0.25, 0), (2, 8, 4))
    assert len(grid) == 15 and grid[0] == 1.0 and grid[-1] == 0.0
    np.testing.assert_allclose(np.diff(grid)[2:10], -0.0625)  # 8 steps over [0.75, 0.25]
    np.testing.assert_allclose(np.asarray(diffusion_times(14, spacing=grid)), grid, atol=1e-7)
    # the corrected steps follow the grid's times: the 4 steps of [0.25, 0] and the one ending
    # at 0.25
    np.testing.assert_array_equal(corrected_steps(14, 0.25, spacing=grid), [False] * 9 + [True] * 5)
    mean, cov, sde, eps = _small_gaussian()

    def draw(steps, spacing, num=2000):
        return np.asarray(jax.jit(lambda k: sample_trajectories(
            k, eps, num, (3, 2), sde, steps=steps, spacing=spacing))(jax.random.PRNGKey(1)))

    uniform = tuple(np.linspace(1.0, 0.0, 33).tolist())
    np.testing.assert_allclose(draw(32, uniform), draw(32, "uniform"), atol=1e-6)
    mid = piecewise_times((1, 0.75, 0.25, 0), (4, 40, 20))
    flat = draw(64, mid).reshape(2000, -1)
    sd = np.sqrt(np.diag(np.asarray(cov)))
    assert np.all(np.abs(flat.std(0) / sd - 1) < 0.1)
    assert np.all(np.abs(flat.mean(0) - np.asarray(mean).reshape(-1)) < 0.1 * sd + 0.02)
    for bad, match in [((1.0, 0.5, 0.5, 0.0), "strictly decreasing"),
                       ((0.9, 0.5, 0.0), "start at 1 and end at 0"), ((1.0,), "at least 2"),
                       ("1,0", "sequence of numbers")]:
        with pytest.raises(ValueError, match=match):
            check_time_grid(bad)
    with pytest.raises(ValueError, match="pass steps=2"):
        diffusion_times(8, spacing=(1.0, 0.5, 0.0))
    with pytest.raises(ValueError, match="3 knots need 2 counts"):
        piecewise_times((1, 0.5, 0), (4,))


def test_correct_below_limits_the_corrections_to_the_low_noise_steps():
    """``correct_below`` corrects only the steps ending at t <= its value: the schedule is the
    last ones; with the whole range it is the plain sampler (same key, same draws); a range
    without steps equals C = 0; half the range changes the draws and keeps them exact enough on
    a Gaussian (tau small, as in the moments test); the SDA class counts its evaluations."""
    from numpyro_sda.sampling import corrected_steps

    mask = corrected_steps(8, 0.5)
    np.testing.assert_array_equal(mask, [False] * 3 + [True] * 5)  # ends 7/8 ... 0/8
    assert corrected_steps(8, 1.0).all()
    with pytest.raises(ValueError, match="correct_below"):
        corrected_steps(8, 0.0)
    mean, cov, sde, eps = _small_gaussian()

    def draw(num=2000, **kw):
        return np.asarray(jax.jit(lambda k: sample_trajectories(
            k, eps, num, (3, 2), sde, steps=32, tau=1e-3, **kw))(jax.random.PRNGKey(1)))

    full = draw(corrections=2)
    np.testing.assert_array_equal(full, draw(corrections=2, correct_below=1.0))
    # the last step ends at t = 0, so the smallest range still corrects that one step only
    np.testing.assert_array_equal(corrected_steps(32, 1e-4), [False] * 31 + [True])
    half = draw(corrections=2, correct_below=0.5)
    assert not np.allclose(half, full)
    flat = half.reshape(len(half), -1)
    sd = np.sqrt(np.diag(np.asarray(cov)))
    assert np.all(np.abs(flat.std(0) / sd - 1) < 0.1)
    assert np.all(np.abs(flat.mean(0) - np.asarray(mean).reshape(-1)) < 0.1 * sd + 0.02)

"""Lorenz-63, Lorenz-96 and linear-Gaussian systems: shapes, statistics, exact smoothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_sda.systems import LinearGaussian, Lorenz63, Lorenz96


@pytest.fixture(scope="module")
def l63_long():
    system = Lorenz63()
    return system, np.asarray(system.simulate(jax.random.PRNGKey(0), 64, 2048, burn_in=256))


def test_lorenz63_shapes_and_dtype(l63_long):
    system, x = l63_long
    assert x.shape == (64, 2048, 3)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()


def test_lorenz63_long_run_statistics(l63_long):
    system, x = l63_long
    # time-mean of z on the attractor is about 23.5 (physical units); the attractor is bounded
    assert abs(x[..., 2].mean() - 23.5) < 0.6
    assert np.abs(x[..., :2]).max() < 30 and 0 < x[..., 2].min() and x[..., 2].max() < 60
    # the paper's normalisation makes every channel roughly standard
    z = np.asarray(system.normalize(x))
    assert np.all(np.abs(z.mean((0, 1))) < 0.2)
    assert np.all(np.abs(z.std((0, 1)) - 1) < 0.1)


def test_lorenz63_rk4_matches_fine_integration():
    system = Lorenz63()
    x = jnp.array([1.0, 2.0, 20.0])
    fine = Lorenz63(substeps=100).step(x)
    assert np.allclose(system.step(x), fine, atol=1e-3)


def test_lorenz63_simulate_is_deterministic_and_jittable():
    system = Lorenz63()
    a = system.simulate(jax.random.PRNGKey(3), 4, 10, burn_in=5)
    b = system.simulate(jax.random.PRNGKey(3), 4, 10, burn_in=5)
    np.testing.assert_array_equal(a, b)
    batched = jax.jit(jax.vmap(system.step))(a[:, 0])
    assert batched.shape == (4, 3)


def test_lorenz96_energy_bounded():
    system = Lorenz96()
    x = np.asarray(system.simulate(jax.random.PRNGKey(1), 8, 2000, burn_in=200))
    assert x.shape == (8, 2000, 32) and np.isfinite(x).all()
    energy = np.asarray(system.energy(x))
    # energy of F = 16 stays bounded (n F^2 / 2 * a few) and never collapses to zero
    assert energy.max() < 32 * 16**2 and energy.min() > 10


def test_lorenz96_statistics_match_constants():
    system = Lorenz96()
    x = np.asarray(system.simulate(jax.random.PRNGKey(2), 64, 1024, burn_in=1000))[:, ::4]
    assert abs(x.mean() - system.mean[0]) < 0.3
    assert abs(x.std() - system.std[0]) < 0.3


@pytest.mark.parametrize("system", [Lorenz63(), Lorenz96(n=8)])
def test_markov_prior_log_prob_equals_sum_of_transitions(system):
    from scipy.stats import multivariate_normal, norm

    prior = system.markov_prior(6)
    x = np.asarray(prior.sample(jax.random.PRNGKey(0), (3,)), np.float64)
    assert x.shape == (3, 6, *system.state_shape)
    lp = np.asarray(prior.log_prob(x))
    m, s = system.mean.astype(np.float64), system.std.astype(np.float64)
    init = system.initial_distribution()
    expected = []
    for traj in x:
        phys = traj * s + m
        if isinstance(system, Lorenz63):
            c0 = np.asarray(init.covariance_matrix, np.float64) / np.outer(s, s)
            total = multivariate_normal((np.asarray(init.loc) - m) / s, c0).logpdf(traj[0])
        else:
            total = norm(0.0, 1.0).logpdf(traj[0]).sum()  # climatology in normalised units
        for t in range(1, 6):
            mean = (np.asarray(system.step(jnp.asarray(phys[t - 1], jnp.float32))) - m) / s
            total += norm(mean, system.noise_std / s).logpdf(traj[t]).sum()
        expected.append(total)
    np.testing.assert_allclose(lp, expected, rtol=2e-4, atol=2e-3)
    np.testing.assert_allclose(
        np.asarray(prior.transition_log_probs(x)).sum(-1) + np.asarray(
            jax.vmap(prior.initial.log_prob)(x[:, 0])), lp, rtol=1e-5, atol=1e-4)


def test_markov_prior_physical_and_normalised_agree_up_to_jacobian():
    system = Lorenz63()
    norm_prior = system.markov_prior(5)
    phys_prior = system.markov_prior(5, normalized=False)
    x = norm_prior.sample(jax.random.PRNGKey(4), (2,))
    phys = system.denormalize(x)
    log_jac = 5 * np.log(system.std).sum()
    np.testing.assert_allclose(
        norm_prior.log_prob(x), phys_prior.log_prob(phys) + log_jac, rtol=1e-4, atol=1e-2)


def _lg_system(d=3):
    rng = np.random.default_rng(0)
    A = 0.9 * np.linalg.qr(rng.normal(size=(d, d)))[0]
    Q = 0.05 * np.eye(d) + 0.01
    P0 = np.eye(d) + 0.2
    return LinearGaussian(A, Q, rng.normal(size=d), P0)


def test_prior_moments_match_simulation():
    with jax.enable_x64(True):
        system = _lg_system()
        mean, cov = system.prior_moments(4)
        x = np.asarray(system.simulate(jax.random.PRNGKey(0), 100_000, 4)).reshape(100_000, -1)
    assert np.abs(x.mean(0) - np.asarray(mean).reshape(-1)).max() < 0.02
    assert np.abs(np.cov(x.T) - np.asarray(cov)).max() < 0.03


def test_kalman_smoother_equals_brute_force_conditioning():
    rng = np.random.default_rng(1)
    L, d = 6, 3
    with jax.enable_x64(True):
        system = _lg_system(d)
        mean, cov = (np.asarray(a, np.float64) for a in system.prior_moments(L))
        H = np.array([[1.0, 0.0, 0.0], [0.5, -1.0, 0.0]])
        R = np.array([[0.2, 0.05], [0.05, 0.3]])
        y = rng.normal(size=(L, 2))
        mask = np.ones((L, 2), bool)
        mask[1] = False  # a whole time missing
        mask[3, 1] = False  # a single element missing
        res = system.rts_smoother(y, H, R, mask)
        filt = system.kalman_filter(y, H, R, mask)
    # brute force: stack all observed elements, condition the joint Gaussian in numpy
    rows, vals, noise_idx = [], [], []
    for t in range(L):
        for k in range(2):
            if mask[t, k]:
                row = np.zeros(L * d)
                row[t * d:(t + 1) * d] = H[k]
                rows.append(row)
                vals.append(y[t, k])
                noise_idx.append((t, k))
    Hb = np.array(rows)
    Rb = np.array([[R[k1, k2] if t1 == t2 else 0.0 for (t2, k2) in noise_idx]
                   for (t1, k1) in noise_idx])
    S = Hb @ cov @ Hb.T + Rb
    K = cov @ Hb.T @ np.linalg.inv(S)
    m_post = mean.reshape(-1) + K @ (np.array(vals) - Hb @ mean.reshape(-1))
    c_post = cov - K @ Hb @ cov
    np.testing.assert_allclose(np.asarray(res.mean).reshape(-1), m_post, atol=1e-5)
    blocks = np.stack([c_post[t * d:(t + 1) * d, t * d:(t + 1) * d] for t in range(L)])
    np.testing.assert_allclose(np.asarray(res.cov), blocks, atol=1e-5)
    # the filter's evidence equals the marginal likelihood of all observations
    from scipy.stats import multivariate_normal

    evidence = multivariate_normal(Hb @ mean.reshape(-1), S).logpdf(vals)
    np.testing.assert_allclose(float(filt.log_evidence), evidence, atol=1e-6)
    np.testing.assert_allclose(float(res.log_evidence), evidence, atol=1e-6)


def test_linear_gaussian_markov_prior_is_exact_gaussian():
    with jax.enable_x64(True):
        system = _lg_system()
        prior = system.markov_prior(4)
        mean, cov = system.prior_moments(4)
        x = prior.sample(jax.random.PRNGKey(0), (5,))
        from scipy.stats import multivariate_normal

        expected = multivariate_normal(np.asarray(mean).reshape(-1), np.asarray(cov)).logpdf(
            np.asarray(x).reshape(5, -1))
        np.testing.assert_allclose(np.asarray(prior.log_prob(x)), expected, rtol=1e-8)
        assert prior.linear is not None


# ---------------------------------------------------------------------- bad input
def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="dt must be positive"):
        Lorenz63(dt=0.0)
    with pytest.raises(ValueError, match="dt must be positive"):
        Lorenz96(dt=-1)
    with pytest.raises(ValueError, match="length must be >= 1"):
        Lorenz63().simulate(jax.random.PRNGKey(0), 2, -3)
    with pytest.raises(ValueError, match="burn_in must be >= 0"):
        Lorenz63().simulate(jax.random.PRNGKey(0), 2, 3, burn_in=-1)
    with pytest.raises(TypeError, match="num_trajectories must be an integer"):
        Lorenz63().simulate(jax.random.PRNGKey(0), 2.5, 3)
    with pytest.raises(ValueError, match="length must be >= 1"):
        Lorenz63().markov_prior(0)
    with pytest.raises(ValueError, match=r"states have shape \(3,\)"):
        Lorenz63().normalize(jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"trailing shape \(5, 3\)"):
        Lorenz63().markov_prior(5).log_prob(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="deterministic"):
        Lorenz63(noise_std=0.0).markov_prior(5)


def test_linear_gaussian_bad_input():
    with pytest.raises(ValueError, match="A must be square"):
        LinearGaussian(np.zeros((2, 3)), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="Q must have shape"):
        LinearGaussian(np.eye(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="positive definite"):
        LinearGaussian(np.eye(2), -np.eye(2), np.zeros(2), np.eye(2))
    system = LinearGaussian(np.eye(2), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="y must have shape"):
        system.rts_smoother(np.zeros((4, 3)), np.eye(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        system.rts_smoother(np.full((4, 2), np.nan), np.eye(2), np.eye(2))

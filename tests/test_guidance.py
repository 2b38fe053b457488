"""Likelihood-score approximations and the conjugate-gradient solver."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_sda.guidance import (
    DPS,
    MMPS,
    Guidance,
    ObservationModel,
    SDAGuidance,
    bounded,
    guided_eps,
    resolve,
)
from numpyro_sda.linalg import conjugate_gradient, dense_matrix, gmres
from numpyro_sda.prior import TrajectoryPrior, gaussian_eps
from numpyro_sda.sde import VPSDE
from numpyro_sda.tracing import trace_model

L, D = 6, 2


def test_conjugate_gradient_solves_spd_system():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((10, 10))
    M = jnp.asarray(B @ B.T + np.eye(10), jnp.float32)
    b = jnp.asarray(rng.standard_normal(10), jnp.float32)
    x = conjugate_gradient(lambda v: M @ v, b, maxiter=50, tol=1e-7)
    np.testing.assert_allclose(np.asarray(M @ x), np.asarray(b), atol=1e-3)
    # vmappable and jittable
    xs = jax.jit(jax.vmap(lambda bb: conjugate_gradient(lambda v: M @ v, bb, maxiter=50)))(
        jnp.stack([b, 2 * b]))
    np.testing.assert_allclose(np.asarray(xs[1]), 2 * np.asarray(xs[0]), rtol=1e-3, atol=1e-4)
    # truncation: an indefinite part stops the iteration instead of diverging
    Mi = jnp.diag(jnp.asarray([1.0, -5.0, 1.0]))
    out = conjugate_gradient(lambda v: Mi @ v, jnp.ones(3), maxiter=10,
                             floor=lambda p: jnp.vdot(p, p) * 0.5)
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) < 10
    with pytest.raises(ValueError, match="maxiter"):
        conjugate_gradient(lambda v: v, b, maxiter=0)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(1)
    B = rng.standard_normal((L * D, L * D)) / np.sqrt(L * D)
    P = B @ B.T + 0.3 * np.eye(L * D)
    m = 0.5 * rng.standard_normal((L, D))
    prior = TrajectoryPrior(gaussian_eps(m, P), length=L, state_shape=(D,))
    H = np.zeros((3, L * D))
    H[0, 0], H[1, 5], H[2, 8] = 1.0, 1.0, 0.7
    H[2, 9] = -0.4
    y = np.array([0.3, -0.2, 0.8])
    noise = np.array([0.1, 0.2, 0.15])

    def model(prior, y=None):
        x = numpyro.sample("x", prior).reshape(-1)
        numpyro.sample("y", dist.Normal(jnp.asarray(H, jnp.float32) @ x,
                                        jnp.asarray(noise, jnp.float32)), obs=y)

    traced = trace_model(model, (prior,), {"y": jnp.asarray(y, jnp.float32)})
    return dict(m=m, P=P, H=H, y=y, noise=noise, prior=prior, obs=ObservationModel(traced))


def _exact_likelihood_eps(s, t, x):
    """eps of p(x_t | y) for the Gaussian prior and linear observations (float64)."""
    sde = VPSDE()
    mu, sg = float(sde.mu(t)), float(sde.sigma(t))
    Rm = np.diag(s["noise"] ** 2)
    S = s["H"] @ s["P"] @ s["H"].T + Rm
    K = s["P"] @ s["H"].T @ np.linalg.inv(S)
    mp = s["m"].reshape(-1) + K @ (s["y"] - s["H"] @ s["m"].reshape(-1))
    Pp = s["P"] - K @ s["H"] @ s["P"]
    return sg * np.linalg.solve(mu**2 * Pp + sg**2 * np.eye(L * D), x.reshape(-1) - mu * mp)


@pytest.mark.parametrize("solver", [MMPS(iterations=3, covariance="tweedie"),
                                    MMPS(solver="dense", covariance="tweedie"),
                                    MMPS(solver="cg", iterations=10, covariance="tweedie")],
                         ids=["gmres", "dense", "cg"])
@pytest.mark.parametrize("t", [0.95, 0.7, 0.4, 0.1, 0.01])
def test_mmps_is_exact_for_gaussian_prior(setup, t, solver):
    """With 3 observations, 3 GMRES iterations, the dense solve and CG are all exact."""
    eps_y = jax.jit(solver(setup["prior"].eps, VPSDE(), setup["obs"]))
    x = jax.random.normal(jax.random.key(int(100 * t)), (L, D))
    got = np.asarray(eps_y(x, jnp.float32(t)), np.float64).reshape(-1)
    want = _exact_likelihood_eps(setup, t, np.asarray(x, np.float64))
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())


def test_sda_and_dps_formulas(setup):
    """"sda": exact for gamma chosen so that the inflation equals H Cov H^T when Cov is
    isotropic; here check the formula directly against autodiff of the written equations."""
    sde = VPSDE()
    eps = setup["prior"].eps
    H = jnp.asarray(setup["H"], jnp.float32)
    y = jnp.asarray(setup["y"], jnp.float32)
    var = jnp.asarray(setup["noise"] ** 2, jnp.float32)
    x = jax.random.normal(jax.random.key(0), (L, D))
    t = jnp.float32(0.5)
    mu, sg = sde.mu(t), sde.sigma(t)

    def xhat(x):
        return (x - sg * eps(x, t)) / mu

    def ll_sda(x):
        r = y - H @ xhat(x).reshape(-1)
        return -0.5 * jnp.sum(r**2 / (var + 0.03 * (sg / mu) ** 2))

    want = eps(x, t) - sg * jax.grad(ll_sda)(x)
    got = SDAGuidance(gamma=0.03)(eps, sde, setup["obs"])(x, t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)

    def err(x):
        return jnp.sum((y - H @ xhat(x).reshape(-1)) ** 2)

    want = eps(x, t) + sg * 0.7 * jax.grad(err)(x) / jnp.sqrt(err(x))
    got = DPS(zeta=0.7)(eps, sde, setup["obs"])(x, t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="guidance"):
        guided_eps(eps, sde, setup["obs"], "nope")


def test_views_of_wrapped_and_non_gaussian_sites(setup):
    prior = setup["prior"]

    def model(prior, a=None, b=None, c=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("a", dist.Normal(x[:, 0], 0.5).expand((2, L)).to_event(1), obs=a)
        numpyro.sample("b", dist.Poisson(jnp.exp(x[:, 1])).mask(jnp.arange(L) < 3), obs=b)
        with numpyro.handlers.scale(scale=4.0):
            numpyro.sample("c", dist.MultivariateNormal(x[:2], jnp.eye(D) * 0.1), obs=c)

    traced = trace_model(model, (prior,), dict(a=jnp.zeros((2, L)), b=jnp.ones(L),
                                               c=jnp.zeros((2, D))))
    obs = ObservationModel(traced)
    info = {s.name: s for s in obs.sites}
    assert info["a"].kind == "diag" and info["a"].exact and info["a"].shape == (2, L)
    assert info["b"].family == "Poisson" and not info["b"].exact
    assert info["c"].kind == "mvn"
    x = jnp.ones((L, D))
    pred = obs.predict(x)
    mean_b, var_b, w_b = pred["b"]
    np.testing.assert_allclose(np.asarray(mean_b), np.e, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(var_b), np.e, rtol=1e-5)  # Poisson: var = mean
    np.testing.assert_array_equal(np.asarray(w_b), [1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(np.asarray(pred["a"][1]), 0.25)
    np.testing.assert_allclose(np.asarray(pred["c"][2]), 4.0)
    assert obs.flat_y().shape == (2 * L + L + 2 * D,)

    def bad(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("cat", dist.Dirichlet(jnp.exp(x[:, :])), obs=y)

    traced = trace_model(bad, (prior,), dict(y=jnp.full((L, D), 0.5)))
    with pytest.raises(ValueError, match="'cat'.*Dirichlet"):
        ObservationModel(traced)

    def heavy(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("t", dist.StudentT(1.5, x[:, 0], 1.0), obs=y)

    traced = trace_model(heavy, (prior,), dict(y=jnp.zeros(L)))
    with pytest.raises(ValueError, match="'t'.*StudentT.*df > 2"):
        ObservationModel(traced)


def test_gmres_solves_nonsymmetric_systems_and_minimises_the_residual():
    rng = np.random.default_rng(3)
    M = jnp.asarray(rng.standard_normal((8, 8)) + 4 * np.eye(8), jnp.float32)  # not symmetric
    b = jnp.asarray(rng.standard_normal(8), jnp.float32)
    x = jax.jit(lambda b: gmres(lambda v: M @ v, b, iterations=8))(b)
    np.testing.assert_allclose(np.asarray(M @ x), np.asarray(b), atol=1e-4)
    # k < n: the residual is the minimum over the Krylov space, so it decreases with k
    res = [float(jnp.linalg.norm(b - M @ gmres(lambda v: M @ v, b, iterations=k)))
           for k in (1, 2, 4, 8)]
    assert all(a >= b_ - 1e-6 for a, b_ in zip(res, res[1:], strict=False)) and res[0] < float(
        jnp.linalg.norm(b))
    # one iteration is the exact 1-D minimiser along b
    x1 = gmres(lambda v: M @ v, b, iterations=1)
    mb = M @ b
    alpha = jnp.vdot(mb, b) / jnp.vdot(mb, mb)
    np.testing.assert_allclose(np.asarray(x1), np.asarray(alpha * b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gmres(lambda v: M @ v, jnp.zeros(8))), 0.0)
    np.testing.assert_allclose(np.asarray(dense_matrix(lambda v: M @ v, 8)), np.asarray(M),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="iterations"):
        gmres(lambda v: v, b, iterations=0)


def test_gaussian_covariance_form_is_exact_for_an_isotropic_prior():
    """For x ~ N(0, v0 I), Cov[x | x_t] = v0 s^2 / (v0 + s^2) I with s = sigma/mu, so MMPS with
    covariance="gaussian" (and with "tweedie") gives the exact posterior score at every t."""
    v0 = 2.0
    n = L * D
    prior = TrajectoryPrior(gaussian_eps(np.zeros((L, D)), v0 * np.eye(n)), length=L,
                            state_shape=(D,))
    H = np.zeros((2, n))
    H[0, 1], H[1, 7] = 1.0, 0.5
    noise = np.array([0.1, 0.3])
    y = np.array([0.4, -0.3])

    def model(prior, y=None):
        x = numpyro.sample("x", prior).reshape(-1)
        numpyro.sample("y", dist.Normal(jnp.asarray(H, jnp.float32) @ x,
                                        jnp.asarray(noise, jnp.float32)), obs=y)

    obs = ObservationModel(trace_model(model, (prior,), {"y": jnp.asarray(y, jnp.float32)}))
    s = dict(m=np.zeros((L, D)), P=v0 * np.eye(n), H=H, y=y, noise=noise)
    for t in (0.98, 0.5, 0.05):
        x = jax.random.normal(jax.random.key(7), (L, D))
        want = _exact_likelihood_eps(s, t, np.asarray(x, np.float64))
        for cov in ("gaussian", "tweedie", "auto"):
            g = MMPS(solver="dense", covariance=cov, prior_variance=v0)
            got = np.asarray(g(prior.eps, VPSDE(), obs)(x, jnp.float32(t)), np.float64)
            np.testing.assert_allclose(got.reshape(-1), want, atol=2e-3 * np.abs(want).max(),
                                       err_msg=f"{cov} at t={t}")


def test_guidance_objects_validate_and_resolve():
    assert isinstance(resolve("mmps"), MMPS) and resolve("sda") == SDAGuidance()
    g = MMPS(iterations=2)
    assert resolve(g) is g and isinstance(g, Guidance)
    assert "iterations=2" in g.describe()
    with pytest.raises(ValueError, match="unknown guidance 'nope'"):
        resolve("nope")
    with pytest.raises(TypeError, match="guidance must be"):
        resolve(3)
    with pytest.raises(ValueError, match="gamma"):
        SDAGuidance(gamma=-1.0)
    with pytest.raises(ValueError, match="zeta"):
        DPS(zeta=0.0)
    with pytest.raises(ValueError, match="solver"):
        MMPS(solver="lu")
    with pytest.raises(ValueError, match="iterations"):
        MMPS(iterations=1.5)
    with pytest.raises(ValueError, match="covariance"):
        MMPS(covariance="exact")
    with pytest.raises(dataclasses.FrozenInstanceError):  # settings cannot drift
        g.iterations = 3


def test_bounded_keeps_the_guided_denoiser_in_the_box_and_is_inactive_inside():
    sde = VPSDE()

    def wild(x, t):  # a guided predictor whose denoiser is far outside the box
        return -1e3 * jnp.ones_like(x)

    lo, hi = -jnp.ones(D), 2 * jnp.ones(D)
    eps_b = bounded(wild, sde, lo, hi)
    x = jax.random.normal(jax.random.key(0), (L, D))
    for t in (0.9, 0.5, 0.1):
        xh = sde.denoise(x, t, eps_b(x, jnp.float32(t)))
        assert bool(jnp.all(xh >= lo - 1e-3)) and bool(jnp.all(xh <= hi + 1e-3))

    def tame(x, t):  # denoiser inside the box: untouched
        return (x - sde.mu(t) * 0.5) / sde.sigma(t)

    np.testing.assert_allclose(np.asarray(bounded(tame, sde, lo, hi)(x, jnp.float32(0.5))),
                               np.asarray(tame(x, jnp.float32(0.5))), rtol=1e-5, atol=1e-5)

    def nan(x, t):
        return jnp.full_like(x, jnp.nan)

    assert bool(jnp.all(jnp.isfinite(bounded(nan, sde, lo, hi)(x, jnp.float32(0.5)))))


def test_guided_eps_shorthand(setup):
    x = jax.random.normal(jax.random.key(1), (L, D))
    a = guided_eps(setup["prior"].eps, VPSDE(), setup["obs"], "sda")(x, jnp.float32(0.3))
    b = SDAGuidance()(setup["prior"].eps, VPSDE(), setup["obs"])(x, jnp.float32(0.3))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b))

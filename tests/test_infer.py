"""SDA on user models: exactness against the RTS smoother, multi-site, non-Gaussian, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from numpyro_sda.guidance import MMPS, SDAGuidance
from numpyro_sda.infer import SDA
from numpyro_sda.prior import TrajectoryPrior, gaussian_eps
from numpyro_sda.sampling import piecewise_times, sample_trajectories
from numpyro_sda.sde import VPSDE
from numpyro_sda.systems import LinearGaussian

L, D, R = 12, 2, 0.1


@pytest.fixture(scope="module")
def lg():
    th = 0.3
    A = 0.95 * jnp.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    system = LinearGaussian(A, 0.1 * jnp.eye(D), jnp.zeros(D), jnp.eye(D))
    m, P = system.prior_moments(L)
    prior = TrajectoryPrior(gaussian_eps(m, P), length=L, state_shape=(D,))
    xtrue = system.markov_prior(L).sample(jax.random.key(1))
    mask = jnp.ones(L, bool).at[3:8].set(False)  # a gap of 5 states
    y = xtrue[:, :1] + R * jax.random.normal(jax.random.key(2), (L, 1))
    y = jnp.where(mask[:, None], y, 0.0)
    ref = system.rts_smoother(y, jnp.array([[1.0, 0.0]]), jnp.array([[R**2]]), mask=mask)
    return dict(system=system, m=np.asarray(m, np.float64), P=np.asarray(P, np.float64),
                prior=prior, xtrue=xtrue, mask=mask, y=y, ref=ref)


def gap_model(prior, y=None, mask=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[:, :1], R), obs=y, obs_mask=mask[:, None])


def dense_posterior(m, P, H, Rcov, y):
    """Exact Gaussian conditioning of N(m, P) on y = H x + N(0, Rcov) (float64)."""
    S = H @ P @ H.T + Rcov
    K = np.linalg.solve(S, H @ P).T
    return m + K @ (y - H @ m), P - K @ H @ P


@pytest.fixture(scope="module")
def mmps_run(lg):
    # MMPS is exact for a Gaussian prior with Tweedie's covariance and an exact solve
    exact = MMPS(solver="dense", covariance="tweedie")
    sda = SDA(gap_model, steps=512, corrections=0, eta=0.0, guidance=exact, progress=False)
    return sda.run(jax.random.key(3), lg["prior"], y=lg["y"], mask=lg["mask"], num_samples=1024)


def assert_matches_rts(xs, lg, label: str):
    """Draws ``xs`` (N, L, D) against the RTS smoother: every element's mean within 4 Monte-Carlo
    standard errors, its std within 4/sqrt(2N) + 3% (see test_mmps_reproduces_rts_smoother)."""
    n = xs.shape[0]
    rm = np.asarray(lg["ref"].mean)
    rs = np.sqrt(np.diagonal(np.asarray(lg["ref"].cov), axis1=1, axis2=2))
    z_mean = np.abs(xs.mean(0) - rm) / (rs / np.sqrt(n))
    rel_std = np.abs(xs.std(0) / rs - 1.0)
    print(f"\n{label} vs RTS: max |mean err| = {z_mean.max():.2f} MC s.e.; "
          f"max |std/std_ref - 1| = {rel_std.max():.3f}")
    assert z_mean.max() < 4.0
    assert rel_std.max() < 4.0 / np.sqrt(2 * n) + 0.03
    return rs


def test_mmps_reproduces_rts_smoother(lg, mmps_run):
    """Exactness: Gaussian prior, linear Gaussian observations with a gap.

    N = 1024 draws; tolerance 4 Monte-Carlo standard errors per element (24 elements): mean
    4 sd/sqrt(N) = 0.125 sd; std 4/sqrt(2N) = 8.8 % plus the 512-step DDIM discretisation
    bias measured below with the exact posterior score (a few %).
    """
    xs = np.asarray(mmps_run.get_samples()["x"], np.float64)
    n = xs.shape[0]
    rs = assert_matches_rts(xs, lg, "mmps")
    # the observed stretches are far sharper than the prior: the guidance really acts
    assert rs[0, 0] < 0.2 * np.sqrt(lg["P"][0, 0])
    assert mmps_run.prior_site == "x"
    assert mmps_run.sample_stats["log_likelihood"].shape == (n,)
    # obs_mask splits the site inside numpyro; results keep the user's name (issue 12, item 15)
    assert set(mmps_run.posterior_predictive) == {"y"} and set(mmps_run.observations) == {"y"}
    assert mmps_run.posterior_predictive["y"].shape == (n, L, 1)
    assert mmps_run.num_model_evals == n * 512
    assert mmps_run.wall_time > 0 and mmps_run.compile_time > 0


def test_mmps_matches_exact_posterior_score_pathwise(lg):
    """Same keys, same sampler: mmps-guided prior score vs the exact posterior score."""
    exact = MMPS(solver="dense", covariance="tweedie")
    sda = SDA(gap_model, steps=128, corrections=1, guidance=exact)
    traced = sda.trace(lg["prior"], y=lg["y"], mask=lg["mask"])
    from numpyro_sda.guidance import ObservationModel

    eps_y = exact(lg["prior"].eps, VPSDE(), ObservationModel(traced))
    obs = np.asarray(lg["mask"])
    H = np.zeros((L, L * D))
    H[np.arange(L), np.arange(L) * D] = 1.0
    mp, Pp = dense_posterior(lg["m"].reshape(-1), lg["P"], H[obs], R**2 * np.eye(obs.sum()),
                             np.asarray(lg["y"][:, 0], np.float64)[obs])
    exact = gaussian_eps(mp.reshape(L, D), Pp)
    shape = (L, D)
    xa = sample_trajectories(jax.random.key(0), exact, 256, shape, steps=128, corrections=1,
                             tau=0.25)
    xb = sample_trajectories(jax.random.key(0), eps_y, 256, shape, steps=128, corrections=1,
                             tau=0.25)
    diff = np.abs(np.asarray(xa - xb))
    print(f"\npathwise |mmps - exact|: median {np.median(diff):.2e}, max {diff.max():.2e}")
    assert np.median(diff) < 1e-3
    assert diff.max() < 5e-2


@pytest.mark.parametrize("guidance", ["sda", "dps"])
def test_sda_and_dps_against_rts(lg, guidance):
    """The "sda" and "dps" approximations are biased; report the bias, assert sanity."""
    sda = SDA(gap_model, steps=64, corrections=1, guidance=guidance, progress=False)
    xs = sda.run(jax.random.key(4), lg["prior"], y=lg["y"], mask=lg["mask"],
                 num_samples=256).get_samples()["x"]
    xs = np.asarray(xs, np.float64)
    rm = np.asarray(lg["ref"].mean)
    rs = np.sqrt(np.diagonal(np.asarray(lg["ref"].cov), axis1=1, axis2=2))
    err = np.abs(xs.mean(0) - rm) / rs
    ratio = xs.std(0) / rs
    print(f"\n{guidance} (64 steps, C=1) vs RTS: max |mean err|/sd = {err.max():.2f}, "
          f"std ratio in [{ratio.min():.2f}, {ratio.max():.2f}]")
    assert np.all(np.isfinite(xs))
    # better than the prior: the posterior mean is pulled towards the observations
    obs = np.asarray(lg["mask"])
    prior_err = np.abs(lg["m"].reshape(L, D)[obs, 0] - np.asarray(lg["y"])[obs, 0])
    post_err = np.abs(xs.mean(0)[obs, 0] - np.asarray(lg["y"])[obs, 0])
    # "sda" halves the prior's misfit; DPS (zeta = 1, reference normalisation) is weaker
    assert post_err.mean() < {"sda": 0.5, "dps": 1.0}[guidance] * prior_err.mean()
    assert err.max() < 5.0


def test_multi_site_mvn_scale_and_mask_exact(lg):
    """Two observed sites (masked Normal, MultivariateNormal with correlated noise) and a
    plate-free handlers.scale: mmps is exact for any linear-Gaussian combination."""
    Hb = np.array([[1.0, -1.0], [0.5, 1.0]])
    Cb = np.array([[0.04, 0.01], [0.01, 0.09]])
    rng = np.random.default_rng(0)
    xt = np.asarray(lg["xtrue"], np.float64)
    ya = xt[:, 0] + 0.2 * rng.standard_normal(L)
    ma = np.arange(L) % 3 == 0
    yb = xt[::4] @ Hb.T + rng.multivariate_normal(np.zeros(2), Cb, size=len(xt[::4]))

    def model(prior, ya=None, yb=None):
        x = numpyro.sample("traj", prior)
        numpyro.sample("a", dist.Normal(x[:, 0], 0.2).mask(jnp.asarray(ma)), obs=ya)
        with handlers.scale(scale=2.0):  # a tempered site: variance / 2
            numpyro.sample("b", dist.MultivariateNormal(x[::4] @ jnp.asarray(Hb.T, jnp.float32),
                                                        jnp.asarray(Cb, jnp.float32)), obs=yb)

    exact = MMPS(solver="dense", covariance="tweedie")
    sda = SDA(model, steps=512, corrections=0, guidance=exact, progress=False)
    out = sda.run(jax.random.key(5), lg["prior"], ya=jnp.asarray(ya, jnp.float32),
                  yb=jnp.asarray(yb, jnp.float32), num_samples=512)
    xs = np.asarray(out.get_samples()["traj"], np.float64)
    # dense reference
    rows, ys, blocks = [], [], []
    for i in np.flatnonzero(ma):
        h = np.zeros(L * D)
        h[i * D] = 1.0
        rows.append(h)
        ys.append(ya[i])
        blocks.append(np.array([[0.04]]))
    for j, i in enumerate(range(0, L, 4)):
        h = np.zeros((2, L * D))
        h[:, i * D:(i + 1) * D] = Hb
        rows.extend(h)
        ys.extend(yb[j])
        blocks.append(Cb / 2.0)
    Rcov = np.zeros((len(ys), len(ys)))
    k = 0
    for b in blocks:
        Rcov[k:k + len(b), k:k + len(b)] = b
        k += len(b)
    mp, Pp = dense_posterior(lg["m"].reshape(-1), lg["P"], np.array(rows), Rcov, np.array(ys))
    sd = np.sqrt(np.diag(Pp)).reshape(L, D)
    z = np.abs(xs.mean(0) - mp.reshape(L, D)) / (sd / np.sqrt(len(xs)))
    rel = np.abs(xs.std(0) / sd - 1)
    print(f"\nmulti-site mmps: max z = {z.max():.2f}, max std rel err = {rel.max():.3f}")
    assert z.max() < 4.0
    assert rel.max() < 4.0 / np.sqrt(2 * len(xs)) + 0.03
    assert set(out.posterior_predictive) == {"a", "b"}
    assert out.posterior_predictive["b"].shape == (512, 3, 2)


def importance_posterior(lg, loglik, n=400_000, seed=0):
    """Self-normalised importance sampling from the exact Gaussian prior (reference)."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(lg["P"] + 1e-9 * np.eye(L * D))
    xs = (lg["m"].reshape(-1) + rng.standard_normal((n, L * D)) @ chol.T).reshape(n, L, D)
    lw = loglik(xs)
    w = np.exp(lw - lw.max())
    w /= w.sum()
    mean = np.einsum("n,nij->ij", w, xs)
    sd = np.sqrt(np.einsum("n,nij->ij", w, (xs - mean) ** 2))
    return mean, sd, 1.0 / np.sum(w**2)


@pytest.mark.parametrize("family", [
    "poisson",
    pytest.param("studentt", marks=pytest.mark.slow),
    pytest.param("bernoulli", marks=pytest.mark.slow),
])
def test_non_gaussian_sites(lg, family):
    """Moment-matched non-Gaussian sites against an importance-sampling reference and a
    posterior predictive check against the generating data."""
    xt = np.asarray(lg["xtrue"], np.float64)
    rng = np.random.default_rng(1)
    idx = np.arange(0, L, 2)
    if family == "poisson":
        obs = rng.poisson(np.exp(1.5 + xt[idx, 0])).astype(np.float32)

        def site(x):
            return dist.Poisson(jnp.exp(1.5 + x[::2, 0]))

        def ll(xs):
            lam = np.exp(1.5 + xs[:, ::2, 0])
            return np.sum(obs * np.log(lam) - lam, axis=1)
    elif family == "studentt":
        obs = (xt[idx, 0] + 0.2 * rng.standard_t(4.0, len(idx))).astype(np.float32)

        def site(x):
            return dist.StudentT(4.0, x[::2, 0], 0.2)

        def ll(xs):
            r = (obs - xs[:, ::2, 0]) / 0.2
            return np.sum(-2.5 * np.log1p(r**2 / 4.0), axis=1)
    else:  # Bernoulli of a soft threshold
        obs = (rng.random(len(idx)) < 1 / (1 + np.exp(-(xt[idx, 0] / 0.3)))).astype(np.float32)

        def site(x):
            return dist.Bernoulli(logits=x[::2, 0] / 0.3)

        def ll(xs):
            lg_ = xs[:, ::2, 0] / 0.3
            return np.sum(obs * lg_ - np.logaddexp(0.0, lg_), axis=1)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", site(x), obs=y)

    out = SDA(model, steps=128, corrections=0, guidance="mmps", progress=False).run(
        jax.random.key(6), lg["prior"], y=jnp.asarray(obs), num_samples=512)
    xs = np.asarray(out.get_samples()["x"], np.float64)
    ref_mean, ref_sd, ess = importance_posterior(lg, ll)
    err = np.abs(xs.mean(0)[idx, 0] - ref_mean[idx, 0]) / ref_sd[idx, 0]
    prior_err = np.abs(lg["m"].reshape(L, D)[idx, 0] - ref_mean[idx, 0]) / ref_sd[idx, 0]
    ratio = xs.std(0)[idx, 0] / ref_sd[idx, 0]
    print(f"\n{family}: IS ess {ess:.0f}; SDA mean err / sd: max {err.max():.2f} (prior "
          f"{prior_err.max():.2f}); std ratio [{ratio.min():.2f}, {ratio.max():.2f}]")
    assert ess > 500
    assert err.max() < 0.5
    assert 0.6 < ratio.min() and ratio.max() < 1.6
    # posterior predictive check: the data look like draws of the fitted model
    pp = np.asarray(out.posterior_predictive["y"], np.float64)
    assert pp.shape == (512, len(idx))
    z = np.abs(pp.mean(0) - obs) / (pp.std(0) + 1e-6)
    assert np.mean(z < 2.5) >= 0.8


def test_unsupported_and_bad_inputs(lg):
    prior = lg["prior"]

    def cauchy(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("yc", dist.Cauchy(x[:, 0], 0.1), obs=y)

    with pytest.raises(ValueError, match="'yc'.*Cauchy"):
        SDA(cauchy, progress=False).run(jax.random.key(0), prior, y=jnp.zeros(L), num_samples=2)

    def plain(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[:, 0], 0.1), obs=y)

    with pytest.raises(ValueError, match=r"'y'.*\(5,\).*\(12,\)"):
        SDA(plain, progress=False).run(jax.random.key(0), prior, y=jnp.zeros(5), num_samples=2)
    with pytest.raises(ValueError, match=r"shapes.*'y': \(5, 1\), 'mask': \(12,\)"):
        SDA(gap_model, progress=False).run(jax.random.key(0), prior, y=jnp.zeros((5, 1)),
                                          mask=jnp.ones(L, bool), num_samples=2)

    with pytest.raises(ValueError, match="'y'.*NaN.*obs_mask"):
        SDA(plain, progress=False).run(jax.random.key(0), prior,
                                       y=jnp.zeros(L).at[2].set(jnp.nan), num_samples=2)

    def none(y=None):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="no trajectory site"):
        SDA(none).run(jax.random.key(0), y=jnp.zeros(()))

    def two(prior, y=None):
        a = numpyro.sample("a", prior)
        b = numpyro.sample("b", prior)
        numpyro.sample("y", dist.Normal(a[:, 0] + b[:, 0], 0.1), obs=y)

    with pytest.raises(ValueError, match=r"2 trajectory sites \['a', 'b'\]"):
        SDA(two).run(jax.random.key(0), prior, y=jnp.zeros(L))

    def extra(prior, y=None):
        x = numpyro.sample("x", prior)
        s = numpyro.sample("noise", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(x[:, 0], s), obs=y)

    with pytest.raises(ValueError, match="'noise'.*gibbs_sweeps.*condition"):
        SDA(extra).run(jax.random.key(0), prior, y=jnp.zeros(L))
    # conditioning the extra latent site makes the model valid
    fixed = handlers.condition(extra, data={"noise": 0.1})
    out = SDA(fixed, steps=8, corrections=0, progress=False).run(
        jax.random.key(0), prior, y=jnp.zeros(L), num_samples=3)
    assert out.get_samples()["x"].shape == (3, L, D)

    with pytest.raises(ValueError, match="MarkovPrior"):
        SDA(plain).run(jax.random.key(0), lg["system"].markov_prior(L), y=jnp.zeros(L))
    with pytest.raises(ValueError, match="guidance"):
        SDA(plain, guidance="magic")
    with pytest.raises(ValueError, match="num_samples"):
        SDA(plain).run(jax.random.key(0), prior, y=jnp.zeros(L), num_samples=0)


def test_chunks_nonlinear_operator_and_cache(lg):
    """Chunked sampling (padded last chunk, one compilation), a nonlinear operator at irregular
    times, results under the model's own site names, divergence reporting."""

    def model(prior, y=None):
        z = numpyro.sample("state", prior)
        idx = jnp.array([0, 1, 5, 11])  # irregular observation times
        numpyro.sample("obs_sq", dist.Normal(jnp.sin(z[idx, 1]) + z[idx, 0] ** 2, 0.1), obs=y)

    xt = np.asarray(lg["xtrue"])
    idx = np.array([0, 1, 5, 11])
    y = jnp.asarray(np.sin(xt[idx, 1]) + xt[idx, 0] ** 2, jnp.float32)
    sda = SDA(model, steps=16, corrections=1, guidance="mmps", chunk_size=4, progress=True)
    out = sda.run(jax.random.key(7), lg["prior"], y=y, num_samples=10)
    xs = out.get_samples()["state"]
    assert xs.shape == (10, L, D) and bool(jnp.all(jnp.isfinite(xs)))
    assert not bool(jnp.any(out.sample_stats["diverging"]))
    assert out.posterior_predictive["obs_sq"].shape == (10, 4)
    first = next(iter(sda._cache.values()))["steps"][0]
    out2 = sda.run(jax.random.key(8), lg["prior"], y=y * 1.1, num_samples=6)
    # same shapes, new observed values: no recompilation
    assert next(iter(sda._cache.values()))["steps"][0] is first
    assert not np.allclose(out2.get_samples()["state"][:6], xs[:6])
    # old-style uint32 keys are accepted
    sda.run(jax.random.PRNGKey(0), lg["prior"], y=y, num_samples=4)
    # too few steps for "sda" guidance on this sharp nonlinear operator: a divergence is
    # reported, never returned silently
    sharp = SDA(model, steps=4, corrections=1, guidance=SDAGuidance(gamma=0.0), progress=False)
    with pytest.warns(RuntimeWarning, match="not finite"):
        bad = sharp.run(jax.random.key(7), lg["prior"], y=y * 0 + 50.0, num_samples=16)
    assert bool(jnp.any(bad.sample_stats["diverging"]))


@pytest.fixture(scope="module")
def lorenz():
    from numpyro_sda import pretrained
    from numpyro_sda.systems import Lorenz63

    system = Lorenz63()
    prior = TrajectoryPrior(pretrained.load("lorenz63"), length=65)
    x_true = system.normalize(system.simulate(jax.random.key(11), 1, 65, burn_in=1024)[0])
    return system, prior, x_true


@pytest.mark.parametrize("scenario", ["lo", pytest.param("hi", marks=pytest.mark.slow)])
def test_lorenz63_scenarios_with_learned_prior(lorenz, scenario):
    """DESIGN.md §5 "lo" (x[::8, :1] + N(0, 0.05^2)) and "hi" (x[:, :1] + N(0, 0.25^2)) with
    the pretrained window-5 MLP prior: the posterior fits the data and tracks the truth."""
    system, prior, x_true = lorenz
    stride, noise = (8, 0.05) if scenario == "lo" else (1, 0.25)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::stride, :1], noise), obs=y)

    y = x_true[::stride, :1] + noise * jax.random.normal(jax.random.key(12),
                                                         x_true[::stride, :1].shape)
    out = SDA(model, steps=32, corrections=1, guidance="sda", progress=False).run(
        jax.random.key(13), prior, y=y, num_samples=16)
    xs = np.asarray(out.get_samples()["x"], np.float64)
    assert xs.shape == (16, 65, 3) and np.all(np.isfinite(xs))
    misfit = np.abs(xs.mean(0)[::stride, 0] - np.asarray(y)[:, 0])
    rmse = np.sqrt(np.mean((xs.mean(0) - np.asarray(x_true)) ** 2))
    print(f"\nLorenz-63 {scenario}: mean |E[x_obs] - y| = {misfit.mean():.3f}, RMSE to truth "
          f"{rmse:.3f} (normalised units), mean log p(y|x) "
          f"{float(out.sample_stats['log_likelihood'].mean()):.1f}")
    assert misfit.mean() < 2 * noise
    assert rmse < 0.7  # an unconditional draw has RMSE ~1.4, the prior mean ~1.0
    pp = np.asarray(out.posterior_predictive["y"], np.float64)[..., 0]
    z = np.abs(pp.mean(0) - np.asarray(y)[:, 0]) / pp.std(0)
    assert np.mean(z < 3) >= 0.8


def test_sparse_guidance_equals_dense_on_learned_prior(lorenz):
    """Differentiating only the windows of observed states changes nothing but the cost."""
    system, prior, x_true = lorenz

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::8, :1], 0.05), obs=y)

    y = x_true[::8, :1]
    runs = {}
    for sparse in (True, False):
        sda = SDA(model, steps=8, corrections=1, progress=False, predictive=False,
                  sparse_guidance=sparse)
        runs[sparse] = sda.run(jax.random.key(3), prior, y=y, num_samples=8)
    np.testing.assert_array_equal(np.flatnonzero(runs[True].observed_states),
                                  np.arange(0, 65, 8))
    np.testing.assert_allclose(runs[True].get_samples()["x"], runs[False].get_samples()["x"],
                               rtol=1e-3, atol=1e-3)


def test_gibbs_infers_unknown_noise_scale(lg):
    """Unknown observation noise s ~ HalfNormal(0.5): Gibbs (SDA for x, slice sampling for s)
    against the exact posterior of s on a grid (Gaussian evidence p(y | s))."""
    xt = np.asarray(lg["xtrue"], np.float64)
    s_true = 0.3
    y = xt[:, 0] + s_true * np.random.default_rng(4).standard_normal(L)

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        s = numpyro.sample("s", dist.HalfNormal(0.5))
        numpyro.sample("y", dist.Normal(x[:, 0], s), obs=y)

    n = 256
    out = SDA(model, steps=256, corrections=0, guidance=MMPS(solver="dense", covariance="tweedie"),
              gibbs_sweeps=8,
              progress=False).run(jax.random.key(9), lg["prior"], y=jnp.asarray(y, jnp.float32),
                                  num_samples=n)
    samples = out.get_samples()
    assert samples["x"].shape == (n, L, D) and samples["s"].shape == (n,)
    assert out.posterior_predictive["y"].shape == (n, L)
    # exact posterior of s on a grid
    H = np.zeros((L, L * D))
    H[np.arange(L), np.arange(L) * D] = 1.0
    S0 = H @ lg["P"] @ H.T
    mH = H @ lg["m"].reshape(-1)
    grid = np.linspace(1e-3, 2.0, 4000)
    logp = []
    for sg in grid:
        S = S0 + sg**2 * np.eye(L)
        _, logdet = np.linalg.slogdet(S)
        r = y - mH
        logp.append(-0.5 * (r @ np.linalg.solve(S, r) + logdet) - 0.5 * (sg / 0.5) ** 2)
    w = np.exp(np.array(logp) - max(logp))
    w /= w.sum()
    s_mean = np.sum(w * grid)
    s_sd = np.sqrt(np.sum(w * (grid - s_mean) ** 2))
    got = np.asarray(samples["s"], np.float64)
    print(f"\nGibbs s: mean {got.mean():.3f} sd {got.std():.3f}; exact mean {s_mean:.3f} "
          f"sd {s_sd:.3f}")
    assert abs(got.mean() - s_mean) < 4 * s_sd / np.sqrt(n) + 0.1 * s_sd
    assert abs(got.std() / s_sd - 1) < 0.25


def test_gibbs_keeps_several_sweeps_per_chain_and_exports_chains(lg):
    """gibbs_draws=3: each chain contributes its last 3 sweeps; 6 draws = 2 chains, exported as
    2 chains so that r_hat is defined (issue 12, item 18)."""
    from numpyro_sda.arviz_export import to_inference_data

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        s = numpyro.sample("s", dist.HalfNormal(0.5))
        numpyro.sample("y", dist.Normal(x[:, 0], s), obs=y)

    y = jnp.asarray(np.asarray(lg["xtrue"])[:, 0], jnp.float32)
    out = SDA(model, steps=8, corrections=0, gibbs_sweeps=6, gibbs_draws=3,
              progress=False).run(jax.random.key(1), lg["prior"], y=y, num_samples=6)
    assert out.num_chains == 2
    samples = out.get_samples()
    assert samples["x"].shape == (6, L, D) and samples["s"].shape == (6,)
    # consecutive sweeps of one chain differ (the chain moves)
    assert not np.allclose(np.asarray(samples["x"][0]), np.asarray(samples["x"][1]))
    idata = to_inference_data(out)
    post = idata["posterior"]
    assert post["s"].shape[:2] == (2, 3)
    with pytest.raises(ValueError, match="multiple of gibbs_draws"):
        SDA(model, steps=8, gibbs_sweeps=6, gibbs_draws=3, progress=False).run(
            jax.random.key(1), lg["prior"], y=y, num_samples=4)
    with pytest.raises(ValueError, match="gibbs_draws"):
        SDA(model, gibbs_sweeps=2, gibbs_draws=3)


def test_edm_spacing_through_sda_matches_rts(lg):
    """``SDA(spacing="edm")`` drives the reverse steps on the EDM grid: with the exact MMPS
    guidance on the linear-Gaussian case it reproduces the RTS smoother at a quarter of the
    steps of ``mmps_run``; the grid really changes the draws; a bad name is refused."""
    exact = MMPS(solver="dense", covariance="tweedie")
    kw = dict(steps=128, corrections=0, eta=0.0, guidance=exact, progress=False,
              predictive=False)
    edm = SDA(gap_model, spacing="edm", **kw)
    assert edm.config.spacing == "edm"
    xs = np.asarray(edm.run(jax.random.key(3), lg["prior"], y=lg["y"], mask=lg["mask"],
                            num_samples=1024).get_samples()["x"], np.float64)
    assert_matches_rts(xs, lg, "edm grid, 128 steps")
    uniform = SDA(gap_model, **kw).run(jax.random.key(3), lg["prior"], y=lg["y"],
                                       mask=lg["mask"], num_samples=8)
    assert not np.allclose(np.asarray(uniform.get_samples()["x"]), xs[:8])
    with pytest.raises(ValueError, match="spacing must be one of"):
        SDA(gap_model, spacing="karras")
    # an explicit grid of times is a tuple in the settings; its length must match steps
    grid = piecewise_times((1, 0.5, 0), (2, 6))
    sda = SDA(gap_model, steps=8, spacing=list(grid), progress=False)
    assert sda.config.spacing == grid
    with pytest.raises(ValueError, match="pass steps=8"):
        SDA(gap_model, spacing=grid)
    # the driver takes its steps on that grid: the uniform grid given explicitly reproduces
    # the default run, draw for draw
    kw = dict(steps=8, corrections=1, progress=False, predictive=False)
    runs = [SDA(gap_model, spacing=sp, **kw).run(jax.random.key(5), lg["prior"], y=lg["y"],
                                                  mask=lg["mask"], num_samples=4)
            for sp in ("uniform", tuple(np.linspace(1, 0, 9).tolist()))]
    np.testing.assert_allclose(*(np.asarray(r.get_samples()["x"]) for r in runs), atol=1e-5)

"""Classical baselines on the paper's Lorenz-63 "lo" / "hi" cases (DESIGN.md section 5).

For each case: the truth is a 65-state trajectory of the noisy Lorenz-63 (dt 0.025) after 1024
burn-in steps; "lo" observes the first normalised component every 8 steps with noise 0.05, "hi"
every step with noise 0.25. The ground truth is the bootstrap particle filter with 16384
particles started from the prior after 64 transitions (``markov_prior(65, spinup=64)``), 1024
trajectories by ancestral tracing. Reported:

* ground-truth wall time after compilation and the compile time (reference PyTorch: ~0.3 s "lo",
  ~0.5 s "hi" on these machines);
* W1 (exact EMD, ``ot.emd2``, Euclidean cost on whole trajectories in physical units) between two
  independent ground-truth runs of 1024 samples each: the noise floor (reference 5.2-6.2 "lo",
  6.1-8.1 "hi");
* EnKS (N = 1024, stochastic) and weak-constraint 4D-Var (first guess: the EnKS mean): RMSE of
  their mean / MAP to the true trajectory and to the ground-truth posterior mean, and W1 of the
  EnKS ensemble to the ground truth.

::

    python benchmarks/baselines.py [--cases 1] [--particles 16384]
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import ot

from numpyro_sda.baselines import EnKS, FourDVar, ParticleSmoother
from numpyro_sda.systems import Lorenz63

LENGTH = 65


def lo(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::8, :1], 0.05), obs=y)


def hi(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[:, :1], 0.25), obs=y)


SETTINGS = {"lo": (lo, lambda x: x[::8, :1], 0.05), "hi": (hi, lambda x: x[:, :1], 0.25)}


def w1(a: jnp.ndarray, b: jnp.ndarray) -> float:
    a = np.asarray(a, np.float64).reshape(a.shape[0], -1)
    b = np.asarray(b, np.float64).reshape(b.shape[0], -1)
    M = ot.dist(a, b, metric="euclidean")
    return float(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), M,
                         numItermax=10**7))


def rmse(a: jnp.ndarray, b: jnp.ndarray) -> float:
    return float(jnp.sqrt(jnp.mean((a - b) ** 2)))


def l96_memory(particles: int, length: int = 1000) -> None:
    """Bootstrap PF + ancestral smoother on Lorenz-96 (32 variables), 1000 steps."""
    import resource

    from numpyro_sda.systems import Lorenz96

    system = Lorenz96()
    prior = system.markov_prior(length, spinup=64)
    x_true = jax.jit(lambda k: prior.sample(k))(jax.random.key(0))

    def model(prior, y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[::10, ::4], 0.5), obs=y)

    clean = x_true[::10, ::4]
    y = clean + 0.5 * jax.random.normal(jax.random.key(1), clean.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pf = ParticleSmoother(model, num_particles=particles)
        pf.run(jax.random.key(2), prior, y=y, num_samples=256)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    est = (length * particles * (32 * 4 + 4 + 4)) / 2**30
    print(f"\nLorenz-96 (32 vars), {particles} particles x {length} steps: run {pf.wall_time:.1f} s, "
          f"compile {pf.compile_time:.1f} s, min ESS {float(pf.sample_stats['ess'].min()):.0f}, "
          f"peak RSS {peak:.2f} GiB (stored states+ancestors+weights {est:.2f} GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1, help="test cases per setting")
    parser.add_argument("--particles", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--l96", action="store_true",
                        help="only the memory check: 16384 particles x 1000 steps of Lorenz-96")
    args = parser.parse_args()
    if args.l96:
        return l96_memory(args.particles)

    system = Lorenz63()
    key = jax.random.key(args.seed)
    truths = system.simulate(key, args.cases, LENGTH, burn_in=1024)
    prior_pf = system.markov_prior(LENGTH, spinup=64)
    prior_var = system.markov_prior(LENGTH)
    rows = []
    for name, (model, obs, noise) in SETTINGS.items():
        for c in range(args.cases):
            x_true = truths[c]
            xn = system.normalize(x_true)
            ky = jax.random.fold_in(jax.random.fold_in(key, c), hash(name) % 1000)
            clean = obs(xn)
            y = clean + noise * jax.random.normal(ky, clean.shape)

            runs = []
            for r in range(2):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    pf = ParticleSmoother(model, num_particles=args.particles)
                    pf.run(jax.random.key(1000 + 2 * c + r), prior_pf, y=y, num_samples=1024)
                runs.append(pf)
            gt = [system.denormalize(p.get_samples()["x"]) for p in runs]
            floor = w1(gt[0], gt[1])
            gt_mean = gt[0].mean(0)

            enks = EnKS(model, ensemble_size=1024).run(jax.random.key(7 + c), prior_pf, y=y)
            ens = system.denormalize(enks.get_samples()["x"])
            var = FourDVar(model, weak=True, init=enks.get_samples()["x"].mean(0), max_iter=2000)
            var.run(jax.random.key(8 + c), prior_var, y=y)
            x_map = system.denormalize(var.get_samples()["x"][0])
            rows.append(dict(
                case=f"{name}{c}", gt_compile=runs[0].compile_time,
                gt_wall=min(p.wall_time for p in runs), min_ess=float(runs[0].sample_stats["ess"].min()),
                floor=floor, gt_rmse=rmse(gt_mean, x_true),
                enks_rmse=rmse(ens.mean(0), x_true), enks_gt=rmse(ens.mean(0), gt_mean),
                enks_w1=w1(ens, gt[0]), enks_wall=enks.wall_time,
                var_rmse=rmse(x_map, x_true), var_gt=rmse(x_map, gt_mean),
                var_iter=int(var.sample_stats["iterations"]),
                var_conv=bool(var.sample_stats["converged"]), var_wall=var.wall_time,
            ))

    print(f"\nLorenz-63 lo/hi, {LENGTH} states, ground truth = BPF {args.particles} particles "
          "(1024 ancestral draws), physical units")
    head = (f"{'case':5s} {'GT run s':>8s} {'GT comp s':>9s} {'minESS':>7s} {'W1 floor':>8s} "
            f"{'GT rmse':>7s} | {'EnKS rmse':>9s} {'->GT':>6s} {'W1':>6s} {'s':>5s} | "
            f"{'4DVar rmse':>10s} {'->GT':>6s} {'iter':>5s} {'conv':>5s} {'s':>5s}")
    print(head)
    for r in rows:
        print(f"{r['case']:5s} {r['gt_wall']:8.3f} {r['gt_compile']:9.2f} {r['min_ess']:7.0f} "
              f"{r['floor']:8.2f} {r['gt_rmse']:7.3f} | {r['enks_rmse']:9.3f} {r['enks_gt']:6.3f} "
              f"{r['enks_w1']:6.2f} {r['enks_wall']:5.2f} | {r['var_rmse']:10.3f} "
              f"{r['var_gt']:6.3f} {r['var_iter']:5d} {str(r['var_conv']):>5s} "
              f"{r['var_wall']:5.2f}")
    print("reference (PyTorch, these machines): GT 0.3 s lo / 0.5 s hi; W1 floor 5.2-6.2 lo, "
          "6.1-8.1 hi; weak 4D-Var RMSE 0.45 lo")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")

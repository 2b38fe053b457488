"""Lorenz-63 "sakov2012" (DAPPER's ``mods/Lorenz63/sakov2012.py``): EnKF and bootstrap PF RMSE.

Setting (Sakov, Oliver & Bertino, 2012, Table 1, as configured in DAPPER): deterministic
Lorenz-63 in physical units, one RK4 step of dt = 0.01 per state, full observation every 25
steps with R = 2 I, initial ensemble N(x0, 2 I) with x0 = (1.509, -1.531, 25.46), 1000 analysis
cycles, the first 4 * Tplot = 16 time units (64 cycles) discarded. Metric: time average of the
analysis RMSE ``sqrt(mean_i (mean_x_i - x_true_i)^2)`` over the remaining cycles.

DAPPER's published anchors: EnKF('Sqrt', N=10, infl=1.02, rot=True) 0.63 (issue: 0.60);
PartFilt(N=4000, reg=0.7, NER=0.05) 0.27. Pass = within 15 % of the anchor.

The whole run is ONE NumPyro model over 25 001 states, assimilated by the library's EnKF and
ParticleSmoother exactly as a user would call them::

    python benchmarks/sakov2012.py [--cycles 1000] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from numpyro_sda.baselines import EnKF, ParticleSmoother
from numpyro_sda.markov import MarkovPrior
from numpyro_sda.systems import Lorenz63

DKO, R_VAR, BURN_CYCLES = 25, 2.0, 64
X0 = jnp.array([1.509, -1.531, 25.46])


def make_problem(key, cycles: int):
    system = Lorenz63(dt=0.01, noise_std=0.0)
    length = cycles * DKO + 1
    prior = MarkovPrior(
        dist.MultivariateNormal(X0, 2.0 * jnp.eye(3)),
        lambda x: dist.Delta(system.step(x), event_dim=1),
        length,
    )
    k1, k2 = jax.random.split(key)
    x_true = jax.jit(lambda k: prior.sample(k))(k1)
    y = x_true[DKO::DKO] + np.sqrt(R_VAR) * jax.random.normal(k2, (cycles, 3))
    return prior, x_true, y


def model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[DKO::DKO], np.sqrt(R_VAR)).to_event(2), obs=y)


def analysis_rmse(mean: jnp.ndarray, x_true: jnp.ndarray) -> float:
    err = jnp.sqrt(jnp.mean((mean[DKO::DKO] - x_true[DKO::DKO]) ** 2, axis=-1))
    return float(jnp.mean(err[BURN_CYCLES:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--pf-particles", type=int, default=4000)
    parser.add_argument("--skip-pf", action="store_true", help="run the EnKF only")
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        prior, x_true, y = make_problem(jax.random.key(seed), args.cycles)
        runs = {
            "EnKF sqrt N=10 infl=1.02 rot": (
                EnKF(model, ensemble_size=10, variant="sqrt", inflation=1.02, rotate=True), 0.60,
                lambda r: r.sample_stats["mean"],
            ),
            f"BPF N={args.pf_particles} reg=0.7 NER=0.05": (
                ParticleSmoother(
                    model, num_particles=args.pf_particles, ess_threshold=0.05,
                    regularization=0.7,
                ),
                0.27,
                lambda r: r.sample_stats["filter_mean"],
            ),
        }
        if args.skip_pf:
            runs = dict(list(runs.items())[:1])
        for name, (method, anchor, mean_of) in runs.items():
            t0 = time.perf_counter()
            draws = 8 if isinstance(method, ParticleSmoother) else None  # the PF's smoothed draws
            method.run(jax.random.key(100 + seed), prior, y=y, num_samples=draws)
            total = time.perf_counter() - t0
            rmse = analysis_rmse(mean_of(method), x_true)
            rows.append((name, seed, rmse, anchor, abs(rmse / anchor - 1) <= 0.15,
                         method.compile_time, method.wall_time, total))

    print(f"\nLorenz-63 sakov2012: dt 0.01, obs every {DKO} steps, R = 2 I, {args.cycles} cycles"
          f" ({BURN_CYCLES} burn-in)")
    print(f"{'method':34s} {'seed':>4s} {'RMSE_a':>7s} {'DAPPER':>7s} {'within15%':>9s} "
          f"{'compile s':>9s} {'run s':>7s} {'total s':>7s}")
    for name, seed, rmse, anchor, ok, ct, wt, tt in rows:
        print(f"{name:34s} {seed:4d} {rmse:7.3f} {anchor:7.2f} {str(ok):>9s} {ct:9.1f} "
              f"{wt:7.1f} {tt:7.1f}")


if __name__ == "__main__":
    main()

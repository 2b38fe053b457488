"""Sampler calibration with an exact score: how far does the reverse-diffusion sampler alone
(steps, corrections, tau, eta) move the spread of its draws?

The prior is the Gaussian fitted to 65-state Lorenz-63 trajectories (normalised; 4096 of them),
whose score is known in closed form (:func:`numpyro_sda.prior.gaussian_eps`). Its covariance is
as stiff as the trajectories are smooth: eigenvalues from about 1e-4 (the one-step roughness, i.e.
the process noise) to about 50 (the slow attractor excursions). With no learned network in the
loop, any departure of the draws' variance from the covariance's is the sampler's own error.

For each setting the table gives the ratio (draws' variance / exact variance) along the
covariance's eigenvectors: the mean over all 195, the median over the 100 smallest (roughness)
and over the 50 largest (what W1 in physical units mostly sees). 1 is exact.

    python benchmarks/sampler_calibration.py            # 4000 draws per setting, ~3 min on CPU
    python benchmarks/sampler_calibration.py --draws 1000 --json out/bench/calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_sda.prior import gaussian_eps
from numpyro_sda.sampling import sample_trajectories
from numpyro_sda.systems import Lorenz63

# (steps, corrections, tau, eta); SDA()'s default is (32, 32, 0.25, 1.0)
SETTINGS = [
    (32, 0, 0.25, 1.0), (128, 0, 0.25, 1.0), (512, 0, 0.25, 1.0),
    (32, 0, 0.25, 0.0), (128, 0, 0.25, 0.0),
    (32, 16, 0.25, 1.0), (32, 32, 0.25, 1.0), (32, 32, 0.1, 1.0), (32, 32, 0.25, 0.0),
    (64, 16, 0.25, 1.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--json", default="out/bench/sampler_calibration.json")
    args = parser.parse_args()
    system = Lorenz63()
    x = np.asarray(system.normalize(system.simulate(jax.random.key(5), 4096, 65, burn_in=1024)))
    x = x.reshape(len(x), -1).astype(np.float64)
    mean, cov = x.mean(0), np.cov(x.T) + 1e-6 * np.eye(x.shape[1])
    ev, vecs = np.linalg.eigh(cov)
    eps = gaussian_eps(jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32))
    print(f"load average {os.getloadavg()[0]:.1f}; Gaussian fit of 4096 Lorenz-63 trajectories "
          f"(65 x 3): eigenvalues {ev.min():.1e} to {ev.max():.1f}; {args.draws} draws each")
    print(f"{'steps':>5} {'C':>3} {'tau':>5} {'eta':>4} {'evals':>6} | variance ratio: "
          f"{'all':>6} {'small100':>8} {'top50':>6} | {'s':>5}")
    rows = []
    for steps, corrections, tau, eta in SETTINGS:
        t0 = time.perf_counter()
        draw = jax.jit(lambda k, s=steps, c=corrections, ta=tau, e=eta: sample_trajectories(
            k, eps, args.draws, (x.shape[1],), steps=s, corrections=c, tau=ta, eta=e))
        xs = np.asarray(draw(jax.random.key(0)), np.float64)
        ratio = ((xs - mean) @ vecs).var(0) / ev
        row = dict(steps=steps, corrections=corrections, tau=tau, eta=eta,
                   evals=steps * (1 + corrections), all=float(ratio.mean()),
                   small100=float(np.median(ratio[:100])), top50=float(np.median(ratio[-50:])),
                   seconds=time.perf_counter() - t0)
        rows.append(row)
        print(f"{steps:>5} {corrections:>3} {tau:>5.2f} {eta:>4.1f} {row['evals']:>6} | "
              f"{'':>15}{row['all']:>6.2f} {row['small100']:>8.2f} {row['top50']:>6.2f} | "
              f"{row['seconds']:>5.0f}", flush=True)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(draws=args.draws, load=os.getloadavg()[0], rows=rows), indent=1))
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

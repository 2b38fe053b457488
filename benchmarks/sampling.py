"""SDA sampling speed and time-to-quality on the Lorenz-63 "lo" scenario (DESIGN.md §5).

Prior: the pretrained paper MLP local score (window 5, width 256, depth 5;
``numpyro_sda.pretrained.load("lorenz63")``) composed over 65 states. Observations:
``y = x[::8, :1] + N(0, 0.05^2)`` in normalised coordinates. Ground truth: a bootstrap particle
smoother with 16384 particles started from the prior after 64 transitions
(``system.markov_prior(65, spinup=64)``), 1024 draws; a second independent run gives the noise
floor. Quality: Wasserstein-1 (exact EMD, ``ot.emd2``) between 1024 SDA draws and the 1024
ground-truth draws, on whole trajectories in physical units.

Reference (PyTorch, francois-rozet/sda, same network, these 2-core machines): 4.35 s per reverse
step at C = 0, 8.1 s at C = 1; W1 about 40 at C = 1 after 256 steps (about 2080 s). Targets: >= 2x
per step; the reference's C = 1 quality in <= 420 s (5x).

Usage::

    python benchmarks/sampling.py            # full table (tens of minutes on 2 cores)
    python benchmarks/sampling.py --quick    # short check: fewer draws, steps and configurations
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import ot

from numpyro_sda import pretrained
from numpyro_sda.baselines import ParticleSmoother
from numpyro_sda.infer import SDA
from numpyro_sda.prior import TrajectoryPrior
from numpyro_sda.systems import Lorenz63

REF_STEP = {0: 4.35, 1: 8.1}
REF_W1 = 40.0
REF_TTQ = 2080.0
LENGTH = 65


def model(prior, y=None):
    x = numpyro.sample("x", prior)
    numpyro.sample("y", dist.Normal(x[::8, :1], 0.05), obs=y)


def w1(a: np.ndarray, b: np.ndarray) -> float:
    """Exact EMD between two equally weighted sets of whole trajectories (Euclidean cost)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    M = ot.dist(a, b, metric="euclidean")
    return float(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), M,
                         numItermax=10_000_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short check")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default=None,
                        help="comma-separated guidance:steps:C, e.g. sda:64:1,mmps:32:0")
    args = parser.parse_args()
    n = args.samples or (128 if args.quick else 1024)
    particles = 4096 if args.quick else 16384

    system = Lorenz63()
    score = pretrained.load("lorenz63")
    prior = TrajectoryPrior(score, length=LENGTH)
    key = jax.random.key(args.seed)
    k_truth, k_obs, k_pf1, k_pf2, k_sda = jax.random.split(key, 5)
    x_true = system.normalize(system.simulate(k_truth, 1, LENGTH, burn_in=1024)[0])
    y = x_true[::8, :1] + 0.05 * jax.random.normal(k_obs, (9, 1))

    t0 = time.perf_counter()
    mp = system.markov_prior(LENGTH, spinup=64)
    gt = np.asarray(system.denormalize(
        ParticleSmoother(model, num_particles=particles, num_samples=n).run(k_pf1, mp, y=y)
        .get_samples()["x"]))
    gt2 = np.asarray(system.denormalize(
        ParticleSmoother(model, num_particles=particles, num_samples=n).run(k_pf2, mp, y=y)
        .get_samples()["x"]))
    floor = w1(gt, gt2)
    print(f"ground truth: {particles}-particle bootstrap smoother, {n} draws "
          f"({time.perf_counter() - t0:.1f} s); W1 noise floor {floor:.1f}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")

    # (a) seconds per reverse step ------------------------------------------------------
    timing_steps = 4 if args.quick else 8
    print(f"\n(a) seconds per reverse step, {n} trajectories x {LENGTH} states, "
          f"guidance 'sda' ({timing_steps} timed steps, after compilation)")
    print(f"{'C':>3} {'backward':>8} {'s/step':>8} {'cpu s/step':>10} {'reference':>10} "
          f"{'speed-up':>9} {'compile s':>10}")
    for C in (0, 1):
        for sparse in (False, True):
            sda = SDA(model, steps=timing_steps, corrections=C, guidance="sda", progress=False,
                      predictive=False, sparse_guidance=sparse)
            sda.run(k_sda, prior, y=y, num_samples=n)  # compiles
            c0 = time.process_time()
            sda.run(k_sda, prior, y=y, num_samples=n)  # cached executable
            cpu = (time.process_time() - c0) / timing_steps * (1024 / n)
            per = sda.wall_time / timing_steps * (1024 / n)  # per 1024 trajectories
            print(f"{C:>3} {'sparse' if sparse else 'dense':>8} {per:>8.2f} {cpu:>10.2f} "
                  f"{REF_STEP[C]:>10.2f} {REF_STEP[C] / per:>8.1f}x {sda.compile_time:>10.1f}")
    print("(backward: 'dense' differentiates every window of the composed score, 'sparse' only "
          "the windows of observed states (SDA(sparse_guidance=True), the default; exact)")
    print("(cpu s/step: CPU time of this process, all threads; compare wall with cpu to see "
          "whether other processes competed for the cores)")

    # (b) time to quality -------------------------------------------------------------------
    if args.configs:
        configs = [(g, int(st), int(c)) for g, st, c in
                   (item.split(":") for item in args.configs.split(","))]
    elif args.quick:
        configs = [("sda", 16, 1), ("mmps", 16, 0)]
    else:
        configs = [
            ("sda", 64, 1), ("sda", 128, 1), ("sda", 128, 2), ("sda", 256, 1),
            ("mmps", 32, 0), ("dps", 64, 1),
        ]
    print(f"\n(b) time to quality: W1 to the particle ground truth (physical units), {n} draws;"
          f" reference W1 {REF_W1:.0f} at C=1 in {REF_TTQ:.0f} s")
    header = (f"{'guidance':>8} {'steps':>5} {'C':>2} {'wall s':>8} {'cpu s':>8} {'compile s':>9} "
              f"{'W1':>7} {'mean log p(y|x)':>15} {'reaches ref':>11}")
    print(header)
    print("(wall s: sampling only, scaled to 1024 draws; cpu s includes compilation)")
    best = None
    for guidance, steps, C in configs:
        sda = SDA(model, steps=steps, corrections=C, guidance=guidance, cg_maxiter=1,
                  progress=False, predictive=False)
        c0 = time.process_time()
        sda.run(k_sda, prior, y=y, num_samples=n)
        cpu = (time.process_time() - c0) * (1024 / n)
        xs = np.asarray(system.denormalize(sda.get_samples()["x"]))
        ok = bool(np.all(np.isfinite(xs)))
        d = w1(xs, gt) if ok else float("nan")
        wall = sda.wall_time * (1024 / n)
        reach = ok and d <= REF_W1
        if reach and (best is None or wall < best[0]):
            best = (wall, guidance, steps, C, d)
        ll = float(jnp.mean(sda.sample_stats["log_likelihood"]))
        print(f"{guidance:>8} {steps:>5} {C:>2} {wall:>8.1f} {cpu:>8.1f} {sda.compile_time:>9.1f} "
              f"{d:>7.1f} {ll:>15.1f} {'yes' if reach else 'no':>11}", flush=True)
    if best is None:
        print("\nno configuration reached the reference quality")
    else:
        wall, guidance, steps, C, d = best
        print(f"\nfastest to reference quality: guidance={guidance!r}, steps={steps}, C={C}: "
              f"W1 {d:.1f} in {wall:.1f} s per 1024 draws ({REF_TTQ / wall:.1f}x the reference)")
    if n != 1024:
        print(f"(times scaled to 1024 draws from {n}; W1 from {n} vs {n} draws is biased "
              "upwards relative to 1024 vs 1024)")


if __name__ == "__main__":
    main()

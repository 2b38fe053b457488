r"""Unconditional draws of a composed Lorenz-63 trajectory prior against true trajectories.

SDA scores a trajectory of ``L`` states by composing a local score on windows of ``2k + 1``
states (Rozet & Louppe, 2023, arXiv:2306.10574, Section 3.2). The composition is exact for a
Markov chain at :math:`t = 0` but only approximate at higher noise, where the denoiser of one
state should draw on states further away than the window. This benchmark isolates that error
from the guidance: with no observation at all, draws of ``TrajectoryPrior(score, L)`` (the
sampler of :class:`numpyro_sda.SDA`, default settings) should be distributed like true
``Lorenz63()`` trajectories of ``L`` states after burn-in. For each length it prints

* ``W1``: exact EMD between the prior's draws and true trajectories (whole trajectories,
  physical units), and ``floor``: the same between two independent sets of true trajectories;
* ``P(r<3)``: the fraction of states within 3 of the z-axis (:math:`\sqrt{x^2 + y^2} < 3`),
  where trajectories pass between the two lobes near the origin saddle, and ``P(z<15)``;
* ``switch``: the fraction of transitions where :math:`x` changes sign (lobe switches);
* ``resid``: the one-step residual :math:`x_{i+1} - f(x_i)` per channel (RMS), against the
  transition noise :math:`\sqrt{\Delta t} \approx 0.158` of the true system.

At ``L`` equal to the window the prior is the network's own window distribution (no
composition), so the growth with ``L`` is the composition's error.

    python benchmarks/prior_marginals.py                                  # shipped window-9 prior
    python benchmarks/prior_marginals.py --prior lorenz63 --lengths 5,65  # the window-5 prior
    python benchmarks/prior_marginals.py --corrections 0 --steps 256      # predictor only
    python benchmarks/prior_marginals.py --coarse FILE --coarse-above 0   # MultiResolutionScore
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import load_prior, write_json  # noqa: E402

from numpyro_sda import TrajectoryPrior, metrics  # noqa: E402
from numpyro_sda.multiresolution import MultiResolutionScore  # noqa: E402
from numpyro_sda.sampling import sample_trajectories  # noqa: E402
from numpyro_sda.systems import Lorenz63  # noqa: E402


def statistics(x: np.ndarray, system: Lorenz63) -> dict:
    """Marginal and dynamical statistics of trajectories ``x`` (N, L, 3) in physical units."""
    r = np.hypot(x[..., 0], x[..., 1])
    pred = np.asarray(jax.vmap(jax.vmap(system.step))(jax.numpy.asarray(x[:, :-1])))
    resid = np.sqrt(np.mean((x[:, 1:] - pred) ** 2, axis=(0, 1)))
    return {
        "p_r3": float(np.mean(r < 3)),
        "p_z15": float(np.mean(x[..., 2] < 15)),
        "switch": float(np.mean(np.diff(np.sign(x[..., 0]), axis=1) != 0)),
        "z_mean": float(x[..., 2].mean()),
        "resid": [float(v) for v in resid],
    }


def run(score, prior_name: str, length: int, draws: int, settings: dict, average: int,
        seed: int = 0, system: Lorenz63 | None = None) -> dict:
    """One prior (the loaded ``score`` of ``prior_name``) at one trajectory length: the prior's
    statistics, the truth's, W1 and floor."""
    system = system or Lorenz63()
    prior = TrajectoryPrior(score, length=length, average=average)
    t0 = time.perf_counter()
    xs = sample_trajectories(jax.random.key(seed), prior.eps, draws, prior.event_shape, prior.sde,
                             **settings)
    xs = np.asarray(system.denormalize(xs))
    wall = time.perf_counter() - t0
    truth = np.asarray(system.simulate(jax.random.key(seed + 1), 2 * draws, length,
                                       burn_in=1024))
    a, b = truth[:draws], truth[draws:]
    w1, floor = metrics.wasserstein1(xs, a), metrics.wasserstein1(b, a)
    return dict(prior=prior_name, length=length, draws=draws, average=average,
                settings=settings, w1=w1, floor=floor, ratio=w1 / floor, wall=wall,
                finite=float(np.isfinite(xs).all(axis=(1, 2)).mean()),
                model=statistics(xs, system), truth=statistics(a, system),
                load=os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default="lorenz63_window9",
                        help="comma-separated shipped names or files ('+' joins an ensemble)")
    parser.add_argument("--lengths", default="9,17,33,65")
    parser.add_argument("--draws", type=int, default=256)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--corrections", type=int, default=32)
    parser.add_argument("--correct-below", type=float, default=0.25)
    parser.add_argument("--tau", type=float, default=0.25)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--average", type=int, default=1, help="TrajectoryPrior(average=...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coarse", default=None,
                        help="a coarse local score (trained on every --coarse-stride-th state): "
                             "each prior becomes a MultiResolutionScore with it")
    parser.add_argument("--coarse-stride", type=int, default=2)
    parser.add_argument("--coarse-above", type=float, default=0.0)
    parser.add_argument("--json", default="out/bench/prior_marginals.json")
    args = parser.parse_args()
    settings = dict(steps=args.steps, corrections=args.corrections, tau=args.tau, eta=args.eta,
                    correct_below=args.correct_below)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; jax "
          f"{jax.__version__}; {args.draws} unconditional draws per row; sampler {settings}, "
          f"average={args.average}")
    print(f"{'prior':>18} {'L':>3} {'W1':>6} {'floor':>6} {'ratio':>5} {'P(r<3)':>12} "
          f"{'P(z<15)':>12} {'switch':>13} {'resid (x, y, z)':>18} {'wall s':>6}")
    print(f"{'':>18} {'':>3} {'':>6} {'':>6} {'':>5} {'model/true':>12} {'model/true':>12} "
          f"{'model/true':>13}")
    results = []
    for name in args.prior.split(","):
        score, label = load_prior(name), Path(name).stem
        if args.coarse:
            score = MultiResolutionScore(score, load_prior(args.coarse), args.coarse_stride,
                                         args.coarse_above)
            label = f"{label}+{Path(args.coarse).stem}@{args.coarse_above:g}"
        for length in (int(v) for v in args.lengths.split(",")):
            r = run(score, label, length, args.draws, settings, args.average, args.seed)
            results.append(r)
            m, t = r["model"], r["truth"]
            resid = " ".join(f"{v:.2f}" for v in m["resid"])
            print(f"{label[-18:]:>18} {length:>3} {r['w1']:>6.1f} {r['floor']:>6.1f} "
                  f"{r['ratio']:>5.2f} {m['p_r3']:>5.3f}/{t['p_r3']:<6.3f} "
                  f"{m['p_z15']:>5.3f}/{t['p_z15']:<6.3f} {m['switch']:>6.4f}/{t['switch']:<6.4f} "
                  f"{resid:>18} {r['wall']:>6.0f}", flush=True)
            write_json(Path(args.json), results)  # after each row: a cut run keeps its rows
    print(f"(true one-step residual: the transition noise {Lorenz63().noise_std:.3f}; "
          f"wrote {args.json})")


if __name__ == "__main__":
    main()

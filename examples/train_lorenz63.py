"""Train the paper's local score prior for Lorenz-63 on CPU (Rozet & Louppe, 2023, Section 5.1).

Data: 1024 trajectories of 1024 states after 1024 burn-in transitions of the noisy Lorenz-63
system, normalised, split 80/10/10 into train/valid/test. Network: MLP on windows of 5 states,
width 256, depth 5, SiLU. Optimiser: AdamW (lr 1e-3, weight decay 1e-3), batch 64, linear decay.

The number of optimiser steps is fitted to a wall-time budget: a short warm-up run measures the
throughput, then ``steps = throughput * remaining budget`` so that the learning rate decays to
zero within the budget (``--steps`` overrides). The weights are saved without optimiser state.

    python examples/train_lorenz63.py --budget 600 --window 5   # -> lorenz63_window5.npz
    python examples/train_lorenz63.py --budget 900 --window 9   # -> lorenz63_window9.npz
    python examples/train_lorenz63.py --window 9 --stride 2 --steps 60000
                                                 # -> lorenz63_window9_stride2.npz (coarse)

``--stride 2`` trains on every second state: the coarse score of a
:class:`numpyro_sda.MultiResolutionScore`, whose windows of 9 states span 17 transitions.

``--trajectories``, ``--batch-size``, ``--ema``, ``--hidden`` and ``--depth`` vary the recipe. Four
times the data, batch 256, EMA 0.999 and 139,000 steps (7.4x the windows seen) did not improve the
window-9 prior's posteriors (2026-12-03, ``benchmarks/sampling.py``, "lo" ratio_n 1.28 vs 1.25):
the error that remains is the composition's (``benchmarks/prior_marginals.py``).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import numpyro_sda as nsda
from numpyro_sda.checkpoint import save_score
from numpyro_sda.score import LocalScore
from numpyro_sda.train import train_score


def make_data(seed: int = 0, trajectories: int = 1024, stride: int = 1):
    """Normalised trajectories split 80/10/10 by trajectory; with ``stride > 1`` each one then
    becomes its ``stride`` interleaved subsequences ``x[j::stride]`` (a coarse time step of
    ``stride`` transitions, for a coarse-resolution prior)."""
    system = nsda.systems.Lorenz63()
    x = system.simulate(jax.random.key(seed), trajectories, 1024, burn_in=1024)
    x = np.asarray(system.normalize(x), np.float32)
    n_train, n_valid = int(0.8 * len(x)), int(0.1 * len(x))
    splits = np.split(x, [n_train, n_train + n_valid])
    if stride > 1:
        splits = [np.concatenate([part[:, j::stride] for j in range(stride)]) for part in splits]
    train, valid, test = splits
    return system, train, valid, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="wall-time budget (s)")
    parser.add_argument("--steps", type=int, default=None, help="fixed number of steps")
    parser.add_argument("--window", type=int, default=5, help="window 2k+1 of the local score")
    parser.add_argument("--output", default=None, help="default: lorenz63_window<W>.npz")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (for --resume)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=256, help="MLP width (the paper: 256)")
    parser.add_argument("--depth", type=int, default=5, help="MLP hidden layers (the paper: 5)")
    parser.add_argument("--trajectories", type=int, default=1024,
                        help="simulated trajectories of 1024 states (the paper: 1024)")
    parser.add_argument("--time-sampling", choices=("uniform", "mixed"), default="uniform",
                        help="diffusion times of a batch (numpyro_sda.train.sample_times)")
    parser.add_argument("--prediction", choices=("eps", "v"), default="eps",
                        help="network target: the noise (the paper's) or the velocity")
    parser.add_argument("--stride", type=int, default=1,
                        help="train on every stride-th state (a coarse-resolution prior)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    t_start = time.perf_counter()
    if args.stride < 1:
        parser.error(f"--stride must be >= 1, got {args.stride}")
    system, train, valid, _ = make_data(args.seed, args.trajectories, args.stride)
    print(f"data: train {train.shape}, valid {valid.shape} ({time.perf_counter() - t_start:.1f} s)")

    suffix = f"_stride{args.stride}" if args.stride > 1 else ""
    output = args.output or f"lorenz63_window{args.window}{suffix}.npz"
    config = dict(window=args.window, hidden=args.hidden, depth=args.depth,
                  batch_size=args.batch_size, lr=args.lr,
                  weight_decay=1e-3, ema=args.ema or None, time_sampling=args.time_sampling,
                  prediction=args.prediction, stride=args.stride)
    steps = args.steps
    if steps is None:
        # throughput probe on a throw-away model: time chunks 2-3 (after compilation)
        probe = LocalScore.mlp(3, window=args.window, hidden=args.hidden, depth=args.depth,
                               rngs=args.seed + 1)
        h = train_score(
            probe, train, valid, steps=1500, chunk=500, progress=False, valid_size=64,
            batch_size=args.batch_size,
        ).history
        rate = 1000 / (h["elapsed"][-1] - h["elapsed"][0])
        remaining = args.budget - (time.perf_counter() - t_start) - 30.0
        steps = max(1000, int(0.9 * rate * remaining) // 1000 * 1000)
        print(f"throughput probe: {rate:.0f} steps/s -> {steps} steps")

    score = LocalScore.mlp(3, window=args.window, hidden=args.hidden, depth=args.depth,
                           prediction=args.prediction, rngs=args.seed)
    result = train_score(
        score,
        train,
        valid,
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=1e-3,
        ema=args.ema or None,
        time_sampling=args.time_sampling,
        schedule="linear",
        chunk=500,
        seed=args.seed,
        checkpoint=args.checkpoint,
        resume=args.resume,
        progress=not args.no_progress,
        normalization=(system.mean, system.std),
        time_limit=args.budget * 1.5 if args.steps is None else None,  # --steps: run them all
    )
    h = result.history
    info = dict(
        config,
        steps=int(result.step),
        stop_reason=result.stop_reason,
        valid_loss=float(h["valid_loss"][-1]),
        train_loss=float(h["train_loss"][-1]),
        train_seconds=round(result.elapsed, 1),
        data=f"Lorenz63(): {args.trajectories} x 1024 after 1024 burn-in, normalised, "
             "80/10/10 split",
        seed=args.seed,
    )
    save_score(output, result.score, config=info, normalization=(system.mean, system.std))
    print(json.dumps(info, indent=1))
    print(f"saved {output}")


if __name__ == "__main__":
    main()

"""Train a 2-D UNet local score for Kolmogorov flow (vorticity 64², forcing as context).

Two configurations:

* ``--config paper``: the paper's network (Rozet & Louppe, 2023, Section 5.2): channels
  (96, 192, 384), blocks (3, 3, 3), window 5, the forcing field :math:`-\\cos 4 x_1` as a context
  channel; AdamW (lr 2e-4, weight decay 1e-3), batch 32, linear decay, EMA 0.999. Meant for a
  GPU (``--steps 100000``); the training precision follows ``LocalScore``/``train_score``.
* ``--config cpu``: a reduced network for these CPUs, channels (16, 32, 64), blocks (1, 1, 1),
  window 5, the same context, batch 8, lr 1e-3.

Data: ``KolmogorovFlow()`` trajectories (``--trajectories`` x ``--length`` states after 64
burn-in states), written once to ``--data`` (HDF5) and reused. Checkpoints every
``--checkpoint-every`` steps (weights, optimiser, EMA, step; atomic); ``--resume`` continues a
run bit-identically. ``--time-limit`` stops cleanly (then ``--resume``). The output file holds the
EMA weights and the training settings and validation loss in its header.

    python examples/train_kolmogorov.py --config paper --steps 100000 --trajectories 256 \\
        --length 64 --data kolmo.h5 --checkpoint kolmo.ckpt.npz --output kolmogorov.npz
    python examples/train_kolmogorov.py --config cpu --steps 20000 --time-limit 7000 --resume
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from numpyro_sda import data, systems
from numpyro_sda.checkpoint import save_score
from numpyro_sda.scenarios import kolmogorov_forcing
from numpyro_sda.score import LocalScore
from numpyro_sda.train import train_score

CONFIGS = {
    "paper": dict(hidden_channels=(96, 192, 384), blocks=(3, 3, 3), batch_size=32, lr=2e-4),
    "cpu": dict(hidden_channels=(16, 32, 64), blocks=(1, 1, 1), batch_size=8, lr=1e-3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="network size")
    parser.add_argument("--steps", type=int, default=20000, help="optimiser steps")
    parser.add_argument("--trajectories", type=int, default=64, help="simulated trajectories")
    parser.add_argument("--length", type=int, default=64, help="states per trajectory")
    parser.add_argument("--data", default="kolmogorov.h5", help="HDF5 dataset (made if missing)")
    parser.add_argument("--checkpoint", default="kolmogorov.ckpt.npz", help="checkpoint file")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between saves")
    parser.add_argument("--output", default="kolmogorov.npz", help="final weights file")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--time-limit", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--seed", type=int, default=0, help="data, init and training seed")
    args = parser.parse_args()

    cfg = CONFIGS[args.config]
    if Path(args.checkpoint).exists() and not args.resume:
        raise SystemExit(f"{args.checkpoint} exists: pass --resume, or remove it")
    system = systems.KolmogorovFlow()
    t0 = time.perf_counter()
    if not Path(args.data).exists():
        data.generate(system, args.data, num_trajectories=args.trajectories, length=args.length,
                      burn_in=64, seed=args.seed, splits=(0.9, 0.1))
    print(f"data ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    score = LocalScore.unet(1, window=5, spatial=2, hidden_channels=cfg["hidden_channels"],
                            blocks=cfg["blocks"], context=kolmogorov_forcing(system.resolution),
                            rngs=args.seed)
    print(f"UNet {cfg['hidden_channels']} x {cfg['blocks']}: {score.num_params()} parameters",
          flush=True)
    with data.TrajectoryDataset(args.data, "train") as tr, \
            data.TrajectoryDataset(args.data, "valid") as va:
        res = train_score(score, tr, va, steps=args.steps, batch_size=cfg["batch_size"],
                          lr=cfg["lr"], ema=0.999, chunk=50, seed=args.seed,
                          checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                          resume=args.resume, time_limit=args.time_limit, valid_size=256)
    h = res.history
    info = dict(config=args.config, **{k: list(v) if isinstance(v, tuple) else v
                                      for k, v in cfg.items()},
                window=5, context="forcing -cos(4 x1)", ema=0.999, steps=int(res.step),
                planned_steps=args.steps, stop_reason=res.stop_reason,
                valid_loss=float(h["valid_loss"][-1]) if len(h["valid_loss"]) else None,
                train_seconds_this_run=round(res.elapsed, 1),
                data=f"KolmogorovFlow(): {args.trajectories} x {args.length} after 64 burn-in")
    save_score(args.output, res.score, config=info, normalization=(system.mean, system.std))
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()

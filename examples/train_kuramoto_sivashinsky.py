"""Train a 1-D UNet local score for Kuramoto–Sivashinsky on CPU (the shipped ``pretrained "ks"``).

Data: ``KuramotoSivashinsky()`` (L = 22, 64 grid points, dt = 0.25), ``--trajectories``
trajectories of ``--length`` states after 400 burn-in states (100 time units), normalised by the
system's attractor statistics, split 90/10 into train/valid by trajectory. The dataset is written
once to ``--data`` (HDF5, atomic, :func:`numpyro_sda.data.generate`) and reused by later runs.

Network: ``LocalScore.unet(1, window=5, spatial=1, hidden_channels=..., blocks=..., size=64)``
(circular convolutions, SiLU, 64 time-embedding features), by default channels (32, 64, 128)
and two residual blocks per level (663,749 parameters). Optimiser: AdamW (lr 2e-3, weight decay
1e-3), batch 64, linear decay to zero, gradient clipping at norm 1; the EMA (``--ema``, 0.999) of
the weights is saved. The shipped prior: 27,600 steps in 1588 s within ``--budget 1800`` on the
shared 2-core CPU, validation DSM loss 0.0124 (``benchmarks/results/ks_prior_training_2026-11-28.log``).

The number of optimiser steps is fitted to a wall-time budget: a short warm-up run measures the
throughput, then ``steps = throughput * remaining budget`` (``--steps`` overrides). Checkpoints
(weights, optimiser state, EMA, step) are written atomically to ``--checkpoint`` every
``--checkpoint-every`` steps; ``--resume`` continues an interrupted run with the step count
stored in the checkpoint (bit-identical to an uninterrupted run). The output file holds the
weights, the training settings and the final validation loss in its header; a run stopped by the
time limit is saved too and says so (``stop_reason``, ``planned_steps``).

    python examples/train_kuramoto_sivashinsky.py --budget 1800 --hidden 32 64 128 --blocks 2 2 2 \\
        --data ks.h5 --checkpoint ks.ckpt.npz --output numpyro_sda/pretrained/ks_unet_window5.npz

The same network can be trained from the command line on the same dataset::

    numpyro-sda generate kuramoto_sivashinsky ks.h5 --trajectories 256 --length 256 --burn-in 400
    numpyro-sda train ks.h5 ks.npz --arch unet --channels 32 64 128 --blocks 2 2 2 --steps 27600 \\
        --lr 2e-3 --ema 0.999
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpyro_sda as nsda
from numpyro_sda import data
from numpyro_sda.checkpoint import load_checkpoint, save_score
from numpyro_sda.score import LocalScore
from numpyro_sda.train import train_score

BURN_IN = 400


def make_data(path: Path, trajectories: int, length: int, seed: int):
    """Generate (once) and read the normalised train/valid splits of the KS dataset."""
    system = nsda.systems.KuramotoSivashinsky()
    if not path.exists():
        data.generate(system, path, num_trajectories=trajectories, length=length,
                      burn_in=BURN_IN, seed=seed, splits=(0.9, 0.1), progress=False)
    with data.TrajectoryDataset(path, "train") as tr, data.TrajectoryDataset(path, "valid") as va:
        train, valid = tr.to_array(), va.to_array()
    return system, train, valid


def build(hidden: list[int], blocks: list[int], seed: int) -> LocalScore:
    """The KS local score: a 1-D UNet on windows of 5 states of shape ``(1, 64)``."""
    return LocalScore.unet(1, window=5, spatial=1, hidden_channels=hidden, blocks=blocks,
                           size=64, rngs=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1800.0, help="wall-time budget (s)")
    parser.add_argument("--steps", type=int, default=None, help="fixed number of steps")
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 64, 128],
                        help="UNet channels per level")
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 2, 2],
                        help="UNet residual blocks per level")
    parser.add_argument("--trajectories", type=int, default=256, help="simulated trajectories")
    parser.add_argument("--length", type=int, default=256, help="states per trajectory")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    parser.add_argument("--data", default="ks.h5", help="HDF5 dataset (generated if missing)")
    parser.add_argument("--output", default="ks_unet_window5.npz", help="final weights file")
    parser.add_argument("--checkpoint", default="ks.ckpt.npz", help="resumable checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between saves")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--ema", type=float, default=0.999,
                        help="EMA decay of the shipped weights (0: the raw final weights)")
    parser.add_argument("--seed", type=int, default=0, help="data, init and training seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()

    t_start = time.perf_counter()
    ckpt_path = Path(args.checkpoint)
    if ckpt_path.exists() and not args.resume:
        raise SystemExit(f"{ckpt_path} exists: pass --resume to continue it, or remove it")
    system, train, valid = make_data(Path(args.data), args.trajectories, args.length, args.seed)
    print(f"data: train {train.shape}, valid {valid.shape} "
          f"({time.perf_counter() - t_start:.1f} s)", flush=True)

    # EMA needs many steps: with the ~1500 steps that 30 minutes allowed before the CPU patch
    # convolutions (nets.patch_conv), an EMA of 0.999 still carried the early weights (validation
    # loss 0.114 against 0.029 for the raw weights); pass --ema 0 for the raw weights
    ema = args.ema if args.ema > 0 else None
    steps = args.steps
    if args.resume and ckpt_path.exists():
        steps = int(load_checkpoint(ckpt_path).training["steps"])
        print(f"resuming {ckpt_path} (planned {steps} steps)", flush=True)
    elif steps is None:
        probe = build(args.hidden, args.blocks, args.seed + 1)
        h = train_score(probe, train, valid, steps=60, chunk=20, progress=False,
                        valid_size=64, batch_size=args.batch_size).history
        rate = 40 / (h["elapsed"][-1] - h["elapsed"][0])
        remaining = args.budget - (time.perf_counter() - t_start) - 60.0
        steps = max(500, int(0.85 * rate * remaining) // 100 * 100)
        print(f"throughput probe: {rate:.2f} steps/s -> {steps} steps", flush=True)

    score = build(args.hidden, args.blocks, args.seed)
    print(f"UNet {args.hidden} x {args.blocks}: {score.num_params()} parameters", flush=True)
    result = train_score(
        score, train, valid, steps=steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=1e-3, schedule="linear", ema=ema, chunk=100, seed=args.seed,
        checkpoint=ckpt_path, checkpoint_every=args.checkpoint_every, resume=args.resume,
        progress=not args.no_progress, normalization=(system.mean, system.std),
        time_limit=args.budget * 1.25,
    )
    h = result.history
    for s, tl, vl, el in zip(h["step"], h["train_loss"], h["valid_loss"], h["elapsed"],
                             strict=True):
        if s % 1000 == 0 or s == h["step"][-1]:
            print(f"step {s}: train {tl:.4f} valid {vl:.4f} ({el:.0f} s)", flush=True)
    info = dict(
        arch="unet", window=5, hidden_channels=args.hidden, blocks=args.blocks,
        batch_size=args.batch_size, lr=args.lr, weight_decay=1e-3, schedule="linear", ema=ema,
        clip=1.0, steps=int(result.step), planned_steps=int(steps),
        stop_reason=result.stop_reason,
        valid_loss=float(h["valid_loss"][-1]) if len(h["valid_loss"]) else None,
        train_loss=float(h["train_loss"][-1]) if len(h["train_loss"]) else None,
        valid_windows=1024,
        train_seconds_this_run=round(result.elapsed, 1),
        wall_seconds_this_run=round(time.perf_counter() - t_start, 1),
        data=(f"KuramotoSivashinsky(): {args.trajectories} x {args.length} states after "
              f"{BURN_IN} burn-in, normalised (std 1.19), 90/10 split, seed {args.seed}"),
        seed=args.seed,
        command="python examples/train_kuramoto_sivashinsky.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in (("budget", args.budget), ("hidden", args.hidden), ("ema", args.ema),
                         ("blocks", args.blocks), ("trajectories", args.trajectories),
                         ("length", args.length), ("seed", args.seed))),
    )
    # the header records stop_reason and planned_steps: a run cut by the time limit (learning
    # rate not yet decayed to zero) is saved and says so; --resume finishes it
    save_score(args.output, result.score, config=info, normalization=(system.mean, system.std))
    print(f"saved {args.output} ({result.stop_reason} at step {result.step} of {steps})")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()

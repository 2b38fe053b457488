"""Train a 2-D UNet local score for Kolmogorov flow (vorticity 64², forcing as context).

Three configurations (window 5, the forcing field :math:`-\\cos 4 x_1` as a context channel,
AdamW with weight decay 1e-3, linear decay to 0, gradient clipping 1, EMA of the weights):

* ``--config paper``: the paper's network (Rozet & Louppe, 2023, Section 5.2), channels
  (96, 192, 384), blocks (3, 3, 3), 22.9 M parameters, batch 32, lr 2e-4. Meant for a GPU, with
  ``--precision bf16`` (bfloat16 convolutions and matmuls, float32 parameters and accumulation).
  Its weights (92 MB in float32) are too large to ship (limit 50 MB).
* ``--config medium``: channels (32, 64, 128), blocks (2, 2, 2), 1.8 M parameters (7 MB), batch
  32, lr 5e-4: the shipped ``pretrained.load("kolmogorov")``, trained on a GPU; it also samples
  at usable speed on a CPU.
* ``--config cpu``: channels (16, 32, 64), blocks (1, 1, 1), 281,269 parameters (1.2 MB),
  batch 8, lr 1e-3: the reduced network these 2-core CPUs train in at most 2 hours. Measured
  (2026-12-06, alone, load ~2; ``benchmarks/results/kolmogorov_cpu_training_2026-12-06.log``):
  ``--budget 5400 --trajectories 48 --length 32`` simulated the data in 953 s (256², one core),
  then trained 9750 steps in 3826 s (2.5 steps/s); 4837 s in all. Validation DSM loss 0.351 /
  0.194 / 0.156 / 0.131 / 0.123 at steps 1k / 2k / 4k / 6k / 9.75k (the shipped GPU network
  reached 0.133 on its own validation split).

Data: ``KolmogorovFlow()`` trajectories (``--trajectories`` x ``--length`` states after 64
burn-in states), written once to ``--data`` (HDF5, split 90/10 by trajectory) and reused.

Steps: with ``--budget`` (seconds, for the whole script) the number of optimiser steps is fitted
to the time left after the data: a 40-step probe measures the throughput (``--rate`` gives it
instead and skips the probe), then ``steps = 0.9 * rate * remaining`` (less a compile time) so that the learning rate
decays to zero within the budget. ``--steps`` fixes the number instead. Checkpoints every
``--checkpoint-every`` steps (weights, optimiser, EMA, step; atomic); ``--resume`` continues a run
bit-identically with its planned steps. The output file holds the EMA weights, the training
settings, the validation loss and the training time in its header.

    # GPU (one script does data, the shipped network and the paper network):
    bash examples/train_kolmogorov_gpu.sh OUTDIR
    # the paper network alone, resumable:
    python examples/train_kolmogorov.py --config paper --precision bf16 --steps 100000 \\
        --trajectories 256 --data kolmo.h5 --checkpoint paper.ckpt.npz --output paper.npz
    # the reduced network on a CPU, at most 2 hours (81 minutes with this budget):
    python examples/train_kolmogorov.py --config cpu --budget 5400 --trajectories 48 --length 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from numpyro_sda import data, systems
from numpyro_sda.checkpoint import load_checkpoint, save_score
from numpyro_sda.scenarios import kolmogorov_forcing
from numpyro_sda.score import LocalScore
from numpyro_sda.train import train_score

CONFIGS = {
    "paper": dict(hidden_channels=(96, 192, 384), blocks=(3, 3, 3), batch_size=32, lr=2e-4),
    "medium": dict(hidden_channels=(32, 64, 128), blocks=(2, 2, 2), batch_size=32, lr=5e-4),
    "cpu": dict(hidden_channels=(16, 32, 64), blocks=(1, 1, 1), batch_size=8, lr=1e-3),
}
BURN_IN = 64


def build(cfg: dict, resolution: int, precision: str, seed: int) -> LocalScore:
    """The Kolmogorov local score: a 2-D UNet on windows of 5 vorticity states ``(1, n, n)``."""
    return LocalScore.unet(1, window=5, spatial=2, hidden_channels=cfg["hidden_channels"],
                           blocks=cfg["blocks"], context=kolmogorov_forcing(resolution),
                           precision=precision, rngs=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="network size")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: bfloat16 convolutions and matmuls (float32 parameters)")
    parser.add_argument("--steps", type=int, default=None, help="fixed number of steps")
    parser.add_argument("--budget", type=float, default=None,
                        help="wall-time budget of the whole script (s): fits the steps to it")
    parser.add_argument("--rate", type=float, default=None,
                        help="known steps/s for --budget (skips the throughput probe)")
    parser.add_argument("--trajectories", type=int, default=64, help="simulated trajectories")
    parser.add_argument("--length", type=int, default=64, help="states per trajectory")
    parser.add_argument("--sim-chunk", type=int, default=None,
                        help="trajectories simulated together (GPU: all of them)")
    parser.add_argument("--data", default="kolmogorov.h5", help="HDF5 dataset (made if missing)")
    parser.add_argument("--checkpoint", default="kolmogorov.ckpt.npz", help="checkpoint file")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="steps between saves")
    parser.add_argument("--output", default="kolmogorov.npz", help="final weights file")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay (0: none)")
    parser.add_argument("--valid-size", type=int, default=512, help="validation windows")
    parser.add_argument("--seed", type=int, default=0, help="data, init and training seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--data-only", action="store_true", help="make --data, then stop")
    args = parser.parse_args()
    if (args.steps is None) == (args.budget is None) and not (args.resume or args.data_only):
        raise SystemExit("give exactly one of --steps and --budget (or --resume)")

    t_start = time.perf_counter()
    cfg = CONFIGS[args.config]
    ckpt_path = Path(args.checkpoint)
    if ckpt_path.exists() and not args.resume:
        raise SystemExit(f"{ckpt_path} exists: pass --resume to continue it, or remove it")
    chunk = {} if args.sim_chunk is None else dict(chunk_size=args.sim_chunk)
    system = systems.KolmogorovFlow(**chunk)
    if not Path(args.data).exists():
        data.generate(system, args.data, num_trajectories=args.trajectories, length=args.length,
                      burn_in=BURN_IN, seed=args.seed, splits=(0.9, 0.1), progress=False,
                      chunk_trajectories=args.sim_chunk)
        print(f"simulated {args.data} ({time.perf_counter() - t_start:.1f} s)", flush=True)
    if args.data_only:
        return
    with data.TrajectoryDataset(args.data, "train") as tr, \
            data.TrajectoryDataset(args.data, "valid") as va:
        train, valid = tr.to_array(), va.to_array()
    print(f"data: train {train.shape}, valid {valid.shape} "
          f"({time.perf_counter() - t_start:.1f} s)", flush=True)

    steps = args.steps
    ema = args.ema or None
    common = dict(batch_size=cfg["batch_size"], lr=cfg["lr"], weight_decay=1e-3,
                  schedule="linear", ema=ema, clip=1.0, normalization=(system.mean, system.std))
    if args.resume and ckpt_path.exists():
        steps = int(load_checkpoint(ckpt_path).training["steps"])
        print(f"resuming {ckpt_path} (planned {steps} steps)", flush=True)
    elif steps is None:
        rate, compile_s = args.rate, 30.0  # compile time guess when --rate is given
        if rate is None:
            probe = build(cfg, system.resolution, args.precision, args.seed + 1)
            h = train_score(probe, train, valid, steps=60, chunk=20, progress=False,
                            valid_size=16, **common).history
            rate = 40 / (h["elapsed"][-1] - h["elapsed"][0])
            compile_s = max(0.0, h["elapsed"][0] - 20 / rate)  # the run compiles once more
        remaining = args.budget - (time.perf_counter() - t_start) - compile_s - 15.0
        steps = max(100, int(0.9 * rate * remaining) // 50 * 50)
        print(f"throughput {rate:.1f} steps/s, compile ~{compile_s:.0f} s -> {steps} steps in "
              f"{remaining:.0f} s", flush=True)

    score = build(cfg, system.resolution, args.precision, args.seed)
    print(f"UNet {cfg['hidden_channels']} x {cfg['blocks']}, {args.precision}: "
          f"{score.num_params()} parameters", flush=True)
    limit = None if args.budget is None else max(30.0, args.budget - (time.perf_counter()
                                                                      - t_start) - 5.0)
    result = train_score(score, train, valid, steps=steps, chunk=50, seed=args.seed,
                         checkpoint=ckpt_path, checkpoint_every=args.checkpoint_every,
                         resume=args.resume, time_limit=limit, valid_size=args.valid_size,
                         progress=not args.no_progress, precision=args.precision, **common)
    h = result.history
    for s, tl, vl, el in zip(h["step"], h["train_loss"], h["valid_loss"], h["elapsed"],
                             strict=True):
        if s % 1000 == 0 or s == h["step"][-1]:
                print(f"step {s}: train {tl:.4f} valid {vl:.4f} ({el:.0f} s)", flush=True)
    info = dict(
        arch="unet", config=args.config, window=5, spatial=2,
        hidden_channels=list(cfg["hidden_channels"]), blocks=list(cfg["blocks"]),
        context="forcing -cos(4 x1)", precision=args.precision, batch_size=cfg["batch_size"],
        lr=cfg["lr"], weight_decay=1e-3, schedule="linear", ema=ema, clip=1.0,
        steps=int(result.step), planned_steps=int(steps), stop_reason=result.stop_reason,
        valid_loss=float(h["valid_loss"][-1]) if len(h["valid_loss"]) else None,
        train_loss=float(h["train_loss"][-1]) if len(h["train_loss"]) else None,
        valid_windows=args.valid_size, parameters=score.num_params(),
        train_seconds_this_run=round(result.elapsed, 1),
        wall_seconds_this_run=round(time.perf_counter() - t_start, 1),
        data=(f"KolmogorovFlow(): {args.trajectories} x {args.length} states after {BURN_IN} "
              f"burn-in, normalised, 90/10 split, seed {args.seed}"),
        seed=args.seed,
    )
    save_score(args.output, result.score, config=info, normalization=(system.mean, system.std))
    print(f"saved {args.output} ({result.stop_reason} at step {result.step} of {steps})")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()

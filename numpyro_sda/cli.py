"""The ``numpyro-sda`` command.

``numpyro-sda demo`` runs the main job on a built-in default: the Lorenz-63 "lo" (or "hi")
scenario of Rozet & Louppe (2023) with the shipped pretrained window-5 prior, assimilated by SDA
and by the classical baselines on the same NumPyro model, compared against a 16384-particle
ground truth; it prints the comparison table and writes plots, the table and ArviZ InferenceData
to ``--out``. ``numpyro-sda generate`` writes a trajectory dataset; ``numpyro-sda train`` trains a
local score on one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from numpyro_sda._version import __version__

__all__ = ["main", "build_parser"]

SYSTEMS = ("lorenz63", "lorenz96", "kuramoto_sivashinsky", "kolmogorov")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numpyro-sda",
        description="Score-based data assimilation for NumPyro (Rozet & Louppe, 2023).",
    )
    parser.add_argument("--version", action="version", version=f"numpyro-sda {__version__}")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="Lorenz-63 assimilation: SDA vs baselines (main job)")
    demo.add_argument("--scenario", choices=("lo", "hi"), default="lo")
    demo.add_argument("--out", default="out/demo", help="output folder (plots, tables, netCDF)")
    demo.add_argument("--samples", type=int, default=256, help="posterior draws per method")
    demo.add_argument("--steps", type=int, default=256, help="SDA reverse-diffusion steps")
    demo.add_argument("--corrections", type=int, default=1, help="SDA Langevin corrections")
    demo.add_argument("--guidance", choices=("sda", "dps", "mmps"), default="sda")
    demo.add_argument("--particles", type=int, default=16384, help="ground-truth particles")
    demo.add_argument("--seed", type=int, default=0)

    gen = sub.add_parser("generate", help="simulate a trajectory dataset to HDF5")
    gen.add_argument("system", choices=SYSTEMS)
    gen.add_argument("path")
    gen.add_argument("--trajectories", type=int, default=1024)
    gen.add_argument("--length", type=int, default=1024)
    gen.add_argument("--burn-in", type=int, default=1024)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--overwrite", action="store_true")

    train = sub.add_parser("train", help="train a local score on an HDF5 dataset")
    train.add_argument("dataset")
    train.add_argument("checkpoint")
    train.add_argument("--window", type=int, default=5)
    train.add_argument("--width", type=int, default=256)
    train.add_argument("--depth", type=int, default=5)
    train.add_argument("--steps", type=int, default=100_000)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true")
    return parser


def _system(name: str):
    from numpyro_sda import systems

    return {
        "lorenz63": systems.Lorenz63,
        "lorenz96": systems.Lorenz96,
        "kuramoto_sivashinsky": lambda: systems.KuramotoSivashinsky(),
        "kolmogorov": lambda: systems.KolmogorovFlow(),
    }[name]()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        from numpyro_sda.demo import run_demo

        run_demo(
            scenario=args.scenario, out=args.out, num_samples=args.samples, steps=args.steps,
            corrections=args.corrections, guidance=args.guidance,
            num_particles=args.particles, seed=args.seed,
        )
        return 0
    if args.command == "generate":
        from numpyro_sda import data

        path = data.generate(
            _system(args.system), args.path, num_trajectories=args.trajectories,
            length=args.length, burn_in=args.burn_in, seed=args.seed, overwrite=args.overwrite,
        )
        print(f"wrote {path}")
        return 0
    if args.command == "train":
        from numpyro_sda import data
        from numpyro_sda.score import LocalScore
        from numpyro_sda.train import train_score

        train_set = data.TrajectoryDataset(args.dataset, "train")
        valid_set = data.TrajectoryDataset(args.dataset, "valid")
        features = int(train_set.shape[-1])
        score = LocalScore.mlp(features, window=args.window, hidden=args.width, depth=args.depth,
                               rngs=args.seed)
        train_score(score, train_set, valid_set, steps=args.steps, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, checkpoint=args.checkpoint, resume=args.resume)
        print(f"wrote {args.checkpoint}")
        return 0
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

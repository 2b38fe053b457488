"""The ``numpyro-sda`` command.

* ``numpyro-sda demo --system lorenz63|ks|kolmogorov`` runs a built-in assimilation scenario
  with a shipped (or given) prior, SDA against the classical baselines on the same NumPyro
  model, and writes plots, the comparison table and ArviZ InferenceData to ``--out``
  (:mod:`numpyro_sda.demo`); ``--quick`` runs a reduced size in about a minute.
* ``numpyro-sda generate`` writes a trajectory dataset (HDF5).
* ``numpyro-sda train`` trains a local score (MLP on vector states, UNet on 1-D/2-D fields) on
  one, with atomic checkpoints and ``--resume``; it refuses to overwrite an existing checkpoint.
* ``numpyro-sda assimilate`` runs a saved prior on a user's observations (an HDF5 or netCDF file
  and a small JSON/TOML configuration naming the observation operator) and writes InferenceData
  and figures (:mod:`numpyro_sda.assimilate`).

Errors print one line (``numpyro-sda: error: ...``) and exit with status 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from numpyro_sda._version import __version__

__all__ = ["main", "build_parser", "CLIError"]

SYSTEMS = ("lorenz63", "lorenz96", "kuramoto_sivashinsky", "kolmogorov")
DEMO_SYSTEMS = ("lorenz63", "ks", "kolmogorov")


class CLIError(Exception):
    """An error of the command line's inputs (printed as one line)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``numpyro-sda`` (every option documented)."""
    parser = argparse.ArgumentParser(
        prog="numpyro-sda",
        description="Score-based data assimilation for NumPyro (Rozet & Louppe, 2023).",
    )
    parser.add_argument("--version", action="version", version=f"numpyro-sda {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a built-in scenario: SDA vs the classical baselines")
    demo.add_argument("--system", choices=DEMO_SYSTEMS, default="lorenz63",
                      help="which system's scenario to run (default lorenz63)")
    demo.add_argument("--scenario", default=None,
                      help="scenario name: lorenz63 lo|hi, ks sparse|saturating, kolmogorov "
                           "coarse|sparse|saturating (default: the first)")
    demo.add_argument("--out", default="out/demo", help="output folder (plots, tables, netCDF)")
    demo.add_argument("--samples", type=int, default=None,
                      help="posterior draws per method (default 256; 16 with --quick)")
    demo.add_argument("--steps", type=int, default=None,
                      help="SDA reverse-diffusion steps (default: SDA's default; 32 with --quick)")
    demo.add_argument("--corrections", type=int, default=None,
                      help="SDA Langevin corrections per step (default: SDA's default)")
    demo.add_argument("--guidance", choices=("sda", "dps", "mmps"), default=None,
                      help="SDA likelihood guidance (default: SDA's default)")
    demo.add_argument("--particles", type=int, default=None,
                      help="particle-smoother particles (default 16384 for lorenz63, 4096 for ks;"
                           " 1024 with --quick)")
    demo.add_argument("--prior", default=None,
                      help="a saved prior (.npz) instead of the shipped one (ks, kolmogorov)")
    demo.add_argument("--quick", action="store_true",
                      help="a reduced run (few draws, steps and particles) for smoke tests")
    demo.add_argument("--seed", type=int, default=0, help="random seed of truth, data and draws")

    gen = sub.add_parser("generate", help="simulate a trajectory dataset to HDF5")
    gen.add_argument("system", choices=SYSTEMS, help="dynamical system to simulate")
    gen.add_argument("path", help="output HDF5 file (written atomically)")
    gen.add_argument("--trajectories", type=int, default=1024,
                     help="number of trajectories (split 80/10/10 train/valid/test)")
    gen.add_argument("--length", type=int, default=1024, help="states per trajectory")
    gen.add_argument("--burn-in", type=int, default=1024,
                     help="transitions discarded before the first stored state")
    gen.add_argument("--seed", type=int, default=0, help="random seed")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing file")

    train = sub.add_parser("train", help="train a local score on an HDF5 dataset")
    train.add_argument("dataset", help="HDF5 dataset written by 'numpyro-sda generate'")
    train.add_argument("checkpoint", help="checkpoint file to write (weights, optimiser, step)")
    train.add_argument("--arch", choices=("auto", "mlp", "unet"), default="auto",
                       help="network: 'mlp' (vector states), 'unet' (fields (C, N) or (C, H, W));"
                            " 'auto' picks from the dataset's state shape (default)")
    train.add_argument("--window", type=int, default=5, help="states per window (2k+1)")
    train.add_argument("--width", type=int, default=256, help="MLP hidden width")
    train.add_argument("--depth", type=int, default=5, help="MLP hidden layers")
    train.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128],
                       help="UNet channels per level (paper's Kolmogorov: 96 192 384)")
    train.add_argument("--blocks", type=int, nargs="+", default=None,
                       help="UNet residual blocks per level (default 2 per level; paper: 3 3 3)")
    train.add_argument("--kernel-size", type=int, default=3, help="UNet convolution kernel size")
    train.add_argument("--context", choices=("none", "forcing"), default="none",
                       help="UNet context channels: 'forcing' adds the Kolmogorov forcing field")
    train.add_argument("--bf16", action="store_true",
                       help="bfloat16 matmuls and convolutions (float32 parameters, accumulation "
                            "and diffusion state); meant for GPUs")
    train.add_argument("--steps", type=int, default=100_000, help="optimiser steps")
    train.add_argument("--batch-size", type=int, default=64, help="windows per step")
    train.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    train.add_argument("--ema", type=float, default=None,
                       help="EMA decay of the weights (e.g. 0.999; default none)")
    train.add_argument("--time-sampling", choices=("uniform", "mixed"), default="uniform",
                       help="diffusion times of a batch: uniform (paper) or half log-uniform "
                            "in the noise-to-signal ratio (numpyro_sda.train.sample_times)")
    train.add_argument("--prediction", choices=("eps", "v"), default="eps",
                       help="what the network predicts: the noise (paper) or the velocity "
                            "mu eps - sigma x, which keeps Tweedie's denoiser accurate at high "
                            "noise (LocalScore.local)")
    train.add_argument("--time-limit", type=float, default=None,
                       help="stop after this many seconds (resume later with --resume)")
    train.add_argument("--seed", type=int, default=0, help="initialisation and training seed")
    train.add_argument("--resume", action="store_true",
                       help="continue training from an existing checkpoint")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    assim = sub.add_parser(
        "assimilate", help="run a saved prior on observations from an HDF5/netCDF file",
        description="Assimilate observations with a saved prior. The configuration (JSON or "
                    "TOML) names the observed variable, the observation operator and the noise; "
                    "see numpyro_sda.assimilate for its keys.",
    )
    assim.add_argument("prior", help="saved prior (.npz), or 'pretrained:NAME' (e.g. "
                                     "pretrained:lorenz63)")
    assim.add_argument("observations", help="HDF5 (.h5/.hdf5) or netCDF (.nc) file")
    assim.add_argument("config", help="JSON or TOML file describing the observation model")
    assim.add_argument("--out", default="out/assimilate",
                       help="output folder (InferenceData, posterior summary, figures)")
    assim.add_argument("--samples", type=int, default=None,
                       help="posterior draws (overrides the configuration; default 64)")
    assim.add_argument("--steps", type=int, default=None,
                       help="SDA reverse-diffusion steps (default: SDA's default)")
    assim.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def _system(name: str):
    from numpyro_sda import systems

    return {
        "lorenz63": systems.Lorenz63,
        "lorenz96": systems.Lorenz96,
        "kuramoto_sivashinsky": lambda: systems.KuramotoSivashinsky(),
        "kolmogorov": lambda: systems.KolmogorovFlow(),
    }[name]()


def build_score(arch: str, state_shape: Sequence[int], *, window: int = 5, width: int = 256,
                depth: int = 5, channels: Sequence[int] = (32, 64, 128),
                blocks: Sequence[int] | None = None, kernel_size: int = 3, context=None,
                seed: int = 0, precision: str = "fp32", prediction: str = "eps"):
    """The local score ``numpyro-sda train`` builds for states of ``state_shape``.

    ``arch="auto"`` is ``"mlp"`` for vector states ``(D,)`` and ``"unet"`` for fields
    ``(C, N)`` or ``(C, H, W)``. ``precision="bf16"`` gives bfloat16 matmuls and convolutions
    (float32 parameters and accumulation); ``prediction`` is :class:`LocalScore`'s.
    """
    from numpyro_sda.score import LocalScore

    shape = tuple(int(s) for s in state_shape)
    if arch == "auto":
        arch = "mlp" if len(shape) == 1 else "unet"
    if arch == "mlp":
        if len(shape) != 1:
            raise CLIError(f"--arch mlp needs vector states (D,), the dataset's states are {shape};"
                           " use --arch unet")
        if context is not None:
            raise CLIError("--context is for UNet priors")
        return LocalScore.mlp(shape[0], window=window, hidden=width, depth=depth,
                              precision=precision, prediction=prediction, rngs=seed)
    if len(shape) not in (2, 3):
        raise CLIError(f"--arch unet needs field states (C, N) or (C, H, W), the dataset's states "
                       f"are {shape}; use --arch mlp")
    blocks = [2] * len(channels) if blocks is None else list(blocks)
    if len(blocks) != len(channels):
        raise CLIError(f"--blocks {blocks} must have one entry per --channels level {channels}")
    factor = 2 ** (len(channels) - 1)
    if any(n % factor for n in shape[1:]):
        raise CLIError(f"a {len(channels)}-level UNet needs spatial sizes divisible by {factor}, "
                       f"the states are {shape}")
    return LocalScore.unet(shape[0], window=window, spatial=len(shape) - 1,
                           hidden_channels=channels, blocks=blocks, context=context,
                           size=None if context is not None else shape[1:],
                           kernel_size=kernel_size, precision=precision,
                           prediction=prediction, rngs=seed)


def _train(args: argparse.Namespace) -> int:
    from numpyro_sda import data
    from numpyro_sda.train import train_score

    ckpt = Path(args.checkpoint)
    if ckpt.exists() and not args.resume:
        raise CLIError(f"{ckpt} exists: pass --resume to continue training it, or choose another "
                       "file (refusing to overwrite a trained model)")
    if args.resume and not ckpt.exists():
        raise CLIError(f"--resume given but {ckpt} does not exist")
    if not ckpt.parent.is_dir():
        raise CLIError(f"the checkpoint's folder {ckpt.parent} does not exist")
    if not Path(args.dataset).is_file():
        raise CLIError(f"dataset {args.dataset} not found")
    with data.TrajectoryDataset(args.dataset, "train") as train_set, \
            data.TrajectoryDataset(args.dataset, "valid") as valid_set:
        shape = tuple(int(s) for s in train_set.shape[2:])
        context = None
        if args.context == "forcing":
            if train_set.attrs.get("system") != "KolmogorovFlow":
                raise CLIError("--context forcing is for KolmogorovFlow datasets, this one holds "
                               f"{train_set.attrs.get('system')}")
            from numpyro_sda.scenarios import kolmogorov_forcing

            context = kolmogorov_forcing(shape[-1])
        score = build_score(args.arch, shape, window=args.window, width=args.width,
                            depth=args.depth, channels=args.channels, blocks=args.blocks,
                            kernel_size=args.kernel_size, context=context, seed=args.seed,
                            precision="bf16" if args.bf16 else "fp32",
                            prediction=args.prediction)
        print(f"{score.kind} local score on states {shape}: {score.num_params()} parameters",
              flush=True)
        result = train_score(score, train_set, valid_set, steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr, ema=args.ema,
                             seed=args.seed, checkpoint=ckpt, resume=args.resume,
                             time_limit=args.time_limit, progress=not args.no_progress,
                             precision="bf16" if args.bf16 else "fp32",
                             time_sampling=args.time_sampling)
    h = result.history
    loss = f", validation loss {h['valid_loss'][-1]:.4f}" if len(h["valid_loss"]) else ""
    print(f"wrote {ckpt} (step {result.step}, {result.stop_reason}{loss})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from numpyro_sda import demo

    kwargs = dict(out=args.out, num_samples=args.samples, steps=args.steps,
                  corrections=args.corrections, guidance=args.guidance,
                  num_particles=args.particles, seed=args.seed, quick=args.quick,
                  prior_path=args.prior)
    if args.scenario is not None:
        kwargs["scenario"] = args.scenario
    demo.run_system_demo(args.system, **kwargs)
    return 0


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        return _demo(args)
    if args.command == "generate":
        from numpyro_sda import data

        path = data.generate(
            _system(args.system), args.path, num_trajectories=args.trajectories,
            length=args.length, burn_in=args.burn_in, seed=args.seed, overwrite=args.overwrite,
        )
        print(f"wrote {path}")
        return 0
    if args.command == "train":
        return _train(args)
    if args.command == "assimilate":
        from numpyro_sda.assimilate import assimilate

        out = assimilate(args.prior, args.observations, args.config, out=args.out,
                         num_samples=args.samples, steps=args.steps, seed=args.seed)
        print(f"wrote {', '.join(str(p) for p in out['files'])}")
        return 0
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args, parser)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("numpyro-sda: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line unless --debug
        if args.debug:
            raise
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"numpyro-sda: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

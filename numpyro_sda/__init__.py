"""numpyro-sda: score-based data assimilation for NumPyro.

Score-based data assimilation (SDA; Rozet & Louppe, NeurIPS 2023, arXiv:2306.10574) learns a
diffusion prior over short windows of a dynamical system's states, composes the window scores
into the score of a whole trajectory, and samples posterior trajectories by guided reverse
diffusion. In this library the learned prior is a NumPyro distribution
(:class:`TrajectoryPrior`), the observation model is the user's own NumPyro code, and the same
model runs through SDA (:class:`SDA`) and through classical baselines
(:mod:`numpyro_sda.baselines`).

Public names are imported lazily so that ``import numpyro_sda`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from numpyro_sda._version import __version__ as __version__

_LAZY = {
    # noise schedule and samplers
    "VPSDE": "numpyro_sda.sde",
    "predictor_corrector": "numpyro_sda.sampling",
    # distributions
    "MarkovPrior": "numpyro_sda.markov",
    "TrajectoryPrior": "numpyro_sda.prior",
    # learned prior
    "LocalScore": "numpyro_sda.score",
    "ScoreEnsemble": "numpyro_sda.ensemble",
    "MultiResolutionScore": "numpyro_sda.multiresolution",
    "train_score": "numpyro_sda.train",
    "load_score": "numpyro_sda.checkpoint",
    "save_score": "numpyro_sda.checkpoint",
    # inference
    "SDA": "numpyro_sda.infer",
    # diagnostics
    "to_inference_data": "numpyro_sda.arviz_export",
    "compare": "numpyro_sda.comparison",
    "to_markdown": "numpyro_sda.comparison",
}

_SUBMODULES = {
    "systems",
    "data",
    "baselines",
    "metrics",
    "plots",
    "guidance",
    "nets",
    "tracing",
    "results",
    "pretrained",
    "demo",
}

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"numpyro_sda.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'numpyro_sda' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for static analysers only
    from numpyro_sda import baselines, data, metrics, plots, systems  # noqa: F401
    from numpyro_sda.arviz_export import to_inference_data  # noqa: F401
    from numpyro_sda.checkpoint import load_score, save_score  # noqa: F401
    from numpyro_sda.comparison import compare, to_markdown  # noqa: F401
    from numpyro_sda.infer import SDA  # noqa: F401
    from numpyro_sda.markov import MarkovPrior  # noqa: F401
    from numpyro_sda.prior import TrajectoryPrior  # noqa: F401
    from numpyro_sda.sampling import predictor_corrector  # noqa: F401
    from numpyro_sda.score import LocalScore  # noqa: F401
    from numpyro_sda.sde import VPSDE  # noqa: F401
    from numpyro_sda.train import train_score  # noqa: F401

r"""Pretrained local score priors shipped with numpyro-sda.

* ``"lorenz63"``: the paper's Lorenz-63 local score (Rozet & Louppe, 2023, Section 5.1): MLP on
  windows of 5 states, width 256, depth 5, SiLU, trained by denoising score matching (AdamW,
  lr 1e-3, weight decay 1e-3, batch 64, linear decay) on 819 normalised trajectories of
  ``Lorenz63()`` (1024 states after 1024 burn-in transitions) with
  ``examples/train_lorenz63.py --budget 660`` (82,000 steps in 709 s on a shared 2-core CPU;
  final validation DSM loss 0.097 on 1024 fixed validation windows, train loss 0.090; the
  reference PyTorch run reached ~0.09 in 12 minutes). It works in normalised coordinates
  (``system.normalize``); ``load("lorenz63").normalization`` holds the ``(mean, std)`` used.

* ``"lorenz63_window9"``: the same network and data on windows of 9 states (the default prior of
  the Lorenz-63 demo and benchmark): ``examples/train_lorenz63.py --budget 900 --window 9``
  (75,000 steps in 1081 s on the shared 2-core CPU at load average 8-14; validation DSM loss
  0.065, train loss 0.062). Both Lorenz-63 files record the per-channel range of their training
  data (``score.data_range``), which :class:`numpyro_sda.SDA` keeps its guided denoiser in.

* ``"lorenz63_window9_stride2"``: the same network on windows of 9 states taken every second
  state (a coarse time step of two transitions; each trajectory split into its two interleaved
  subsequences, the split into train/validation made by trajectory first), the coarse half of
  :class:`numpyro_sda.multiresolution.MultiResolutionScore` with ``"lorenz63_window9"``:
  ``examples/train_lorenz63.py --window 9 --stride 2 --steps 60000`` (60,000 steps in 341 s on
  the shared 2-core CPU; validation DSM loss 0.072, train loss 0.069).

* ``"lorenz96"``: a Lorenz-96 local score (``Lorenz96()``: 32 variables, F = 16, dt = 0.05,
  transition noise :math:`\sqrt{dt}/2`): a 1-D UNet on windows of 9 states seen as periodic
  one-channel fields ``(1, 32)``, channels (32, 64, 128), two residual blocks per level, circular
  convolutions (the translation symmetry and locality of the equations), trained by denoising
  score matching (AdamW, lr 1e-3, weight decay 1e-3, batch 64, linear decay, clipping 1, EMA
  0.999) on 820 normalised trajectories of 256 states after 1024 burn-in transitions with
  ``examples/train_lorenz96.py --budget 1800`` (54,000 steps in about 1440 s on the shared 2-core
  CPU, interrupted once and resumed; validation DSM loss 0.090 on 1024 fixed windows, train loss
  0.087; the first shipped prior, 14,000 steps, had 0.103). Models
  observe ``x.reshape(len(x), -1)`` so that the same model serves the baselines' flat states
  (``examples/lorenz96.py``). An MLP on the flattened windows (width 512, 4 blocks, 64,000 steps
  in 760 s) reached only 0.158 and its unconditional draws broke the dynamics (one-step residual
  1.73 against the true 0.11 in normalised units; the UNet's 0.39).

* ``"ks"``: a Kuramoto–Sivashinsky local score (``KuramotoSivashinsky()``: L = 22, 64 points,
  dt = 0.25): a 1-D UNet on windows of 5 states ``(1, 64)``, channels (32, 64, 128), two residual
  blocks per level (663,749 parameters, 2.7 MB), circular convolutions, trained by denoising score
  matching (AdamW, lr 2e-3, weight decay 1e-3, batch 64, linear decay, clipping 1, EMA 0.999) on
  230 normalised trajectories of 256 states after 400 burn-in states (26 for validation) with
  ``examples/train_kuramoto_sivashinsky.py --budget 1800 --hidden 32 64 128 --blocks 2 2 2``:
  27,600 steps in 1588 s on the shared 2-core CPU (the 30-minute budget; the UNet's convolutions
  run as patch matrix products on CPU, :func:`numpyro_sda.nets.patch_conv`); validation DSM loss
  0.0124 on 1024 fixed windows (EMA weights; train loss 0.0123), still falling slowly. It replaces
  the first KS prior (channels (16, 32, 64), one block per level, 1500 steps before the CPU
  convolution fix; validation loss 0.0288), whose posteriors were under-dispersed (see the KS
  tables in ``examples/kuramoto_sivashinsky.py``). Its training range (``score.data_range``,
  normalised) keeps SDA's guided denoiser inside the data (``SDA(bounds="auto")``).

* ``"kolmogorov"``: a Kolmogorov-flow local score (``KolmogorovFlow()``: Re 1000, vorticity
  saved at 64² every 0.2 time units, simulated at 256²): a 2-D UNet on windows of 5 states
  ``(1, 64, 64)`` with the forcing :math:`-\cos 4 x_1` as a context channel, channels
  (16, 32, 64), one residual block per level (281,269 parameters, 1.2 MB), trained by denoising
  score matching (AdamW, lr 1e-3, weight decay 1e-3, batch 8, linear decay, clipping 1, EMA
  0.999, float32) on 43 normalised trajectories of 32 states after 64 burn-in states (5 for
  validation) with ``examples/train_kolmogorov.py --config cpu --budget 5400 --trajectories 48
  --length 32`` on the shared 2-core CPU (2026-12-06): data 953 s, then 9750 steps in 3826 s;
  validation DSM loss 0.123 on 512 fixed windows (train loss 0.117). It is the reduced ``cpu``
  configuration, and it replaces the GPU-trained ``medium`` network (channels (32, 64, 128), two
  blocks per level, 1.8 M parameters, 4750 steps on an H200 in 44 s, validation loss 0.133 on
  its own split; in git history before 2026-12-06) because its posteriors are better on every
  measured set of the 'sparse' scenario (``examples/kolmogorov.py``: median CRPS 1.099
  against 1.281 over the same 8 sets, at a third of the sampling cost). Neither is the paper's
  22.9 M-parameter network, whose float32 weights (92 MB) exceed the 50 MB limit for a shipped
  file and which no session has trained beyond a 250-step benchmark (GPU time).

* ``"lorenz63_multiresolution"``: not a file but the combination of the two window-9 files above,
  ``MultiResolutionScore(load("lorenz63_window9"), load("lorenz63_window9_stride2"), stride=2,
  coarse_above=0)`` (:class:`numpyro_sda.multiresolution.MultiResolutionScore`): the
  best measured Lorenz-63 prior (``benchmarks/sampling.py``), the prior of the Lorenz-63 demo.

The training settings, the final validation loss and the training time are in the file's header
(:func:`info`; for a combination, the headers of its parts).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from numpyro_sda.checkpoint import load_checkpoint
from numpyro_sda.multiresolution import MultiResolutionScore
from numpyro_sda.score import LocalScore

__all__ = ["available", "path", "load", "info", "parts"]

_FILES = {
    "lorenz63": "lorenz63_window5.npz",
    "lorenz63_window9": "lorenz63_window9.npz",
    "lorenz63_window9_stride2": "lorenz63_window9_stride2.npz",
    "lorenz96": "lorenz96_window9.npz",
    "ks": "ks_unet_window5.npz",
    "kolmogorov": "kolmogorov_unet_window5.npz",
}

#: Priors combined from shipped files: name -> MultiResolutionScore arguments.
_COMBINED: dict[str, dict[str, Any]] = {
    "lorenz63_multiresolution": dict(fine="lorenz63_window9", coarse="lorenz63_window9_stride2",
                                     stride=2, coarse_above=0.0),
}


def available() -> list[str]:
    """Names of the shipped pretrained priors (files and combinations of them)."""
    return sorted([*_FILES, *_COMBINED])


def parts(name: str) -> dict[str, Any]:
    """The files a combined prior is made of and its settings (``{}`` for a single file)."""
    _check(name)
    return dict(_COMBINED.get(name, {}))


def _check(name: str) -> None:
    if name not in _FILES and name not in _COMBINED:
        raise ValueError(f"unknown pretrained prior {name!r}; available: {available()}")


def path(name: str) -> Path:
    """Location of the file of the pretrained prior ``name`` (a single file, not a combination)."""
    _check(name)
    if name in _COMBINED:
        raise ValueError(f"the pretrained prior {name!r} combines the files of "
                         f"{_COMBINED[name]['fine']!r} and {_COMBINED[name]['coarse']!r}; "
                         "ask for the path of either")
    p = Path(str(resources.files(__name__).joinpath(_FILES[name])))
    if not p.is_file():
        raise FileNotFoundError(f"the pretrained prior file {p} is missing from the installation")
    return p


def load(name: str = "lorenz63") -> LocalScore | MultiResolutionScore:
    """Load the pretrained prior ``name`` (e.g. ``"lorenz63"``): a
    :class:`~numpyro_sda.score.LocalScore`, or for a combination a
    :class:`~numpyro_sda.multiresolution.MultiResolutionScore` of two of them."""
    _check(name)
    if name in _COMBINED:
        c = _COMBINED[name]
        return MultiResolutionScore(load(c["fine"]), load(c["coarse"]), c["stride"],
                                    c["coarse_above"])
    return load_checkpoint(path(name)).score


def info(name: str = "lorenz63") -> dict[str, Any]:
    """The header of the pretrained file: architecture, training settings and results; for a
    combination, ``{"combination": parts(name), "fine": ..., "coarse": ...}`` (their headers)."""
    _check(name)
    if name in _COMBINED:
        c = _COMBINED[name]
        return {"combination": dict(c), "fine": info(c["fine"]), "coarse": info(c["coarse"])}
    return load_checkpoint(path(name)).header

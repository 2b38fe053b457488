r"""Likelihood-score approximations ("guidances"), one type per method, one file per method.

* :class:`SDAGuidance` (``"sda"``): Tweedie mean with a fixed variance inflation
  (Rozet & Louppe, 2023).
* :class:`DPS` (``"dps"``): normalised misfit gradient (Chung et al., 2023).
* :class:`MMPS` (``"mmps"``): Tweedie mean and covariance, GMRES in observation space
  (Rozet et al., 2024).

Each is a frozen dataclass holding only its own settings; ``SDA(model, guidance=MMPS(...))``
takes one, and a string is a shorthand for the type with its defaults (:func:`resolve`). The
observed sites are read by :class:`numpyro_sda.observation.ObservationModel`, and
:func:`bounded` keeps any guided denoiser inside the range of the training data.
"""

from __future__ import annotations

from typing import Any

from numpyro_sda.guidance.base import EpsFn, Guidance, bounded
from numpyro_sda.guidance.dps import DPS
from numpyro_sda.guidance.mmps import MMPS
from numpyro_sda.guidance.sda import SDAGuidance
from numpyro_sda.observation import ObservationModel, SiteInfo

__all__ = [
    "Guidance",
    "SDAGuidance",
    "DPS",
    "MMPS",
    "GUIDANCES",
    "resolve",
    "bounded",
    "guided_eps",
    "EpsFn",
    "ObservationModel",
    "SiteInfo",
]

GUIDANCES: dict[str, type[Guidance]] = {"sda": SDAGuidance, "dps": DPS, "mmps": MMPS}


def resolve(guidance: Guidance | str) -> Guidance:
    """A :class:`Guidance` from an instance or a name (``"sda"``, ``"dps"``, ``"mmps"``)."""
    if isinstance(guidance, Guidance):
        return guidance
    if isinstance(guidance, str):
        if guidance not in GUIDANCES:
            raise ValueError(
                f"unknown guidance {guidance!r}; expected one of {tuple(GUIDANCES)} or a "
                "Guidance object such as MMPS(iterations=2)")
        return GUIDANCES[guidance]()
    raise TypeError(
        f"guidance must be a Guidance object (SDAGuidance, DPS, MMPS) or one of "
        f"{tuple(GUIDANCES)}, got {type(guidance).__name__}")


def guided_eps(eps: EpsFn, sde: Any, obs: ObservationModel, guidance: Guidance | str = "sda",
               params: dict | None = None) -> EpsFn:
    """``resolve(guidance)(eps, sde, obs, params)``: the guided noise predictor."""
    return resolve(guidance)(eps, sde, obs, params)

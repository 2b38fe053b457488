"""The common shape of every inference method's result (SDA and the classical baselines).

Following NumPyro's MCMC convention, a method is an object configured by its constructor,
``run(rng_key, *model_args, **model_kwargs)`` performs inference (and returns ``self`` so that
calls chain), and ``get_samples()`` returns a dict of arrays with a leading draw axis, keyed by
the model's own site names. :mod:`numpyro_sda.arviz_export`, :mod:`numpyro_sda.metrics` and
:func:`numpyro_sda.compare` read only the fields defined here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from jax import Array

__all__ = ["InferenceMethod"]


class InferenceMethod(ABC):
    """Base class of SDA and of every baseline.

    Attributes set by :meth:`run`:
        prior_site: name of the trajectory site in the user's model.
        observations: observed values by site name.
        posterior_predictive: draws of the observed sites given each returned trajectory.
        sample_stats: per-draw arrays (leading draw axis) or per-method traces.
        wall_time: seconds spent in the last run (excluding compilation where separated).
        compile_time: seconds spent compiling, when the method measures it separately.
        num_model_evals: number of network or transition-function evaluations.
    """

    method: str = "method"

    def __init__(self, model, **settings: Any) -> None:
        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
        self.model = model
        self.settings: dict[str, Any] = dict(settings)
        self._samples: dict[str, Array] | None = None
        self.prior_site: str | None = None
        self.observations: dict[str, Array] = {}
        self.posterior_predictive: dict[str, Array] = {}
        self.sample_stats: dict[str, Array] = {}
        self.wall_time: float = float("nan")
        self.compile_time: float | None = None
        self.num_model_evals: int = 0

    @abstractmethod
    def run(self, rng_key: Array, *model_args: Any, **model_kwargs: Any) -> InferenceMethod:
        """Run inference on ``model(*model_args, **model_kwargs)``; returns ``self``."""

    def get_samples(self) -> dict[str, Array]:
        """Posterior draws by site name, each with a leading draw axis."""
        if self._samples is None:
            raise RuntimeError(f"{type(self).__name__}.run(...) has not been called yet")
        return dict(self._samples)

    @property
    def num_draws(self) -> int:
        samples = self.get_samples()
        return int(samples[self.prior_site].shape[0])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({args})"

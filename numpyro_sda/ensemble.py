r"""Ensembles of independently trained local scores.

A learned noise predictor :math:`\varepsilon_{\phi}` carries an approximation error that depends
on its initialisation and training noise. Averaging the predictions of :math:`M` networks trained
independently on the same data,

.. math:: \bar\varepsilon(x_t, t) = \sum_{m=1}^{M} w_m\, \varepsilon_{\phi_m}(x_t, t), \qquad
          \sum_m w_m = 1,

keeps the exact score a fixed point (each member estimates the same
:math:`-\sigma(t) \nabla \log p_t`) and averages away the independent part of their errors
(Lakshminarayanan et al., 2017, arXiv:1612.01474, deep ensembles). Since the score is linear in
:math:`\varepsilon`, :math:`\bar\varepsilon` is the score of the normalised product
:math:`\prod_m p_{m,t}^{w_m}` of the members' perturbed densities. The cost is the sum of the
members' costs.

:class:`ScoreEnsemble` behaves as a :class:`~numpyro_sda.score.LocalScore` wherever the library
uses one (:class:`~numpyro_sda.prior.TrajectoryPrior`, :class:`~numpyro_sda.SDA`, sparse
guidance gradients, ``stride``/``average`` compositions): it averages the members' composed
predictions, which equals composing the averaged window predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax import Array

from numpyro_sda.score import LocalScore

__all__ = ["ScoreEnsemble"]


def same_normalization(a: tuple[Any, Any] | None, b: tuple[Any, Any] | None) -> bool:
    """Whether two scores' ``normalization`` (``(mean, std)`` or ``None``) agree: scores combined
    into one trajectory score must predict in the same units."""
    if a is None or b is None:
        return a is None and b is None
    return all(np.allclose(x, y) for x, y in zip(a, b, strict=True))


class ScoreEnsemble:
    """The weighted average of the noise predictions of local scores of the same architecture
    role (window, state shape, noise schedule and normalisation).

    Args:
        scores: two or more :class:`~numpyro_sda.score.LocalScore` (their ``prediction`` and
            network may differ).
        weights: optional non-negative weights, normalised to sum to one (default equal).

    Raises:
        ValueError: when fewer than two scores are given, when their windows, state shapes,
            noise schedules or normalisations differ, or on invalid weights.
    """

    def __init__(self, scores: Sequence[LocalScore], weights: Sequence[float] | None = None):
        scores = list(scores)
        if len(scores) < 2:
            raise ValueError(f"an ensemble needs at least two local scores, got {len(scores)}")
        first = scores[0]
        for i, s in enumerate(scores[1:], 1):
            for name in ("window", "state_shape", "sde"):
                if getattr(s, name) != getattr(first, name):
                    raise ValueError(
                        f"score {i} has {name} {getattr(s, name)}, score 0 has "
                        f"{getattr(first, name)}: ensemble members must share it"
                    )
            a, b = first.normalization, s.normalization
            if not same_normalization(a, b):
                raise ValueError(
                    f"score {i} was trained on differently normalised data ({b}) than score 0 "
                    f"({a}): ensemble members must predict in the same units"
                )
        if weights is None:
            w = np.full(len(scores), 1.0 / len(scores))
        else:
            w = np.asarray(weights, np.float64)
            if w.shape != (len(scores),) or not np.all(np.isfinite(w)) or np.any(w < 0) \
                    or w.sum() <= 0:
                raise ValueError(
                    f"weights must be {len(scores)} finite non-negative numbers with a positive "
                    f"sum, got {weights!r}"
                )
            w = w / w.sum()
        self.scores = tuple(scores)
        self.weights = tuple(float(x) for x in w)
        self.window = first.window
        self.order = first.order
        self.state_shape = first.state_shape
        self.sde = first.sde

    @property
    def normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The members' common ``(mean, std)`` of the training data, or ``None``."""
        return self.scores[0].normalization

    @property
    def data_range(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The union of the members' recorded training ranges; ``None`` unless all record one."""
        ranges = [s.data_range for s in self.scores]
        if any(r is None for r in ranges):
            return None
        return (np.min([r[0] for r in ranges], 0), np.max([r[1] for r in ranges], 0))

    def local(self, w: Array, t: Array) -> Array:
        """Averaged noise prediction on a batch of windows (see :meth:`LocalScore.local`)."""
        return self._mix([s.local(w, t) for s in self.scores])

    def __call__(self, x: Array, t: Array | float, *, stride: int = 1, average: int = 0) -> Array:
        """Averaged composed noise prediction of ONE trajectory (see :meth:`LocalScore.__call__`)."""
        return self._mix([s(x, t, stride=stride, average=average) for s in self.scores])

    def eps_fn(self, grad_states: Any = None, **options: Any) -> Callable[[Array, Array], Array]:
        """A pure ``eps(x, t)`` averaging the members' :meth:`LocalScore.eps_fn` (same
        arguments: ``grad_states``, ``chunk``, ``remat``, ``stride``, ``average``)."""
        fns = [s.eps_fn(grad_states, **options) for s in self.scores]

        def eps(x: Array, t: Array) -> Array:
            return self._mix([f(x, t) for f in fns])

        return eps

    def _mix(self, predictions: Sequence[Array]) -> Array:
        """The weighted sum of the members' predictions (in member order)."""
        out = self.weights[0] * predictions[0]
        for wm, p in zip(self.weights[1:], predictions[1:], strict=True):
            out = out + wm * p
        return out

    def num_params(self) -> int:
        """Total parameters of the members."""
        return int(sum(s.num_params() for s in self.scores))

    def __repr__(self) -> str:
        return (f"ScoreEnsemble({len(self.scores)} members, window={self.window}, "
                f"state_shape={self.state_shape}, weights={[round(w, 3) for w in self.weights]})")

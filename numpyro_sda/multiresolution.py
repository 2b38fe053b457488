r"""Two-resolution trajectory scores: a coarse local score for the long-range structure at high
noise, the fine local score everywhere else.

A local score on windows of :math:`2k + 1` states composes into an exact trajectory score of a
Markov chain only at :math:`t = 0` (Rozet & Louppe, 2023, arXiv:2306.10574, Section 3.2). At
high noise the denoiser of one state should draw on states further away than the window, and the
composed score loses that information: on Lorenz-63, unconditional draws of 65 states composed
from windows of 9 switch lobes three times as often as the true system and put 2.5 times its
mass near the origin saddle (``benchmarks/prior_marginals.py``), and most of that error is made
above :math:`t = 0.25`.

A *coarse* local score, trained on every ``stride``-th state of the same trajectories, sees a
window of :math:`2k + 1` states that spans :math:`\text{stride} \cdot 2k + 1` time steps. Write
the trajectory as the coarse subsequence :math:`x_c = x_{0::s}` and the rest :math:`x_r`. Then

.. math:: p_t(x) = p_t(x_c)\, p_t(x_r \mid x_c), \qquad
          \nabla_{x_r} \log p_t(x) = \nabla_{x_r} \log p_t(x_r \mid x_c).

Above the switch time :math:`t_c`, :class:`MultiResolutionScore` drives the coarse states by the
coarse composed score :math:`\nabla_{x_c} \log p_t(x_c)` (the forward noise acts on each state
independently, so :math:`x_c` diffuses on its own and its reverse process needs only its own
marginal score) and the other states by the fine composed score, whose component on
:math:`x_r` estimates :math:`\nabla_{x_r} \log p_t(x_r \mid x_c)`. A Langevin step with this field
leaves :math:`p_t(x_c)\, p_t(x_r \mid x_c)` invariant when both scores are exact (a blocked,
Gibbs-like scheme). Below :math:`t_c` the fine composed score alone is used.

Measured on Lorenz-63 (shipped ``"lorenz63_window9"`` and ``"lorenz63_window9_stride2"``,
stride 2): unconditional draws of 65 states (``benchmarks/prior_marginals.py``) score W1 1.81x
the true-vs-true floor with :math:`t_c = 0`, 2.00x with :math:`t_c = 0.25`, 2.13x with
:math:`t_c = 0.5` and 2.07x with the fine score alone (a window-17 network: 1.82x). On the
paper's posterior protocol with :math:`t_c = 0` (``benchmarks/sampling.py --coarse``, 8 sets x
128 draws, 64 steps), W1 falls from 1.38x / 1.55x the particle floor ("lo" / "hi", fine score
alone, C = 32) to 1.08x / 1.38x at C = 32, for about 1.5x the network evaluations
(``benchmarks/results/sampling_cpu_multiresolution_2026-12-03.txt``), and to 1.19x / 1.49x at
C = 8 (``SDA()``'s default, 278 s / 459 s per 1024 draws on 2 CPU cores;
``benchmarks/results/sampling_cpu_multiresolution_budget_2026-12-03.txt``). Switching the coarse
score off below :math:`t_c = 0.1` spoils "lo" (1.54x against 1.13x at C = 16): its observed
states lie on the coarse grid and need the coarse score to the end; :math:`t_c = 0.25` leaves
"hi" where the fine score alone is (1.64x at C = 16).

Limitation under guidance: the blocked field drops the prior coupling
:math:`\nabla_{x_c} \log p_t(x_r \mid x_c)`, so observations of the other states reach the
coarse states only through the guidance's gradient through the fine denoiser. Where every state
is observed ("hi") the posterior is over-dispersed (spread/skill 1.28 at stride 2 and C = 32,
1.22 at C = 8; with :math:`t_c = 0.1`, where the fine score's coupling returns below
:math:`t_c`, 1.15 at the same W1, but "lo" suffers, above), and a stride-4
coarse score, although its unconditional draws are the best (W1 1.16x the floor), makes "hi"
worse than the fine score alone (W1 1.75x against 1.55x, spread / ground truth 1.34). Observed
states on the coarse grid ("lo": every 8th) lose nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from numpyro_sda.ensemble import same_normalization

__all__ = ["MultiResolutionScore"]


class MultiResolutionScore:
    """A fine local score and a coarse local score trained on every ``stride``-th state.

    Args:
        fine: the local score of consecutive states (a :class:`~numpyro_sda.score.LocalScore`
            or :class:`~numpyro_sda.ensemble.ScoreEnsemble`).
        coarse: a local score of the same state shape, noise schedule and normalisation, trained
            on the subsequences ``x[j::stride]`` of the same system's trajectories (e.g.
            ``examples/train_lorenz63.py --stride 2``).
        stride: the coarse time step, in states (>= 2).
        coarse_above: the coarse score drives the states ``x[0::stride]`` at diffusion times
            :math:`t >` ``coarse_above``; below, the fine score alone. ``0`` (default): at every
            step, the best measured (below).

    Raises:
        ValueError: when the two scores differ in state shape, noise schedule or normalisation,
            or on an invalid ``stride`` or ``coarse_above``.
    """

    def __init__(self, fine: Any, coarse: Any, stride: int = 2, coarse_above: float = 0.0):
        if isinstance(stride, bool) or int(stride) != stride or stride < 2:
            raise ValueError(f"stride must be an integer >= 2, got {stride!r}")
        if not 0.0 <= float(coarse_above) < 1.0:
            raise ValueError(f"coarse_above must lie in [0, 1), got {coarse_above}")
        for name in ("state_shape", "sde"):
            if getattr(fine, name) != getattr(coarse, name):
                raise ValueError(f"the coarse score has {name} {getattr(coarse, name)}, the fine "
                                 f"score {getattr(fine, name)}: they must share it")
        a, b = fine.normalization, coarse.normalization
        if not same_normalization(a, b):
            raise ValueError(f"the coarse score was trained on differently normalised data ({b}) "
                             f"than the fine score ({a})")
        self.fine, self.coarse = fine, coarse
        self.stride, self.coarse_above = int(stride), float(coarse_above)
        self.window = fine.window
        self.order = getattr(fine, "order", (fine.window - 1) // 2)
        self.state_shape = fine.state_shape
        self.sde = fine.sde

    @property
    def normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The common ``(mean, std)`` of the training data, or ``None``."""
        return self.fine.normalization

    @property
    def data_range(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The fine score's recorded training range (the states are the same)."""
        return self.fine.data_range

    def min_length(self) -> int:
        """The shortest trajectory whose coarse subsequence fills one coarse window."""
        return self.stride * (self.coarse.window - 1) + 1

    def eps_fn(self, grad_states: Any = None, **options: Any) -> Callable[[Array, Array], Array]:
        """A pure ``eps(x, t)`` on one trajectory (the fine score's options: ``grad_states``,
        ``chunk``, ``remat``, ``stride``, ``average``, applied to both compositions)."""
        s, above = self.stride, self.coarse_above
        if grad_states is None:
            fine, coarse = self.fine.eps_fn(**options), self.coarse.eps_fn(**options)
        else:
            mask = np.asarray(grad_states, bool)
            if len(mask) < self.min_length():
                raise ValueError(self._short(len(mask)))
            fine = self.fine.eps_fn(mask, **options)
            coarse = self.coarse.eps_fn(mask[0::s], **options)

        def eps(x: Array, t: Array) -> Array:
            if x.shape[0] < self.min_length():
                raise ValueError(self._short(x.shape[0]))
            e = fine(x, t)
            t = jnp.asarray(t)
            mixed = lambda e: e.at[0::s].set(coarse(x[0::s], t).astype(e.dtype))  # noqa: E731
            return jax.lax.cond(t > above, mixed, lambda e: e, e)  # the coarse net runs above only

        return eps

    def _short(self, length: int) -> str:
        return (f"a trajectory of {length} states is too short for the coarse score: its "
                f"{self.coarse.window}-state windows at stride {self.stride} need at least "
                f"{self.min_length()} states")

    def num_params(self) -> int:
        """Parameters of both scores."""
        return int(self.fine.num_params() + self.coarse.num_params())

    def __repr__(self) -> str:
        return (f"MultiResolutionScore(fine window {self.fine.window}, coarse window "
                f"{self.coarse.window} at stride {self.stride}, coarse above t = "
                f"{self.coarse_above})")

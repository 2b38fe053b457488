r"""Local (window) noise predictors and their composition over whole trajectories.

For a Markov chain of order :math:`k`, the score of a whole trajectory :math:`x_{1:L}` is well
approximated by scores of windows of :math:`2k + 1` consecutive states (Rozet & Louppe, 2023,
arXiv:2306.10574, Section 3.2). A local network :math:`\varepsilon_\phi(x_{i-k:i+k}, t)` predicts
the noise of a window; the noise prediction of the trajectory takes, for state :math:`i`,

* the centre output of the window centred on :math:`i` when :math:`k < i \le L - k`,
* the outer outputs of the first window for the first :math:`k` states and of the last window
  for the last :math:`k` states,

.. math:: \varepsilon(x_{1:L}, t)_i = \begin{cases}
          \varepsilon_\phi(x_{1:2k+1}, t)_i & i \le k \\
          \varepsilon_\phi(x_{i-k:i+k}, t)_{k+1} & k < i \le L - k \\
          \varepsilon_\phi(x_{L-2k:L}, t)_{i - L + 2k + 1} & i > L - k.
          \end{cases}

All :math:`L - 2k` windows go through the network in one batched call.

**Strided composition** (``stride`` :math:`s > 1`, an option of this library, not of the paper):
only windows starting at :math:`0, s, 2s, \dots` (and the last window, starting at :math:`L - 2k
- 1`) are evaluated, :math:`\lceil (L - 2k - 1)/s \rceil + 1` windows instead of :math:`L - 2k`, and
state :math:`i` takes the output of the window whose centre is nearest to it (the earlier window on
a tie). Every interior state then keeps at least :math:`k - \lfloor s/2 \rfloor` states of
context on each side, so the approximation lies between the window-:math:`(2k + 1)` and the window-:math:`(2(k -
\lfloor s/2 \rfloor) + 1)` compositions, at about :math:`1/s` of the network cost. ``stride=1``
is the composition above, exactly.

**Averaged composition** (``average`` :math:`a > 0`, also this library's): all windows are
evaluated, and state :math:`i` averages the outputs of the windows in which it sits at offset
:math:`k - a, \dots, k + a` from their start, i.e. with at least :math:`k - a` states of context
on each side:

.. math:: \varepsilon(x_{1:L}, t)_i = \frac{1}{|J_i|} \sum_{j \in J_i}
          \varepsilon_\phi(x_{j:j+2k}, t)_{i - j}, \qquad
          J_i = \{j : |i - j - k| \le a,\ 0 \le j \le L - 2k - 1\}

(the first and last states, for which :math:`J_i` is empty, keep the composition above). For an
exact Markov score the off-centre outputs are slightly worse approximations; for a learned one
they carry partly independent errors, which the average reduces. The network cost is that of
the paper's composition; a sparse guidance gradient needs :math:`2a + 1` windows per observed
state instead of one.

The kernel is either a
:class:`~numpyro_sda.nets.ResMLP` on flattened windows (low-dimensional states) or a
:class:`~numpyro_sda.nets.UNet` on windows stacked as channels (fields with state shape
``(channels, *spatial)``, channel-first; optional constant context channels such as a forcing).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from numpyro_sda.nets import PRECISIONS, ResMLP, TimeEmbedding, UNet, _as_rngs, set_precision
from numpyro_sda.sde import VPSDE

__all__ = [
    "LocalScore", "Constant", "Composition", "unfold", "fold", "composition", "PREDICTIONS",
]

#: What the network's raw output is trained to match (see :meth:`LocalScore.local`).
PREDICTIONS = ("eps", "v")


class Constant(nnx.Variable):
    """A non-trainable array stored in a module (e.g. constant context channels)."""


def unfold(x: Array, window: int) -> Array:
    """All windows of ``window`` consecutive states: ``(L, *s) -> (L - window + 1, window, *s)``."""
    n = x.shape[0] - window + 1
    return jnp.stack([x[j : j + n] for j in range(window)], axis=1)


def fold(e: Array, k: int) -> Array:
    """Compose window outputs ``(L - 2k, 2k + 1, *s)`` into ``(L, *s)`` (see module docstring)."""
    return jnp.concatenate([e[0, :k], e[:, k], e[-1, k + 1 :]], axis=0)


@dataclasses.dataclass(frozen=True)
class Composition:
    r"""Which windows a composed trajectory score evaluates, and how it combines their outputs.

    Fields (NumPy, fixed at trace time): ``starts`` ``(n,)``, the first state of each evaluated
    window; ``which``, ``offset`` and ``weight`` ``(L, m)``: state :math:`i`'s output is
    :math:`\sum_r w_{ir}\, e[\text{which}_{ir}, \text{offset}_{ir}]` for the window outputs
    :math:`e` of shape ``(n, window, ...)`` (:meth:`apply`); the weights of a state sum to 1
    (``m = 1`` and weight 1 unless outputs are averaged).
    """

    starts: np.ndarray
    which: np.ndarray
    offset: np.ndarray
    weight: np.ndarray

    def apply(self, e: Array) -> Array:
        """Compose window outputs ``(n, window, *s)`` into a trajectory's ``(L, *s)``."""
        out = e[self.which[:, 0], self.offset[:, 0]]
        if self.which.shape[1] == 1:
            return out
        shape = (-1,) + (1,) * (e.ndim - 2)
        out = out * jnp.asarray(self.weight[:, 0], e.dtype).reshape(shape)
        for r in range(1, self.which.shape[1]):
            w = jnp.asarray(self.weight[:, r], e.dtype).reshape(shape)
            out = out + w * e[self.which[:, r], self.offset[:, r]]
        return out

    def windows_of(self, states: np.ndarray) -> np.ndarray:
        """Boolean ``(n,)``: the evaluated windows that the outputs of ``states`` (boolean
        ``(L,)``) depend on."""
        states = np.asarray(states, bool)
        out = np.zeros(self.starts.shape[0], bool)
        used = self.which[states][self.weight[states] > 0]
        out[used] = True
        return out


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")
    return int(value)


def composition(length: int, window: int, stride: int = 1, average: int = 0) -> Composition:
    r"""The composition of a trajectory score from window outputs (see the module docstring).

    ``stride=1, average=0`` is the paper's (:func:`fold`): all :math:`L - 2k` windows, the centre
    output for interior states. ``stride`` :math:`s`: windows starting at :math:`0, s, 2s, \dots`
    and the last one, each state from the window whose centre is nearest (the first on a tie).
    ``average`` :math:`a` (with ``stride=1``): each state averages the outputs of every window in
    which it sits at offset :math:`k - a, \dots, k + a` (the first and last states, which have
    none, keep the paper's choice).
    """
    stride = _check_count(stride, "stride", 1)
    average = _check_count(average, "average", 0)
    k = window // 2
    if stride > k + 1:
        raise ValueError(
            f"stride {stride} leaves states without context: with windows of {window} states it "
            f"must be at most {k + 1} (k + 1)"
        )
    if average > k:
        raise ValueError(f"average must be at most k = {k} for windows of {window} states, "
                         f"got {average}")
    if average and stride != 1:
        raise ValueError(f"average={average} needs stride=1 (every window), got stride={stride}")
    if length < window:
        raise ValueError(f"the window ({window} states) is longer than the trajectory ({length})")
    last = length - window
    starts = np.arange(0, last + 1, stride)
    if starts[-1] != last:
        starts = np.append(starts, last)
    states = np.arange(length)
    nearest = np.argmin(np.abs(states[:, None] - (starts + k)[None, :]), axis=1)
    if not average:
        one = np.ones((length, 1), np.float32)
        return Composition(starts, nearest[:, None], (states - starts[nearest])[:, None], one)
    m = 2 * average + 1
    which = np.zeros((length, m), np.int64)
    offset = np.zeros((length, m), np.int64)
    weight = np.zeros((length, m), np.float32)
    for i in range(length):
        pairs = [(i - o, o) for o in range(k - average, k + average + 1) if 0 <= i - o <= last]
        if not pairs:
            pairs = [(int(nearest[i]), int(i - starts[nearest[i]]))]
        for r, (j, o) in enumerate(pairs):
            which[i, r], offset[i, r], weight[i, r] = j, o, 1.0 / len(pairs)
    return Composition(starts, which, offset, weight)


def windows_of_states(states: np.ndarray, window: int, stride: int = 1,
                      average: int = 0) -> np.ndarray:
    """Which evaluated windows produce the composed outputs of ``states`` (boolean ``(L,)`` ->
    ``(n,)``, with ``n = L - 2k`` windows for ``stride=1``; see :func:`composition`).

    With the paper's composition, interior state :math:`i` takes the centre of window
    :math:`i - k`; the first :math:`k` states come from window 0 and the last :math:`k` from the
    last window (see :func:`fold`).
    """
    states = np.asarray(states, bool)
    return composition(states.shape[0], window, stride, average).windows_of(states)


def _unfold_at(x: Array, starts: np.ndarray, window: int) -> Array:
    """Windows of ``window`` states starting at ``starts``: ``(L, *s) -> (n, window, *s)``."""
    if starts.shape[0] == x.shape[0] - window + 1:
        return unfold(x, window)
    return jnp.stack([x[starts + j] for j in range(window)], axis=1)


#: "auto" chunking keeps the estimated saved activations of one trajectory's chunk below this on
#: CPU; on accelerators the budget is a quarter of the device's memory. Chunking (lax.map) is
#: much slower on CPU (3-4x measured), so it is used only where memory demands it.
AUTO_CHUNK_BYTES = 4 << 30


def auto_chunk_budget() -> int:
    """Bytes of saved activations per trajectory that ``chunk="auto"`` allows."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory statistics
        stats = {}
    limit = stats.get("bytes_limit")
    return int(limit) // 4 if limit else AUTO_CHUNK_BYTES


def activation_bytes(config: dict[str, Any], state_shape: tuple[int, ...]) -> int:
    r"""Rough bytes of activations a backward pass saves per window (float32), for chunking.

    UNet: each modulated residual block keeps about 8 tensors of its level's size
    (:math:`N / 4^i` positions times ``hidden_channels[i]`` channels, 2-D) on the way down and
    as many on the way up: :math:`\sum_i 2 \cdot 8 \cdot b_i c_i N / 2^{d i} \cdot 4` bytes.
    MLP: :math:`2 \cdot 8 \cdot \text{depth} \cdot \text{hidden} \cdot 4` bytes.
    """
    if config["kind"] == "mlp":
        return 64 * int(config["depth"]) * int(config["hidden"])
    spatial = int(np.prod(state_shape[1:]))
    d = int(config["spatial"])
    return sum(
        64 * int(b) * int(c) * spatial // (2 ** (d * i))
        for i, (c, b) in enumerate(zip(config["hidden_channels"], config["blocks"], strict=True))
    )


def _chunk_size(config: dict[str, Any], w: Array, chunk: int | str | None) -> int:
    n = w.shape[0]
    if chunk is None:
        return n
    if chunk == "auto":
        size = max(1, auto_chunk_budget() // max(1, activation_bytes(config, w.shape[2:])))
    elif isinstance(chunk, int | np.integer) and not isinstance(chunk, bool) and chunk >= 1:
        size = int(chunk)
    else:
        raise ValueError(f"chunk must be a positive integer, 'auto' or None, got {chunk!r}")
    if size >= n:
        return n
    pieces = -(-n // size)
    return -(-n // pieces)  # balanced chunks: at most pieces - 1 padded windows


def _chunked_local(module: LocalScore, w: Array, t: Array, size: int, remat: bool) -> Array:
    """``module.local`` over chunks of ``size`` windows with :func:`jax.lax.map` (the last
    chunk padded by repeating the last window), optionally rematerialised."""
    n = w.shape[0]
    pieces = -(-n // size)
    pad = pieces * size - n
    if pad:
        w = jnp.concatenate([w, jnp.broadcast_to(w[-1:], (pad, *w.shape[1:]))])

    def one(wc: Array) -> Array:
        return module.local(wc, t)

    out = jax.lax.map(jax.checkpoint(one) if remat else one, w.reshape(pieces, size, *w.shape[1:]))
    return out.reshape(pieces * size, *w.shape[1:])[:n]


class LocalScore(nnx.Module):
    r"""A window noise predictor :math:`\varepsilon_\phi(x_{i-k:i+k}, t)` and its composition.

    Build it with :meth:`mlp` (states are vectors) or :meth:`unet` (states are fields).

    Attributes:
        window: :math:`2k + 1`.
        order: :math:`k`.
        state_shape: shape of one state (``None`` entries for unspecified spatial sizes).
        sde: the :class:`~numpyro_sda.sde.VPSDE` noise schedule the network is trained for.
        config: the JSON-serialisable constructor configuration (used by checkpoints).
        normalization: optional ``(mean, std)`` of the training data (numpy arrays), informative.

    Calling ``score(x, t)`` on ONE trajectory ``x`` of shape ``(length, *state_shape)`` with
    ``length >= window`` and a scalar ``t`` returns the composed noise prediction of the same
    shape. :meth:`local` evaluates the network on a batch of windows; :meth:`eps_fn` returns a
    pure function of ``(x, t)`` for use inside JAX transformations.
    """

    def __init__(self, config: dict[str, Any], *, rngs: nnx.Rngs | int = 0) -> None:
        rngs = _as_rngs(rngs)
        config = json.loads(json.dumps(config))  # normalise (tuples -> lists) and check it
        kind = config.get("kind")
        window = int(config["window"])
        if window < 1 or window % 2 != 1:
            raise ValueError(f"window must be a positive odd integer (2k+1), got {window}")
        self.window = window
        self.order = window // 2
        self.sde = VPSDE(alpha=config.get("alpha", "cos"), eta=float(config.get("eta", 1e-3)))
        prediction = config.get("prediction", "eps")
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}"
            )
        self.prediction = prediction
        embedding = int(config.get("embedding", 32))
        self.embedding = TimeEmbedding(embedding, rngs=rngs)
        if kind == "mlp":
            features = int(config["features"])
            if features < 1:
                raise ValueError(f"features must be a positive integer, got {features}")
            self.kind = "mlp"
            self.state_shape = (features,)
            width = window * features
            self.network = ResMLP(
                width + embedding,
                width,
                hidden=(int(config["hidden"]),) * int(config["depth"]),
                activation=config.get("activation", "silu"),
                rngs=rngs,
            )
            self.context = None
        elif kind == "unet":
            channels = int(config["channels"])
            spatial = int(config["spatial"])
            if channels < 1:
                raise ValueError(f"channels must be a positive integer, got {channels}")
            size = config.get("size")
            context_channels = int(config.get("context_channels", 0))
            self.kind = "unet"
            self.state_shape = (channels, *(size if size is not None else (None,) * spatial))
            self.network = UNet(
                window * channels + context_channels,
                window * channels,
                embedding,
                hidden_channels=config["hidden_channels"],
                blocks=config["blocks"],
                spatial=spatial,
                kernel_size=int(config.get("kernel_size", 3)),
                activation=config.get("activation", "silu"),
                rngs=rngs,
            )
            if context_channels:
                shape = (context_channels, *size)
                self.context = Constant(jnp.zeros(shape, jnp.float32))
            else:
                self.context = None
        else:
            raise ValueError(f"unknown LocalScore kind {kind!r}; expected 'mlp' or 'unet'")
        precision = config.setdefault("precision", "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
        set_precision(self.network, precision)
        self._config = json.dumps(config, sort_keys=True)
        self._normalization = "null"

    # ------------------------------------------------------------------ constructors
    @classmethod
    def mlp(
        cls,
        features: int,
        window: int = 5,
        hidden: int = 256,
        depth: int = 5,
        *,
        embedding: int = 32,
        activation: str = "silu",
        sde: VPSDE | None = None,
        precision: str = "fp32",
        prediction: str = "eps",
        rngs: nnx.Rngs | int = 0,
    ) -> LocalScore:
        """A ResMLP kernel on flattened windows of ``window`` states with ``features`` each.

        The paper's Lorenz-63 configuration is ``LocalScore.mlp(3, window=5, hidden=256,
        depth=5)`` (SiLU, 32 time-embedding features). ``precision="bf16"`` runs the matmuls
        in bfloat16 with float32 weights and accumulation (see :func:`~numpyro_sda.nets.set_precision`).
        ``prediction="v"`` trains the network on the velocity target (see :meth:`local`).
        """
        sde = VPSDE() if sde is None else sde
        config = dict(
            kind="mlp",
            features=int(features),
            window=int(window),
            hidden=int(hidden),
            depth=int(depth),
            embedding=int(embedding),
            activation=activation,
            alpha=sde.alpha,
            eta=sde.eta,
            precision=precision,
        )
        if prediction != "eps":
            config["prediction"] = prediction
        return cls(config, rngs=rngs)

    @classmethod
    def unet(
        cls,
        channels: int,
        window: int = 5,
        spatial: int = 2,
        hidden_channels: Sequence[int] = (96, 192, 384),
        blocks: Sequence[int] = (3, 3, 3),
        context: Array | np.ndarray | None = None,
        *,
        size: int | Sequence[int] | None = None,
        kernel_size: int = 3,
        embedding: int = 64,
        activation: str = "silu",
        sde: VPSDE | None = None,
        precision: str = "fp32",
        prediction: str = "eps",
        rngs: nnx.Rngs | int = 0,
    ) -> LocalScore:
        """A UNet kernel on windows stacked as channels; states have shape ``(channels, *size)``.

        Args:
            channels: channels of one state.
            window: :math:`2k + 1`.
            spatial: 1 or 2 spatial dimensions.
            hidden_channels, blocks: UNet widths and residual blocks per level (the paper's
                Kolmogorov configuration is ``(96, 192, 384)``, ``(3, 3, 3)``).
            context: optional constant context channels of shape ``(context_channels, *size)``
                (e.g. the Kolmogorov forcing), appended to every window's input.
            size: spatial size(s) of a state; inferred from ``context`` when given, otherwise
                optional (then ``state_shape`` has ``None`` entries and any size divisible by
                ``2**(levels-1)`` is accepted).
            precision: ``"fp32"`` or ``"bf16"`` (bfloat16 convolutions and matmuls, float32
                weights and accumulation; recorded in :attr:`config`, hence in checkpoints).
            prediction: ``"eps"`` (the paper's noise prediction) or ``"v"`` (velocity; see
                :meth:`local`).
        """
        sde = VPSDE() if sde is None else sde
        if spatial not in (1, 2):
            raise ValueError(f"spatial must be 1 or 2, got {spatial}")
        if size is not None:
            size = (int(size),) * spatial if np.ndim(size) == 0 else tuple(int(s) for s in size)
            if len(size) != spatial:
                raise ValueError(f"size {size} must have {spatial} entries (spatial={spatial})")
        ctx = None
        if context is not None:
            ctx = jnp.asarray(context, jnp.float32)
            if ctx.ndim != spatial + 1:
                raise ValueError(
                    f"context must have shape (context_channels, *size) with {spatial} spatial "
                    f"axes, got {ctx.shape}"
                )
            if size is not None and tuple(ctx.shape[1:]) != size:
                raise ValueError(f"context spatial shape {ctx.shape[1:]} != size {size}")
            size = tuple(ctx.shape[1:])
        config = dict(
            kind="unet",
            channels=int(channels),
            window=int(window),
            spatial=int(spatial),
            hidden_channels=[int(c) for c in hidden_channels],
            blocks=[int(b) for b in blocks],
            size=None if size is None else list(size),
            context_channels=0 if ctx is None else int(ctx.shape[0]),
            kernel_size=int(kernel_size),
            embedding=int(embedding),
            activation=activation,
            alpha=sde.alpha,
            eta=sde.eta,
            precision=precision,
        )
        if prediction != "eps":
            config["prediction"] = prediction
        score = cls(config, rngs=rngs)
        if ctx is not None:
            score.context[...] = ctx
        return score

    @classmethod
    def from_config(cls, config: dict[str, Any], *, rngs: nnx.Rngs | int = 0) -> LocalScore:
        """Rebuild an (untrained) score from :attr:`config`."""
        return cls(dict(config), rngs=rngs)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor configuration (a fresh copy)."""
        return json.loads(self._config)

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: the compute precision of the network's matmuls/convolutions."""
        return self.config["precision"]

    def set_precision(self, precision: str) -> None:
        """Switch the compute precision (``"fp32"``/``"bf16"``) in place; weights are unchanged
        and stay float32. Recorded in :attr:`config`."""
        set_precision(self.network, precision)
        config = self.config
        config["precision"] = precision
        self._config = json.dumps(config, sort_keys=True)

    @property
    def normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, std)`` of the training data (float32 numpy arrays) when recorded, else None."""
        norm = json.loads(self._normalization)
        if norm is None:
            return None
        return np.asarray(norm[0], np.float32), np.asarray(norm[1], np.float32)

    def set_normalization(self, normalization: tuple[Any, Any] | None) -> None:
        """Record ``(mean, std)`` of the (physical) training data, or ``None`` to clear it."""
        if normalization is None:
            self._normalization = "null"
            return
        mean, std = (np.asarray(a, np.float64) for a in normalization)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("normalization (mean, std) must be finite with std > 0")
        self._normalization = json.dumps([mean.tolist(), std.tolist()])

    def __repr__(self) -> str:
        c = self.config
        arch = (f"hidden={c.get('hidden')}, depth={c.get('depth')}" if self.kind == "mlp" else
                f"hidden_channels={c.get('hidden_channels')}, blocks={c.get('blocks')}")
        return (f"LocalScore({self.kind}, window={self.window}, state_shape={self.state_shape}, "
                f"{arch}, params={self.num_params():,}, precision={c.get('precision', 'fp32')}, "
                f"sde={self.sde})")

    @property
    def data_range(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel ``(lower, upper)`` of the training data (in the units the network was
        trained on) when recorded, else ``None``. :class:`numpyro_sda.SDA` keeps its guided
        denoiser inside this range (with a margin)."""
        rng = json.loads(self._config).get("data_range")
        if rng is None:
            return None
        return np.asarray(rng[0], np.float32), np.asarray(rng[1], np.float32)

    def set_data_range(self, lower: Any, upper: Any | None = None) -> None:
        """Record the training data's per-channel range; ``set_data_range(data)`` computes it
        from an array ``(..., *state_shape)`` (channel axis first in ``state_shape``)."""
        if upper is None:
            data = np.asarray(lower, np.float64)
            nd = len(self.state_shape)
            if self.kind == "mlp":
                axes = tuple(range(data.ndim - 1))
            else:  # channel-first fields: reduce over every axis but the channel
                axes = tuple(i for i in range(data.ndim) if i != data.ndim - nd)
            lower, upper = data.min(axis=axes), data.max(axis=axes)
        lo, hi = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        if lo.shape != hi.shape or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))
                                        and np.all(lo < hi)):
            raise ValueError("data range must be finite with lower < upper, of equal shapes")
        config = json.loads(self._config)
        config["data_range"] = [lo.tolist(), hi.tolist()]
        self._config = json.dumps(config, sort_keys=True)

    # ------------------------------------------------------------------ evaluation
    def _check_state(self, shape: tuple[int, ...], what: str) -> None:
        s = self.state_shape
        got = tuple(shape)
        ok = len(got) == len(s) and all(a is None or a == b for a, b in zip(s, got, strict=True))
        if not ok:
            raise ValueError(
                f"{what} has state shape {got}, but this LocalScore expects {s} "
                f"({'features' if self.kind == 'mlp' else '(channels, *spatial)'} mismatch)"
            )

    def local(self, w: Array, t: Array) -> Array:
        r"""Noise prediction on a batch of windows.

        With ``prediction="eps"`` (the paper's parametrisation) the network's output
        :math:`F_\phi` is the noise prediction itself. With ``prediction="v"`` it is trained
        to match the velocity :math:`v = \mu(t)\, \varepsilon - \sigma(t)\, w` (Salimans &
        Ho, 2022, arXiv:2202.00512, Section 4), and the noise prediction is

        .. math:: \hat\varepsilon = \frac{\mu(t)\, F_\phi + \sigma(t)\, w_t}{\mu(t)^2 + \sigma(t)^2},

        exact when :math:`F_\phi = v`. The network's error then reaches Tweedie's denoiser
        :math:`\hat w = (w_t - \sigma \hat\varepsilon)/\mu` multiplied by
        :math:`\sigma / (\mu^2 + \sigma^2) \le 1` instead of :math:`\sigma/\mu` (up to
        :math:`10^3` at :math:`t = 1`), so the denoiser stays accurate at high noise, where the
        guidance evaluates the likelihood on it.

        Args:
            w: windows of shape ``(B, window, *state_shape)``.
            t: times of shape ``(B,)`` (or a scalar, broadcast).

        Returns:
            the predicted noise, shape ``(B, window, *state_shape)``.
        """
        out = self.network_output(w, t)
        if self.prediction == "eps":
            return out
        w = jnp.asarray(w)
        shape = (-1,) + (1,) * (w.ndim - 1)
        t = jnp.broadcast_to(jnp.asarray(t, w.dtype), (w.shape[0],))
        return self.sde.eps_from_velocity(w, t.reshape(shape), out).astype(out.dtype)

    def network_output(self, w: Array, t: Array) -> Array:
        """The network's raw output on a batch of windows (what training matches: the noise
        for ``prediction="eps"``, the velocity for ``"v"``; see :meth:`local`)."""
        w = jnp.asarray(w)
        if w.ndim != 2 + len(self.state_shape) or w.shape[1] != self.window:
            raise ValueError(
                f"windows must have shape (batch, {self.window}, *{self.state_shape}), "
                f"got {w.shape}"
            )
        self._check_state(w.shape[2:], "the windows")
        b = w.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, w.dtype), (b,))
        e = self.embedding(t)
        if self.kind == "mlp":
            h = jnp.concatenate([w.reshape(b, -1), e.astype(w.dtype)], axis=-1)
            return self.network(h).reshape(w.shape)
        c = self.state_shape[0]
        spatial = w.shape[3:]
        h = w.reshape(b, self.window * c, *spatial)
        h = jnp.moveaxis(h, 1, -1)  # (B, *spatial, window * C)
        if self.context is not None:
            ctx = jnp.moveaxis(self.context[...], 0, -1).astype(h.dtype)
            if ctx.shape[:-1] != tuple(spatial):
                raise ValueError(
                    f"context spatial shape {ctx.shape[:-1]} != state spatial shape {spatial}"
                )
            h = jnp.concatenate([h, jnp.broadcast_to(ctx, (b, *ctx.shape))], axis=-1)
        out = self.network(h, e)
        return jnp.moveaxis(out, -1, 1).reshape(w.shape)

    def _check_trajectory(self, x: Array, t: Array | float) -> None:
        if x.ndim != 1 + len(self.state_shape):
            raise ValueError(
                f"expected ONE trajectory of shape (length, *{self.state_shape}), got {x.shape}; "
                "vmap over samples (see eps_fn)"
            )
        self._check_state(x.shape[1:], "the trajectory")
        if x.shape[0] < self.window:
            raise ValueError(
                f"the window ({self.window} states) is longer than the trajectory "
                f"({x.shape[0]} states)"
            )
        if jnp.ndim(t) != 0:
            raise ValueError(f"t must be a scalar, got shape {jnp.shape(t)}")

    def __call__(self, x: Array, t: Array | float, *, stride: int = 1, average: int = 0) -> Array:
        """Composed noise prediction of ONE trajectory ``x`` ``(length, *state_shape)``
        (``stride``, ``average``: see :func:`composition`)."""
        x = jnp.asarray(x)
        self._check_trajectory(x, t)
        plan = composition(x.shape[0], self.window, stride, average)
        return plan.apply(self.local(_unfold_at(x, plan.starts, self.window), t))

    def eps_fn(
        self,
        grad_states: Any = None,
        *,
        chunk: int | str | None = "auto",
        remat: bool | None = None,
        stride: int = 1,
        average: int = 0,
    ) -> Callable[[Array, Array], Array]:
        r"""A pure function ``eps(x, t)`` (one trajectory, scalar ``t``) with frozen weights.

        It can be jitted, vmapped, scanned and differentiated; later changes to this module do
        not affect it (call ``eps_fn()`` again after training).

        Args:
            grad_states: optional boolean mask of shape ``(length,)``: only the outputs of these
                states carry gradients with respect to ``x`` (the other windows are evaluated
                under :func:`jax.lax.stop_gradient`). Guidance differentiates
                :math:`\log p(y \mid \hat{x}(x_t))`, whose gradient with respect to
                :math:`\hat{x}` vanishes at unobserved states, so its vector–Jacobian product only
                needs the windows that produce observed states: with 9 observed states out of 65
                (Lorenz-63 "lo") the backward pass runs over 9 windows instead of 61. Values are
                unchanged and gradients are exact for any cotangent supported on ``grad_states``.
            chunk: windows per network call. ``None``: all :math:`L - 2k` windows in one batched
                call (fastest, memory :math:`O(L)` activations). An integer: the windows go
                through :func:`jax.lax.map` in chunks of at most this many, so a backward pass
                keeps the activations of one chunk at a time. ``"auto"`` (default): chunks
                whose estimated saved activations fit in :func:`auto_chunk_budget` per trajectory
                (4 GiB on CPU, a quarter of an accelerator's memory; see
                :func:`activation_bytes`): MLP scores and short trajectories stay unchunked; on
                CPU a 64x64x127-state Kolmogorov trajectory with the paper's UNet gets 4 chunks
                of 31 windows.
            stride: evaluate every ``stride``-th window only (see the module docstring):
                about ``1/stride`` of the network cost, each state at least
                ``k - stride // 2`` states from its window's edges. ``1``: the paper's
                composition.
            average: each state averages the outputs of the windows in which it sits within
                ``average`` states of the centre (needs ``stride=1``; see :func:`composition`):
                the same network cost, the network's errors averaged over ``2 * average + 1``
                windows. ``0``: the paper's composition.
            remat: rematerialise each chunk in the backward pass (:func:`jax.checkpoint`: only
                the chunk's input windows are saved; the forward is recomputed). Default: on
                when the windows are chunked. Values and gradients are unchanged.
        """
        graphdef, state = nnx.split(self)
        window, config = self.window, self.config
        composition(window, window, stride, average)  # validates stride and average early

        def run(module: LocalScore, w: Array, t: Array, differentiable: bool) -> Array:
            size = _chunk_size(config, w, chunk)
            if size >= w.shape[0]:
                return module.local(w, t)
            use_remat = differentiable if remat is None else bool(remat)
            return _chunked_local(module, w, t, size, use_remat and differentiable)

        if grad_states is None:

            def eps(x: Array, t: Array) -> Array:
                module = nnx.merge(graphdef, state)
                x = jnp.asarray(x)
                module._check_trajectory(x, t)
                plan = composition(x.shape[0], window, stride, average)
                return plan.apply(run(module, _unfold_at(x, plan.starts, window), t, True))

            return eps

        length = len(grad_states)
        plan = composition(length, window, stride, average)
        active = plan.windows_of(np.asarray(grad_states, bool))
        act, inact = np.flatnonzero(active), np.flatnonzero(~active)
        perm = np.argsort(np.concatenate([act, inact]))

        def eps_sparse(x: Array, t: Array) -> Array:
            if x.shape[0] != length:
                raise ValueError(
                    f"this eps was built for trajectories of {length} states, got {x.shape[0]}"
                )
            module = nnx.merge(graphdef, state)
            w = _unfold_at(x, plan.starts, window)
            parts = []
            if act.size:
                parts.append(run(module, w[act], t, True))
            if inact.size:
                parts.append(run(module, jax.lax.stop_gradient(w[inact]), t, False))
            return plan.apply(jnp.concatenate(parts)[perm])

        return eps_sparse

    def sample(
        self,
        key: Array,
        num_samples: int,
        length: int,
        *,
        steps: int = 256,
        corrections: int = 0,
        tau: float = 0.25,
        stride: int = 1,
        average: int = 0,
    ) -> Array:
        """Unconditional trajectories ``(num_samples, length, *state_shape)`` from the composed
        prior (``stride``, ``average``: see :func:`composition`) by predictor-corrector reverse diffusion
        (:mod:`numpyro_sda.sampling`), compiled as one :func:`jax.jit` call and vmapped over
        samples."""
        from numpyro_sda.sampling import sample_trajectories

        if any(s is None for s in self.state_shape):
            raise ValueError(
                f"state_shape {self.state_shape} has unspecified sizes; build the score with "
                "size=... or call numpyro_sda.sampling.sample_trajectories with a full shape"
            )
        if length < self.window:
            raise ValueError(
                f"the window ({self.window} states) is longer than the trajectory ({length})"
            )
        shape = (int(length), *self.state_shape)
        eps, sde = self.eps_fn(stride=stride, average=average), self.sde

        @jax.jit
        def run(k):
            return sample_trajectories(k, eps, num_samples, shape, sde, steps, corrections, tau)

        return run(key)

    def num_params(self) -> int:
        """Number of trainable parameters."""
        params = nnx.state(self, nnx.Param)
        return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))

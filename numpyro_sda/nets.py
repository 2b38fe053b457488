r"""Neural networks for noise prediction (flax.nnx).

Three building blocks, following the architectures of Rozet & Louppe (2023, arXiv:2306.10574,
Appendix C):

* :class:`TimeEmbedding`: the diffusion time :math:`t \in [0, 1]` is mapped to the Fourier
  features :math:`(\cos(\pi j t), \sin(\pi j t))_{j=1}^{F}` and then through a two-layer SiLU MLP.
* :class:`ResMLP`: a residual multi-layer perceptron. Each width change is a linear map, each
  hidden width is followed by a residual block
  :math:`h \leftarrow h + W_2\, a(W_1\, \mathrm{LN}(h))` (LayerNorm without affine parameters,
  activation :math:`a`, SiLU by default).
* :class:`UNet`: a U-Net (Ronneberger et al., 2015) for 1-D or 2-D periodic fields: circular
  padding everywhere, strided convolutions down, nearest-neighbour upsampling up, skip
  connections by addition, and residual blocks modulated by the time embedding,
  :math:`h \leftarrow h + \mathrm{conv}(a(\mathrm{conv}(\mathrm{LN}(h + P e(t)))))`.

Fields are channel-last inside the networks (``(batch, *spatial, channels)``), as flax's
convolutions expect; :class:`~numpyro_sda.score.LocalScore` converts from the library's
channel-first state convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

__all__ = [
    "ACTIVATIONS",
    "PRECISIONS",
    "TimeEmbedding",
    "ResMLP",
    "UNet",
    "ModResidualBlock",
    "set_precision",
]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "tanh": jnp.tanh,
}


#: Compute precisions: the dtype of matmul/convolution operands (``None``: float32). Parameters,
#: accumulation (``preferred_element_type``), normalisation, activations and residual streams
#: stay float32 in every mode.
PRECISIONS: dict[str, jnp.dtype | None] = {"fp32": None, "bf16": jnp.bfloat16}


def set_precision(module: nnx.Module, precision: str) -> nnx.Module:
    """Switch every ``nnx.Linear``/``nnx.Conv`` of ``module`` to ``precision`` in place.

    ``"bf16"`` casts the inputs and float32 weights of each matmul and convolution to bfloat16
    and accumulates in float32 (``preferred_element_type=float32``, so outputs are float32);
    ``"fp32"`` restores plain float32. Parameters are never converted.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    for _, m in nnx.iter_graph(module):
        if isinstance(m, nnx.Linear | nnx.Conv):
            m.dtype = dtype
            m.preferred_element_type = None if dtype is None else jnp.float32
    return module


def patch_conv(lhs: Array, rhs: Array, window_strides, padding, lhs_dilation=None,
               rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
               precision=None, preferred_element_type=None, **kwargs) -> Array:
    r"""A convolution with the signature of :func:`jax.lax.conv_general_dilated`, computed on
    CPU as one matrix product of patches (the drop-in ``conv_general_dilated`` of the UNet's
    ``nnx.Conv`` layers).

    For a ``"VALID"`` channels-last convolution with kernel :math:`K` of spatial size
    :math:`k_1 \times \dots` and strides :math:`s`,

    .. math:: y_{n,i,o} = \sum_{j, c} x_{n,\, s i + j,\, c}\, K_{j, c, o}
              = \big[\mathrm{patches}(x)\big]_{n,i,(j,c)}\, K_{(j,c),o},

    where the patches stack the shifted, strided slices of :math:`x` (built one axis at a time:
    :math:`\sum_i k_i` slices rather than :math:`\prod_i k_i`, which shortens 2-D compiles). Its
    derivatives are slices and matrix products as well. Why: XLA:CPU runs the gradient of
    ``lax.conv_general_dilated`` with respect to the kernel 20-50x slower inside a loop body
    (a ``lax.scan`` of training steps, the guided sampler's scan over diffusion steps) than
    outside one (measured: 0.37 ms outside, 18 ms inside a ``fori_loop`` for a 64 x 32 x 32
    channel 1-D convolution), because the kernel-gradient convolution keeps a layout that the
    CPU convolution runtime does not take; matrix products have no such case. Same parameters,
    same result to float rounding. Other backends (GPU: cuDNN) and the cases this form does not
    cover (dilations, groups, padding other than ``"VALID"``, which ``nnx.Conv`` already applied
    for ``"CIRCULAR"``) call :func:`jax.lax.conv_general_dilated` itself.
    """
    lhs_dilation = tuple(lhs_dilation or ())
    rhs_dilation = tuple(rhs_dilation or ())
    spatial = rhs.ndim - 2
    plain = (jax.default_backend() != "cpu" or padding != "VALID" or feature_group_count != 1
             or any(d != 1 for d in lhs_dilation + rhs_dilation) or lhs.ndim != spatial + 2
             or dimension_numbers is None
             or tuple(dimension_numbers.lhs_spec) != (0, spatial + 1, *range(1, spatial + 1))
             or tuple(dimension_numbers.rhs_spec) != (spatial + 1, spatial, *range(spatial)))
    if plain:
        extra = {} if preferred_element_type is None else {
            "preferred_element_type": preferred_element_type}
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation or None,
            rhs_dilation=rhs_dilation or None, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **extra, **kwargs)
    ksize, strides = rhs.shape[:spatial], tuple(window_strides)
    out = [(n - k) // s + 1 for n, k, s in zip(lhs.shape[1:-1], ksize, strides, strict=True)]
    patches = lhs
    # one spatial axis at a time, the last first: the features become (j_1, ..., j_d, c), the
    # kernel's row-major order (sum k_i slices instead of prod k_i: shorter compiles in 2-D)
    for axis in range(spatial, 0, -1):
        k, s, o = ksize[axis - 1], strides[axis - 1], out[axis - 1]
        patches = jnp.concatenate(
            [jax.lax.slice_in_dim(patches, j, j + s * (o - 1) + 1, s, axis) for j in range(k)],
            axis=-1)  # (N, ..., o, ..., k * features)
    kernel = rhs.reshape(-1, rhs.shape[-1])
    return jax.lax.dot_general(patches, kernel, (((patches.ndim - 1,), (0,)), ((), ())),
                               precision=precision,
                               preferred_element_type=preferred_element_type)


def _circular_conv(cin: int, cout: int, kernel: tuple[int, ...], strides: int = 1, *,
                   rngs: nnx.Rngs) -> nnx.Conv:
    """The UNet's convolution layer: circular padding, computed through :func:`patch_conv`."""
    return nnx.Conv(cin, cout, kernel, strides=strides, padding="CIRCULAR",
                    conv_general_dilated=patch_conv, rngs=rngs)


def _activation(name: str) -> Callable[[Array], Array]:
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]


def _as_rngs(rngs: nnx.Rngs | int) -> nnx.Rngs:
    if isinstance(rngs, nnx.Rngs):
        return rngs
    if isinstance(rngs, int):
        return nnx.Rngs(rngs)
    raise TypeError(f"rngs must be an nnx.Rngs or an integer seed, got {type(rngs).__name__}")


def _layer_norm(features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Normalisation over the last (feature/channel) axis, without affine parameters.
    return nnx.LayerNorm(features, use_bias=False, use_scale=False, epsilon=1e-5, rngs=rngs)


class TimeEmbedding(nnx.Module):
    r"""Sinusoidal embedding of the diffusion time followed by a small MLP.

    :math:`e(t) = W_2\, \mathrm{SiLU}(W_1 [\cos(\pi j t), \sin(\pi j t)]_{j=1}^{F})`.

    Args:
        features: output features.
        frequencies: number :math:`F` of Fourier frequencies (input width :math:`2F`).
        hidden: width of the hidden layer.
        rngs: ``nnx.Rngs`` or an integer seed.
    """

    def __init__(
        self,
        features: int,
        *,
        frequencies: int = 16,
        hidden: int = 256,
        rngs: nnx.Rngs | int = 0,
    ) -> None:
        rngs = _as_rngs(rngs)
        if features < 1 or frequencies < 1 or hidden < 1:
            raise ValueError("features, frequencies and hidden must be positive integers")
        self.features = int(features)
        self.frequencies = int(frequencies)
        self.linear1 = nnx.Linear(2 * frequencies, hidden, rngs=rngs)
        self.linear2 = nnx.Linear(hidden, features, rngs=rngs)

    def fourier(self, t: Array) -> Array:
        """The raw Fourier features ``(..., 2F)`` of times ``t`` of shape ``(...)``."""
        freqs = math.pi * jnp.arange(1, self.frequencies + 1, dtype=jnp.result_type(t, float))
        angles = jnp.asarray(t)[..., None] * freqs
        return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)

    def __call__(self, t: Array) -> Array:
        """Embed times of shape ``(...)`` into ``(..., features)``."""
        return self.linear2(jax.nn.silu(self.linear1(self.fourier(t))))


class _Residual(nnx.Module):
    """``h + W2 a(W1 LN(h))`` on the last axis."""

    def __init__(self, features: int, activation: str, *, rngs: nnx.Rngs) -> None:
        self.activation = activation
        self.norm = _layer_norm(features, rngs=rngs)
        self.linear1 = nnx.Linear(features, features, rngs=rngs)
        self.linear2 = nnx.Linear(features, features, rngs=rngs)

    def __call__(self, h: Array) -> Array:
        act = _activation(self.activation)
        return h + self.linear2(act(self.linear1(self.norm(h))))


class ResMLP(nnx.Module):
    r"""Residual MLP: a linear map at every width change and a residual block at every width.

    For ``hidden=(256,) * 5`` and input/output widths ``d_in``/``d_out`` this is
    ``Linear(d_in, 256)``, five residual blocks of width 256, ``Linear(256, d_out)`` and a final
    residual block of width ``d_out`` (the design of Rozet & Louppe's local Lorenz-63 score).

    Args:
        in_features: input width.
        out_features: output width.
        hidden: hidden widths (one residual block each).
        activation: activation name (``"silu"``, ``"relu"``, ``"gelu"``, ``"elu"``, ``"tanh"``).
        rngs: ``nnx.Rngs`` or an integer seed.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (256,) * 5,
        activation: str = "silu",
        *,
        rngs: nnx.Rngs | int = 0,
    ) -> None:
        rngs = _as_rngs(rngs)
        _activation(activation)
        hidden = tuple(int(h) for h in hidden)
        if in_features < 1 or out_features < 1 or any(h < 1 for h in hidden):
            raise ValueError("ResMLP widths must be positive integers")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        layers: list[nnx.Module] = []
        widths = (self.in_features, *hidden, self.out_features)
        for before, after in zip(widths[:-1], widths[1:], strict=True):
            if before != after:
                layers.append(nnx.Linear(before, after, rngs=rngs))
            layers.append(_Residual(after, activation, rngs=rngs))
        self.layers = nnx.List(layers)

    def __call__(self, h: Array) -> Array:
        """Map ``(..., in_features)`` to ``(..., out_features)``."""
        if h.shape[-1] != self.in_features:
            raise ValueError(f"ResMLP expects {self.in_features} input features, got {h.shape[-1]}")
        for layer in self.layers:
            h = layer(h)
        return h


class ModResidualBlock(nnx.Module):
    r"""Convolutional residual block modulated by an embedding:
    :math:`h + \mathrm{conv}(a(\mathrm{conv}(\mathrm{LN}(h + P e))))`, circular padding."""

    def __init__(
        self,
        channels: int,
        mod_features: int,
        spatial: int,
        kernel_size: int,
        activation: str,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        self.activation = activation
        self.project = nnx.Linear(mod_features, channels, rngs=rngs)
        self.norm = _layer_norm(channels, rngs=rngs)
        k = (kernel_size,) * spatial
        self.conv1 = _circular_conv(channels, channels, k, rngs=rngs)
        self.conv2 = _circular_conv(channels, channels, k, rngs=rngs)
        self.spatial = spatial

    def __call__(self, h: Array, e: Array) -> Array:
        act = _activation(self.activation)
        m = self.project(e)  # (B, C)
        m = m.reshape(m.shape[:1] + (1,) * self.spatial + m.shape[1:])
        return h + self.conv2(act(self.conv1(self.norm(h + m))))


class _Down(nnx.Module):
    def __init__(self, cin: int, cout: int, spatial: int, kernel_size: int, *, rngs) -> None:
        k = (kernel_size,) * spatial
        self.conv = _circular_conv(cin, cout, k, strides=2, rngs=rngs)

    def __call__(self, h: Array) -> Array:
        return self.conv(h)


class _Up(nnx.Module):
    def __init__(self, cin: int, cout: int, spatial: int, kernel_size: int, *, rngs) -> None:
        k = (kernel_size,) * spatial
        self.spatial = spatial
        self.norm = _layer_norm(cin, rngs=rngs)
        self.conv = _circular_conv(cin, cout, k, rngs=rngs)

    def __call__(self, h: Array) -> Array:
        h = self.norm(h)
        for axis in range(1, 1 + self.spatial):
            h = jnp.repeat(h, 2, axis=axis)
        return self.conv(h)


class UNet(nnx.Module):
    r"""U-Net with time modulation for periodic 1-D or 2-D fields (channel-last).

    Level :math:`i` works at resolution :math:`N / 2^i` with ``hidden_channels[i]`` channels and
    ``blocks[i]`` modulated residual blocks on the way down and as many on the way up; levels are
    joined by stride-2 circular convolutions (down) and nearest upsampling + convolution (up),
    with additive skip connections.

    Args:
        in_channels: input channels (state channels times window, plus context channels).
        out_channels: output channels.
        mod_features: width of the modulation (time embedding) vector.
        hidden_channels: channels per level, e.g. ``(96, 192, 384)``.
        blocks: residual blocks per level, e.g. ``(3, 3, 3)``.
        spatial: 1 or 2 spatial dimensions.
        kernel_size: convolution kernel size (odd).
        activation: activation name.
        rngs: ``nnx.Rngs`` or an integer seed.

    Spatial sizes must be divisible by :math:`2^{\text{levels}-1}`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mod_features: int,
        hidden_channels: Sequence[int] = (96, 192, 384),
        blocks: Sequence[int] = (3, 3, 3),
        spatial: int = 2,
        kernel_size: int = 3,
        activation: str = "silu",
        *,
        rngs: nnx.Rngs | int = 0,
    ) -> None:
        rngs = _as_rngs(rngs)
        _activation(activation)
        hidden_channels = tuple(int(c) for c in hidden_channels)
        blocks = tuple(int(b) for b in blocks)
        if spatial not in (1, 2):
            raise ValueError(f"UNet supports spatial=1 or 2, got {spatial}")
        if len(hidden_channels) != len(blocks) or not hidden_channels:
            raise ValueError(
                f"hidden_channels {hidden_channels} and blocks {blocks} must be non-empty "
                "sequences of equal length"
            )
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.spatial = int(spatial)
        self.levels = len(blocks)
        k = (kernel_size,) * spatial
        self.head = _circular_conv(in_channels, hidden_channels[0], k, rngs=rngs)
        self.tail = _circular_conv(hidden_channels[0], out_channels, k, rngs=rngs)

        def block(c: int) -> ModResidualBlock:
            return ModResidualBlock(c, mod_features, spatial, kernel_size, activation, rngs=rngs)

        self.down = nnx.List(
            [
                _Down(hidden_channels[i - 1], hidden_channels[i], spatial, kernel_size, rngs=rngs)
                for i in range(1, self.levels)
            ]
        )
        self.up = nnx.List(
            [
                _Up(hidden_channels[i], hidden_channels[i - 1], spatial, kernel_size, rngs=rngs)
                for i in range(1, self.levels)
            ]
        )
        self.descent = nnx.List(
            [nnx.List([block(c) for _ in range(b)]) for c, b in zip(hidden_channels, blocks, strict=True)]
        )
        self.ascent = nnx.List(
            [nnx.List([block(c) for _ in range(b)]) for c, b in zip(hidden_channels, blocks, strict=True)]
        )

    def __call__(self, h: Array, e: Array) -> Array:
        """Map ``(B, *spatial, in_channels)`` and modulation ``(B, mod)`` to ``(B, *spatial, out)``."""
        if h.ndim != self.spatial + 2:
            raise ValueError(
                f"UNet expects inputs of shape (batch, *spatial[{self.spatial}], channels), "
                f"got {h.shape}"
            )
        if h.shape[-1] != self.in_channels:
            raise ValueError(f"UNet expects {self.in_channels} input channels, got {h.shape[-1]}")
        factor = 2 ** (self.levels - 1)
        if any(n % factor for n in h.shape[1:-1]):
            raise ValueError(
                f"spatial sizes {h.shape[1:-1]} must be divisible by {factor} "
                f"({self.levels} levels)"
            )
        h = self.head(h)
        memory = []
        for i in range(self.levels):
            if i > 0:
                h = self.down[i - 1](h)
            for blk in self.descent[i]:
                h = blk(h, e)
            memory.append(h)
        memory.pop()
        for i in reversed(range(self.levels)):
            for blk in self.ascent[i]:
                h = blk(h, e)
            if i > 0:
                h = self.up[i - 1](h) + memory.pop()
        return self.tail(h)

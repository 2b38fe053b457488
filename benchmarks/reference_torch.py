r"""The reference implementation's work per training step and per sampling step, in PyTorch.

This module re-implements, for the Lorenz-63 experiment only, what the PyTorch code of Rozet &
Louppe (2023, "Score-based data assimilation", github.com/francois-rozet/sda) executes in one
optimiser step and in one reverse-diffusion step, so that ``train_throughput.py --reference`` and
``sampling.py --speed --reference`` can time it side by side with this library, in the same
process and on the same cores. It is written from the paper and from reading that code; none of
its text is copied. It needs ``torch`` and is imported only when ``torch`` can be imported.

What is matched (structure, shapes, dtypes, threads):

* **Network** (the reference's local score for Lorenz-63, window 5, width 256, depth 5, SiLU,
  32 time-embedding features): time :math:`t` -> Fourier features
  :math:`(\cos \pi j t, \sin \pi j t)_{j=1}^{16}` -> ``Linear(32, 256)``, SiLU,
  ``Linear(256, 32)``; concatenated with the flattened window (15 values) -> ``Linear(47, 256)``,
  five residual blocks :math:`h + W_2\,\mathrm{SiLU}(W_1\,\mathrm{LN}(h))` of width 256,
  ``Linear(256, 15)`` and one residual block of width 15. LayerNorm has no affine parameters,
  :math:`\epsilon = 10^{-5}` and the Bessel-corrected variance (``torch.var_mean``'s default, as
  the reference's ``zuko`` LayerNorm); ``bessel=False`` gives the biased variance of
  ``flax.nnx.LayerNorm`` (used to check this port against the library's network).
* **Composition over a trajectory** of 65 states: all 61 windows of 5 states go through the
  network in one batched call (``Tensor.unfold``), and the trajectory's noise takes the centre
  output of each window plus the first/last two outputs of the first/last window.
* **SDE**: variance preserving, :math:`\mu(t) = \cos(\arccos(\sqrt{\eta})\,t)^2`,
  :math:`\sigma(t) = \sqrt{1 - \mu(t)^2 + \eta^2}`, :math:`\eta = 10^{-3}`.
* **Training step** (batch 64 windows of 5 states, flattened to 15 values): :math:`t \sim U(0,1)`
  per window, :math:`x_t = \mu(t) x + \sigma(t) \varepsilon`, loss
  :math:`\mathrm{mean}(\varepsilon_\phi(x_t, t) - \varepsilon)^2`, ``backward()``,
  ``torch.optim.AdamW(lr=1e-3, weight_decay=1e-3)`` step (PyTorch's default implementation
  choice), ``zero_grad()``, the loss kept as a detached tensor, and a linear learning-rate decay
  stepped once per epoch (``LambdaLR``), as the reference's training loop does.
* **Reverse step** (1024 trajectories of 65 states in one batch, ``torch.no_grad()`` outside the
  guidance): the guided noise of the reference's Gaussian likelihood score,
  :math:`\varepsilon - \sigma(t) \nabla_{x_t} \log N(y \mid A \hat{x}(x_t), s^2 +
  \gamma (\sigma/\mu)^2)` with :math:`\hat{x} = (x_t - \sigma \varepsilon)/\mu` and the gradient
  by ``torch.autograd.grad`` through the composed network over all 61 windows; the predictor
  :math:`x \leftarrow r x + (\sigma(s) - r \sigma(t))\,\varepsilon_y(x, t)`,
  :math:`r = \mu(s)/\mu(t)`; then ``corrections`` Langevin steps with
  :math:`\delta = \tau / \mathrm{mean}(\varepsilon_y^2)` per trajectory and
  :math:`x \leftarrow x - (\delta \varepsilon_y + \sqrt{2\delta} z)\,\sigma(s)`. The paper's
  Lorenz "lo" setting: :math:`A x = x_{::8, :1}`, :math:`s = 0.05`, :math:`\gamma = 3 \cdot
  10^{-2}`, :math:`\tau = 0.25`.
* float32 everywhere, PyTorch's default intra-op threads (``torch.get_num_threads()``), eager
  mode (no ``torch.compile``, no TorchScript), CPU.

What differs from the reference (each difference makes the reference here, if anything,
slightly *faster* than the original, i.e. the ratio against it conservative):

* by default (``Trainer(loader="gather")``) training windows are drawn by one vectorised gather
  from an in-memory tensor in the training process, instead of the reference's ``DataLoader``
  with one worker process collating 64 ``__getitem__`` calls (on a 2-core machine that worker
  competes for the cores); ``loader="dataloader"`` does it the reference's way. The per-epoch
  validation pass and the progress bar are not run;
* no Weights & Biases logging, no ``tqdm`` bar in the sampler;
* weights are random (or copied from a library score, :func:`from_local_score`); the cost of a
  step does not depend on them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

#: PyTorch's own choice of intra-op threads on this machine (read before anyone changes it).
DEFAULT_THREADS = torch.get_num_threads()

__all__ = [
    "LayerNorm",
    "TimeFeatures",
    "ResidualMLP",
    "WindowNet",
    "ComposedScore",
    "VPSchedule",
    "Trainer",
    "GaussianGuidance",
    "Sampler",
    "from_local_score",
    "matmul_gflops",
    "describe",
]


class LayerNorm(nn.Module):
    """Standardise the last axis, without affine parameters."""

    def __init__(self, eps: float = 1e-5, bessel: bool = True) -> None:
        super().__init__()
        self.eps, self.bessel = eps, bessel

    def forward(self, h: Tensor) -> Tensor:
        var, mean = torch.var_mean(h, dim=-1, keepdim=True, correction=int(self.bessel))
        return (h - mean) / torch.sqrt(var + self.eps)


class TimeFeatures(nn.Module):
    """Fourier features of :math:`t` through a two-layer SiLU MLP."""

    def __init__(self, features: int = 32, frequencies: int = 16, hidden: int = 256) -> None:
        super().__init__()
        self.register_buffer("omega", math.pi * torch.arange(1, frequencies + 1,
                                                             dtype=torch.float32))
        self.inner = nn.Linear(2 * frequencies, hidden)
        self.outer = nn.Linear(hidden, features)

    def forward(self, t: Tensor) -> Tensor:
        angles = t[..., None] * self.omega
        return self.outer(nn.functional.silu(self.inner(torch.cat((angles.cos(), angles.sin()),
                                                                   dim=-1))))


class _Block(nn.Module):
    def __init__(self, width: int, bessel: bool) -> None:
        super().__init__()
        self.norm = LayerNorm(bessel=bessel)
        self.first = nn.Linear(width, width)
        self.second = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.second(nn.functional.silu(self.first(self.norm(h))))


class ResidualMLP(nn.Module):
    """A linear map at every change of width and one residual block per width."""

    def __init__(self, n_in: int, n_out: int, widths: tuple[int, ...] = (256,) * 5,
                 bessel: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        sizes = (n_in, *widths, n_out)
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            if a != b:
                layers.append(nn.Linear(a, b))
            layers.append(_Block(b, bessel))
        self.layers = nn.ModuleList(layers)

    def forward(self, h: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h)
        return h


class WindowNet(nn.Module):
    """Noise of flattened windows ``(..., window * 3)`` at times ``t`` (broadcast)."""

    def __init__(self, window: int = 5, features: int = 3, width: int = 256, depth: int = 5,
                 embedding: int = 32, bessel: bool = True) -> None:
        super().__init__()
        self.window, self.features = window, features
        self.time = TimeFeatures(embedding)
        self.mlp = ResidualMLP(window * features + embedding, window * features,
                               (width,) * depth, bessel)

    def forward(self, w: Tensor, t: Tensor) -> Tensor:
        e = self.time(t)
        e = e.expand(*w.shape[:-1], e.shape[-1]) if e.dim() == 1 else e
        return self.mlp(torch.cat((w, e), dim=-1))


class ComposedScore(nn.Module):
    """The window network stitched over whole trajectories ``(B, L, 3)`` at a scalar ``t``."""

    def __init__(self, net: WindowNet) -> None:
        super().__init__()
        self.net = net
        self.k = net.window // 2

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        k, n = self.k, 2 * self.k + 1
        w = x.unfold(1, n, 1).movedim(-1, 2).flatten(2, 3)  # (B, L - 2k, n * 3)
        e = self.net(w, t).unflatten(2, (n, -1))  # (B, L - 2k, n, 3)
        return torch.cat((e[:, 0, :k], e[:, :, k], e[:, -1, k + 1:]), dim=1)


class VPSchedule:
    """The cosine VP schedule."""

    def __init__(self, eta: float = 1e-3) -> None:
        self.eta = eta
        self.a = math.acos(math.sqrt(eta))

    def mu(self, t: Tensor) -> Tensor:
        return torch.cos(self.a * t) ** 2

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(1 - self.mu(t) ** 2 + self.eta**2)


class _Windows(torch.utils.data.Dataset):
    """Item ``i``: a random window of trajectory ``i``, flattened (the reference's dataset)."""

    def __init__(self, data: Tensor, window: int) -> None:
        self.data, self.window = data, window

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Tensor:
        x = self.data[i]
        j = int(torch.randint(0, len(x) - self.window + 1, size=()))
        return x[j:j + self.window].flatten()


class Trainer:
    """Denoising score matching with AdamW on windows of ``data`` ``(N, T, 3)``.

    ``loader="gather"`` draws each batch by one vectorised gather in this process;
    ``"dataloader"`` uses a shuffled ``torch.utils.data.DataLoader`` with one persistent worker
    process over a dataset whose item ``i`` is a random window of trajectory ``i`` (what the
    reference does; an epoch is one pass over the trajectories, its last batch may be smaller).
    """

    def __init__(self, net: WindowNet, data: np.ndarray, batch: int = 64, lr: float = 1e-3,
                 weight_decay: float = 1e-3, epochs: int = 4096, seed: int = 0,
                 loader: str = "gather") -> None:
        if loader not in ("gather", "dataloader"):
            raise ValueError(f"loader must be 'gather' or 'dataloader', got {loader!r}")
        self.net, self.batch = net, batch
        self.data = torch.tensor(np.asarray(data, np.float32))
        self.sched = VPSchedule()
        self.generator = torch.Generator().manual_seed(seed)
        self.opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        self.lr = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: 1 - e / epochs)
        self.steps_per_epoch = -(-len(self.data) // batch)
        self.offsets = torch.arange(net.window)
        self.losses: list[Tensor] = []
        self.n = 0
        self.loader, self.batches = None, None
        if loader == "dataloader":  # one persistent worker process, shuffled, as the reference
            self.loader = torch.utils.data.DataLoader(
                _Windows(self.data, net.window), batch_size=batch, shuffle=True, num_workers=1,
                persistent_workers=True, generator=torch.Generator().manual_seed(seed))
            self.steps_per_epoch = len(self.loader)

    def windows(self) -> Tensor:
        if self.loader is not None:
            while True:
                if self.batches is None:
                    self.batches = iter(self.loader)
                try:
                    return next(self.batches)
                except StopIteration:
                    self.batches = None
        n, length = self.data.shape[:2]
        g = self.generator
        i = torch.randint(n, (self.batch,), generator=g)
        j = torch.randint(length - self.net.window + 1, (self.batch,), generator=g)
        return self.data[i[:, None], j[:, None] + self.offsets].flatten(1)  # (B, window * 3)

    def step(self) -> None:
        self.net.train()
        x = self.windows()
        t = torch.rand(x.shape[0], generator=self.generator)
        eps = torch.randn(x.shape, generator=self.generator)
        tt = t[:, None]
        x_t = self.sched.mu(tt) * x + self.sched.sigma(tt) * eps
        loss = (self.net(x_t, t) - eps).square().mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        self.losses.append(loss.detach())
        self.n += 1
        if self.n % self.steps_per_epoch == 0:  # the reference steps its scheduler per epoch
            torch.stack(self.losses).mean().item()
            self.losses.clear()
            self.lr.step()

    def run(self, steps: int, max_seconds: float | None = None) -> tuple[int, float]:
        """At most ``steps`` optimiser steps, stopping early after ``max_seconds``; returns
        ``(steps done, wall seconds)``."""
        t0 = time.perf_counter()
        done = 0
        while done < steps and (max_seconds is None or time.perf_counter() - t0 < max_seconds):
            self.step()
            done += 1
        if self.losses:
            torch.stack(self.losses).mean().item()
        return done, time.perf_counter() - t0


class GaussianGuidance:
    r"""The reference's Gaussian likelihood score, returned as a guided noise
    :math:`\varepsilon - \sigma \nabla_{x_t} \log p(y \mid x_t)`."""

    def __init__(self, score: ComposedScore, y: Tensor, A: Callable[[Tensor], Tensor],
                 std: float, gamma: float = 3e-2, sched: VPSchedule | None = None) -> None:
        self.score, self.y, self.A = score, y, A
        self.std, self.gamma = torch.as_tensor(std), torch.as_tensor(gamma)
        self.sched = VPSchedule() if sched is None else sched

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        mu, sigma = self.sched.mu(t), self.sched.sigma(t)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = self.score(x, t)
            x_hat = (x - sigma * eps) / mu
            r = self.y - self.A(x_hat)
            var = self.std**2 + self.gamma * (sigma / mu) ** 2
            log_p = -(r**2 / var).sum() / 2
        (g,) = torch.autograd.grad(log_p, x)
        return eps - sigma * g


class Sampler:
    """Predictor–corrector reverse steps of ``eps`` over a batch of trajectories."""

    def __init__(self, eps: Callable[[Tensor, Tensor], Tensor], sched: VPSchedule | None = None,
                 corrections: int = 1, tau: float = 0.25, seed: int = 0) -> None:
        self.eps, self.corrections, self.tau = eps, corrections, tau
        self.sched = VPSchedule() if sched is None else sched
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, x: Tensor, t: Tensor, dt: float) -> Tensor:
        mu, sigma = self.sched.mu, self.sched.sigma
        s = t - dt
        with torch.no_grad():
            r = mu(s) / mu(t)
            x = r * x + (sigma(s) - r * sigma(t)) * self.eps(x, t)
            for _ in range(self.corrections):
                z = torch.randn(x.shape, generator=self.generator)
                e = self.eps(x, s)
                delta = self.tau / e.square().mean(dim=(-2, -1), keepdim=True)
                x = x - (delta * e + torch.sqrt(2 * delta) * z) * sigma(s)
        return x

    def run(self, x: Tensor, steps: int, total: int = 256,
            max_seconds: float | None = None) -> tuple[Tensor, int, float]:
        """At most ``steps`` reverse steps of a ``total``-step grid from t = 1 (at least one;
        no new step after ``max_seconds``); returns ``(x, steps done, wall seconds)``."""
        times = torch.linspace(1, 0, total + 1)
        t0 = time.perf_counter()
        done = 0
        while done < steps and (done == 0 or max_seconds is None
                                or time.perf_counter() - t0 < max_seconds):
            x = self.step(x, times[done], 1 / total)
            done += 1
        return x, done, time.perf_counter() - t0


def from_local_score(score, bessel: bool = True) -> ComposedScore:
    """A :class:`ComposedScore` holding the weights of a library ``LocalScore.mlp`` (for checking
    this port against the library: with ``bessel=False`` both compute the same function)."""
    from flax import nnx

    cfg = score.config
    net = WindowNet(int(cfg["window"]), int(cfg["features"]), int(cfg["hidden"]),
                    int(cfg["depth"]), int(cfg["embedding"]), bessel=bessel)
    ours = [m for _, m in nnx.iter_graph(score) if isinstance(m, nnx.Linear)]
    theirs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} linear layers in the score, {len(theirs)} here")
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            b.weight.copy_(torch.tensor(np.array(a.kernel[...]).T))
            b.bias.copy_(torch.tensor(np.array(a.bias[...])))
    return ComposedScore(net)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 ``n x n`` matmul rate of PyTorch on this machine, GFLOP/s."""
    a = torch.randn(n, n)
    a @ a
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def describe() -> str:
    return (f"torch {torch.__version__} (default {DEFAULT_THREADS} intra-op threads), float32, "
            "eager")

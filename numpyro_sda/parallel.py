r"""Sharding over posterior draws (and training batches) with :mod:`jax.sharding`.

Posterior draws are independent: a function of one key (one reverse diffusion, one Gibbs chain)
is :func:`jax.vmap`-ed over keys, and the keys' leading axis -- the *draws* axis -- is split over
the devices of a one-dimensional :class:`~jax.sharding.Mesh` with a
:class:`~jax.sharding.NamedSharding` ``P("draws")``. Everything else (weights, observations) is
replicated. The compiled program is the single-device one with a per-device batch of
:math:`\lceil n / D \rceil` draws; XLA inserts no communication for vmapped work.

Padding: :math:`n` draws over :math:`D` devices are padded to :math:`D \lceil n / D \rceil`
by repeating the last row (a repeated key: wasted work, never a new random stream) and the
padding is trimmed from the results, so every function here returns exactly ``n`` draws.

Equality with one device: the keys are split on the host before sharding, and with
``jax_threefry_partitionable`` (JAX's default since 0.5) random bits do not depend on how an
array is sharded, so draw :math:`i` is the same computation on any number of devices; results
agree with a single-device run to float rounding (XLA may fuse a smaller per-device batch
differently). :func:`check_partitionable` raises if the flag was switched off.

Interacting ensembles (particle filters, EnKF) cannot be vmapped per member; jit them as usual
and pin the member axis with :func:`constrain_draws` inside the program: GSPMD partitions the
per-member work and inserts the collectives (means, covariances, resampling gathers) itself.
:class:`EnsembleSharding` bundles this for the baselines
(:class:`~numpyro_sda.baselines.ParticleSmoother`, :class:`~numpyro_sda.baselines.EnKF`,
:class:`~numpyro_sda.baselines.EnKS`): it resolves their ``mesh=`` setting (:func:`resolve_mesh`:
``None`` = all visible devices, ``False`` = one device, or a user :class:`~jax.sharding.Mesh`
with a ``"draws"`` axis), splits the member axis over the largest number of devices of that
axis that divides the ensemble size (:math:`\gcd(N, D)`; a warning says when that is fewer than
:math:`D`, and one device means the unsharded program), pins arrays inside the program, and
maps chunked per-member work (``lax.map`` with a batch size) over each device's own members.

Multiple hosts: call :func:`jax.distributed.initialize` on every process before any other JAX
call (on Slurm/TPU/Kubernetes it reads the coordinator from the environment; otherwise pass
``coordinator_address``, ``num_processes`` and ``process_id``). :func:`jax.devices` then lists
the devices of all processes and :func:`draws_mesh` spans them. Every process runs the same
program with the same host inputs (same key, same observations): :func:`shard_draws` builds
global arrays with :func:`jax.make_array_from_callback` (each process materialises only its own
rows) and :func:`gather_draws` returns the full, trimmed result on every process
(:func:`jax.experimental.multihost_utils.process_allgather`).

Example::

    from numpyro_sda.parallel import draws_mesh, sharded_vmap

    mesh = draws_mesh()                              # all visible devices, axis "draws"
    sample = sharded_vmap(one_draw, mesh)            # one_draw(key) -> (L, *state_shape)
    xs = sample(jax.random.split(key, 1000))         # (1000, L, *state_shape)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DRAWS",
    "draws_mesh",
    "draws_sharding",
    "replicated",
    "num_shards",
    "padded_size",
    "pad_draws",
    "shard_draws",
    "gather_draws",
    "constrain_draws",
    "constrain_replicated",
    "check_mesh",
    "resolve_mesh",
    "EnsembleSharding",
    "sharded_jit",
    "sharded_vmap",
    "check_partitionable",
    "block_interruptibly",
]

DRAWS = "draws"


def draws_mesh(devices: Sequence[jax.Device] | None = None, *, axis: str = DRAWS) -> Mesh:
    """A one-dimensional mesh named ``axis`` over ``devices`` (default: :func:`jax.devices`,
    i.e. every device of every process after :func:`jax.distributed.initialize`)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("draws_mesh needs at least one device")
    if not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(f"devices must be jax.Device objects, got {devices!r}")
    return Mesh(np.asarray(devices, dtype=object), (axis,))


def _mesh(mesh: Mesh | None, axis: str) -> Mesh:
    if mesh is None:
        return draws_mesh(axis=axis)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.axis_names:
        raise ValueError(
            f"the mesh has axes {mesh.axis_names}, none named {axis!r}: build it with "
            f"draws_mesh() or pass axis= one of its axis names"
        )
    return mesh


def draws_sharding(mesh: Mesh | None = None, *, axis: str = DRAWS) -> NamedSharding:
    """Leading axis split over ``axis``; other mesh axes (if any) replicate."""
    return NamedSharding(_mesh(mesh, axis), P(axis))


def replicated(mesh: Mesh | None = None, *, axis: str = DRAWS) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(_mesh(mesh, axis), P())


def num_shards(mesh: Mesh | None = None, *, axis: str = DRAWS) -> int:
    """How many pieces the draws axis is split into (devices along ``axis``)."""
    return int(_mesh(mesh, axis).shape[axis])


def padded_size(n: int, mesh: Mesh | None = None, *, axis: str = DRAWS) -> int:
    r""":math:`D \lceil n / D \rceil`: ``n`` rounded up to a multiple of the shard count."""
    if int(n) < 1:
        raise ValueError(f"the number of draws must be >= 1, got {n}")
    d = num_shards(mesh, axis=axis)
    return -(-int(n) // d) * d


def _leading(tree: Any) -> int:
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in jax.tree_util.tree_leaves(tree)}
    if not sizes:
        raise ValueError("no arrays to shard")
    if -1 in sizes or len(sizes) != 1:
        raise ValueError(
            f"every array must have the same leading (draws) axis, got leading sizes {sizes} "
            "(-1: a scalar)"
        )
    return sizes.pop()


def pad_draws(tree: Any, size: int) -> Any:
    """Pad the leading axis of every leaf to ``size`` by repeating its last row (works for
    numpy, JAX and typed-key arrays)."""
    n = _leading(tree)
    if size < n:
        raise ValueError(f"cannot pad {n} draws to {size}")
    if size == n:
        return tree
    idx = np.minimum(np.arange(size), n - 1)
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = _put(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    host = np.asarray(x)  # the same value on every process; each one fills its own rows
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_draws(
    tree: Any, mesh: Mesh | None = None, *, axis: str = DRAWS
) -> tuple[Any, int]:
    """Pad the leading (draws) axis of every leaf to a multiple of the shard count and place it
    with :func:`draws_sharding`. Returns ``(sharded_tree, n)`` with ``n`` the original number
    of draws (pass it to :func:`gather_draws`)."""
    mesh = _mesh(mesh, axis)
    n = _leading(tree)
    padded = pad_draws(tree, padded_size(n, mesh, axis=axis))
    sharding = draws_sharding(mesh, axis=axis)
    return jax.tree_util.tree_map(lambda x: _put(x, sharding), padded), n


def gather_draws(tree: Any, n: int | None) -> Any:
    """The first ``n`` draws of every leaf (the padding trimmed; ``n=None``: every row, e.g.
    for replicated results). On several processes the global arrays are first gathered, so
    every process gets the full result."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
        return x if n is None else x[:n]

    return jax.tree_util.tree_map(one, tree)


def constrain_draws(
    tree: Any, mesh: Mesh | None = None, *, axis: str = DRAWS, dim: int = 0
) -> Any:
    """Inside a jitted program: pin axis ``dim`` (default: the leading one) of every leaf to
    the draws axis of the mesh (a :func:`jax.lax.with_sharding_constraint`); leaves with fewer
    dimensions, or whose size along ``dim`` is not a multiple of the shard count, are left to
    the compiler. Use it on particle/ensemble arrays (``dim=1`` for a stacked ``(L, N, ...)``
    history)."""
    mesh = _mesh(mesh, axis)
    d = num_shards(mesh, axis=axis)
    dim = int(dim)
    if dim < 0:
        raise ValueError(f"dim must be >= 0, got {dim}")
    sharding = NamedSharding(mesh, P(*([None] * dim), axis))

    def one(x):
        if d == 1 or np.ndim(x) <= dim or x.shape[dim] % d:
            return x
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree_util.tree_map(one, tree)


def constrain_replicated(tree: Any, mesh: Mesh | None = None, *, axis: str = DRAWS) -> Any:
    """Inside a jitted program: a full copy of every leaf on every device of the mesh (GSPMD
    all-gathers sharded operands). Used for the small ``(N,)`` bookkeeping of an ensemble
    (weights, resampling indices) so that it is computed from the same values, in the same
    order, as on one device."""
    mesh = _mesh(mesh, axis)
    if num_shards(mesh, axis=axis) == 1:
        return tree
    sharding = replicated(mesh, axis=axis)
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def check_mesh(mesh: Any, *, axis: str = DRAWS, name: str = "mesh") -> None:
    """Validate a ``mesh=`` setting: ``None`` (all visible devices), ``False`` (one device) or
    a :class:`~jax.sharding.Mesh` with an ``axis`` axis; raise a ``TypeError`` /
    ``ValueError`` that says which."""
    if mesh is None or mesh is False:
        return
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{name} must be None (shard over all visible devices), False (one device) or a "
            f"jax.sharding.Mesh with a {axis!r} axis, got {mesh!r}"
        )
    if axis not in mesh.axis_names:
        raise ValueError(
            f"{name} has axes {mesh.axis_names}, none named {axis!r}: build it with "
            f"numpyro_sda.parallel.draws_mesh(devices) or name one of its axes {axis!r}"
        )


def resolve_mesh(mesh: Mesh | None | bool, *, axis: str = DRAWS) -> Mesh | None:
    """The mesh a ``mesh=`` setting stands for: ``None`` -> :func:`draws_mesh` (all visible
    devices), ``False`` -> ``None`` (no sharding), a :class:`~jax.sharding.Mesh` -> itself
    (checked by :func:`check_mesh`)."""
    check_mesh(mesh, axis=axis)
    if mesh is False:
        return None
    return draws_mesh(axis=axis) if mesh is None else mesh


def _sub_mesh(mesh: Mesh, size: int, axis: str) -> Mesh:
    """The first ``size`` devices along ``axis`` of ``mesh`` (other axes kept)."""
    k = mesh.axis_names.index(axis)
    return Mesh(np.take(mesh.devices, np.arange(size), axis=k), mesh.axis_names)


class EnsembleSharding:
    r"""How an interacting ensemble (particles, EnKF members) is laid out over devices.

    Build it with :meth:`for_ensemble` from a ``mesh=`` setting and the ensemble size
    :math:`N`. With :math:`D` devices along the ``"draws"`` axis, the members are split over
    :math:`g = \gcd(N, D)` of them (all of them when :math:`D` divides :math:`N`); fewer than
    :math:`D` is announced by a ``RuntimeWarning``, and :math:`g = 1` gives ``mesh=None``: the
    methods below are then identities and the program is the single-device one.

    Inside the jitted program, :meth:`split` pins a member axis over the devices, :meth:`whole`
    replicates (GSPMD all-gathers), :meth:`map` is ``lax.map`` over each device's own members.
    Outside, :meth:`place` puts the program's inputs (the key) on every device of the mesh and
    :meth:`fetch` returns globally complete results (gathered across processes).
    """

    def __init__(self, mesh: Mesh | None = None, *, axis: str = DRAWS) -> None:
        if mesh is not None:
            check_mesh(mesh, axis=axis)
            if num_shards(mesh, axis=axis) == 1:
                mesh = None
        self.mesh, self.axis = mesh, axis

    @classmethod
    def for_ensemble(
        cls, mesh: Mesh | None | bool, size: int, *, what: str = "members", axis: str = DRAWS,
        stacklevel: int = 1,
    ) -> EnsembleSharding:
        """Resolve a ``mesh=`` setting (see :func:`resolve_mesh`) for an ensemble of ``size``
        members named ``what`` (for the warning; ``stacklevel`` counts frames as
        :func:`warnings.warn` does, from the caller: 1 attributes it to the caller)."""
        size = int(size)
        if size < 1:
            raise ValueError(f"the number of {what} must be >= 1, got {size}")
        full = resolve_mesh(mesh, axis=axis)
        if full is None:
            return cls(None, axis=axis)
        d = num_shards(full, axis=axis)
        g = math.gcd(size, d)
        if g < d:
            warnings.warn(
                f"{size} {what} are not a multiple of the {d} devices of the mesh's {axis!r} "
                f"axis: they are split over {g} device{'s' if g > 1 else ''} (choose a "
                f"multiple of {d} to use them all, or pass mesh=False for one device)",
                RuntimeWarning, stacklevel=stacklevel + 1,
            )
        if g == 1:
            return cls(None, axis=axis)
        check_partitionable()
        return cls(full if g == d else _sub_mesh(full, g, axis), axis=axis)

    @property
    def shards(self) -> int:
        """Number of devices the members are split over (1: not sharded)."""
        return 1 if self.mesh is None else num_shards(self.mesh, axis=self.axis)

    def padded(self, n: int) -> int:
        """``n`` rounded up to a multiple of :attr:`shards`."""
        d = self.shards
        return -(-int(n) // d) * d

    def split(self, tree: Any, dim: int = 0) -> Any:
        """Pin axis ``dim`` of every leaf over the devices (see :func:`constrain_draws`)."""
        if self.mesh is None:
            return tree
        return constrain_draws(tree, self.mesh, axis=self.axis, dim=dim)

    def whole(self, tree: Any) -> Any:
        """A full copy of every leaf on every device (see :func:`constrain_replicated`)."""
        if self.mesh is None:
            return tree
        return constrain_replicated(tree, self.mesh, axis=self.axis)

    def map(self, fn: Callable[[Any], Any], xs: Any, batch_size: int) -> Any:
        """``jax.lax.map(fn, xs, batch_size=batch_size)`` with the leading axis of ``xs``
        split over the devices: each device maps over its own members in batches of at most
        ``batch_size`` (a plain ``lax.map`` would scan over the split axis and gather it).
        The leading size must be a multiple of :attr:`shards`; the result is split."""
        d = self.shards
        if d == 1:
            return jax.lax.map(fn, xs, batch_size=batch_size)
        n = _leading(xs)
        if n % d:
            raise ValueError(f"{n} members cannot be split evenly over {d} devices")
        per = n // d
        blocks = self.split(jax.tree_util.tree_map(
            lambda x: x.reshape(d, per, *x.shape[1:]), xs))
        out = jax.vmap(lambda b: jax.lax.map(fn, b, batch_size=min(int(batch_size), per)))(
            blocks)
        out = self.split(out)
        return self.split(jax.tree_util.tree_map(lambda y: y.reshape(n, *y.shape[2:]), out))

    def place(self, tree: Any) -> Any:
        """Outside the program: every leaf replicated on the mesh (a no-op without one)."""
        if self.mesh is None:
            return tree
        rep = replicated(self.mesh, axis=self.axis)
        return jax.tree_util.tree_map(lambda x: _put(x, rep), tree)

    def fetch(self, tree: Any) -> Any:
        """Outside the program: the results, gathered across processes when they span
        several (see :func:`gather_draws`)."""
        if self.mesh is None:
            return tree
        return gather_draws(tree, None)

    def __repr__(self) -> str:
        devices = "one device" if self.mesh is None else f"Mesh({dict(self.mesh.shape)})"
        return f"EnsembleSharding({devices})"


def _axes(in_axes: int | None | Sequence[int | None], nargs: int) -> tuple[int | None, ...]:
    axes = (in_axes,) * nargs if in_axes is None or isinstance(in_axes, int) else tuple(in_axes)
    if len(axes) != nargs or any(a not in (0, None) for a in axes):
        raise ValueError(
            f"in_axes must be 0 or None per argument ({nargs} arguments), got {in_axes!r}"
        )
    return axes


def sharded_jit(
    fn: Callable[..., Any],
    mesh: Mesh | None = None,
    *,
    axis: str = DRAWS,
    in_axes: int | None | Sequence[int | None] = 0,
    nargs: int = 1,
) -> Callable[..., Any]:
    """:func:`jax.jit` of a function *already batched over draws* (e.g. SDA's
    ``batch(keys) -> (xs, log_lik, params)``) with the ``in_axes == 0`` arguments and every
    output split over the draws axis and the ``None`` arguments replicated.

    The draws axis of the inputs must already be a multiple of :func:`num_shards` (see
    :func:`padded_size`); the result supports ``.lower(...).compile()`` like any jitted
    function."""
    mesh = _mesh(mesh, axis)
    axes = _axes(in_axes, nargs)
    split, rep = draws_sharding(mesh, axis=axis), replicated(mesh, axis=axis)
    return jax.jit(
        fn,
        in_shardings=tuple(split if a == 0 else rep for a in axes),
        out_shardings=split,
    )


def sharded_vmap(
    fn: Callable[..., Any],
    mesh: Mesh | None = None,
    *,
    axis: str = DRAWS,
    in_axes: int | None | Sequence[int | None] = 0,
) -> Callable[..., Any]:
    """``fn`` of ONE draw, vmapped over the leading axis of its ``in_axes == 0`` arguments,
    compiled once, sharded over the mesh, padded and trimmed: ``sharded_vmap(f)(keys)`` equals
    ``jax.vmap(f)(keys)`` (to float rounding) for any number of keys and devices.

    Every output leaf gets a leading draws axis. ``None`` arguments are broadcast (replicated).
    """
    mesh = _mesh(mesh, axis)
    compiled: dict[int, Callable[..., Any]] = {}

    def run(*args: Any) -> Any:
        axes = _axes(in_axes, len(args))
        mapped = [a for a, ax in zip(args, axes, strict=True) if ax == 0]
        if not mapped:
            raise ValueError("sharded_vmap needs at least one argument mapped over draws")
        n = _leading(mapped)
        size = padded_size(n, mesh, axis=axis)
        if len(args) not in compiled:
            compiled[len(args)] = sharded_jit(
                jax.vmap(fn, in_axes=axes), mesh, axis=axis, in_axes=axes, nargs=len(args)
            )
        split, rep = draws_sharding(mesh, axis=axis), replicated(mesh, axis=axis)
        placed = [
            jax.tree_util.tree_map(lambda x: _put(x, split), pad_draws(a, size))
            if ax == 0
            else jax.tree_util.tree_map(lambda x: _put(x, rep), a)
            for a, ax in zip(args, axes, strict=True)
        ]
        return gather_draws(compiled[len(args)](*placed), n)

    return run


def check_partitionable() -> None:
    """Raise when ``jax_threefry_partitionable`` is off: then random draws *inside* a sharded
    program (e.g. training batches) would depend on the device count."""
    if not jax.config.jax_threefry_partitionable:
        raise RuntimeError(
            "jax_threefry_partitionable is disabled: random numbers generated inside sharded "
            "programs would differ from a single-device run; enable it with "
            "jax.config.update('jax_threefry_partitionable', True)"
        )


def block_interruptibly(tree: Any, poll: float = 0.05) -> Any:
    """Wait for every array of ``tree`` like :func:`jax.block_until_ready`, but in short sleeps,
    so that Ctrl-C (``KeyboardInterrupt``) is raised within ``poll`` seconds instead of after
    the computation: a blocking wait inside XLA does not run Python's signal handlers. The
    abandoned computation finishes in the background."""
    import time

    leaves = [x for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)]
    delay = 1e-4
    while not all(x.is_ready() for x in leaves):
        time.sleep(delay)
        delay = min(2 * delay, poll)
    return tree

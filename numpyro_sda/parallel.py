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


def gather_draws(tree: Any, n: int) -> Any:
    """The first ``n`` draws of every leaf (the padding trimmed). On several processes the
    global arrays are first gathered, so every process gets the full result."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
        return x[:n]

    return jax.tree_util.tree_map(one, tree)


def constrain_draws(tree: Any, mesh: Mesh | None = None, *, axis: str = DRAWS) -> Any:
    """Inside a jitted program: pin the leading axis of every leaf to the draws axis (a
    :func:`jax.lax.with_sharding_constraint`); leaves whose leading size is not a multiple
    of the shard count are left to the compiler. Use it on particle/ensemble arrays."""
    mesh = _mesh(mesh, axis)
    d = num_shards(mesh, axis=axis)
    sharding = draws_sharding(mesh, axis=axis)

    def one(x):
        if d == 1 or np.ndim(x) == 0 or x.shape[0] % d:
            return x
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree_util.tree_map(one, tree)


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

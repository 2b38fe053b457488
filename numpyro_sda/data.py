r"""Trajectory datasets: simulation to HDF5, normalisation, and window sampling.

A dataset is a set of independent trajectories :math:`x^{(n)}_{1:T}` of a
:class:`~numpyro_sda.systems.DynamicalSystem`, split *by trajectory* into train / valid / test
(the paper's 80/10/10, Rozet & Louppe 2023, App. C). Score networks are trained on windows of
:math:`2k+1` consecutive states :math:`x^{(n)}_{i-k:i+k}` drawn uniformly over trajectories and
start times, in normalised coordinates :math:`\tilde{x} = (x - m) / s` with the system's
per-channel statistics.

Storage: one HDF5 file (h5py). Reasons: a single self-describing file (attributes carry the system
name and parameters, the normalisation statistics, the seed and a format version), chunked and
compressed datasets that can be larger than RAM and read lazily by trajectory blocks, no pickle.
States are stored in **physical** units (float32, one dataset per split, shape
``(N_split, T, *state_shape)``); readers normalise on the fly by default.

Atomicity: :func:`generate` writes ``path + ".tmp-<pid>"``, writes the ``complete`` attribute
last, closes the file and publishes it with :func:`os.replace`; an interrupted generation never
leaves a file at ``path``, and a file without the flag is refused on load.

Determinism: trajectory :math:`n` is simulated from the key
``fold_in(PRNGKey(seed), n)``, so a dataset depends on the seed only, not on the chunk size used
to generate it (nor on the number of trajectories: a larger dataset extends a smaller one), and
:func:`simulate` with ``PRNGKey(seed)`` returns the same trajectories in memory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from numpyro_sda.parallel import block_interruptibly
from numpyro_sda.systems.base import DynamicalSystem, check_length

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "generate",
    "simulate",
    "TrajectoryDataset",
    "load",
    "WindowSampler",
    "sample_windows",
    "split_counts",
]

FORMAT_VERSION = 1
FORMAT_NAME = "numpyro-sda-trajectories"
SPLITS = ("train", "valid", "test")
_CHUNK_BYTES = 1 << 20  # HDF5 chunk size target (1 MiB)
_SIM_BYTES = 64 << 20  # states simulated per generation chunk (64 MiB)


# ---------------------------------------------------------------------------- helpers
def split_counts(num_trajectories: int, splits: Sequence[float]) -> dict[str, int]:
    """Number of trajectories per split for fractions ``splits`` (2 or 3 values summing to 1).

    The valid and test counts are rounded; train takes the rest. Returns ``{name: count}`` for
    the names ``("train", "valid", "test")[:len(splits)]``.
    """
    num = check_length("num_trajectories", num_trajectories, 1)
    fr = [float(s) for s in splits]
    if not 1 <= len(fr) <= 3:
        raise ValueError(f"splits must have 1 to 3 fractions (train, valid, test), got {splits!r}")
    if any(not math.isfinite(s) or s < 0 for s in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"splits must be non-negative fractions summing to 1, got {splits!r}")
    counts = [int(round(num * s)) for s in fr[1:]]
    if sum(counts) > num:
        raise ValueError(f"splits {splits!r} leave no room for {num} trajectories")
    counts = [num - sum(counts), *counts]
    return dict(zip(SPLITS, counts, strict=False))


def _system_params(system: DynamicalSystem) -> dict[str, Any]:
    """JSON-serialisable public scalar attributes of a system (its parameters)."""
    out: dict[str, Any] = {}
    for k, v in sorted(vars(system).items()):
        if k.startswith("_"):
            continue
        if isinstance(v, bool | int | float | str) or v is None:
            out[k] = v
        elif isinstance(v, tuple) and all(isinstance(e, int | float) for e in v):
            out[k] = list(v)
        elif isinstance(v, np.ndarray | jax.Array) and np.size(v) <= 64:
            out[k] = np.asarray(v).tolist()
    return out


def _trajectory_keys(key: Array, start: int, stop: int) -> Array:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(start, stop, dtype=jnp.uint32))


def _simulator(system: DynamicalSystem, length: int, burn_in: int):
    """``keys (B,) -> (B, length, *state_shape)``: one trajectory per key, compiled once.

    Cached per (system, length, burn_in) for hashable systems, so repeated generations reuse
    the compiled simulator.
    """
    try:
        return _cached_simulator(system, length, burn_in)
    except TypeError:  # unhashable system
        return _make_simulator(system, length, burn_in)


def _make_simulator(system: DynamicalSystem, length: int, burn_in: int):
    @jax.jit
    def run(keys):
        return jax.vmap(lambda k: system.simulate(k, 1, length, burn_in)[0])(keys)

    return run


_cached_simulator = lru_cache(maxsize=16)(_make_simulator)


def _as_key(key: Array | int) -> Array:
    if isinstance(key, int | np.integer):
        return jax.random.PRNGKey(int(key))
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise TypeError(f"expected a PRNG key (jax.random.PRNGKey) or an int seed, got {key!r}")
    return key


def _default_chunk(num: int, length: int, state_bytes: int, chunk: int | None) -> int:
    if chunk is None:  # ~16 progress updates, at most ~64 MiB of states each
        chunk = max(1, min(_SIM_BYTES // (length * state_bytes), -(-num // 16)))
    return min(check_length("chunk_trajectories", chunk, 1), num)


def _check_finite(x: np.ndarray, start: int) -> None:
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if bad.any():
        idx = (np.flatnonzero(bad) + start).tolist()
        raise FloatingPointError(
            f"the simulation produced non-finite states in trajectories {idx[:10]}"
            f"{' ...' if len(idx) > 10 else ''}: the integrator is unstable for these settings"
        )


# ---------------------------------------------------------------------------- in memory
def simulate(
    system: DynamicalSystem,
    key: Array | int,
    num_trajectories: int,
    length: int,
    burn_in: int = 0,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    normalize: bool = True,
    chunk_trajectories: int | None = None,
) -> dict[str, Array]:
    """Simulate trajectories in memory and split them by trajectory.

    Args:
        system: the dynamical system.
        key: PRNG key or int seed; trajectory ``n`` uses ``fold_in(key, n)`` (same trajectories
            as :func:`generate` with ``seed``).
        num_trajectories, length, burn_in: as in :meth:`DynamicalSystem.simulate`.
        splits: fractions (train, valid[, test]).
        normalize: return normalised states (the coordinates of learned priors).
        chunk_trajectories: trajectories simulated together (as in :func:`generate`; bounds the
            working memory of expensive systems, the result does not depend on it).

    Returns:
        ``{split: (N_split, length, *state_shape)}`` float32 arrays (empty splits omitted).
    """
    if not isinstance(system, DynamicalSystem):
        raise TypeError(f"system must be a DynamicalSystem, got {type(system).__name__}")
    counts = split_counts(num_trajectories, splits)
    length = check_length("length", length, 1)
    burn_in = check_length("burn_in", burn_in, 0)
    key = _as_key(key)
    state_bytes = 4 * int(np.prod(system.state_shape))
    chunk = _default_chunk(num_trajectories, length, state_bytes, chunk_trajectories)
    run = _simulator(system, length, burn_in)
    parts = []
    for start in range(0, num_trajectories, chunk):
        stop = min(start + chunk, num_trajectories)
        # padded: one compile; Ctrl-C interrupts the wait within a fraction of a second
        x = block_interruptibly(run(_trajectory_keys(key, start, start + chunk)))[:stop - start]
        _check_finite(np.asarray(x), start)
        parts.append(x)
    x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
    if normalize:
        x = system.normalize(x)
    out, a = {}, 0
    for name, c in counts.items():
        if c:
            out[name] = x[a:a + c]
        a += c
    return out


# ---------------------------------------------------------------------------- on disk
def generate(
    system: DynamicalSystem,
    path: str | os.PathLike,
    *,
    num_trajectories: int,
    length: int,
    burn_in: int = 0,
    seed: int = 0,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    chunk_trajectories: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    compression: str | None = "gzip",
) -> Path:
    """Simulate a dataset of trajectories into an HDF5 file, atomically.

    Args:
        system: the dynamical system (its name, parameters and normalisation statistics are
            stored as attributes).
        path: destination file (``.h5``); its directory must exist.
        num_trajectories: total number of trajectories, split by trajectory.
        length: states per trajectory (after burn-in).
        burn_in: transitions discarded before the first stored state.
        seed: integer seed; trajectory ``n`` uses ``fold_in(PRNGKey(seed), n)``.
        splits: fractions (train, valid[, test]), trajectories assigned in order.
        chunk_trajectories: trajectories simulated per step (default: 1/16 of them, at most
            about 64 MiB of states). The result does not depend on it.
        progress: show a tqdm progress bar (trajectories).
        overwrite: replace an existing file (otherwise :class:`FileExistsError`).
        compression: HDF5 filter (``"gzip"`` level 1 with byte shuffling, ``"lzf"`` or ``None``).

    Returns:
        the path of the published file.
    """
    if not isinstance(system, DynamicalSystem):
        raise TypeError(f"system must be a DynamicalSystem, got {type(system).__name__}")
    counts = split_counts(num_trajectories, splits)
    length = check_length("length", length, 1)
    burn_in = check_length("burn_in", burn_in, 0)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    if compression not in ("gzip", "lzf", None):
        raise ValueError(f"compression must be 'gzip', 'lzf' or None, got {compression!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {path.parent} does not exist")
    shape = tuple(system.state_shape)
    state_bytes = 4 * int(np.prod(shape))
    chunk = _default_chunk(num_trajectories, length, state_bytes, chunk_trajectories)

    tc = min(length, max(1, _CHUNK_BYTES // state_bytes))
    filters: dict[str, Any] = {}
    if compression == "gzip":
        filters = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    elif compression == "lzf":
        filters = {"compression": "lzf", "shuffle": True}

    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    run = _simulator(system, length, burn_in)
    key = jax.random.PRNGKey(int(seed))
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["system"] = type(system).__name__
            f.attrs["system_module"] = type(system).__module__
            f.attrs["system_params"] = json.dumps(_system_params(system))
            f.attrs["state_shape"] = np.asarray(shape, np.int64)
            f.attrs["dt"] = float(system.dt)
            f.attrs["length"] = length
            f.attrs["burn_in"] = burn_in
            f.attrs["seed"] = int(seed)
            f.attrs["num_trajectories"] = num_trajectories
            f.attrs["splits"] = json.dumps(counts)
            f.attrs["split_fractions"] = np.asarray([float(s) for s in splits])
            f.attrs["units"] = "physical"
            f.attrs["mean"] = np.asarray(system.mean, np.float32)
            f.attrs["std"] = np.asarray(system.std, np.float32)
            dsets, offsets, a = {}, [], 0
            for name, c in counts.items():
                if c:
                    nc = max(1, min(c, _CHUNK_BYTES // (tc * state_bytes)))
                    dsets[name] = f.create_dataset(
                        name, shape=(c, length, *shape), dtype=np.float32,
                        chunks=(nc, tc, *shape), **filters,
                    )
                    f.create_dataset(f"{name}_index", data=np.arange(a, a + c, dtype=np.int64))
                offsets.append((name, a, a + c))
                a += c
            bar = _progress(num_trajectories, progress, f"{type(system).__name__} -> {path.name}")
            try:
                for start in range(0, num_trajectories, chunk):
                    stop = min(start + chunk, num_trajectories)
                    keys = _trajectory_keys(key, start, start + chunk)  # padded: one compile
                    # Ctrl-C interrupts the wait within a fraction of a second (the partial
                    # file is removed below: a dataset is published whole or not at all)
                    x = np.asarray(block_interruptibly(run(keys)), np.float32)[:stop - start]
                    _check_finite(x, start)
                    for name, lo, hi in offsets:
                        s, e = max(lo, start), min(hi, stop)
                        if s < e:
                            dsets[name][s - lo:e - lo] = x[s - start:e - start]
                    if bar is not None:
                        bar.update(stop - start)
            finally:
                if bar is not None:
                    bar.close()
            f.attrs["complete"] = True  # written last: marks a finished file
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="traj", dynamic_ncols=True)  # rate and ETA


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(
            f"cannot read dataset file {path}: not a readable HDF5 file (truncated, corrupt or "
            f"not HDF5): {e}"
        ) from e
    try:
        if f.attrs.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not a numpyro-sda trajectory dataset (no format tag)")
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path} has dataset format version {version}; this library reads version "
                f"{FORMAT_VERSION}"
            )
        if not bool(f.attrs.get("complete", False)):
            raise ValueError(
                f"{path} is incomplete (no 'complete' flag): its generation was interrupted; "
                "regenerate it"
            )
    except BaseException:
        f.close()
        raise
    return f


class TrajectoryDataset:
    """Lazy, read-only view of one split of an HDF5 trajectory dataset.

    Args:
        path: file written by :func:`generate`.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        normalized: return normalised states :math:`(x - m) / s` (default) or physical ones.

    Indexing (``ds[i]``, ``ds[i:j]``, ``ds[[i, j]]`` with increasing indices) reads only the
    requested trajectories; :meth:`to_array` reads the whole split. Use as a context manager or
    call :meth:`close` to release the file.
    """

    def __init__(self, path: str | os.PathLike, split: str = "train", normalized: bool = True):
        self.path = Path(path)
        self._file = _open(self.path)
        counts = json.loads(self._file.attrs["splits"])
        if split not in SPLITS or split not in counts:
            self._file.close()
            raise ValueError(
                f"unknown split {split!r} in {self.path}; available: {sorted(counts)}"
            )
        if counts[split] == 0 or split not in self._file:
            self._file.close()
            raise ValueError(f"split {split!r} of {self.path} is empty")
        self.split = split
        self.normalized = bool(normalized)
        self._data = self._file[split]
        attrs = self._file.attrs
        self.state_shape: tuple[int, ...] = tuple(int(s) for s in attrs["state_shape"])
        expected = (counts[split], int(attrs["length"]), *self.state_shape)
        if tuple(self._data.shape) != expected:
            self._file.close()
            raise ValueError(
                f"{self.path}: split {split!r} has shape {self._data.shape}, expected {expected}"
            )
        self.mean = np.asarray(attrs["mean"], np.float32)
        self.std = np.asarray(attrs["std"], np.float32)
        self.dt = float(attrs["dt"])
        self.system = str(attrs["system"])
        self.system_params: dict[str, Any] = json.loads(attrs["system_params"])
        self.seed = int(attrs["seed"])
        self.burn_in = int(attrs["burn_in"])

    # -------------------------------------------------------------------- shape
    @property
    def shape(self) -> tuple[int, ...]:
        """``(num_trajectories, length, *state_shape)``."""
        return tuple(self._data.shape)

    @property
    def num_trajectories(self) -> int:
        return self.shape[0]

    @property
    def length(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    @property
    def attrs(self) -> dict[str, Any]:
        """All file attributes."""
        return {k: v for k, v in self._file.attrs.items()}

    @property
    def trajectory_index(self) -> np.ndarray:
        """Global trajectory numbers (the ``fold_in`` index of each trajectory)."""
        return self._file[f"{self.split}_index"][...]

    def __len__(self) -> int:
        return self.shape[0]

    # -------------------------------------------------------------------- reads
    def _post(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return (x - self.mean) / self.std if self.normalized else x

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) - self.mean) / self.std

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32) * self.std + self.mean

    def __getitem__(self, idx) -> np.ndarray:
        self._check_open()
        return self._post(self._data[idx])

    def read_windows(self, trajectories: Sequence[int], starts: Sequence[int], window: int):
        """Windows ``x[n, s:s+window]`` for each pair ``(n, s)``: ``(B, window, *state_shape)``."""
        self._check_open()
        if window > self.length:
            raise ValueError(f"window {window} is longer than the trajectories ({self.length})")
        out = np.empty((len(trajectories), window, *self.state_shape), np.float32)
        for b, (n, s) in enumerate(zip(trajectories, starts, strict=True)):
            out[b] = self._data[int(n), int(s):int(s) + window]
        return self._post(out)

    def iter_chunks(self, size: int) -> Iterator[np.ndarray]:
        """Iterate over consecutive blocks of ``size`` trajectories."""
        for a in range(0, len(self), size):
            yield self[a:a + size]

    def to_array(self) -> np.ndarray:
        """The whole split in memory, ``(N, T, *state_shape)`` float32."""
        return self[...]

    # -------------------------------------------------------------------- lifetime
    def _check_open(self) -> None:
        if not self._file.id.valid:
            raise ValueError(f"dataset {self.path} [{self.split}] is closed")

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> TrajectoryDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return (
            f"TrajectoryDataset({str(self.path)!r}, split={self.split!r}, shape={self.shape}, "
            f"system={self.system})"
        )


def load(path: str | os.PathLike, split: str = "train", normalized: bool = True) -> TrajectoryDataset:
    """Open one split of a dataset file (see :class:`TrajectoryDataset`)."""
    return TrajectoryDataset(path, split, normalized=normalized)


# ---------------------------------------------------------------------------- windows
@partial(jax.jit, static_argnums=(2, 3))
def _sample_windows(key: Array, array: Array, window: int, batch_size: int) -> Array:
    n, t = array.shape[:2]
    ki, ks = jax.random.split(key)
    i = jax.random.randint(ki, (batch_size,), 0, n)
    s = jax.random.randint(ks, (batch_size,), 0, t - window + 1)
    zeros = (0,) * (array.ndim - 2)

    def one(i, s):
        return jax.lax.dynamic_slice(array, (i, s, *zeros), (1, window, *array.shape[2:]))[0]

    return jax.vmap(one)(i, s)


def sample_windows(key: Array, array: Array, window: int, batch_size: int) -> Array:
    """Random windows of ``window`` consecutive states from ``array (N, T, *state_shape)``.

    Trajectory and start time are uniform (start in ``0 .. T - window``). Pure JAX and
    jittable (``window`` and ``batch_size`` static), for use inside a ``lax.scan`` training
    loop. Returns ``(batch_size, window, *state_shape)``.
    """
    if array.ndim < 2:
        raise ValueError(f"array must be (N, T, *state_shape), got shape {array.shape}")
    window = check_length("window", window, 1)
    batch_size = check_length("batch_size", batch_size, 1)
    if window > array.shape[1]:
        raise ValueError(
            f"window {window} is longer than the trajectories (length {array.shape[1]})"
        )
    return _sample_windows(key, array, window, batch_size)


class WindowSampler:
    """Iterator over random batches of windows of ``window`` consecutive states (numpy).

    Args:
        data: a :class:`TrajectoryDataset` or an array ``(N, T, *state_shape)``.
        window: states per window (``2k + 1`` for a local score of half-width ``k``).
        batch_size: windows per batch.
        seed: seed of the sampler's numpy generator.
        max_memory: datasets up to this many bytes are read into memory once; larger ones are
            sampled through a buffer of random trajectory blocks.
        buffer_trajectories: trajectories per buffer for out-of-memory datasets (default: about
            ``max_memory / 4`` bytes); the buffer is refilled with a fresh random set of
            trajectories every ``refresh`` batches (default: enough batches to draw each
            buffered trajectory about once).

    ``next(sampler)`` returns a float32 array ``(batch_size, window, *state_shape)``.
    """

    def __init__(
        self,
        data: TrajectoryDataset | np.ndarray | Array,
        window: int,
        batch_size: int,
        seed: int = 0,
        *,
        max_memory: int = 1 << 30,
        buffer_trajectories: int | None = None,
        refresh: int | None = None,
    ) -> None:
        self.window = check_length("window", window, 1)
        self.batch_size = check_length("batch_size", batch_size, 1)
        self._rng = np.random.default_rng(seed)
        if isinstance(data, TrajectoryDataset):
            shape = data.shape
        else:
            data = np.asarray(data, np.float32)
            if data.ndim < 2:
                raise ValueError(f"data must be (N, T, *state_shape), got shape {data.shape}")
            shape = data.shape
        if self.window > shape[1]:
            raise ValueError(
                f"window {self.window} is longer than the trajectories (length {shape[1]})"
            )
        self.shape = tuple(shape)
        traj_bytes = 4 * int(np.prod(shape[1:]))
        self._source = data
        if isinstance(data, TrajectoryDataset) and data.nbytes > max_memory:
            nb = buffer_trajectories or max(1, (max_memory // 4) // traj_bytes)
            self._buffer_size = min(check_length("buffer_trajectories", nb, 1), shape[0])
            starts = shape[1] - self.window + 1
            self._refresh = refresh or max(1, self._buffer_size * starts // (self.window * batch_size))
            self._array = None
        else:
            self._array = data.to_array() if isinstance(data, TrajectoryDataset) else data
            self._buffer_size = shape[0]
            self._refresh = None
        self._count = 0
        self._buffer = None

    @property
    def in_memory(self) -> bool:
        """Whether the whole data set is held in memory."""
        return self._array is not None

    def _fill(self) -> None:
        idx = np.sort(self._rng.choice(self.shape[0], self._buffer_size, replace=False))
        self._buffer = self._source[idx]

    def sample(self) -> np.ndarray:
        """One batch ``(batch_size, window, *state_shape)``."""
        if self._array is not None:
            arr = self._array
        else:
            if self._buffer is None or self._count % self._refresh == 0:
                self._fill()
            arr = self._buffer
        self._count += 1
        n, t = arr.shape[:2]
        i = self._rng.integers(0, n, self.batch_size)
        s = self._rng.integers(0, t - self.window + 1, self.batch_size)
        offsets = s[:, None] + np.arange(self.window)[None, :]
        return np.ascontiguousarray(arr[i[:, None], offsets], dtype=np.float32)

    def __iter__(self) -> WindowSampler:
        return self

    def __next__(self) -> np.ndarray:
        return self.sample()

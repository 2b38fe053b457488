r"""Safe, atomic checkpoints of local scores (and their optimiser state).

A checkpoint is one ``.npz`` archive (no pickle: it is read with ``allow_pickle=False``) holding

* ``__header__``: a UTF-8 JSON document (as a ``uint8`` array) with the format name, the format
  version, the :class:`~numpyro_sda.score.LocalScore` configuration, the training step, the
  training settings and the data normalisation ``(mean, std)``;
* ``model/<path>``: every array of the module (weights and constant buffers);
* optionally ``opt/<path>`` (the optax state) and ``ema/<path>`` (an EMA of the weights).

Files are written to a temporary file in the destination directory and moved into place with
:func:`os.replace`, so a reader never sees a partial checkpoint. Loading into a module whose
architecture differs (missing/extra arrays or different shapes) raises a ``ValueError``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from numpyro_sda.score import LocalScore

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "save_score",
    "load_score",
    "load_checkpoint",
    "flatten_tree",
    "restore_tree",
    "same_config",
    "check_writable",
]

FORMAT = "numpyro-sda/local-score"
FORMAT_VERSION = 1


def flatten_tree(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    """``{prefix + keystr(path): numpy array}`` for every leaf of a pytree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def restore_tree(template: Any, arrays: dict[str, np.ndarray], prefix: str, what: str) -> Any:
    """Fill the leaves of ``template`` from ``arrays`` (keys from :func:`flatten_tree`).

    Raises:
        ValueError: when the arrays do not match the template's paths, shapes or dtypes kinds.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    stored = {k for k in arrays if k.startswith(prefix)}
    wanted = [prefix + jax.tree_util.keystr(path) for path, _ in leaves]
    missing = [k for k in wanted if k not in stored]
    extra = sorted(stored - set(wanted))
    if missing or extra:
        raise ValueError(
            f"the checkpoint's {what} does not match this architecture: "
            f"{len(missing)} arrays missing (e.g. {missing[:3]}), {len(extra)} unexpected "
            f"(e.g. {extra[:3]})"
        )
    out = []
    for key, (_, leaf) in zip(wanted, leaves, strict=True):
        value = arrays[key]
        if tuple(value.shape) != tuple(np.shape(leaf)):
            raise ValueError(
                f"the checkpoint's {what} does not match this architecture: {key} has shape "
                f"{value.shape}, expected {np.shape(leaf)}"
            )
        out.append(jnp.asarray(value, dtype=jnp.result_type(leaf)))
    return jax.tree_util.tree_unflatten(treedef, out)


@dataclass
class Checkpoint:
    """The content of a checkpoint file.

    Attributes:
        score: the restored :class:`~numpyro_sda.score.LocalScore` (weights of the model).
        header: the JSON header (format, version, config, step, training, normalization).
        arrays: all stored arrays (``"model/..."``, ``"opt/..."``, ``"ema/..."`` keys).
    """

    score: LocalScore
    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)

    @property
    def step(self) -> int | None:
        return self.header.get("step")

    @property
    def training(self) -> dict[str, Any]:
        return self.header.get("training") or {}

    @property
    def has_opt_state(self) -> bool:
        return any(k.startswith("opt/") for k in self.arrays)

    @property
    def has_ema(self) -> bool:
        return any(k.startswith("ema/") for k in self.arrays)

    def opt_state(self, template: Any) -> Any:
        """The optimiser state, restored into the structure of ``template`` (``tx.init(params)``)."""
        if not self.has_opt_state:
            raise ValueError("this checkpoint holds no optimizer state")
        return restore_tree(template, self.arrays, "opt/", "optimizer state")

    def ema(self, template: Any) -> Any:
        """The EMA weights, restored into the structure of ``template`` (the parameter state)."""
        if not self.has_ema:
            raise ValueError("this checkpoint holds no EMA weights")
        return restore_tree(template, self.arrays, "ema/", "EMA weights")


def same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :attr:`LocalScore.config` describe the same architecture and precision
    (configurations written before ``precision`` existed are float32; the recorded
    ``data_range`` of the training data is metadata, not architecture)."""

    def arch(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in {"precision": "fp32", **c}.items() if k != "data_range"}

    return arch(a) == arch(b)


def check_writable(path: str | os.PathLike) -> Path:
    """Check, before any expensive work, that a checkpoint can be written at ``path``: its
    directory exists or can be created and accepts a new file (one is created and removed).

    Raises:
        PermissionError / OSError: naming the path, when it cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise type(err)(
            f"cannot write the checkpoint {path}: {err.strerror or err} (checked before training "
            "so that no work is lost)"
        ) from err
    return path


def _normalization_json(normalization) -> dict[str, Any] | None:
    if normalization is None:
        return None
    try:
        mean, std = normalization
    except (TypeError, ValueError) as err:
        raise TypeError("normalization must be a pair (mean, std)") from err
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError("normalization (mean, std) must be finite with std > 0")
    return {"mean": mean.tolist(), "std": std.tolist()}


def save_score(
    path: str | os.PathLike,
    score: LocalScore,
    *,
    opt_state: Any = None,
    ema: Any = None,
    step: int | None = None,
    config: dict[str, Any] | None = None,
    normalization: tuple[Any, Any] | None = None,
    compress: bool = False,
) -> Path:
    """Write ``score`` (and optionally optimiser state / EMA weights) to ``path`` atomically.

    Args:
        path: destination file (``.npz`` is conventional).
        score: the :class:`~numpyro_sda.score.LocalScore`.
        opt_state: optional optax state (any pytree of arrays).
        ema: optional EMA of the parameters (same structure as ``nnx.state(score, nnx.Param)``).
        step: the training step reached.
        config: training settings to record (JSON-serialisable).
        normalization: ``(mean, std)`` of the training data; defaults to
            ``score.normalization``.
        compress: use zip deflate (slower, rarely smaller for float weights).

    Returns:
        the path written.
    """
    if not isinstance(score, LocalScore):
        raise TypeError(f"save_score expects a LocalScore, got {type(score).__name__}")
    path = Path(path)
    if normalization is None and score.normalization is not None:
        normalization = score.normalization
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "score": score.config,
        "step": None if step is None else int(step),
        "training": json.loads(json.dumps(config)) if config is not None else None,
        "normalization": _normalization_json(normalization),
    }
    arrays = flatten_tree(nnx.state(score), "model/")
    if opt_state is not None:
        arrays.update(flatten_tree(opt_state, "opt/"))
    if ema is not None:
        arrays.update(flatten_tree(ema, "ema/"))
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): the file was never written")
    try:
        # the file is opened here, not by np.load: np.load leaks its handle when the zip
        # directory cannot be read (a truncated file)
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError) as err:
        raise ValueError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err}); "
            "restore it from a copy or retrain"
        ) from err
    except (ValueError, OSError, KeyError) as err:
        raise ValueError(f"{path} is not a readable numpyro-sda checkpoint: {err}") from err
    if "__header__" not in arrays:
        raise ValueError(f"{path} is not a numpyro-sda checkpoint (no header)")
    try:
        header = json.loads(arrays.pop("__header__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {path} has a corrupt header: {err}") from err
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} has format {header.get('format')!r}, expected {FORMAT!r}")
    version = header.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {version}; this numpyro-sda reads versions "
            f"<= {FORMAT_VERSION}"
        )
    return header, arrays


def load_checkpoint(
    path: str | os.PathLike, score: LocalScore | None = None, *, use_ema: bool = True
) -> Checkpoint:
    """Read a checkpoint. With ``score`` given, its weights are overwritten in place (after
    checking that the architectures match); otherwise a new score is built from the stored
    configuration. With ``use_ema`` (default) and EMA weights stored, the score gets the EMA
    weights (what training returned); otherwise the raw weights of the optimiser."""
    header, arrays = _read(path)
    if score is None:
        score = LocalScore.from_config(header["score"])
    elif not same_config(score.config, header["score"]):
        raise ValueError(
            f"checkpoint {path} holds a different architecture: stored config "
            f"{header['score']} != this score's config {score.config}"
        )
    state = restore_tree(nnx.state(score), arrays, "model/", "model weights")
    nnx.update(score, state)
    if use_ema and any(k.startswith("ema/") for k in arrays):
        nnx.update(score, restore_tree(nnx.state(score, nnx.Param), arrays, "ema/", "EMA weights"))
    norm = header.get("normalization")
    if norm is not None:
        score.set_normalization((norm["mean"], norm["std"]))
    return Checkpoint(score=score, header=header, arrays=arrays)


def load_score(path: str | os.PathLike, score: LocalScore | None = None) -> LocalScore:
    """Load the :class:`~numpyro_sda.score.LocalScore` stored at ``path``.

    Args:
        path: a file written by :func:`save_score` (or by ``train_score(checkpoint=...)``).
        score: optional module to load into (must have the same architecture, else
            ``ValueError``); by default a new module is built from the stored configuration.
    """
    return load_checkpoint(path, score).score

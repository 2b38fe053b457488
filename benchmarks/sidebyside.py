"""Helpers for timing this library and the PyTorch reference side by side (issue 13).

The reference (``reference_torch.py``) is imported only when ``torch`` is importable; otherwise
:func:`load_reference` says why, and the benchmarks print that the reference was not run (no
ratio is ever computed against a constant from another run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def add_ours_threads(parser: argparse.ArgumentParser) -> None:
    """The ``--ours-threads`` option shared by the side-by-side benchmarks."""
    parser.add_argument("--ours-threads", type=int, default=None,
                        help="XLA:CPU threads for ours (sets PJRT_NPROC before JAX starts; "
                             "default: one per core). On a loaded machine 1 can be faster")


def set_ours_threads(threads: int | None) -> None:
    """Apply ``--ours-threads``: PJRT_NPROC is read when JAX's CPU client starts, so call this
    before the first JAX computation."""
    if threads is not None:
        os.environ["PJRT_NPROC"] = str(threads)


def load_reference() -> tuple[Any, str]:
    """``(module, description)`` of the PyTorch reference, or ``(None, why it was not run)``."""
    try:
        import torch  # noqa: F401
    except ImportError as err:
        return None, (f"reference not run: torch is not importable here ({err}); install a CPU "
                      "wheel in a separate environment, e.g. `pip install torch --index-url "
                      "https://download.pytorch.org/whl/cpu`")
    import reference_torch

    return reference_torch, reference_torch.describe()


def thread_counts(spec: str | None, ref: Any) -> list[int]:
    """The torch intra-op thread counts to time, from ``spec`` such as ``"default,1"``
    (``default``: torch's own choice on this machine), without repeats."""
    out: list[int] = []
    for item in (spec or "default").split(","):
        n = ref.DEFAULT_THREADS if item.strip() == "default" else int(item)
        if n not in out:
            out.append(n)
    return out


def load() -> float:
    return os.getloadavg()[0]


def interleave(runs: dict[str, Callable[[], tuple[float, float]]], repeats: int) -> dict:
    """Time every entry of ``runs`` ``repeats`` times, alternating the order (ABAB, then BABA...)
    so that a change of machine load hits both sides alike.

    Each run returns ``(work, seconds)`` (e.g. steps done and their wall time); the result holds
    per name the rates ``work / seconds``, the process CPU seconds and the load average (1 min)
    at each run's end.
    """
    names = list(runs)
    out = {n: {"rate": [], "cpu_rate": [], "load": []} for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            c0 = time.process_time()
            work, seconds = runs[name]()
            cpu = time.process_time() - c0
            out[name]["rate"].append(work / seconds)
            out[name]["cpu_rate"].append(work / cpu if cpu > 0 else float("nan"))
            out[name]["load"].append(load())
    for v in out.values():
        v["median"] = statistics.median(v["rate"])
    return out


def fmt(values: list[float], digits: int = 0) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)

"""Wall time to generate the reference datasets to HDF5 (numpyro_sda.data.generate).

* Lorenz-63, the paper's training set: 1024 trajectories x 1024 states after 1024 burn-in
  transitions (RK4, dt 0.025, noise std sqrt(dt)).
* Kolmogorov flow: 64 trajectories x 64 states at 64² (simulated at 256², ETDRK4, 50 sub-steps
  per saved interval of 0.2) after the protocol's 64 burn-in states.

Times include JIT compilation and HDF5 writing (one compile per dataset). Usage::

    python benchmarks/datasets.py [--kolmogorov-trajectories 64] [--skip-kolmogorov]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import jax

from numpyro_sda import data
from numpyro_sda.systems import KolmogorovFlow, Lorenz63


def run(name: str, system, n: int, length: int, burn_in: int, grid: str, tmp: Path) -> dict:
    path = tmp / f"{name}.h5"
    t0 = time.perf_counter()
    data.generate(system, path, num_trajectories=n, length=length, burn_in=burn_in, seed=0,
                  progress=True)
    wall = time.perf_counter() - t0
    with data.load(path, "train") as ds:
        assert ds.to_array()[:1].shape[1:] == (length, *system.state_shape)
    return {
        "dataset": name,
        "trajectories x states": f"{n} x {length}",
        "burn-in": burn_in,
        "grid": grid,
        "wall (s)": wall,
        "saved states/s": n * length / wall,
        "file (MB)": os.path.getsize(path) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kolmogorov-trajectories", type=int, default=64)
    parser.add_argument("--skip-kolmogorov", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(run("Lorenz-63 (paper)", Lorenz63(), 1024, 1024, 1024, "3", tmp))
        if not args.skip_kolmogorov:
            kf = KolmogorovFlow()
            rows.append(run("Kolmogorov", kf, args.kolmogorov_trajectories, 64, 64,
                            "256² -> 64²", tmp))
    cols = list(rows[0])
    fmt = {"wall (s)": "{:.1f}", "saved states/s": "{:.1f}", "file (MB)": "{:.1f}"}
    cells = [[fmt.get(c, "{}").format(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\njax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for row in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()

"""Sharding over N forced host devices: correctness against one device and overhead.

For N in {1, 2, 4} a fresh subprocess runs with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
(the flag must be set before JAX starts) and

* draws guided posterior trajectories of the shipped pretrained Lorenz-63 local score (the
  paper's MLP, window 5, width 256, depth 5) with
  :func:`numpyro_sda.parallel.sharded_vmap` over a ``"draws"`` mesh of all N devices
  ("sda" guidance of a Gaussian observation of x every 8th state, C = 1 correction);
* runs ``train_score`` chunks with the batch split over the N devices (parameters replicated).

Each worker saves its draws and trained weights; the table compares them with N = 1 (max
absolute difference) and reports wall times and their ratio to N = 1 (the overhead; on a
2-core machine N devices share the same cores, so no speed-up is expected).

    python benchmarks/scaling.py [--draws 64] [--steps 32] [--train-steps 200] [--json scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(out: Path, draws: int, steps: int, train_steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from numpyro_sda import pretrained
    from numpyro_sda.parallel import draws_mesh, sharded_vmap
    from numpyro_sda.sampling import predictor_corrector
    from numpyro_sda.score import LocalScore
    from numpyro_sda.train import train_score

    mesh = draws_mesh()
    score = pretrained.load("lorenz63")
    eps, sde = score.eps_fn(), score.sde
    length = 65
    y = jnp.sin(jnp.arange(9.0))  # x_1 at every 8th state, normalised units

    def guided(x, t):
        def log_lik(x):
            xhat = (x - sde.sigma(t) * eps(x, t)) / sde.mu(t)
            var = 0.1**2 + 3e-2 * (sde.sigma(t) / sde.mu(t)) ** 2
            return -0.5 * jnp.sum((xhat[::8, 0] - y) ** 2) / var

        return eps(x, t) - sde.sigma(t) * jax.grad(log_lik)(x)

    def one(key):
        return predictor_corrector(key, guided, (length, 3), sde, steps, 1, 0.25)

    keys = jax.random.split(jax.random.key(0), draws)
    sample = sharded_vmap(one, mesh)
    t0 = time.perf_counter()
    xs = jax.block_until_ready(sample(keys))  # compile + run
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    xs = jax.block_until_ready(sample(keys))
    sample_s = time.perf_counter() - t0

    data = jax.random.normal(jax.random.key(1), (64, 128, 3), jnp.float32)
    kw = dict(steps=train_steps, chunk=train_steps // 2, batch_size=64, progress=False,
              valid_size=64, mesh=mesh)
    result = train_score(LocalScore.mlp(3, window=5, hidden=256, depth=5, rngs=1),
                         data[:56], data[56:], **kw)
    h = result.history
    train_rate = (train_steps // 2) / (h["elapsed"][-1] - h["elapsed"][0])
    leaves = jax.tree_util.tree_leaves(nnx.state(result.score, nnx.Param))
    np.savez(out, xs=np.asarray(xs), **{f"p{i}": np.asarray(v) for i, v in enumerate(leaves)})
    return {
        "devices": len(jax.devices()),
        "sample_first_s": first,
        "sample_s": sample_s,
        "train_steps_per_s": train_rate,
        "per_device_draws": -(-draws // len(jax.devices())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32, help="reverse-diffusion steps")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", default="scaling.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        res = worker(Path(args.worker), args.draws, args.steps, args.train_steps)
        print("RESULT " + json.dumps(res))
        return

    import numpy as np

    rows = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.devices:
            env = {**os.environ, "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
            out = Path(tmp) / f"n{n}.npz"
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", str(out), "--draws", str(args.draws),
                 "--steps", str(args.steps), "--train-steps", str(args.train_steps)],
                env=env, capture_output=True, text=True,
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise SystemExit(f"N={n} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(line[-1][7:])
            with np.load(out) as z, np.load(Path(tmp) / f"n{args.devices[0]}.npz") as ref:
                row["draws_maxdiff"] = float(np.max(np.abs(z["xs"] - ref["xs"])))
                row["draws_scale"] = float(np.max(np.abs(ref["xs"])))
                row["params_maxdiff"] = max(
                    float(np.max(np.abs(z[k] - ref[k]))) for k in z.files if k != "xs"
                )
            rows.append(row)
    base = rows[0]
    print(f"{args.draws} guided draws x 65 states (Lorenz-63 MLP, {args.steps} steps, C=1) and "
          f"train_score at batch 64; CPUs: {os.cpu_count()}; load average at start "
          f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| devices | draws/device | sample s | vs N=1 | max abs diff of draws vs N=1 | "
          "compile+run s | train steps/s | vs N=1 | max abs diff of weights vs N=1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['devices']} | {r['per_device_draws']} | {r['sample_s']:.2f} | "
              f"{r['sample_s'] / base['sample_s']:.2f}x | {r['draws_maxdiff']:.2e} "
              f"(draws up to {r['draws_scale']:.1f}) | {r['sample_first_s']:.1f} | "
              f"{r['train_steps_per_s']:.0f} | {base['train_steps_per_s'] / r['train_steps_per_s']:.2f}x "
              f"slower | {r['params_maxdiff']:.2e} |")
    with open(args.json, "w") as f:
        json.dump({"rows": rows, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                   "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()

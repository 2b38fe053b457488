"""GPU benchmark (run through ``benchmarks/gpu.sh``): one table, one JSON file.

Rows (issue 13, item 5):

* training of the paper's Kolmogorov local score (UNet (96, 192, 384) x (3, 3, 3), window 5,
  2 x 64 x 64 states, ~22.9 M parameters) at batch 32, float32 and bf16: steps/s and achieved
  TFLOP/s (FLOPs per step from XLA's cost analysis of the lowered, pre-optimisation step);
* guided sampling ("sda" guidance through ``SDA.run``) of one 64-state trajectory with that
  network, C = 0 and C = 1 corrections: seconds per reverse-diffusion step;
* the Lorenz-63 local score (MLP width 256, depth 5, window 5): training steps/s at batch 64
  and guided sampling of 1024 draws x 65 states (C = 1) per step;
* compile time of every row.

``--smoke`` runs the same code at tiny sizes (CPU, seconds) to check that it works.
Targets (H100, issue 13): UNet training >= 100 steps/s; sampling <= 0.015 s/step (C=0) and
<= 0.03 s/step (C=1); sampling compile < 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _flops(lowered) -> float:
    """FLOPs of one training step from the *lowered* (pre-optimisation) HLO.

    The compiled module's cost analysis does not count convolutions that the GPU backend turns
    into cuDNN custom calls (on an H200 it reported 7.6 GFLOP for a 2.7 TFLOP step), so the
    count is taken before optimisation, where a scan's body (one step) is counted once.
    """
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def bench_training(score, data, batch: int, chunk: int, repeats: int) -> dict:
    """Steps/s of compiled chunks of ``chunk`` optimiser steps (the train_score inner loop)."""
    from numpyro_sda.train import _compiled_chunk

    graphdef, params, rest = nnx.split(score, nnx.Param, ...)
    run, tx = _compiled_chunk(graphdef, batch, score.window, None, 10**6, 1e-3, 1e-3, "linear",
                              1.0)
    carry = (params, tx.init(params), None, jnp.asarray(0, jnp.int32))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    lowered = run.lower(carry, rest, data, key, chunk)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops_step = _flops(lowered)
    carry, losses = compiled(carry, rest, data, key)
    losses.block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        carry, losses = compiled(carry, rest, data, key)
        losses.block_until_ready()
        best = min(best, time.perf_counter() - t0)
    rate = chunk / best
    return {"steps_per_s": rate, "tflops": flops_step * rate / 1e12, "compile_s": compile_s,
            "flops_per_step": flops_step, "final_loss": float(losses[-1])}


def bench_sampling(score, length: int, obs_slice, draws: int, steps: int, corrections: int,
                   bounds=None) -> dict:
    """``SDA.run`` wall time per reverse-diffusion step (compile reported separately)."""
    import numpyro
    import numpyro.distributions as dist

    from numpyro_sda import SDA, TrajectoryPrior

    prior = TrajectoryPrior(score, length=length)

    def model(y=None):
        x = numpyro.sample("x", prior)
        numpyro.sample("y", dist.Normal(x[obs_slice], 0.1), obs=y)

    y = jnp.zeros(jnp.zeros((length, *score.state_shape))[obs_slice].shape)
    extra = {} if bounds is None else dict(bounds=bounds)
    sda = SDA(model, steps=steps, corrections=corrections, chunk_size=draws, progress=False,
              predictive=False, **extra)
    sda.run(jax.random.key(0), y=y, num_samples=draws)  # compiles
    compile_s = float(sda.compile_time)
    sda.run(jax.random.key(1), y=y, num_samples=draws)  # cached: the run alone
    return {"s_per_step": float(sda.wall_time) / steps, "compile_s": compile_s,
            "finite": bool(np.isfinite(np.asarray(sda.get_samples()["x"])).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU check)")
    parser.add_argument("--json", default="gpu_benchmark.json")
    args = parser.parse_args()

    from numpyro_sda.score import LocalScore

    smoke = args.smoke
    if smoke:
        unet = dict(hidden_channels=(8, 16, 32), blocks=(1, 1, 1), size=16)
        batch, chunk, repeats, s_steps, length, l63_draws, l63_steps = 4, 2, 2, 4, 16, 16, 4
    else:
        unet = dict(hidden_channels=(96, 192, 384), blocks=(3, 3, 3), size=64)
        batch, chunk, repeats, s_steps, length, l63_draws, l63_steps = 32, 50, 3, 64, 64, 1024, 64
    n = unet["size"]
    rows: list[dict] = []

    def row(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as err:  # one failed row must not hide the others
            traceback.print_exc()
            r = {"error": f"{type(err).__name__}: {err}"[:200]}
        r["name"], r["wall_s"] = name, time.perf_counter() - t0
        rows.append(r)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {r}", flush=True)

    data = jax.random.normal(jax.random.key(1), (8, 32, 2, n, n), jnp.float32)
    for precision in ("fp32", "bf16"):
        def train_unet(precision=precision):
            score = LocalScore.unet(2, window=5, precision=precision, rngs=0, **unet)
            return {"params": score.num_params(), **bench_training(score, data, batch, chunk,
                                                                   repeats)}

        row(f"Kolmogorov UNet training, batch {batch}, {precision}", train_unet)

    kolmo = LocalScore.unet(2, window=5, rngs=0, **unet)
    obs = (slice(None), slice(None), slice(None, None, 4), slice(None, None, 4))
    for c in (0, 1):  # untrained weights: bounds keep the draws finite (timing is unaffected)
        row(f"Kolmogorov guided sampling, 1 x {length} states, C={c}",
            lambda c=c: bench_sampling(kolmo, length, obs, 1, s_steps, c, bounds=(-5.0, 5.0)))

    l63 = jax.random.normal(jax.random.key(2), (64, 256, 3), jnp.float32)
    row("Lorenz-63 MLP training, batch 64",
        lambda: bench_training(LocalScore.mlp(3, window=5, hidden=256, depth=5, rngs=0), l63,
                               64, 10 * chunk, repeats))
    from numpyro_sda import pretrained

    row(f"Lorenz-63 guided sampling, {l63_draws} x 65 states, C=1",  # the shipped prior
        lambda: bench_sampling(pretrained.load("lorenz63"), 65,
                               (slice(None, None, 8), slice(0, 1)), l63_draws, l63_steps, 1))

    device = jax.devices()[0]
    print(f"\ndevice: {device.device_kind} ({device.platform}) x {len(jax.devices())}; "
          f"jax {jax.__version__}; matmul precision "
          f"{jax.config.jax_default_matmul_precision or 'default'}; smoke={smoke}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| benchmark | steps/s | TFLOP/s | s/step | compile s | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | | | | | {r['error']} |")
            continue
        sps = f"{r['steps_per_s']:.1f}" if "steps_per_s" in r else ""
        tf = f"{r['tflops']:.3g}" if "tflops" in r else ""
        spstep = f"{r['s_per_step']:.4f}" if "s_per_step" in r else ""
        note = f"{r['params'] / 1e6:.1f} M params" if "params" in r else (
            "" if r.get("finite", True) else "non-finite draws")
        print(f"| {r['name']} | {sps} | {tf} | {spstep} | {r['compile_s']:.1f} | {note} |")
    with open(args.json, "w") as f:
        json.dump({"device": str(device.device_kind), "platform": device.platform,
                   "smoke": smoke, "jax": jax.__version__, "rows": rows}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Training throughput of the paper's Lorenz-63 local score (MLP, window 5, width 256, depth 5)
at batch 64 on CPU: optimiser steps/s, FLOPs per step, achieved GFLOP/s against the measured
float32 matmul rate of this machine (a 2048^2 matmul, measured in the same run).

FLOPs per step are counted from the network's matrix multiplications: every dense layer
``in -> out`` costs ``2 * in * out`` FLOPs per window in the forward pass, and the backward pass
costs twice the forward (one matmul for the input gradient, one for the weight gradient), so a
training step costs ``3 * forward`` (elementwise work -- LayerNorm, SiLU, AdamW -- is not
counted). XLA's own cost analysis of one compiled step is printed as a cross-check.

    python benchmarks/train_throughput.py [--steps 2000] [--chunk 500] [--repeats 3]

On a shared machine the wall-clock rate depends on the other processes: the table prints the
load average and the CPU time the process got (steps per CPU-second, summed over its threads).

Reference: the PyTorch implementation of Rozet & Louppe runs this configuration at ~137
steps/s on these 2-core machines; the target is >= 450 steps/s.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from numpyro_sda.score import LocalScore
from numpyro_sda.train import _compiled_chunk, train_score


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def dense_flops_per_window(score: LocalScore) -> int:
    """Forward FLOPs of one window through every nnx.Linear (2 * in * out each)."""
    total = 0
    for _, m in nnx.iter_graph(score):
        if isinstance(m, nnx.Linear):
            total += 2 * m.in_features * m.out_features
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per repeat")
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="compute precision of the matmuls (bf16: float32 weights/accumulation)")
    args = parser.parse_args()

    score = LocalScore.mlp(3, window=5, hidden=256, depth=5, precision=args.precision)
    data = jax.random.normal(jax.random.key(1), (819, 1024, 3), jnp.float32)
    batch = args.batch
    graphdef, params, rest = nnx.split(score, nnx.Param, ...)
    steps_total = args.steps * (args.repeats + 1)
    run, tx = _compiled_chunk(graphdef, batch, 5, None, steps_total, 1e-3, 1e-3, "linear", 1.0)
    carry = (params, tx.init(params), None, jnp.asarray(0, jnp.int32))
    key = jax.random.key(0)

    t0 = time.perf_counter()
    lowered = run.lower(carry, rest, data, key, args.chunk)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    # XLA counts the body of the scan's while loop once: its figure is per optimiser step
    xla_flops_step = float(cost.get("flops", float("nan"))) if cost else float("nan")

    carry, losses = compiled(carry, rest, data, key)  # warm-up
    losses.block_until_ready()
    load_start = os.getloadavg()[0]
    rates, cpu_rates = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps // args.chunk):
            carry, losses = compiled(carry, rest, data, key)
        losses.block_until_ready()
        done = args.steps // args.chunk * args.chunk
        rates.append(done / (time.perf_counter() - t0))
        cpu_rates.append(done / (time.process_time() - c0))
    rate = max(rates)

    # the whole train_score loop (validation + progress between chunks), for comparison
    small = LocalScore.mlp(3, window=5, hidden=256, depth=5, precision=args.precision)
    h = train_score(small, data, data[:64], steps=5 * args.chunk, chunk=args.chunk,
                    progress=False, valid_size=1024).history
    loop_rate = 4 * args.chunk / (h["elapsed"][-1] - h["elapsed"][0])

    peak = matmul_gflops()
    fwd = dense_flops_per_window(score) * batch
    step_flops = 3 * fwd
    achieved = step_flops * rate / 1e9

    rows = [
        ("network", f"MLP window 5, width 256, depth 5, SiLU, {args.precision}"),
        ("parameters", f"{score.num_params():,}"),
        ("batch", f"{batch}"),
        ("forward FLOPs / step (dense layers)", f"{fwd / 1e6:.1f} M"),
        ("train FLOPs / step (3 x forward)", f"{step_flops / 1e6:.1f} M"),
        ("XLA cost analysis FLOPs / step (all ops)", f"{xla_flops_step / 1e6:.1f} M"),
        (f"compile time (chunk of {args.chunk})", f"{compile_s:.1f} s"),
        (f"steps/s (compiled chunks, best of {args.repeats})", f"{rate:.0f}"),
        ("steps/s (all repeats)", ", ".join(f"{r:.0f}" for r in rates)),
        ("steps per CPU-second of this process (all threads)",
         ", ".join(f"{r:.0f}" for r in cpu_rates)),
        ("steps/s (train_score loop, 4 chunks, incl. validation)", f"{loop_rate:.0f}"),
        ("achieved GFLOP/s", f"{achieved:.1f}"),
        ("2048^2 float32 matmul GFLOP/s", f"{peak:.1f}"),
        ("fraction of matmul rate", f"{achieved / peak:.0%}"),
        ("reference PyTorch steps/s", "137"),
        ("speed-up vs reference", f"{rate / 137:.2f}x"),
        ("target steps/s", ">= 450"),
        ("devices / XLA_FLAGS", f"{jax.devices()} / {os.environ.get('XLA_FLAGS', '')}"),
        ("CPUs / load average (start, end)",
         f"{os.cpu_count()} / {load_start:.1f}, {os.getloadavg()[0]:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'quantity':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()

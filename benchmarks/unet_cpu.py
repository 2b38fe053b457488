"""UNet priors on CPU: convolutions as patch matrix products (``nets.patch_conv``) vs ``lax.conv``.

XLA:CPU runs the kernel gradient of :func:`jax.lax.conv_general_dilated` far slower inside a loop
body than outside one, and both places where a UNet prior's gradient is taken run inside
:func:`jax.lax.scan`: the chunks of training steps (``train_score``) and the guided sampler's
reverse diffusion. For the shipped UNet priors this script times, side by side in one process
and interleaved (``--repeats`` rounds), with the layers computing through ``patch_conv`` (the
library's path) and through ``lax.conv_general_dilated`` (the same weights):

* ``train``: one optimiser step inside a scanned chunk (``train_score``'s compiled chunk);
* ``guided``: one forward + VJP of the local score on ``--windows`` windows inside a
  ``fori_loop`` (what one guided evaluation of the sampler costs per window).

It prints a table (median ms and the ratio) with the load average and writes JSON.

    python benchmarks/unet_cpu.py --json benchmarks/results/unet_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from numpyro_sda import pretrained
from numpyro_sda import train as training


def use_lax(score) -> None:
    """Make every convolution of ``score`` call ``lax.conv_general_dilated`` (in place)."""
    for _, m in nnx.iter_graph(score):
        if isinstance(m, nnx.Conv):
            m.conv_general_dilated = jax.lax.conv_general_dilated


def train_step_fn(score, batch: int, steps: int):
    """A jitted chunk of ``steps`` optimiser steps on random data shaped like the score's."""
    shape = tuple(s if s is not None else 64 for s in score.state_shape)
    data = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, *shape)), jnp.float32)
    graphdef, params, rest = nnx.split(score, nnx.Param, ...)
    tx = training.make_optimizer(1000, 1e-3, 1e-3, "linear", 1.0)
    run = jax.jit(training.make_chunk_fn(graphdef, tx, batch, score.window, None),
                  static_argnums=4)
    carry = (params, tx.init(params), None, jnp.int32(0))
    key = jax.random.key(0)
    return lambda: run(carry, rest, data, key, steps), steps


def guided_fn(score, windows: int, loops: int):
    """A jitted ``fori_loop`` of ``loops`` forward + VJP evaluations on ``windows`` windows."""
    shape = tuple(s if s is not None else 64 for s in score.state_shape)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((windows, score.window, *shape)),
                    jnp.float32)
    t = jnp.full((windows,), 0.3)
    graphdef, state = nnx.split(score)

    def vjp(w):
        out, back = jax.vjp(lambda w: nnx.merge(graphdef, state).local(w, t), w)
        return back(out)[0]

    f = jax.jit(lambda w: jax.lax.fori_loop(0, loops, lambda i, a: a + vjp(w + 1e-6 * i),
                                            jnp.zeros_like(w)))
    return lambda: f(w), loops


def timed(fn, per: int) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / per * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", default="ks,lorenz96,kolmogorov",
                        help="comma-separated shipped UNet priors")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args()
    if jax.default_backend() != "cpu":
        raise SystemExit("this benchmark is about the CPU backend")
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, jax {jax.__version__}")
    print(f"{'prior':>11} {'what':>26} {'patch ms':>9} {'lax ms':>9} {'ratio':>6}")
    for name in args.priors.split(","):
        # (batch, steps per chunk) and (windows, evaluations per loop): Kolmogorov is 64x64
        batch, steps, windows, loops = (8, 4, 5, 3) if name == "kolmogorov" else (64, 20, 64, 20)
        cases = {
            f"train step, batch {batch}": partial(train_step_fn, batch=batch, steps=steps),
            f"guided fwd+vjp, {windows} windows": partial(guided_fn, windows=windows,
                                                          loops=loops),
        }
        for what, make in cases.items():
            times = {"patch": [], "lax": []}
            fns = {}
            for path in times:
                score = pretrained.load(name)
                if path == "lax":
                    use_lax(score)
                fns[path] = make(score)
                jax.block_until_ready(fns[path][0]())  # compile and warm
            for _ in range(args.repeats):
                for path, (fn, per) in fns.items():
                    times[path].append(timed(fn, per))
            p, q = float(np.median(times["patch"])), float(np.median(times["lax"]))
            rows.append(dict(prior=name, what=what, patch_ms=p, lax_ms=q, ratio=q / p,
                             loadavg=os.getloadavg()[0]))
            print(f"{name:>11} {what:>26} {p:>9.1f} {q:>9.1f} {q / p:>6.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "jax": jax.__version__, "cpus": os.cpu_count()}, f, indent=1)


if __name__ == "__main__":
    main()

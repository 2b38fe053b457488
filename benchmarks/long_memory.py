"""Peak memory of one guided evaluation on a long Kolmogorov trajectory (64x64, 127 states).

Guided sampling differentiates a likelihood through the composed local score: the backward pass
of ``eps(x, t)`` keeps the activations of all L - 2k windows (123 here) unless the windows are
evaluated in chunks (``lax.map``) and rematerialised (``jax.checkpoint``), see
``LocalScore.eps_fn(chunk=..., remat=...)``. This script measures, for each network and mode,
in a fresh subprocess:

* XLA's buffer assignment of the compiled guided evaluation (``memory_analysis()``: temporaries
  + arguments + outputs), i.e. the device memory the program needs;
* the process's peak resident memory (``resource.getrusage(...).ru_maxrss``) after compiling and
  running it once (``--run``; skipped by default for the paper-size network, whose evaluation
  takes minutes on 2 CPU cores);
* the compile time and (when run) the time of one evaluation.

The guided evaluation is the "sda" score of Rozet & Louppe (2023, Eq. 13) for a linear Gaussian
observation of every 4th grid point of every state (all windows carry gradients: the worst case):
``eps(x, t) - sigma(t) grad_x log N(y | A xhat(x), s^2 + gamma (sigma/mu)^2)``.

    python benchmarks/long_memory.py [--json out.json] [--run-paper]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

NETS = {
    "reduced UNet (32,64,128)x(1,1,1)": dict(hidden_channels=(32, 64, 128), blocks=(1, 1, 1)),
    "paper UNet (96,192,384)x(3,3,3)": dict(hidden_channels=(96, 192, 384), blocks=(3, 3, 3)),
}


def worker(net: str, chunk: str, run: bool, length: int) -> dict:
    import jax
    import jax.numpy as jnp

    from numpyro_sda.score import LocalScore

    score = LocalScore.unet(2, window=5, size=64, rngs=0, **NETS[net])
    mode = None if chunk == "none" else ("auto" if chunk == "auto" else int(chunk))
    eps = score.eps_fn(chunk=mode)
    sde = score.sde
    gamma, s = 1e-2, 0.1

    def guided(x, y, t):
        def log_lik(x):
            e = eps(x, t)
            xhat = (x - sde.sigma(t) * e) / sde.mu(t)
            var = s**2 + gamma * (sde.sigma(t) / sde.mu(t)) ** 2
            return -0.5 * jnp.sum((xhat[:, :, ::4, ::4] - y) ** 2) / var

        ll, g = jax.value_and_grad(log_lik)(x)
        return eps(x, t) - sde.sigma(t) * g, ll

    x = jax.random.normal(jax.random.key(0), (length, 2, 64, 64))
    y = jnp.zeros((length, 2, 16, 16))
    t = jnp.float32(0.5)
    t0 = time.perf_counter()
    compiled = jax.jit(guided).lower(x, y, t).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_bytes = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                 - mem.alias_size_in_bytes)
    from numpyro_sda.score import _chunk_size

    windows = jnp.zeros((length - 4, 5, 2, 64, 64))
    size = _chunk_size(score.config, windows, mode)
    out = {"net": net, "chunk": chunk, "chunk_size": size, "params": score.num_params(),
           "length": length,
           "xla_peak_gib": xla_bytes / 2**30, "compile_s": compile_s}
    if run:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(x, y, t))
        out["eval_s"] = time.perf_counter() - t0
        out["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="long_memory.json")
    parser.add_argument("--length", type=int, default=127)
    parser.add_argument("--run-paper", action="store_true",
                        help="also execute the paper-size network (minutes on CPU)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        net, chunk, run = args.worker
        print("RESULT " + json.dumps(worker(net, chunk, run == "1", args.length)))
        return
    rows = []
    for net in NETS:
        for chunk in ("none", "auto", "8"):
            run = "paper" not in net or args.run_paper
            proc = subprocess.run(
                [sys.executable, __file__, "--length", str(args.length), "--worker", net, chunk,
                 "1" if run else "0"],
                capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                rows.append({"net": net, "chunk": chunk, "error": proc.stderr.strip()[-300:]})
            else:
                rows.append(json.loads(line[-1][7:]))
            print(rows[-1], file=sys.stderr)
    print(f"guided eps + VJP, one trajectory of {args.length} states x (2, 64, 64), CPU; "
          f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    print("| network | params | windows | windows/chunk | XLA peak (GiB) | max RSS (GiB) | "
          "compile (s) | eval (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['net']} | | {r['chunk']} | | error: {r['error']} | | | |")
            continue
        mode = {"none": "one batched call", "auto": "chunk='auto' (+ remat if chunked)"}.get(
            r["chunk"], f"chunk={r['chunk']} + remat")
        rss = f"{r['max_rss_gib']:.2f}" if "max_rss_gib" in r else "not run"
        ev = f"{r['eval_s']:.1f}" if "eval_s" in r else "-"
        print(f"| {r['net']} | {r['params'] / 1e6:.1f} M | {mode} | {r['chunk_size']} | "
              f"{r['xla_peak_gib']:.2f} | "
              f"{rss} | {r['compile_s']:.1f} | {ev} |")
    with open(args.json, "w") as f:
        json.dump({"rows": rows, "loadavg": os.getloadavg(), "length": args.length}, f, indent=1)


if __name__ == "__main__":
    main()

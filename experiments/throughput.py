"""Throughput of every solver over many seeds: seeds per second, memory per seed, scaling.

    python experiments/throughput.py [--seeds 1 10 100 1000] [--solvers gauss_newton adam ...]
                                     [--steps 20] [--out results/throughput] [--precision 64]

For each solver and batch size S the script compiles one chunk of ``--steps``
steps of the driver's ``jit(vmap(scan))`` on the question's problem, times it
after compilation, and reports

- seconds per step for the whole batch, and seed-steps per second;
- seeds per second for a full run of the solver's default step budget
  (S / (default_steps × seconds per step)), an extrapolation from the timed chunk;
- XLA's own memory accounting of the compiled chunk (arguments + temporaries),
  divided by S: the memory each seed adds.

``--scaling`` times one Gauss-Newton iteration against n, m, r and the observed
fraction, beside its flop count (the model of ``experiments/bench.py``: the
Schur product over pairs j ≤ k, the reduced Cholesky and solves, the
refinement, the backtracking trials) and the machine's measured float64 matmul
rate.

Everything lands in a JSON with versions, device and precision, and a
markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def time_chunk(cfg, steps):
    import jax

    from lrfactor import driver, experiment

    prep = experiment.prepare(cfg)
    solver, carry, _, _ = experiment.build(prep)
    advance = driver.make_chunk(solver, 10**9, steps, prep.problem_axis)
    t0 = time.perf_counter()
    compiled = advance.lower(carry, prep.problem).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    nbytes = None
    if mem is not None:
        nbytes = int(mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes)
    out = compiled(carry, prep.problem)
    jax.block_until_ready(out)  # warm
    reps = []
    for _ in range(2):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(carry, prep.problem))
        reps.append(time.perf_counter() - t0)
    return min(reps) / steps, compile_s, nbytes


def scaling_point(n, m, rank, observed) -> int:
    """Time one flagship iteration at one size (float64) and print ``[seconds, bytes]`` as JSON."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from lrfactor.config import RunConfig, resolve

    n, m, rank = int(n), int(m), int(rank)
    cfg = resolve(RunConfig(solver="gauss_newton", seeds=1, precision=64, n=n, m=m, rank=rank, observed=observed,
                            true_rank=max(12, rank)))
    sec, _, nbytes = time_chunk(cfg, 5)
    print(json.dumps([sec, nbytes]))
    return 0


def matmul_rate(dtype):
    import jax
    import jax.numpy as jnp

    a = jnp.ones((2000, 2000), dtype)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    t0 = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(f(a))
    return 5 * 2 * 2000**3 / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--solvers", nargs="*", default=["gauss_newton", "adam", "sgd", "hals", "mu"])
    p.add_argument("--steps", type=int, default=10, help="steps per timed chunk")
    p.add_argument("--precision", type=int, default=None, help="32 or 64; default: each solver's own")
    p.add_argument("--scaling", action="store_true", help="also time one GN iteration against n, m, r, observed")
    p.add_argument("--out", default="results/throughput")
    p.add_argument("--scaling-point", nargs=4, type=float, default=None, metavar=("N", "M", "R", "OBS"),
                   help=argparse.SUPPRESS)  # internal: one scaling point, printed as JSON
    a = p.parse_args(argv)
    if a.scaling_point is not None:
        return scaling_point(*a.scaling_point)

    import jax

    from lrfactor.config import RunConfig, resolve
    from lrfactor.results import environment, write_json

    env = environment()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"throughput-{env['devices']['platform']}.json")
    rows, scaling = [], {}

    def save():  # after every measurement, atomically: an interrupted benchmark keeps what it measured
        write_json(path, {"environment": env, "steps_per_chunk": a.steps, "rows": rows, "scaling": scaling,
                          "args": vars(a)})

    for solver in a.solvers:
        for S in a.seeds:
            cfg = resolve(RunConfig(solver=solver, seeds=S, precision=a.precision))
            jax.config.update("jax_enable_x64", cfg.precision == 64)
            try:
                sec, comp, nbytes = time_chunk(cfg, a.steps)
            except Exception as e:  # e.g. out of memory at the largest batch: record it, go on
                rows.append({"solver": solver, "seeds": S, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(f"{solver:>12} S={S:5d}: failed ({type(e).__name__})", flush=True)
                save()
                continue
            row = {
                "solver": solver, "seeds": S, "precision": cfg.precision, "s_per_step": sec,
                "seed_steps_per_s": S / sec, "default_steps": cfg.steps,
                "seeds_per_s_full_run": S / (sec * cfg.steps), "compile_s": comp,
                "bytes_per_seed": None if nbytes is None else nbytes / S,
            }
            rows.append(row)
            mb = "?" if nbytes is None else f"{nbytes / S / 2**20:.1f}"
            print(f"{solver:>12} S={S:5d} f{cfg.precision}: {sec * 1e3:9.2f} ms/step  "
                  f"{S / sec:10.1f} seed-steps/s  {row['seeds_per_s_full_run']:8.3f} seeds/s ({cfg.steps} steps)  "
                  f"{mb} MiB/seed  compile {comp:.1f} s", flush=True)
            save()

    if a.scaling:
        jax.config.update("jax_enable_x64", True)
        rate = matmul_rate(jax.numpy.float64)
        scaling = {"matmul_gflops_f64": rate / 1e9, "rows": []}
        base = dict(n=1000, m=100, rank=8, observed=0.5)
        variants = [base, dict(base, n=2000), dict(base, n=4000), dict(base, m=200), dict(base, m=400),
                    dict(base, rank=4), dict(base, rank=16), dict(base, observed=0.1), dict(base, observed=0.9)]
        from bench import gn_flops  # the bench's model of one iteration, as the step does it

        for v in variants:
            # Each point in a fresh process, with a time limit: one point (n =
            # 1000, m = 100, r = 16) once deadlocked inside XLA's CPU runtime
            # (jaxlib 0.10.2) with an earlier form of the Schur product; a point
            # that hangs or fails is recorded as failed and the others go on.
            cmd = [sys.executable, os.path.abspath(__file__), "--scaling-point",
                   str(v["n"]), str(v["m"]), str(v["rank"]), str(v["observed"])]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)
                sec, nbytes = json.loads(done.stdout.strip().splitlines()[-1])
            except (subprocess.SubprocessError, ValueError, IndexError) as e:
                scaling["rows"].append({**v, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(f"GN n={v['n']} m={v['m']} r={v['rank']} obs={v['observed']}: failed ({type(e).__name__})",
                      flush=True)
                save()
                continue
            fl = sum(gn_flops(v["n"], v["m"], v["rank"]).values())
            scaling["rows"].append({**v, "s_per_iter": sec, "iteration_flops": fl, "flop_time_s": fl / rate,
                                    "ratio_to_flop_time": sec / (fl / rate), "bytes": nbytes})
            print(f"GN n={v['n']:5d} m={v['m']:4d} r={v['rank']:2d} obs={v['observed']:.1f}: {sec * 1e3:8.1f} ms/iter, "
                  f"model {fl / 1e9:.2f} GFLOP = {fl / rate * 1e3:.1f} ms at {rate / 1e9:.0f} GFLOP/s "
                  f"(x{sec / (fl / rate):.2f})", flush=True)
            save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

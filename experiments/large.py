"""Large problems: sparse Levenberg-Marquardt with a PCG Schur solve at scale (issue 6, item 3).

The issue's figure is 100,000 rows × 10,000 columns, 1 % observed
(|Ω| ≈ 10⁷), model rank 16, true rank 20, decay 2, float64. Sizes are run
smallest first (the rows scaled, the columns and the observed fraction
kept, so every size has ~100 entries per row), each in its own process (so peak RSS is that size's own);
a size whose run time, extrapolated linearly in |Ω| from the last one, does
not fit in what is left of ``--budget`` seconds is skipped and recorded as
such, so the table says exactly what ran.

    python experiments/large.py                      # 5k, 10k, 30k, 100k rows × 10k columns
    python experiments/large.py --scales 1.0 --budget 3600

Writes results/large/large.json (config, environment, one record per size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


@dataclasses.dataclass(frozen=True)
class LargeConfig:
    n: int = 100_000  # rows of the full-size problem
    m: int = 10_000  # columns of the full-size problem
    observed: float = 0.01  # fraction of entries in Ω
    true_rank: int = 20  # rank of the generating factors
    decay: float = 2.0  # factor scales 10**linspace(0, -decay, true_rank)
    rank: int = 16  # model rank
    iters: int = 20  # LM iterations
    init: str = "scaled"  # blind start (lrfactor.sparse.init_factors)
    lambda0: float = 1e-3  # initial λ relative to the mean diagonal of JᵀJ
    cg_iters: int = 50  # PCG iteration cap per LM step
    cg_tol: float = 1e-2  # PCG relative-residual stop (Ceres' eta)
    chunk: int = 16384  # entries per chunk
    val_fraction: float = 0.1  # held-out sample size relative to |Ω|
    seed: int = 0
    scales: tuple = (0.05, 0.1, 0.3, 1.0)  # each size is round(s·n) rows × m columns: |Ω| ∝ s, 100 entries per row throughout
    budget: float = 840.0  # seconds for the whole script
    out: str = "results/large"


def run_one(cfg: LargeConfig, n: int, m: int) -> dict:
    """Fit one size in this process and return its record."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from lrfactor import sparse
    from lrfactor.solvers.sparse_gauss_newton import make_sparse_gauss_newton

    t0 = time.perf_counter()
    n_val = int(round(cfg.val_fraction * cfg.observed * n * m))
    problem, _ = sparse.make_sparse_synthetic(jax.random.PRNGKey(cfg.seed), n, m, cfg.true_rank, cfg.observed,
                                              cfg.decay, n_val=n_val, dtype=jnp.float64, chunk=cfg.chunk)
    jax.block_until_ready(problem)
    t_data = time.perf_counter() - t0
    solver = make_sparse_gauss_newton(rank=cfg.rank, init=cfg.init, lambda0=cfg.lambda0, cg_iters=cfg.cg_iters, cg_tol=cfg.cg_tol,
                                      chunk=cfg.chunk, ftol=0.0, gtol=0.0, xtol=0.0)
    p0 = solver.init_params(jax.random.PRNGKey(cfg.seed + 1), problem)
    t0 = time.perf_counter()
    init = jax.jit(solver.init)
    state = jax.block_until_ready(init(p0, problem))
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    # One LM iteration is seconds of work: a jitted step in a Python loop costs
    # nothing measurable and gives a wall time and PCG count per iteration.
    step = jax.jit(solver.step).lower(state, problem).compile()
    t_compile = time.perf_counter() - t0
    mse = jax.jit(lambda p, sp: (sparse.train_mse(p, sp, cfg.chunk), sparse.val_mse(p, sp, cfg.chunk)))
    tr0, va0 = (float(x) for x in mse(state.params, problem))
    hist = []
    for _ in range(cfg.iters):
        t0 = time.perf_counter()
        state = jax.block_until_ready(step(state, problem))
        hist.append({"seconds": time.perf_counter() - t0, "cg_iters": int(state.cg_iters),
                     "cg_relres": float(state.cg_relres), "accepted": bool(state.accepted),
                     "lam": float(state.lam), "train_mse": float(state.F) / (0.5 * problem.rows.shape[0])})
    tr, va = (float(x) for x in mse(state.params, problem))
    secs = [h["seconds"] for h in hist]
    return {
        "n": n, "m": m, "n_train": int(problem.rows.shape[0]), "n_val": int(problem.val_rows.shape[0]),
        "data_seconds": t_data, "init_seconds": t_init, "compile_seconds": t_compile,
        "seconds_per_iter": sum(secs) / len(secs), "seconds_per_iter_median": sorted(secs)[len(secs) // 2],
        "cg_iters_total": sum(h["cg_iters"] for h in hist),
        "cg_iters_mean": sum(h["cg_iters"] for h in hist) / len(hist),
        "seconds_per_cg_iter": sum(secs) / max(1, sum(h["cg_iters"] for h in hist)),
        "accepted": sum(h["accepted"] for h in hist),
        "train_mse_init": tr0, "val_mse_init": va0, "train_mse": tr, "val_mse": va,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "history": hist,
    }


def parse(argv) -> tuple[LargeConfig, argparse.Namespace]:
    d = LargeConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(LargeConfig):
        if f.name == "scales":
            ap.add_argument("--scales", type=lambda s: tuple(float(x) for x in s.split(",")), default=d.scales)
        else:
            ap.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)), default=getattr(d, f.name))
    ap.add_argument("--one", nargs=2, type=int, metavar=("N", "M"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    cfg = LargeConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(LargeConfig)})
    return cfg, a


def main(argv=None) -> int:
    cfg, a = parse(argv)
    if a.one:
        print("RESULT " + json.dumps(run_one(cfg, *a.one)), flush=True)
        return 0
    from lrfactor.results import environment, write_json

    start = time.perf_counter()
    records, last = [], None
    args = [a for a in (argv if argv is not None else sys.argv[1:])]
    for s in sorted(cfg.scales):
        # Scale the rows only: shrinking both sides at a fixed observed fraction
        # would leave rows with fewer entries than the rank (underdetermined).
        n, m = int(round(s * cfg.n)), cfg.m
        left = cfg.budget - (time.perf_counter() - start)
        if last is not None:
            # Everything but compilation grows about linearly in |Ω| at a fixed rank.
            grow = (n * m) / (last["n"] * last["m"])
            predicted = last["compile_seconds"] + grow * (last["wall_seconds"] - last["compile_seconds"])
            if predicted > left:
                records.append({"n": n, "m": m, "skipped": f"predicted {predicted:.0f} s > {left:.0f} s left"})
                print(f"skip {n} x {m}: predicted {predicted:.0f} s, {left:.0f} s left", flush=True)
                continue
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args, "--one", str(n), str(m)],
                                  capture_output=True, text=True, timeout=max(1.0, left))
        except subprocess.TimeoutExpired:
            records.append({"n": n, "m": m, "skipped": f"timed out after {left:.0f} s"})
            print(f"{n} x {m}: timed out", flush=True)
            continue
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            records.append({"n": n, "m": m, "skipped": "failed: " + proc.stderr.strip().splitlines()[-1][:300]})
            print(f"{n} x {m}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        rec = json.loads(line[0][len("RESULT "):])
        rec["wall_seconds"] = time.perf_counter() - t0
        records.append(rec)
        last = rec
        print(f"{n} x {m}: |Ω| = {rec['n_train']:,}, {rec['seconds_per_iter']:.2f} s/iter, "
              f"{rec['cg_iters_mean']:.1f} PCG/iter, peak {rec['peak_rss_mb']:.0f} MB, "
              f"train {rec['train_mse']:.3g}, val {rec['val_mse']:.3g}", flush=True)

    ran = [r for r in records if "skipped" not in r]
    if len(ran) >= 2:
        import numpy as np

        N = np.array([r["n_train"] for r in ran], float)
        t = np.array([r["seconds_per_iter"] for r in ran])
        tc = np.array([r["seconds_per_cg_iter"] for r in ran])
        slope = np.polyfit(np.log(N), np.log(t), 1)[0]
        N_full = cfg.observed * cfg.n * cfg.m
        scaling = {
            "exponent_seconds_per_iter_vs_n_train": float(slope),
            "extrapolated_seconds_per_iter_full": float(t[-1] * (N_full / N[-1]) ** slope),
            "exponent_seconds_per_cg_iter_vs_n_train": float(np.polyfit(np.log(N), np.log(tc), 1)[0]),
        }
    else:
        scaling = {}
    out = {"config": dataclasses.asdict(cfg), "environment": environment(), "precision": "float64",
           "sizes": records, "scaling": scaling, "total_seconds": time.perf_counter() - start}
    write_json(os.path.join(cfg.out, "large.json"), out)

    hdr = f"{'n':>7} {'m':>6} {'|Ω|':>11} {'s/iter':>7} {'PCG/it':>6} {'s/PCG':>6} {'peak MB':>8} {'compile s':>9} {'train MSE':>10} {'val MSE':>10}"
    print("\n" + hdr)
    for r in records:
        if "skipped" in r:
            print(f"{r['n']:>7} {r['m']:>6}  skipped: {r['skipped']}")
        else:
            print(f"{r['n']:>7} {r['m']:>6} {r['n_train']:>11,} {r['seconds_per_iter']:>7.2f} {r['cg_iters_mean']:>6.1f} "
                  f"{r['seconds_per_cg_iter']:>6.3f} {r['peak_rss_mb']:>8.0f} {r['compile_seconds']:>9.1f} "
                  f"{r['train_mse']:>10.3g} {r['val_mse']:>10.3g}")
    if scaling:
        print(f"s/iter ∝ |Ω|^{scaling['exponent_seconds_per_iter_vs_n_train']:.2f}; "
              f"extrapolated to |Ω| = {cfg.observed * cfg.n * cfg.m:,.0f}: {scaling['extrapolated_seconds_per_iter_full']:.1f} s/iter")
    return 0


if __name__ == "__main__":
    sys.exit(main())

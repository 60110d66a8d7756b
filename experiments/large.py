"""Large problems: the Gauss-Newton run on coordinate lists, at growing sizes.

A thin wrapper over the ordinary run path: each size is
``experiments/run.py --solver gauss_newton --layout coo --linear-solver schur_pcg``
on the synthetic recipe (drawn entry by entry above the dense limit), run by
``lrfactor.experiment.execute`` into ``OUT/n{n}_m{m}/`` with the usual files.
This script only picks the sizes, gives each its own process (so peak RSS is
that size's own) and a share of the time budget, and tabulates the runs.

The full-size figure is 100,000 rows × 10,000 columns, 1 % observed
(|Ω| ≈ 10⁷), model rank 16, true rank 20, decay 2, float64. Sizes are run
smallest first (the rows scaled, the columns and the observed fraction kept,
so every size has ~100 entries per row); a size whose run time, extrapolated
linearly in |Ω| from the last one, does not fit in what is left of
``--budget`` seconds is skipped and recorded as such.

    python experiments/large.py                      # 5k, 10k, 30k, 100k rows × 10k columns
    python experiments/large.py --scales 1.0 --budget 3600

Writes OUT/large.json (config, environment, one record per size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
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
    iters: int = 20  # LM iterations (the run's --steps)
    init: str = "scaled"  # blind start (lrfactor.factors.init_factors)
    lambda0: float = 1e-3  # initial λ relative to the mean diagonal of JᵀJ
    cg_iters: int = 50  # PCG iteration cap per LM step
    cg_tol: float = 1e-2  # PCG relative-residual stop (Ceres' eta)
    seed: int = 0
    scales: tuple = (0.05, 0.1, 0.3, 1.0)  # each size is round(s·n) rows × m columns: |Ω| ∝ s
    budget: float = 840.0  # seconds for the whole script
    out: str = "results/large"


def run_config(cfg: LargeConfig, n: int, m: int, out: str):
    """The run configuration of one size: the command line's defaults but for these settings."""
    from lrfactor.config import RunConfig, resolve

    settings = dict(solver="gauss_newton", seeds=1, seed=cfg.seed, steps=cfg.iters, rank=cfg.rank, init=cfg.init,
                    n=n, m=m, true_rank=cfg.true_rank, decay=cfg.decay, observed=cfg.observed,
                    lambda0=cfg.lambda0, precision=64, ftol=0.0, gtol=0.0, xtol=0.0, restarts=0, out=out,
                    layout="coo", linear_solver="schur_pcg", cg_iters=cfg.cg_iters, cg_tol=cfg.cg_tol)
    return resolve(RunConfig(**settings))


def run_one(cfg: LargeConfig, n: int, m: int) -> dict:
    """Fit one size in this process through the ordinary run path and return its record."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from lrfactor import experiment, layout, results

    out = os.path.join(cfg.out, f"n{n}_m{m}")
    rc = run_config(cfg, n, m, out)
    t0 = time.perf_counter()
    prep = experiment.prepare(rc)
    jax.block_until_ready(prep.problem)
    t_data = time.perf_counter() - t0
    if os.path.exists(out) and os.listdir(out):
        raise SystemExit(f"{out}: folder exists and is not empty")
    summary = experiment.execute(rc, out, progress=False, prep=prep)
    hist = results.read_npz(os.path.join(out, "history.npz"))
    steps = int(summary["final"]["steps"][0])
    cg = hist["cg_iters"][0, 1:steps + 1]
    wall = float(summary["wall_s"])
    return {
        "n": n, "m": m, "out": out,
        "n_train": int(np.asarray(layout.count(prep.problem))[0]),
        "n_val": int(np.asarray(layout.count(prep.problem, "val"))[0]),
        "data_seconds": t_data, "compile_seconds": float(summary["compile_s"]), "run_seconds": wall,
        "seconds_per_iter": wall / max(1, steps), "steps": steps,
        "cg_iters_total": int(cg.sum()), "cg_iters_mean": float(cg.mean()) if cg.size else 0.0,
        "seconds_per_cg_iter": wall / max(1, int(cg.sum())),
        "accepted": int(hist["accepted"][0, 1:steps + 1].sum()),
        "train_mse_init": float(hist["train_mse"][0, 0]), "val_mse_init": float(hist["val_mse"][0, 0]),
        "train_mse": float(summary["final"]["train_mse"][0]), "val_mse": float(summary["final"]["val_mse"][0]),
        "peak_rss_mb": float(summary["peak_rss_mb"]),  # this process: the data, the oracle and the run
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
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
            records.append({"n": n, "m": m, "skipped": "failed: " + err})
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
    scaling = {}
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

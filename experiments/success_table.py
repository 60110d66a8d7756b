"""Success rates over random restarts, from saved runs only (Hong & Fitzgibbon 2015; Hong, Zach & Fitzgibbon 2017, Table 2).

    python experiments/success_table.py results/gn-joint results/gn-varpro ... [--out results/gn-variants.md]

For every seed the best train MSE any of the given runs of the same precision
found is the target (float32 and float64 runs draw different synthetic data); a
run succeeds on a seed when its final train MSE is within 1 % of the oracle
(summary "success") and we also report it against that per-seed best. Time to
success is the run's wall time at the first step within 1 % of the oracle,
divided by the number of seeds the batch ran at once (the amortised cost per
seed); the per-step wall time of a batch is spread evenly over its seeds.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lrfactor import success  # noqa: E402
from lrfactor.results import load_run  # noqa: E402


def first_success(history, oracle_train):
    """(step, wall_s) of the first step with train MSE ≤ 1.01 × oracle, NaN when never."""
    ok = history["train_mse"] <= success.FACTOR * oracle_train[:, None]
    hit = ok.any(axis=1)
    idx = np.argmax(ok, axis=1)
    steps = np.where(hit, idx, np.nan)
    wall = np.where(hit, history["wall_s"][np.arange(len(idx)), idx], np.nan)
    return steps, wall


def table(folders):
    runs = [load_run(f) for f in folders]
    # Compare on the seeds every run has (runs of different sizes share a prefix).
    common = sorted(set.intersection(*[set(r["summary"]["seeds"]) for r in runs]))
    if not common:
        raise SystemExit("error: the runs share no seed")
    for r in runs:
        pos = [r["summary"]["seeds"].index(x) for x in common]
        r["_pos"] = np.asarray(pos)
    seeds = common
    # The synthetic data depend on the precision (the PRNG draws in the run's
    # dtype): the per-seed best is taken among runs of the same precision.
    prec = [r["config"]["config"].get("precision") for r in runs]
    best_by = {p: np.min([np.asarray(r["summary"]["final"]["train_mse"], float)[r["_pos"]]
                          for r, q in zip(runs, prec) if q == p], axis=0) for p in set(prec)}
    rows = []
    for f, r in zip(folders, runs):
        s = r["summary"]
        cfg = r["config"]["config"]
        pos = r["_pos"]
        oracle = np.asarray(s["reference"]["oracle_train_mse"], float)[pos]
        final = np.asarray(s["final"]["train_mse"], float)[pos]
        hist = {k: r["history"][k][pos] for k in ("train_mse", "wall_s")}
        steps, wall = first_success(hist, oracle)
        S = len(s["seeds"])  # seeds the batch ran at once: the wall time is shared by all of them
        rel = final / best_by[cfg.get("precision")]
        rows.append({
            "run": os.path.basename(os.path.normpath(f)),
            "method": cfg.get("method"), "damping": cfg.get("damping"), "init": cfg.get("init"),
            "restarts": cfg.get("restarts", 0),
            "backtrack": bool(cfg.get("backtrack", False)),  # absent from runs made before it existed
            "seeds": len(seeds),
            "budget": cfg.get("steps"),
            "precision": cfg.get("precision"),
            "success": float(np.mean(final <= success.FACTOR * oracle)),
            "within_1pct_of_best": float(np.mean(rel <= success.FACTOR)),
            "median_rel_best": float(np.median(rel)),
            "p90_rel_best": float(np.percentile(rel, 90)),
            "median_steps_to_success": float(np.nanmedian(steps)) if np.isfinite(steps).any() else None,
            "median_s_to_success_per_seed": float(np.nanmedian(wall) / S) if np.isfinite(wall).any() else None,
            "median_val_over_oracle": float(np.median(np.asarray(s["final"]["val_mse"], float)[pos] /
                                                      np.asarray(s["reference"]["oracle_val_mse"], float)[pos])),
            "final_below_oracle": float(np.mean(final < oracle)),
        })
    return rows


def markdown(rows) -> str:
    head = ("| run | method | damping | backtrack | restarts | precision | budget | seeds | success (≤1.01×oracle) | ≤1.01×best | median final/best | "
            "p90 final/best | median steps to success | median s to success / seed | median val/oracle |")
    lines = [head, "|" + "|".join(["---"] * 15) + "|"]
    f = lambda x, p=3: "–" if x is None else f"{x:.{p}g}"
    for r in rows:
        lines.append(f"| {r['run']} | {r['method']} | {r['damping']} | {'yes' if r['backtrack'] else 'no'} | {r['restarts']} | {r['precision']} | {r['budget']} | {r['seeds']} | {r['success']:.0%} | "
                     f"{r['within_1pct_of_best']:.0%} | {f(r['median_rel_best'], 4)} | {f(r['p90_rel_best'], 4)} | "
                     f"{f(r['median_steps_to_success'])} | {f(r['median_s_to_success_per_seed'])} | "
                     f"{f(r['median_val_over_oracle'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None, help="write the markdown table here (and a .json beside it)")
    a = p.parse_args(argv)
    for f in a.runs:
        if not os.path.exists(os.path.join(f, "summary.json")):
            print(f"error: {f}: no summary.json", file=sys.stderr)
            return 2
    rows = table(a.runs)
    md = markdown(rows)
    print(md)
    if a.out:
        from lrfactor.results import _atomic_write_bytes, write_json

        _atomic_write_bytes(a.out, md.encode())
        write_json(os.path.splitext(a.out)[0] + ".json", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

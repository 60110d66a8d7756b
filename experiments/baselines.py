"""The baselines people would use instead, measured on the question's problem.

    python experiments/baselines.py [--out results/baselines] [--mlp-epochs 1500]

(a) masked HALS, 2,000 sweeps, seed 0, float64, through the library's driver and
    through a plain-numpy masked HALS from the same start (a cross-check of the
    numbers, and of the speed); per-sweep time for 1 and 10 vmapped seeds;
(b) masked multiplicative updates, KL (the question's closed-source NMF minimised
    KL: fit 0.1 / validation 0.3) and Frobenius, 2,000 sweeps;
(c) the question's MLP for n_steps × {log, linear} widths, Keras-style training
    (Adam 3e-3, EarlyStopping / ReduceLROnPlateau, float32 as Keras), one seed
    each, with an epoch cap.

Writes ``baselines.json`` (with versions, device and precision) and
``baselines.md`` into the output folder. Times are wall-clock seconds after
compilation on whatever machine runs it; the JSON records that machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from lrfactor import driver, experiment, results  # noqa: E402
from lrfactor.config import RunConfig, resolve  # noqa: E402
from lrfactor.solvers.nmf import numpy_hals  # noqa: E402

CHECKPOINTS = (0, 100, 500, 1000, 2000)


def run(cfg: RunConfig):
    """One run through the library (problem, init and driver as the CLI builds them)."""
    prep = experiment.prepare(cfg)
    solver, carry, _, _ = experiment.build(prep)
    res = driver.run(solver, prep.problem, carry, steps=cfg.steps, chunk=cfg.chunk,
                     problem_axis=prep.problem_axis, progress=False)
    return prep, res


def mse(P, V, mask):
    return float(np.sum(np.where(mask, P - V, 0.0) ** 2) / mask.sum())


def per_seed(x):
    return [float(v) for v in np.asarray(x).ravel()]


def hals_section(sweeps: int, timing_sweeps: int) -> dict:
    cfg = resolve(RunConfig(solver="hals", seeds=1, steps=sweeps, precision=64))
    prep, res = run(cfg)
    refs = experiment.references(prep)
    h = res.history
    out = {
        "config": {"seeds": 1, "sweeps": sweeps, "precision": 64, "init": cfg.init, "eps": cfg.eps},
        "ours": {
            "train_mse": float(h["train_mse"][0, -1]),
            "val_mse": float(h["val_mse"][0, -1]),
            "val_mse_at": {str(s): float(h["val_mse"][0, s]) for s in CHECKPOINTS if s <= sweeps},
            "train_mse_at": {str(s): float(h["train_mse"][0, s]) for s in CHECKPOINTS if s <= sweeps},
            "at_floor": float(h["at_floor"][0, -1]),
            "wall_s": res.wall_s, "compile_s": res.compile_s,
            "per_sweep_s": res.wall_s / sweeps,
        },
        "reference": {k: per_seed(v)[0] for k, v in refs.items()},
    }
    # Plain numpy from the same start.
    V, M, val = (np.asarray(x[0]) for x in prep.problem)
    st0 = jax.device_get(experiment.build(prep)[1].state)
    t0 = time.perf_counter()
    W, H = numpy_hals(np.asarray(st0.W[0]), np.asarray(st0.H[0]), V, M, sweeps, cfg.eps)
    t_np = time.perf_counter() - t0
    Wj, Hj = np.asarray(res.carry.state.W[0]), np.asarray(res.carry.state.H[0])
    out["numpy"] = {
        "train_mse": mse(W @ H.T, V, M), "val_mse": mse(W @ H.T, V, val),
        "wall_s": t_np, "per_sweep_s": t_np / sweeps,
        "max_rel_diff_prediction": float(np.max(np.abs(W @ H.T - Wj @ Hj.T) / np.abs(W @ H.T))),
    }
    # Per-sweep time, 1 and 10 vmapped seeds, the same sweep budget for both.
    timing = {}
    for seeds in (1, 10):
        cfg_t = resolve(RunConfig(solver="hals", seeds=seeds, steps=timing_sweeps, precision=64))
        _, r = run(cfg_t)
        timing[str(seeds)] = {"sweeps": timing_sweeps, "wall_s": r.wall_s, "compile_s": r.compile_s,
                              "per_sweep_s": r.wall_s / timing_sweeps,
                              "per_sweep_per_seed_s": r.wall_s / timing_sweeps / seeds,
                              "val_mse_median": float(np.median(r.history["val_mse"][:, -1]))}
    out["timing"] = timing
    return out


def mu_section(sweeps: int) -> dict:
    out = {}
    for loss in ("kl", "frobenius"):
        cfg = resolve(RunConfig(solver="mu", loss=loss, seeds=1, steps=sweeps, precision=64))
        _, res = run(cfg)
        h = res.history
        out[loss] = {
            "sweeps": sweeps, "objective": float(h["objective"][0, -1]),
            "train_mse": float(h["train_mse"][0, -1]), "val_mse": float(h["val_mse"][0, -1]),
            "val_mse_at": {str(s): float(h["val_mse"][0, s]) for s in CHECKPOINTS if s <= sweeps},
            "at_floor": float(h["at_floor"][0, -1]),
            "wall_s": res.wall_s, "compile_s": res.compile_s, "per_sweep_s": res.wall_s / sweeps,
        }
    return out


def mlp_section(n_steps_list, epochs: int) -> list:
    rows = []
    for n_steps in n_steps_list:
        for dims in ("log", "linear"):
            if n_steps == 0 and dims == "linear":
                continue  # no hidden layer: the same model
            cfg = resolve(RunConfig(solver="mlp", seeds=1, steps=epochs, mlp_steps=n_steps, mlp_dims=dims))
            _, res = run(cfg)
            h = res.history
            from lrfactor.solvers.mlp import mlp_widths

            rows.append({
                "n_steps": n_steps, "dims": dims, "widths": mlp_widths(2 * cfg.rank, n_steps, dims),
                "epochs": int(res.carry.t[0]), "early_stopped": bool(h["done"][0, -1]),
                "train_mse": float(h["train_mse"][0, -1]), "val_mse": float(h["val_mse"][0, -1]),
                "best_val_mse": float(np.nanmin(h["val_mse"][0])),
                "keras_loss": float(h["loss"][0, -1]), "keras_val_loss": float(h["val_loss"][0, -1]),
                "final_lr": float(h["lr"][0, -1]), "precision": cfg.precision,
                "wall_s": res.wall_s, "compile_s": res.compile_s,
            })
            print(f"  mlp n_steps={n_steps} {dims}: {rows[-1]}", flush=True)
    return rows


def markdown(rep: dict) -> str:
    a, b, c = rep["hals"], rep["mu"], rep["mlp"]
    env = rep["environment"]
    L = [
        "# Baselines on the question's problem (seed 0)",
        "",
        f"Device: {env['devices']['kind']} ×{env['devices']['count']} ({env['cpu_count']} CPUs), "
        f"jax {env['versions']['jax']}. Times: wall-clock after compilation. Total script time "
        f"{rep['script_wall_s']:.0f} s.",
        "",
        f"Reference: truncated truth val MSE {a['reference'].get('truth_val_mse', float('nan')):.3g}, "
        f"oracle optimum train {a['reference'].get('oracle_train_mse', float('nan')):.3g} / "
        f"val {a['reference'].get('oracle_val_mse', float('nan')):.3g}.",
        "",
        f"## Masked HALS, {a['config']['sweeps']} sweeps, float64",
        "",
        "| implementation | train MSE | val MSE | s / sweep |",
        "|---|---|---|---|",
        f"| lrfactor (jit) | {a['ours']['train_mse']:.3g} | {a['ours']['val_mse']:.3g} | {a['ours']['per_sweep_s'] * 1e3:.2f} ms |",
        f"| plain numpy | {a['numpy']['train_mse']:.3g} | {a['numpy']['val_mse']:.3g} | {a['numpy']['per_sweep_s'] * 1e3:.2f} ms |",
        "",
        f"Max relative difference of the two predictions: {a['numpy']['max_rel_diff_prediction']:.2g}. "
        "Val MSE along the way (lrfactor): "
        + ", ".join(f"{k}: {v:.3g}" for k, v in a["ours"]["val_mse_at"].items()) + ".",
        "",
        "| vmapped seeds | sweeps timed | s / sweep (all seeds) | s / sweep / seed |",
        "|---|---|---|---|",
    ]
    for s, t in a["timing"].items():
        L.append(f"| {s} | {t['sweeps']} | {t['per_sweep_s'] * 1e3:.2f} ms | {t['per_sweep_per_seed_s'] * 1e3:.2f} ms |")
    L += ["", "## Masked multiplicative updates, float64", "",
          "| loss | sweeps | its loss | train MSE | val MSE | s / sweep |", "|---|---|---|---|---|---|"]
    for loss, r in b.items():
        L.append(f"| {loss} | {r['sweeps']} | {r['objective']:.3g} | {r['train_mse']:.3g} | {r['val_mse']:.3g} | "
                 f"{r['per_sweep_s'] * 1e3:.2f} ms |")
    L += ["", f"## The question's MLP (one seed each, float32, epoch cap {rep['mlp_epoch_cap']})", "",
          "| n_steps | dims | hidden widths | epochs | early stop | final lr | train MSE | val MSE | best val MSE |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in c:
        L.append(f"| {r['n_steps']} | {r['dims']} | {r['widths']} | {r['epochs']} | {r['early_stopped']} | "
                 f"{r['final_lr']:.2g} | {r['train_mse']:.3g} | {r['val_mse']:.3g} | {r['best_val_mse']:.3g} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/baselines")
    ap.add_argument("--sweeps", type=int, default=2000)
    ap.add_argument("--timing-sweeps", type=int, default=500)
    ap.add_argument("--mlp-epochs", type=int, default=1500)
    ap.add_argument("--mlp-steps", type=int, nargs="+", default=[0, 1, 2, 3])
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rep = {"environment": results.environment(), "mlp_epoch_cap": args.mlp_epochs}
    print("HALS ...", flush=True)
    rep["hals"] = hals_section(args.sweeps, args.timing_sweeps)
    print("MU ...", flush=True)
    rep["mu"] = mu_section(args.sweeps)
    print("MLP ...", flush=True)
    rep["mlp"] = mlp_section(args.mlp_steps, args.mlp_epochs)
    rep["script_wall_s"] = time.perf_counter() - t0
    results.write_json(os.path.join(args.out, "baselines.json"), rep)
    md = markdown(rep)
    with open(os.path.join(args.out, "baselines.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()

"""Model selection on noisy versions of the question's problem: does --cv predict what was not observed?

    python experiments/selection.py make                 # the data files (results/selection/data, not committed)
    python experiments/selection.py run [--stop-after S] # per file: --cv, the rank-8 defaults, surprise, Adam
    python experiments/selection.py table                # results/selection/noise.md and noise.json
    python experiments/selection.py bound                # every CV setting refitted and scored on the held-out entries

The question's recipe (1000 × 100, true rank 12, decay 2, half the entries
observed, the other half held out), one draw per ``--draws`` seed, with
noise of each kind in ``KINDS``:

- ``none``: V = W Hᵀ exactly (the question's problem);
- ``lognormal``: V · exp(0.1 z), z standard normal (10 % multiplicative noise);
- ``poisson``: Poisson counts with mean 5·V, divided by 5;
- ``gaussian``: V + 0.1·mean(V)·z (additive, 10 % of the mean entry).

The data files carry W_true and H_true: the truth's held-out MSE (all
true-rank components, computed here from the file) is the noise floor no
predictor beats on average. Per file four
fits, all on the training entries only, scored on the held-out ones:

- ``cv``: ``run.py --solver gauss_newton --cv 5 --seeds 1`` with its default
  grid (no setting picked by hand) and the refit of the choice;
- ``default``: ``run.py --solver gauss_newton`` (rank 8, frobenius, no penalty);
- ``surprise``: ``experiments/surprise_baseline.py`` on the default run's
  split (its SVD and NMF with 8 factors, defaults and a small regularisation
  grid); the best held-out MSE over every surprise setting is reported, a
  bound that favours surprise;
- ``adam``: ``run.py --solver adam --inner-val 0.2 --seeds 4``: the question's
  Keras model and training with the Keras user's own fix for noisy data,
  EarlyStopping on a validation split of the training entries
  (``restore_best_weights``), the first-order solvers' fair chance.

``bound`` refits every setting of a file's cross-validation grid on all its
training entries (``--cv-seeds`` seeds each, the run's defaults otherwise) and
scores each on the held-out entries: the lowest is the best any choice among
those settings could have made (it looks at the held-out entries, so it is a
yardstick for the selection, never a selection). It tells a miss of the
selection (the best setting was in the grid and CV did not pick it) from a
miss of the grid (no setting in it reaches the target). Saved per file as
``runs/KIND-DRAW/bound.json``.

Each run is its own process in ``results/selection/runs/KIND-DRAW/NAME``; a run
whose ``summary.json`` exists is skipped, so ``run`` resumes after an
interruption (``--stop-after``: no new run starts after that many seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

KINDS = ("none", "lognormal", "poisson", "gaussian")
ROOT = "results/selection"


def draw(kind: str, seed: int):
    """(V, train, val, W, H) of one noisy draw of the question's recipe, as numpy float64."""
    import jax

    from lrfactor.problems import SyntheticConfig, make_synthetic

    with jax.enable_x64(True):
        key = jax.random.PRNGKey(seed)
        problem, truth = make_synthetic(key, SyntheticConfig(), jax.numpy.float64)
        V, W, H = (np.asarray(x) for x in (problem.V, truth.W, truth.H))
        rng = np.random.default_rng([seed, KINDS.index(kind)])
    if kind == "lognormal":
        V = V * np.exp(0.1 * rng.standard_normal(V.shape))
    elif kind == "poisson":
        V = rng.poisson(5.0 * V) / 5.0
    elif kind == "gaussian":
        V = V + 0.1 * V.mean() * rng.standard_normal(V.shape)
    elif kind != "none":
        raise ValueError(f"unknown noise kind {kind!r}; known: {', '.join(KINDS)}")
    return V, np.asarray(problem.train), np.asarray(problem.val), W, H


def data_path(root, kind, seed):
    return os.path.join(root, "data", f"{kind}-{seed}.npz")


def cmd_make(args):
    os.makedirs(os.path.join(args.root, "data"), exist_ok=True)
    for kind in args.kinds:
        for seed in range(args.draws):
            V, train, val, W, H = draw(kind, seed)
            np.savez(data_path(args.root, kind, seed), V=V, train_mask=train, val_mask=val, W_true=W, H_true=H)
            print(f"{kind}-{seed}: mean V {V.mean():.4g}, {train.sum()} training entries")


def runs_of(args, kind, seed):
    """(name, argv) of the fits of one data file."""
    data = data_path(args.root, kind, seed)
    folder = os.path.join(args.root, "runs", f"{kind}-{seed}")
    run = [sys.executable, os.path.join(HERE, "run.py"), "--solver", "gauss_newton", "--data", data, "--quiet"]
    cv, default, adam = (os.path.join(folder, f) for f in ("cv", "default", "adam"))
    return [
        ("cv", cv, run + ["--cv", str(args.folds), "--seeds", str(args.cv_seeds), "--out", cv]),
        ("default", default, run + ["--out", default]),
        ("surprise", os.path.join(folder, "surprise.json"),
         [sys.executable, os.path.join(HERE, "surprise_baseline.py"), default, "--out",
          os.path.join(folder, "surprise.json")]),
        ("adam", adam, [sys.executable, os.path.join(HERE, "run.py"), "--solver", "adam", "--data", data, "--quiet",
                        "--inner-val", "0.2", "--seeds", "4", "--out", adam]),
    ]


def cmd_run(args):
    t0 = time.time()
    for seed in range(args.draws):  # draw-major: every kind gets its first draws first
        for kind in args.kinds:
            for name, target, argv in runs_of(args, kind, seed):
                done = os.path.exists(os.path.join(target, "summary.json") if name != "surprise" else target)
                if done or (name not in args.fits):
                    continue
                if args.stop_after and time.time() - t0 > args.stop_after:
                    print("stop-after reached; run again to continue")
                    return
                os.makedirs(os.path.dirname(target), exist_ok=True)
                log = target.rstrip("/") + ".log" if name != "surprise" else target[:-5] + ".log"
                t = time.time()
                with open(log, "w") as fh:
                    rc = subprocess.call(argv, stdout=fh, stderr=subprocess.STDOUT)
                print(f"{kind}-{seed} {name}: exit {rc} in {time.time() - t:.0f} s")


def cmd_bound(args):
    from lrfactor import api

    t0 = time.time()
    for seed in range(args.draws):
        for kind in args.kinds:
            folder = os.path.join(args.root, "runs", f"{kind}-{seed}")
            out, cvj = os.path.join(folder, "bound.json"), os.path.join(folder, "cv", "cv.json")
            if os.path.exists(out) or not os.path.exists(cvj):
                continue
            if args.stop_after and time.time() - t0 > args.stop_after:
                print("stop-after reached; run again to continue")
                return
            fits = []
            for setting in _load(cvj)["settings"]:
                t = time.time()
                f = api.fit(data=data_path(args.root, kind, seed), solver="gauss_newton", seeds=args.cv_seeds,
                            **setting)
                k = f.best
                fits.append({"setting": setting, "val_mse": f.summary["final"]["val_mse"][k],
                             "train_mse": f.summary["final"]["train_mse"][k], "wall_s": time.time() - t})
                print(f"{kind}-{seed} {setting}: held-out {fits[-1]['val_mse']:.4g}", flush=True)
            best = min(range(len(fits)), key=lambda i: fits[i]["val_mse"])
            with open(out, "w") as fh:
                json.dump({"fits": fits, "best": best, "seeds": args.cv_seeds}, fh, indent=1)


def _load(path):
    with open(path) as fh:
        return json.load(fh)


def _best(summary):
    """Index of the seed with the lowest final training objective (the one predictions come from)."""
    return int(np.argmin(summary["final"]["objective"]))


def cmd_table(args):
    rows = []
    for kind in args.kinds:
        for seed in range(args.draws):
            folder = os.path.join(args.root, "runs", f"{kind}-{seed}")
            row = {"kind": kind, "draw": seed}
            data = data_path(args.root, kind, seed)
            if os.path.exists(data):  # the noise floor: the generating factors, all true_rank components
                d = np.load(data)
                P = d["W_true"] @ d["H_true"].T
                row["truth_val_mse"] = float(np.mean((P - d["V"])[d["val_mask"]] ** 2))
            cv_sum = os.path.join(folder, "cv", "summary.json")
            if os.path.exists(cv_sum):
                s = _load(cv_sum)
                k = _best(s)
                row["cv_val_mse"] = s["final"]["val_mse"][k]
                cvj = _load(os.path.join(folder, "cv", "cv.json"))
                row["cv_choice"] = cvj["choice"]["setting"]
                row["cv_wall_s"] = cvj["wall_s"]
                # the default factor penalties: per loss (lrfactor.config.reg_scale), or, in runs made before
                # that, frobenius's values for every loss
                reg = cvj["axes"].get("reg")
                row["cv_penalties"] = ("per loss" if isinstance(reg, dict) else
                                       "frobenius only (the same)" if cvj["axes"]["loss"] == ["frobenius"] else
                                       "frobenius's for every loss")
            d_sum = os.path.join(folder, "default", "summary.json")
            if os.path.exists(d_sum):
                s = _load(d_sum)
                row["default_val_mse"] = s["final"]["val_mse"][_best(s)]
                # the rank-8 oracle (LM polished from the truncated truth): the yardstick where the floor is 0
                row["oracle8_val_mse"] = s["reference"]["oracle_val_mse"][0]
            a_sum = os.path.join(folder, "adam", "summary.json")
            if os.path.exists(a_sum):
                s = _load(a_sum)
                row["adam_val_mse"] = s["final"]["val_mse"][_best(s)]
            sp = os.path.join(folder, "surprise.json")
            if os.path.exists(sp):
                fits = _load(sp)["surprise"].values()
                row["surprise_best_val_mse"] = min(
                    [f["default"]["val_mse"] for f in fits] + [g["val_mse"] for f in fits for g in f["grid"].values()])
            bd = os.path.join(folder, "bound.json")
            if os.path.exists(bd):
                b = _load(bd)
                row["grid_best_val_mse"] = b["fits"][b["best"]]["val_mse"]
                row["grid_best_setting"] = b["fits"][b["best"]]["setting"]
            rows.append(row)
    with open(os.path.join(args.root, "noise.json"), "w") as fh:
        json.dump(rows, fh, indent=1)

    def ratio(r, key, ref="truth_val_mse"):
        v, t = r.get(key), r.get(ref)
        return f"{v / t:.3g}" if v is not None and t else "–"

    lines = ["| noise | draw | truth held-out MSE | CV choice | CV / truth | CV / rank-8 oracle | rank-8 defaults / truth "
             "| Adam, inner early stopping / truth | surprise best / truth | CV s | default penalties "
             "| best in the grid / truth (setting) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        choice = r.get("cv_choice")
        ch = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in choice.items()) \
            if isinstance(choice, dict) else "–"
        t = r.get("truth_val_mse")
        wall = f"{r['cv_wall_s']:.0f}" if "cv_wall_s" in r else "–"
        g = r.get("grid_best_setting")
        grid = (f"{ratio(r, 'grid_best_val_mse')} (rank {g['rank']}, {g['loss']}, reg {g['reg']:.2g})" if g else "–")
        lines.append(f"| {r['kind']} | {r['draw']} | {t:.4g} | {ch} | {ratio(r, 'cv_val_mse')} | "
                     f"{ratio(r, 'cv_val_mse', 'oracle8_val_mse')} | {ratio(r, 'default_val_mse')} | "
                     f"{ratio(r, 'adam_val_mse')} | {ratio(r, 'surprise_best_val_mse')} | {wall} | "
                     f"{r.get('cv_penalties', '–')} | {grid} |"
                     if t is not None else f"| {r['kind']} | {r['draw']} |" + " – |" * 10)
    lines += ["", summary_table(rows)]
    text = "\n".join(lines)
    with open(os.path.join(args.root, "noise.md"), "w") as fh:
        fh.write(text + "\n")
    print(text)


LIMIT = 1.3  # the CV choice's held-out MSE at most this many times the truth's, on every draw


def summary_table(rows) -> str:
    """Per noise kind over its draws with every fit done: the worst CV / truth, and the draws where the CV choice
    beats surprise's best (on the same entries) and the rank-8 defaults."""
    out = [f"| noise | draws | CV / truth: worst (mean) | draws with CV / truth <= {LIMIT} | draws CV below surprise's "
           "best | draws CV below the rank-8 defaults | rank-8 defaults / truth: best – worst |",
           "|---|---|---|---|---|---|---|"]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        done = [r for r in rows if r["kind"] == kind and r.get("truth_val_mse")
                and all(k in r for k in ("cv_val_mse", "default_val_mse", "surprise_best_val_mse"))]
        if not done:
            continue
        cv = np.asarray([r["cv_val_mse"] / r["truth_val_mse"] for r in done])
        de = np.asarray([r["default_val_mse"] / r["truth_val_mse"] for r in done])
        below_s = sum(r["cv_val_mse"] < r["surprise_best_val_mse"] for r in done)
        below_d = sum(r["cv_val_mse"] < r["default_val_mse"] for r in done)
        out.append(f"| {kind} | {len(done)} | {cv.max():.4g} ({cv.mean():.4g}) | {int(np.sum(cv <= LIMIT))}/{len(done)} "
                   f"| {below_s}/{len(done)} | {below_d}/{len(done)} | {de.min():.3g} – {de.max():.3g} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("make", "run", "table", "bound"):
        p = sub.add_parser(name)
        p.add_argument("--root", default=ROOT)
        p.add_argument("--kinds", default=",".join(KINDS), type=lambda s: s.split(","))
        p.add_argument("--draws", type=int, default=4)
        if name in ("run", "bound"):
            p.add_argument("--cv-seeds", type=int, default=1, help="seeds per (fold, setting) and for the refit")
            p.add_argument("--stop-after", type=float, default=0.0)
        if name == "run":
            p.add_argument("--folds", type=int, default=5)
            p.add_argument("--fits", default="cv,default,surprise,adam", type=lambda s: s.split(","))
    args = ap.parse_args(argv)
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        print(f"error: unknown noise kind {bad[0]!r}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    {"make": cmd_make, "run": cmd_run, "table": cmd_table, "bound": cmd_bound}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

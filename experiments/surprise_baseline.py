"""The recommender-system baselines a practitioner would try: surprise's SVD and NMF on a run's own split.

    python experiments/surprise_baseline.py RUN_DIR [--k 3] [--factors N] [--out FILE]

Reads the run's data and split exactly as the run did (its config.json:
``--data``, split key or fraction and seed; for the synthetic problem the
first seed's draw), fits scikit-surprise (the ``bench`` extra) on the run's
training entries only and scores the run's held-out entries:

- ``SVD`` (Funk SVD with user/item biases, SGD) and ``NMF`` (non-negative,
  SGD), both at surprise's defaults with ``n_factors`` = the run's rank
  (``--factors N``: N instead, e.g. surprise's own default 100 for SVD);
- each over a small grid of its regularisation (SVD ``reg_all``, NMF
  ``reg_pu`` = ``reg_qi``), the value chosen by surprise's own ``--k``-fold
  cross-validation on the training entries (``cross_validate``, RMSE), never
  by the held-out entries (``reg_pu`` = ``reg_qi`` for NMF); every grid
  value's held-out MSE is reported too.

Predictions are clipped to the range of the training values (surprise's
``rating_scale``). The run's own held-out MSE (the seed predictions come
from, lrfactor.experiment.best_seed) is put beside them. Writes
``surprise.json`` (default: into the run folder) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

SVD_REG = (0.005, 0.02, 0.1)  # reg_all; surprise's default 0.02
NMF_REG = (0.02, 0.06, 0.2)  # reg_pu = reg_qi; surprise's default 0.06


def run_split(folder: str):
    """(table, run summary, run config) of a saved run: its data with the run's split."""
    import jax

    from lrfactor import experiment, results, tables

    cfg = experiment.load_config(folder)
    with jax.enable_x64(True):
        prep = experiment.prepare(cfg, seeds=[cfg.seed])
    table = prep.table
    if table is None:  # the synthetic problem: the first seed's draw
        p = jax.tree.map(lambda x: np.asarray(x)[0], prep.problem)
        table = tables.table_from_dense(p.V, p.train, p.val)
    return table, results.read_json(os.path.join(folder, "summary.json")), cfg


def fit_surprise(table, rank: int, k: int, seed: int = 0) -> dict:
    """surprise's SVD and NMF on the training entries, scored on the held-out ones."""
    import pandas as pd
    from surprise import NMF, SVD, Dataset, Reader
    from surprise.model_selection import KFold, cross_validate

    tr, va = ~table.is_val, table.is_val
    lo, hi = float(table.vals[tr].min()), float(table.vals[tr].max())
    df = pd.DataFrame({"u": table.rows[tr], "i": table.cols[tr], "r": table.vals[tr]})
    data = Dataset.load_from_df(df, Reader(rating_scale=(lo, hi)))
    trainset = data.build_full_trainset()
    held = list(zip(table.rows[va].tolist(), table.cols[va].tolist(), table.vals[va].tolist()))
    train = list(zip(table.rows[tr].tolist(), table.cols[tr].tolist(), table.vals[tr].tolist()))

    def score(algo) -> dict:
        t0 = time.perf_counter()
        algo.fit(trainset)
        fit_s = time.perf_counter() - t0
        mse = lambda entries: float(np.mean([(p.est - p.r_ui) ** 2 for p in algo.test(entries)]))
        return {"train_mse": mse(train), "val_mse": mse(held), "fit_s": fit_s}

    out = {}
    for name, cls, key, grid, default in (("svd", SVD, "reg_all", SVD_REG, 0.02),
                                          ("nmf", NMF, "reg_pu", NMF_REG, 0.06)):
        def make(reg):
            kw = {"reg_all": reg} if key == "reg_all" else {"reg_pu": reg, "reg_qi": reg}
            return cls(n_factors=rank, random_state=seed, **kw)

        per_reg = {str(reg): score(make(reg)) for reg in grid}
        folds = KFold(n_splits=k, random_state=seed, shuffle=True)
        cv_rmse = {reg: float(np.mean(cross_validate(make(reg), data, measures=["rmse"], cv=folds)["test_rmse"]))
                   for reg in grid}
        chosen = min(grid, key=lambda reg: cv_rmse[reg])
        out[name] = {"default": {key: default, **score(make(default))}, "grid": per_reg,
                     "cv_rmse": {str(r): v for r, v in cv_rmse.items()},
                     "cv_choice": {key: chosen, **per_reg[str(chosen)]}}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a saved lrfactor run folder")
    p.add_argument("--k", type=int, default=3, help="folds of surprise's cross-validation over the regularisation")
    p.add_argument("--factors", type=int, default=None, help="n_factors of SVD and NMF (default: the run's rank)")
    p.add_argument("--out", default=None, help="JSON file to write (default RUN/surprise.json)")
    args = p.parse_args(argv)
    if args.factors is not None and args.factors < 1:
        print(f"error: --factors must be >= 1, got {args.factors}", file=sys.stderr)
        return 2
    try:
        import surprise
    except ImportError:
        print("error: scikit-surprise is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    from lrfactor import results
    from lrfactor.config import ConfigError
    from lrfactor.experiment import best_seed
    from lrfactor.problems import ProblemError

    try:
        table, summary, cfg = run_split(args.run)
    except (ConfigError, ProblemError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    factors = args.factors or cfg.rank
    res = fit_surprise(table, factors, args.k)
    k = best_seed(summary)
    rec = {"run": args.run, "rank": cfg.rank, "n_factors": factors, "n_train": table.n_train, "n_val": table.n_val,
           "lrfactor": {"solver": summary["solver"], "seed": summary["seeds"][k],
                        "train_mse": summary["final"]["train_mse"][k], "val_mse": summary["final"]["val_mse"][k]},
           "surprise": res, **results.environment(), "surprise_version": surprise.__version__}
    out = args.out or os.path.join(args.run, "surprise.json")
    results.write_json(out, rec)
    print(f"{'method':44s} {'train MSE':>11s} {'held-out MSE':>13s}")
    print(f"{'lrfactor ' + summary['solver']:44s} {rec['lrfactor']['train_mse']:11.4g} {rec['lrfactor']['val_mse']:13.4g}")
    for name, r in res.items():
        for label, v in (("default", r["default"]), ("cv-chosen", r["cv_choice"])):
            reg = {a: b for a, b in v.items() if a.startswith("reg")}
            print(f"{f'surprise {name} {label} {reg}':44s} {v['train_mse']:11.4g} {v['val_mse']:13.4g}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""K-fold cross-validation on the training entries: folds, grid, one batch, scores, the choice, cv.json.

On noisy data the best training fit is not the best predictor of unseen
entries; the rank, the penalty and the loss have to be chosen, and only the
training entries may choose them (the held-out entries stay for the final
report). ``--cv K``:

1. **Folds** (:func:`assign_folds`). The training entries are dealt into K
   folds, stratified by row: a row's entries, in a random order, go round the
   folds from a random first fold, so every fold holds ⌊c/K⌋ or ⌈c/K⌉ of a
   row's c entries; columns are balanced only on average. Fitting fold k
   means fitting the training entries outside fold k and scoring fold k. A
   row or column whose training entries would all lie in fold k would have no
   entry to fit there: one of them is *pinned* instead: it is never held out,
   it stays a training entry in every fold (a row or column with a single
   training entry is always pinned). Held-out entries are not in the folds.
   With per-entry weights each entry keeps its weight in every fold, and the
   entry pinned for a row or column is one of positive weight (an entry of
   weight 0 counts as not observed). Fold scores stay plain held-out MSEs.
2. **Grid** (:func:`grid`). Every setting of ``lrfactor.config.CV_GRID``
   (rank, l2, reg, loss): the values given (a comma list, or one value), else
   the default values there, a function of the data; a setting the solver does
   not use keeps its one value. The grid is their product, in the order given.
   The default factor penalties depend on the loss too
   (:func:`lrfactor.config.reg_scale`: the same strengths at each loss's
   scale), so that axis holds values per loss and the product takes, for each
   loss, its own.
3. **One batch per shape** (:func:`run_grid`). Each batch element is one
   (fold, setting, seed) with its own problem (training entries = the
   training entries outside the fold, held-out entries = the fold), run by the
   driver as one ``jit(vmap(scan))``. A fold run only has to *rank* the
   settings, so it runs the run's settings loosened where ranking does not
   need them (:func:`lrfactor.config.cv_fold_config`; ``fold_run`` in
   cv.json; gauss_newton, ``CV_FOLD`` there): no restarts (they polish the
   last percent of a fit that stalled, not its basin), a looser ``ftol`` (a
   smaller relative decrease per step moves a fold score far less than the
   gaps between settings) and fewer steps (a setting still crawling then is
   scored where it stands). The refit (5.) runs with the run's own settings.
   A batch runs until its slowest element stops, without the driver's
   recompilation for the running elements. Settings that fix the compiled
   program cannot share it: the rank fixes array shapes (and cannot be padded with
   switched-off components: W = exp(A) has no exact zero, and the r × r blocks
   of a dead component are singular), the loss picks the code. So elements
   are grouped by every setting the solver does not take as a value
   (``Solver.traced``; gauss_newton takes l2 as one): one compiled batch per
   (rank, loss) for gauss_newton, per (rank, loss, l2) for the others. Each
   element starts from the initialization its seed gives in a plain run.
   (adam and sgd keep the question's ReduceLROnPlateau, which watches the
   held-out entries, here the fold, as Keras' ``validation_data`` would;
   with ``--inner-val`` both callbacks watch a split of the fold's training
   entries instead and the fold is only scored.)
4. **Scores and the choice** (:func:`scores`). A (fold, setting) is scored by
   the held-out MSE on the fold of its seed with the lowest final training
   objective (the seed a plain run predicts with); a setting by the mean of
   its fold scores. The lowest mean wins (the first in grid order on a tie; a
   setting with a non-finite fold score never wins).
5. **Refit** (:func:`execute`): the chosen setting on all training entries,
   by the normal run path, into the output folder; the held-out entries are
   scored there only. ``cv.json`` holds the grid, every fold score and the
   choice.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lrfactor import config as C
from lrfactor import driver, experiment, layout, losses, results, tables
from lrfactor.config import RunConfig
from lrfactor.problems import ProblemError, stack_coo
from lrfactor.solvers import make_solver

CV_FILE = "cv.json"


class CVError(RuntimeError):
    """Cross-validation ran but chose nothing (every setting failed on some fold); one line."""

PINNED = -1  # fold label of a training entry that is never held out


# ---------------------------------------------------------------------------
# Folds


def assign_folds(rows, cols, shape, k: int, seed: int, positive=None) -> np.ndarray:
    """Fold of each training entry (0..k-1), or ``PINNED``: see the module docstring.

    ``rows``, ``cols``: the training entries' indices (L,). Every row and
    column with a training entry keeps at least one entry outside each fold.
    ``positive`` (L,) bool: with per-entry weights, the entries of positive
    weight; then every row and column keeps one of those outside each fold
    (an entry of weight 0 counts as not observed, so it cannot be the one
    that a fold's fit of a row rests on).
    """
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    n, m = shape
    L = rows.size
    pos = np.ones(L, bool) if positive is None else np.asarray(positive, bool)
    rng = np.random.default_rng(seed)
    u = rng.random(L)
    order = np.lexsort((u, rows))  # by row, in a random order within each row
    r_sorted = rows[order]
    first = np.searchsorted(r_sorted, r_sorted, side="left")  # index of the row's first entry in the order
    offset = rng.integers(k, size=n)
    fold = np.empty(L, np.int64)
    fold[order] = (np.arange(L) - first + offset[r_sorted]) % k
    for f in range(k):
        for idx, size in ((rows, n), (cols, m)):
            fitted = np.bincount(idx[(fold != f) & pos], minlength=size)
            seen = np.bincount(idx[pos], minlength=size)
            empty = (fitted == 0) & (seen > 0)
            if not empty.any():
                continue
            cand = np.flatnonzero((fold == f) & pos & empty[idx])
            cand = cand[np.argsort(u[cand], kind="stable")]  # the pinned entry: the first in the random order
            _, pick = np.unique(idx[cand], return_index=True)
            fold[cand[pick]] = PINNED
    return fold


def fold_table(table: tables.Table, fold: np.ndarray, f: int) -> tables.Table:
    """The training entries of ``table`` as a table whose held-out entries are fold ``f``.

    The table's own held-out entries are left out, so they cannot reach any
    fold's fit or score. Each entry keeps its weight: a fold fits the weights
    of its training entries (and its held-out fold carries theirs).
    """
    tr = ~table.is_val
    return dataclasses.replace(table, rows=table.rows[tr], cols=table.cols[tr], vals=table.vals[tr],
                               is_val=np.asarray(fold == f), W_true=None, H_true=None,
                               weights=None if table.weights is None else table.weights[tr])


# ---------------------------------------------------------------------------
# The grid


class DataSummary(NamedTuple):
    """What the default grid depends on."""

    n: int  # rows
    m: int  # columns
    n_fit: int  # fewest entries any fold fits
    mean_sq: float  # mean V² over the training entries
    mean: float  # mean V over the training entries
    min_val: float  # smallest observed value, held-out ones included (which losses the data allow, as the refit checks)


def summarise(table: tables.Table, fold: np.ndarray, k: int) -> DataSummary:
    tr = ~table.is_val
    n_fit = min(int(np.count_nonzero(fold != f)) for f in range(k))
    v = table.vals[tr]
    # min_val: over every observed value, as the refit's data check
    # (lrfactor.tables.check_loss) reads them: the grid offers no loss that
    # the refit of its choice would refuse. Only the sign is read.
    return DataSummary(table.shape[0], table.shape[1], n_fit, float(np.mean(v**2)), float(np.mean(v)),
                       float(np.min(table.vals)))


def axes(cfg: RunConfig, data: DataSummary) -> dict:
    """{setting: values} of every grid axis (``CV_GRID``): given, default, or the one value used.

    An axis of ``lrfactor.config.PER_LOSS`` left to its default holds
    {loss: values} instead, the default for each loss of the loss axis (the
    default factor penalties: the same strengths, each at its loss's scale).
    """
    known = C.choices()
    out = {}
    defaults = []
    for name, default in C.CV_GRID.items():
        v = getattr(cfg, name)
        if isinstance(v, (tuple, list)):
            out[name] = tuple(v)
        elif C.unused_reason(name, cfg, known) is not None:
            out[name] = (v,)
        else:
            out[name] = None
            defaults.append(name)
    for name in defaults:  # the loss axis first: the per-loss defaults read it
        if name not in C.PER_LOSS:
            out[name] = tuple(C.CV_GRID[name](data, cfg))
    for name in defaults:
        if name in C.PER_LOSS:
            out[name] = {l: tuple(C.CV_GRID[name](data, dataclasses.replace(cfg, loss=l))) for l in out["loss"]}
    return out


def grid(ax: dict) -> list:
    """The settings of the grid: the product of the axes, first axis slowest, as dicts.

    A per-loss axis ({loss: values}, every loss with as many values) takes
    its i-th value for the setting's loss: the product runs over the positions.
    """
    names = list(ax)
    per = {a: len(next(iter(ax[a].values()))) for a in names if isinstance(ax[a], dict)}
    for a, k in per.items():
        if any(len(v) != k for v in ax[a].values()):
            raise ValueError(f"per-loss axis {a!r}: every loss needs as many values")
    ranges = [range(per[a]) if a in per else ax[a] for a in names]
    out = []
    for vals in itertools.product(*ranges):
        s = dict(zip(names, vals))
        for a in per:
            s[a] = ax[a][s["loss"]][s[a]]
        out.append(s)
    return out


def axis_values(ax: dict, name: str) -> list:
    """The distinct values of axis ``name``, a per-loss one's of every loss together, in order of appearance."""
    v = ax[name]
    flat = [x for vs in v.values() for x in vs] if isinstance(v, dict) else list(v)
    return list(dict.fromkeys(flat))


# ---------------------------------------------------------------------------
# The batch


class GridResult(NamedTuple):
    """Every (fold, setting, seed) of a grid run; arrays are (K, G, S)."""

    val_mse: np.ndarray  # held-out MSE on the fold
    train_mse: np.ndarray  # MSE on the entries fitted
    objective: np.ndarray  # the setting's training objective (penalty included)
    steps: np.ndarray  # steps taken
    params: list  # params[f][g]: the final parameters of the S seeds, seed axis first
    groups: list  # [{"settings": [grid indices], "elements": int, "compile_s": float, "wall_s": float}]


def _stack(problems: list):
    if layout.is_coo(problems[0]):
        return stack_coo(problems)
    return jax.tree.map(lambda *x: jnp.stack(x), *problems)


def run_grid(cfg: RunConfig, table: tables.Table, fold: np.ndarray, settings: list, seeds: list,
             progress: bool = False) -> GridResult:
    """Fit every (fold, setting, seed): one compiled batch per group of settings that share a program.

    ``cfg``: the run's settings (solver, steps, precision, ...); each element
    runs ``cfg`` with its setting's values and the fold settings
    (:func:`lrfactor.config.cv_fold_config`), on the problem of its fold.
    """
    k = cfg.cv
    dtype = jnp.float64 if cfg.precision == 64 else jnp.float32
    n, m = table.shape
    kind = experiment._layout(cfg, cfg.layout, n, m)
    folds = [experiment.problem_from_table(fold_table(table, fold, f), kind, dtype) for f in range(k)]
    stacked = _stack(folds)
    n_train_max = int(max(np.max(np.asarray(layout.count(p))) for p in folds))
    base = [C.cv_fold_config(dataclasses.replace(cfg, **s)) for s in settings]
    probe = make_solver(base[0], {"n_train_max": n_train_max, "layout": kind})
    traced = probe.traced
    static = [a for a in settings[0] if a not in traced]
    by_program = {}
    for g, s in enumerate(settings):
        by_program.setdefault(tuple(s[a] for a in static), []).append(g)

    S, G = len(seeds), len(settings)
    out = {name: np.full((k, G, S), np.nan) for name in ("val_mse", "train_mse", "objective")}
    out["steps"] = np.zeros((k, G, S), np.int64)
    params = [[None] * G for _ in range(k)]
    groups = []
    keys = experiment.seed_keys(seeds)
    for members in by_program.values():
        gcfg = base[members[0]]
        solver = make_solver(gcfg, {"n_train_max": n_train_max, "layout": kind})
        elems = [(f, g, s) for f in range(k) for g in members for s in range(S)]
        pad = (-len(elems)) % jax.local_device_count()  # the driver shards the batch over the devices
        elems += elems[-1:] * pad
        f_idx = np.asarray([e[0] for e in elems])
        s_idx = np.asarray([e[2] for e in elems])
        problem = jax.tree.map(lambda x: x[f_idx], stacked)
        ekeys = keys[s_idx]
        values = {a: jnp.asarray([settings[e[1]][a] for e in elems], dtype) for a in traced}

        def init_one(key, problem, tv):
            params = solver.init_params(jax.random.fold_in(key, 1), problem)
            ks = jax.random.fold_in(key, 2)
            state = solver.init_traced(params, problem, ks, tv) if traced else solver.init(params, problem, ks)
            return driver.Carry(state, jnp.asarray(0, jnp.int32))

        carry = jax.jit(jax.vmap(init_one))(ekeys, problem, values)
        # No active-set compaction: at the fold settings the elements of a batch
        # stop within a few tens of steps of each other, and recompiling the
        # chunk for the running ones cost more compilation than it saved
        # stepping (results/selection/README.md).
        res = driver.run(solver, problem, carry, steps=gcfg.steps, chunk=gcfg.chunk, problem_axis=0,
                         progress=progress, compact=False)
        p = jax.device_get(res.carry.state.params)
        # The objective with each element's own penalties (the solver's objective
        # holds its factory's); the loss is the same for the whole group.
        l2s, regs = (jnp.asarray([settings[e[1]][a] for e in elems], dtype) for a in ("l2", "reg"))
        obj = jax.jit(jax.vmap(lambda q, prob, w, f: losses.objective(q, prob, gcfg.loss, w, f)))(p, problem, l2s, regs)
        obj = np.asarray(obj)
        for i, (f, g, s) in enumerate(elems[: len(elems) - pad]):
            out["val_mse"][f, g, s] = res.history["val_mse"][i, -1]
            out["train_mse"][f, g, s] = res.history["train_mse"][i, -1]
            out["objective"][f, g, s] = obj[i]
            out["steps"][f, g, s] = int(np.asarray(res.carry.t)[i])
        for f in range(k):
            for g in members:
                rows = [i for i, e in enumerate(elems[: len(elems) - pad]) if e[0] == f and e[1] == g]
                params[f][g] = jax.tree.map(lambda x: np.asarray(x)[rows], p)
        groups.append({"settings": members, "elements": len(elems) - pad, "compile_s": res.compile_s,
                       "wall_s": res.wall_s})
    return GridResult(out["val_mse"], out["train_mse"], out["objective"], out["steps"], params, groups)


# ---------------------------------------------------------------------------
# Scores and the choice


def scores(res: GridResult) -> dict:
    """Fold scores (K, G) from the best-objective seed of each (fold, setting), their mean and the choice."""
    obj = np.where(np.isfinite(res.objective), res.objective, np.inf)
    best = np.argmin(obj, axis=2)  # (K, G)
    fold_val = np.take_along_axis(res.val_mse, best[..., None], axis=2)[..., 0]
    fold_train = np.take_along_axis(res.train_mse, best[..., None], axis=2)[..., 0]
    mean = np.mean(fold_val, axis=0)
    ok = np.all(np.isfinite(fold_val), axis=0)
    key = np.where(ok, mean, np.inf)
    choice = int(np.argmin(key)) if np.isfinite(key).any() else None
    return {"fold_val_mse": fold_val, "fold_train_mse": fold_train, "best_seed": best, "mean_val_mse": mean,
            "std_val_mse": np.std(fold_val, axis=0, ddof=1) if fold_val.shape[0] > 1 else np.zeros_like(mean),
            "choice": choice}


# ---------------------------------------------------------------------------
# The whole command


class CVPrepared(NamedTuple):
    cfg: RunConfig  # the run's config, lists of values included
    prep: experiment.Prepared  # the data read and checked (its problem is not used)
    fold: np.ndarray  # (L_train,) fold of each training entry, PINNED for never held out
    axes: dict  # {setting: values}
    settings: list  # the grid, as dicts


def prepare(cfg: RunConfig, table: Optional[tables.Table] = None) -> CVPrepared:
    """Read and check the data, assign the folds, build the grid. Raises ProblemError; computes no fit."""
    lists = C.grid_lists(cfg)
    one = dataclasses.replace(cfg, **{a: (min(v) if a == "rank" else v[0]) for a, v in lists.items()})
    prep = experiment.prepare(one, table=table)
    table = prep.table
    n, m = table.shape
    for loss in lists.get("loss", ()):  # prepare checked the first; each refit would check its own
        tables.check_loss(table, loss, cfg.solver)
    for r in lists.get("rank", ()):
        if r > min(n, m):
            raise ProblemError(f"{table.source}: rank {r} must be between 1 and min(n, m) = {min(n, m)}")
    tr = ~table.is_val
    if table.n_train < cfg.cv:
        raise ProblemError(f"{table.source}: {table.n_train} training entries cannot fill {cfg.cv} folds")
    positive = None if table.weights is None else table.weights[tr] > 0
    fold = assign_folds(table.rows[tr], table.cols[tr], table.shape, cfg.cv, cfg.cv_seed, positive)
    for f in range(cfg.cv):
        if not np.any(fold == f):
            raise ProblemError(f"{table.source}: fold {f} of {cfg.cv} would be empty (every entry it could hold "
                               f"is the only training entry of its row or column); use a smaller --cv")
    ax = axes(cfg, summarise(table, fold, cfg.cv))
    return CVPrepared(cfg, prep, fold, ax, grid(ax))


def record(cvp: CVPrepared, res: GridResult, sc: dict, wall_s: float) -> dict:
    """What cv.json holds."""
    cfg = cvp.cfg
    fold_cfg = C.cv_fold_config(cfg)
    choice = None if sc["choice"] is None else cvp.settings[sc["choice"]]
    return {
        "k": cfg.cv,
        "cv_seed": cfg.cv_seed,
        "solver": cfg.solver,
        "seeds": cvp.prep.seeds,
        "steps": cfg.steps,
        # what every fold run used of the settings cross-validation loosens (lrfactor.config.cv_fold_config)
        "fold_run": {a: getattr(fold_cfg, a) for a in ("steps", "restarts", "ftol") if C.unused_reason(a, fold_cfg) is None},
        "axes": cvp.axes,
        "settings": cvp.settings,
        "fold_sizes": [int(np.count_nonzero(cvp.fold == f)) for f in range(cfg.cv)],
        "pinned": int(np.count_nonzero(cvp.fold == PINNED)),
        "scores": {
            "val_mse": sc["fold_val_mse"],  # (K, G): each fold's held-out MSE, best-objective seed
            "train_mse": sc["fold_train_mse"],
            "mean_val_mse": sc["mean_val_mse"],
            "std_val_mse": sc["std_val_mse"],
            "seed_val_mse": res.val_mse,  # (K, G, S): every seed
            "seed_objective": res.objective,
            "seed_steps": res.steps,  # (K, G, S): steps each fold run took
        },
        "choice": {"index": sc["choice"], "setting": choice},
        "groups": [{**g, "settings": list(g["settings"])} for g in res.groups],
        "wall_s": wall_s,
    }


def refit_config(cvp: CVPrepared, choice: dict) -> RunConfig:
    """The run of the chosen setting on all training entries (cross-validation off)."""
    return C.validate(dataclasses.replace(cvp.cfg, cv=0, cv_seed=0, **choice))


def execute(cvp: CVPrepared, out: Optional[str], progress: bool = False):
    """Cross-validate, write cv.json, refit the choice into ``out``. Returns (refit Outcome, cv record)."""
    t0 = time.perf_counter()
    res = run_grid(cvp.cfg, cvp.prep.table, cvp.fold, cvp.settings, cvp.prep.seeds, progress=progress)
    sc = scores(res)
    rec = record(cvp, res, sc, time.perf_counter() - t0)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        results.write_json(os.path.join(out, CV_FILE), rec)
    if sc["choice"] is None:
        raise CVError("no setting of the grid gave a finite held-out MSE on every fold (scores in cv.json)")
    cfg = refit_config(cvp, cvp.settings[sc["choice"]])
    prep = experiment.prepare(cfg, seeds=cvp.prep.seeds, table=cvp.prep.table)
    outcome = experiment.run_prepared(prep, out, progress=progress)
    brief = {"file": CV_FILE, "k": cvp.cfg.cv, "choice": cvp.settings[sc["choice"]],
             "mean_val_mse": float(sc["mean_val_mse"][sc["choice"]])}
    if out is not None:
        results.update_json(os.path.join(out, "summary.json"), cv=brief)
        summary = results.read_json(os.path.join(out, "summary.json"))
    else:
        summary = {**outcome.summary, "cv": results.plain(brief)}
    return outcome._replace(summary=summary), results.plain(rec)


def load(folder: str) -> dict:
    """cv.json of a cross-validated run folder."""
    return results.read_json(os.path.join(folder, CV_FILE))

"""A success-rate map: the question's recipe moved along one axis at a time, every solver on every cell.

    python experiments/success_map.py run          # run (or continue) the map, then aggregate and plot
    python experiments/success_map.py aggregate    # map.json and map.md, from the saved runs only
    python experiments/success_map.py plot         # success_map.png, from map.json only
    python experiments/success_map.py score RUN... # other run folders against the map's best-known
    python experiments/success_map.py combine --out DIR ROOT...  # several maps' runs as one map

The recipe is the question's (1000 × 100, true rank 12, factor scales
10**linspace(0, −2, 12), 50 % observed, model rank 8, no noise). One axis at a
time moves away from it, the others stay at the recipe:

    observed   --observed         0.1, 0.2, 0.3, 0.5, 0.9
    decay      --decay            1, 2, 3, 4
    shape      --n × --m          1000×100, 100×1000, 400×400, 3000×300
    rank       --rank (true 12)   8 (r < k), 12 (r = k), 16 (r > k)

``--axes observed=0.1,0.9 shape=400x400`` picks axes and values; cells
shared by several axes (the recipe itself) run once. The recipe runs
first, then the other cells in round-robin order over the axes (the first
value of every axis, then the second, ...), so a map stopped early covers
every axis.

Every (cell, solver) is one ``experiments/run.py`` process writing its
standard folder ``ROOT/runs/<cell>/<solver>``, all at ``--precision 64``: a
seed draws the data and the start, and the data draws depend on the dtype,
so only at one precision does a seed give every solver the same matrix (the
aggregation checks it). A folder whose summary.json says ``"complete": true``
is skipped, one with a checkpoint is resumed (``run.py --resume``), anything
else left by an interrupted process is removed and run again; so the map can
be built in several sittings and an interruption loses nothing finished. A
saved run made with other settings than the map asks for is refused, before
anything runs. Beside each run folder, ``<solver>.process.json`` records every
attempt (the exact command, exit status, process wall time, load averages) and
``<solver>.log`` its output; ``data.json`` holds the cell's data statistics
per seed, drawn exactly as the runs draw them.

Success (per cell and seed): lrfactor.success's rule, against the
best-known train MSE, the lowest of the oracle optimum's (summary.json
``reference``) and every solver's final train MSE on that seed:

    final train MSE ≤ 1.01 × best-known + FLOOR_REL × mean(V² over the training entries)

(FLOOR_REL = 1e-12; the module says why the absolute floor). Ratios (final /
best, held-out / oracle held-out) divide by max(reference, floor).

Well-posed (per cell): on average at least 2·r training entries per row and
per column (r the model rank), counted on the drawn masks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

ROOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT_DIR)

import numpy as np  # noqa: E402

from lrfactor import cli, results, success  # noqa: E402

RUN_PY = os.path.join(ROOT_DIR, "experiments", "run.py")
DEFAULT_ROOT = os.path.join("results", "success-map")
SOLVERS = ("gauss_newton", "hals", "adam")
SEEDS = "8,adam=4"  # seeds per solver: a default, then solver=N overrides
STEPS = "adam=2000"  # step budgets: solver=N overrides (others: run.py's default), or N for all
FLOOR_REL = success.FLOOR_REL  # absolute success floor, relative to mean(V²) over the training entries (see above)
WELL_POSED = 2  # training entries per row and per column, on average, per unit of model rank
# The axes and their values; the recipe's own value is in every list.
AXES = {
    "observed": (0.1, 0.2, 0.3, 0.5, 0.9),
    "decay": (1.0, 2.0, 3.0, 4.0),
    "shape": ((1000, 100), (100, 1000), (400, 400), (3000, 300)),
    "rank": (8, 12, 16),
}
RECIPE_FIELDS = ("n", "m", "true_rank", "decay", "observed", "rank")
RUN_FILES = ("config.json", "summary.json", "history.npz", "factors.npz", "predictions.npz", "checkpoint.npz")


class MapError(ValueError):
    """Bad input or inconsistent saved runs; the message is one line."""


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Recipe:
    n: int
    m: int
    true_rank: int
    decay: float
    observed: float
    rank: int

    def name(self) -> str:
        return f"n{self.n}-m{self.m}-k{self.true_rank}-d{self.decay:g}-o{self.observed:g}-r{self.rank}"

    def flags(self) -> list:
        return ["--n", str(self.n), "--m", str(self.m), "--true-rank", str(self.true_rank),
                "--decay", repr(float(self.decay)), "--observed", repr(float(self.observed)), "--rank", str(self.rank)]


def base_recipe(**given) -> Recipe:
    """The question's recipe (the run config's defaults), with the given fields replaced."""
    from lrfactor.config import RunConfig

    d = RunConfig()
    vals = {f: getattr(d, f) for f in RECIPE_FIELDS}
    vals.update({k: v for k, v in given.items() if v is not None})
    return Recipe(int(vals["n"]), int(vals["m"]), int(vals["true_rank"]), float(vals["decay"]),
                  float(vals["observed"]), int(vals["rank"]))


def _axis_value(axis: str, text: str):
    try:
        if axis == "shape":
            n, m = text.lower().split("x")
            return (int(n), int(m))
        if axis == "rank":
            return int(text)
        return float(text)
    except ValueError:
        want = "NxM" if axis == "shape" else "an integer" if axis == "rank" else "a number"
        raise MapError(f"--axes {axis}: {text!r} is not {want}") from None


def parse_axes(specs) -> dict:
    """``['observed', 'shape=400x400,100x1000']`` → {axis: values} (default values for a bare name)."""
    out = {}
    for spec in specs:
        name, eq, vals = spec.partition("=")
        if name not in AXES:
            raise MapError(f"--axes: unknown axis {name!r}; known axes: {', '.join(AXES)}")
        if name in out:
            raise MapError(f"--axes: axis {name!r} given twice")
        if not eq:
            out[name] = tuple(AXES[name])
            continue
        values = tuple(_axis_value(name, v) for v in vals.split(",") if v.strip())
        if not values:
            raise MapError(f"--axes {name}=: no values")
        out[name] = values
    return out


def move(base: Recipe, axis: str, value) -> Recipe:
    if axis == "shape":
        return dataclasses.replace(base, n=value[0], m=value[1])
    return dataclasses.replace(base, **{axis: value})


def value_label(axis: str, value) -> str:
    return f"{value[0]}×{value[1]}" if axis == "shape" else f"{value:g}"


def plan_cells(base: Recipe, axes: dict) -> tuple:
    """(entries, cells): one entry per (axis, value) in axis order; the unique cells in round-robin order."""
    entries = [{"axis": a, "value": v, "label": value_label(a, v), "cell": move(base, a, v).name()}
               for a, vals in axes.items() for v in vals]
    cells, seen = [], set()
    if any(e["cell"] == base.name() for e in entries):  # the recipe itself first: every axis passes through it
        cells, seen = [base], {base.name()}
    for i in range(max((len(v) for v in axes.values()), default=0)):
        for a, vals in axes.items():
            if i < len(vals):
                r = move(base, a, vals[i])
                if r.name() not in seen:
                    seen.add(r.name())
                    cells.append(r)
    return entries, cells


def parse_per_solver(text: str, solvers, what: str, strict: bool = True) -> dict:
    """``'8,adam=4'`` → {solver: 8, ..., adam: 4}; a solver given no value gets None (run.py's default).

    ``strict``: a solver=N naming a solver outside the map is an error (else,
    for the built-in defaults, it is ignored).
    """
    default, over = None, {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, eq, val = item.rpartition("=")
        try:
            v = int(val)
        except ValueError:
            raise MapError(f"--{what}: {item!r} is neither N nor solver=N") from None
        if v < 1:
            raise MapError(f"--{what}: {item!r} must be at least 1")
        if not eq:
            default = v
        elif name in solvers:
            over[name] = v
        elif strict:
            raise MapError(f"--{what}: {name!r} is not among the map's solvers ({', '.join(solvers)})")
    return {s: over.get(s, default) for s in solvers}


def run_flags(recipe: Recipe, solver: str, seeds: int, seed: int, steps: Optional[int], extra=()) -> list:
    """The run.py flags of one (cell, solver), output folder excluded; ``extra``: the map's --run-flags."""
    flags = ["--solver", solver] + recipe.flags() + ["--precision", "64", "--seeds", str(seeds), "--seed", str(seed)]
    return flags + (["--steps", str(steps)] if steps is not None else []) + list(extra)


def extra_fields(extra) -> tuple:
    """The settings that the map's --run-flags name, as run.py's parser reads them (``--max-step`` →
    ``max_step``, ``--no-backtrack`` → ``backtrack``, ``--lambda0=0.1`` → ``lambda0``). Raises MapError."""
    from lrfactor import config as C

    try:
        args = cli.parser().parse_args(list(extra))
    except cli.UsageError as e:
        raise MapError(f"--run-flags: {e}") from None
    return tuple(name for name in C.FIELDS if getattr(args, name, None) is not None)


def resolved_config(flags: list):
    """The resolved run config these flags give, validated exactly as run.py validates them. Raises MapError."""
    from lrfactor import config as C

    try:
        args = cli.parser().parse_args(flags)
        given = {name: getattr(args, name) for name in C.FIELDS if getattr(args, name) is not None}
        return C.resolve(C.validate(C.RunConfig(**C.grid_settings(given))))
    except (cli.UsageError, C.ConfigError) as e:
        raise MapError(f"run.py {' '.join(flags)}: {e}") from None


# What a saved run must share with the map's request to count as its (cell, solver).
MATCH = ("solver",) + RECIPE_FIELDS + ("precision", "seeds", "seed", "steps", "noise")


def mismatch(folder: str, want, also=()) -> Optional[str]:
    """Why the run saved in ``folder`` is not the run the map asks for, or None; ``also``: more
    settings to compare (those the map's --run-flags name)."""
    try:
        saved = results.read_json(os.path.join(folder, "config.json"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no readable config: the run never really started, it is redone
    diff = [f"{k}={saved.get(k)!r} (the map asks {getattr(want, k)!r})" for k in MATCH + tuple(also)
            if saved.get(k) != getattr(want, k)]
    return ", ".join(diff) or None


def run_state(folder: str) -> str:
    """'complete', 'resumable' (a checkpoint to continue), 'partial' (to redo) or 'absent'."""
    if not os.path.isdir(folder):
        return "absent"
    try:
        if results.read_json(os.path.join(folder, "summary.json")).get("complete") is True:
            return "complete"
    except (OSError, ValueError, AttributeError):
        pass
    if os.path.exists(os.path.join(folder, "checkpoint.npz")) and os.path.exists(os.path.join(folder, "config.json")):
        return "resumable"
    return "partial"


def _remove_partial(folder: str) -> None:
    """Remove what an interrupted run.py left (its own files only; anything else is refused)."""
    names = os.listdir(folder)
    foreign = [n for n in names if n not in RUN_FILES and not (n.startswith(".") and n.endswith(".tmp"))]
    if foreign:
        raise MapError(f"{folder}: unfinished run folder holds files run.py does not write ({', '.join(sorted(foreign))}); "
                       f"remove them or the folder")
    shutil.rmtree(folder)


# --------------------------------------------------------------------------- data statistics


def data_stats(recipe: Recipe, seeds: list) -> dict:
    """Per seed, the drawn problem's statistics: exactly what run.py draws for that seed at --precision 64.

    mean V² over the training entries (the success floor's scale), training
    entries per row and per column (mean and least), and the truncated truth's
    train MSE, which every run's summary must repeat (the aggregation's check
    that the data are the runs' data).
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    from lrfactor.config import RunConfig
    from lrfactor.experiment import prepare

    cfg = dataclasses.replace(RunConfig(), solver="gauss_newton", precision=64, seed=0, seeds=len(seeds),
                              **dataclasses.asdict(recipe))
    prep = prepare(cfg, seeds=seeds)
    V = np.asarray(prep.problem.V)[: len(seeds)]
    train = np.asarray(prep.problem.train)[: len(seeds)]
    k = min(recipe.rank, recipe.true_rank)
    W, H = (np.asarray(a)[: len(seeds), :, :k] for a in prep.truth)
    out = {"seeds": list(seeds), "mean_v2_train": [], "train_per_row": [], "train_per_col": [],
           "min_train_per_row": [], "min_train_per_col": [], "truth_train_mse": []}
    for s in range(len(seeds)):
        tr = train[s]
        out["mean_v2_train"].append(float(np.mean(V[s][tr] ** 2)))
        out["train_per_row"].append(float(tr.sum(axis=1).mean()))
        out["train_per_col"].append(float(tr.sum(axis=0).mean()))
        out["min_train_per_row"].append(int(tr.sum(axis=1).min()))
        out["min_train_per_col"].append(int(tr.sum(axis=0).min()))
        out["truth_train_mse"].append(float(np.mean((W[s] @ H[s].T - V[s])[tr] ** 2)))
    return {"recipe": dataclasses.asdict(recipe), "precision": 64, **out}


# --------------------------------------------------------------------------- running


def _loadavg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class Stop(Exception):
    """The map was asked to stop (SIGTERM or the deadline)."""


def launch(cmd: list, log_path: str, deadline: Optional[float]) -> dict:
    """Run one run.py process to its end, or terminate it at ``deadline`` (its checkpoint stays)."""
    t0 = time.time()
    rec = {"command": cmd, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_before": _loadavg()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    stopped = None
    with open(log_path, "ab") as log:
        log.write((f"$ {' '.join(cmd)}\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT_DIR)
        try:
            while True:
                try:
                    proc.wait(timeout=None if deadline is None else max(0.1, min(5.0, deadline - time.time())))
                    break
                except subprocess.TimeoutExpired:
                    if time.time() >= deadline:
                        stopped = "deadline"
                        raise Stop()
        except (Stop, KeyboardInterrupt) as e:
            stopped = stopped or "signal"
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rec.update(returncode=proc.returncode, process_s=time.time() - t0, load_after=_loadavg(), stopped=stopped)
            raise Stop(rec) from e
    rec.update(returncode=proc.returncode, process_s=time.time() - t0, load_after=_loadavg(), stopped=None)
    return rec


def _git_head() -> Optional[str]:
    """The commit the map's code is at (with '+dirty' when the work tree differs), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT_DIR, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT_DIR,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _from_root(path: str) -> str:
    """``path`` as run.py (started in the repository root) should see it: relative when inside the repository."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(ROOT_DIR))
    return os.path.abspath(path) if rel.startswith("..") else rel


def _record_attempt(path: str, rec: dict) -> None:
    attempts = results.read_json(path) if os.path.exists(path) else []
    results.write_json(path, attempts + [rec])


def run_map(args, launcher: Callable = launch) -> int:
    """Check the whole plan, then run every (cell, solver) not yet complete; aggregate after every cell."""
    solvers = tuple(args.solvers)
    base = base_recipe(n=args.n, m=args.m, true_rank=args.true_rank, decay=args.decay, observed=args.observed,
                       rank=args.rank)
    axes = parse_axes(args.axes)
    seeds = parse_per_solver(args.seeds or SEEDS, solvers, "seeds", strict=args.seeds is not None)
    if any(v is None for v in seeds.values()):
        raise MapError(f"--seeds {args.seeds}: give a number for every solver (N, or N,solver=M)")
    steps = parse_per_solver(args.steps or STEPS, solvers, "steps", strict=args.steps is not None)
    extra = shlex.split(args.run_flags)
    also = extra_fields(extra)
    entries, cells = plan_cells(base, axes)
    runs_dir = os.path.join(args.root, "runs")
    todo = []
    for recipe in cells:  # everything checked before anything runs or is written
        for s in solvers:
            flags = run_flags(recipe, s, seeds[s], args.seed, steps[s], extra)
            cfg = resolved_config(flags)
            folder = os.path.join(runs_dir, recipe.name(), s)
            state = run_state(folder)
            why = mismatch(folder, cfg, also) if state in ("complete", "resumable") else None
            if why:
                raise MapError(f"{folder} was run with other settings: {why}; use another --root or remove that folder")
            todo.append((recipe, s, flags, folder, state))
    plan = {
        "command": [os.path.relpath(__file__, ROOT_DIR)] + list(args.argv),
        "recipe": dataclasses.asdict(base),
        "recipe_cell": base.name(),
        "axes": entries,
        "cells": [r.name() for r in cells],
        "solvers": list(solvers),
        "seeds": seeds,
        "seed": args.seed,
        "steps": steps,
        "run_flags": extra,
        "precision": 64,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git_head(),
    }
    results.write_json(os.path.join(args.root, "plan.json"), plan)

    deadline = time.time() + args.stop_after if args.stop_after else None
    python = args.python or sys.executable
    stop = {"asked": False}

    def on_term(signum, frame):  # stop after recording the run in flight (its checkpoint stays)
        stop["asked"] = True
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    t0 = time.time()
    ran = 0
    try:
        for i, recipe in enumerate(cells):
            cell_dir = os.path.join(runs_dir, recipe.name())
            mine = [t for t in todo if t[0] == recipe and t[4] != "complete"]
            if not mine:
                continue
            need = sorted({args.seed + k for s in solvers for k in range(seeds[s])})
            data_path = os.path.join(cell_dir, "data.json")
            have = results.read_json(data_path)["seeds"] if os.path.exists(data_path) else []
            if not set(need) <= set(have):
                from lrfactor.problems import ProblemError

                try:
                    stats = data_stats(recipe, sorted(set(need) | set(have)))
                except ProblemError as e:  # run.py would refuse these data too
                    print(f"cell {recipe.name()} skipped: {e}", flush=True)
                    continue
                results.write_json(data_path, stats)
            for _, s, flags, folder, state in mine:
                if deadline is not None and time.time() >= deadline:
                    raise Stop()
                state = run_state(folder)
                if state == "complete":
                    continue
                if state == "partial":
                    _remove_partial(folder)
                cmd = [python, os.path.relpath(RUN_PY, ROOT_DIR)]
                where = _from_root(folder)
                cmd += ["--resume", where, "--quiet"] if state == "resumable" else flags + ["--out", where, "--quiet"]
                print(f"[{time.time() - t0:7.0f} s] cell {i + 1}/{len(cells)} {recipe.name()} {s}"
                      f"{' (resumed)' if state == 'resumable' else ''}", flush=True)
                proc_path = os.path.join(cell_dir, f"{s}.process.json")
                try:
                    rec = launcher(cmd, os.path.join(cell_dir, f"{s}.log"), deadline)
                except Stop as e:
                    if e.args:
                        _record_attempt(proc_path, e.args[0])
                    raise
                _record_attempt(proc_path, rec)
                ran += 1
                if rec["returncode"] != 0:
                    print(f"  run.py exited {rec['returncode']}: see {os.path.join(cell_dir, s + '.log')}", flush=True)
            write_map(args.root)
    except (Stop, KeyboardInterrupt):
        why = "SIGTERM" if stop["asked"] else "the --stop-after deadline"
        print(f"stopped by {why} after {time.time() - t0:.0f} s; finished runs are kept, an interrupted one "
              f"resumes from its checkpoint next time", flush=True)
    finally:
        signal.signal(signal.SIGTERM, old)
    paths = write_map(args.root)
    print(f"{ran} runs in {time.time() - t0:.0f} s; " + ", ".join(paths), flush=True)
    return 0


# --------------------------------------------------------------------------- aggregation (reads run folders only)


def _floats(xs) -> np.ndarray:
    """JSON numbers (null for NaN, "inf" strings) as floats."""
    return np.asarray([np.nan if x is None else float(x) for x in xs], float)


def _finite_or_none(x) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


def _same_data(truth: float, want: float, floor: float) -> bool:
    """Whether two truncated-truth train MSEs of one seed say the same data were drawn (to rounding)."""
    return abs(truth - want) <= 1e-8 * abs(want) + 1e-3 * floor


def _median(xs) -> Optional[float]:
    xs = np.asarray(xs, float)
    xs = xs[~np.isnan(xs)]
    return float(np.median(xs)) if xs.size else None


def _read_run(folder: str) -> dict:
    run = {"state": run_state(folder)}
    if run["state"] != "complete":
        return run
    run["config"] = results.read_json(os.path.join(folder, "config.json"))
    run["summary"] = results.read_json(os.path.join(folder, "summary.json"))
    hist = os.path.join(folder, "history.npz")
    if os.path.exists(hist):
        run["history"] = results.read_npz(hist)
    return run


def success_by_run(history: dict, seeds_pos: np.ndarray, threshold: np.ndarray) -> Optional[dict]:
    """For Gauss-Newton with restarts: which run (first, restart 1, ...) first brought each seed under ``threshold``.

    history ``train_mse`` is the best point so far, index t after t steps;
    ``restart`` counts the restarts taken after step t. A point first under the
    threshold at index t was produced in step t by the run in progress before
    that step, restart[t − 1].
    """
    if "restart" not in history or "train_mse" not in history:
        return None
    tr = np.asarray(history["train_mse"], float)[seeds_pos]
    rs = np.asarray(history["restart"])[seeds_pos]
    out = {}
    for k in range(len(seeds_pos)):
        hit = np.nonzero(tr[k] <= threshold[k])[0]
        if hit.size == 0:
            continue
        t = int(hit[0])
        which = 0 if t == 0 else int(rs[k, t - 1])
        key = "first" if which == 0 else f"restart_{which}"
        out[key] = out.get(key, 0) + 1
    return out


judge = success.judge  # (success, final / max(best, floor), threshold), per seed


def aggregate_cell(cell_dir: str, solvers) -> dict:
    """One cell's success table, from its run folders and data.json only. Raises MapError on inconsistent runs."""
    data_path = os.path.join(cell_dir, "data.json")
    if not os.path.exists(data_path):
        return {"ran": False, "solvers": {s: {"state": "absent"} for s in solvers}}
    data = results.read_json(data_path)
    recipe = Recipe(**data["recipe"])
    runs = {s: _read_run(os.path.join(cell_dir, s)) for s in solvers}
    done = {s: r for s, r in runs.items() if r["state"] == "complete"}
    seeds = sorted({x for r in done.values() for x in r["summary"]["seeds"]})
    dpos = {x: i for i, x in enumerate(data["seeds"])}
    missing = [x for x in seeds if x not in dpos]
    if missing:
        raise MapError(f"{data_path}: no statistics for seeds {missing}")
    # The runs' own data check: every summary's truncated-truth train MSE is data.json's on that seed.
    mean_v2 = {x: data["mean_v2_train"][dpos[x]] for x in seeds}
    floor = {x: FLOOR_REL * mean_v2[x] for x in seeds}
    best = {x: np.inf for x in seeds}
    oracle_val = {}
    for s, r in done.items():
        summ, ss = r["summary"], r["summary"]["seeds"]
        ref = summ.get("reference", {})
        if "truth_train_mse" not in ref or "oracle_train_mse" not in ref:
            raise MapError(f"{os.path.join(cell_dir, s)}: summary.json has no truth/oracle reference")
        truth = _floats(ref["truth_train_mse"])
        final = _floats(summ["final"]["train_mse"])
        orc, orc_val = _floats(ref["oracle_train_mse"]), _floats(ref["oracle_val_mse"])
        for k, x in enumerate(ss):
            want = data["truth_train_mse"][dpos[x]]
            if not _same_data(truth[k], want, floor[x]):
                raise MapError(f"{os.path.join(cell_dir, s)}: seed {x} ran on other data than data.json says "
                               f"(truncated truth train MSE {truth[k]:.6g} against {want:.6g})")
            for v in (orc[k], final[k]):
                if np.isfinite(v):
                    best[x] = min(best[x], v)
            oracle_val[x] = orc_val[k] if np.isfinite(orc_val[k]) else oracle_val.get(x, np.nan)
    out_solvers = {}
    for s, r in runs.items():
        row = {"state": r["state"]}
        attempts_path = os.path.join(cell_dir, f"{s}.process.json")
        attempts = results.read_json(attempts_path) if os.path.exists(attempts_path) else []
        row["commands"] = [a["command"] for a in attempts]
        row["process_s"] = float(sum(a.get("process_s", 0.0) for a in attempts))
        row["attempts"] = [{k: a.get(k) for k in ("started", "returncode", "process_s", "load_before", "load_after",
                                                   "stopped")} for a in attempts]
        if r["state"] == "complete":
            summ = r["summary"]
            ss = list(summ["seeds"])
            final = _floats(summ["final"]["train_mse"])
            val = _floats(summ["final"]["val_mse"])
            b = np.asarray([best[x] for x in ss])
            fl = np.asarray([floor[x] for x in ss])
            ok, rel, thr = judge(final, b, fl)
            with np.errstate(invalid="ignore", divide="ignore"):
                rel_val = val / np.maximum(np.asarray([oracle_val[x] for x in ss]), fl)
            cfg = r["config"]["config"]
            S = len(ss)
            steps_final = np.asarray(summ["final"]["steps"], int)
            seed_wall = None
            h = r.get("history", {})
            if "wall_s" in h:
                w = np.asarray(h["wall_s"], float)
                idx = np.minimum(steps_final, w.shape[1] - 1)
                seed_wall = _median(w[np.arange(S), idx] / S)
            row.update({
                "seeds": ss,
                "steps_budget": cfg.get("steps"),
                "final_steps": steps_final.tolist(),
                "final_train_mse": final.tolist(),
                "final_val_mse": val.tolist(),
                "success": ok.tolist(),
                "n_success": int(ok.sum()),
                "n_seeds": S,
                "rate": float(ok.mean()),
                "median_final_over_best": _median(rel),
                "median_val_over_oracle_val": _median(rel_val),
                "wall_s": summ.get("wall_s"),
                "compile_s": summ.get("compile_s"),
                "wall_per_seed_s": (summ.get("wall_s", 0.0) + summ.get("compile_s", 0.0)) / S,
                "median_seed_stop_s": seed_wall,
            })
            if s == "gauss_newton" and h:
                pos = np.arange(S)
                split = success_by_run(h, pos[ok], thr[ok])
                row["success_by_run"] = split if split is not None else {"first": int(ok.sum())}
        out_solvers[s] = row
    per_row = float(np.mean(data["train_per_row"]))
    per_col = float(np.mean(data["train_per_col"]))
    two_r = WELL_POSED * recipe.rank
    return {
        "ran": bool(done),
        "recipe": dataclasses.asdict(recipe),
        "seeds": seeds,
        "train_per_row": per_row,
        "train_per_col": per_col,
        "min_train_per_row": int(min(data["min_train_per_row"])),
        "min_train_per_col": int(min(data["min_train_per_col"])),
        "two_r": two_r,
        "well_posed": bool(per_row >= two_r and per_col >= two_r),
        "mean_v2_train": _median([mean_v2[x] for x in seeds]) if seeds else _median(data["mean_v2_train"]),
        "floor": {str(x): floor[x] for x in seeds},
        "best_train_mse": {str(x): _finite_or_none(best[x]) for x in seeds},
        "oracle_val_mse": {str(x): _finite_or_none(oracle_val.get(x, np.nan)) for x in seeds},
        "solvers": out_solvers,
    }


def _rule() -> dict:
    return {
        "best_known": "min(oracle train MSE, every solver's final train MSE on the seed)",
        "success": f"final train MSE <= {success.FACTOR:g} * best_known + {FLOOR_REL:g} * mean(V^2 over training entries)",
        "factor": success.FACTOR,
        "floor_rel": FLOOR_REL,
        "ratios": "final / max(best_known, floor); held-out / max(oracle held-out, floor)",
        "well_posed": f"mean training entries per row and per column >= {WELL_POSED}*r (model rank r)",
        "wall_per_seed_s": "(solver wall + compile) / seeds of the batch (vmapped: amortised per seed)",
        "median_seed_stop_s": "median over seeds of the batch wall time when the seed stopped, / seeds",
    }


def aggregate(root: str) -> dict:
    """The map: every planned cell's table, the plan, the rule and the environment. Reads files only."""
    plan_path = os.path.join(root, "plan.json")
    if not os.path.exists(plan_path):
        raise MapError(f"{root}: no plan.json (run the map first: success_map.py run --root {root})")
    plan = results.read_json(plan_path)
    solvers = plan["solvers"]
    cells = {c: aggregate_cell(os.path.join(root, "runs", c), solvers) for c in plan["cells"]}
    process_s = sum(r.get("process_s", 0.0) for c in cells.values() for r in c["solvers"].values())
    loads = [a for c in cells.values() for r in c["solvers"].values() for a in r.get("attempts", [])]
    return {
        "plan": plan,
        "rule": _rule(),
        "axes": plan["axes"],
        "solvers": solvers,
        "cells": cells,
        "cells_ran": [c for c, v in cells.items() if v["ran"]],
        "cells_complete": [c for c, v in cells.items() if all(r["state"] == "complete" for r in v["solvers"].values())],
        "cells_not_ran": [c for c, v in cells.items() if not v["ran"]],
        "process_s_total": process_s,
        "aggregated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load": {"at_aggregation": _loadavg(),
                 "during_runs": [{"started": a.get("started"), "before": a.get("load_before"),
                                  "after": a.get("load_after")} for a in loads]},
        "environment": results.environment(),
    }


def _run_order(key: str) -> int:
    return 0 if key == "first" else int(key.rsplit("_", 1)[1])


def _frac(r: dict) -> str:
    if r.get("state") != "complete":
        return {"absent": "not run", "resumable": "interrupted", "partial": "interrupted"}.get(r.get("state"), "—")
    return f"{r['n_success']}/{r['n_seeds']}"


def _g(x, p=3) -> str:
    return "—" if x is None else f"{x:.{p}g}"


def _cell_table(m: dict, by_run: bool = True) -> list:
    """The map's first table: one line per (axis, value), the success counts of every solver (and, with
    ``by_run``, which gauss_newton run brought each success)."""
    solvers = m["solvers"]
    last = " gauss_newton successes by run |" if by_run else ""
    lines = ["| axis | value | rows/col train avg | 2r | well-posed | " + " | ".join(solvers) + " |" + last,
             "|" + "---|" * (5 + len(solvers) + by_run)]
    for e in m["axes"]:
        c = m["cells"][e["cell"]]
        head = f"| {e['axis']} | {e['label']} |"
        if "train_per_row" not in c:
            lines.append(head + " — | — | — | " + " | ".join("not run" for _ in solvers) + " |"
                         + (" — |" if by_run else ""))
            continue
        gn = c["solvers"].get("gauss_newton", {}).get("success_by_run")
        split = "—" if not gn else ", ".join(f"{k.replace('_', ' ')}: {gn[k]}" for k in sorted(gn, key=_run_order))
        lines.append(head + f" {c['train_per_row']:.0f} / {c['train_per_col']:.0f} | {c['two_r']} | "
                     f"{'✓' if c['well_posed'] else '✗'} | " + " | ".join(_frac(c["solvers"][s]) for s in solvers) +
                     " |" + (f" {split} |" if by_run else ""))
    return lines


def markdown(m: dict) -> str:
    solvers = m["solvers"]
    partly = [c for c in m["cells_ran"] if c not in m["cells_complete"]]
    lines = [f"# Success map ({len(m['cells_complete'])} of {len(m['cells'])} cells complete"
             + (f", {len(partly)} partly run" if partly else "") + ")", "",
             f"Recipe: {', '.join(f'{k}={v:g}' for k, v in m['plan']['recipe'].items())}; "
             f"seeds {m['plan']['seeds']}, first seed {m['plan']['seed']}, step budgets {m['plan']['steps']} "
             f"(None: run.py's default), precision 64.",
             f"Success: {m['rule']['success']}; best_known = {m['rule']['best_known']}. "
             f"Well-posed: {m['rule']['well_posed']} (✗: not).", ""]
    lines += _cell_table(m)
    lines += ["", "Per run: success, median final / best-known, median held-out / oracle held-out, "
                  "wall time per seed (solver + compile, amortised over the vmapped batch), process wall time.", "",
              "| cell | solver | seeds | budget | success | final/best | val/oracle val | s per seed | process s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, c in m["cells"].items():
        for s in solvers:
            r = c["solvers"][s]
            if r.get("state") != "complete":
                lines.append(f"| {name} | {s} | — | — | {_frac(r)} | — | — | — | {_g(r.get('process_s') or None)} |")
                continue
            lines.append(f"| {name} | {s} | {r['n_seeds']} | {r['steps_budget']} | {_frac(r)} | "
                         f"{_g(r['median_final_over_best'], 4)} | {_g(r['median_val_over_oracle_val'])} | "
                         f"{_g(r['wall_per_seed_s'])} | {r['process_s']:.0f} |")
    one_min = [x[0] for a in m["load"]["during_runs"] for x in (a.get("before"), a.get("after")) if x]
    env = m["environment"]
    lines += ["", f"Process wall time, all runs: {m['process_s_total']:.0f} s. Load average (1 min) at the start and "
                  f"end of each run: {min(one_min):.2f}–{max(one_min):.2f}" if one_min else "", 
              f"(other processes share the machine: {env.get('cpu_count')} CPUs); at aggregation (1, 5, 15 min): "
              f"{m['load']['at_aggregation']}. jax {env['versions'].get('jax')}, {env['devices']['kind']}.", "",
              f"Map: `python {shlex.join(m['plan'].get('command', ['?']))}` (code at {m['plan'].get('git')}); each run's "
              f"exact `run.py` command is in map.json (`cells.<cell>.solvers.<solver>.commands`).", ""]
    if partly:
        lines += [f"Partly run (some solvers missing or interrupted): {', '.join(partly)}.", ""]
    if m["cells_not_ran"]:
        lines += [f"Not run: {', '.join(m['cells_not_ran'])}.", ""]
    return "\n".join(lines)


def write_map(root: str) -> list:
    """Aggregate ``root``'s runs into map.json and map.md, and draw success_map.png. Returns the paths."""
    m = aggregate(root)
    results.write_json(os.path.join(root, "map.json"), m)
    results._atomic_write_bytes(os.path.join(root, "map.md"), markdown(m).encode())
    return [os.path.join(root, "map.json"), os.path.join(root, "map.md"), draw(root)]


def draw(root: str) -> str:
    from lrfactor.plots import PlotError, plot_success_map

    try:
        return plot_success_map(os.path.join(root, "map.json"))
    except PlotError as e:
        raise MapError(str(e)) from None


# --------------------------------------------------------------------------- command line


def score_runs(root: str, folders) -> str:
    """A markdown table: each finished run folder (any settings) scored against the map's best-known on its cell.

    The cell is read from the run's config.json; a seed's best-known is the
    lowest of the map's best-known for it, the run's oracle and the run's own
    final train MSE, and success is the map's rule. Reads files only.
    """
    m = results.read_json(os.path.join(root, "map.json"))
    lines = ["| run | cell | budget | restarts | success | median final / best-known | median steps |",
             "|---|---|---|---|---|---|---|"]
    for folder in folders:
        run = _read_run(folder)
        if run["state"] != "complete":
            raise MapError(f"{folder}: not a finished run ({run['state']})")
        cfg = run["config"]["config"]
        recipe = Recipe(**{k: cfg[k] for k in RECIPE_FIELDS})
        cells = [k for k, c in m["cells"].items() if c.get("ran") and Recipe(**c["recipe"]) == recipe]
        if not cells:
            raise MapError(f"{folder}: its problem ({recipe.name()}) is no cell of {root}/map.json")
        cell = cells[0]
        c, summ = m["cells"][cell], run["summary"]
        seeds = summ["seeds"]
        missing = [x for x in seeds if str(x) not in c["best_train_mse"]]
        if missing:
            raise MapError(f"{folder}: seeds {missing} are not in the map's cell {cell}")
        final = _floats(summ["final"]["train_mse"])
        orc = _floats(summ["reference"]["oracle_train_mse"])
        best = np.fmin(np.fmin(final, orc), _floats([c["best_train_mse"][str(x)] for x in seeds]))
        fl = _floats([c["floor"][str(x)] for x in seeds])
        ok, rel, _ = judge(final, best, fl)
        lines.append(f"| {os.path.normpath(folder)} | {cell} | {cfg.get('steps')} | "
                     f"{cfg.get('restarts')} | {int(ok.sum())}/{len(ok)} | {_g(_median(rel))} | "
                     f"{_g(_median(summ['final']['steps']))} |")
    return "\n".join(lines)


def _axis_order(e: dict):
    """Sort key of an axes entry: AXES' axis order, then the value's place in AXES (others after, by value)."""
    names = list(AXES)
    a = names.index(e["axis"]) if e["axis"] in names else len(names)
    v = tuple(e["value"]) if isinstance(e["value"], list) else e["value"]
    known = AXES.get(e["axis"], ())
    return (a, known.index(v) if v in known else len(known), str(v))


def combine(roots, out: str) -> dict:
    """Several maps' saved runs as one map: each seed of each (cell, solver) from the last root that ran it.

    Maps made in several sittings (other seeds, other budgets, later code)
    answer one question together. A seed's best-known is the lowest over
    every root (their oracles and every run on it, runs that a later root
    replaces included), so combining can only tighten the success rule. The
    roots must share the recipe and have drawn the same data for a seed
    (data.json's truncated-truth train MSE); the axes are the union of the
    roots' plans. Each (cell, solver) records which root gave which seeds, at
    which budget. Reads files only; returns the map (map.json's content).
    """
    if not roots:
        raise MapError("give one or more map folders to combine")
    if os.path.abspath(out) in {os.path.abspath(r) for r in roots}:
        raise MapError(f"--out {out} is one of the maps combined; give another folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise MapError(f"--out {out}: exists and is not a folder")
    recipe_cell, recipe, solvers, entries, got = None, None, [], {}, {}
    for root in roots:
        plan_path = os.path.join(root, "plan.json")
        if not os.path.exists(plan_path):
            raise MapError(f"{root}: no plan.json (not a success map)")
        plan = results.read_json(plan_path)
        if recipe_cell is None:
            recipe_cell, recipe = plan["recipe_cell"], plan["recipe"]
        elif plan["recipe_cell"] != recipe_cell:
            raise MapError(f"{root}: its recipe is {plan['recipe_cell']}, the first map's {recipe_cell}")
        solvers += [s for s in plan["solvers"] if s not in solvers]
        for e in plan["axes"]:
            entries.setdefault((e["axis"], e["label"]), e)
        for name in plan["cells"]:
            cell_dir = os.path.join(root, "runs", name)
            c = aggregate_cell(cell_dir, plan["solvers"])
            if c["ran"]:
                got.setdefault(name, []).append((root, c, results.read_json(os.path.join(cell_dir, "data.json"))))
    axes = sorted(entries.values(), key=_axis_order)
    cells = {}
    for e in axes:
        name = e["cell"]
        if name not in got:
            cells[name] = {"ran": False, "solvers": {s: {"state": "absent"} for s in solvers}}
            continue
        stats, best, floor, oracle_val = {}, {}, {}, {}
        for root, c, data in got[name]:
            for k, x in enumerate(data["seeds"]):
                row = tuple(data[f][k] for f in ("truth_train_mse", "train_per_row", "train_per_col",
                                                 "min_train_per_row", "min_train_per_col", "mean_v2_train"))
                if x in stats and not _same_data(stats[x][0], row[0], FLOOR_REL * row[5]):
                    raise MapError(f"{name}: seed {x} drew other data in {root} than in an earlier map "
                                   f"(truncated truth train MSE {row[0]:.6g} against {stats[x][0]:.6g})")
                stats.setdefault(x, row)
            for x, v in c["best_train_mse"].items():
                if v is not None:
                    best[x] = min(best.get(x, np.inf), v)
            floor.update(c["floor"])
            oracle_val.update({x: v for x, v in c["oracle_val_mse"].items() if v is not None})
        out_solvers = {}
        for s in solvers:
            pick = {}  # seed -> (root, final train, final val, budget): the last root's run wins
            for root, c, _ in got[name]:
                r = c["solvers"].get(s, {})
                if r.get("state") == "complete":
                    for k, x in enumerate(r["seeds"]):
                        pick[x] = (root, r["final_train_mse"][k], r["final_val_mse"][k], r["steps_budget"])
            if not pick:
                out_solvers[s] = {"state": "absent"}
                continue
            ss = sorted(pick)
            final, val = _floats([pick[x][1] for x in ss]), _floats([pick[x][2] for x in ss])
            fl = _floats([floor[str(x)] for x in ss])
            ok, rel, _ = judge(final, _floats([best.get(str(x), np.inf) for x in ss]), fl)
            with np.errstate(invalid="ignore", divide="ignore"):
                rel_val = val / np.maximum(_floats([oracle_val.get(str(x)) for x in ss]), fl)
            sources = []
            for root, _, _ in got[name]:
                mine = [x for x in ss if pick[x][0] == root]
                if mine:
                    sources.append({"root": _from_root(root), "seeds": mine, "steps_budget": pick[mine[0]][3]})
            out_solvers[s] = {"state": "complete", "seeds": ss, "final_train_mse": final.tolist(),
                              "final_val_mse": val.tolist(), "success": ok.tolist(), "n_success": int(ok.sum()),
                              "n_seeds": len(ss), "rate": float(ok.mean()), "median_final_over_best": _median(rel),
                              "median_val_over_oracle_val": _median(rel_val), "sources": sources}
        seeds = sorted(stats)
        first = got[name][0][1]
        per_row = float(np.mean([stats[x][1] for x in seeds]))
        per_col = float(np.mean([stats[x][2] for x in seeds]))
        cells[name] = {
            "ran": True, "recipe": first["recipe"], "seeds": seeds, "train_per_row": per_row,
            "train_per_col": per_col, "min_train_per_row": int(min(stats[x][3] for x in seeds)),
            "min_train_per_col": int(min(stats[x][4] for x in seeds)), "two_r": first["two_r"],
            "well_posed": bool(per_row >= first["two_r"] and per_col >= first["two_r"]),
            "floor": {x: floor[x] for x in sorted(floor, key=int)},
            "best_train_mse": {x: best[x] for x in sorted(best, key=int)},
            "oracle_val_mse": {x: oracle_val[x] for x in sorted(oracle_val, key=int)},
            "solvers": out_solvers,
        }
    complete = [c for c, v in cells.items() if all(r["state"] == "complete" for r in v["solvers"].values())]
    return {
        "plan": {"command": ["experiments/success_map.py", "combine", "--out", _from_root(out)]
                 + [_from_root(r) for r in roots], "roots": [_from_root(r) for r in roots],
                 "recipe": recipe, "recipe_cell": recipe_cell, "git": _git_head(),
                 "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "rule": {**_rule(), "combined": "each seed's run from the last root that ran it; best_known over every root"},
        "axes": axes,
        "solvers": solvers,
        "cells": cells,
        "cells_ran": [c for c, v in cells.items() if v["ran"]],
        "cells_complete": complete,
        "cells_not_ran": [c for c, v in cells.items() if not v["ran"]],
        "environment": results.environment(),
    }


def combined_markdown(m: dict) -> str:
    """map.md of a combined map: the cell table, then per (cell, solver) the counts and where each seed came from."""
    plan = m["plan"]
    lines = [f"# Success map combined from {len(plan['roots'])} maps ({len(m['cells_complete'])} of "
             f"{len(m['cells'])} cells with every solver)", "",
             f"Maps, in order (a seed that several ran counts from the last): {', '.join(plan['roots'])}.",
             f"Success: {m['rule']['success']}; best_known = the lowest over every map of "
             f"{m['rule']['best_known']}. Well-posed: {m['rule']['well_posed']} (✗: not).", ""]
    lines += _cell_table(m, by_run=False)
    lines += ["", "Per (cell, solver): success, median final / best-known, median held-out / oracle held-out, "
                  "and which map gave which seeds at which step budget (None: run.py's default then).", "",
              "| cell | solver | success | final/best | val/oracle val | runs |", "|---|---|---|---|---|---|"]
    for name, c in m["cells"].items():
        for s in m["solvers"]:
            r = c["solvers"][s]
            if r.get("state") != "complete":
                lines.append(f"| {name} | {s} | not run | — | — | — |")
                continue
            src = "; ".join(f"{x['root']} seeds {_ranges(x['seeds'])} (budget {x['steps_budget']})"
                            for x in r["sources"])
            lines.append(f"| {name} | {s} | {_frac(r)} | {_g(r['median_final_over_best'], 4)} | "
                         f"{_g(r['median_val_over_oracle_val'])} | {src} |")
    lines += ["", f"Made by `python {shlex.join(plan['command'])}` (code at {plan.get('git')}).", ""]
    return "\n".join(lines)


def _ranges(xs) -> str:
    """[0, 1, 2, 5, 7, 8] as '0–2, 5, 7–8'."""
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(f"{start}" if start == x else f"{start}–{x}")
            start = None
    return ", ".join(out)


def write_combined(roots, out: str) -> list:
    """Combine ``roots`` into ``out``/map.json and map.md, and draw success_map.png. Returns the paths."""
    m = combine(roots, out)
    os.makedirs(out, exist_ok=True)
    results.write_json(os.path.join(out, "map.json"), m)
    results._atomic_write_bytes(os.path.join(out, "map.md"), combined_markdown(m).encode())
    return [os.path.join(out, "map.json"), os.path.join(out, "map.md"), draw(out)]


def parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="success_map.py", description="Success rates of every solver as the question's recipe moves.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=cli.Parser)
    r = sub.add_parser("run", help="run (or continue) the map, then aggregate and plot")
    r.add_argument("--root", default=DEFAULT_ROOT, help="map folder (runs/ inside)")
    r.add_argument("--solvers", default=",".join(SOLVERS), type=lambda t: [s for s in t.split(",") if s],
                   help="comma-separated run.py solvers")
    r.add_argument("--seeds", default=None, help=f"seeds per run: N, and solver=N overrides (default {SEEDS})")
    r.add_argument("--seed", type=int, default=0, help="first seed")
    r.add_argument("--steps", default=None,
                   help=f"step budgets: N for all, solver=N overrides; others run.py's default (default {STEPS})")
    r.add_argument("--axes", nargs="+", default=list(AXES),
                   help="axes, each NAME or NAME=v1,v2 (shape values NxM); default all four with their values")
    for name in RECIPE_FIELDS:
        kind = float if name in ("decay", "observed") else int
        r.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                       help=f"the recipe's {name} (default: run.py's)")
    r.add_argument("--run-flags", default="",
                   help="more run.py flags for every run, e.g. '--max-step 0.5' (saved runs must match them)")
    r.add_argument("--stop-after", type=float, default=0.0,
                   help="seconds; then the run in flight is stopped (it resumes next time) and no other starts (0: none)")
    r.add_argument("--python", default=None, help="interpreter for run.py (default this one)")
    q = sub.add_parser("score", help="score finished run folders of any settings against the map's best-known")
    q.add_argument("--root", default=DEFAULT_ROOT, help="map folder (its map.json)")
    q.add_argument("runs", nargs="+", help="run.py output folders on cells of the map")
    q = sub.add_parser("combine", help="several maps' saved runs as one map (a seed several ran counts from the last)")
    q.add_argument("--out", required=True, help="folder for the combined map.json, map.md and figure")
    q.add_argument("roots", nargs="+", help="map folders, earliest first")
    for name, text in (("aggregate", "map.json and map.md from the saved runs, and the figure"),
                       ("plot", "success_map.png from map.json")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--root", default=DEFAULT_ROOT, help="map folder")
    return p


def main(argv=None, launcher: Callable = launch) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
        args.argv = argv
        if args.cmd == "run":
            if args.stop_after < 0:
                raise MapError("--stop-after must be at least 0")
            if not args.solvers or len(set(args.solvers)) != len(args.solvers):
                raise MapError(f"--solvers {','.join(args.solvers)}: give distinct solver names")
            if os.path.exists(args.root) and not os.path.isdir(args.root):
                raise MapError(f"--root {args.root}: exists and is not a folder")
            return run_map(args, launcher)
        if args.cmd == "score":
            print(score_runs(args.root, args.runs))
            return 0
        if args.cmd == "combine":
            for path in write_combined(args.roots, args.out):
                print(path)
            return 0
        if args.cmd == "aggregate":
            for path in write_map(args.root):
                print(path)
            return 0
        print(draw(args.root))
        return 0
    except (MapError, cli.UsageError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

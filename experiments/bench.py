"""Benchmarks on the question's problem: the flagship against the solvers people would use instead.

    python experiments/bench.py [--part flagship|optimistix|scipy|jaxopt|hals|surprise|adam|dense|flops|table|all]
                                [--seed 0] [--budget-s 120] [--max-iters 300] [--out results/bench]

Every solver starts from the same point: the flagship's own ``init_params``
drawn from the same seed key as ``lrfactor.experiment.build`` draws it (Keras
U(-0.05, 0.05) log-factors), on the same problem (lrfactor's default
``RunConfig``: n=1000, m=100, true rank 12, model rank 8, 50 % observed),
float64. Parts:

- ``flagship``: ``make_gauss_newton`` (joint LM, Levenberg λI, Nielsen), its
  step jitted once and timed one iteration at a time (``block_until_ready``);
  train / held-out MSE per iteration (scored outside the timed region), up to
  ``--max-iters`` or its own stopping test; the oracle optimum beside it.
- ``optimistix``: ``optx.LevenbergMarquardt`` with a matrix-free LSMR solve
  (``lineax.LSMR``) on the residual over the training entries, y = flattened
  (A, B); stepped by hand (``solver.init`` / ``solver.step``, jitted once) for
  ``--budget-s`` seconds. The LSMR tolerance (1e-4) gave the lowest held-out
  MSE at 45 s among 1e-2, 1e-4, 1e-8 in a preliminary run.
- ``scipy``: ``least_squares(method='trf', tr_solver='lsmr')`` with a CSR
  Jacobian (2r nonzeros per row), ``x_scale=1`` (λI-like: Levenberg suits
  log-parameters, docs/design.md §2), stopped by its callback after the budget.
- ``jaxopt``: ``jaxopt.LevenbergMarquardt`` with its default matrix-free CG
  solve of (JᵀJ + μI)δ = −Jᵀr (``--jaxopt-materialize`` builds J and JᵀJ densely
  and uses Cholesky instead), ``update`` jitted once, for the budget.
- ``hals``: masked HALS through the driver, ``RunConfig(solver="hals",
  steps=10000, seeds=1)``.
- ``surprise``: the recommender library surprise's ``SVD`` (Funk SVD with
  biases) and ``NMF`` with ``n_factors`` = the model rank, on the same
  training entries, scored on the same held-out ones, by
  ``experiments/surprise_baseline.py``'s ``fit_surprise`` (its regularisation
  chosen by surprise's own 3-fold cross-validation on the training entries);
  timed as one ``fit`` of the chosen setting (its own epochs, not resumable
  per iteration, so no trajectory: the time ratio is its fit against the
  flagship's time to the same held-out MSE).
- ``adam``: the committed run ``results/adam-seed`` (the question's Adam setup,
  10 seeds vmapped, float32), read, not re-run.
- ``dense``: optimistix's default LM (dense ``lineax.QR``) at n=400, m=100: two
  steps, the second timed; the flagship's per-iteration time at that size.
  Also XLA's memory estimate of that dense step at the question's size
  (compiled, not run).
- ``flops``: one flagship iteration at the question's size against its flop
  count at the machine's measured float64 matmul rate (2000×2000).
- ``table``: the markdown table (``README.md``) from the part files present.

Each part writes ``<part>.json`` (with versions, device, precision) into
``--out``; ``all`` runs every part back-to-back in this one process, so that
competing solvers see the same machine load, then writes the table. Times are
wall-clock seconds after compilation. Memory is XLA's accounting of the compiled
step (arguments + outputs + temporaries) for JAX solvers and tracemalloc's peak
for numpy/scipy; the process's peak RSS is recorded too.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
import tracemalloc
from typing import NamedTuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lrfactor import driver, experiment, results, success  # noqa: E402
from lrfactor.config import RunConfig, resolve  # noqa: E402
from lrfactor.factors import Factors, predict  # noqa: E402
from lrfactor.problems import Problem, masked_mse  # noqa: E402
from lrfactor.solvers import make_solver  # noqa: E402

PARTS = ("flagship", "optimistix", "scipy", "jaxopt", "hals", "surprise", "adam", "dense", "flops")
MAX_POINTS = 400  # trajectories are thinned to about this many points in the JSON

# ----------------------------------------------------------------------------- the common setup


class Setup(NamedTuple):
    cfg: RunConfig
    problem: Problem  # one seed, no seed axis
    refs: dict  # truth_*_mse, oracle_*_mse: floats
    solver: object  # the flagship Solver
    state0: object  # its initial state (params = the common start)
    rows: np.ndarray  # (N,) training entries
    cols: np.ndarray
    vals: np.ndarray


def setup(seed: int, n: int = 1000, m: int = 100, oracle: bool = True) -> Setup:
    """The problem, references and common start exactly as ``experiment.build`` makes them."""
    cfg = resolve(RunConfig(solver="gauss_newton", seeds=1, seed=seed, n=n, m=m, precision=64))
    prep = experiment.prepare(cfg)
    solver, carry, _, _ = experiment.build(prep)
    first = lambda x: x[0]
    problem = jax.tree.map(first, prep.problem)
    state0 = jax.tree.map(first, carry.state)
    refs = {}
    if oracle:
        refs = {k: float(np.asarray(v)[0]) for k, v in experiment.references(prep).items()}
    train = np.asarray(problem.train)
    rows, cols = np.nonzero(train)
    vals = np.asarray(problem.V)[rows, cols]
    return Setup(cfg, problem, refs, solver, state0, rows, cols, vals)


@jax.jit
def scores(p: Factors, problem: Problem):
    pred = predict(p)
    return masked_mse(pred, problem.V, problem.train), masked_mse(pred, problem.V, problem.val)


def unflatten(x, n: int, m: int, r: int) -> Factors:
    return Factors(x[: n * r].reshape(n, r), x[n * r:].reshape(m, r))


def residual(x, data):
    """Residual over the training entries, y = flattened (A, B): Σ_k W_ik H_jk − V_ij."""
    rows, cols, vals, n, m, r = data
    p = unflatten(x, n, m, r)
    W, H = jnp.exp(p.A), jnp.exp(p.B)
    return jnp.sum(W[rows] * H[cols], axis=1) - vals


def compiled_bytes(compiled):
    mem = getattr(compiled, "compiled", compiled).memory_analysis()  # unwrap equinox's Compiled
    if mem is None:
        return None
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - getattr(mem, "alias_size_in_bytes", 0))


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Trajectory:
    """Wall time after compilation, train and held-out MSE per iteration (index 0 = the start)."""

    def __init__(self, train0, val0):
        self.wall, self.train, self.val, self.step_s = [0.0], [float(train0)], [float(val0)], []
        self.cpu = [0.0]

    def add(self, dt, train, val, cpu=float("nan")):
        self.step_s.append(float(dt))
        self.wall.append(self.wall[-1] + float(dt))
        self.cpu.append(self.cpu[-1] + float(cpu))
        self.train.append(float(train))
        self.val.append(float(val))

    def record(self, refs: dict) -> dict:
        wall, train, val, cpu = map(np.asarray, (self.wall, self.train, self.val, self.cpu))
        rec = {
            "iterations": len(wall) - 1,
            "wall_s": float(wall[-1]),
            "cpu_s": float(cpu[-1]),
            "s_per_iter_median": float(np.median(self.step_s)) if self.step_s else None,
            "s_per_iter_min": float(np.min(self.step_s)) if self.step_s else None,
            "final_train_mse": float(train[-1]),
            "final_val_mse": float(val[-1]),
            "best_val_mse": float(np.nanmin(val)),
        }
        if "oracle_train_mse" in refs:
            thr = float(success.threshold(refs["oracle_train_mse"], refs["mean_v2_train"]))
            t = first_reach(wall, train, thr)
            rec["success"] = t is not None
            rec["time_to_success_s"] = t
            rec["iters_to_success"] = first_index(train, thr)
            rec["final_train_over_oracle"] = float(train[-1] / refs["oracle_train_mse"])
            rec["final_val_over_oracle"] = float(val[-1] / refs["oracle_val_mse"])
        i = first_index(val, val[-1])  # on the full trajectory, before thinning
        rec["first_reach_final_val"] = {"iteration": i, "wall_s": float(wall[i]), "cpu_s": float(cpu[i])}
        keep = thin(len(wall))
        rec["trajectory"] = {"iteration": keep.tolist(), "wall_s": wall[keep].tolist(), "cpu_s": cpu[keep].tolist(),
                             "train_mse": train[keep].tolist(), "val_mse": val[keep].tolist()}
        return rec


def thin(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    idx = np.unique(np.concatenate([np.round(np.geomspace(1, n, MAX_POINTS // 2)).astype(int) - 1,
                                    np.linspace(0, n - 1, MAX_POINTS // 2).astype(int), [0, n - 1]]))
    return idx


def first_index(values, target):
    hit = np.nonzero(np.asarray(values) <= target)[0]
    return int(hit[0]) if hit.size else None


def first_reach(wall, values, target):
    i = first_index(values, target)
    return None if i is None else float(np.asarray(wall)[i])


class Clock:
    """Wall and process-CPU seconds of a block. CPU time (all threads of this process) is the
    cross-check that is less sensitive to other jobs on a shared machine."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def time_steps(fn, carry, k):
    """Run ``carry = fn(carry)`` k times; per-call wall seconds (after ``block_until_ready``)."""
    out = []
    for _ in range(k):
        t0 = time.perf_counter()
        carry = jax.block_until_ready(fn(carry))
        out.append(time.perf_counter() - t0)
    return carry, out


# ----------------------------------------------------------------------------- parts


def part_flagship(a, S: Setup) -> dict:
    step = jax.jit(S.solver.step)
    t0 = time.perf_counter()
    compiled = step.lower(S.state0, S.problem).compile()
    compile_s = time.perf_counter() - t0
    state = S.state0
    tr = Trajectory(*scores(state.params, S.problem))
    n_acc = 0
    while tr.wall[-1] < a.flagship_budget_s and len(tr.step_s) < a.max_iters and not bool(state.done):
        with Clock() as c:
            state = jax.block_until_ready(compiled(state, S.problem))
        tr.add(c.wall, *scores(state.params, S.problem), cpu=c.cpu)
        n_acc = int(getattr(state, "run", state).n_accepted)  # RestartState: the run in progress
        if a.verbose and len(tr.step_s) % 10 == 0:
            print(f"  flagship it {len(tr.step_s)}: {tr.wall[-1]:.1f} s train {tr.train[-1]:.3g} val {tr.val[-1]:.3g}",
                  flush=True)
    rec = {"solver": "lrfactor gauss_newton (joint LM, Levenberg λI, Nielsen, exact Schur, " + S.cfg.schur_precision
                     + (", backtracking" if S.cfg.backtrack else "") + ")",
           "settings": {k: getattr(S.cfg, k) for k in ("damping", "lambda0", "ftol",
                                                        "gtol", "xtol", "schur_precision", "refine", "backtrack",
                                                        "restarts")},
           "compile_s": compile_s, "step_bytes": compiled_bytes(compiled), "accepted": n_acc,
           "stopped_by": "own test" if bool(state.done) else "budget", **tr.record(S.refs)}
    return rec


def part_optimistix(a, S: Setup) -> dict:
    import equinox as eqx
    import lineax as lx
    import optimistix as optx

    n, m, r = S.cfg.n, S.cfg.m, S.cfg.rank
    data = (jnp.asarray(S.rows), jnp.asarray(S.cols), jnp.asarray(S.vals), n, m, r)
    y0 = jnp.concatenate([S.state0.params.A.ravel(), S.state0.params.B.ravel()])
    solver = optx.LevenbergMarquardt(rtol=a.optx_tol, atol=a.optx_tol,
                                     linear_solver=lx.LSMR(rtol=a.lsmr_tol, atol=a.lsmr_tol))
    # As optx.least_squares prepares it: (out, aux) form, closure-converted once.
    fn = eqx.filter_closure_convert(lambda y, args: (residual(y, (*args, n, m, r)), None), y0, data[:3])
    args = data[:3]
    f_struct, aux_struct = fn.out_struct
    tags = frozenset()
    state = solver.init(fn, y0, args, {}, f_struct, aux_struct, tags)

    @eqx.filter_jit
    def step(fn, y, state, args):
        y, state, _ = solver.step(fn, y, args, {}, state, tags)
        return y, state

    t0 = time.perf_counter()
    jax.block_until_ready(step(fn, y0, state, args))  # compiles (result discarded)
    compile_s = time.perf_counter() - t0
    mem = step.lower(fn, y0, state, args).compile()  # for XLA's memory accounting
    y = y0
    tr = Trajectory(*scores(unflatten(y0, n, m, r), S.problem))
    while tr.wall[-1] < a.budget_s:
        with Clock() as c:
            y, state = jax.block_until_ready(step(fn, y, state, args))
        tr.add(c.wall, *scores(unflatten(y, n, m, r), S.problem), cpu=c.cpu)
        if a.verbose and len(tr.step_s) % 20 == 0:
            print(f"  optimistix step {len(tr.step_s)}: {tr.wall[-1]:.1f} s train {tr.train[-1]:.3g} "
                  f"val {tr.val[-1]:.3g}", flush=True)
        if bool(state.terminate):
            break
    return {"solver": "optimistix.LevenbergMarquardt + lineax.LSMR (matrix-free)",
            "settings": {"rtol": a.optx_tol, "atol": a.optx_tol, "lsmr_rtol": a.lsmr_tol, "lsmr_atol": a.lsmr_tol,
                         "jac": "fwd (jax.linearize)", "y": "flattened (A, B)"},
            "compile_and_first_step_s": compile_s, "step_bytes": compiled_bytes(mem),
            "accepted": int(state.num_accepted_steps), "terminated": bool(state.terminate),
            "result": str(state.result), "stopped_by": "own test" if bool(state.terminate) else "budget",
            **tr.record(S.refs)}


def part_scipy(a, S: Setup) -> dict:
    import scipy
    import scipy.sparse as sp
    from scipy.optimize import least_squares

    n, m, r = S.cfg.n, S.cfg.m, S.cfg.rank
    rows, cols, vals = S.rows, S.cols, S.vals
    N = rows.size
    V = np.asarray(S.problem.V)
    vmask = np.asarray(S.problem.val)
    vr, vc = np.nonzero(vmask)
    vv = V[vr, vc]
    # CSR pattern: row t has r columns of A (row rows[t]) then r columns of B (row cols[t]).
    indices = np.concatenate([rows[:, None] * r + np.arange(r), n * r + cols[:, None] * r + np.arange(r)], axis=1)
    indptr = np.arange(0, 2 * r * N + 1, 2 * r)

    def factors(x):
        return np.exp(x[: n * r].reshape(n, r)), np.exp(x[n * r:].reshape(m, r))

    def fun(x):
        W, H = factors(x)
        return np.einsum("tk,tk->t", W[rows], H[cols]) - vals

    def jac(x):
        W, H = factors(x)
        u = W[rows] * H[cols]
        return sp.csr_matrix((np.concatenate([u, u], axis=1).ravel(), indices.ravel(), indptr),
                             shape=(N, (n + m) * r))

    def mses(x):
        W, H = factors(x)
        tr = np.mean((np.einsum("tk,tk->t", W[rows], H[cols]) - vals) ** 2)
        va = np.mean((np.einsum("tk,tk->t", W[vr], H[vc]) - vv) ** 2)
        return tr, va

    x0 = np.concatenate([np.asarray(S.state0.params.A).ravel(), np.asarray(S.state0.params.B).ravel()])
    tr = Trajectory(*mses(x0))
    clock = {"start": None, "last": None, "scoring": 0.0}

    def callback(intermediate_result):
        dt = time.perf_counter() - clock["last"]
        dc = time.process_time() - clock["last_cpu"]
        s0 = time.perf_counter()
        tr.add(dt, *mses(intermediate_result.x), cpu=dc)
        clock["last"] = time.perf_counter()  # the scoring is not the solver's time
        clock["last_cpu"] = time.process_time()
        if a.verbose and len(tr.step_s) % 20 == 0:
            print(f"  scipy it {len(tr.step_s)}: {tr.wall[-1]:.1f} s train {tr.train[-1]:.3g} val {tr.val[-1]:.3g}",
                  flush=True)
        clock["scoring"] += clock["last"] - s0
        if tr.wall[-1] >= a.budget_s:
            raise StopIteration

    tracemalloc.start()
    clock["start"] = clock["last"] = time.perf_counter()
    clock["last_cpu"] = time.process_time()
    res = least_squares(fun, x0, jac=jac, method="trf", tr_solver="lsmr", x_scale=1.0,
                        ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=10**6, callback=callback)
    total = time.perf_counter() - clock["start"]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"solver": "scipy.optimize.least_squares trf + lsmr, CSR Jacobian",
            "settings": {"method": "trf", "tr_solver": "lsmr", "x_scale": 1.0, "ftol": 1e-15, "xtol": 1e-15,
                         "gtol": 1e-15, "jacobian": f"CSR, {2 * r} nonzeros per row"},
            "scipy": scipy.__version__, "status": int(res.status), "nfev": int(res.nfev), "njev": int(res.njev or 0),
            "stopped_by": "budget" if res.status == -2 else "own test",
            "tracemalloc_peak_bytes": int(peak), "scoring_s_excluded": clock["scoring"], "total_s": total,
            **tr.record(S.refs)}


def part_jaxopt(a, S: Setup) -> dict:
    import importlib.metadata as md

    import jaxopt

    n, m, r = S.cfg.n, S.cfg.m, S.cfg.rank
    data = (jnp.asarray(S.rows), jnp.asarray(S.cols), jnp.asarray(S.vals))
    y0 = jnp.concatenate([S.state0.params.A.ravel(), S.state0.params.B.ravel()])
    kw = dict(materialize_jac=True, solver="cholesky") if a.jaxopt_materialize else {}
    class LM(jaxopt.LevenbergMarquardt):
        # jaxopt's matrix-free init takes diag(JᵀJ) as vmap(eᵢᵀ JᵀJ eᵢ) over the identity at once: 8800
        # Jacobian-vector products in one batch ask for 60.5 GB here (measured: RESOURCE_EXHAUSTED). The
        # same products in batches of 100 (lax.map) give the same diagonal; update() is jaxopt's own.
        def _jtj_diag_op(self, params, *args, **kwargs):
            diag_op = lambda v: v @ self._jtj_op(params, v, *args, **kwargs)
            return jax.lax.map(diag_op, jnp.eye(len(params), dtype=params.dtype), batch_size=100)

    lm_cls = jaxopt.LevenbergMarquardt if kw else LM
    lm = lm_cls(lambda y, d: residual(y, (*d, n, m, r)), maxiter=10**9, tol=1e-15, xtol=1e-15, gtol=1e-15, **kw)
    t0 = time.perf_counter()
    init = jax.jit(lm.init_state)
    state = jax.block_until_ready(init(y0, data))
    init_s = time.perf_counter() - t0
    update = jax.jit(lm.update)
    t0 = time.perf_counter()
    # Two warm-up calls, results discarded: the state's increase_factor turns from int to float after
    # the first update, so jit compiles twice; the timed run below then hits the cache only.
    y1, state1 = jax.block_until_ready(update(y0, state, data))
    jax.block_until_ready(update(y1, state1, data))
    compile_s = time.perf_counter() - t0
    compiled = update.lower(y1, state1, data).compile()  # for XLA's memory accounting
    y = y0
    nan_iters, nan_at = 0, None
    tr = Trajectory(*scores(unflatten(y0, n, m, r), S.problem))
    while tr.wall[-1] < a.budget_s:
        with Clock() as c:
            y, state = jax.block_until_ready(update(y, state, data))
        tr.add(c.wall, *scores(unflatten(y, n, m, r), S.problem), cpu=c.cpu)
        if a.verbose and len(tr.step_s) % 20 == 0:
            print(f"  jaxopt it {len(tr.step_s)}: {tr.wall[-1]:.1f} s train {tr.train[-1]:.3g} val {tr.val[-1]:.3g}",
                  flush=True)
        if not np.isfinite(float(state.error)):
            nan_iters += 1
            if nan_at is None:
                nan_at = len(tr.step_s)
            if nan_iters >= 20:  # its state is poisoned: no later update can move it
                break
        else:
            nan_iters = 0
    return {"solver": "jaxopt.LevenbergMarquardt" + (" (dense J, JᵀJ, Cholesky)" if kw else " (matrix-free CG)"),
            "settings": {"materialize_jac": bool(kw), "solver": kw.get("solver", "solve_cg (default)"),
                         "tol": 1e-15, "xtol": 1e-15, "gtol": 1e-15, "y": "flattened (A, B)"},
            "init_note": None if kw else "diag(JᵀJ) for the initial damping in batches of 100 products "
                                         "(jaxopt's one-batch vmap needs 60.5 GB); update() unchanged",
            "jaxopt": md.version("jaxopt"), "init_s": init_s, "compile_and_two_steps_s": compile_s,
            "step_bytes": compiled_bytes(compiled),
            "gradient_nan_from_iteration": nan_at,
            "stopped_by": "budget" if nan_at is None else "its state went NaN (gradient); stopped after 20 such updates",
            **tr.record(S.refs)}


def part_hals(a, S: Setup) -> dict:
    cfg = resolve(RunConfig(solver="hals", steps=a.hals_sweeps, seeds=1, seed=a.seed, precision=64))
    prep = experiment.prepare(cfg)
    solver, carry, _, _ = experiment.build(prep)
    same = bool(np.allclose(np.asarray(carry.state.params.A[0]), np.asarray(S.state0.params.A),
                            rtol=0, atol=1e-12))
    chunk = driver.make_chunk(solver, cfg.steps, cfg.chunk, prep.problem_axis)
    chunk_bytes = compiled_bytes(chunk.lower(carry, prep.problem).compile())
    res = driver.run(solver, prep.problem, carry, steps=cfg.steps, chunk=cfg.chunk,
                     problem_axis=prep.problem_axis, progress=False)
    h = res.history
    wall, train, val = h["wall_s"][0], h["train_mse"][0], h["val_mse"][0]
    sweeps = int(np.asarray(res.carry.t)[0])
    tr = Trajectory(train[0], val[0])
    for i in range(1, len(wall)):
        tr.add(wall[i] - wall[i - 1], train[i], val[i])
    rec = tr.record(S.refs)
    rec.update({"solver": "masked HALS (lrfactor driver)", "sweeps": sweeps, "sweeps_budget": cfg.steps,
                "settings": {"eps": cfg.eps, "ftol": cfg.ftol, "chunk": cfg.chunk},
                "same_start_as_flagship": same, "compile_s": res.compile_s, "chunk_bytes": chunk_bytes,
                "s_per_sweep": res.wall_s / max(sweeps, 1)})
    return rec


def part_surprise(a, S: Setup) -> dict:
    from surprise import NMF, SVD

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/, when imported from elsewhere
    from surprise_baseline import fit_surprise

    from lrfactor import tables

    train, val = np.asarray(S.problem.train), np.asarray(S.problem.val)
    table = tables.table_from_dense(np.asarray(S.problem.V), train, val)
    fits = fit_surprise(table, S.cfg.rank, a.surprise_folds, seed=a.seed)
    epochs = {"svd": SVD().n_epochs, "nmf": NMF().n_epochs}  # surprise's defaults, which fit_surprise keeps
    methods = {}
    for name, f in fits.items():
        c = f["cv_choice"]
        methods[name] = {"epochs": epochs[name], "reg": {k: v for k, v in c.items() if k.startswith("reg")},
                         "final_train_mse": c["train_mse"], "final_val_mse": c["val_mse"], "fit_s": c["fit_s"],
                         "s_per_epoch": c["fit_s"] / epochs[name],
                         "success": bool(c["train_mse"] <= success.threshold(S.refs["oracle_train_mse"],
                                                                             S.refs["mean_v2_train"])),
                         "best_val_mse_any_setting": min([f["default"]["val_mse"]]
                                                         + [g["val_mse"] for g in f["grid"].values()])}
    return {"solver": "surprise SVD and NMF (experiments/surprise_baseline.py)", "rank": S.cfg.rank,
            "n_train": int(train.sum()), "n_val": int(val.sum()), "cv_folds": a.surprise_folds,
            "methods": methods, "fits": fits, "surprise_version": __import__("surprise").__version__}


def part_adam(a, S: Setup) -> dict:
    run = results.load_run(a.adam_run)
    cfg, summ, h = run["config"]["config"], run["summary"], run["history"]
    seeds = list(summ["seeds"])
    i = seeds.index(a.seed) if a.seed in seeds else 0
    steps = np.asarray(summ["final"]["steps"])
    wall = np.asarray(h["wall_s"][i])
    t = int(steps[i])
    oracle_tr = np.asarray(summ["reference"]["oracle_train_mse"])
    ok = np.asarray(summ["success"], bool)  # the run's own record of the success rule
    env = run["config"].get("versions")
    return {"solver": "Adam, the question's setup (committed run, not re-run)", "run": a.adam_run,
            "seed": seeds[i], "precision": cfg["precision"], "batch_size": cfg["batch_size"], "lr": cfg["lr"],
            "l2": cfg["l2"], "seeds_in_run": len(seeds), "epochs": t, "complete": summ["complete"],
            "wall_s_batch": float(wall[t]), "s_per_epoch_batch": float(wall[t] / max(t, 1)),
            "note": f"the {len(seeds)} seeds ran vmapped together: wall times are for the whole batch",
            "final_train_mse": float(summ["final"]["train_mse"][i]), "final_val_mse": float(summ["final"]["val_mse"][i]),
            "best_val_mse": float(np.nanmin(h["val_mse"][i][: t + 1])),
            "success_rate": float(np.mean(ok)), "success": bool(ok[i]),
            "oracle_train_mse_run": float(oracle_tr[i]), "run_versions": env}


def part_dense(a, S_unused=None) -> dict:
    import equinox as eqx
    import optimistix as optx

    out = {}
    S = setup(a.seed, n=a.dense_n, m=100, oracle=False)
    n, m, r = S.cfg.n, S.cfg.m, S.cfg.rank
    # The flagship at the same size.
    step = jax.jit(S.solver.step).lower(S.state0, S.problem).compile()
    st, ts, cs = S.state0, [], []
    for _ in range(1 + a.dense_flagship_steps):
        with Clock() as c:
            st = jax.block_until_ready(step(st, S.problem))
        ts.append(c.wall)
        cs.append(c.cpu)
    out["flagship_s_per_iter"] = float(np.median(ts[1:]))
    out["flagship_s_per_iter_min"] = float(np.min(ts[1:]))
    out["flagship_cpu_s_per_iter"] = float(np.median(cs[1:]))
    out["flagship_s_per_iter_all"] = ts[1:]
    out["flagship_step_bytes"] = compiled_bytes(step)

    def make(Sx):
        nx, mx = Sx.cfg.n, Sx.cfg.m
        data = (jnp.asarray(Sx.rows), jnp.asarray(Sx.cols), jnp.asarray(Sx.vals))
        y0 = jnp.concatenate([Sx.state0.params.A.ravel(), Sx.state0.params.B.ravel()])
        solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)  # default linear solver: lineax.QR (dense)
        fn = eqx.filter_closure_convert(lambda y, args: (residual(y, (*args, nx, mx, r)), None), y0, data)
        state = solver.init(fn, y0, data, {}, *fn.out_struct, frozenset())

        @eqx.filter_jit
        def ostep(fn, y, state, args):
            y, state, _ = solver.step(fn, y, args, {}, state, frozenset())
            return y, state

        return ostep, fn, y0, state, data, solver

    ostep, fn, y, state, data, solver = make(S)
    out["optimistix_linear_solver"] = type(solver.descent.linear_solver).__name__
    out["n"], out["m"], out["rank"], out["n_params"], out["n_residuals"] = n, m, r, (n + m) * r, int(S.rows.size)
    t0 = time.perf_counter()
    compiled = ostep.lower(fn, y, state, data).compile()
    out["optimistix_compile_s"] = time.perf_counter() - t0
    out["optimistix_step_bytes"] = compiled_bytes(compiled)
    times, cpus = [], []
    for _ in range(a.dense_steps):
        with Clock() as c:
            y, state = jax.block_until_ready(compiled(fn, y, state, data))
        times.append(c.wall)
        cpus.append(c.cpu)
    out["optimistix_cpu_s_per_step"] = float(np.median(cpus))
    # Every step linearises, materialises the damped Jacobian and factors it once (QR).
    out["optimistix_s_per_step_all"] = times
    out["optimistix_s_per_step"] = float(np.median(times))
    out["speedup_per_iteration"] = out["optimistix_s_per_step"] / out["flagship_s_per_iter"]
    out["speedup_per_iteration_vs_min"] = out["optimistix_s_per_step"] / out["flagship_s_per_iter_min"]
    out["speedup_per_iteration_cpu"] = out["optimistix_cpu_s_per_step"] / out["flagship_cpu_s_per_iter"]
    # The same dense step at the question's size: XLA's memory accounting, compiled only.
    if a.dense_full:
        Sf = setup(a.seed, oracle=False)
        ostep_f, fn_f, y_f, state_f, data_f, _ = make(Sf)
        t0 = time.perf_counter()
        cf = ostep_f.lower(fn_f, y_f, state_f, data_f).compile()
        out["full_size"] = {"n": Sf.cfg.n, "m": Sf.cfg.m, "compile_s": time.perf_counter() - t0,
                            "optimistix_step_bytes": compiled_bytes(cf), "run": False}
    return out


def gn_flops(n, m, r, refine: int = 1, backtrack: bool = True):
    """Flops of one joint-LM iteration (dense masks), by term, as the step does them."""
    mm = m * (m + 1) // 2  # the Schur product forms only the pairs j ≤ k
    return {
        "schur_K": 2 * n * mm * r,  # K_ijk = Σ_a Y_iaj Y_iak
        "schur_WWK": 2 * n * mm * r * (r + 1) // 2,  # (r(r+1)/2 × n) @ (n × m(m+1)/2)
        "schur_Y": 2 * n * r * r * m,  # Y = (L⁻¹ diag W) Hᵀ
        "normal_blocks": 2 * (2 * n * m * r * r),  # U_i, S_j
        "reduced_cholesky": (m * r) ** 3 // 3,
        "reduced_solves": (1 + refine) * 2 * (m * r) ** 2,  # two triangular solves per Schur solve
        "refinement_matvecs": refine * 4 * 2 * n * m * r,  # (JᵀJ + D)x against the float64 operator
        "prediction_gradient": 3 * 2 * n * m * r,  # P = W Hᵀ, ψ H, ψᵀ W (+ the trial point)
        "backtrack_trials": (3 * 2 * n * m * r) if backtrack else 0,  # F at 1/2, 1/4, 1/8 of the step
    }


F32_TERMS = ("schur_K", "schur_WWK", "schur_Y", "reduced_cholesky", "reduced_solves")  # float32 in a mixed step


def matmul_rate(reps: int = 10, dtype=np.float64) -> dict:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((2000, 2000)).astype(dtype))
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        ts.append(time.perf_counter() - t0)
    fl = 2 * 2000**3
    return {"flops": fl, "s_best": min(ts), "s_median": float(np.median(ts)),
            "gflops_best": fl / min(ts) / 1e9, "gflops_median": fl / float(np.median(ts)) / 1e9}


def part_flops(a, S: Setup) -> dict:
    """One iteration against its flop count. The default step forms and factors
    the reduced system in float32 (``--schur-precision mixed``); its time is
    set against the float64 matmul rate (the run's precision), against each
    term at its own precision's rate, and beside the same step in float64
    throughout (``--schur-precision full``)."""
    n, m, r = S.cfg.n, S.cfg.m, S.cfg.rank
    step = jax.jit(S.solver.step).lower(S.state0, S.problem).compile()
    cost = step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else None
    rate = matmul_rate()
    rate32 = matmul_rate(dtype=np.float32)
    _, ts = time_steps(lambda s: step(s, S.problem), S.state0, 1 + a.flops_steps)
    ts = ts[1:]
    full = make_solver(dataclasses.replace(S.cfg, schur_precision="full"), {})
    full_step = jax.jit(full.step).lower(S.state0, S.problem).compile()
    _, ts64 = time_steps(lambda s: full_step(s, S.problem), S.state0, 1 + a.flops_steps)
    ts64 = ts64[1:]
    rate2 = matmul_rate()  # again after: the load on a shared machine moves
    mixed = S.cfg.schur_precision == "mixed"
    terms = gn_flops(n, m, r, S.cfg.refine if mixed else 0, S.cfg.backtrack)
    total = sum(terms.values())
    total64 = sum(gn_flops(n, m, r, 0, S.cfg.backtrack).values())
    g = max(rate["gflops_best"], rate2["gflops_best"]) * 1e9
    g32 = rate32["gflops_best"] * 1e9
    f32 = sum(v for k, v in terms.items() if k in F32_TERMS) if mixed else 0
    t_iter, t64 = float(np.median(ts)), float(np.median(ts64))
    t_flop_w = f32 / g32 + (total - f32) / g
    return {"n": n, "m": m, "rank": r, "flop_terms": terms, "flops": total, "xla_cost_analysis_flops": xla_flops,
            "matmul_before": rate, "matmul_after": rate2, "matmul_gflops_used": g / 1e9,
            "matmul_f32": rate32, "flops_in_float32": f32,
            "s_per_iter_median": t_iter, "s_per_iter_min": float(min(ts)), "s_per_iter_all": ts,
            "flop_time_s": total / g, "ratio_median": t_iter / (total / g), "ratio_min": min(ts) / (total / g),
            "flop_time_weighted_s": t_flop_w, "ratio_weighted_median": t_iter / t_flop_w,
            "ratio_weighted_min": min(ts) / t_flop_w,
            "float64_step": {"flops": total64, "flop_time_s": total64 / g, "s_per_iter_median": t64,
                             "s_per_iter_min": float(min(ts64)), "s_per_iter_all": ts64,
                             "ratio_median": t64 / (total64 / g), "ratio_min": min(ts64) / (total64 / g)},
            "step_bytes": compiled_bytes(step)}


# ----------------------------------------------------------------------------- the table


def _fmt(x, unit=""):
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.3g}{unit}"
    return f"{x}{unit}"


def _mib(b):
    return "—" if b is None else f"{b / 2**20:.0f} MiB" if b >= 2**20 else f"{b / 2**10:.0f} KiB"


def _load(out, part):
    p = os.path.join(out, part + ".json")
    return results.read_json(p) if os.path.exists(p) else None


def flagship_time_to(flag, target):
    """The flagship's wall time to first reach held-out MSE ≤ target (its full trajectory)."""
    t = flag["trajectory"]
    return first_reach(t["wall_s"], t["val_mse"], target), first_index(t["val_mse"], target)


def comparisons(out) -> dict:
    """Ratios of time to the same held-out MSE, from the saved trajectories."""
    flag = _load(out, "flagship")
    cmp = {}
    if flag is None:
        return cmp
    for part in ("optimistix", "scipy", "jaxopt", "hals"):
        d = _load(out, part)
        if d is None or "first_reach_final_val" not in d:
            continue
        target = d["final_val_mse"]
        fr = d["first_reach_final_val"]
        t_them = fr["wall_s"]
        t_us, i_us = flagship_time_to(flag, target)
        if not i_us:  # it never improved on the start: no time to compare
            continue
        cmp[part] = {"target_val_mse": target, "their_time_s": t_them, "their_total_s": d["wall_s"],
                     "flagship_time_s": t_us, "flagship_iters": i_us,
                     "ratio": None if not t_us else t_them / t_us}
        if i_us is not None:  # the same in process CPU seconds (less load-sensitive)
            c_them, c_us = fr["cpu_s"], flag["trajectory"]["cpu_s"][i_us]
            if c_them is not None and np.isfinite(c_them) and c_us:
                cmp[part].update({"their_cpu_s": c_them, "flagship_cpu_s": c_us, "ratio_cpu": c_them / c_us})
    sp = _load(out, "surprise")
    for name, d in ((sp or {}).get("methods") or {}).items():  # one timed fit each: its time, no trajectory
        t_us, i_us = flagship_time_to(flag, d["final_val_mse"])
        cmp["surprise_" + name] = {"target_val_mse": d["final_val_mse"], "their_time_s": d["fit_s"],
                                   "flagship_time_s": t_us, "flagship_iters": i_us,
                                   "ratio": None if not t_us else d["fit_s"] / t_us}
    adam = _load(out, "adam")
    if adam is not None:
        t_us, i_us = flagship_time_to(flag, adam["final_val_mse"])
        cmp["adam"] = {"target_val_mse": adam["final_val_mse"], "their_time_s": adam["wall_s_batch"],
                       "flagship_time_s": t_us, "flagship_iters": i_us,
                       "ratio": None if not t_us else adam["wall_s_batch"] / t_us}
    return cmp


def table(out) -> str:
    env = None
    lines = []
    flag = _load(out, "flagship")
    parts = {p: _load(out, p) for p in PARTS}
    for d in parts.values():
        if d is not None:
            env = d["environment"]
            break
    if env is None:
        return "no part results found\n"
    cmp = comparisons(out)
    ref = (flag or {}).get("reference", {})
    lines += ["# Benchmarks on the question's problem", ""]
    loads = {p: d.get("load_avg_1min") for p, d in parts.items() if d is not None}
    load_txt = ", ".join(f"{p} {_fmt(v[0])}→{_fmt(v[1])}" if v else f"{p} not recorded (machine shared with other jobs)"
                         for p, v in loads.items())
    lines += [f"Device: {env['devices']['platform']} ×{env['devices']['count']} ({env['cpu_count']} CPUs; 1-minute "
              f"load average before→after each part, this process included: {load_txt}; competing solvers timed "
              f"back-to-back in one process), jax {env['versions']['jax']}, float64 "
              f"(x64={env['x64']}). Problem: n=1000, m=100, true rank 12, model rank 8, 50 % observed, seed "
              f"{(flag or {}).get('seed', '?')}; every solver starts from the flagship's Keras init. Times are "
              f"wall-clock seconds after compilation. Generated by `experiments/bench.py`.", ""]
    if ref:
        lines += [f"References: truncated truth val MSE {_fmt(ref.get('truth_val_mse'))}; oracle optimum train "
                  f"{_fmt(ref.get('oracle_train_mse'))} / val {_fmt(ref.get('oracle_val_mse'))}. Success: train MSE "
                  f"≤ {success.FACTOR:g} × the oracle's + {success.FLOOR_REL:g} × mean V².", ""]
    lines += ["| solver | iterations | s / iteration | memory (step) | final train MSE | final val MSE | "
              "success | time to success | time to reach its final val MSE: theirs / flagship's (wall ratio; CPU-time ratio) |",
              "|---|---|---|---|---|---|---|---|---|"]

    def row(name, d, mem, key=None):
        c = cmp.get(key) if key else None
        ratio = "—"
        if c:
            cpu = f"; CPU {_fmt(c['ratio_cpu'], '×')}" if c.get("ratio_cpu") else ""
            ratio = (f"{_fmt(c['their_time_s'], ' s')} / {_fmt(c['flagship_time_s'], ' s')} "
                     f"(**{_fmt(c['ratio'], '×')}**{cpu})" if c["flagship_time_s"] else
                     f"{_fmt(c['their_time_s'], ' s')} / not reached")
        succ = _fmt(d.get("success"))
        lines.append(f"| {name} | {d.get('iterations', d.get('epochs'))} | {_fmt(d.get('s_per_iter_median'), ' s')} "
                     f"| {mem} | {_fmt(d['final_train_mse'])} | {_fmt(d['final_val_mse'])} | {succ} | "
                     f"{_fmt(d.get('time_to_success_s'), ' s')} | {ratio} |")

    if flag:
        prec = flag.get("settings", {}).get("schur_precision", "full")
        bt = ", backtracking" if flag.get("settings", {}).get("backtrack") else ""
        row(f"**lrfactor GN** (joint LM, λI{bt}, Schur {'float32 + float64 refinement' if prec == 'mixed' else 'float64'})",
            flag, _mib(flag.get("step_bytes")))
    d = parts["optimistix"]
    if d:
        row(f"optimistix LM + LSMR (tol {d['settings']['lsmr_rtol']:g})", d, _mib(d.get("step_bytes")), "optimistix")
    d = parts["scipy"]
    if d:
        row("scipy least_squares trf + lsmr (CSR J)", d, _mib(d.get("tracemalloc_peak_bytes")) + " (tracemalloc)",
            "scipy")
    d = parts["jaxopt"]
    if d:
        row("jaxopt LM (" + ("dense J, Cholesky" if d["settings"]["materialize_jac"] else "matrix-free CG") + ")"
            + (f" — state NaN from update {d['gradient_nan_from_iteration']}" if d.get("gradient_nan_from_iteration")
               else ""), d, _mib(d.get("step_bytes")), "jaxopt")
    d = parts["hals"]
    if d:
        d = dict(d, s_per_iter_median=d["s_per_sweep"])
        row(f"masked HALS ({d['sweeps']} sweeps, lrfactor driver)", d,
            _mib(d.get("chunk_bytes")) + f" ({d['settings']['chunk']}-sweep chunk)", "hals")
    d = parts["surprise"]
    for name, m in ((d or {}).get("methods") or {}).items():
        reg = ", ".join(f"{k} {v:g}" for k, v in m["reg"].items())
        row(f"surprise {name.upper()} ({d['rank']} factors, {reg} by its {d['cv_folds']}-fold CV)",
            dict(m, iterations=f"{m['epochs']} epochs", s_per_iter_median=m["s_per_epoch"],
                 time_to_success_s=None), "—", "surprise_" + name)
    d = parts["adam"]
    if d:
        d2 = dict(d, s_per_iter_median=d["s_per_epoch_batch"], iterations=f"{d['epochs']} epochs")
        d2["time_to_success_s"] = None
        row(f"Adam, the question's setup (committed run, float32, {d['seeds_in_run']} seeds batched)", d2, "—", "adam")
    lines += [""]
    if parts["adam"]:
        d = parts["adam"]
        lines += [f"Adam: success rate {_fmt(d['success_rate'])} over its {d['seeds_in_run']} seeds; its s / epoch and "
                  f"time are for the batch of {d['seeds_in_run']} vmapped seeds (from `{d['run']}`, not re-run).", ""]
    d = parts["surprise"]
    if d:
        best = {n: m["best_val_mse_any_setting"] for n, m in d["methods"].items()}
        lines += [f"surprise {d['surprise_version']}: SGD over its own epochs from its own random start (not the "
                  f"flagship's), on the same {d['n_train']} training entries, scored on the same {d['n_val']} "
                  f"held-out ones, predictions clipped to the training values' range; one timed fit of the "
                  f"setting its cross-validation chose (its s / iteration: per epoch). Its best held-out MSE over "
                  f"every regularisation tried, a bound in its favour: "
                  + ", ".join(f"{n.upper()} {_fmt(v)}" for n, v in best.items()) + "."
                  + (f" Timed at a 1-minute load of {_fmt(d['load_avg_1min'][0])} against the flagship's "
                     f"{_fmt(flag['load_avg_1min'][0])}: its time ratio is only as good as that match."
                     if flag and d.get("load_avg_1min") and flag.get("load_avg_1min") else ""), ""]
    d = parts["jaxopt"]
    if d and d.get("gradient_nan_from_iteration"):
        lines += [f"jaxopt: its state's gradient is NaN from update {d['gradient_nan_from_iteration']} on and it never "
                  f"leaves the start: its first trial step overflows exp, and its LM blends the accepted and rejected "
                  f"branches by multiplying with the test result (0 · NaN = NaN). Its matrix-free init (diag JᵀJ by one "
                  f"vmap over the identity) runs out of memory at this size; the bench computes the same diagonal in "
                  f"batches of 100.", ""]
    if parts["optimistix"]:
        lines += ["optimistix: LSMR tolerance chosen as the best held-out MSE at 45 s among 1e-2, 1e-4, 1e-8 "
                  "(a preliminary run on this machine); `--lsmr-tol` changes it.", ""]
    if flag:
        fs = np.diff(flag["trajectory"]["wall_s"])
        lines += [f"Load on the shared machine: the flagship's iterations took {np.percentile(fs, 10):.3g} s (10th "
                  f"percentile), {np.median(fs):.3g} s (median), {np.percentile(fs, 90):.3g} s (90th percentile) for "
                  f"the same work; every wall time above carries this noise.", ""]
        acc = "accepted in its last run" if flag.get("settings", {}).get("restarts") else "accepted"
        lines += [f"Flagship: {flag['iterations']} iterations ({flag['accepted']} {acc}), stopped by "
                  f"{flag['stopped_by']}; final train {_fmt(flag['final_train_over_oracle'], '×')} / val "
                  f"{_fmt(flag['final_val_over_oracle'], '×')} the oracle's; compile {_fmt(flag['compile_s'], ' s')}.", ""]
    d = parts["dense"]
    if d:
        lines += ["## Dense QR LM (optimistix default) against the flagship, per iteration", "",
                  "| size | optimistix LM (lineax.QR) s / step | its step memory | flagship s / iteration (median of "
                  f"{len(d['flagship_s_per_iter_all'])}) | "
                  "flagship memory | ratio (wall) |", "|---|---|---|---|---|---|",
                  f"| {d['n']}×{d['m']}, r={d['rank']} ({d['n_params']} unknowns, {d['n_residuals']} residuals) | "
                  f"{_fmt(d['optimistix_s_per_step'], ' s')} | {_mib(d['optimistix_step_bytes'])} | "
                  f"{_fmt(d['flagship_s_per_iter'], ' s')} (min {_fmt(d.get('flagship_s_per_iter_min'), ' s')}) | "
                  f"{_mib(d['flagship_step_bytes'])} | "
                  f"**{_fmt(d['speedup_per_iteration'], '×')}** (CPU time: "
                  f"{_fmt(d.get('speedup_per_iteration_cpu'), '×')}) |", ""]
        if d.get("full_size"):
            f = d["full_size"]
            lines += [f"At the question's size ({f['n']}×{f['m']}) the same dense step needs "
                      f"{_mib(f['optimistix_step_bytes'])} by XLA's accounting (compiled, not run).", ""]
    d = parts["flops"]
    if d:
        lines += ["## One flagship iteration against its flop count", "",
                  "| step | flops (model) | reference rate (2000² matmul) | flop time | measured s / iteration "
                  "(median, min) | ratio (median, min) |", "|---|---|---|---|---|---|",
                  f"| default: reduced system in float32, against the run's float64 rate | "
                  f"{d['flops'] / 1e9:.2f} GFLOP | {d['matmul_gflops_used']:.1f} GFLOP/s | "
                  f"{_fmt(d['flop_time_s'], ' s')} | {_fmt(d['s_per_iter_median'], ' s')}, "
                  f"{_fmt(d['s_per_iter_min'], ' s')} | **{_fmt(d['ratio_median'], '×')}**, "
                  f"{_fmt(d['ratio_min'], '×')} |"]
        if "float64_step" in d:
            f64 = d["float64_step"]
            lines += [f"| the same, its {d['flops_in_float32'] / 1e9:.2f} float32 GFLOP at float32's rate | "
                      f"{d['flops'] / 1e9:.2f} GFLOP | {d['matmul_f32']['gflops_best']:.1f} GFLOP/s (float32) | "
                      f"{_fmt(d['flop_time_weighted_s'], ' s')} | {_fmt(d['s_per_iter_median'], ' s')}, "
                      f"{_fmt(d['s_per_iter_min'], ' s')} | {_fmt(d['ratio_weighted_median'], '×')}, "
                      f"{_fmt(d['ratio_weighted_min'], '×')} |",
                      f"| float64 throughout (`--schur-precision full`) | {f64['flops'] / 1e9:.2f} GFLOP | "
                      f"{d['matmul_gflops_used']:.1f} GFLOP/s | {_fmt(f64['flop_time_s'], ' s')} | "
                      f"{_fmt(f64['s_per_iter_median'], ' s')}, {_fmt(f64['s_per_iter_min'], ' s')} | "
                      f"{_fmt(f64['ratio_median'], '×')}, {_fmt(f64['ratio_min'], '×')} |"]
        lines += ["",
                  "The model counts what the step does: the Schur product over the column pairs j ≤ k "
                  "(2n·m(m+1)/2·r + 2n·m(m+1)/2·r(r+1)/2), the blocks, the reduced Cholesky and solves, the "
                  "refinement and the products with W, H (with the backtracking trials). The default step forms "
                  "and factors the reduced system in float32 and refines in float64: the first row sets all its "
                  "flops against the float64 rate, the second those float32 ones against float32's. XLA's cost "
                  f"analysis ({_fmt((d['xla_cost_analysis_flops'] or 0) / 1e9)} GFLOP) does not see inside the "
                  "LAPACK calls (the reduced Cholesky, the triangular solves).", ""]
    times = [f"{p}: {parts[p]['generated']}" for p in PARTS if parts[p]]
    lines += ["Parts measured at: " + "; ".join(times) + ".", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", nargs="+", default=["all"], choices=PARTS + ("table", "all"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=120.0, help="wall-clock budget per iterative solver")
    p.add_argument("--max-iters", type=int, default=300, help="flagship iteration cap")
    p.add_argument("--flagship-budget-s", type=float, default=300.0, help="flagship wall-clock cap")
    p.add_argument("--lsmr-tol", type=float, default=1e-4, help="lineax.LSMR rtol = atol (optimistix part)")
    p.add_argument("--optx-tol", type=float, default=1e-12, help="optimistix LM rtol = atol")
    p.add_argument("--jaxopt-materialize", action="store_true", help="jaxopt: dense J and JᵀJ, Cholesky")
    p.add_argument("--hals-sweeps", type=int, default=10000)
    p.add_argument("--surprise-folds", type=int, default=3, help="surprise's cross-validation over its regularisation")
    p.add_argument("--adam-run", default="results/adam-seed")
    p.add_argument("--dense-n", type=int, default=400)
    p.add_argument("--dense-steps", type=int, default=1, help="timed dense steps after compiling")
    p.add_argument("--dense-flagship-steps", type=int, default=10)
    p.add_argument("--dense-full", action=argparse.BooleanOptionalAction, default=True,
                   help="compile (not run) the dense step at the question's size for its memory")
    p.add_argument("--flops-steps", type=int, default=20)
    p.add_argument("--out", default="results/bench")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    parts = list(PARTS) if "all" in a.part else [x for x in PARTS if x in a.part]
    os.makedirs(a.out, exist_ok=True)
    t_start = time.perf_counter()
    S = None
    env = results.environment()
    for part in parts:
        if S is None and part not in ("adam", "dense"):
            t0 = time.perf_counter()
            S = setup(a.seed)
            print(f"setup (problem, oracle) {time.perf_counter() - t0:.1f} s: oracle train "
                  f"{S.refs['oracle_train_mse']:.3g} val {S.refs['oracle_val_mse']:.3g}", flush=True)
        print(f"[{part}] ...", flush=True)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        rec = globals()["part_" + part](a, S)
        rec.update({"part": part, "seed": a.seed, "precision": 64, "part_s": time.perf_counter() - t0,
                    "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "process_maxrss_bytes": maxrss_bytes(),
                    # 1-minute load average (this process included) before and after the part: how
                    # much else was running while it was timed
                    "load_avg_1min": [load_before, os.getloadavg()[0]],
                    "machine_note": "competing solvers timed back-to-back in one process when run with --part all",
                    "environment": env, "args": vars(a)})
        if S is not None and part not in ("dense", "adam"):
            rec["reference"] = S.refs
        results.write_json(os.path.join(a.out, part + ".json"), rec)
        brief = {k: rec.get(k) for k in ("iterations", "s_per_iter_median", "final_train_mse", "final_val_mse",
                                         "success", "time_to_success_s") if k in rec}
        print(f"[{part}] {rec['part_s']:.1f} s {brief}", flush=True)
    if "table" in a.part or "all" in a.part or len(parts) > 0:
        md = table(a.out)
        cmp = comparisons(a.out)
        if cmp:
            results.write_json(os.path.join(a.out, "comparisons.json"), {"comparisons": cmp, "environment": env})
        with open(os.path.join(a.out, "README.md"), "w") as f:
            f.write(md)
        print(md)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

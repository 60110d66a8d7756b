"""A whole run: problems for every seed, references, the solver under the driver, saved files.

``prepare`` validates everything and builds the inputs (no solver computing);
``execute`` runs and writes the output folder (config.json, summary.json, factors.npz, history.npz, hessian.npz), checkpointing after
every chunk; ``resume`` continues an interrupted run from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lrfactor import config as config_mod
from lrfactor import distributed, driver, layout, losses, results, success, tables
from lrfactor.config import RunConfig
from lrfactor.factors import Factors, from_nonneg
from lrfactor.problems import (Problem, ProblemError, SyntheticConfig, Truth, check_coo, check_problem, from_coo,
                               make_sparse_synthetic, make_synthetic, pad_entries, reference_scores, stack_coo,
                               to_coo, to_dense)
from lrfactor.solvers import make_solver


class Prepared(NamedTuple):
    cfg: RunConfig
    seeds: list
    problem: Any  # Problem or CooProblem (lrfactor/problems.py); seed axis first when problem_axis == 0
    problem_axis: Optional[int]
    truth: Optional[Truth]
    keys: jax.Array  # (S, 2) per-seed base keys
    table: Optional[tables.Table] = None  # the data's entries and ids, when the data came from a file or an array
    pairs: Optional[tuple] = None  # (rows, cols) indices to predict after the run (--predict)
    shard: str = "seeds"  # the axis sharded over the devices: seeds or entries (lrfactor/distributed.py)


def synthetic_config(cfg: RunConfig) -> SyntheticConfig:
    return SyntheticConfig(n=cfg.n, m=cfg.m, true_rank=cfg.true_rank, decay=cfg.decay,
                           observed=cfg.observed, noise=cfg.noise)


def seed_keys(seeds) -> jax.Array:
    return jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, dtype=jnp.uint32))


def prepare(cfg: RunConfig, seeds=None, table: Optional[tables.Table] = None) -> Prepared:
    """Validate the config and build the problem batch. Raises ProblemError / ValueError.

    ``seeds``: an explicit list of seeds (not necessarily consecutive) instead
    of ``cfg.seed … cfg.seed + cfg.seeds − 1``; each draws exactly what
    ``run.py --seed S`` draws. ``table``: the data, already read (the Python
    API passes arrays this way); by default ``cfg.data`` is read with
    :func:`lrfactor.tables.read_table` (every file format goes through it).

    The problem comes in the layout ``cfg.layout`` (lrfactor/layout.py):
    ``dense`` masks, ``coo`` coordinate lists, or ``auto``: dense while n·m ≤
    ``layout.DENSE_MAX_ENTRIES``, coordinate lists above. The layout is a
    representation, not a different problem: a synthetic problem of up to
    DENSE_MAX_ENTRIES entries is drawn by the dense recipe and converted, so
    a seed draws the same data on both layouts; above it the coordinate
    generator draws it (:func:`lrfactor.problems.make_sparse_synthetic`, a
    different draw of the same recipe).

    The batch is sharded over every device (``cfg.shard``,
    :func:`lrfactor.distributed.choose`): sharding the seeds pads the seed
    axis to a multiple of the device count with copies of the last seed
    (outputs keep the real seeds only); sharding the entries pads the entry
    lists with padding entries and cuts them into one shard per device.
    """
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds)) if seeds is None else list(seeds)
    devices = jax.device_count()

    def sharding(kind: str):
        """(axis, seed keys padded for it)."""
        try:
            axis = distributed.choose(cfg.shard, len(seeds), kind == "coo", devices)
        except ValueError as e:
            raise ProblemError(str(e)) from None
        pad = (-len(seeds)) % devices if axis == "seeds" else 0
        return axis, seed_keys(seeds + seeds[-1:] * pad)

    def cut(problem, axis: str):
        return pad_entries(problem, devices) if axis == "entries" else problem

    dtype = jnp.float64 if cfg.precision == 64 else jnp.float32
    setting = cfg.layout
    if cfg.data or table is not None:
        if table is None:  # the reader checks the values against the loss and the solver
            table = tables.read_table(cfg.data, row_key=cfg.row_key, col_key=cfg.col_key, value_key=cfg.value_key,
                                      split_key=cfg.split_key, val_fraction=cfg.val_fraction,
                                      split_seed=cfg.split_seed, loss=cfg.loss, solver=cfg.solver,
                                      weight_key=cfg.weight_key)
        else:
            tables.check_loss(table, cfg.loss, cfg.solver)
        n, m = table.shape
        if cfg.rank > min(n, m):
            raise ProblemError(f"{table.source}: rank {cfg.rank} must be between 1 and min(n, m) = {min(n, m)}")
        kind = _layout(cfg, setting, n, m)
        shard, keys = sharding(kind)
        problem = cut(problem_from_table(table, kind, dtype), shard)
        truth = None
        if table.W_true is not None:
            truth = Truth(jnp.asarray(table.W_true, dtype), jnp.asarray(table.H_true, dtype))
        pairs = None
        if cfg.predict == "missing":
            pairs = tables.missing_pairs(table)
        elif cfg.predict is not None:
            pairs = tables.read_pairs(cfg.predict, table, row_key=cfg.row_key, col_key=cfg.col_key)
        return Prepared(cfg, seeds, problem, None, truth, keys, table, pairs, shard)
    sc = synthetic_config(cfg)
    if cfg.rank > min(sc.n, sc.m):
        raise ProblemError(f"rank {cfg.rank} must be between 1 and min(n, m) = {min(sc.n, sc.m)}")
    kind = _layout(cfg, setting, sc.n, sc.m)
    shard, keys = sharding(kind)
    data_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    if kind == "dense" or sc.n * sc.m <= layout.DENSE_MAX_ENTRIES:
        problem, truth = jax.jit(jax.vmap(lambda k: make_synthetic(k, sc, dtype)))(data_keys)
        train = np.asarray(problem.train)
        for s, tr in zip(seeds, train[: len(seeds)]):  # empty rows or columns in a drawn training mask
            check_problem(np.zeros(tr.shape), tr, None, cfg.rank, name=f"synthetic seed {s}")
        _check_synthetic_values(cfg, seeds, np.asarray(problem.V)[: len(seeds)])
        if kind == "coo":
            problem = cut(stack_coo([to_coo(jax.tree.map(lambda x: x[k], problem)) for k in range(len(keys))]), shard)
        return Prepared(cfg, seeds, problem, 0, truth, keys, shard=shard)
    drawn = [make_sparse_synthetic(k, sc, dtype) for k in data_keys]
    _check_synthetic_values(cfg, seeds, [np.concatenate([np.asarray(p.vals), np.asarray(p.val_vals)])
                                         for p, _ in drawn[: len(seeds)]])
    for s, (p, _) in zip(seeds, drawn):
        check_coo(p.rows, p.cols, p.vals, None, None, None, (sc.n, sc.m), cfg.rank, name=f"synthetic seed {s}")
    problem = cut(stack_coo([p for p, _ in drawn]), shard)
    truth = jax.tree.map(lambda *x: jnp.stack(x), *[t for _, t in drawn])
    return Prepared(cfg, seeds, problem, 0, truth, keys, shard=shard)


def _check_synthetic_values(cfg: RunConfig, seeds, values) -> None:
    """Drawn values (with --noise they can be negative or zero) suit the loss and the solver; one ProblemError line if not."""
    for s, v in zip(seeds, values):
        bad = int(np.count_nonzero(losses.bad_values(np.asarray(v), cfg.loss, cfg.solver)))
        if bad:
            raise ProblemError(f"synthetic seed {s}: {bad} drawn values (--noise {cfg.noise:g}) break the rule: "
                               f"{losses.value_requirement(cfg.loss, cfg.solver)}")


def problem_from_table(table: tables.Table, kind: str, dtype):
    """The problem of a table's entries in layout ``kind`` (``dense`` or ``coo``), values and weights
    in ``dtype``: the training weights when the table has weights, the held-out ones when it has those."""
    if kind == "dense":
        V, train, val = table.to_dense()
        tw, vw = table.dense_weights()
        as_float = lambda w: None if w is None else jnp.asarray(w, dtype)  # noqa: E731
        return Problem(jnp.asarray(V, dtype), jnp.asarray(train), jnp.asarray(val), as_float(tw), as_float(vw))
    tr, va = ~table.is_val, table.is_val
    w = table.weights
    return from_coo(table.rows[tr], table.cols[tr], table.vals[tr], table.rows[va], table.cols[va], table.vals[va],
                    table.shape, dtype=dtype, weights=None if w is None else w[tr],
                    val_weights=w[va] if table.val_weighted else None)


def _layout(cfg, setting: str, n: int, m: int) -> str:
    try:
        kind = layout.resolve_layout(setting, n, m)
    except ValueError as e:
        raise ProblemError(str(e)) from None
    if kind == "coo" and cfg.solver == "mlp":
        raise ProblemError(f"the mlp solver needs the dense layout (n x m = {n} x {m} resolves to coordinate lists)")
    return kind


def _per_seed(x, S):
    x = np.asarray(x)
    return np.broadcast_to(x, (S,)) if x.ndim == 0 else x


def references(prep: Prepared) -> dict:
    """The question's theoretical MSE (truncated truth) and the oracle optimum per seed."""
    if prep.truth is None:
        return {}
    cfg, S = prep.cfg, len(prep.seeds)
    ax = prep.problem_axis
    ref = jax.vmap(lambda p, t: reference_scores(p, t, cfg.rank), in_axes=(ax, ax))(prep.problem, prep.truth) \
        if ax == 0 else reference_scores(prep.problem, prep.truth, cfg.rank)
    out = {k: _per_seed(v, S)[:S] for k, v in jax.device_get(ref).items()}
    # mean V² over the training entries: the scale of the success rule's absolute floor (lrfactor.success)
    v2 = jax.vmap(_mean_v2_train, in_axes=(ax,))(prep.problem) if ax == 0 else _mean_v2_train(prep.problem)
    out["mean_v2_train"] = _per_seed(jax.device_get(v2), S)[:S]
    if cfg.loss == "frobenius":
        out.update(oracle(prep))
    return out


def _mean_v2_train(problem):
    return layout.masked_mse(problem, jnp.zeros_like(layout.values(problem)), "train")


def truth_start(truth: Truth, rank: int) -> Factors:
    """Log of the true factors truncated (or padded with negligible components) to ``rank``."""
    W, H = truth.W[..., :rank], truth.H[..., :rank]
    k = W.shape[-1]
    if k < rank:
        pad = [(0, 0)] * (W.ndim - 1) + [(0, rank - k)]
        W = jnp.pad(W, pad, constant_values=1e-6)
        H = jnp.pad(H, pad, constant_values=1e-6)
    return from_nonneg(W, H)


def oracle(prep: Prepared, iters: int = 20, cg_tol: float = RunConfig.cg_tol, cg_iters: int = RunConfig.cg_iters) -> dict:
    """The oracle optimum (docs/design.md): joint LM polished from the truncated true factors.

    Unpenalised MSE, always in float64 (a float32 run's data are cast up, so
    its blind starts are judged against the same well-polished point as a
    float64 run's). A reference point to judge blind starts by, not the global
    optimum. Coordinate lists larger than the dense limit are polished by
    PCG, by default with the flagship's own settings (``--cg-tol``, ``--cg-iters``):
    inexact steps from a start this close still reach the optimum far within
    the 1 % that success allows, at a fraction of the cost of tight solves,
    which took longer than the run itself at these sizes (results/large/oracle).
    """
    problem = prep.problem
    if layout.is_coo(problem) and problem.n * problem.m <= layout.DENSE_MAX_ENTRIES:
        # Small enough for dense masks: polish on the dense form, by the same
        # exact solves as a dense run, so the reference does not depend on the
        # layout (and costs no CG iterations).
        if prep.problem_axis == 0:
            dense = [to_dense(jax.tree.map(lambda x: x[k], problem)) for k in range(problem.rows.shape[0])]
            problem = jax.tree.map(lambda *x: np.stack(x), *dense)
        else:
            problem = to_dense(problem)
        prep = prep._replace(problem=problem)
    with jax.enable_x64(True):
        f64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating)
                                        else x, tree)
        return _oracle(prep._replace(problem=f64(prep.problem), truth=f64(prep.truth)), iters, cg_tol, cg_iters)


def _oracle(prep: Prepared, iters: int, cg_tol: float, cg_iters: int) -> dict:
    from lrfactor.solvers.gauss_newton import make_gauss_newton

    # Plain LM from a good start, float64, no backtracking or restarts.
    solver = make_gauss_newton(loss="frobenius", l2=0.0, rank=prep.cfg.rank, damping="levenberg",
                               lambda0=1e-6, ftol=1e-10, gtol=1e-12, xtol=1e-10, schur_precision="full",
                               max_step=0.0, backtrack=False, restarts=0, cg_iters=cg_iters, cg_tol=cg_tol)
    ax = prep.problem_axis
    start = jax.vmap(lambda t: truth_start(t, prep.cfg.rank))(prep.truth) if ax == 0 else truth_start(prep.truth, prep.cfg.rank)

    def polish(p0, problem):
        state = solver.init(p0, problem, None)

        def body(s, _):
            new = solver.step(s, problem)
            return jax.tree.map(lambda a, b: jnp.where(s.done, b, a), new, s), None

        state, _ = jax.lax.scan(body, state, None, length=iters)
        return losses.train_mse(state.params, problem), losses.val_mse(state.params, problem)

    S = len(prep.seeds)
    if ax == 0:
        tr, va = jax.jit(jax.vmap(polish))(start, prep.problem)
    else:
        tr, va = jax.jit(polish)(start, prep.problem)
    return {"oracle_train_mse": _per_seed(jax.device_get(tr), S)[:S], "oracle_val_mse": _per_seed(jax.device_get(va), S)[:S]}


def build(prep: Prepared):
    """The solver, the initial driver carry and the tracer for a prepared run."""
    cfg = prep.cfg
    n_train_max = int(np.max(np.asarray(layout.count(prep.problem))))
    kind = "coo" if layout.is_coo(prep.problem) else "dense"
    solver = make_solver(cfg, {"n_train_max": n_train_max, "layout": kind})
    ax = prep.problem_axis
    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(prep.keys)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(prep.keys)

    def init_one(ki, ks, problem):
        params = solver.init_params(ki, problem)
        return driver.Carry(solver.init(params, problem, ks), jnp.asarray(0, jnp.int32))

    carry = jax.jit(jax.vmap(init_one, in_axes=(0, 0, ax)))(init_keys, step_keys, prep.problem)
    tracer, trace_keys = None, None
    if cfg.hessian_every:
        from lrfactor.hessian import make_tracer

        tracer = make_tracer(solver.objective, cfg)
        trace_keys = jax.vmap(lambda k: jax.random.fold_in(k, 3))(prep.keys)
    return solver, carry, tracer, trace_keys


def peak_memory() -> dict:
    """This process's peak resident memory so far (``peak_rss_mb``; ru_maxrss is
    in KiB on Linux) and, where the backend keeps the statistic (GPUs; not the
    CPU), the first local device's peak allocation (``peak_device_mb``)."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # a backend without memory statistics
        stats = {}
    if "peak_bytes_in_use" in stats:
        out["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def _summary(prep: Prepared, res_history, carry, refs, wall, compile_s, complete: bool, trace_s=None) -> dict:
    cfg = prep.cfg
    S = len(prep.seeds)
    final_train = res_history["train_mse"][:, -1]
    final_val = res_history["val_mse"][:, -1]
    summary = {
        "solver": cfg.solver,
        "seeds": prep.seeds,
        "complete": complete,
        "final": {
            "train_mse": final_train,
            "val_mse": final_val,
            "objective": res_history["objective"][:, -1],
            "steps": np.asarray(carry.t)[:S],
            "done": np.asarray(carry.state.done)[:S],
            # The solver's own per-step records at the end (for Gauss-Newton: λ,
            # max|gradient|, the last gain ratio, restarts taken), so a stalled
            # seed can be told from a converged one without a reference.
            **{k: v[:S, -1] for k, v in res_history.items() if k not in _RECORDED},
        },
        "wall_s": wall,
        "compile_s": compile_s,
        **peak_memory(),
    }
    if trace_s is not None:
        summary["trace_s"] = trace_s  # Hessian tracing in the last process, compilation included
    if refs:
        summary["reference"] = refs
        rel = {"truth_val": _ratio(final_val, refs["truth_val_mse"])}
        if "oracle_train_mse" in refs:
            rel["oracle_train"] = _ratio(final_train, refs["oracle_train_mse"])
            rel["oracle_val"] = _ratio(final_val, refs["oracle_val_mse"])
            ok, _, thr = success.judge(final_train, refs["oracle_train_mse"], success.floor(refs["mean_v2_train"]))
            summary["success"], summary["success_threshold"] = ok, thr
            summary["success_rate"] = float(np.mean(ok))
        summary["relative"] = rel
    return summary


_RECORDED = ("train_mse", "val_mse", "objective", "done", "wall_s", "step")


def _ratio(a, b):
    """a / b per seed, NaN where the reference b is 0 (rank ≥ true rank without noise: the truth fits exactly)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.divide(a, b, out=np.full(np.broadcast(a, b).shape, np.nan), where=b > 0)


def _write_outputs(out: str, prep: Prepared, solver, carry, history, traces, refs, wall, compile_s, complete,
                   trace_s=None):
    S = len(prep.seeds)
    history = {k: v[:S] for k, v in history.items()}
    history["step"] = np.arange(history["train_mse"].shape[1])
    results.write_npz(os.path.join(out, "history.npz"), **history)
    params = jax.device_get(carry.state.params)
    if isinstance(params, Factors):
        ids = {}
        if prep.table is not None:
            ids = {"row_ids": tables.ids_for_npz(prep.table.row_ids), "col_ids": tables.ids_for_npz(prep.table.col_ids)}
        results.write_npz(os.path.join(out, "factors.npz"), W=np.exp(params.A)[:S], H=np.exp(params.B)[:S], **ids)
    else:
        ax = prep.problem_axis
        pred = jax.vmap(lambda p, q: solver.predict(p, q), in_axes=(0, ax))(carry.state.params, prep.problem)
        results.write_npz(os.path.join(out, "predictions.npz"), P=np.asarray(pred)[:S])
    if traces:
        steps = np.asarray([s for s, _ in traces])
        keys = traces[0][1].keys()
        arrays = {k: np.stack([tr[k] for _, tr in traces], axis=1)[:S] for k in keys}
        results.write_npz(os.path.join(out, "hessian.npz"), steps=steps, **arrays)
    results.write_json(os.path.join(out, "summary.json"), _summary(prep, history, carry, refs, wall, compile_s, complete,
                                                                               trace_s))


def _checkpoint(out, carry, history, traces, wall, compile_s):
    leaves = jax.tree.leaves(jax.device_get(carry))
    arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays.update({f"history_{k}": v for k, v in history.items()})
    for j, (step, tr) in enumerate(traces):
        arrays[f"trace_{j}_step"] = np.asarray(step)
        arrays.update({f"trace_{j}_{k}": v for k, v in tr.items()})
    arrays["wall_s"] = np.asarray(wall)
    arrays["compile_s"] = np.asarray(compile_s)
    # Uncompressed: the checkpoint is rewritten after every chunk and deleted at
    # the end, and with Hessian traces it grows with every trace; compressing
    # it cost several seconds of a traced 1,000-epoch run.
    results.write_npz(os.path.join(out, "checkpoint.npz"), _compress=False, **arrays)


def _load_checkpoint(out, carry_template):
    ck = results.read_npz(os.path.join(out, "checkpoint.npz"))
    leaves, treedef = jax.tree.flatten(carry_template)
    new = [jnp.asarray(ck[f"leaf_{i}"], dtype=l.dtype) for i, l in enumerate(leaves)]
    carry = jax.tree.unflatten(treedef, new)
    history = {k[len("history_"):]: v for k, v in ck.items() if k.startswith("history_")}
    traces = []
    j = 0
    while f"trace_{j}_step" in ck:
        pre = f"trace_{j}_"
        tr = {k[len(pre):]: v for k, v in ck.items() if k.startswith(pre) and k != pre + "step"}
        traces.append((int(ck[pre + "step"]), tr))
        j += 1
    return carry, history, traces, float(ck["wall_s"]), float(ck["compile_s"])


def run_placement(prep: Prepared) -> Optional[distributed.Placement]:
    """The mesh and axis a prepared batch is sharded over; None on a single device."""
    return distributed.placement(prep.shard) if jax.device_count() > 1 else None


def config_record(cfg: RunConfig, out: str, placement: Optional[distributed.Placement] = None,
                  problem=None) -> dict:
    """What ``config.json`` holds: the schema version, every setting used, the environment, what was
    sharded, and (given the run's ``problem``) whether per-entry weights were used."""
    env = results.environment()
    rec = {"schema": config_mod.SCHEMA, "config": dataclasses.asdict(cfg), "out": out, "precision": cfg.precision, **env}
    rec["devices"] = env["devices"]
    rec["sharding"] = placement.record() if placement is not None else {"axis": None, "devices": 1, "processes": 1}
    if problem is not None:
        # the weights come from --weight-key or from the .npz itself: say which entries had them
        rec["weights"] = {"train": layout.has_weights(problem, "train"), "val": layout.has_weights(problem, "val")}
    rec["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return rec


class Outcome(NamedTuple):
    """What a finished run leaves in memory (the same numbers as its files)."""

    summary: dict  # what summary.json holds (plain lists and numbers)
    params: Any  # the final parameters, seed axis first, real seeds only (log-factors for factor models)
    history: dict  # per-step records, (S, T+1) each


def execute(cfg: RunConfig, out: str, *, resume: bool = False, progress: bool = True,
            prep: Optional[Prepared] = None) -> dict:
    """Run ``cfg`` into folder ``out`` (which must be new unless ``resume``). Returns the summary."""
    return run_prepared(prep or prepare(cfg), out, resume=resume, progress=progress).summary


def run_prepared(prep: Prepared, out: Optional[str] = None, *, resume: bool = False,
                 progress: bool = True) -> Outcome:
    """Run a prepared batch; with ``out``, write the output folder as the run goes.

    With ``out`` the folder gets config.json first, then after every chunk a
    checkpoint and the files so far, so an interrupted run loses at most one
    chunk and ``resume`` continues it; at the end the final files, and
    ``predictions.csv`` when ``prep.pairs`` asks for predictions. Without
    ``out`` nothing is written. With several processes every process runs
    this (the same call) and only process 0 writes.
    """
    cfg = prep.cfg
    placement = run_placement(prep)
    write = out is not None and distributed.is_main()
    if write:
        os.makedirs(out, exist_ok=True)
        if not resume:
            results.write_json(os.path.join(out, "config.json"), config_record(cfg, out, placement, prep.problem))
    refs = references(prep)
    solver, carry, tracer, trace_keys = build(prep)
    history, traces, wall, compile_prev = None, None, 0.0, None
    if resume and out is not None and os.path.exists(os.path.join(out, "checkpoint.npz")):
        carry, history, traces, wall, compile_prev = _load_checkpoint(out, carry)

    def on_chunk(carry, history, traces, wall, compile_s):
        if write:
            _checkpoint(out, carry, history, traces, wall, compile_s)
            _write_outputs(out, prep, solver, carry, history, traces, refs, wall, compile_s, complete=False)

    res = driver.run(
        solver, prep.problem, carry, steps=cfg.steps, chunk=cfg.chunk, problem_axis=prep.problem_axis,
        tracer=tracer, trace_every=cfg.hessian_every, trace_keys=trace_keys,
        history=history, traces=traces, wall_offset=wall, on_chunk=on_chunk if out is not None else None,
        progress=progress, placement=placement,
    )
    compile_s = res.compile_s if compile_prev is None else compile_prev + res.compile_s
    trace_s = res.trace_s if cfg.hessian_every else None
    S = len(prep.seeds)
    params = jax.tree.map(lambda x: np.asarray(x)[:S], jax.device_get(res.carry.state.params))
    history = {k: v[:S] for k, v in res.history.items()}
    summary = _summary(prep, history, res.carry, refs, res.wall_s, compile_s, True, trace_s)
    if not write:
        return Outcome(results.plain(summary), params, history)
    _write_outputs(out, prep, solver, res.carry, res.history, res.traces, refs, res.wall_s, compile_s, complete=True,
                   trace_s=trace_s)
    if prep.pairs is not None:
        rows, cols = prep.pairs
        k = best_seed(summary)
        pred = tables.predict_pairs(np.exp(params.A[k]), np.exp(params.B[k]), rows, cols)
        tables.write_predictions(os.path.join(out, "predictions.csv"), prep.table, rows, cols, pred)
        results.update_json(os.path.join(out, "summary.json"),
                            predictions={"file": "predictions.csv", "pairs": int(len(rows)), "seed": prep.seeds[k]})
    ck = os.path.join(out, "checkpoint.npz")
    if os.path.exists(ck):
        os.unlink(ck)
    return Outcome(results.read_json(os.path.join(out, "summary.json")), params, history)


def best_seed(summary: dict) -> int:
    """Index (in the batch) of the seed with the lowest final training objective: the one predictions use."""
    obj = np.asarray(summary["final"]["objective"], float)
    return int(np.argmin(np.where(np.isfinite(obj), obj, np.inf)))


# Settings that records of schema 1 may hold and the program no longer has,
# with the value under which they changed nothing.
RETIRED = {"geodesic": False, "newton_iters": 0, "lm_update": "nielsen", "lam_down": None,
           "method": "joint", "inner": None}
# Settings new in schema 2 and the values that say what runs of schema 1 did:
# dense masks, the dense Schur solve. (Schema 1 records may carry a
# linear_solver or cg_iters of their own: the run path never read them.)
SCHEMA_2_FILL = {"layout": "dense", "linear_solver": "dense_schur", "cg_iters": 100, "cg_tol": 1e-2,
                 "row_key": None, "col_key": None, "value_key": None, "split_key": None,
                 "val_fraction": 0.2, "split_seed": 0, "predict": None}

# Settings added later whose absence from a record means the run did not use
# them, with the value under which they change nothing: no run before reg had
# a factor penalty, a cross-validation writes its refit as a plain run (cv 0),
# no run before inner_val had an inner split, and none before weight_key read
# weights from a table's column.
ADDED_OFF = {"reg": 0.0, "cv": 0, "cv_seed": 0, "inner_val": 0.0, "weight_key": None}


# Settings added since schema 2 and the values that say what runs saved before
# them did: the seed axis was sharded over the devices.
ADDED_FILL = {"shard": "seeds"}


def load_config(out: str) -> RunConfig:
    """The config of the run saved in ``out``, as it ran. Raises ConfigError when it cannot be honoured.

    A record is refused rather than completed with today's defaults when a
    setting the run's solver uses is missing from it (it was saved before the
    setting existed, so today's default may not be what it ran with), when it
    used a setting the program no longer has, or when it comes from a newer
    schema. Settings its solver does not use are reset to their defaults.
    """
    from lrfactor.config import ConfigError

    path = os.path.join(out, "config.json")
    try:
        rec = results.read_json(path)
        saved = dict(rec["config"])
        schema = int(rec.get("schema", 1))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a readable run config ({type(e).__name__})") from None
    if schema > config_mod.SCHEMA:
        raise ConfigError(f"{path}: written by a newer lrfactor (config schema {schema}; this one reads up to "
                          f"{config_mod.SCHEMA})")
    try:
        return _honour(saved, schema)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _honour(saved: dict, schema: int) -> RunConfig:
    from lrfactor.config import ConfigError

    saved = {**ADDED_OFF, **saved}
    try:
        probe = RunConfig(**{k: v for k, v in saved.items() if k in config_mod.FIELDS})
    except TypeError as e:
        raise ConfigError(f"not a readable run config ({e})") from None
    for name, off in RETIRED.items():
        if name in saved and off is not None and saved[name] != off and saved.get("solver") == "gauss_newton":
            raise ConfigError(f"the run used {name}={saved[name]!r}, which this version no longer has")
    absent = {k: v for k, v in ADDED_OFF.items() if k not in saved}
    saved, probe = {**saved, **absent}, dataclasses.replace(probe, **absent)
    if schema == 1:
        saved = {**saved, **SCHEMA_2_FILL}
        probe = dataclasses.replace(probe, **SCHEMA_2_FILL)
    added = {k: v for k, v in ADDED_FILL.items() if k not in saved}
    saved, probe = {**saved, **added}, dataclasses.replace(probe, **added)
    unknown = sorted(set(saved) - set(config_mod.FIELDS) - set(RETIRED))
    if unknown:
        raise ConfigError(f"unknown settings {', '.join(unknown)}")
    config_mod.check_types(probe)
    known = config_mod.choices()
    if probe.solver not in known["solver"]:
        raise ConfigError(f"unknown solver {probe.solver!r}")
    missing = [name for name in config_mod.FIELDS
               if name not in saved and config_mod.unused_reason(name, probe, known) is None]
    if missing:
        raise ConfigError(f"saved before {', '.join(missing)} existed; resuming would run them with today's "
                          f"defaults, which may not be what the run used. Start a new run instead")
    return config_mod.validate(config_mod.drop_unused(probe))


def default_out(cfg: RunConfig) -> str:
    return os.path.join("results", f"{cfg.solver}-{time.strftime('%Y%m%d-%H%M%S')}")


__all__ = ["prepare", "execute", "load_config", "default_out", "references", "config_mod"]

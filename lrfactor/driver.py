"""One driver for every solver: seeds × steps as ``jit(vmap(scan))``.

The step budget is cut into chunks of ``chunk`` steps. One chunk is one compiled
program, ``jit(vmap(scan(step)))`` over the seed axis; between chunks the host
updates the progress bar, takes Hessian traces when asked and writes a
checkpoint, so an interrupted run loses at most one chunk. A seed whose state
says ``done`` (or that has used its budget) is frozen with ``jnp.where``: the
batch stays one program and per-step histories come out stacked by seed. Once
at most half of the compiled batch is still running, the chunk is recompiled
for the running seeds alone, so a long tail of a few slow seeds does not pay
for the finished ones.

With several devices (of one or several processes) the batch is sharded
over a 1-D mesh of all of them (``NamedSharding``; lrfactor/distributed.py):
by default the seed axis, or the entry axis of one large coordinate-list
problem. The carry keeps its sharding from chunk to chunk (the chunk's output
shardings are pinned to its inputs'); jit (GSPMD) partitions each chunk.
Results come back to every process (:func:`lrfactor.distributed.fetch`).
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lrfactor import distributed, layout
from lrfactor.solvers.base import Solver


class Carry(NamedTuple):
    state: Any  # the solver's state (seed axis first when batched)
    t: jax.Array  # () int32: steps taken (stops counting when done)


def metrics(solver: Solver, state, problem) -> dict:
    """Per-step record: pure MSEs (no penalty, unweighted), the training objective, extras, done;
    and ``val_wmse``, the held-out MSE weighted by the held-out entries' weights, when the
    problem has those (lrfactor/layout.py)."""
    params = state.params
    train_mse = layout.masked_mse(problem, solver.predict(params, problem, "train"), "train")
    val_pred = solver.predict(params, problem, "val")
    rec = {
        "train_mse": train_mse,
        "val_mse": layout.masked_mse(problem, val_pred, "val"),
        "objective": solver.objective(params, problem),
        "done": state.done,
    }
    if layout.has_weights(problem, "val"):
        rec["val_wmse"] = layout.weighted_mse(problem, val_pred, "val")
    for name, fn in solver.extras:
        rec[name] = jnp.asarray(fn(state))
    return rec


def make_chunk(solver: Solver, steps: int, chunk: int, problem_axis: Optional[int], out_shardings=None):
    """``jit(vmap(scan))`` advancing every seed by ``chunk`` steps (frozen once done).

    ``out_shardings``: (carry shardings, record sharding), to keep the carry
    where it was placed (None: wherever jit puts it)."""

    def advance_one(carry: Carry, problem):
        def body(carry: Carry, _):
            state, t = carry
            active = jnp.logical_not(state.done) & (t < steps)
            new = solver.step(state, problem)
            state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
            t = t + active.astype(t.dtype)
            return Carry(state, t), metrics(solver, state, problem)

        return jax.lax.scan(body, carry, None, length=chunk)

    fn = jax.vmap(advance_one, in_axes=(0, problem_axis))
    return jax.jit(fn) if out_shardings is None else jax.jit(fn, out_shardings=out_shardings)


def default_placement() -> Optional[distributed.Placement]:
    """The seed axis over every device, or None (nothing to shard) on one device."""
    return distributed.placement("seeds") if jax.device_count() > 1 else None


DEFAULT = "default"  # run()'s placement when none is given: default_placement()


def shardings(solver: Solver, carry: Carry, problem, problem_axis: Optional[int], pl: distributed.Placement):
    """(carry shardings, record sharding) of a batch placed by ``pl``; checks that the batch fits it.

    With entries sharded, the carry's leaves that are entry arrays (the HALS
    residual) are sharded like the entries and the rest is replicated.
    """
    S = int(carry.t.shape[0])
    axes = None
    if pl.axis == "seeds" and S % pl.devices:
        raise ValueError(f"{S} seeds do not split over {pl.devices} devices; pad the batch")
    if pl.axis == "entries":
        if not layout.is_coo(problem) or problem.shards != pl.devices:
            raise ValueError(f"sharding the entries over {pl.devices} devices needs a coordinate-list problem "
                             f"cut into {pl.devices} shards (problems.pad_entries)")
        params = carry.state.params

        def init(prob):
            one = lambda p, q: Carry(solver.init(p, q, jax.random.PRNGKey(0)), jnp.asarray(0, jnp.int32))
            return jax.vmap(one, in_axes=(0, problem_axis))(params, prob)

        axes = distributed.entry_axes(init, carry, problem)
    return distributed.carry_shardings(pl, carry, axes), distributed.record_sharding(pl)


def _take(tree, idx):
    """The seeds ``idx`` of a batched host-side pytree."""
    return jax.tree.map(lambda x: np.asarray(x)[idx], tree)


class RunResult(NamedTuple):
    carry: Carry
    history: dict  # name -> (S, T+1) numpy, index 0 = the initial point
    traces: list  # [(step, {name: (S, ...)})]
    wall_s: float  # solver time after compilation
    compile_s: float
    trace_s: float = 0.0  # time in Hessian traces (their compilation included), not part of wall_s
    batch_sizes: tuple = ()  # seed-batch sizes the chunk was compiled for (compaction)
    placement: Optional[distributed.Placement] = None  # the mesh and the axis sharded (None: one device)


def run(
    solver: Solver,
    problem,
    carry: Carry,
    *,
    steps: int,
    chunk: int,
    problem_axis: Optional[int],
    tracer: Optional[Callable] = None,
    trace_every: int = 0,
    trace_keys=None,
    history: Optional[dict] = None,
    traces: Optional[list] = None,
    wall_offset: float = 0.0,
    on_chunk: Optional[Callable] = None,
    progress: bool = True,
    compact: bool = True,
    placement: Any = DEFAULT,
) -> RunResult:
    """Run (or continue) a batch of seeds to the step budget.

    ``carry`` has a leading seed axis; ``problem`` has one when
    ``problem_axis == 0`` (a problem per seed) and none when it is ``None``
    (one shared problem). Both are host-side or process-local values, the
    same on every process. ``history``/``traces``/``wall_offset`` continue a
    resumed run. ``on_chunk(carry, history, traces, wall_s, compile_s)`` is
    called after every chunk (checkpointing) with the carry on the host.
    ``placement``: how the batch is sharded (lrfactor/distributed.py; by
    default the seed axis over every device; None: not sharded). With seeds
    sharded the seed count must be a multiple of the device count; with
    entries sharded the problem must be a coordinate list cut into as many
    shards as devices (:func:`lrfactor.problems.pad_entries`). The returned
    carry is on the host (numpy).
    """
    S = int(carry.t.shape[0])
    pl = default_placement() if placement == DEFAULT else placement
    host_problem = problem
    csh = rsh = None
    if pl is not None:
        csh, rsh = shardings(solver, carry, problem, problem_axis, pl)
        problem = distributed.place(problem, distributed.problem_shardings(pl, problem, problem_axis))
    put = (lambda tree, sh: tree) if pl is None else distributed.place
    carry = put(carry, csh)
    advance = make_chunk(solver, steps, chunk, problem_axis, None if pl is None else (csh, rsh))
    t0 = time.perf_counter()
    compiled = advance.lower(carry, problem).compile()
    compile_s = time.perf_counter() - t0

    measure = jax.jit(jax.vmap(lambda s, p: metrics(solver, s, p), in_axes=(0, problem_axis)))
    if tracer is not None:
        trace_fn = jax.jit(jax.vmap(tracer, in_axes=(0, problem_axis, 0)))
        if pl is not None:
            trace_keys = put(trace_keys, rsh)
    history = dict(history) if history else {}
    traces = list(traces) if traces else []
    if not history:
        rec = distributed.fetch(measure(carry.state, problem))
        history = {k: np.asarray(v)[:, None] for k, v in rec.items()}
        history["wall_s"] = np.zeros_like(history["train_mse"], dtype=np.float64)
    trace_s = 0.0
    host = None  # the whole carry on the host once the batch is compacted (it then lives there between chunks)

    def take_trace():
        nonlocal trace_s
        params = carry.state.params if host is None else put(host.state.params, csh and csh.state.params)
        step = int(np.max(np.asarray(distributed.fetch(carry.t) if host is None else host.t)))
        if traces and traces[-1][0] == step:
            return
        t0 = time.perf_counter()
        out = distributed.fetch(trace_fn(params, problem, trace_keys))
        trace_s += time.perf_counter() - t0
        traces.append((step, {k: np.asarray(v) for k, v in out.items()}))

    if tracer is not None and trace_every and not traces:
        take_trace()

    n_chunks = -(-steps // chunk)
    start_chunk = (history["train_mse"].shape[1] - 1) // chunk
    wall = wall_offset
    bar = None
    if progress and distributed.is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=n_chunks * chunk, initial=start_chunk * chunk, unit="step", leave=False, dynamic_ncols=True)
    # Active-set compaction: a frozen seed costs as much as a running one inside
    # the vmapped chunk, so once at most half of the batch is still running the
    # chunk is recompiled for the running seeds alone (padded to the device
    # count with copies when seeds are sharded) and their results are
    # scattered back into the whole carry, kept on the host from then on. A
    # frozen seed's per-step record is constant, so its history is its last
    # column repeated: exactly what the full batch would have recorded.
    active = np.arange(S)  # seeds the compiled chunk advances, in batch order
    batch_sizes = [S]
    for c in range(start_chunk, n_chunks):
        done, t = distributed.fetch((carry.state.done, carry.t)) if host is None else (host.state.done, host.t)
        running = np.flatnonzero(~(np.asarray(done) | (np.asarray(t) >= steps)))
        if running.size == 0:
            break
        if compact and running.size <= len(active) // 2:
            if host is None:
                host = distributed.fetch(carry)
            k = pl.devices if pl is not None and pl.axis == "seeds" else 1
            active = np.concatenate([running, np.repeat(running[-1:], (-running.size) % k)])
            sub_problem = problem
            if problem_axis == 0:
                sub_problem = _take(host_problem, active)
                if pl is not None:
                    sub_problem = put(sub_problem, distributed.problem_shardings(pl, sub_problem, 0))
            t0 = time.perf_counter()
            compiled = advance.lower(put(_take(host, active), csh), sub_problem).compile()
            compile_s += time.perf_counter() - t0
            batch_sizes.append(len(active))
        tc = time.perf_counter()
        if host is None:
            carry, rec = compiled(carry, problem)
            rec = distributed.fetch(rec)
        else:
            sub, rec = compiled(put(_take(host, active), csh), sub_problem)
            sub = distributed.fetch(sub)

            def scatter(full, part):
                full = np.array(full)
                full[active] = part
                return full

            host = jax.tree.map(scatter, host, sub)
            carry = host
            rec_sub = distributed.fetch(rec)
            rec = {}
            for name, v in rec_sub.items():  # frozen seeds: their last record, repeated
                full = np.repeat(history[name][:, -1:], chunk, axis=1).astype(np.asarray(v).dtype)
                full[active] = np.asarray(v)
                rec[name] = full
        dt = time.perf_counter() - tc
        # Wall time is measured per chunk and spread evenly over its steps.
        steps_wall = wall + dt * np.arange(1, chunk + 1) / chunk
        for k, v in rec.items():
            history[k] = np.concatenate([history[k], np.asarray(v)], axis=1)
        history["wall_s"] = np.concatenate(
            [history["wall_s"], np.broadcast_to(steps_wall, (history["train_mse"].shape[0], chunk))], axis=1
        )
        wall += dt
        if tracer is not None and trace_every and ((c + 1) * chunk) % trace_every == 0:
            take_trace()
        if bar is not None:
            bar.update(chunk)
            bar.set_postfix(train=f"{np.nanmedian(history['train_mse'][:, -1]):.3g}",
                            val=f"{np.nanmedian(history['val_mse'][:, -1]):.3g}",
                            running=f"{running.size}/{S}")
        if on_chunk is not None:
            on_chunk(distributed.fetch(carry), history, traces, wall, compile_s)
    if bar is not None:
        bar.close()
    if tracer is not None and trace_every:
        take_trace()  # the last step (skipped when it was just traced)
    carry = distributed.fetch(carry)
    # Trim to the steps actually taken by any seed.
    last = int(np.max(np.asarray(carry.t)))
    history = {k: v[:, : last + 1] for k, v in history.items()}
    return RunResult(carry, history, traces, wall, compile_s, trace_s, tuple(batch_sizes), pl)

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

With several devices the seed axis is sharded over a 1-D mesh
(``NamedSharding``); jit propagates the sharding through every chunk.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lrfactor import layout
from lrfactor.solvers.base import Solver


class Carry(NamedTuple):
    state: Any  # the solver's state (seed axis first when batched)
    t: jax.Array  # () int32: steps taken (stops counting when done)


def metrics(solver: Solver, state, problem) -> dict:
    """Per-step record: pure MSEs (no penalty), the training objective, extras, done."""
    params = state.params
    rec = {
        "train_mse": layout.masked_mse(problem, solver.predict(params, problem, "train"), "train"),
        "val_mse": layout.masked_mse(problem, solver.predict(params, problem, "val"), "val"),
        "objective": solver.objective(params, problem),
        "done": state.done,
    }
    for name, fn in solver.extras:
        rec[name] = jnp.asarray(fn(state))
    return rec


def make_chunk(solver: Solver, steps: int, chunk: int, problem_axis: Optional[int]):
    """``jit(vmap(scan))`` advancing every seed by ``chunk`` steps (frozen once done)."""

    def advance_one(carry: Carry, problem):
        def body(carry: Carry, _):
            state, t = carry
            active = jnp.logical_not(state.done) & (t < steps)
            new = solver.step(state, problem)
            state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
            t = t + active.astype(t.dtype)
            return Carry(state, t), metrics(solver, state, problem)

        return jax.lax.scan(body, carry, None, length=chunk)

    return jax.jit(jax.vmap(advance_one, in_axes=(0, problem_axis)))


def seed_sharding(n_seeds: int):
    """A NamedSharding of the seed axis over all local devices, or None on one device."""
    devs = jax.devices()
    if len(devs) == 1:
        return None
    mesh = Mesh(np.array(devs), ("seeds",))
    return NamedSharding(mesh, PartitionSpec("seeds"))


def shard(tree, sharding):
    if sharding is None:
        return tree
    return jax.device_put(tree, sharding)


def _take(tree, idx, sharding):
    """The seeds ``idx`` of a batched pytree, placed on ``sharding``."""
    return shard(jax.tree.map(lambda x: x[idx], tree), sharding)


class RunResult(NamedTuple):
    carry: Carry
    history: dict  # name -> (S, T+1) numpy, index 0 = the initial point
    traces: list  # [(step, {name: (S, ...)})]
    wall_s: float  # solver time after compilation
    compile_s: float
    trace_s: float = 0.0  # time in Hessian traces (their compilation included), not part of wall_s
    batch_sizes: tuple = ()  # seed-batch sizes the chunk was compiled for (compaction)


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
) -> RunResult:
    """Run (or continue) a batch of seeds to the step budget.

    ``carry`` has a leading seed axis; ``problem`` has one when
    ``problem_axis == 0`` (a problem per seed) and none when it is ``None``
    (one shared problem). ``history``/``traces``/``wall_offset`` continue a
    resumed run. ``on_chunk(carry, history, traces, wall_s, compile_s)`` is
    called after every chunk (checkpointing).
    """
    S = int(carry.t.shape[0])
    sharding = seed_sharding(S)
    carry = shard(carry, sharding)
    if problem_axis == 0:
        problem = shard(problem, sharding)
    advance = make_chunk(solver, steps, chunk, problem_axis)
    t0 = time.perf_counter()
    compiled = advance.lower(carry, problem).compile()
    compile_s = time.perf_counter() - t0

    measure = jax.jit(jax.vmap(lambda s, p: metrics(solver, s, p), in_axes=(0, problem_axis)))
    if tracer is not None:
        trace_fn = jax.jit(jax.vmap(tracer, in_axes=(0, problem_axis, 0)))
    history = dict(history) if history else {}
    traces = list(traces) if traces else []
    if not history:
        rec = jax.device_get(measure(carry.state, problem))
        history = {k: np.asarray(v)[:, None] for k, v in rec.items()}
        history["wall_s"] = np.zeros_like(history["train_mse"], dtype=np.float64)
    trace_s = 0.0

    def take_trace():
        nonlocal trace_s
        step = int(np.max(np.asarray(carry.t)))
        if traces and traces[-1][0] == step:
            return
        t0 = time.perf_counter()
        out = jax.device_get(trace_fn(carry.state.params, problem, trace_keys))
        trace_s += time.perf_counter() - t0
        traces.append((step, {k: np.asarray(v) for k, v in out.items()}))

    if tracer is not None and trace_every and not traces:
        take_trace()

    n_chunks = -(-steps // chunk)
    start_chunk = (history["train_mse"].shape[1] - 1) // chunk
    wall = wall_offset
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_chunks * chunk, initial=start_chunk * chunk, unit="step", leave=False, dynamic_ncols=True)
    # Active-set compaction: a frozen seed costs as much as a running one inside
    # the vmapped chunk, so once at most half of the batch is still running the
    # chunk is recompiled for the running seeds alone (padded to the device
    # count with copies) and their results are scattered back. A frozen seed's
    # per-step record is constant, so its history is its last column repeated:
    # exactly what the full batch would have recorded.
    active = np.arange(S)  # seeds the compiled chunk advances, in batch order
    batch_sizes = [S]
    for c in range(start_chunk, n_chunks):
        running = np.flatnonzero(~(np.asarray(carry.state.done) | (np.asarray(carry.t) >= steps)))
        if running.size == 0:
            break
        if compact and running.size <= len(active) // 2:
            k = jax.local_device_count()
            active = np.concatenate([running, np.repeat(running[-1:], (-running.size) % k)])
            idx = jnp.asarray(active)
            take = partial(_take, idx=idx, sharding=seed_sharding(len(active)))
            sub_problem = take(problem) if problem_axis == 0 else problem
            t0 = time.perf_counter()
            compiled = advance.lower(take(carry), sub_problem).compile()
            compile_s += time.perf_counter() - t0
            batch_sizes.append(len(active))
        tc = time.perf_counter()
        if len(active) == S:
            carry, rec = compiled(carry, problem)
            rec = jax.device_get(rec)
        else:
            sub, rec = compiled(take(carry), sub_problem)
            carry = jax.tree.map(lambda full, part: full.at[idx].set(part), carry, sub)
            carry = shard(carry, sharding)
            rec_sub = jax.device_get(rec)
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
            on_chunk(carry, history, traces, wall, compile_s)
    if bar is not None:
        bar.close()
    if tracer is not None and trace_every:
        take_trace()  # the last step (skipped when it was just traced)
    # Trim to the steps actually taken by any seed.
    last = int(np.max(np.asarray(carry.t)))
    history = {k: v[:, : last + 1] for k, v in history.items()}
    return RunResult(carry, history, traces, wall, compile_s, trace_s, tuple(batch_sizes))

"""Where a run's arrays live: a 1-D mesh over every device of every process.

A run is sharded along one axis over all devices (``jax.devices()``, which
spans every process once :func:`init_processes` has joined them):

- ``seeds``: the seed axis. Each device advances its own seeds; the batch is
  padded to a multiple of the device count with copies of the last seed
  (outputs keep the real seeds only). Nothing crosses devices inside a chunk.
- ``entries``: the entry axis of a coordinate-list problem
  (:class:`lrfactor.problems.CooProblem`), for one large problem (or fewer
  seeds than devices). The entry lists are padded to a multiple of the device
  count with padding entries and cut into that many blocks
  (:func:`lrfactor.problems.pad_entries`); the factors and every per-row or
  per-column quantity are replicated. jit (GSPMD) partitions the sweeps of
  lrfactor/layout.py so that each device sums over its own entries and the
  (n, r)-sized sums are all-reduced; solver state that is itself an entry
  array (the HALS residual) stays sharded like the entries.

``auto`` (:func:`choose`) shards the seeds when there are at least as many
seeds as devices, the entries when there are fewer seeds and the problem is a
coordinate list, and otherwise the seeds (padded with copies).

Several processes (one per host of a cluster, or several on one machine) are
joined by :func:`init_processes` (``jax.distributed.initialize``) before
anything else touches JAX. Every process then builds the same host-side
inputs (it reads the data or draws the synthetic problem itself), and
:func:`place` turns them into global arrays of which each process holds its
own devices' part; :func:`fetch` brings global results back to every host (a
collective: every process must call it at the same point). Only process 0
writes files and prints (:func:`is_main`).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SHARDS = ("auto", "seeds", "entries")
AXIS = "devices"  # the name of the mesh axis


# ----------------------------------------------------------------------------- processes


def check_processes(coordinator: Optional[str], num_processes: Optional[int], process_id: Optional[int]) -> None:
    """The process flags are all given or all absent, and consistent. Raises ValueError (one line)."""
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if not any(given):
        return
    if not all(given):
        raise ValueError("--coordinator, --num-processes and --process-id go together (give all three)")
    if not re.fullmatch(r"\[?[A-Za-z0-9_.:-]+\]?:[0-9]{1,5}", coordinator) or not 0 < int(coordinator.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"--coordinator must be HOST:PORT (e.g. 127.0.0.1:12345), got {coordinator!r}")
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")


def init_processes(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join this process to the others (``jax.distributed.initialize``); call before any JAX computation.

    Process 0 serves as the coordinator at ``coordinator`` (HOST:PORT, an
    address of process 0's host that every process can reach). On CPUs the
    cross-process collectives go through gloo.
    """
    check_processes(coordinator, num_processes, process_id)
    if num_processes == 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def is_main() -> bool:
    """Whether this process writes the files and prints (process 0)."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------- the rule


def choose(setting: str, n_seeds: int, coo: bool, devices: Optional[int] = None) -> str:
    """The axis to shard, ``seeds`` or ``entries``, for a setting in SHARDS."""
    if setting not in SHARDS:
        raise ValueError(f"unknown shard {setting!r}; known: {', '.join(SHARDS)}")
    devices = jax.device_count() if devices is None else devices
    if setting == "auto":
        return "entries" if coo and n_seeds < devices else "seeds"
    if setting == "entries" and not coo:
        raise ValueError("sharding the entries needs coordinate lists (layout coo)")
    return setting


class Placement(NamedTuple):
    """The mesh a run is sharded over and the axis sharded."""

    axis: str  # "seeds" or "entries"
    mesh: Mesh

    @property
    def devices(self) -> int:
        return self.mesh.size

    def pad_seeds(self, n: int) -> int:
        """How many copies pad a batch of ``n`` seeds (a multiple of the device count when seeds are sharded)."""
        return (-n) % self.devices if self.axis == "seeds" else 0

    def record(self) -> dict:
        """What config.json says about it."""
        return {"axis": self.axis, "devices": self.devices, "processes": jax.process_count()}


def placement(axis: str = "seeds") -> Placement:
    """A placement over every device of every process."""
    if axis not in ("seeds", "entries"):
        raise ValueError(f"axis must be seeds or entries, got {axis!r}")
    return Placement(axis, Mesh(np.array(jax.devices()), (AXIS,)))


def _spec(ndim: int, axis: Optional[int]) -> PartitionSpec:
    if axis is None:
        return PartitionSpec()
    return PartitionSpec(*([None] * axis + [AXIS] + [None] * (ndim - axis - 1)))


def problem_shardings(pl: Placement, problem, problem_axis: Optional[int]):
    """NamedShardings of a problem's leaves: its seed axis (seeds), its entry axis (entries), or replicated."""
    if pl.axis == "seeds":
        return jax.tree.map(lambda x: NamedSharding(pl.mesh, _spec(np.ndim(x), problem_axis)), problem)
    return jax.tree.map(lambda x: NamedSharding(pl.mesh, _spec(np.ndim(x), np.ndim(x) - 1)), problem)


def entry_axes(init, carry, problem):
    """For each leaf of ``carry``, the axis that counts entries of ``problem`` (-1 for none).

    ``init(problem)`` builds a carry like ``carry``; it is traced (not run)
    twice, for the problem as it is and for one with more entries, and a
    leaf's entry axis is the one whose length follows the entry count.
    """
    extra = getattr(problem, "shards", 1)  # keeps the entry count a multiple of the shard count
    grown = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[:-1] + (x.shape[-1] + extra,), x.dtype), problem)
    a, b = jax.eval_shape(init, problem), jax.eval_shape(init, grown)

    def axis(x, y):
        diff = [k for k, (p, q) in enumerate(zip(x.shape, y.shape)) if p != q]
        return diff[0] if diff else -1

    axes = jax.tree.map(axis, a, b)
    if jax.tree.structure(axes) != jax.tree.structure(carry):
        raise ValueError("entry_axes: init builds a different structure than the carry")
    return axes


def carry_shardings(pl: Placement, carry, axes=None):
    """NamedShardings of the driver's carry: seed axis first (seeds); entry axes
    ``axes`` (:func:`entry_axes`) sharded and everything else replicated (entries)."""
    if pl.axis == "seeds":
        return jax.tree.map(lambda x: NamedSharding(pl.mesh, _spec(np.ndim(x), 0)), carry)
    if axes is None:
        axes = jax.tree.map(lambda x: -1, carry)
    return jax.tree.map(lambda x, k: NamedSharding(pl.mesh, _spec(np.ndim(x), None if k < 0 else k)), carry, axes)


def record_sharding(pl: Placement) -> NamedSharding:
    """Sharding of per-seed records (seed axis first)."""
    return NamedSharding(pl.mesh, PartitionSpec(AXIS) if pl.axis == "seeds" else PartitionSpec())


# ----------------------------------------------------------------------------- moving arrays


def place(tree, shardings):
    """Host-side (or process-local) values, the same on every process, as global arrays on ``shardings``."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(one, tree, shardings)


def fetch(tree) -> Any:
    """Global arrays as numpy on every process (a collective across processes: all must call it)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def all_ok(ok: bool) -> bool:
    """Whether every process says ``ok`` (a collective; just ``ok`` with one process).

    Each process validates its input before any computing; this lets all of
    them stop together when one refuses, rather than leave the others waiting
    in the first collective."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


__all__ = ["SHARDS", "Placement", "placement", "choose", "init_processes", "check_processes", "is_main", "place",
           "fetch", "all_ok", "entry_axes", "carry_shardings", "problem_shardings", "record_sharding"]

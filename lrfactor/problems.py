"""Problems: a partially observed non-negative matrix, its observed entries and its truth.

Two layouts of the same problem (the solvers see them through
lrfactor/layout.py only):

- :class:`Problem`: dense masks. V (n × m) with a training and a held-out
  mask; every per-entry quantity is an (n, m) array, zero off the mask. The
  fastest form while n·m fits in memory.
- :class:`CooProblem`: coordinate lists. The training entries as three parallel
  arrays (rows, cols, vals) and the held-out entries likewise, plus the shape.
  Memory grows with the number of observed entries, never with n·m. Build it
  from host arrays with :func:`from_coo` (validate them first with
  :func:`check_coo`), from a dense problem with :func:`to_coo`, or draw it with
  :func:`make_sparse_synthetic`.

The synthetic recipe is the question's (a practitioner's question; docs/design.md)::

    weight = 10**linspace(0, -decay, true_rank)
    W = exp(randn(n, true_rank)) * weight;  H = exp(randn(m, true_rank)) * weight
    V = W Hᵀ (+ optional Gaussian noise);  train = uniform(n, m) < observed;  val = ~train

written as a pure function of a PRNG key so that the data for many seeds is
drawn inside one vmapped program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class Problem(NamedTuple):
    """A matrix seen on two disjoint masks. Arrays may carry a leading seed axis.

    ``weight``: optional per-entry weights of the training entries (each
    entry's loss term is multiplied by its weight; None: every entry counts
    once); ``val_weight`` likewise for the held-out entries (they are only
    scored). Solvers read them through :func:`lrfactor.layout.weights`.
    """

    V: jax.Array  # (n, m) float: values; 0 wherever neither mask is set
    train: jax.Array  # (n, m) bool: entries fitted
    val: jax.Array  # (n, m) bool: held-out entries, scored and never fitted
    weight: Optional[jax.Array] = None  # (n, m) float >= 0: weights of the training entries (read on train only); None = 1
    val_weight: Optional[jax.Array] = None  # (n, m) float >= 0: weights of the held-out entries (read on val only); None = 1


DEFAULT_CHUNK = 16384  # entries per chunk of a coordinate-list sweep (see lrfactor/layout.py)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["rows", "cols", "vals", "val_rows", "val_cols", "val_vals", "weights", "val_weights"],
                   meta_fields=["n", "m", "chunk", "shards"])
@dataclasses.dataclass(frozen=True)
class CooProblem:
    """A matrix seen on a coordinate list of training entries and one of held-out entries.

    Arrays may carry a leading seed axis. Entries are sorted row-major. An
    entry with row ``n`` (and column ``m``) is padding, which lets problems of
    several seeds with different entry counts stack into one batch: it is
    outside every mask, gathers clip it and scatter-adds drop it. The shape,
    the chunk size and the shard count are static (pytree metadata), so they
    fix compiled shapes.

    ``shards`` cuts the entry lists into that many equal contiguous blocks
    (the length a multiple of it: :func:`pad_entries`). The chunked sweeps of
    lrfactor/layout.py walk the blocks side by side, each summing into its own
    accumulator, and add the accumulators at the end; with the entry axis
    sharded over a mesh of that many devices, each device then sweeps its own
    block and only the (n, r)-sized sums cross devices. One shard is the plain
    sequential sweep.

    ``weights`` (beside ``vals``) and ``val_weights`` (beside ``val_vals``)
    are the optional per-entry weights, as on :class:`Problem`; padding
    entries have weight 0.
    """

    rows: jax.Array  # (N,) int32 row index of each training entry; n marks padding
    cols: jax.Array  # (N,) int32 column index; m on padding
    vals: jax.Array  # (N,) float V_ij; 0 on padding
    val_rows: jax.Array  # (N_val,) int32 held-out entries, disjoint from the training ones
    val_cols: jax.Array  # (N_val,) int32
    val_vals: jax.Array  # (N_val,) float
    n: int  # rows of the matrix
    m: int  # columns of the matrix
    chunk: int = DEFAULT_CHUNK  # entries processed at a time (per shard)
    shards: int = 1  # blocks of the entry lists swept side by side (the devices the entries are sharded over)
    weights: Optional[jax.Array] = None  # (N,) float >= 0: weight of each training entry, 0 on padding; None = 1
    val_weights: Optional[jax.Array] = None  # (N_val,) float >= 0: weight of each held-out entry; None = 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.m

    def _replace(self, **kw) -> "CooProblem":
        return dataclasses.replace(self, **kw)


class Truth(NamedTuple):
    """Generating factors, when known (synthetic data or W_true/H_true in a file)."""

    W: jax.Array  # (n, k) non-negative
    H: jax.Array  # (m, k) non-negative


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The question's generator; the defaults reproduce the question's problem."""

    n: int = 1000  # rows (products)
    m: int = 100  # columns (stores)
    true_rank: int = 12  # rank of the generating factors
    decay: float = 2.0  # factor scales 10**linspace(0, -decay, true_rank)
    observed: float = 0.5  # probability that an entry is in the training mask
    noise: float = 0.0  # std of Gaussian noise added to V (0: exact low rank)


def make_synthetic(key: jax.Array, cfg: SyntheticConfig, dtype=None) -> tuple[Problem, Truth]:
    """Draw one problem of the question's recipe. Pure in ``key``: vmap it over keys."""
    dtype = dtype or jnp.zeros(()).dtype
    kw, kh, km, kn = jax.random.split(key, 4)
    weight = 10.0 ** jnp.linspace(0.0, -cfg.decay, cfg.true_rank, dtype=dtype)
    W = jnp.exp(jax.random.normal(kw, (cfg.n, cfg.true_rank), dtype)) * weight
    H = jnp.exp(jax.random.normal(kh, (cfg.m, cfg.true_rank), dtype)) * weight
    V = W @ H.T
    if cfg.noise > 0:
        V = V + cfg.noise * jax.random.normal(kn, V.shape, dtype)
    train = jax.random.uniform(km, V.shape, dtype) < cfg.observed
    return Problem(V=V, train=train, val=~train), Truth(W=W, H=H)


class ProblemError(ValueError):
    """Invalid input data; the message is one line naming the problem."""


def check_problem(V, train, val, rank: int, name: str = "data") -> None:
    """Validate a problem on the host (numpy arrays, no seed axis). Raises ProblemError.

    Shapes, mask types, finite observed values, no empty row or column; the
    values' sign is the loss's and the solver's business
    (:func:`lrfactor.losses.value_requirement`, checked where the data is read).
    """
    V, train = np.asarray(V), np.asarray(train)
    if V.ndim != 2:
        raise ProblemError(f"{name}: V must be a 2-D matrix, got shape {V.shape}")
    if train.shape != V.shape:
        raise ProblemError(f"{name}: train_mask shape {train.shape} differs from V shape {V.shape}")
    if train.dtype != bool:
        raise ProblemError(f"{name}: train_mask must be boolean, got dtype {train.dtype}")
    if val is not None:
        val = np.asarray(val)
        if val.shape != V.shape:
            raise ProblemError(f"{name}: val_mask shape {val.shape} differs from V shape {V.shape}")
        if val.dtype != bool:
            raise ProblemError(f"{name}: val_mask must be boolean, got dtype {val.dtype}")
        if np.any(train & val):
            raise ProblemError(f"{name}: train_mask and val_mask overlap in {int(np.sum(train & val))} entries")
    if not np.issubdtype(V.dtype, np.floating) and not np.issubdtype(V.dtype, np.integer):
        raise ProblemError(f"{name}: V must be numeric, got dtype {V.dtype}")
    seen = train | val if val is not None else train
    bad = ~np.isfinite(V[seen])
    if bad.any():
        raise ProblemError(f"{name}: {int(bad.sum())} observed entries of V are NaN or inf")
    rows, cols = train.sum(axis=1), train.sum(axis=0)
    if (rows == 0).any():
        raise ProblemError(f"{name}: training mask has {int((rows == 0).sum())} empty rows (first: row {int(np.argmax(rows == 0))})")
    if (cols == 0).any():
        raise ProblemError(f"{name}: training mask has {int((cols == 0).sum())} empty columns (first: column {int(np.argmax(cols == 0))})")
    if rank < 1 or rank > min(V.shape):
        raise ProblemError(f"{name}: rank {rank} must be between 1 and min(n, m) = {min(V.shape)}")


# ----------------------------------------------------------------------------- coordinate lists


def from_coo(rows, cols, vals, val_rows=None, val_cols=None, val_vals=None, shape=None, *,
             chunk: int = DEFAULT_CHUNK, dtype=None, weights=None, val_weights=None) -> CooProblem:
    """A :class:`CooProblem` from host arrays (one seed): the public constructor.

    ``rows``, ``cols``, ``vals``: the training entries (i, j, V_ij); ``val_*``:
    the held-out entries (omit them for none); ``shape``: (n, m);
    ``weights``, ``val_weights``: optional per-entry weights beside ``vals``
    and ``val_vals``. Entries are sorted row-major here; nothing is validated
    (call :func:`check_coo` first on untrusted data: duplicates, out-of-range
    indices, NaN, empty rows). ``dtype`` is the float type of the values and
    weights (default: JAX's default float).
    """
    if shape is None:
        raise ValueError("from_coo needs the matrix shape (n, m)")
    n, m = (int(x) for x in shape)
    dtype = dtype or jnp.zeros(()).dtype
    rows, cols = np.asarray(rows, np.int64).ravel(), np.asarray(cols, np.int64).ravel()
    if val_rows is None:
        val_rows, val_cols, val_vals = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    vrows, vcols = np.asarray(val_rows, np.int64).ravel(), np.asarray(val_cols, np.int64).ravel()
    order = np.argsort(rows * m + cols, kind="stable")
    vorder = np.argsort(vrows * m + vcols, kind="stable")
    sort = lambda x, o: None if x is None else jnp.asarray(np.asarray(x).ravel()[o], dtype)  # noqa: E731
    return CooProblem(
        rows=jnp.asarray(rows[order], jnp.int32), cols=jnp.asarray(cols[order], jnp.int32),
        vals=sort(vals, order),
        val_rows=jnp.asarray(vrows[vorder], jnp.int32), val_cols=jnp.asarray(vcols[vorder], jnp.int32),
        val_vals=sort(val_vals, vorder),
        n=n, m=m, chunk=int(chunk), weights=sort(weights, order), val_weights=sort(val_weights, vorder),
    )


def to_coo(problem: Problem, chunk: int = DEFAULT_CHUNK) -> CooProblem:
    """The coordinate form of a dense-mask problem (one seed, host side); same dtype, same weights."""
    V, train, val = (np.asarray(x) for x in (problem.V, problem.train, problem.val))
    ti, tj = np.nonzero(train)
    vi, vj = np.nonzero(val)
    at = lambda x, i, j: None if x is None else np.asarray(x)[i, j]  # noqa: E731
    return from_coo(ti, tj, V[ti, tj], vi, vj, V[vi, vj], V.shape, chunk=chunk, dtype=problem.V.dtype,
                    weights=at(problem.weight, ti, tj), val_weights=at(problem.val_weight, vi, vj))


def to_dense(problem: CooProblem) -> Problem:
    """The dense-mask form of a coordinate-list problem (one seed, host side); same weights
    (0 off their mask)."""
    n, m = problem.n, problem.m
    dtype = np.asarray(problem.vals).dtype
    V = np.zeros((n, m), dtype)
    train, val = np.zeros((n, m), bool), np.zeros((n, m), bool)
    weight = None if problem.weights is None else np.zeros((n, m), dtype)
    val_weight = None if problem.val_weights is None else np.zeros((n, m), dtype)
    for r, c, v, w, mk, wk in ((problem.rows, problem.cols, problem.vals, problem.weights, train, weight),
                               (problem.val_rows, problem.val_cols, problem.val_vals, problem.val_weights, val,
                                val_weight)):
        r, c, v = np.asarray(r), np.asarray(c), np.asarray(v)
        keep = r < n  # not padding
        V[r[keep], c[keep]] = v[keep]
        mk[r[keep], c[keep]] = True
        if wk is not None:
            wk[r[keep], c[keep]] = np.asarray(w)[keep]
    return Problem(V=V, train=train, val=val, weight=weight, val_weight=val_weight)


def pad_entries(problem: CooProblem, shards: int) -> CooProblem:
    """``problem`` cut into ``shards`` blocks: both entry lists padded at the end to a
    multiple of ``shards`` with padding entries (row n, column m, value 0,
    weight 0), which every operation ignores. Works with or without a leading seed axis."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")

    def pad(x, fill):
        extra = (-x.shape[-1]) % shards
        return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)], constant_values=fill)

    n, m = problem.n, problem.m
    weighted = lambda w: None if w is None else pad(w, 0)  # noqa: E731  padding weighs nothing
    return problem._replace(
        rows=pad(problem.rows, n), cols=pad(problem.cols, m), vals=pad(problem.vals, 0),
        val_rows=pad(problem.val_rows, n), val_cols=pad(problem.val_cols, m), val_vals=pad(problem.val_vals, 0),
        weights=weighted(problem.weights), val_weights=weighted(problem.val_weights), shards=int(shards))


def stack_coo(problems: list) -> CooProblem:
    """Problems of several seeds (same shape and chunk) as one batch, seed axis first.

    Each entry list is padded to the longest with padding entries (row n,
    column m, value 0, weight 0; see :class:`CooProblem`), which sort after
    every real entry, so each seed keeps its own row-major order. The
    problems must all have weights or none (of each list).
    """
    n, m, chunk = problems[0].n, problems[0].m, problems[0].chunk
    if any((p.n, p.m, p.chunk, p.shards) != (n, m, chunk, 1) for p in problems):
        raise ValueError("stack_coo: the problems differ in shape or chunk size, or are already sharded")
    for name in ("weights", "val_weights"):
        if len({getattr(p, name) is None for p in problems}) > 1:
            raise ValueError(f"stack_coo: some problems have {name} and some do not")

    def pad(arrs, fill):
        if arrs[0] is None:
            return None
        size = max(a.shape[0] for a in arrs)
        return jnp.stack([jnp.pad(a, (0, size - a.shape[0]), constant_values=fill) for a in arrs])

    return CooProblem(
        rows=pad([p.rows for p in problems], n), cols=pad([p.cols for p in problems], m),
        vals=pad([p.vals for p in problems], 0), val_rows=pad([p.val_rows for p in problems], n),
        val_cols=pad([p.val_cols for p in problems], m), val_vals=pad([p.val_vals for p in problems], 0),
        n=n, m=m, chunk=chunk,
        weights=pad([p.weights for p in problems], 0), val_weights=pad([p.val_weights for p in problems], 0),
    )


def check_coo(rows, cols, vals, val_rows, val_cols, val_vals, shape, rank: int, name: str = "data") -> None:
    """Validate coordinate lists on the host (no seed axis). Raises ProblemError, one line.

    Indices integral and in range, values finite (their sign is the loss's and
    the solver's business: :func:`lrfactor.losses.value_requirement`), no
    duplicate (row, column) pair within or across the two lists, no empty row
    or column among the training entries, 1 ≤ rank ≤ min(n, m).
    """
    try:
        n, m = (int(x) for x in shape)
    except (TypeError, ValueError):
        raise ProblemError(f"{name}: shape must be two integers (n, m), got {shape!r}") from None
    if n < 1 or m < 1:
        raise ProblemError(f"{name}: shape {(n, m)} must be positive")
    lists = {"training": (rows, cols, vals)}
    if val_rows is not None:
        lists["held-out"] = (val_rows, val_cols, val_vals)
    lin = {}
    for what, (r, c, v) in lists.items():
        r, c, v = np.asarray(r), np.asarray(c), np.asarray(v)
        if r.ndim != 1 or c.shape != r.shape or v.shape != r.shape:
            raise ProblemError(f"{name}: {what} rows, cols and vals must be 1-D of one length, "
                               f"got {r.shape}, {c.shape}, {v.shape}")
        for key, x, hi in (("row", r, n), ("column", c, m)):
            if x.size and not np.issubdtype(x.dtype, np.integer):
                raise ProblemError(f"{name}: {what} {key} indices must be integers, got dtype {x.dtype}")
            if x.size and (x.min() < 0 or x.max() >= hi):
                raise ProblemError(f"{name}: {what} {key} index out of range [0, {hi}) "
                                   f"(found {int(x.min())}..{int(x.max())})")
        if v.size and not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
            raise ProblemError(f"{name}: {what} values must be numeric, got dtype {v.dtype}")
        bad = ~np.isfinite(v.astype(float))
        if bad.any():
            raise ProblemError(f"{name}: {int(bad.sum())} {what} values are NaN or inf")
        li = r.astype(np.int64) * m + c.astype(np.int64)
        uniq, counts = np.unique(li, return_counts=True)
        if (counts > 1).any():
            k = int(uniq[np.argmax(counts > 1)])
            raise ProblemError(f"{name}: duplicate {what} entry (row {k // m}, column {k % m})")
        lin[what] = uniq
    if "held-out" in lin:
        both = np.intersect1d(lin["training"], lin["held-out"], assume_unique=True)
        if both.size:
            raise ProblemError(f"{name}: {both.size} entries are both training and held-out "
                               f"(first: row {int(both[0]) // m}, column {int(both[0]) % m})")
    rc = np.bincount(np.asarray(rows, np.int64), minlength=n)
    cc = np.bincount(np.asarray(cols, np.int64), minlength=m)
    if (rc == 0).any():
        raise ProblemError(f"{name}: training entries leave {int((rc == 0).sum())} empty rows (first: row {int(np.argmax(rc == 0))})")
    if (cc == 0).any():
        raise ProblemError(f"{name}: training entries leave {int((cc == 0).sum())} empty columns (first: column {int(np.argmax(cc == 0))})")
    if rank < 1 or rank > min(n, m):
        raise ProblemError(f"{name}: rank {rank} must be between 1 and min(n, m) = {min(n, m)}")


def _draw_pairs(key, count: int, n: int, m: int):
    """``count`` uniform (i, j) pairs, deduplicated, as sorted int64 linear indices i·m + j."""
    ki, kj = jax.random.split(key)
    i = np.asarray(jax.random.randint(ki, (count,), 0, n, jnp.int32), np.int64)
    j = np.asarray(jax.random.randint(kj, (count,), 0, m, jnp.int32), np.int64)
    return np.unique(i * m + j)


def make_sparse_synthetic(key: jax.Array, cfg: SyntheticConfig, dtype=None, n_val: Optional[int] = None,
                          chunk: int = DEFAULT_CHUNK) -> tuple[CooProblem, Truth]:
    """The question's recipe on a coordinate list, without the dense n × m matrix.

    W = exp(N(0,1)) · 10**linspace(0, −decay, k) (n × k), H likewise (m × k).
    round(observed·n·m) index pairs are drawn uniformly with replacement and
    deduplicated, so |Ω| falls short of observed·n·m by a fraction ≈ observed/2
    (0.5 % at 1 %). ``n_val`` held-out pairs (default |Ω|/10) are drawn the
    same way and those that hit Ω are dropped. V_ij = Σ_k W_ik H_jk (+ noise)
    is computed per entry, chunkwise. A different draw from
    :func:`make_synthetic` (which needs the dense matrix). Host-side (numpy
    dedupe); not jittable.
    """
    from lrfactor import layout

    dtype = dtype or jnp.zeros(()).dtype
    n, m = cfg.n, cfg.m
    kw, kh, ko, kv, kn = jax.random.split(key, 5)
    weight = 10.0 ** jnp.linspace(0.0, -cfg.decay, cfg.true_rank, dtype=dtype)
    W = jnp.exp(jax.random.normal(kw, (n, cfg.true_rank), dtype)) * weight
    H = jnp.exp(jax.random.normal(kh, (m, cfg.true_rank), dtype)) * weight
    lin = _draw_pairs(ko, int(round(cfg.observed * n * m)), n, m)
    n_val = max(1, lin.size // 10) if n_val is None else n_val
    vlin = _draw_pairs(kv, n_val, n, m)
    vlin = vlin[~np.isin(vlin, lin, assume_unique=True)]
    problem = from_coo(lin // m, lin % m, np.zeros(lin.size), vlin // m, vlin % m, np.zeros(vlin.size),
                       (n, m), chunk=chunk, dtype=dtype)
    vals = layout.entry_products(problem, W, H, "train")
    val_vals = layout.entry_products(problem, W, H, "val")
    if cfg.noise > 0:
        kt, kvv = jax.random.split(kn)
        vals = vals + cfg.noise * jax.random.normal(kt, vals.shape, dtype)
        val_vals = val_vals + cfg.noise * jax.random.normal(kvv, val_vals.shape, dtype)
    return problem._replace(vals=vals, val_vals=val_vals), Truth(W=W, H=H)


def masked_mse(pred, V, mask, axis=(-2, -1)):
    """Mean of (pred - V)² over ``mask``; NaN for an empty mask. Safe when pred is inf off-mask.

    ``axis``: the entry axes, (-2, -1) for dense (n, m) arrays, -1 for coordinate lists."""
    err = jnp.where(mask, pred - V, 0.0)
    return jnp.sum(err**2, axis=axis) / jnp.sum(mask, axis=axis)


def reference_scores(problem, truth: Truth, rank: int) -> dict:
    """The question's "theoretical MSE": the true factors truncated to the model rank."""
    from lrfactor import layout

    k = min(rank, truth.W.shape[-1])
    W, H = truth.W[..., :k], truth.H[..., :k]
    return {
        "truth_train_mse": layout.masked_mse(problem, layout.entry_products(problem, W, H, "train"), "train"),
        "truth_val_mse": layout.masked_mse(problem, layout.entry_products(problem, W, H, "val"), "val"),
    }

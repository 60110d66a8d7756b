"""Entry primitives: the few operations every solver needs, on either problem layout.

A solver never touches the masks or coordinate lists itself. It works with
**entry arrays**: one number per observed entry, an (n, m) array (meaningful on
the mask, zero off it) for a dense :class:`~lrfactor.problems.Problem`, an (N,)
array in the order of the coordinate list for a
:class:`~lrfactor.problems.CooProblem`. With F an entry array, X (n, r) and
Y (m, r) factor-like arrays:

==================================  ==========================  =====================================
operation                           dense                       coordinates
==================================  ==========================  =====================================
``entry_products(X, Y)``            X @ Yᵀ                      Σ_k X_ik Y_jk at each (i, j) in the list
``row_sums(F, Y)``   (n, r)         F @ Y                       Σ_{(i,j)} F_ij Y_j scattered onto rows
``col_sums(F, X)``   (m, r)         Fᵀ @ X                      Σ_{(i,j)} F_ij X_i scattered onto columns
``row_gram(F, Y)``   (n, r, r)      Σ_j F_ij Y_j Y_jᵀ           the same by scatter-add
``col_gram(F, X)``   (m, r, r)      Σ_i F_ij X_i X_iᵀ           the same by scatter-add
``entry_quad(M, Y)``                Σ_ab M_iab Y_ja Y_jb        at each listed entry
``masked_mse(pred)``                mean over the mask          mean over the list (padding excluded)
``weights()``                       weight ∘ mask (n, m)        weight of each listed entry (N,)
``weighted_mean(E)``                Σ w·E / Σ w                 the same over the list
``transpose``                       Vᵀ, masks transposed        rows ↔ columns
==================================  ==========================  =====================================

(X and Y may also be vectors, (n,) and (m,): then ``entry_products`` is the
outer product and the sums are matrix-vector products.) ``which`` selects the
training entries (default) or the held-out ones.

**Weights.** A problem may carry a weight per observed entry (each training
entry's loss term multiplied by it; lrfactor/problems.py). :func:`weights` is
the one place that reads them: an entry array, the weights on the entries of
``which`` and 0 elsewhere, or the mask as floats when the problem has none.
Everything that averages over the training entries goes through it: the
training objective is the weighted mean Σ w·loss / Σ w (:func:`weighted_mean`,
:func:`weight_sum`), so scaling every weight by one constant changes nothing,
and an entry of weight 0 counts as not observed. :func:`masked_mse` stays the
plain mean over the mask: the reported MSEs of every run are comparable,
weighted or not. Without weights each of these runs the arithmetic it ran
before weights existed.

The dense forms are plain matmuls and einsums, exactly what the dense solvers
always did, so the dense path runs the same program as before. The
coordinate forms walk the entries in fixed-size chunks (``problem.chunk``)
under ``lax.scan``/``lax.map``: the per-entry (chunk × r) and (chunk × r × r)
temporaries are one reused buffer each, and no (N × r) or (N × r × r) array
ever exists whole. Materialising an (N × r) array in float64 costs 1.3 GB at
N = 10⁷, r = 16, and on a CPU writing fresh memory of that size is slower than
the arithmetic done on it. Padding entries (row n, column m; see
``CooProblem``) are clipped in gathers, dropped by scatter-adds and excluded
by :func:`mask`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lrfactor.problems import CooProblem, Problem

LAYOUTS = ("auto", "dense", "coo")
# ``auto`` picks dense masks up to this many matrix entries n·m (four (n, m)
# arrays per seed: 640 MB in float64 at the limit), coordinate lists above.
DENSE_MAX_ENTRIES = 20_000_000


def resolve_layout(layout: str, n: int, m: int) -> str:
    """``dense`` or ``coo`` for a setting in LAYOUTS and a matrix of n × m."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if layout == "auto":
        return "dense" if n * m <= DENSE_MAX_ENTRIES else "coo"
    return layout


def is_coo(problem) -> bool:
    return isinstance(problem, CooProblem)


def shape(problem) -> tuple[int, int]:
    """(n, m), static."""
    if is_coo(problem):
        return problem.n, problem.m
    return tuple(problem.V.shape[-2:])


def dtype(problem):
    """The float type of the values."""
    return (problem.vals if is_coo(problem) else problem.V).dtype


def transpose(problem):
    """The same problem with rows and columns exchanged (Vᵀ); the weights go with their entries."""
    if is_coo(problem):
        return CooProblem(rows=problem.cols, cols=problem.rows, vals=problem.vals, val_rows=problem.val_cols,
                          val_cols=problem.val_rows, val_vals=problem.val_vals, n=problem.m, m=problem.n,
                          chunk=problem.chunk, shards=problem.shards, weights=problem.weights,
                          val_weights=problem.val_weights)
    t = lambda x: None if x is None else jnp.swapaxes(x, -1, -2)  # noqa: E731
    return Problem(t(problem.V), t(problem.train), t(problem.val), t(problem.weight), t(problem.val_weight))


def transpose_entries(problem, E):
    """An entry array of ``problem`` as an entry array of ``transpose(problem)``."""
    return E if is_coo(problem) else jnp.swapaxes(E, -1, -2)


def _index(problem: CooProblem, which: str):
    if which == "train":
        return problem.rows, problem.cols
    if which == "val":
        return problem.val_rows, problem.val_cols
    raise ValueError(f"which must be 'train' or 'val', got {which!r}")


def mask(problem, which: str = "train"):
    """Boolean entry array: the entries of ``which`` (dense: the mask; coordinates: not padding)."""
    if is_coo(problem):
        return _index(problem, which)[0] < problem.n
    return problem.train if which == "train" else problem.val


def values(problem, which: str = "train"):
    """V as an entry array."""
    if is_coo(problem):
        return problem.vals if which == "train" else problem.val_vals
    return problem.V


def _axes(problem):
    return -1 if is_coo(problem) else (-2, -1)


def count(problem, which: str = "train"):
    """Number of entries of ``which`` (int)."""
    return jnp.sum(mask(problem, which), axis=_axes(problem))


def masked_mse(problem, pred, which: str = "train"):
    """Mean of (pred − V)² over the entries of ``which``; ``pred`` an entry array."""
    from lrfactor.problems import masked_mse as mse

    return mse(pred, values(problem, which), mask(problem, which), _axes(problem))


def _weight_field(problem, which: str):
    if which not in ("train", "val"):
        raise ValueError(f"which must be 'train' or 'val', got {which!r}")
    if is_coo(problem):
        return problem.weights if which == "train" else problem.val_weights
    return problem.weight if which == "train" else problem.val_weight


def has_weights(problem, which: str = "train") -> bool:
    """Whether the problem carries weights for the entries of ``which`` (static: a pytree's structure)."""
    return _weight_field(problem, which) is not None


def weights(problem, which: str = "train"):
    """The weights of the entries of ``which`` as an entry array (0 elsewhere, padding
    included); the mask as floats when the problem has none."""
    M = mask(problem, which)
    w = _weight_field(problem, which)
    if w is None:
        return M.astype(dtype(problem))
    return jnp.where(M, w, 0.0).astype(dtype(problem))


def weight_sum(problem, which: str = "train"):
    """Σ w over the entries of ``which``: the number of entries (as a float) without weights."""
    if not has_weights(problem, which):
        return count(problem, which).astype(dtype(problem))
    return jnp.sum(weights(problem, which), axis=_axes(problem))


def weighted_mean(problem, E, which: str = "train"):
    """Σ w·E / Σ w over the entries of ``which`` (w: :func:`weights`); the plain mean without weights.

    Entries of weight 0 are left out by ``where``, not multiplied by 0, so a
    non-finite E there cannot leak in."""
    ax = _axes(problem)
    if not has_weights(problem, which):
        M = mask(problem, which)
        return jnp.sum(jnp.where(M, E, 0.0), axis=ax) / jnp.sum(M, axis=ax)
    w = weights(problem, which)
    return jnp.sum(jnp.where(w > 0, w * E, 0.0), axis=ax) / jnp.sum(w, axis=ax)


def weighted_mse(problem, pred, which: str = "train"):
    """Σ w·(pred − V)² / Σ w over the entries of ``which``: :func:`masked_mse` without weights."""
    if not has_weights(problem, which):
        return masked_mse(problem, pred, which)
    err = jnp.where(mask(problem, which), pred - values(problem, which), 0.0)  # finite off the mask, gradient too
    return weighted_mean(problem, err**2, which)


# ----------------------------------------------------------------------------- chunked sweeps
#
# An entry array of N entries is walked as D = problem.shards contiguous blocks
# of N / D entries (problems.pad_entries makes N a multiple of D), each cut into K
# chunks of C entries (the last padded): a (K, D, C) array scanned over K. Each
# block sums into its own accumulator and the D accumulators are added at the
# end. On one shard this is the plain sequential sweep; with the entry axis
# sharded over D devices the block axis is the device axis, so each device
# sweeps its own entries and only the final (n, r)-sized sums cross devices.


def _blocking(problem: CooProblem, N: int):
    """(D, K, C) for N entries."""
    D = problem.shards
    if N % D:
        raise ValueError(f"{N} entries do not split into {D} shards; pad them with problems.pad_entries")
    L = N // D
    C = max(1, min(problem.chunk, L))
    return D, max(1, -(-L // C)), C


def _blocks(E, D: int, K: int, C: int, fill=0):
    """An entry array (N,) as (K, D, C): chunk k of every block side by side."""
    L = E.shape[-1] // D
    E = jnp.pad(E.reshape(D, L), ((0, 0), (0, K * C - L)), constant_values=fill)
    return E.reshape(D, K, C).transpose(1, 0, 2)


def _unblock(E, N: int):
    """The inverse of :func:`_blocks`: (K, D, C) back to the entry array (N,)."""
    K, D, C = E.shape
    return E.transpose(1, 0, 2).reshape(D, K * C)[:, : N // D].reshape(N)


def _chunks(problem: CooProblem, which: str):
    """Row and column indices as (K, D, C) blocks (padding rows n, columns m), and N."""
    rows, cols = _index(problem, which)
    N = rows.shape[-1]
    D, K, C = _blocking(problem, N)
    return _blocks(rows, D, K, C, problem.n), _blocks(cols, D, K, C, problem.m), N


def _gather(X, idx):
    """Rows X[idx]; out-of-range (padding) indices clipped to a real row."""
    return jnp.take(X, idx, axis=0, mode="clip")


def _scatter(acc, idx, upd):
    """acc[idx] += upd, padding indices dropped: the chunk form of ``segment_sum``."""
    return acc.at[idx].add(upd, mode="drop")


def _dot(a, b, vector: bool):
    """Σ_k a_k b_k per entry for gathered factor rows; the plain product for gathered vector entries."""
    return a * b if vector else jnp.sum(a * b, axis=-1)


def entry_products(problem, X, Y, which: str = "train"):
    """Σ_k X_ik Y_jk at the entries of ``which``: dense X @ Yᵀ (n, m), coordinates (N,).

    For vectors X (n,), Y (m,): X_i Y_j (the outer product, densely)."""
    if not is_coo(problem):
        if X.ndim == 1:
            return X[:, None] * Y[None, :]
        return X @ jnp.swapaxes(Y, -1, -2)
    rows, cols, N = _chunks(problem, which)

    # Rematerialised under differentiation: a reverse pass then keeps the
    # chunks' indices, not every chunk's (C, r) gathers (N × r in all).
    @jax.checkpoint
    def one(rc):
        return _dot(_gather(X, rc[0]), _gather(Y, rc[1]), X.ndim == 1)

    return _unblock(jax.lax.map(one, (rows, cols)), N)


def _sweep(problem, F, Z, by_rows: bool, make, width_shape, which: str = "train"):
    """Σ over entries of make(F_e, Z_other(e)) scattered onto rows (or columns), chunkwise."""
    rows, cols, N = _chunks(problem, which)
    K, D, C = rows.shape
    Fc = _blocks(F, D, K, C)
    n_out = problem.n if by_rows else problem.m

    def body(acc, xs):
        r, c, f = xs
        tgt, src = (r, c) if by_rows else (c, r)
        return jax.vmap(_scatter)(acc, tgt, make(f, _gather(Z, src))), None

    acc, _ = jax.lax.scan(body, jnp.zeros((D, n_out) + width_shape, F.dtype), (rows, cols, Fc))
    return jnp.sum(acc, axis=0)


def _times(f, z):
    return f * z if z.ndim == f.ndim else f[..., None] * z


def _outer(f, z):
    return f[..., None, None] * z[..., :, None] * z[..., None, :]


def row_sums(problem, F, Y):
    """Σ_j F_ij Y_j over the training entries of each row: (n, r), or (n,) for Y (m,)."""
    if not is_coo(problem):
        return F @ Y
    return _sweep(problem, F, Y, True, _times, Y.shape[1:])


def col_sums(problem, F, X):
    """Σ_i F_ij X_i over the training entries of each column: (m, r), or (m,) for X (n,)."""
    if not is_coo(problem):
        return jnp.swapaxes(F, -1, -2) @ X
    return _sweep(problem, F, X, False, _times, X.shape[1:])


def row_gram(problem, F, Y):
    """Σ_j F_ij Y_j Y_jᵀ over the training entries of each row, (n, r, r)."""
    if not is_coo(problem):
        return jnp.einsum("ij,ja,jb->iab", F, Y, Y)
    r = Y.shape[-1]
    return _sweep(problem, F, Y, True, _outer, (r, r))


def col_gram(problem, F, X):
    """Σ_i F_ij X_i X_iᵀ over the training entries of each column, (m, r, r)."""
    if not is_coo(problem):
        return jnp.einsum("ij,ia,ib->jab", F, X, X)
    r = X.shape[-1]
    return _sweep(problem, F, X, False, _outer, (r, r))


def entry_quad(problem, M, Y):
    """Σ_ab M_iab Y_ja Y_jb at the training entries, for per-row matrices M (n, r, r)."""
    if not is_coo(problem):
        return jnp.einsum("iab,ja,jb->ij", M, Y, Y)
    rows, cols, N = _chunks(problem, "train")

    def one(rc):
        y = _gather(Y, rc[1])
        return jnp.einsum("...a,...ab,...b->...", y, _gather(M, rc[0]), y)

    return _unblock(jax.lax.map(one, (rows, cols)), N)


def entry_coords(problem, idx):
    """(rows, cols, values, weights) of the training entries at flat positions ``idx`` of an entry array
    (weights: :func:`weights`)."""
    w = weights(problem).reshape(-1)[idx]
    if is_coo(problem):
        return problem.rows[idx], problem.cols[idx], problem.vals[idx], w
    m = problem.V.shape[-1]
    return idx // m, idx % m, problem.V.reshape(-1)[idx], w


def predictions(problem, params, which: str = "train"):
    """exp(A) exp(B)ᵀ at the entries of ``which`` (an entry array)."""
    return entry_products(problem, jnp.exp(params.A), jnp.exp(params.B), which)


def entry_uniform(problem, key, dtype, which: str = "train"):
    """U(0, 1) draws, one per entry of ``which``, equal to
    ``jax.random.uniform(key, (n·m,), dtype)`` at the entries' row-major
    positions i·m + j, without drawing the other n·m − N.

    Dense: that draw itself, shaped (n, m). Coordinates: JAX's partitionable
    threefry (``jax_threefry_partitionable``, on by default) makes the bits of
    flat position k a function of (key, k) alone, so they are computed for the
    listed positions only; a minibatch order drawn from them is the same on
    both layouts. Tested bit for bit against the dense draw.
    """
    n, m = shape(problem)
    if not is_coo(problem):
        return jax.random.uniform(key, (n * m,), dtype).reshape(n, m)
    if not jax.config.jax_threefry_partitionable:
        raise ValueError("entry_uniform on coordinate lists needs jax_threefry_partitionable")
    rows, cols = _index(problem, which)
    ut = jnp.uint64 if jax.config.jax_enable_x64 else jnp.uint32
    if n * m >= 2**32 and ut == jnp.uint32:
        raise ValueError("entry_uniform beyond 2**32 matrix entries needs jax_enable_x64")
    flat = jnp.minimum(rows, n - 1).astype(ut) * ut(m) + jnp.minimum(cols, m - 1).astype(ut)
    return _uniform_at(key, flat, n * m, dtype)


def _uniform_at(key, flat, total: int, dtype):
    """jax.random.uniform(key, (total,), dtype)[flat] from the partitionable threefry bits."""
    from jax.extend.random import threefry2x32_p

    k = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    k1, k2 = k[..., 0], k[..., 1]
    if flat.dtype == jnp.uint64:
        hi = (flat >> jnp.uint64(32)).astype(jnp.uint32)
        lo = (flat & jnp.uint64(0xFFFFFFFF)).astype(jnp.uint32)
    else:
        hi, lo = jnp.zeros(flat.shape, jnp.uint32), flat
    b1, b2 = threefry2x32_p.bind(k1, k2, hi, lo)
    finfo = jnp.finfo(dtype)
    nbits = finfo.bits
    if nbits == 64:
        bits = (b1.astype(jnp.uint64) << jnp.uint64(32)) | b2.astype(jnp.uint64)
        uint = jnp.uint64
    elif nbits == 32:
        bits, uint = b1 ^ b2, jnp.uint32
    else:
        raise ValueError(f"entry_uniform supports float32 and float64, got {dtype}")
    nmant = finfo.nmant
    one = jnp.asarray(1.0, dtype).view(uint)
    floats = jax.lax.bitcast_convert_type((bits >> uint(nbits - nmant)) | one, dtype) - jnp.asarray(1.0, dtype)
    return jnp.maximum(jnp.asarray(0.0, dtype), floats)

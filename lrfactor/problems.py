"""Problems: a partially observed non-negative matrix, its masks and its truth.

The synthetic recipe is the question's (``shared/seed``)::

    weight = 10**linspace(0, -decay, true_rank)
    W = exp(randn(n, true_rank)) * weight;  H = exp(randn(m, true_rank)) * weight
    V = W Hᵀ (+ optional Gaussian noise);  train = uniform(n, m) < observed;  val = ~train

written as a pure function of a PRNG key so that the data for many seeds is
drawn inside one vmapped program.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class Problem(NamedTuple):
    """A matrix seen on two disjoint masks. Arrays may carry a leading seed axis."""

    V: jax.Array  # (n, m) float: values; 0 wherever neither mask is set
    train: jax.Array  # (n, m) bool: entries fitted
    val: jax.Array  # (n, m) bool: held-out entries, scored and never fitted


class Truth(NamedTuple):
    """Generating factors, when known (synthetic data or W_true/H_true in a file)."""

    W: jax.Array  # (n, k) non-negative
    H: jax.Array  # (m, k) non-negative


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The question's generator; the defaults reproduce ``shared/seed``."""

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
    """Validate a problem on the host (numpy arrays, no seed axis). Raises ProblemError."""
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
    if np.any(V[seen] < 0):
        raise ProblemError(f"{name}: V has {int(np.sum(V[seen] < 0))} negative observed entries; NMF needs V >= 0")
    rows, cols = train.sum(axis=1), train.sum(axis=0)
    if (rows == 0).any():
        raise ProblemError(f"{name}: training mask has {int((rows == 0).sum())} empty rows (first: row {int(np.argmax(rows == 0))})")
    if (cols == 0).any():
        raise ProblemError(f"{name}: training mask has {int((cols == 0).sum())} empty columns (first: column {int(np.argmax(cols == 0))})")
    if rank < 1 or rank > min(V.shape):
        raise ProblemError(f"{name}: rank {rank} must be between 1 and min(n, m) = {min(V.shape)}")


def load_npz(path: str, rank: int) -> tuple[Problem, Optional[Truth]]:
    """Load and validate ``--data FILE.npz`` (keys in CONTRACT.md). Raises ProblemError."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise ProblemError(f"{path}: no such file") from None
    except Exception as e:  # zip/format errors: name the file, not the traceback
        raise ProblemError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    for key in ("V", "train_mask"):
        if key not in data:
            raise ProblemError(f"{path}: missing key '{key}' (found {sorted(data)})")
    V, train = data["V"], data["train_mask"]
    val = data.get("val_mask")
    check_problem(V, train, val, rank, name=path)
    seen = train | val if val is not None else train
    V = np.where(seen, V, 0.0).astype(np.float64)
    if val is None:
        val = np.zeros_like(train)
    truth = None
    if "W_true" in data or "H_true" in data:
        if "W_true" not in data or "H_true" not in data:
            raise ProblemError(f"{path}: W_true and H_true must be given together")
        Wt, Ht = np.asarray(data["W_true"], float), np.asarray(data["H_true"], float)
        if Wt.ndim != 2 or Ht.ndim != 2 or Wt.shape[0] != V.shape[0] or Ht.shape[0] != V.shape[1] or Wt.shape[1] != Ht.shape[1]:
            raise ProblemError(f"{path}: W_true {Wt.shape} and H_true {Ht.shape} do not fit V {V.shape}")
        truth = Truth(W=Wt, H=Ht)
    return Problem(V=V, train=train, val=val), truth


def masked_mse(pred, V, mask):
    """Mean of (pred - V)² over ``mask``; NaN for an empty mask. Safe when pred is inf off-mask."""
    err = jnp.where(mask, pred - V, 0.0)
    return jnp.sum(err**2, axis=(-2, -1)) / jnp.sum(mask, axis=(-2, -1))


def reference_scores(problem: Problem, truth: Truth, rank: int) -> dict:
    """The question's "theoretical MSE": the true factors truncated to the model rank."""
    k = min(rank, truth.W.shape[-1])
    pred = truth.W[..., :k] @ jnp.swapaxes(truth.H[..., :k], -1, -2)
    return {
        "truth_train_mse": masked_mse(pred, problem.V, problem.train),
        "truth_val_mse": masked_mse(pred, problem.V, problem.val),
    }

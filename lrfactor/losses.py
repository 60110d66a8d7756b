"""Pure losses of (params, problem), on either layout. Data always comes in as an argument.

Three data losses, each the negative log-likelihood of a noise model (up to
constants), so that the right one for the data is a maximum-likelihood fit:

- ``frobenius``: mean (P − V)², additive Gaussian noise.
- ``kl``: mean generalized Kullback–Leibler divergence V log(V/P) − V + P,
  Poisson counts (needs V ≥ 0).
- ``log``: mean (log P − log V)², multiplicative log-normal noise
  V = P·exp(σz) (needs V > 0). This is the exact log-likelihood of that noise
  model, and a plain sum of squares in the residual log P − log V, so its
  Gauss-Newton matrix is the exact one of a least-squares problem (weight
  1/P² on u_ij uᵢⱼᵀ, lrfactor/solvers/blocks.py). The Gamma / Itakura–Saito
  deviance (V/P − log(V/P) − 1) is the other classical choice for
  multiplicative noise; it is the log loss to second order in log(V/P), but
  its Gauss-Newton form is only Fisher scoring, and it is the likelihood of
  Gamma, not log-normal, noise. Zeros have no log: data with zeros are
  refused for this loss (use kl for counts).

Each mean is over the training entries; when the problem carries per-entry
weights it is the weighted mean Σ w·loss / Σ w (lrfactor/layout.py).

Two penalties: ``l2``·(ΣA² + ΣB²) on the log-factors (the question's Keras
regulariser), and ``reg``·(ΣW² + ΣH²) on the factors themselves, which
shrinks weak components towards 0 (where the log-space L2 pulls them
towards 1).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lrfactor import layout
from lrfactor.factors import Factors

LOSSES = ("frobenius", "kl", "log")
# What the observed values must be. The model W Hᵀ is non-negative, but that
# alone asks nothing of V: frobenius has a least-squares fit to any real V
# (a negative entry is fitted by a prediction near 0), and HALS and adam/sgd
# minimise it with negative entries as with any others. kl needs V >= 0 (V log P
# is the Poisson likelihood of counts) and log needs V > 0 (log V); the mu
# solver's multiplicative updates need V >= 0 whatever the loss (a negative
# numerator would flip the sign of a factor).
POSITIVE = ("log",)  # V > 0
NONNEGATIVE = ("kl",)  # V >= 0
NONNEGATIVE_SOLVERS = ("mu",)  # V >= 0 for every loss they minimise


def value_requirement(loss: str, solver: Optional[str] = None) -> Optional[str]:
    """What fitting ``loss`` with ``solver`` needs of the observed values, as one clause, or None (any real value).

    e.g. "the log loss needs V > 0 (log V)"; the loss's need comes first.
    """
    if loss in POSITIVE:
        return f"the {loss} loss needs V > 0 (log V)"
    if loss in NONNEGATIVE:
        return f"the {loss} loss needs V >= 0 (V log P)"
    if solver in NONNEGATIVE_SOLVERS:
        return f"the {solver} solver needs V >= 0 (multiplicative updates)"
    return None


def bad_values(vals, loss: str, solver: Optional[str] = None):
    """Boolean array: the values that ``loss`` fitted by ``solver`` cannot take (:func:`value_requirement`)."""
    vals = np.asarray(vals)
    if loss in POSITIVE:
        return vals <= 0
    if loss in NONNEGATIVE or solver in NONNEGATIVE_SOLVERS:
        return vals < 0
    return np.zeros(vals.shape, bool)


def residuals(p: Factors, problem) -> jax.Array:
    """r = W Hᵀ − V on the training entries, 0 elsewhere (an entry array)."""
    return jnp.where(layout.mask(problem), layout.predictions(problem, p) - layout.values(problem), 0.0)


def train_mse(p: Factors, problem) -> jax.Array:
    return layout.masked_mse(problem, layout.predictions(problem, p, "train"), "train")


def val_mse(p: Factors, problem) -> jax.Array:
    return layout.masked_mse(problem, layout.predictions(problem, p, "val"), "val")


def entry_loss(pred, V, loss: str):
    """The per-entry loss of predictions ``pred`` against values ``V`` (arrays of one shape).

    frobenius (P − V)²; kl V log(V/P) − V + P with 0·log 0 = 0; log (log P − log V)².
    Callers mask it: off the observed entries it may be anything, NaN included.
    """
    if loss == "frobenius":
        return (pred - V) ** 2
    if loss == "kl":
        safe_v = jnp.where(V > 0, V, 1.0)
        return jnp.where(V > 0, V * (jnp.log(safe_v) - jnp.log(pred)), 0.0) - V + pred
    if loss == "log":
        return (jnp.log(pred) - jnp.log(V)) ** 2
    raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")


def kl_divergence(pred: jax.Array, problem) -> jax.Array:
    """Mean generalized KL (half the Poisson deviance) over the training entries:
    mean_Ω [V log(V/μ) − V + μ], with 0·log 0 = 0. ``pred`` is an entry array."""
    return data_loss(pred, problem, "kl")


def l2_penalty(p: Factors) -> jax.Array:
    """ΣA² + ΣB²: Keras' l2 embedding regularizer on both whole tables."""
    return jnp.sum(p.A**2) + jnp.sum(p.B**2)


def factor_penalty(p: Factors) -> jax.Array:
    """ΣW² + ΣH² = Σ exp(2A) + Σ exp(2B): the squared norms of the factors themselves."""
    return jnp.sum(jnp.exp(2 * p.A)) + jnp.sum(jnp.exp(2 * p.B))


def data_loss(pred: jax.Array, problem, loss: str = "frobenius", which: str = "train") -> jax.Array:
    """Mean loss over the entries of ``which`` of the prediction entry array ``pred``:
    the weighted mean Σ w·loss / Σ w when the problem carries weights (lrfactor/layout.py)."""
    if loss == "frobenius":
        return layout.weighted_mse(problem, pred, which)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    M, V = layout.mask(problem, which), layout.values(problem, which)
    # Off the mask: harmless stand-ins (log of 0 would poison the gradient through where).
    term = entry_loss(jnp.where(M, pred, 1.0), jnp.where(M, V, 1.0), loss)
    return layout.weighted_mean(problem, term, which)


def objective_penalty(p: Factors, l2: float = 0.0, reg: float = 0.0) -> jax.Array:
    """l2·(ΣA² + ΣB²) + reg·(ΣW² + ΣH²); the second term only when reg is nonzero (a traced
    reg: selected by value), so that runs without it compute exactly what they computed
    before it existed."""
    pen = l2 * l2_penalty(p)
    if isinstance(reg, (int, float)):
        return pen + reg * factor_penalty(p) if reg else pen
    return jnp.where(reg > 0, pen + reg * factor_penalty(p), pen)


def objective(p: Factors, problem, loss: str = "frobenius", l2: float = 0.0, reg: float = 0.0) -> jax.Array:
    """The training objective: mean loss over the training entries (weighted, Σ w·loss / Σ w, when the
    problem carries weights) + l2·(ΣA² + ΣB²) + reg·(ΣW² + ΣH²)."""
    return data_loss(layout.predictions(problem, p), problem, loss) + objective_penalty(p, l2, reg)

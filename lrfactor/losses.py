"""Pure losses of (params, problem), on either layout. Data always comes in as an argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lrfactor import layout
from lrfactor.factors import Factors

LOSSES = ("frobenius", "kl")


def residuals(p: Factors, problem) -> jax.Array:
    """r = W Hᵀ − V on the training entries, 0 elsewhere (an entry array)."""
    return jnp.where(layout.mask(problem), layout.predictions(problem, p) - layout.values(problem), 0.0)


def train_mse(p: Factors, problem) -> jax.Array:
    return layout.masked_mse(problem, layout.predictions(problem, p, "train"), "train")


def val_mse(p: Factors, problem) -> jax.Array:
    return layout.masked_mse(problem, layout.predictions(problem, p, "val"), "val")


def kl_divergence(pred: jax.Array, problem) -> jax.Array:
    """Mean generalized KL (half the Poisson deviance) over the training entries:
    mean_Ω [V log(V/μ) − V + μ], with 0·log 0 = 0. ``pred`` is an entry array."""
    V, M = layout.values(problem), layout.mask(problem)
    safe_v = jnp.where(V > 0, V, 1.0)
    mu = jnp.where(M, pred, 1.0)
    term = jnp.where(V > 0, V * (jnp.log(safe_v) - jnp.log(mu)), 0.0) - V + mu
    ax = -1 if layout.is_coo(problem) else (-2, -1)
    return jnp.sum(jnp.where(M, term, 0.0), axis=ax) / jnp.sum(M, axis=ax)


def l2_penalty(p: Factors) -> jax.Array:
    """ΣA² + ΣB²: Keras' l2 embedding regularizer on both whole tables."""
    return jnp.sum(p.A**2) + jnp.sum(p.B**2)


def data_loss(pred: jax.Array, problem, loss: str = "frobenius") -> jax.Array:
    """Mean loss over the training entries of the prediction entry array ``pred``."""
    if loss == "frobenius":
        return layout.masked_mse(problem, pred)
    if loss == "kl":
        return kl_divergence(pred, problem)
    raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")


def objective(p: Factors, problem, loss: str = "frobenius", l2: float = 0.0) -> jax.Array:
    """The training objective: mean loss over the training entries + l2·(ΣA² + ΣB²)."""
    return data_loss(layout.predictions(problem, p), problem, loss) + l2 * l2_penalty(p)

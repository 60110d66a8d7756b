"""Pure losses of (params, problem). Data always comes in as an argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lrfactor.factors import Factors, predict
from lrfactor.problems import Problem, masked_mse

LOSSES = ("frobenius", "kl")


def residuals(p: Factors, problem: Problem) -> jax.Array:
    """r_ij = (W Hᵀ − V)_ij on the training mask, 0 elsewhere; shape (n, m)."""
    return jnp.where(problem.train, predict(p) - problem.V, 0.0)


def train_mse(p: Factors, problem: Problem) -> jax.Array:
    return masked_mse(predict(p), problem.V, problem.train)


def val_mse(p: Factors, problem: Problem) -> jax.Array:
    return masked_mse(predict(p), problem.V, problem.val)


def kl_divergence(pred: jax.Array, problem: Problem) -> jax.Array:
    """Mean generalized KL (half the Poisson deviance) over the training mask:
    mean_Ω [V log(V/μ) − V + μ], with 0·log 0 = 0."""
    V = problem.V
    safe_v = jnp.where(V > 0, V, 1.0)
    mu = jnp.where(problem.train, pred, 1.0)
    term = jnp.where(V > 0, V * (jnp.log(safe_v) - jnp.log(mu)), 0.0) - V + mu
    return jnp.sum(jnp.where(problem.train, term, 0.0), axis=(-2, -1)) / jnp.sum(problem.train, axis=(-2, -1))


def l2_penalty(p: Factors) -> jax.Array:
    """ΣA² + ΣB²: Keras' l2 embedding regularizer on both whole tables."""
    return jnp.sum(p.A**2) + jnp.sum(p.B**2)


def objective(p: Factors, problem: Problem, loss: str = "frobenius", l2: float = 0.0) -> jax.Array:
    """The training objective: mean loss over the training entries + l2·(ΣA² + ΣB²)."""
    pred = predict(p)
    if loss == "frobenius":
        data = masked_mse(pred, problem.V, problem.train)
    elif loss == "kl":
        data = kl_divergence(pred, problem)
    else:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    return data + l2 * l2_penalty(p)

"""Log-space parameterization W = exp(A), H = exp(B) and initializations."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lrfactor import layout


class Factors(NamedTuple):
    """Log-factors. Arrays may carry a leading seed axis."""

    A: jax.Array  # (n, r) log W
    B: jax.Array  # (m, r) log H


def nonneg(p: Factors) -> tuple[jax.Array, jax.Array]:
    """The non-negative factors (W, H) = (exp A, exp B)."""
    return jnp.exp(p.A), jnp.exp(p.B)


def predict(p: Factors) -> jax.Array:
    """Dense prediction W Hᵀ, shape (n, m) (small problems; see lrfactor.layout.predictions)."""
    W, H = nonneg(p)
    return W @ jnp.swapaxes(H, -1, -2)


def from_nonneg(W, H, floor: float = 1e-30) -> Factors:
    """Log-factors of non-negative factors; entries are floored so the logs stay finite."""
    return Factors(jnp.log(jnp.maximum(W, floor)), jnp.log(jnp.maximum(H, floor)))


INITS = ("keras", "scaled")


def init_factors(key: jax.Array, problem, rank: int, scheme: str = "keras") -> Factors:
    """Initial log-factors for one problem (no seed axis), on either layout (the same draws).

    - ``keras``: A, B ~ U(-0.05, 0.05), Keras' default embedding init, as in the
      question. All components start almost equal: a saddle of the permutation
      symmetry (docs/design.md).
    - ``scaled``: A, B ~ N(c, 1) with c chosen so that the mean prediction
      r·exp(2c + 1) matches the mean observed value (weighted, with per-entry
      weights: the objective's mean). Breaks the symmetry and
      starts at the data's scale.
    """
    n, m = layout.shape(problem)
    dtype = layout.dtype(problem)
    ka, kb = jax.random.split(key)
    if scheme == "keras":
        A = jax.random.uniform(ka, (n, rank), dtype, -0.05, 0.05)
        B = jax.random.uniform(kb, (m, rank), dtype, -0.05, 0.05)
    elif scheme == "scaled":
        mean = layout.weighted_mean(problem, layout.values(problem))
        c = 0.5 * (jnp.log(jnp.maximum(mean, 1e-12) / rank) - 1.0)
        A = c + jax.random.normal(ka, (n, rank), dtype)
        B = c + jax.random.normal(kb, (m, rank), dtype)
    else:
        raise ValueError(f"unknown init {scheme!r}; known: {', '.join(INITS)}")
    return Factors(A, B)

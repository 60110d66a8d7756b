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


INITS = ("keras", "scaled", "hals")
HALS_SWEEPS = 20  # masked HALS sweeps behind the ``hals`` start
HALS_LIFT = 1e-2  # ``hals``: each entry lifted to at least this fraction of its column's mean


def init_factors(key: jax.Array, problem, rank: int, scheme: str = "keras") -> Factors:
    """Initial log-factors for one problem (no seed axis), on either layout (the same draws).

    - ``keras``: A, B ~ U(-0.05, 0.05), Keras' default embedding init, as in the
      question. All components start almost equal: a saddle of the permutation
      symmetry (docs/design.md).
    - ``scaled``: A, B ~ N(c, 1) with c chosen so that the mean prediction
      r·exp(2c + 1) matches the mean observed value (weighted, with per-entry
      weights: the objective's mean). Breaks the symmetry and
      starts at the data's scale.
    - ``hals``: the ``scaled`` draw, then ``HALS_SWEEPS`` sweeps of masked HALS
      on the training entries (lrfactor/solvers/nmf.py; plain MSE, no
      penalty), each factor entry then lifted to at least ``HALS_LIFT`` × its
      column's mean. HALS resolves the leading components in a few cheap
      sweeps, where the log-space solvers start from a random mixture; the
      lift matters because HALS leaves entries at its floor ε, and in log
      space an entry near 0 has no gradient to come back (∂F/∂A = W ∘ ∂F/∂W).
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
    elif scheme == "hals":
        from lrfactor.solvers.nmf import make_hals  # lazily: nmf builds on this module

        hals = make_hals(rank=rank)  # its own init_params is not used: the start is given
        state = hals.init(init_factors(key, problem, rank, "scaled"), problem, key)
        state = jax.lax.fori_loop(0, HALS_SWEEPS, lambda _, s: hals.step(s, problem), state)
        W = jnp.maximum(state.W, HALS_LIFT * jnp.mean(state.W, axis=0))
        H = jnp.maximum(state.H, HALS_LIFT * jnp.mean(state.H, axis=0))
        return from_nonneg(W, H)
    else:
        raise ValueError(f"unknown init {scheme!r}; known: {', '.join(INITS)}")
    return Factors(A, B)

"""Small problems shared by the tests."""

import dataclasses

import jax
import jax.numpy as jnp

from lrfactor.config import RunConfig, resolve
from lrfactor.problems import Problem, SyntheticConfig, make_synthetic


def small_problem(seed=0, n=13, m=7, true_rank=3, observed=0.6, noise=0.0):
    cfg = SyntheticConfig(n=n, m=m, true_rank=true_rank, observed=observed, noise=noise)
    problem, truth = make_synthetic(jax.random.PRNGKey(seed), cfg, jnp.float64)
    return problem, truth


def full_problem(V):
    V = jnp.asarray(V)
    ones = jnp.ones(V.shape, bool)
    return Problem(V=V, train=ones, val=~ones)


def to_float32(tree):
    """The float leaves of a problem (or any pytree) cast to float32."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


# The layout settings, for a run configuration of a RunConfig that does not carry them yet.
@dataclasses.dataclass(frozen=True)
class LayoutConfig(RunConfig):
    layout: str = "auto"  # auto | dense | coo
    linear_solver: str = "auto"  # auto | dense_schur | schur_pcg
    cg_iters: int = 100  # PCG iteration cap
    cg_tol: float = 1e-2  # PCG relative residual


def layout_config(**kw):
    """A resolved run configuration with the layout settings."""
    return resolve(LayoutConfig(**kw))

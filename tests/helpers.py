"""Small problems shared by the tests."""

import contextlib

import jax
import jax.numpy as jnp
import pytest

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


def layout_config(**kw):
    """A resolved run configuration."""
    return resolve(RunConfig(**kw))


@contextlib.contextmanager
def interrupted_after_checkpoints(monkeypatch, k: int = 2):
    """Inside, a run is interrupted (KeyboardInterrupt, as by Ctrl-C) right after its k-th checkpoint was saved."""
    from lrfactor import experiment

    real = experiment._checkpoint
    calls = []

    def dying(*a, **kw):
        real(*a, **kw)
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "_checkpoint", dying)
    try:
        yield
    finally:
        monkeypatch.setattr(experiment, "_checkpoint", real)


@contextlib.contextmanager
def killed_after_checkpoints(monkeypatch, k: int = 2):
    """The run inside is killed (KeyboardInterrupt) right after its k-th checkpoint was saved."""
    with interrupted_after_checkpoints(monkeypatch, k), pytest.raises(KeyboardInterrupt):
        yield

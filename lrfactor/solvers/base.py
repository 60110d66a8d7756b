"""The solver interface every method implements, optax style.

A solver is a bundle of pure functions. Its state is a NamedTuple with at least
``params`` (the current parameters, for factor methods the log-factors
``Factors(A, B)``) and ``done`` (a bool scalar: converged or stopped early; the
driver freezes a done seed). One driver (lrfactor/driver.py) runs every solver as
``jit(vmap(scan(step)))`` over seeds. A problem is either layout of
lrfactor/problems.py; solvers see it through lrfactor/layout.py.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax

Params = Any
State = Any


class Solver(NamedTuple):
    """Pure functions of one seed; the driver vmaps them."""

    name: str
    init_params: Callable[[jax.Array, Any], Params]  # (key, problem) -> params: the blind start
    init: Callable[[Params, Any, jax.Array], State]  # (params, problem, key) -> state
    step: Callable[[State, Any], State]  # one solver step (an epoch, a sweep, an iteration)
    # (params, problem, which="train"|"val") -> prediction of V as an entry array
    # (lrfactor/layout.py): dense (n, m), or (N,) at the listed entries of ``which``.
    predict: Callable[..., jax.Array]
    objective: Callable[[Params, Any], jax.Array]  # the training objective it minimises
    # Extra per-step scalars recorded into history.npz (name -> fn(state) -> scalar).
    extras: tuple = ()
    # Settings the state carries as values rather than factory constants, so that
    # one compiled batch may give each element its own (cross-validation over
    # l2). ``init_traced(params, problem, key, {name: value})`` is ``init`` with
    # those values; ``objective`` keeps the factory's.
    traced: tuple = ()
    init_traced: Optional[Callable[..., State]] = None

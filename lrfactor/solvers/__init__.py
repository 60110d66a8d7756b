"""Solver registry: ``make_solver(cfg, info)`` builds any solver by name.

``info`` holds host-side facts about the problem batch that fix static shapes
(``n_train_max``: the largest training-set size over the seeds; ``layout``:
``dense`` or ``coo`` when known).
"""

from __future__ import annotations

from lrfactor.layout import LAYOUTS
from lrfactor.solvers.base import Solver
from lrfactor.solvers.gauss_newton import DAMPINGS, SCHUR_PRECISIONS
from lrfactor.solvers.linear import LINEAR_SOLVERS


def _gauss_newton(cfg, info):
    from lrfactor.solvers.gauss_newton import make_gauss_newton

    return make_gauss_newton(
        loss=cfg.loss, l2=cfg.l2, reg=cfg.reg, rank=cfg.rank, init=cfg.init,
        damping=cfg.damping, lambda0=cfg.lambda0, ftol=cfg.ftol, gtol=cfg.gtol, xtol=cfg.xtol,
        linear_solver=cfg.linear_solver, cg_iters=cfg.cg_iters, cg_tol=cfg.cg_tol,
        schur_precision=cfg.schur_precision, max_step=cfg.max_step, backtrack=cfg.backtrack, refine=cfg.refine,
        restarts=cfg.restarts,
    )


def _first_order(cfg, info):
    from lrfactor.solvers.first_order import make_first_order

    return make_first_order(cfg, info["n_train_max"])


def _hals(cfg, info):
    from lrfactor.solvers.nmf import make_hals

    return make_hals(rank=cfg.rank, loss=cfg.loss, init=cfg.init, eps=cfg.eps, ftol=cfg.ftol, l2=cfg.l2, reg=cfg.reg)


def _mu(cfg, info):
    from lrfactor.solvers.nmf import make_mu

    return make_mu(rank=cfg.rank, loss=cfg.loss, init=cfg.init, eps=cfg.eps, ftol=cfg.ftol, l2=cfg.l2, reg=cfg.reg)


def _mlp(cfg, info):
    from lrfactor.solvers.mlp import make_mlp

    if info.get("layout", cfg.layout) == "coo":
        raise ValueError("the mlp solver predicts the whole n x m matrix: it needs the dense layout (layout dense)")

    return make_mlp(cfg, info["n_train_max"])


SOLVERS = {
    "gauss_newton": _gauss_newton,
    "adam": _first_order,
    "sgd": _first_order,
    "hals": _hals,
    "mu": _mu,
    "mlp": _mlp,
}


def make_solver(cfg, info) -> Solver:
    layout = cfg.layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if cfg.solver not in SOLVERS:
        raise ValueError(f"unknown solver {cfg.solver!r}; known: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[cfg.solver](cfg, info)


__all__ = ["Solver", "SOLVERS", "make_solver", "LAYOUTS", "DAMPINGS", "LINEAR_SOLVERS", "SCHUR_PRECISIONS"]

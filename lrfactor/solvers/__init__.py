"""Solver registry: ``make_solver(cfg, info)`` builds any solver by name.

``info`` holds host-side facts about the problem batch that fix static shapes
(``n_train_max``: the largest training-set size over the seeds).
"""

from __future__ import annotations

from lrfactor.solvers.base import Solver


def _gauss_newton(cfg, info):
    from lrfactor.solvers.gauss_newton import make_gauss_newton

    return make_gauss_newton(
        loss=cfg.loss, l2=cfg.l2, rank=cfg.rank, init=cfg.init, method=cfg.method,
        damping=cfg.damping, lambda0=cfg.lambda0, inner=cfg.inner,
        ftol=cfg.ftol, gtol=cfg.gtol, xtol=cfg.xtol, newton_iters=cfg.newton_iters,
        geodesic=cfg.geodesic, lm_update=cfg.lm_update, lam_down=cfg.lam_down,
        schur_precision=cfg.schur_precision, max_step=cfg.max_step, backtrack=cfg.backtrack, refine=cfg.refine,
        restarts=cfg.restarts,
    )


def _first_order(cfg, info):
    from lrfactor.solvers.first_order import make_first_order

    return make_first_order(cfg, info["n_train_max"])


def _hals(cfg, info):
    from lrfactor.solvers.nmf import make_hals

    return make_hals(rank=cfg.rank, loss=cfg.loss, init=cfg.init, eps=cfg.eps, ftol=cfg.ftol, l2=cfg.l2)


def _mu(cfg, info):
    from lrfactor.solvers.nmf import make_mu

    return make_mu(rank=cfg.rank, loss=cfg.loss, init=cfg.init, eps=cfg.eps, ftol=cfg.ftol, l2=cfg.l2)


def _mlp(cfg, info):
    from lrfactor.solvers.mlp import make_mlp

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
    if cfg.solver not in SOLVERS:
        raise ValueError(f"unknown solver {cfg.solver!r}; known: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[cfg.solver](cfg, info)


__all__ = ["Solver", "SOLVERS", "make_solver"]

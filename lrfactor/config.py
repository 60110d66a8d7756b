"""The run configuration: one frozen dataclass, one comment per default.

Fields left ``None`` take a per-solver default in :func:`resolve`; the resolved
config is what ``config.json`` records.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

# Default step budgets: epochs (adam/sgd/mlp), sweeps (hals/mu), iterations (GN).
DEFAULT_STEPS = {"adam": 10000, "sgd": 10000, "mlp": 10000, "hals": 2000, "mu": 2000, "gauss_newton": 500}
FIRST_ORDER = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    solver: str = "gauss_newton"  # see lrfactor.solvers.SOLVERS
    seeds: int = 0  # number of seeds; 0 = the solver's default (see resolve)
    seed: int = 0  # first seed
    steps: Optional[int] = None  # step budget; None = DEFAULT_STEPS[solver]
    rank: int = 8  # model rank r (the question's model_rank)
    loss: str = "frobenius"  # frobenius (MSE) or kl (generalized KL); mu and gauss_newton
    l2: Optional[float] = None  # l2·(ΣA²+ΣB²) added to the train MSE; None = 1e-6 for adam/sgd, else 0
    precision: Optional[int] = None  # 32 or 64; None = 32 for minibatch optimizers (as Keras), 64 otherwise
    init: str = "keras"  # initial log-factors: keras U(-0.05, 0.05) or scaled (see lrfactor.factors)
    data: Optional[str] = None  # .npz file (CONTRACT.md); None = synthetic
    # Synthetic problem (the question's recipe); ignored with --data.
    n: int = 1000  # rows
    m: int = 100  # columns
    true_rank: int = 12  # rank of the generating factors
    decay: float = 2.0  # factor scales 10**linspace(0, -decay, true_rank)
    observed: float = 0.5  # fraction of entries in the training mask
    noise: float = 0.0  # std of additive Gaussian noise
    # First-order (optax) training, Keras semantics.
    optimizer: Optional[str] = None  # optax alias; None = the solver name (adam, sgd)
    lr: Optional[float] = None  # learning rate; None = 1e-3 (adam), 1e-2 (sgd), 3e-3 (mlp)
    momentum: float = 0.9  # sgd momentum
    batch_size: int = 8192  # minibatch size (the question's 2**13)
    early_stopping: bool = True  # Keras EarlyStopping(monitor=loss, ...)
    patience: int = 50  # EarlyStopping patience (epochs)
    min_delta: float = 0.01  # EarlyStopping min_delta (absolute)
    plateau_patience: int = 20  # ReduceLROnPlateau patience (epochs), monitors val_loss
    plateau_min_delta: float = 0.1  # ReduceLROnPlateau min_delta (absolute)
    plateau_factor: float = 0.1  # ReduceLROnPlateau factor
    min_lr: float = 1e-4  # ReduceLROnPlateau min_lr
    # Gauss-Newton / Levenberg-Marquardt.
    method: str = "joint"  # joint (joint LM), joint_epi (joint + embedded point iterations), varpro (variable projection)
    damping: str = "levenberg"  # levenberg (λI) or marquardt (λ·diag JᵀJ, floored and capped)
    lambda0: float = 1e-3  # initial damping, relative to the mean diagonal of JᵀJ
    inner: int = 3  # Gauss-Newton iterations for the eliminated rows (varpro, joint_epi)
    newton_iters: int = 0  # Newton-CG iterations on the exact Hessian, preconditioned by the GN factorisation (0: pure GN)
    lm_update: str = "nielsen"  # λ after an accepted step: nielsen (Ceres) or fast (×lam_down when ρ > 1/4)
    lam_down: float = 0.2  # λ factor after a good step with lm_update=fast
    schur_precision: str = "mixed"  # mixed: reduced system factored in float32, the step refined in float64 (see refine); full: all float64
    refine: int = 1  # float64 refinement steps of the float32-factored solve (schur_precision=mixed)
    max_step: float = 0.0  # cap on max|Δ| of a Gauss-Newton step in log space, direction kept (0: no cap)
    backtrack: bool = True  # on a rejected step, take the best of 1/2, 1/4, 1/8 of it if that passes the gain test (joint only)
    restarts: int = 2  # when a run stops or stalls, restart from the same blind start with another damping schedule, keep the best (up to 4)
    geodesic: bool = False  # geodesic acceleration of the LM step (Transtrum & Sethna 2012)
    ftol: float = 1e-10  # stop when the relative decrease of the objective over an accepted step is below this
    gtol: float = 1e-12  # stop when max|gradient| falls below this times the objective's scale
    xtol: float = 1e-10  # stop when the step is below this relative to the parameters
    # NMF baselines.
    eps: float = 1e-12  # floor of the factors in hals/mu, keeps the log-factors finite
    # The question's MLP.
    mlp_steps: int = 3  # number of hidden Dense+BatchNorm layers
    mlp_dims: str = "log"  # width interpolation: log or linear
    # Diagnostics.
    hessian_every: int = 0  # trace the Hessian every K steps (0: off)
    lanczos_steps: int = 80  # Lanczos iterations per trace
    slq_probes: int = 4  # random probes for the spectral density / index
    # Driver.
    chunk: int = 0  # steps per compiled chunk between checkpoints; 0 = automatic
    out: Optional[str] = None  # output folder; None = a new folder under results/


def default_seeds(solver: str) -> int:
    """Seeds for a default run that finishes in about a minute on 2 CPU cores."""
    return {"gauss_newton": 4, "adam": 10, "sgd": 10, "mlp": 4}.get(solver, 4)


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill the per-solver defaults."""
    s = cfg.solver
    upd = {}
    if cfg.seeds == 0:
        upd["seeds"] = default_seeds(s)
    if cfg.steps is None:
        upd["steps"] = DEFAULT_STEPS.get(s, 100)
    if cfg.l2 is None:
        upd["l2"] = 1e-6 if s in FIRST_ORDER or s == "mlp" else 0.0
    if cfg.precision is None:
        upd["precision"] = 32 if s in FIRST_ORDER or s == "mlp" else 64
    if cfg.optimizer is None and s in FIRST_ORDER:
        upd["optimizer"] = s
    if cfg.lr is None:
        upd["lr"] = {"adam": 1e-3, "sgd": 1e-2, "mlp": 3e-3}.get(s, 1e-3)
    if cfg.chunk == 0:
        steps = upd.get("steps", cfg.steps)
        k = cfg.hessian_every or {"gauss_newton": 10, "hals": 250, "mu": 250}.get(s, 100)
        upd["chunk"] = max(1, min(k, steps))
    return dataclasses.replace(cfg, **upd)

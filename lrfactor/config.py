"""The run configuration: one frozen dataclass, one comment per default, and its rules.

Every setting of ``experiments/run.py`` is a field of :class:`RunConfig` (flag
``--name-with-dashes``), and the Python API takes the same names as keywords.
Fields left ``None`` take a per-solver default in :func:`resolve`; the resolved
config is what ``config.json`` records.

:func:`validate` checks a config before anything is computed or written: every
value in its range, every choice among the values the code offers, no setting
given that the chosen solver (or the rest of the config) does not use, no
incompatible combination. It raises :class:`ConfigError` with a one-line
message. :func:`check_paths` does the file-system checks (data file readable,
output folder writable and not an existing run).

Allowed values of the solvers' choices are read from the modules that
implement them (``lrfactor.solvers.gauss_newton.DAMPINGS``,
``lrfactor.losses.LOSSES``, ``lrfactor.factors.INITS``, ...), so the config
never offers a value the code does not have.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

SCHEMA = 2  # version of the config.json record; see lrfactor.experiment.load_config

# Default step budgets: epochs (adam/sgd/mlp), sweeps (hals/mu), iterations (GN).
DEFAULT_STEPS = {"adam": 10000, "sgd": 10000, "mlp": 10000, "hals": 2000, "mu": 2000, "gauss_newton": 6000}
FIRST_ORDER = ("adam", "sgd")
MINIBATCH = ("adam", "sgd", "mlp")  # Keras-style epoch training through optax
GN = ("gauss_newton",)
FACTOR_SOLVERS = ("gauss_newton", "hals", "mu", "adam", "sgd")  # solvers whose parameters are the factors
TABLE_SUFFIXES = (".csv", ".parquet")  # long-format tables (one line per observed entry)
DATA_SUFFIXES = (".npz",) + TABLE_SUFFIXES


@dataclasses.dataclass(frozen=True)
class RunConfig:
    # The run.
    solver: str = "gauss_newton"  # gauss_newton (structured LM, the flagship), adam, sgd, hals, mu, mlp
    seeds: int = 0  # number of seeds run at once; 0 = the solver's default (4 for gauss_newton, 10 for adam/sgd)
    seed: int = 0  # first seed; seeds seed ... seed + seeds - 1 must lie in [0, 2**32)
    steps: Optional[int] = None  # step budget: iterations (gauss_newton, default 6000), sweeps (hals/mu, 2000), epochs (adam/sgd/mlp, 10000)
    rank: int = 8  # model rank r (the question's model_rank); with --cv a comma list of ranks to choose from
    loss: str = "frobenius"  # frobenius (MSE, additive noise), kl (generalized KL, counts; V >= 0) or log (squared log ratio, multiplicative noise; V > 0); mu: frobenius and kl; with --cv a comma list
    l2: Optional[float] = None  # l2·(ΣA²+ΣB²) added to the train MSE; default 1e-6 for adam/sgd/mlp (the question's), 0 for gauss_newton; with --cv a comma list
    reg: float = 0.0  # reg·(ΣW²+ΣH²), a penalty on the factors themselves (not their logs), added to the training objective
    precision: Optional[int] = None  # 32 or 64; default 32 for minibatch optimizers (as Keras), 64 otherwise
    init: str = "keras"  # initial log-factors: keras U(-0.05, 0.05), scaled or hals (see lrfactor.factors)
    # Input data.
    data: Optional[str] = None  # .npz (dense masks or coordinate lists) or a .csv/.parquet table (docs/contract.md); default the synthetic problem
    layout: str = "auto"  # problem layout: dense masks, coo coordinate lists, or auto (by size)
    # Long-format tables (--data FILE.csv|.parquet only).
    row_key: Optional[str] = None  # column of row ids; default the table's first column
    col_key: Optional[str] = None  # column of column ids; default the second column
    value_key: Optional[str] = None  # column of values; default the third column
    split_key: Optional[str] = None  # column whose values are train or val; default a random split (val_fraction)
    weight_key: Optional[str] = None  # column of per-entry weights (finite, >= 0): each training entry's loss term is multiplied by its weight; default none (every entry counts once)
    val_fraction: float = 0.2  # fraction of the lines held out when there is no split column
    split_seed: int = 0  # seed of that random split
    predict: Optional[str] = None  # file of (row id, column id) pairs to predict, or "missing" (every unobserved pair)
    # Model selection (lrfactor/cv.py).
    cv: int = 0  # K-fold cross-validation on the training entries over the comma lists of --rank/--l2/--loss, then a refit of the best; 0 = off
    cv_seed: int = 0  # seed of the assignment of the training entries to folds
    # Synthetic problem (the question's recipe); only without --data.
    n: int = 1000  # rows
    m: int = 100  # columns
    true_rank: int = 12  # rank of the generating factors
    decay: float = 2.0  # factor scales 10**linspace(0, -decay, true_rank)
    observed: float = 0.5  # fraction of entries in the training mask
    noise: float = 0.0  # std of additive Gaussian noise
    # First-order (optax) training, Keras semantics: adam, sgd, mlp.
    optimizer: Optional[str] = None  # optax alias taking learning_rate; default the solver name (adam for mlp)
    lr: Optional[float] = None  # learning rate; default 1e-3 (adam), 1e-2 (sgd), 3e-3 (mlp)
    momentum: float = 0.9  # heavy-ball momentum of the sgd optimizer
    batch_size: int = 8192  # minibatch size (the question's 2**13)
    early_stopping: bool = True  # Keras EarlyStopping(monitor=loss, ...)
    patience: int = 50  # EarlyStopping patience (epochs)
    min_delta: float = 0.01  # EarlyStopping min_delta (absolute)
    plateau_patience: int = 20  # ReduceLROnPlateau patience (epochs), monitors val_loss
    plateau_min_delta: float = 0.1  # ReduceLROnPlateau min_delta (absolute, > 0)
    plateau_factor: float = 0.1  # ReduceLROnPlateau factor
    min_lr: float = 1e-4  # ReduceLROnPlateau min_lr (at most lr: the rate never rises)
    inner_val: float = 0.0  # hold out this fraction of the training entries: both callbacks monitor its val_loss, the run ends on its best epoch; 0 = the question's setup
    # Gauss-Newton / Levenberg-Marquardt.
    damping: str = "levenberg"  # levenberg (λI) or marquardt (λ·diag JᵀJ, floored and capped)
    lambda0: float = 1e-3  # initial damping, relative to the mean diagonal of JᵀJ
    linear_solver: str = "auto"  # the damped system: dense_schur (Cholesky of the reduced system), schur_pcg (block-Jacobi CG on it), auto (by size)
    cg_iters: int = 100  # most CG iterations per step (schur_pcg)
    cg_tol: float = 1e-2  # CG stops when the residual falls below this times the right-hand side (schur_pcg)
    schur_precision: str = "mixed"  # mixed: reduced system factored in float32, the step refined in float64 (see refine); full: all float64
    refine: int = 1  # float64 refinement steps of the float32-factored solve (schur_precision mixed)
    max_step: float = 0.0  # cap on max|Δ| of a Gauss-Newton step in log space, direction kept (0: no cap)
    backtrack: bool = True  # on a rejected step, take the best of 1/2, 1/4, 1/8 of it if that passes the gain test
    restarts: int = 8  # when a run stalls (or converges above the best seen), restart from a fresh draw of the blind start, keep the best
    ftol: float = 1e-10  # stop when the relative decrease of the objective over an accepted step (a sweep for hals/mu) is below this
    gtol: float = 1e-12  # stop when max|gradient| falls below this times the objective's scale
    xtol: float = 1e-10  # stop when the step is below this relative to the parameters
    # NMF baselines.
    eps: float = 1e-12  # floor of the factors in hals/mu, keeps the log-factors finite
    # The question's MLP.
    mlp_steps: int = 3  # number of hidden Dense+BatchNorm layers
    mlp_dims: str = "log"  # width interpolation: log or linear
    # Diagnostics.
    hessian_every: int = 0  # trace the Hessian every K steps (0: off)
    lanczos_steps: int = 80  # Lanczos iterations per trace (at least 2)
    slq_probes: int = 4  # random probes for the spectral density / index
    # Driver.
    chunk: int = 0  # steps per compiled chunk between checkpoints; 0 = automatic
    shard: str = "auto"  # axis sharded over the devices: seeds, entries (of a coordinate-list problem), or auto (seeds when there are at least as many seeds as devices, else entries on coordinate lists)
    out: Optional[str] = None  # output folder (new or empty); default a new folder under results/


DEFAULTS = RunConfig()
FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


class ConfigError(ValueError):
    """A setting out of range, unknown, unused by the chosen solver, or incompatible; one line."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------
# Allowed values, read from the modules that implement them.

def choices() -> dict:
    """Allowed values of every enumerated setting, read from the modules that implement them."""
    from lrfactor import distributed, factors, layout, losses
    from lrfactor.solvers import SOLVERS, gauss_newton, linear, mlp

    return {
        "solver": tuple(sorted(SOLVERS)),
        "loss": tuple(losses.LOSSES),
        "init": tuple(factors.INITS),
        "precision": (32, 64),
        "damping": tuple(gauss_newton.DAMPINGS),
        "schur_precision": tuple(gauss_newton.SCHUR_PRECISIONS),
        "linear_solver": tuple(linear.LINEAR_SOLVERS),
        "layout": tuple(layout.LAYOUTS),
        "mlp_dims": tuple(mlp.DIMS),
        "shard": tuple(distributed.SHARDS),
    }


def restarts_max() -> int:
    from lrfactor.solvers.gauss_newton import RESTARTS_MAX

    return RESTARTS_MAX


def optax_aliases() -> tuple:
    """optax's optimizers that take a ``learning_rate`` (what ``--optimizer`` can name)."""
    import inspect

    import optax

    names = []
    for name in dir(optax):
        fn = getattr(optax, name)
        if name.startswith("_") or not inspect.isfunction(fn):
            continue
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        if next(iter(params), None) == "learning_rate":
            names.append(name)
    return tuple(sorted(names))


# ---------------------------------------------------------------------------
# Which settings each solver reads. A field not listed applies to every solver.

USES = {
    "loss": ("gauss_newton", "mu") + FIRST_ORDER,  # hals minimises the masked MSE only; the mlp trains MSE
    "reg": FACTOR_SOLVERS,  # a penalty on the factors W, H: the mlp has none
    "l2": ("gauss_newton",) + MINIBATCH,  # hals and mu minimise the plain loss
    "optimizer": MINIBATCH,
    "lr": MINIBATCH,
    "momentum": MINIBATCH,
    "batch_size": MINIBATCH,
    "early_stopping": MINIBATCH,
    "patience": MINIBATCH,
    "min_delta": MINIBATCH,
    "plateau_patience": MINIBATCH,
    "plateau_min_delta": MINIBATCH,
    "plateau_factor": MINIBATCH,
    "min_lr": MINIBATCH,
    "damping": GN,
    "lambda0": GN,
    "linear_solver": GN,
    "cg_iters": GN,
    "cg_tol": GN,
    "schur_precision": GN,
    "refine": GN,
    "max_step": GN,
    "backtrack": GN,
    "restarts": GN,
    "ftol": GN + ("hals", "mu"),
    "gtol": GN,
    "xtol": GN,
    "eps": ("hals", "mu"),
    "predict": FACTOR_SOLVERS,  # predictions come from the factors W Hᵀ
    "cv": FACTOR_SOLVERS,  # folds are scored by W Hᵀ on the held-out fold
    "cv_seed": FACTOR_SOLVERS,
    "inner_val": FIRST_ORDER,
    "mlp_steps": ("mlp",),
    "mlp_dims": ("mlp",),
}

SYNTHETIC = ("n", "m", "true_rank", "decay", "observed", "noise")
TABLE = ("row_key", "col_key", "value_key", "split_key", "weight_key", "val_fraction", "split_seed", "predict")

# Settings that --cv chooses among (each a comma list on the command line, a
# list in lrfactor.fit), with the values it tries when one is not given: a
# function of the data (lrfactor.cv.DataSummary) and of the config. A new grid
# axis is one more line here. Axes a solver does not use keep their one value.
CV_GRID = {
    # CV_RANKS that the matrix allows, with no more parameters r·(n + m) than a
    # fold fits entries: beyond that the fit interpolates.
    "rank": lambda d, cfg: tuple(r for r in CV_RANKS if r <= min(d.n, d.m) and r * (d.n + d.m) <= d.n_fit) or (1,),
    # No penalty and two relative to the data: s = mean V² / max(n, m) is about
    # the curvature of the data term per log-parameter of the less observed
    # side, so l2 = 1e-3·s and 1e-1·s move the log-factors by ~0.1 % and ~10 %.
    "l2": lambda d, cfg: (0.0,),
    # The penalty on the factors themselves: none and REG_STRENGTHS relative
    # to the data and the loss (reg_scale: the same strength shrinks a fit by
    # the same fraction whatever the loss). Its values depend on the loss, so
    # the grid takes them per loss (PER_LOSS). The question's l2 on the
    # log-factors pulls every factor towards 1 and is in the grid only when given.
    "reg": lambda d, cfg: tuple(rho * reg_scale(cfg.loss, d) for rho in REG_STRENGTHS),
    # Every loss the solver can minimise that the values allow, by the rule
    # every run is checked by (lrfactor.losses.value_requirement: no kl or log
    # on negative values, no log on zeros).
    "loss": lambda d, cfg: tuple(l for l in _solver_losses(cfg.solver) if not _bad_for(l, cfg.solver, d.min_val)),
}


# The default grid's ranks: every rank up to 6, then steps of a fifth to a
# third. On noisy data the best rank is where the components still above the
# noise end, and one rank either side of it can cost several per cent of held-out MSE
# (results/selection), so the small ranks, which are also the cheap ones, are
# all tried.
CV_RANKS = (2, 3, 4, 5, 6, 8, 10, 12, 16)


# Axes of CV_GRID whose default values depend on the setting's loss: the
# grid takes them per loss (lrfactor.cv.grid), each loss with its own values.
PER_LOSS = ("reg",)

# The default grid's factor-penalty strengths ρ (0: none): reg = ρ·reg_scale.
# 1e-3 and 1e-2 shrink the weak components without touching the strong.
REG_STRENGTHS = (0.0, 1e-3, 1e-2)


def loss_curvature(loss: str, mean_sq: float, mean: float) -> float:
    """κ: the mean over the entries of ½·∂²ℓ/∂(log P)² at P = V, from the data's mean V² and mean V.

    The fitted parameters are log-factors, so a change of a component's
    log-factor by δ moves its predictions by a fraction δ, and near a fit the
    loss grows by about κ·δ² per entry: frobenius (P − V)² gives ½·2V² = V²,
    kl V log(V/P) − V + P gives ½·V, log (log P − log V)² gives ½·2 = 1. κ is
    the scale at which a loss resists relative changes of the prediction;
    frobenius weighs an entry by V², kl by V, log not at all.
    """
    if loss == "frobenius":
        return mean_sq
    if loss == "kl":
        return 0.5 * mean
    if loss == "log":
        return 1.0
    raise ValueError(f"unknown loss {loss!r}")


def reg_scale(loss: str, d) -> float:
    """The factor penalty of relative strength 1 for ``loss`` on data summarised by ``d`` (n, m, mean_sq, mean).

    At a balanced point (‖wᵢ‖² ≈ ‖hⱼ‖² ≈ P) ΣW² + ΣH² is about (n + m)·mean V,
    so reg = ρ·κ / ((n + m)·mean V) makes the penalty ρ·κ (κ:
    :func:`loss_curvature`), ρ of the loss's own scale. The penalty's gradient
    against the loss's curvature then shrinks a fit by the same fraction for
    every loss: fitting a constant n × n matrix c at rank 1 shrinks the
    prediction to c·(1 − ρ/2 + O(ρ²)) with every loss. With one scale for all
    (frobenius's mean V²) kl's penalty would be 2·mean V²/mean V times and
    log's mean V² times stronger.
    """
    return loss_curvature(loss, d.mean_sq, d.mean) / ((d.n + d.m) * max(d.mean, 1e-300))


# The fold runs of --cv only have to *rank* the settings of the grid, not to
# deliver a fit: the refit of the choice, on all training entries, runs with
# the run's own settings. So the fold runs of a solver listed here take the
# run's settings loosened to these (where the run's own are not looser
# already; cv_fold_config):
# - no restarts: a restart is for the last few percent of a fit that stalled
#   above the best one; a fold score needs the basin, not that;
# - a looser ftol: a smaller relative decrease per step moves a fold's
#   held-out MSE far less than the gaps between the settings of the grid;
# - fewer steps: a setting still crawling then is scored where it stands.
# Only gauss_newton is listed: its folds were measured (results/selection).
CV_FOLD = {"gauss_newton": {"restarts": 0, "ftol": 1e-4, "steps": 200}}


def cv_fold_config(cfg: RunConfig) -> RunConfig:
    """The settings of every fold run of ``--cv``: ``cfg`` loosened by ``CV_FOLD``, cross-validation off."""
    upd = {"cv": 0, "cv_seed": 0}
    for name, v in CV_FOLD.get(cfg.solver, {}).items():
        own = getattr(cfg, name)
        upd[name] = max(own, v) if name == "ftol" else min(own, v)  # the looser of the two
    if "steps" in upd and cfg.chunk:
        upd["chunk"] = min(cfg.chunk, upd["steps"])
    return dataclasses.replace(cfg, **upd)


def _solver_losses(solver: str) -> tuple:
    """The losses ``solver`` minimises (the refusals of :func:`validate`, as a list)."""
    if solver == "mu":
        from lrfactor.solvers.nmf import MU_LOSSES

        return tuple(MU_LOSSES)
    return tuple(choices()["loss"])


def _bad_for(loss: str, solver: str, min_val: float) -> bool:
    from lrfactor import losses

    return bool(losses.bad_values(min_val, loss, solver))


def _optimizer(cfg: RunConfig) -> str:
    return cfg.optimizer or ("adam" if cfg.solver == "mlp" else cfg.solver)


def _is_table(path: Optional[str]) -> bool:
    return bool(path) and path.lower().endswith(TABLE_SUFFIXES)


def _pcg_possible(cfg: RunConfig, known: tuple) -> bool:
    return "schur_pcg" in known and cfg.linear_solver in ("auto", "schur_pcg")


def unused_reason(name: str, cfg: RunConfig, known: Optional[dict] = None) -> Optional[str]:
    """Why setting ``name`` has no effect in ``cfg`` (None when it has one)."""
    uses = USES.get(name)
    if uses is not None and cfg.solver not in uses:
        return f"the {cfg.solver} solver does not use it (used by {', '.join(uses)})"
    if name in SYNTHETIC and cfg.data:
        return "it shapes the synthetic problem, and --data replaces that problem"
    if name in TABLE and not _is_table(cfg.data):
        return "it applies to long-format tables only (--data FILE.csv or FILE.parquet)"
    if name == "momentum" and _optimizer(cfg) != "sgd":
        return f"only the sgd optimizer uses it (this run's optimizer: {_optimizer(cfg)})"
    if name in ("patience", "min_delta") and not cfg.early_stopping:
        return "early stopping is off (--no-early-stopping)"
    if name in ("lanczos_steps", "slq_probes") and not cfg.hessian_every:
        return "Hessian tracing is off (--hessian-every 0)"
    if name == "refine" and cfg.schur_precision != "mixed":
        return "only --schur-precision mixed refines its solve"
    if name in ("cg_iters", "cg_tol"):
        ls = (known or choices())["linear_solver"]
        if not _pcg_possible(cfg, ls):
            return "only the schur_pcg linear solver runs CG"
    if name == "val_fraction" and cfg.split_key is not None:
        return "--split-key gives the split"
    if name == "split_seed" and cfg.split_key is not None:
        return "--split-key gives the split"
    if name == "cv" and not cfg.data:
        return "cross-validation needs --data (with the synthetic problem every seed draws its own data)"
    if name == "cv_seed" and not cfg.cv:
        return "cross-validation is off (--cv 0)"
    return None


def _differs(a, b) -> bool:
    if a is None or b is None:
        return a is not b
    return a != b or isinstance(a, bool) != isinstance(b, bool)


def given(cfg: RunConfig, name: str) -> bool:
    """Whether ``name`` holds a value of its own: neither its declared default nor what :func:`resolve` fills in."""
    v, d = getattr(cfg, name), getattr(DEFAULTS, name)
    if not _differs(v, d):
        return False
    return _differs(v, getattr(resolve(dataclasses.replace(cfg, **{name: d})), name))


def drop_unused(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every setting it does not use back at its default (they changed nothing), resolved."""
    known = choices()
    reset = {f: getattr(DEFAULTS, f) for f in FIELDS if unused_reason(f, cfg, known) is not None}
    return resolve(dataclasses.replace(cfg, **reset))


# ---------------------------------------------------------------------------
# Ranges. (test, text) per numeric field; text completes "--flag must be ...".

def _in(lo=None, hi=None, lo_open=False, hi_open=False, text=None):
    def test(x):
        if lo is not None and (x <= lo if lo_open else x < lo):
            return False
        return not (hi is not None and (x >= hi if hi_open else x > hi))

    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return test, text or " and ".join(parts)


U32 = 2**32
INTS = ("seeds", "seed", "steps", "rank", "precision", "split_seed", "cv", "cv_seed", "n", "m", "true_rank", "batch_size", "patience",
        "plateau_patience", "cg_iters", "refine", "restarts", "mlp_steps", "hessian_every", "lanczos_steps",
        "slq_probes", "chunk")
FLOATS = ("l2", "reg", "val_fraction", "decay", "observed", "noise", "lr", "momentum", "min_delta", "plateau_min_delta",
          "plateau_factor", "min_lr", "inner_val", "lambda0", "cg_tol", "max_step", "ftol", "gtol", "xtol", "eps")
BOOLS = ("early_stopping", "backtrack")
STRINGS = ("solver", "loss", "init", "data", "layout", "row_key", "col_key", "value_key", "split_key", "weight_key",
           "predict", "optimizer", "damping", "linear_solver", "schur_precision", "mlp_dims", "out", "shard")

RANGES = {
    "seeds": _in(0),  # 0 = the solver's default
    "seed": _in(0, U32, hi_open=True, text="in [0, 2**32)"),  # PRNG keys are built from uint32 seeds
    "steps": _in(1),
    "rank": _in(1),
    "l2": _in(0),
    "reg": _in(0),
    "val_fraction": _in(0, 1, hi_open=True),  # 1 would leave nothing to fit
    "split_seed": _in(0),
    "cv": _in(0, text=">= 2 (or 0: off)"),  # 1 is refused in _combinations: one fold has nothing to fit
    "cv_seed": _in(0),
    "n": _in(1),
    "m": _in(1),
    "true_rank": _in(1),
    "decay": _in(0),  # each extra component weaker, as in the question
    "observed": _in(0, 1, lo_open=True, hi_open=True),  # both masks non-empty
    "noise": _in(0),
    "lr": _in(0, lo_open=True),
    "momentum": _in(0, 1, hi_open=True),
    "batch_size": _in(1),
    # Keras 2 and 3 disagree on what patience 0 means (stop after an improving
    # epoch or not); every positive value means the same in both.
    "patience": _in(1),
    "min_delta": _in(0),
    "plateau_patience": _in(1),
    "plateau_min_delta": _in(0, lo_open=True),  # optax's reduce_on_plateau needs a positive tolerance
    "plateau_factor": _in(0, 1, lo_open=True, hi_open=True),
    "min_lr": _in(0),
    "inner_val": _in(0, 1, hi_open=True),  # 1 would leave nothing to fit
    "lambda0": _in(0, lo_open=True),  # λ is updated multiplicatively: 0 stays 0 and the step is singular (gauge)
    "cg_iters": _in(1),
    "cg_tol": _in(0, 1, lo_open=True, hi_open=True),
    "refine": _in(0),
    "max_step": _in(0),
    "ftol": _in(0),
    "gtol": _in(0),
    "xtol": _in(0),
    "eps": _in(0, lo_open=True),  # the log of a zero factor is -inf
    "mlp_steps": _in(0),
    "hessian_every": _in(0),
    "lanczos_steps": _in(2),  # one Lanczos step has no off-diagonal: no Ritz pair to speak of
    "slq_probes": _in(1),
    "chunk": _in(0),
}


def check_types(cfg: RunConfig) -> None:
    for name in INTS:
        v = getattr(cfg, name)
        if v is None and getattr(DEFAULTS, name) is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{flag(name)} must be an integer, got {v!r}")
    for name in FLOATS:
        v = getattr(cfg, name)
        if v is None and getattr(DEFAULTS, name) is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{flag(name)} must be a number, got {v!r}")
        if not math.isfinite(v):
            raise ConfigError(f"{flag(name)} must be finite, got {v!r}")
    for name in BOOLS:
        v = getattr(cfg, name)
        if not (isinstance(v, bool) or (v is None and getattr(DEFAULTS, name) is None)):
            raise ConfigError(f"{flag(name)} must be true or false, got {v!r}")
    for name in STRINGS:
        v = getattr(cfg, name)
        if not (isinstance(v, str) or (v is None and getattr(DEFAULTS, name) is None)):
            raise ConfigError(f"{flag(name)} must be a string, got {v!r}")
        if isinstance(v, str) and ("\n" in v or "\r" in v or "\x00" in v):
            raise ConfigError(f"{flag(name)} must be one line without NUL characters")


def validate(cfg: RunConfig) -> RunConfig:
    """Check ``cfg`` (as given, or resolved); return it unchanged. Raises ConfigError (one line).

    Pure: reads no file. Order: lists of values (``--cv`` only; each value is
    then checked as a single setting), types, choices, ranges, unused
    settings, combinations.
    """
    lists = grid_lists(cfg)
    if lists:
        name, vals = next(iter(lists.items()))
        if not cfg.cv:
            raise ConfigError(f"{flag(name)} {_show(vals)}: a list of values needs --cv K, which chooses among "
                              f"them by K-fold cross-validation")
        for name, vals in lists.items():
            if not vals:
                raise ConfigError(f"{flag(name)}: an empty list of values")
            if len(set(vals)) != len(vals):
                raise ConfigError(f"{flag(name)} {_show(vals)}: a value is listed twice")
            for v in vals:  # each value as a single setting, the other lists at their first value
                validate(dataclasses.replace(cfg, **{**{a: vs[0] for a, vs in lists.items()}, name: v}))
        return cfg
    check_types(cfg)
    known = choices()
    for name, allowed in known.items():
        v = getattr(cfg, name)
        if v is not None and v not in allowed:
            what = "solvers" if name == "solver" else "values"
            raise ConfigError(f"unknown {flag(name)[2:]} {v!r}; known {what}: {', '.join(map(str, allowed))}")
    if cfg.optimizer is not None and cfg.optimizer not in optax_aliases():
        raise ConfigError(f"--optimizer {cfg.optimizer!r} is not an optax optimizer taking a learning_rate "
                          f"(e.g. adam, sgd, adamw, rmsprop)")
    for name, (test, text) in RANGES.items():
        v = getattr(cfg, name)
        if v is not None and not test(v):
            raise ConfigError(f"{flag(name)} must be {text}, got {v!r}")
    if cfg.restarts < 0 or cfg.restarts > restarts_max():
        raise ConfigError(f"--restarts must be between 0 and {restarts_max()}, got {cfg.restarts}")
    if cfg.seed + (cfg.seeds or default_seeds(cfg.solver)) > U32:
        raise ConfigError(f"--seed + --seeds must stay below 2**32 (seeds are uint32), got {cfg.seed} + {cfg.seeds}")
    if cfg.data is not None and not cfg.data.lower().endswith(DATA_SUFFIXES):
        raise ConfigError(f"--data {cfg.data}: unknown file type; expected {', '.join(DATA_SUFFIXES)}")
    for name in FIELDS:
        if given(cfg, name):
            why = unused_reason(name, cfg, known)
            if why is not None:
                raise ConfigError(f"{flag(name)} {_show(getattr(cfg, name))} has no effect here: {why}")
    _combinations(cfg, known)
    return cfg


def _show(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v))
    return str(v)


def grid_lists(cfg: RunConfig) -> dict:
    """The settings of ``CV_GRID`` that hold a list of values: {name: tuple}."""
    return {a: tuple(getattr(cfg, a)) for a in CV_GRID if isinstance(getattr(cfg, a), (tuple, list))}


def grid_settings(settings: dict) -> dict:
    """Settings as given (command line or keywords) in the form the config holds them.

    With ``cv`` on, every given setting of ``CV_GRID`` becomes a tuple (one
    value is a list of one): a tuple is a given axis, a plain value one left
    to the default grid. Without ``cv`` a list of one value is that value (a
    longer list is refused by :func:`validate`).
    """
    out = dict(settings)
    for a in CV_GRID:
        if a not in out or out[a] is None:
            continue
        v = out[a]
        many = isinstance(v, (tuple, list))
        if out.get("cv"):
            out[a] = tuple(v) if many else (v,)
        elif many:
            out[a] = tuple(v)[0] if len(v) == 1 else tuple(v)
    return out


def _combinations(cfg: RunConfig, known: dict) -> None:
    if cfg.cv == 1:
        raise ConfigError("--cv must be >= 2 (or 0: off): one fold leaves nothing to fit")
    if cfg.data is None and cfg.rank > min(cfg.n, cfg.m):
        raise ConfigError(f"--rank {cfg.rank} must be between 1 and min(n, m) = {min(cfg.n, cfg.m)}")
    if cfg.solver in MINIBATCH and cfg.lr is not None and cfg.min_lr > cfg.lr:
        raise ConfigError(f"--min-lr {cfg.min_lr:g} is above --lr {cfg.lr:g}: give --min-lr at most the learning "
                          f"rate (ReduceLROnPlateau only lowers the rate)")
    if cfg.solver in MINIBATCH and cfg.lr is None and cfg.min_lr > _default_lr(cfg.solver):
        raise ConfigError(f"--min-lr {cfg.min_lr:g} is above the default --lr {_default_lr(cfg.solver):g}: give "
                          f"--min-lr at most the learning rate (ReduceLROnPlateau only lowers the rate)")
    if cfg.solver == "mu":
        from lrfactor.solvers.nmf import MU_LOSSES

        if cfg.loss not in MU_LOSSES:
            raise ConfigError(f"--loss {cfg.loss} is not minimised by the mu solver (it has multiplicative updates "
                              f"for {', '.join(MU_LOSSES)}); use gauss_newton, adam or sgd")
    if cfg.solver == "gauss_newton" and cfg.linear_solver == "dense_schur" and cfg.layout == "coo":
        raise ConfigError("--linear-solver dense_schur needs dense masks; use schur_pcg (or auto) with --layout coo")
    if cfg.shard == "entries" and (cfg.layout == "dense" or cfg.solver == "mlp"):
        why = "the mlp solver needs dense masks" if cfg.solver == "mlp" else "--layout dense has none"
        raise ConfigError(f"--shard entries shards the entries of coordinate lists, and {why}; "
                          f"use --layout coo (or auto), or --shard seeds")
    if cfg.predict is not None and cfg.predict != "missing" and not cfg.predict.lower().endswith(TABLE_SUFFIXES):
        raise ConfigError(f"--predict {cfg.predict}: expected a .csv or .parquet table of (row id, column id) "
                          f"pairs, or 'missing'")


# ---------------------------------------------------------------------------
# Per-solver defaults.

def default_seeds(solver: str) -> int:
    """Seeds for a default run that finishes in about a minute on 2 CPU cores."""
    return {"gauss_newton": 4, "adam": 10, "sgd": 10, "mlp": 4}.get(solver, 4)


def _default_lr(solver: str) -> float:
    return {"adam": 1e-3, "sgd": 1e-2, "mlp": 3e-3}[solver]


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill the per-solver defaults of the settings the solver uses (the others keep theirs)."""
    s = cfg.solver
    upd = {}
    if cfg.seeds == 0:
        upd["seeds"] = default_seeds(s)
    if cfg.steps is None:
        upd["steps"] = DEFAULT_STEPS.get(s, 100)
    if cfg.l2 is None:  # hals and mu take l2 too, and refuse anything but 0
        upd["l2"] = 1e-6 if s in MINIBATCH else 0.0
    if cfg.precision is None:
        upd["precision"] = 32 if s in MINIBATCH else 64
    if cfg.optimizer is None and s in USES["optimizer"]:
        upd["optimizer"] = _optimizer(cfg)
    if cfg.lr is None and s in USES["lr"]:
        upd["lr"] = _default_lr(s)
    if cfg.chunk == 0:
        steps = upd.get("steps", cfg.steps)
        k = cfg.hessian_every or {"gauss_newton": 10, "hals": 250, "mu": 250}.get(s, 100)
        upd["chunk"] = max(1, min(k, steps))
    return dataclasses.replace(cfg, **upd)


# ---------------------------------------------------------------------------
# File-system checks (not pure: they look at the disk, and write nothing).

def check_paths(cfg: RunConfig, *, resume: bool = False) -> None:
    """``--data`` names a readable file; ``--out`` can be created (or, resuming, exists). Raises ConfigError."""
    for name in ("data",) + (("predict",) if cfg.predict not in (None, "missing") else ()):
        path = getattr(cfg, name)
        if path is None:
            continue
        if not os.path.exists(path):
            raise ConfigError(f"{path}: no such file")
        if os.path.isdir(path):
            raise ConfigError(f"{path}: is a directory, not a data file")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{path}: not readable (permission denied)")
    if cfg.out is not None and not resume:
        check_out(cfg.out)


def check_out(out: str) -> None:
    """``out`` is a new or empty folder that can be created and written. Raises ConfigError."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ConfigError(f"--out {out}: exists and is a file, not a folder")
        if os.listdir(out):
            hint = f"--resume {out} continues it, or" if os.path.exists(os.path.join(out, "config.json")) else "use"
            raise ConfigError(f"{out}: folder exists and is not empty; {hint} another --out")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {out}: folder is not writable")
        return
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--out {out}: {parent} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot create it, {parent} is not writable")

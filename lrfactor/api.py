"""The Python entry point: ``lrfactor.fit``, the command line's run as one call.

    import lrfactor
    fit = lrfactor.fit(V, train_mask, val_mask, rank=8, solver="gauss_newton", seeds=4)
    fit.W, fit.H               # (S, n, r), (S, m, r) non-negative factors
    fit.summary                # what summary.json holds
    fit.predict(rows, cols)    # W Hᵀ at those entries, from the best seed

Every setting of ``experiments/run.py`` is a keyword with the same name and
default (``lrfactor.config.RunConfig``), validated by the same rules; a bad
setting or bad data raises :class:`lrfactor.config.ConfigError` or
:class:`lrfactor.problems.ProblemError` with the one-line message the command
line prints. The same settings give the same numbers as the command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from lrfactor import config as C
from lrfactor import tables
from lrfactor.config import RunConfig

# What the configuration checks see when the data come as arrays: a dense
# data file (so the synthetic-problem settings count as unused, and the
# table-only settings are refused as for an .npz).
_ARRAYS = "arrays.npz"


@dataclasses.dataclass(frozen=True)
class Fit:
    """A finished fit: factors of every seed, the run's summary and history."""

    W: np.ndarray  # (S, n, r) non-negative row factors, one per seed
    H: np.ndarray  # (S, m, r) non-negative column factors
    summary: dict  # what summary.json holds (final MSEs per seed, references, timings)
    history: dict  # per-step records, (S, T+1) each, as history.npz
    config: RunConfig  # every setting used, defaults filled in
    row_ids: Optional[np.ndarray] = None  # (n,) ids of the rows when the data came from a table or arrays
    col_ids: Optional[np.ndarray] = None  # (m,) ids of the columns
    cv: Optional[dict] = None  # with cv=K: what cv.json holds (grid, fold scores, choice); the rest is the refit

    @property
    def best(self) -> int:
        """Index of the seed with the lowest final training objective (the one predictions use)."""
        from lrfactor.experiment import best_seed

        return best_seed(self.summary)

    def predict(self, rows, cols, seed: Optional[int] = None) -> np.ndarray:
        """(W Hᵀ)[rows, cols] for index arrays ``rows``, ``cols``, from the seed at batch
        index ``seed`` (default: :attr:`best`)."""
        k = self.best if seed is None else seed
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        n, m = self.W.shape[1], self.H.shape[1]
        if rows.shape != cols.shape or (rows < 0).any() or (rows >= n).any() or (cols < 0).any() or (cols >= m).any():
            raise IndexError(f"rows and cols must be index arrays of one shape within ({n}, {m})")
        return tables.predict_pairs(self.W[k], self.H[k], rows.ravel(), cols.ravel()).reshape(rows.shape)


def fit(V=None, train_mask=None, val_mask=None, *, train_weight=None, table: Optional[tables.Table] = None,
        progress: bool = False, **settings: Any) -> Fit:
    """Fit V ≈ W Hᵀ with W = exp(A), H = exp(B) on ``train_mask``, for ``seeds`` random starts.

    The data: dense arrays ``V`` (n, m) with a boolean ``train_mask`` (and
    optionally ``val_mask``, held-out entries scored and never fitted); or a
    :class:`lrfactor.tables.Table` (``table=``, e.g. from
    :func:`lrfactor.tables.read_table`); or a file (``data="sales.csv"``, as
    ``--data``); or none of them: the synthetic problem of the settings (the
    question's recipe by default), where each seed draws its own data.
    ``train_weight`` (n, m), with arrays: per-entry weights of the training
    entries (each entry's loss term times its weight; finite, >= 0); a table
    or a file carries its own (``weight_key=`` names a table's column).

    ``settings``: every ``RunConfig`` field (``rank``, ``solver``, ``seeds``,
    ``steps``, ``loss``, ``l2``, ``precision``, ...). With ``cv=K``, ``rank``,
    ``l2`` and ``loss`` may be lists: K-fold cross-validation on the training
    entries chooses among them (lrfactor/cv.py), and the fit is the refit of
    the choice (``config`` its settings, ``cv`` the scores). ``out``: a folder to
    write the run's files to, as the command line does (default: nothing is
    written). Precision 64 runs with JAX's float64 switched on inside this
    call only.
    """
    import jax

    from lrfactor import experiment

    if V is not None or train_mask is not None:
        if table is not None or settings.get("data") is not None:
            raise C.ConfigError("give the data once: arrays, table= or data=")
        if V is None or train_mask is None:
            raise C.ConfigError("dense data need both V and train_mask")
        table = tables.table_from_dense(np.asarray(V), np.asarray(train_mask),
                                        None if val_mask is None else np.asarray(val_mask), source="V",
                                        train_weight=None if train_weight is None else np.asarray(train_weight))
    elif train_weight is not None:
        raise C.ConfigError("train_weight goes with the arrays V and train_mask; a table or a file carries its own")
    elif table is not None and settings.get("data") is not None:
        raise C.ConfigError("give the data once: table= or data=")
    unknown = sorted(set(settings) - set(C.FIELDS))
    if unknown:
        raise C.ConfigError(f"unknown settings {', '.join(unknown)}; see lrfactor.config.RunConfig")
    cfg = RunConfig(**C.grid_settings(settings))
    probe = dataclasses.replace(cfg, data=_ARRAYS) if table is not None else cfg
    C.validate(probe)
    cfg = C.resolve(cfg)
    C.check_paths(cfg)
    rec = None
    with jax.enable_x64(cfg.precision == 64):
        if cfg.cv:
            from lrfactor import cv

            cvp = cv.prepare(cfg, table=table)
            outcome, rec = cv.execute(cvp, cfg.out, progress=progress)
            prep = cvp.prep
            cfg = cv.refit_config(cvp, cvp.settings[rec["choice"]["index"]])
        else:
            prep = experiment.prepare(cfg, table=table)
            outcome = experiment.run_prepared(prep, cfg.out, progress=progress)
    p = outcome.params
    W, H = (np.exp(p.A), np.exp(p.B)) if hasattr(p, "A") and hasattr(p, "B") else (None, None)
    t = prep.table
    return Fit(W=W, H=H, summary=outcome.summary, history=outcome.history, config=cfg,
               row_ids=None if t is None else t.row_ids, col_ids=None if t is None else t.col_ids, cv=rec)

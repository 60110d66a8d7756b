"""--inner-val F for adam/sgd: Keras' validation_split with EarlyStopping(monitor='val_loss', restore_best_weights).

A fraction of the training entries is held out of the minibatches and both
callbacks monitor the loss on it; the run's held-out entries are only
reported. Checked against the same run on a problem whose training entries are
the fitted ones and whose held-out entries are the inner split (then the
question's callbacks see exactly what --inner-val makes them see), and by the
best epoch's weights being the ones the run ends on.
"""

import sys

import jax
import numpy as np
import pytest

from lrfactor import experiment, tables
from lrfactor.config import ConfigError, RunConfig, resolve, validate
from lrfactor.solvers.first_order import INNER_SEED, inner_split

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_cv import noisy_table  # noqa: E402

FRACTION = 0.25
ADAM = dict(solver="adam", data="x.npz", rank=6, seeds=2, lr=0.05, batch_size=64, precision=64)


@pytest.fixture(scope="module")
def data():
    V, train, val = noisy_table(n=40, m=30, noise=0.3)
    table = tables.table_from_dense(V, train, val)
    problem = experiment.problem_from_table(table, "dense", np.float64)
    inner = np.asarray(inner_split(problem, FRACTION, jax.random.PRNGKey(INNER_SEED)))
    return {"V": V, "train": train, "val": val, "table": table, "inner": inner}


def _run(table, **kw):
    cfg = validate(resolve(RunConfig(**ADAM, **kw)))
    return experiment.run_prepared(experiment.prepare(cfg, table=table), None, progress=False)


def test_the_inner_split_is_the_asked_fraction_of_the_training_entries(data):
    inner, train = data["inner"], data["train"]
    assert not np.any(inner & ~train)
    assert np.count_nonzero(inner) == round(FRACTION * np.count_nonzero(train))


def test_inner_entries_are_not_fitted_and_both_callbacks_watch_them(data):
    # The same run on a problem that fits train minus the inner split and holds out the inner split:
    # identical minibatches (the order of the fitted entries), the plateau fed the same val_loss.
    V, train, inner = data["V"], data["train"], data["inner"]
    a = _run(data["table"], inner_val=FRACTION, steps=20, early_stopping=False, plateau_patience=2)
    b = _run(tables.table_from_dense(V, train & ~inner, inner), steps=20, early_stopping=False, plateau_patience=2)
    for key in ("loss", "val_loss", "lr"):
        np.testing.assert_allclose(a.history[key], b.history[key], rtol=1e-12, err_msg=key)
    assert np.any(a.history["lr"][:, -1] < a.history["lr"][:, 1])  # the plateau did act on the inner val_loss
    # The run's own held-out entries are scored, not monitored: val_mse is theirs.
    W, H = np.exp(a.params.A), np.exp(a.params.B)
    for s in range(2):
        P = W[s] @ H[s].T
        np.testing.assert_allclose(a.summary["final"]["val_mse"][s], np.mean((P - V)[data["val"]] ** 2), rtol=1e-10)


def test_early_stopping_on_the_inner_split_ends_on_the_best_epoch(data):
    V, inner = data["V"], data["inner"]
    patience = 5
    out = _run(data["table"], inner_val=FRACTION, steps=300, patience=patience, min_delta=0.0)
    val_loss = out.history["val_loss"][:, 1:]  # epoch 1, 2, ...
    best = np.argmin(val_loss, axis=1) + 1
    steps = np.asarray(out.summary["final"]["steps"])
    assert np.all(steps < 300)  # it stopped early ...
    np.testing.assert_array_equal(steps, best + patience)  # ... patience epochs after the best one
    A, B = out.params.A, out.params.B
    for s in range(2):  # ... on the best epoch's weights
        P = np.exp(A[s]) @ np.exp(B[s]).T
        restored = np.mean((P - V)[inner] ** 2) + 1e-6 * (np.sum(A[s] ** 2) + np.sum(B[s] ** 2))
        np.testing.assert_allclose(restored, val_loss[s].min(), rtol=1e-10)


def test_inner_val_only_where_it_means_something():
    with pytest.raises(ConfigError, match="--inner-val 0.2 has no effect here"):
        validate(RunConfig(solver="gauss_newton", inner_val=0.2))
    with pytest.raises(ConfigError, match="--inner-val must be"):
        validate(RunConfig(solver="adam", inner_val=1.0))

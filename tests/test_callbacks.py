"""Keras' EarlyStopping and ReduceLROnPlateau, as the question's run used them.

The expected epochs below are written by hand from Keras' documented rules
(tf.keras.callbacks, the question's TensorFlow 2 Keras):

EarlyStopping(monitor='loss', patience, min_delta, restore_best_weights=True),
mode min: ``best`` starts at +inf and ``wait`` at 0. After every epoch
``wait += 1``; the epoch improves when ``loss - (-min_delta) < best`` (strict),
i.e. ``loss + min_delta < best``, and then ``best = loss`` (the loss itself,
not loss + min_delta), the weights are stored and ``wait = 0``. Training
stops after the epoch where ``wait >= patience`` (never after epoch 0); the
stored weights of the best epoch are restored then (only when it stops early).

ReduceLROnPlateau(monitor='val_loss', patience, min_delta, factor, min_lr),
mode min, cooldown 0: the epoch improves when ``val_loss < best - min_delta``
(strict), then ``best = val_loss`` and ``wait = 0``; otherwise ``wait += 1``
and when ``wait >= patience``: if ``lr > min_lr`` then
``lr = max(lr * factor, min_lr)`` and ``wait = 0``. The new rate applies from
the next epoch.

Values are multiples of powers of two so that every sum is exact and the
strict comparisons are tested at their boundary.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor import cli
from lrfactor.results import read_npz
from lrfactor.solvers.first_order import end_of_epoch, init_callbacks, plateau_transform


def run_callbacks(losses, val_losses, *, patience=3, min_delta=0.25, early_stopping=True, plateau_patience=2,
                  plateau_min_delta=0.25, factor=0.5, base_lr=1.0, min_lr=0.125):
    """Feed the sequences to lrfactor's callbacks; params at epoch e are the number e.

    Returns (first epoch at which done, params after it, lr for each next epoch).
    """
    plateau = plateau_transform(factor, plateau_patience, plateau_min_delta, base_lr, min_lr)
    params = jnp.asarray(0.0)
    cb = init_callbacks(params, plateau)
    best = params
    stop, lrs = None, []
    epoch = jax.jit(lambda cb, p, b, l, v: end_of_epoch(cb, plateau, p, b, l, v, patience, min_delta, early_stopping))
    for e, (loss, val) in enumerate(zip(losses, val_losses)):
        params = jnp.asarray(float(e))
        cb, best, params, done = epoch(cb, params, best, jnp.asarray(float(loss)), jnp.asarray(float(val)))
        lrs.append(float(base_lr * cb.plateau.scale))
        if bool(done) and stop is None:
            stop = (e, float(params))
    return stop, lrs


FLAT = [1.0] * 12


@pytest.mark.parametrize("losses, patience, expected", [
    # e0 improves (best 10), e1: 9 + 0.25 < 10 improves (best 9); e2: 8.75 + 0.25 = 9 is not < 9 (wait 1);
    # e3 wait 2; e4 wait 3 = patience: stop after epoch 4, restore epoch 1's weights.
    ([10, 9, 8.75, 8.875, 8.8125, 0, 0], 3, (4, 1.0)),
    # an improvement resets wait: e2 does not improve (9.5 + 0.25 !< 9.5), e3 does (9.25 < 9.5, best 9);
    # e4..e6 do not (9.125, 9.0625, 9.03125 are not < 9): stop after epoch 6, restore epoch 3.
    ([10, 9.5, 9.5, 9.0, 8.875, 8.8125, 8.78125, 0], 3, (6, 3.0)),
    # best is the loss at the last improvement, not the previous epoch's: a drift of 0.125 per epoch
    # improves on every third epoch (e3: 9.625 + 0.25 < 10, e6: 9.25 + 0.25 < 9.625, ...), so with
    # patience 3 it never stops, though no epoch is min_delta below the one before.
    ([10 - 0.125 * e for e in range(12)], 3, None),
    # patience 1: e1 does not improve (5 + 0.25 !< 5): stop after epoch 1, restore epoch 0.
    ([5, 5, 0, 0], 1, (1, 0.0)),
    # steadily improving by more than min_delta: never stops.
    ([10, 9, 8, 7, 6, 5, 4, 3], 2, None),
])
def test_early_stopping_epochs(losses, patience, expected):
    stop, _ = run_callbacks(losses, FLAT[: len(losses)], patience=patience)
    assert stop == expected


def test_early_stopping_off_never_stops():
    stop, _ = run_callbacks([10, 10, 10, 10, 10, 10], FLAT[:6], patience=1, early_stopping=False)
    assert stop is None


def test_early_stopping_watches_loss_not_val_loss():
    # val_loss falling fast does not keep training alive; loss flat stops it
    stop, _ = run_callbacks([3, 3, 3, 3, 3], [10, 5, 2, 1, 0.5], patience=2)
    assert stop == (2, 0.0)


def test_reduce_lr_on_plateau_epochs():
    val = [4, 3.875, 3.75, 3.5, 3.375, 3.375, 3.375, 3.375, 3.375, 3.375, 3.375, 3.375]
    # e0 improves (best 4); e1 3.875 !< 3.75 (wait 1); e2 3.75 !< 3.75 (wait 2 = patience): lr 0.5;
    # e3 3.5 < 3.75 improves (best 3.5); e4 wait 1; e5 wait 2: lr 0.25; e6, e7: lr 0.125 = min_lr;
    # e9 would reduce again but lr is not above min_lr: it stays.
    expected = [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.125, 0.125, 0.125]
    _, lrs = run_callbacks([10 - e for e in range(len(val))], val)
    assert lrs == expected


def test_reduce_lr_watches_val_loss_not_loss():
    # loss improving every epoch does not stop the reductions on a flat val_loss
    _, lrs = run_callbacks([10, 9, 8, 7, 6], [2, 2, 2, 2, 2], min_lr=0.0)
    assert lrs == [1, 1, 0.5, 0.5, 0.25]


def test_min_lr_floor_not_a_multiple_of_factor():
    # lr 1 -> 0.5 -> max(0.25, 0.3) = 0.3 -> stays (0.3 is not above min_lr)
    _, lrs = run_callbacks([10 - e for e in range(8)], [2] * 8, min_lr=0.3)
    assert lrs == pytest.approx([1, 1, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3])


def keras_replay(loss, val_loss, *, patience, min_delta, plateau_patience, plateau_min_delta, factor, lr, min_lr):
    """Keras' two callbacks transcribed from their documented rules (above), in plain Python.

    Returns (epochs run, best epoch restored or None, lr used in each epoch).
    """
    best, wait, best_epoch = float("inf"), 0, None
    pbest, pwait = float("inf"), 0
    lrs = []
    for e, (l, v) in enumerate(zip(loss, val_loss)):
        lrs.append(lr)
        # ReduceLROnPlateau.on_epoch_end
        if v < pbest - plateau_min_delta:
            pbest, pwait = v, 0
        else:
            pwait += 1
            if pwait >= plateau_patience and lr > min_lr:
                lr, pwait = max(lr * factor, min_lr), 0
        # EarlyStopping.on_epoch_end
        wait += 1
        if l + min_delta < best:
            best, best_epoch, wait = l, e, 0
        elif wait >= patience and e > 0:
            return e + 1, best_epoch, lrs
    return len(loss), None, lrs


def test_adam_run_follows_keras_rules(tmp_path):
    """A whole run: its recorded loss / val_loss replayed through Keras' rules give its stop and its rates."""
    out = str(tmp_path / "run")
    settings = dict(patience=4, min_delta=0.05, plateau_patience=2, plateau_min_delta=0.05, factor=0.5, lr=0.05,
                    min_lr=0.01)
    argv = ["--solver", "adam", "--n", "30", "--m", "12", "--true-rank", "3", "--rank", "2", "--seeds", "3",
            "--steps", "80", "--precision", "64", "--batch-size", "64", "--lr", "0.05", "--patience", "4",
            "--min-delta", "0.05", "--plateau-patience", "2", "--plateau-min-delta", "0.05",
            "--plateau-factor", "0.5", "--min-lr", "0.01", "--out", out, "--quiet"]
    assert cli.main(argv) == 0
    h = read_npz(os.path.join(out, "history.npz"))
    steps = json.load(open(os.path.join(out, "summary.json")))["final"]["steps"]
    stopped = reduced = 0
    for s in range(3):
        n = int(steps[s])
        # history row 0 is the start; rows 1..n are epochs 0..n-1
        loss, val, lr = h["loss"][s, 1: n + 1], h["val_loss"][s, 1: n + 1], h["lr"][s, 1: n + 1]
        epochs, best_epoch, lrs = keras_replay(list(map(float, loss)), list(map(float, val)), **settings)
        assert epochs == n
        np.testing.assert_allclose(lr, lrs, rtol=1e-12)
        reduced += min(lrs) < settings["lr"]
        if n < 80:
            stopped += 1
            # restore_best_weights: the saved factors give the best epoch's training MSE
            assert best_epoch is not None
            np.testing.assert_allclose(h["train_mse"][s, n], h["train_mse"][s, best_epoch + 1], rtol=1e-12)
    assert stopped >= 1 and reduced >= 1  # the settings make both callbacks fire within the budget

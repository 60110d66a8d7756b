"""Minibatch first-order training through optax, faithful to the question's Keras run.

One ``step`` is one epoch: the observed entries are reshuffled, cut into
minibatches of ``batch_size`` (the last one partial) and the optimizer takes one
update per minibatch on

    mean_batch (W_i·H_j − V_ij)² + l2·(ΣA² + ΣB²)

(Keras adds an embedding regularizer over the whole table to every batch loss).
Another loss of lrfactor/losses.py (``kl``, ``log``) replaces the squared
error entry by entry, and ``reg``·(ΣW² + ΣH²) joins the penalty; autodiff
gives their gradients.
After the epoch the two Keras callbacks of the question act, with Keras'
semantics:

- ``ReduceLROnPlateau(patience, min_delta, min_lr)`` monitors ``val_loss`` (the
  held-out MSE plus the penalty, as Keras evaluates it): after ``patience``
  epochs without an improvement of more than ``min_delta`` the learning rate is
  multiplied by ``factor``, not below ``min_lr``. (With another loss, that
  loss on the held-out entries plus the penalty.) This is
  ``optax.contrib.reduce_on_plateau`` fed once per epoch with ``atol=min_delta``,
  ``rtol=0``.
- ``EarlyStopping(monitor='loss', patience, min_delta, restore_best_weights)``
  monitors the epoch's training loss (the size-weighted mean of the batch
  losses); an epoch improves when ``loss + min_delta < best``. After
  ``patience`` epochs without improvement the seed is done and its parameters
  are restored to those of the best epoch.

``inner_val`` F > 0 (``--inner-val``, off in the question's setup) is Keras'
``validation_split`` with ``EarlyStopping(monitor='val_loss',
restore_best_weights=True)``, the practitioner's natural fix: a fraction F of
the training entries (the same entries for every epoch, drawn once from a
fixed key, at least one) is held out of the minibatches, ``val_loss`` is
measured on it, and both callbacks monitor that ``val_loss``; the run's
held-out entries are then only ever reported. The run ends on the weights of
the epoch with the best monitored ``val_loss``, whether early stopping fired
or the budget ran out.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from lrfactor import factors as fac
from lrfactor import layout, losses
from lrfactor.solvers.base import Solver


class KerasCallbacks(NamedTuple):
    """EarlyStopping + ReduceLROnPlateau bookkeeping (scalars per seed)."""

    plateau: Any  # optax.contrib ReduceLROnPlateauState; .scale multiplies the base lr
    best_loss: jax.Array  # () EarlyStopping's best monitored training loss
    wait: jax.Array  # () epochs since the last improvement
    epoch: jax.Array  # () epochs finished


class FirstOrderState(NamedTuple):
    params: Any  # model parameters (Factors for the factor model)
    opt_state: Any  # optax state (inject_hyperparams: .hyperparams['learning_rate'])
    best_params: Any  # parameters at EarlyStopping's best epoch (restore_best_weights)
    callbacks: KerasCallbacks
    loss: jax.Array  # () the epoch's training loss, as Keras logs 'loss'
    val_loss: jax.Array  # () held-out MSE + penalty, as Keras logs 'val_loss' (on the inner split with inner_val)
    key: jax.Array  # PRNG key for the next epoch's shuffle
    done: jax.Array  # () bool: early stopping fired
    inner: Any = None  # entry array (bool): training entries held out as the monitored split; None without inner_val


def plateau_transform(factor: float, patience: int, min_delta: float, base_lr: float, min_lr: float):
    return optax.contrib.reduce_on_plateau(
        factor=factor, patience=patience, rtol=0.0, atol=min_delta, min_scale=min_lr / base_lr
    )


def init_callbacks(params, plateau) -> KerasCallbacks:
    return KerasCallbacks(
        plateau=plateau.init(params),
        best_loss=jnp.asarray(jnp.inf, jnp.zeros(()).dtype),
        wait=jnp.asarray(0, jnp.int32),
        epoch=jnp.asarray(0, jnp.int32),
    )


def end_of_epoch(cb: KerasCallbacks, plateau, params, best_params, loss, val_loss, patience, min_delta, early_stopping,
                 final=False):
    """Apply both callbacks after an epoch. Returns (callbacks, best_params, params, done).

    ``loss`` is what EarlyStopping monitors, ``val_loss`` what ReduceLROnPlateau
    monitors. ``final`` (traced): the budget ends with this epoch; the best
    weights are restored as when early stopping fires.
    """
    _, pstate = plateau.update(jax.tree.map(jnp.zeros_like, params), cb.plateau, params, value=val_loss)
    improved = loss + min_delta < cb.best_loss  # Keras: monitor_op(current - min_delta, best), min_delta negated
    best_loss = jnp.where(improved, loss, cb.best_loss)
    # Keras stores the weights at the first epoch too (best_weights is None then).
    keep = improved | (cb.epoch == 0)
    best_params = jax.tree.map(lambda new, old: jnp.where(keep, new, old), params, best_params)
    wait = jnp.where(improved, 0, cb.wait + 1)
    done = (early_stopping & (wait >= patience) & (cb.epoch > 0)) | final
    params = jax.tree.map(lambda b, p: jnp.where(done, b, p), best_params, params)
    return KerasCallbacks(pstate, best_loss, wait, cb.epoch + 1), best_params, params, done


def inner_split(problem, fraction: float, key):
    """The training entries with the lowest ``round(fraction · N)`` (at least one) of one U(0, 1)
    draw per matrix position: an entry array (bool), the same on either layout. With per-entry
    weights, among the entries of positive weight (an entry of weight 0 is not observed)."""
    M = layout.weights(problem) > 0
    score = jnp.where(M, layout.entry_uniform(problem, key, layout.dtype(problem)), 2.0)
    k = jnp.maximum(1, jnp.round(fraction * jnp.sum(M))).astype(jnp.int32)
    kth = jnp.sort(score.reshape(-1))[k - 1]
    return M & (score <= kth)


def shuffled_batches(key, problem, n_batches: int, batch_size: int, fitted=None):
    """A random order of the training entries (those of the entry array ``fitted``
    when given) cut into ``n_batches`` minibatches.

    Returns (rows, cols, values, weights, valid), each (n_batches, batch_size):
    entries past the seed's number of training entries are padding (the last
    batch is partial, as in Keras; an all-padding batch is skipped);
    ``weights`` are :func:`lrfactor.layout.weights` at the entries (1 without
    weights, 0 on padding). The order sorts one U(0, 1) draw per matrix position
    i·m + j (lrfactor.layout.entry_uniform), so it is the same on either layout.
    """
    flat = (layout.mask(problem) if fitted is None else fitted).reshape(-1)
    score = jnp.where(flat, layout.entry_uniform(problem, key, jnp.zeros(()).dtype).reshape(-1), 2.0)
    order = jnp.argsort(score)
    total = n_batches * batch_size
    order = jnp.pad(order, (0, max(0, total - order.shape[0])))[:total]
    valid = jnp.arange(total) < jnp.sum(flat)
    shape = (n_batches, batch_size)
    rows, cols, vals, w = layout.entry_coords(problem, order)
    return tuple(x.reshape(shape) for x in (rows, cols, vals, jnp.where(valid, w, 0.0))) + (valid.reshape(shape),)


def fitted_entries(problem, inner=None):
    """The entries the minibatches draw from: the training entries of positive weight (every
    training entry without weights), less the inner split ``inner`` when there is one."""
    fit = layout.weights(problem) > 0  # the mask itself without weights
    return fit if inner is None else fit & ~inner


def batch_weights(problem, fitted, w):
    """Per-entry weights of minibatch entries ``w`` divided by the mean weight over the entries
    ``fitted``, or None (unit weights) when the problem has none.

    Keras' ``sample_weight`` divides a batch's Σ w·loss by the batch size (not
    by Σ w). The same reduction on weights normalised to mean 1 over the
    fitted entries makes a batch's loss an unbiased estimate of the weighted
    mean loss Σ w·loss / Σ w that the run minimises, keeps the penalty's
    balance against it when every weight is scaled by one constant (Keras'
    raw weights would scale the data term and not the penalty), needs no
    division by a batch's own Σ w (0 for a batch of zero weights), and is the
    unweighted loss exactly when every weight is 1.
    """
    if not layout.has_weights(problem):
        return None
    mean = jnp.sum(jnp.where(fitted, layout.weights(problem), 0.0)) / jnp.sum(fitted)
    return w / mean


INNER_SEED = 0  # draws the inner split: the same entries for every seed of one problem


def make_optimizer(name: str, lr: float, momentum: float = 0.9):
    """An optax optimizer by name with an injectable learning rate.

    ``adam`` uses Keras' epsilon 1e-7; ``sgd`` is heavy-ball momentum (Keras SGD).
    Any other optax alias taking ``learning_rate`` works by name.
    """
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=lr, eps=1e-7)
    if name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum)
    fn = getattr(optax, name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"unknown optax optimizer {name!r}")
    return optax.inject_hyperparams(fn)(learning_rate=lr)


def make_minibatch_trainer(
    *,
    name: str,
    init_params: Callable,
    entry_loss: Callable,  # (params, rows, cols, V, valid, weight) -> (weighted) sum of the loss over valid entries (, aux)
    penalty: Callable,  # params -> regularization term added to every batch loss
    predict: Callable,  # (params, problem, which) -> entry array (lrfactor/layout.py)
    optimizer,
    n_batches: int,
    batch_size: int,
    base_lr: float,
    cfg,
    update_state: Optional[Callable] = None,
    fit_loss: str = "frobenius",
) -> Solver:
    """Keras-style epoch training of any model given by its per-entry loss.

    With ``update_state`` the model carries non-trainable state inside its
    params (e.g. BatchNorm running statistics): ``entry_loss`` then returns
    ``(sum of squared errors, aux)`` and after each optimizer update the params
    become ``update_state(params, aux)``, as Keras assigns the moving statistics
    in the forward pass of every training batch. That state must not enter the
    training-mode loss, so its gradient, and the optimizer's update of it, is 0.

    ``fit_loss`` (lrfactor/losses.py) is what ``entry_loss`` sums; the objective
    and Keras' ``val_loss`` are the same loss's mean plus the penalty.

    Per-entry weights (lrfactor/layout.py) reach ``entry_loss`` as its
    ``weight`` argument (None without weights): each entry's loss term times
    its weight normalised to mean 1 (:func:`batch_weights`), the batch's sum
    divided by the batch size, as Keras' ``sample_weight``. Entries of weight
    0 are left out of the minibatches, as if not observed. ``val_loss`` is
    weighted by the held-out entries' weights when there are any (Keras'
    ``validation_data`` with sample weights).
    """
    plateau = plateau_transform(cfg.plateau_factor, cfg.plateau_patience, cfg.plateau_min_delta, base_lr, cfg.min_lr)
    inner_val = getattr(cfg, "inner_val", 0.0)

    def objective(params, problem):
        return jnp.asarray(losses.data_loss(predict(params, problem, "train"), problem, fit_loss, "train") + penalty(params))

    def init(params, problem, key):
        return FirstOrderState(
            params=params,
            opt_state=optimizer.init(params),
            best_params=params,
            callbacks=init_callbacks(params, plateau),
            loss=jnp.asarray(jnp.nan, jnp.zeros(()).dtype),
            val_loss=jnp.asarray(jnp.nan, jnp.zeros(()).dtype),
            key=key,
            done=jnp.asarray(False),
            inner=inner_split(problem, inner_val, jax.random.PRNGKey(INNER_SEED)) if inner_val > 0 else None,
        )

    def step(state: FirstOrderState, problem) -> FirstOrderState:
        key, sub = jax.random.split(state.key)
        fitted = fitted_entries(problem, state.inner)
        b_rows, b_cols, b_vals, b_w, valid = shuffled_batches(sub, problem, n_batches, batch_size, fitted)
        b_w = batch_weights(problem, fitted, b_w)
        lr = base_lr * state.callbacks.plateau.scale
        hyper = state.opt_state.hyperparams
        opt_state = state.opt_state._replace(
            hyperparams={**hyper, "learning_rate": jnp.asarray(lr, hyper["learning_rate"].dtype)}
        )

        def batch(carry, xs):
            params, opt_state, loss_sum, count = carry
            rows, cols, bv, bw, bvalid = xs
            nb = jnp.sum(bvalid)

            def batch_loss(p):
                out = entry_loss(p, rows, cols, bv, bvalid, bw)
                if update_state is None:
                    return out / jnp.maximum(nb, 1) + penalty(p)
                sse, aux = out
                return sse / jnp.maximum(nb, 1) + penalty(p), aux

            if update_state is None:
                loss, grads = jax.value_and_grad(batch_loss)(params)
            else:
                (loss, aux), grads = jax.value_and_grad(batch_loss, has_aux=True)(params)
            updates, new_opt = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            if update_state is not None:
                new_params = update_state(new_params, aux)
            use = nb > 0
            params = jax.tree.map(lambda a, b: jnp.where(use, a, b), new_params, params)
            opt_state = jax.tree.map(lambda a, b: jnp.where(use, a, b), new_opt, opt_state)
            return (params, opt_state, loss_sum + jnp.where(use, loss * nb, 0.0), count + nb), None

        zero = jnp.zeros((), state.loss.dtype)
        (params, opt_state, loss_sum, count), _ = jax.lax.scan(
            batch, (state.params, opt_state, zero, zero), (b_rows, b_cols, b_vals, b_w, valid)
        )
        loss = loss_sum / count
        if state.inner is None:
            val_loss = losses.data_loss(predict(params, problem, "val"), problem, fit_loss, "val") + penalty(params)
            monitored, final = loss, False
        else:  # Keras' validation_split: val_loss on the inner split, monitored by both callbacks
            e = losses.entry_loss(predict(params, problem, "train"), layout.values(problem), fit_loss)
            w = layout.weights(problem)  # the inner split's weights (ones without weights)
            val_loss = jnp.sum(jnp.where(state.inner, w * e, 0.0)) / jnp.sum(jnp.where(state.inner, w, 0.0)) \
                + penalty(params)
            monitored, final = val_loss, state.callbacks.epoch + 1 >= cfg.steps
        callbacks, best_params, params, done = end_of_epoch(
            state.callbacks, plateau, params, state.best_params, monitored, val_loss,
            cfg.patience, cfg.min_delta, cfg.early_stopping, final,
        )
        return FirstOrderState(params, opt_state, best_params, callbacks, loss, val_loss, key, done, state.inner)

    extras = (
        ("loss", lambda s: s.loss),
        ("val_loss", lambda s: s.val_loss),
        ("lr", lambda s: s.opt_state.hyperparams["learning_rate"]),
    )
    return Solver(name=name, init_params=init_params, init=init, step=step, predict=predict,
                  objective=objective, extras=extras)


def factor_entry_loss(p: fac.Factors, rows, cols, v, valid, loss: str = "frobenius", weight=None):
    """Σ over valid entries of (Σ_k exp(A_ik + B_jk) − V_ij)², the question's embedding model
    (or of another loss of lrfactor/losses.py between the prediction and V_ij); each term
    times ``weight`` (per entry) when given."""
    pred = jnp.sum(jnp.exp(p.A[rows] + p.B[cols]), axis=-1)
    if loss == "frobenius":
        term = (pred - v) ** 2
    else:  # padding gets a harmless value: log 0 would poison the gradient through the where
        term = losses.entry_loss(pred, jnp.where(valid, v, 1.0), loss)
    if weight is not None:
        term = weight * term
    return jnp.sum(jnp.where(valid, term, 0.0))


def make_first_order(cfg, n_train_max: int) -> Solver:
    """The question's embedding model trained by an optax optimizer (adam, sgd, ...)."""
    n_batches = -(-n_train_max // cfg.batch_size)
    return make_minibatch_trainer(
        name=cfg.solver,
        init_params=lambda key, problem: fac.init_factors(key, problem, cfg.rank, cfg.init),
        entry_loss=lambda p, rows, cols, v, valid, w: factor_entry_loss(p, rows, cols, v, valid, cfg.loss, w),
        penalty=lambda p: losses.objective_penalty(p, cfg.l2, cfg.reg),
        predict=lambda p, problem, which="train": layout.predictions(problem, p, which),
        optimizer=make_optimizer(cfg.optimizer, cfg.lr, cfg.momentum),
        n_batches=n_batches,
        batch_size=cfg.batch_size,
        base_lr=cfg.lr,
        cfg=cfg,
        fit_loss=cfg.loss,
    )

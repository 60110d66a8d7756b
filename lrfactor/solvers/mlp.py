"""The question's second model: concatenated embeddings → Dense/ELU/BatchNorm stack → exp.

The model (the Keras code at the end of the question), for an entry (i, j):

    x = [P_i ; S_j]                                   P (n, r), S (m, r) embeddings, l2 on both
    x ← BatchNorm(elu(x K_l + b_l))   for each hidden width d_l
    V̂_ij = exp(x k + c)                               Dense(1, activation='exponential')

The hidden widths interpolate from 2r down to 1 in ``n_steps + 2`` points, on a
log or a linear scale, rounded (numpy's round half to even), made strictly
descending from the end and trimmed of both ends: exactly the question's loop,
:func:`mlp_widths`. With ``n_steps = 0`` there is no hidden layer.

Keras defaults throughout: embeddings U(−0.05, 0.05) (the ``keras`` init of
:func:`lrfactor.factors.init_factors`, the same draw as every solver), Dense
kernels glorot_uniform, zero biases, BatchNorm γ = 1, β = 0, momentum 0.99,
ε = 1e-3. In training BatchNorm normalises with the batch's mean and biased
variance over the valid entries of the minibatch and moves its running
statistics by 1 % towards them (Keras' non-fused path, which the question's
3-D ``(batch, 1, features)`` tensors take); at evaluation it uses the running
statistics. The loss of a batch is its MSE plus ``l2·(ΣP² + ΣS²)`` (the
question's ``l2(1e-6)`` embedding regularizers; with per-entry weights, the
weighted squared errors, as for the factor model:
lrfactor/solvers/first_order.py); Adam at lr 3e-3 with the
question's EarlyStopping / ReduceLROnPlateau, through
:func:`lrfactor.solvers.first_order.make_minibatch_trainer` (one step = one
epoch), which carries the running statistics inside the params.

**Scoring.** The model has no factors. Its prediction is the dense (n, m)
matrix V̂ evaluated in inference mode (running BatchNorm statistics), and like
every solver it is scored by the masked MSE of V̂ on the training and the
validation masks (``train_mse``, ``val_mse`` in history.npz, no penalty). The
run writes V̂ to ``predictions.npz`` (key ``P``, shape (S, n, m)) instead of
``factors.npz``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lrfactor import factors as fac
from lrfactor.problems import Problem
from lrfactor.solvers.base import Solver
from lrfactor.solvers.first_order import make_minibatch_trainer, make_optimizer

DIMS = ("log", "linear")
BN_MOMENTUM = 0.99  # Keras BatchNormalization default
BN_EPS = 1e-3  # Keras BatchNormalization default


class Dense(NamedTuple):
    kernel: jax.Array  # (d_in, d_out)
    bias: jax.Array  # (d_out,)


class BatchNorm(NamedTuple):
    gamma: jax.Array  # (d,) scale
    beta: jax.Array  # (d,) offset


class BNStats(NamedTuple):
    mean: jax.Array  # (d,) running mean (non-trainable)
    var: jax.Array  # (d,) running variance (non-trainable)


class MLPParams(NamedTuple):
    prod: jax.Array  # (n, r) product embeddings
    store: jax.Array  # (m, r) store embeddings
    hidden: tuple  # Dense per hidden layer, first kernel (2r, d_1)
    norms: tuple  # BatchNorm per hidden layer
    out: Dense  # kernel (d_last, 1), exponential activation
    stats: tuple  # BNStats per hidden layer: running statistics, updated outside the gradient


def mlp_widths(in_dim: int, n_steps: int, dims: str = "log") -> list[int]:
    """Hidden widths of the question's model, with its own rounding and de-duplication."""
    if dims == "log":
        d = np.exp(np.linspace(np.log(in_dim), 0, n_steps + 2)).round().astype(int)
    elif dims == "linear":
        d = np.linspace(in_dim, 1, n_steps + 2).round().astype(int)
    else:
        raise ValueError(f"unknown mlp dims {dims!r}; known: {', '.join(DIMS)}")
    if n_steps == 0:
        return []
    for i in range(len(d) - 1, 0, -1):  # strictly descending, from the end
        if d[i - 1] <= d[i]:
            d[i - 1] = d[i] + 1
    return [int(x) for x in d[1:-1]]


def glorot_uniform(key, fan_in: int, fan_out: int, dtype):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, (fan_in, fan_out), dtype, -limit, limit)


def init_mlp(key, problem: Problem, rank: int, widths, scheme: str = "keras") -> MLPParams:
    """Keras' default initial parameters (embeddings drawn as every solver's log-factors)."""
    dtype = problem.V.dtype
    ke, kd = jax.random.split(key)
    emb = fac.init_factors(ke, problem, rank, scheme)
    sizes = [2 * rank, *widths, 1]
    keys = jax.random.split(kd, len(sizes) - 1)
    layers = [Dense(glorot_uniform(k, a, b, dtype), jnp.zeros((b,), dtype)) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
    norms = tuple(BatchNorm(jnp.ones((d,), dtype), jnp.zeros((d,), dtype)) for d in widths)
    stats = tuple(BNStats(jnp.zeros((d,), dtype), jnp.ones((d,), dtype)) for d in widths)
    return MLPParams(emb.A, emb.B, tuple(layers[:-1]), norms, layers[-1], stats)


def _dense_on_concat(layer: Dense, xp, xs):
    """[xp ; xs] K + b without forming the concatenation (xp, xs may broadcast)."""
    r = xp.shape[-1]
    return xp @ layer.kernel[:r] + xs @ layer.kernel[r:] + layer.bias


def _masked_moments(z, valid):
    """Mean and biased variance over all leading axes, counting valid entries only."""
    w = valid.astype(z.dtype)[..., None]
    count = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(w * z, axis=tuple(range(z.ndim - 1))) / count
    var = jnp.sum(w * (z - mean) ** 2, axis=tuple(range(z.ndim - 1))) / count
    return mean, var


def forward(params: MLPParams, xp, xs, *, valid=None, train: bool = False):
    """Predictions for embedding rows xp (..., r), xs (..., r) (broadcasting).

    ``train=True`` normalises with the statistics of the entries marked
    ``valid`` and also returns the moved running statistics; otherwise the
    running statistics are used and the second output is None.
    """
    new_stats = []
    x = None
    for l, (dense, bn, st) in enumerate(zip(params.hidden, params.norms, params.stats)):
        z = _dense_on_concat(dense, xp, xs) if l == 0 else x @ dense.kernel + dense.bias
        z = jax.nn.elu(z)
        if train:
            mean, var = _masked_moments(z, valid)
            new_stats.append(BNStats(BN_MOMENTUM * st.mean + (1 - BN_MOMENTUM) * mean,
                                     BN_MOMENTUM * st.var + (1 - BN_MOMENTUM) * var))
        else:
            mean, var = st.mean, st.var
        x = bn.gamma * (z - mean) / jnp.sqrt(var + BN_EPS) + bn.beta
    out = _dense_on_concat(params.out, xp, xs) if x is None else x @ params.out.kernel + params.out.bias
    pred = jnp.exp(out[..., 0])
    return pred, (tuple(new_stats) if train else None)


def predict(params: MLPParams, problem: Problem, which: str = "train"):
    """Dense (n, m) prediction in inference mode (running BatchNorm statistics): an
    entry array of the dense layout, for either mask (dense problems only)."""
    del problem, which
    pred, _ = forward(params, params.prod[:, None, :], params.store[None, :, :])
    return pred


def entry_loss(params: MLPParams, rows, cols, v, valid, weight=None):
    """(Σ over valid entries of (V̂_ij − V_ij)², each times ``weight`` when given; moved running
    statistics), training mode. The BatchNorm statistics are those of the batch's entries,
    unweighted, as Keras computes them whatever the sample weights."""
    pred, stats = forward(params, params.prod[rows], params.store[cols], valid=valid, train=True)
    term = (pred - v) ** 2
    if weight is not None:
        term = weight * term
    return jnp.sum(jnp.where(valid, term, 0.0)), stats


def embedding_penalty(params: MLPParams):
    """ΣP² + ΣS²: Keras' l2 regularizer on both embedding tables."""
    return jnp.sum(params.prod**2) + jnp.sum(params.store**2)


def make_mlp(cfg, n_train_max: int) -> Solver:
    """The question's MLP (``cfg.mlp_steps``, ``cfg.mlp_dims``) trained Keras-style."""
    widths = mlp_widths(2 * cfg.rank, cfg.mlp_steps, cfg.mlp_dims)
    return make_minibatch_trainer(
        name="mlp",
        init_params=lambda key, problem: init_mlp(key, problem, cfg.rank, widths, cfg.init),
        entry_loss=entry_loss,
        penalty=lambda p: cfg.l2 * embedding_penalty(p),
        predict=predict,
        optimizer=make_optimizer(cfg.optimizer or "adam", cfg.lr, cfg.momentum),
        n_batches=-(-n_train_max // cfg.batch_size),
        batch_size=cfg.batch_size,
        base_lr=cfg.lr,
        cfg=cfg,
        update_state=lambda p, stats: p._replace(stats=stats),
    )

"""Classical masked NMF baselines: HALS and Lee–Seung multiplicative updates.

These are what a practitioner would reach for instead of a gradient-based fit
(docs/design.md). Both work on the non-negative factors W (n × r), H (m × r)
directly, floored at ε > 0 so that the log-factors ``A = log W``, ``B = log H``
that every solver reports stay finite. M is the training mask; entries off M
never enter an update (``jnp.where``, never a product with the mask, so even a
NaN off the mask cannot leak in).

**Masked HALS** (hierarchical alternating least squares; Cichocki & Phan 2009,
Gillis & Glineur 2012) with the residual E = M ∘ (V − W Hᵀ) kept up to date in
place. For each column k in turn,

    w_k ← max(ε, w_k + (E h_k) ⊘ (M (h_k ∘ h_k))),     E ← E − M ∘ ((w_k' − w_k) h_kᵀ)

then the same for every h_k with Eᵀ and W. Row i of w_k decouples from the
others, and the update is the exact minimiser over [ε, ∞) of the 1-D quadratic
Σ_j M_ij (E_ij + w_ik h_jk − w h_jk)², so the masked MSE never increases.

**Multiplicative updates** (Lee & Seung 2001), masked, with the floor
max(ε, ·) of Gillis & Glineur (2012), which keeps their monotonicity:

    frobenius:  W ← max(ε, W ∘ [(M∘V) H] ⊘ [(M∘W Hᵀ) H])
    kl:         W ← max(ε, W ∘ [(M∘V⊘W Hᵀ) H] ⊘ [M H])

and the same for H with the roles swapped (Frobenius: masked MSE; KL: the mean
generalized KL divergence of :func:`lrfactor.losses.kl_divergence`). Each is a
majorise–minimise step on a separable auxiliary function; the floor projects
each 1-D minimiser onto [ε, ∞), which still lowers the auxiliary function.

**The factor penalty** reg·(ΣW² + ΣH²) (``reg``) keeps both exact. HALS: the
1-D quadratic gains reg·w², and its minimiser over [ε, ∞) is

    w_k ← max(ε, (E h_k + w_k ∘ M (h_k ∘ h_k)) ⊘ (M (h_k ∘ h_k) + N·reg))      (N = |Ω|)

MU: the penalty's curvature is added to the majoriser. Frobenius (its
quadratic majoriser with the diagonal [(M∘W Hᵀ) H + N·reg·W] ⊘ W):

    W ← max(ε, W ∘ [(M∘V) H] ⊘ [(M∘W Hᵀ) H + N·reg·W])

KL (Lee–Seung's separable majoriser plus N·reg·w², a quadratic in each w
whose positive root is taken):

    W ← max(ε, 2 W ∘ a ⊘ (b + sqrt(b² + 8 N·reg·W ∘ a))),   a = (M∘V⊘W Hᵀ) H,  b = M H

each the exact minimiser of a majoriser, so the objective still never
increases.

**Per-entry weights** Q (lrfactor/layout.py) replace the 0/1 mask M by real
values in every formula above: the weighted objective Σ Q·φ / Σ Q is the
masked objective with the mask Q, and each derivation goes through with a
real-valued mask term by term (HALS: Σ_j Q_ij (E_ij + w_ik h_jk − w h_jk)² is
still a 1-D quadratic in w, minimised at w_ik + ((Q∘E) h_k)_i / (Q (h_k ∘
h_k))_i; MU: the auxiliary functions are sums over the entries with the
factor Q_ij). N = |Ω| becomes Σ Q. An entry of weight 0 is exactly an entry
off the mask.

One ``step`` is one full sweep: every column of W, then every column of H
(HALS), or W then H (MU). A seed is ``done`` when the relative decrease of its
objective over a sweep falls to ``ftol`` or below (a stall, or rounding noise at an
exact fit). Neither method has an L2 term on the log-parameters; ``l2`` must be 0.

Both run on either problem layout through the entry primitives of
lrfactor/layout.py (E is an entry array; ``M (h_k ∘ h_k)`` a row sum).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lrfactor import factors as fac
from lrfactor import layout, losses
from lrfactor.factors import Factors
from lrfactor.solvers.base import Solver

MU_LOSSES = ("frobenius", "kl")  # the losses with multiplicative updates here


class HALSState(NamedTuple):
    params: Factors  # log-factors A = log W (n, r), B = log H (m, r)
    W: jax.Array  # (n, r) non-negative factor, entries >= eps
    H: jax.Array  # (m, r) non-negative factor, entries >= eps
    E: jax.Array  # entry array of the residual M ∘ (V − W Hᵀ), updated in place per column
    loss: jax.Array  # () masked MSE (+ reg·(ΣW² + ΣH²)) at (W, H)
    done: jax.Array  # () bool: relative decrease over the last sweep <= ftol


class MUState(NamedTuple):
    params: Factors  # log-factors A = log W (n, r), B = log H (m, r)
    W: jax.Array  # (n, r) non-negative factor, entries >= eps
    H: jax.Array  # (m, r) non-negative factor, entries >= eps
    loss: jax.Array  # () the objective minimised (masked MSE or mean generalized KL, + the penalty) at (W, H)
    done: jax.Array  # () bool: relative decrease over the last sweep <= ftol


def _check(l2: float, eps: float, reg: float = 0.0):
    if l2 != 0.0:
        raise ValueError(f"hals and mu have no penalty on the log-factors: l2 must be 0, got {l2}")
    if reg < 0:
        raise ValueError(f"reg must be >= 0, got {reg}")
    if not eps > 0:
        raise ValueError(f"the factor floor eps must be > 0, got {eps}")


def _start(params: Factors, eps: float):
    W, H = fac.nonneg(params)
    return jnp.maximum(W, eps), jnp.maximum(H, eps)


def _stalled(old, new, ftol: float):
    """Relative decrease (old − new)/old <= ftol (also true for a non-finite loss)."""
    return ~((old - new) > ftol * jnp.abs(old))


def masked_residual(W, H, problem):
    """E = M ∘ (V − W Hᵀ), exactly 0 off the training entries (an entry array)."""
    return jnp.where(layout.mask(problem), layout.values(problem) - layout.entry_products(problem, W, H), 0.0)


def _hals_loss(E, problem):
    """The (weighted) mean squared error from the residual entry array E (0 off the training entries)."""
    if layout.has_weights(problem):
        return layout.weighted_mean(problem, E**2)
    return jnp.sum(E**2) / layout.count(problem)


def _penalty(W, H, reg: float):
    return reg * (jnp.sum(W**2) + jnp.sum(H**2)) if reg else 0.0


def hals_half_sweep(W, H, E, problem, eps: float, reg: float = 0.0):
    """Update every column of W in turn (H, E given, E = M ∘ (V − W Hᵀ)).

    Returns the new (W, E). The H half-sweep is the same call on the transposes.
    With ``reg`` each update minimises the masked MSE + reg·ΣW² instead. With
    per-entry weights (``Mf`` below is then the weights, not the mask) each
    update minimises the weighted squared error instead.
    """
    mask = layout.mask(problem)
    Mf = layout.weights(problem)  # the mask as floats without weights
    weighted = layout.has_weights(problem)
    Nreg = layout.weight_sum(problem).astype(W.dtype) * reg

    def column(carry, k):
        W, E = carry
        w = jax.lax.dynamic_index_in_dim(W, k, axis=1, keepdims=False)  # (n,)
        h = jax.lax.dynamic_index_in_dim(H, k, axis=1, keepdims=False)  # (m,)
        hh = layout.row_sums(problem, Mf, h * h)
        Eh = layout.row_sums(problem, Mf * E if weighted else E, h)
        if reg:
            new = jnp.maximum(eps, (Eh + w * hh) / (hh + Nreg))
        else:
            new = jnp.maximum(eps, w + Eh / hh)
        E = E - jnp.where(mask, layout.entry_products(problem, new - w, h), 0.0)
        W = jax.lax.dynamic_update_index_in_dim(W, new, k, axis=1)
        return (W, E), None

    (W, E), _ = jax.lax.scan(column, (W, E), jnp.arange(W.shape[1]))
    return W, E


def make_hals(*, rank: int, loss: str = "frobenius", init: str = "keras", eps: float = 1e-12,
              ftol: float = 0.0, l2: float = 0.0, reg: float = 0.0, name: str = "hals") -> Solver:
    """Masked HALS on the masked MSE (+ reg·(ΣW² + ΣH²)) (see the module docstring)."""
    _check(l2, eps, reg)
    if loss != "frobenius":
        raise ValueError(f"hals minimises the masked MSE only (loss frobenius), got loss {loss!r}; use mu for kl")
    scheme = init

    def objective(params: Factors, problem):
        return losses.objective(params, problem, "frobenius", 0.0, reg)

    def init_state(params: Factors, problem, key):
        del key
        W, H = _start(params, eps)
        E = masked_residual(W, H, problem)
        loss = _hals_loss(E, problem) + _penalty(W, H, reg)
        return HALSState(fac.from_nonneg(W, H), W, H, E, loss, jnp.asarray(False))

    def step(state: HALSState, problem) -> HALSState:
        W, E = hals_half_sweep(state.W, state.H, state.E, problem, eps, reg)
        pt = layout.transpose(problem)
        H, Et = hals_half_sweep(state.H, W, layout.transpose_entries(problem, E), pt, eps, reg)
        E = layout.transpose_entries(pt, Et)
        loss = _hals_loss(E, problem) + _penalty(W, H, reg)
        done = _stalled(state.loss, loss, ftol)
        return HALSState(fac.from_nonneg(W, H), W, H, E, loss, done)

    return Solver(
        name=name,
        init_params=lambda key, problem: fac.init_factors(key, problem, rank, scheme),
        init=init_state,
        step=step,
        predict=lambda p, problem, which="train": layout.predictions(problem, p, which),
        objective=objective,
        extras=(("at_floor", lambda s: _floor_fraction(s.W, s.H, eps)),),
    )


def _floor_fraction(W, H, eps):
    """Share of factor entries sitting at the floor ε (dead entries)."""
    return (jnp.sum(W <= eps) + jnp.sum(H <= eps)) / (W.size + H.size)


def mu_update(W, H, problem, loss: str, eps: float, reg: float = 0.0):
    """One multiplicative update of W with H fixed (the transposed problem for H)."""
    V, mask = layout.values(problem), layout.mask(problem)
    P = layout.entry_products(problem, W, H)
    Mf = layout.weights(problem)  # the mask as floats without weights
    # Σ_j w_ij F_ij H_j: the weights, where there are any, multiply every row sum
    rs = (lambda F: layout.row_sums(problem, Mf * F, H)) if layout.has_weights(problem) else \
        (lambda F: layout.row_sums(problem, F, H))
    Nreg = layout.weight_sum(problem).astype(W.dtype) * reg
    if loss == "frobenius":
        num = rs(jnp.where(mask, V, 0.0))
        den = rs(jnp.where(mask, P, 0.0))
        if reg:
            den = den + Nreg * W
    elif loss == "kl":
        num = rs(jnp.where(mask, V / jnp.where(mask, P, 1.0), 0.0))
        den = layout.row_sums(problem, Mf, H)
        if reg:  # the positive root of 2·N·reg·w² + b·w − W·a = 0
            a = W * num
            return jnp.maximum(eps, 2 * a / (den + jnp.sqrt(den**2 + 8 * Nreg * a)))
    else:
        raise ValueError(f"mu has updates for {', '.join(MU_LOSSES)}, not loss {loss!r}")
    return jnp.maximum(eps, W * num / den)


def make_mu(*, rank: int, loss: str = "frobenius", init: str = "keras", eps: float = 1e-12,
            ftol: float = 0.0, l2: float = 0.0, reg: float = 0.0, name: str = "mu") -> Solver:
    """Masked Lee–Seung multiplicative updates for ``loss`` (frobenius or kl), + reg·(ΣW² + ΣH²)."""
    _check(l2, eps, reg)
    if loss not in MU_LOSSES:
        raise ValueError(f"mu has multiplicative updates for {', '.join(MU_LOSSES)}, not loss {loss!r}")
    scheme = init

    def objective(params: Factors, problem):
        return losses.objective(params, problem, loss, 0.0, reg)

    def _loss_nonneg(W, H, problem):
        return losses.data_loss(layout.entry_products(problem, W, H), problem, loss) + _penalty(W, H, reg)

    def init_state(params: Factors, problem, key):
        del key
        W, H = _start(params, eps)
        return MUState(fac.from_nonneg(W, H), W, H, _loss_nonneg(W, H, problem), jnp.asarray(False))

    def step(state: MUState, problem) -> MUState:
        W = mu_update(state.W, state.H, problem, loss, eps, reg)
        H = mu_update(state.H, W, layout.transpose(problem), loss, eps, reg)
        new = _loss_nonneg(W, H, problem)
        return MUState(fac.from_nonneg(W, H), W, H, new, _stalled(state.loss, new, ftol))

    return Solver(
        name=name,
        init_params=lambda key, problem: fac.init_factors(key, problem, rank, scheme),
        init=init_state,
        step=step,
        predict=lambda p, problem, which="train": layout.predictions(problem, p, which),
        objective=objective,
        extras=(("at_floor", lambda s: _floor_fraction(s.W, s.H, eps)),),
    )


def numpy_hals(W, H, V, M, sweeps, eps=1e-12):
    """Plain-numpy masked HALS, column by column, the residual kept in place: the
    reference the jitted solver is tested and benchmarked against."""
    W, H = W.copy(), H.copy()
    Mf = M.astype(float)
    E = np.where(M, V - W @ H.T, 0.0)
    for _ in range(sweeps):
        for k in range(W.shape[1]):
            new = np.maximum(eps, W[:, k] + (E @ H[:, k]) / (Mf @ H[:, k] ** 2))
            E -= Mf * np.outer(new - W[:, k], H[:, k])
            W[:, k] = new
        for k in range(H.shape[1]):
            new = np.maximum(eps, H[:, k] + (E.T @ W[:, k]) / (Mf.T @ W[:, k] ** 2))
            E -= Mf * np.outer(W[:, k], new - H[:, k])
            H[:, k] = new
    return W, H

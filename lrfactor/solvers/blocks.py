"""Row/column block algebra of the Gauss-Newton matrix of log-parameterized NMF.

With W = exp(X) (n × r), H = exp(Y) (m × r), the prediction P_ij = W_i · H_j
and u_ij = W_i ∘ H_j = ∂P_ij/∂X_i = ∂P_ij/∂Y_j. For a loss Σ_Ω w_ij φ(P_ij, V_ij)
(w: per-entry weights, 1 without) with ψ = w ∂φ/∂P and Gauss-Newton (Fisher)
weight ω (both entry arrays, zero off the training entries; :func:`psi_omega`):

    g_X[i] = Σ_j ψ_ij u_ij + 2·pen·X_i + 2·fpen·W_i²     (g_Y likewise with H)
    U_i    = Σ_j ω_ij u_ij u_ijᵀ  (n, r, r)       S_j    = Σ_i ω_ij u_ij u_ijᵀ  (m, r, r)
    C_ij   = ω_ij u_ij u_ijᵀ (the coupling; never formed)
    diag   2·pen + 2·fpen·W² (and H²): the penalties' Gauss-Newton terms, added
           to the damped diagonal (:func:`factor_penalty_diagonal`)
    J v    = (W∘v_X) Hᵀ + W (H∘v_Y)ᵀ at the entries
    (C y)_i  = W_i ∘ Σ_j ω_ij (W_i · (H_j ∘ y_j)) H_j
    (Cᵀ x)_j = H_j ∘ Σ_i ω_ij ((W_i ∘ x_i) · H_j) W_i

The penalties are pen·(ΣX² + ΣY²) (the log-space L2) and fpen·(ΣW² + ΣH²)
(on the factors). The second, written as the sum of squares ½ Σ (√(2·fpen)·W)²,
has the Jacobian diag(√(2·fpen)·W) in log space (∂W/∂X = W), so its
Gauss-Newton term is the diagonal 2·fpen·W²: it fits the r × r blocks U_i,
S_j without changing their structure. (Its exact Hessian, 4·fpen·W², is twice
that; the Gauss-Newton form keeps the matrix a JᵀJ.)

Every sum runs through the entry primitives of lrfactor/layout.py, so each
function works on dense masks and on coordinate lists alike (``prob`` is the
problem oriented as X, Y are: transposed when the columns are eliminated).
"""

from __future__ import annotations

import jax.numpy as jnp

from lrfactor import layout


def psi_omega(P, V, weight, loss: str):
    """ψ = w·∂φ/∂P and the Gauss-Newton (Fisher) weight ω = w·∂²φ/∂P² (its expectation
    for kl), both 0 where w = 0.

    ``weight``: the entry array of the training entries' weights w
    (:func:`lrfactor.layout.weights`: 0 off the training entries, 1 on them
    when the problem has no weights; a boolean mask is unit weights). The
    weighted objective Σ w·φ has the gradient Σ w ψ u and the Gauss-Newton
    matrix Σ w ω u uᵀ, so the weights enter here and nowhere else: every block,
    Schur solve and predicted decrease built on ψ and ω follows. An entry of
    weight 0 is exactly an entry off the mask.

    frobenius φ = ½(P − V)²: ψ = P − V, ω = 1; kl φ = P − V log P: ψ = 1 − V/P,
    ω = 1/P (Fisher scoring: the expected Hessian under the Poisson model);
    log φ = ½(log P − log V)²: ψ = (log P − log V)/P, ω = 1/P² (exact
    Gauss-Newton: the residual log P − log V has the derivative 1/P)."""
    w = weight.astype(P.dtype)
    mask = w > 0
    if loss == "frobenius":
        return jnp.where(mask, w * (P - V), 0.0), w
    Ps = jnp.where(mask, P, 1.0)
    if loss == "kl":
        return jnp.where(mask, w * (1.0 - V / Ps), 0.0), jnp.where(mask, w / Ps, 0.0)
    if loss == "log":
        Vs = jnp.where(mask, V, 1.0)
        return jnp.where(mask, w * (jnp.log(Ps) - jnp.log(Vs)) / Ps, 0.0), jnp.where(mask, w / Ps**2, 0.0)
    raise ValueError(f"unknown loss {loss!r}")


def gradient(prob, W, H, psi, X, Y, pen, fpen=None):
    """(g_X, g_Y) of Σ_Ω φ + pen·(ΣX² + ΣY²) + fpen·(ΣW² + ΣH²) (fpen None: no such term)."""
    gX = layout.row_sums(prob, psi, H) * W + 2 * pen * X
    gY = layout.col_sums(prob, psi, W) * H + 2 * pen * Y
    if fpen is not None:
        gX, gY = gX + 2 * fpen * W**2, gY + 2 * fpen * H**2
    return gX, gY


def factor_penalty_diagonal(W, H, fpen):
    """The Gauss-Newton term of fpen·(ΣW² + ΣH²) in log space: 2·fpen·W² (n, r), 2·fpen·H² (m, r)."""
    return 2 * fpen * W**2, 2 * fpen * H**2


def row_blocks(prob, W, H, omega):
    """Diagonal row blocks of JᵀΩJ: U_i = Σ_j ω_ij u_ij u_ijᵀ, (n, r, r)."""
    return layout.row_gram(prob, omega, H) * W[:, :, None] * W[:, None, :]


def col_blocks(prob, W, H, omega):
    """Diagonal column blocks of JᵀΩJ: S_j = Σ_i ω_ij u_ij u_ijᵀ, (m, r, r)."""
    return layout.col_gram(prob, omega, W) * H[:, :, None] * H[:, None, :]


def row_diagonal(prob, W, H, omega):
    """The diagonals of the row blocks U_i, (n, r): Σ_j ω_ij W_i² ∘ H_j², one sum
    over the entries instead of the r × r blocks."""
    return layout.row_sums(prob, omega, H**2) * W**2


def col_diagonal(prob, W, H, omega):
    """The diagonals of the column blocks S_j, (m, r): Σ_i ω_ij W_i² ∘ H_j²."""
    return layout.col_sums(prob, omega, W**2) * H**2


def jvp(prob, W, H, vX, vY):
    """J v = (W∘v_X) Hᵀ + W (H∘v_Y)ᵀ at the training entries (an entry array)."""
    return layout.entry_products(prob, W * vX, H) + layout.entry_products(prob, W, H * vY)


def couple(prob, W, H, omega, y):
    """C y (n, r)."""
    return layout.row_sums(prob, omega * layout.entry_products(prob, W, H * y), H) * W


def couple_t(prob, W, H, omega, x):
    """Cᵀ x (m, r)."""
    return layout.col_sums(prob, omega * layout.entry_products(prob, W * x, H), W) * H


def gn_matvec(prob, W, H, omega, dX, dY, vX, vY):
    """(JᵀΩJ + diag(dX, dY)) v, matrix-free, O(|Ω| r)."""
    Jv = omega * jvp(prob, W, H, vX, vY)
    return layout.row_sums(prob, Jv, H) * W + dX * vX, layout.col_sums(prob, Jv, W) * H + dY * vY


def add_diag(blocks, d):
    """blocks + diag(d) for a batch of r × r blocks and d (…, r)."""
    r = blocks.shape[-1]
    return blocks + d[..., :, None] * jnp.eye(r, dtype=blocks.dtype)


def chol_apply(Linv, b):
    """(L Lᵀ)⁻¹ b = L⁻ᵀ (L⁻¹ b), block by block, from the inverses L⁻¹ of Cholesky factors."""
    return jnp.einsum("iba,ib->ia", Linv, jnp.einsum("iab,ib->ia", Linv, b))


def reduced_apply(prob, W, H, omega, Linv, dY, y):
    """R y for the reduced matrix R = S' − Cᵀ U'⁻¹ C, S' = S + diag(dY), matrix-free.

    S' y and Cᵀ (U'⁻¹ C y) are both column sums of ω times an entry array
    against W, so they share one: with e₁ = (W (H∘y)ᵀ) and e₂ = ((W∘x) Hᵀ) at
    the entries, x = U'⁻¹ C y,

        R y = H ∘ colsums(ω (e₁ − e₂), W) + dY ∘ y,   C y = W ∘ rowsums(ω e₁, H)

    four sweeps over the entries and no S_j formed (``Linv``: the inverses of
    the Cholesky factors of U'_i).
    """
    e1 = layout.entry_products(prob, W, H * y)
    x = chol_apply(Linv, layout.row_sums(prob, omega * e1, H) * W)
    e2 = layout.entry_products(prob, W * x, H)
    return layout.col_sums(prob, omega * (e1 - e2), W) * H + dY * y


def jacobi_blocks(prob, W, H, omega, Uinv, dY):
    """Diagonal blocks of the reduced matrix R = S' − Cᵀ U'⁻¹ C, (m, r, r):

        R_jj = diag(dY_j) + Σ_i (ω_ij − q_ij) u_ij u_ijᵀ
             = diag(dY_j) + (Σ_i (ω_ij − q_ij) W_i W_iᵀ) ∘ H_j H_jᵀ,
        q_ij = ω_ij² u_ijᵀ U'_i⁻¹ u_ij = ω_ij² H_jᵀ (U'_i⁻¹ ∘ W_i W_iᵀ) H_j

    (C_ij = ω_ij u_ij u_ijᵀ has rank one, so each entry contributes one scalar;
    S_j and the correction share one sweep over the entries, and ω − q ≥ 0
    since U'_i ⪰ ω_ij u_ij u_ijᵀ). Ceres' SCHUR_JACOBI preconditioner.
    """
    q = omega**2 * layout.entry_quad(prob, Uinv * W[:, :, None] * W[:, None, :], H)
    return add_diag(layout.col_gram(prob, omega - q, W) * H[:, :, None] * H[:, None, :], dY)

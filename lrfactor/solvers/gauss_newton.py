"""Structured damped Gauss-Newton / Levenberg-Marquardt for log-parameterized NMF.

Objective (scaled so that its Gauss-Newton form is a plain sum of squares)::

    F(A, B) = Σ_Ω φ(P_ij, V_ij) + c·l2·(ΣA² + ΣB²),   P = exp(A) exp(B)ᵀ
    φ = ½(P − V)²            (frobenius, c = |Ω|/2: F = c·MSE + ...)
    φ = P − V log P + ...    (kl,        c = |Ω|:   F = c·KL  + ...)

With ψ = ∂φ/∂P and the Fisher weight ω (1 for frobenius, 1/P for kl — Fisher
scoring), and u_ij = W_i ∘ H_j = ∂P_ij/∂A_i = ∂P_ij/∂B_j, the gradient and the
Gauss-Newton matrix are

    g_A[i] = Σ_j ψ_ij u_ij + 2c·l2·A_i,     U_i = Σ_j ω_ij u_ij u_ijᵀ     (n blocks r×r)
    g_B[j] = Σ_i ψ_ij u_ij + 2c·l2·B_j,     S_j = Σ_i ω_ij u_ij u_ijᵀ     (m blocks r×r)
    C_ij   = ω_ij u_ij u_ijᵀ                                                (coupling)

the bipartite structure of bundle adjustment (DESIGN.md §2). The damped system
(JᵀΩJ + 2c·l2·I + λD) Δ = −g is solved by eliminating the larger side (A: rows):

    (S' − Cᵀ U'⁻¹ C) ΔB = −g_B + Cᵀ U'⁻¹ g_A,      ΔA = U'⁻¹ (−g_A − C ΔB).

The Schur product is formed without the (n r × m r) coupling matrix: with
Y_ij = L_i⁻¹ u_ij (L_i the Cholesky factor of U'_i),

    (Cᵀ U'⁻¹ C)[(j,a),(k,c)] = H_ja H_kc Σ_i W_ia W_ic · ω_ij ω_ik (Y_ij · Y_ik)

i.e. K_ijk = ω_ij ω_ik (Y_ij · Y_ik) for the m(m+1)/2 pairs j ≤ k, then one
(m(m+1)/2 × n) @ (n × r(r+1)/2) product with the pairs W_ia W_ic, a ≤ c:
n m² (r + r(r+1)/2) flops instead of n m² r³.

Three methods share this machinery (Hong, Zach & Fitzgibbon, CVPR 2017):

- ``joint``: Levenberg-Marquardt on (A, B) jointly, both blocks damped.
- ``joint_epi``: the joint step followed by embedded point iterations, i.e. a
  few Gauss-Newton iterations on the rows of A with B fixed.
- ``varpro``: variable projection. A is kept at (an accurate approximation of)
  its optimum A*(B); the step damps B only (the reduced Gauss-Newton system of
  the projected cost F(A*(B), B), Wiberg's approximation), then A is re-solved
  by the row iterations. In log space each row is a small nonlinear
  least-squares problem (r unknowns): nested Wiberg (Strelow 2012).

Damping follows Nielsen's strategy as in Ceres: gain ratio ρ = actual/predicted
decrease; accepted steps shrink λ by max(1/3, 1 − (2ρ−1)³), rejected ones
multiply it by ν (doubling). D is I (Levenberg) or diag(JᵀΩJ) clamped to
[min_diag, max_diag] (Marquardt; Ceres' clamp). In log space Marquardt scaling
lets weak components take wild steps (DESIGN.md §2); Levenberg is the default.

With ``backtrack``, a rejected step is not simply thrown away: the objective
at 1/2, 1/4 and 1/8 of it costs three function evaluations against one
factorisation, and the best of them is taken when it passes the same gain
test against the model's decrease at that fraction (λ still doubles). From
the question's blind start it cuts the iterations to HALS' 10,000-sweep fit
on seeds 0–3 from 74/45/61/66 to 45/37/30/54 (results/bench).

After every accepted step the gauge (A[:,k] + c_k, B[:,k] − c_k), which leaves
W Hᵀ unchanged, is set to minimise ΣA² + ΣB²: neutral without an L2 term, a
strict decrease of the penalty with one.

A rejected step returns the previous state untouched (``jnp.where`` on whole
leaves, never a blend by multiplication).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from lrfactor import factors as fac
from lrfactor import losses
from lrfactor.factors import Factors
from lrfactor.problems import Problem
from lrfactor.solvers.base import Solver

METHODS = ("varpro", "joint", "joint_epi")
DAMPINGS = ("levenberg", "marquardt", "sqrt")
MIN_DIAG, MAX_DIAG = 1e-6, 1e32  # Ceres' clamp of the Marquardt diagonal
BACKTRACK = (0.5, 0.25, 0.125)  # fractions of a rejected step tried with ``backtrack``
WILD = 10.0  # a full step that multiplies F by more than this is not backtracked


class GNState(NamedTuple):
    params: Factors  # log-factors A (n, r), B (m, r)
    F: jax.Array  # () the scaled objective at params
    lam: jax.Array  # () damping λ
    nu: jax.Array  # () Nielsen's growth factor for λ after a rejection
    accepted: jax.Array  # () bool: whether the last step was accepted
    n_accepted: jax.Array  # () int: accepted steps so far
    grad_inf: jax.Array  # () max |g| at params
    rho: jax.Array  # () gain ratio of the last step (actual / predicted decrease)
    done: jax.Array  # () bool: a stopping test fired


# ----------------------------------------------------------------------------- pieces


def _scale(problem: Problem, loss: str):
    """c in F = c·f: |Ω|/2 for frobenius (½ sum of squares), |Ω| for kl."""
    N = jnp.sum(problem.train).astype(problem.V.dtype)
    return 0.5 * N if loss == "frobenius" else N


def _psi_omega(P, V, mask, loss: str):
    """ψ = ∂φ/∂P and the Gauss-Newton (Fisher) weight ω, both 0 off the mask."""
    if loss == "frobenius":
        return jnp.where(mask, P - V, 0.0), mask.astype(P.dtype)
    Ps = jnp.where(mask, P, 1.0)
    return jnp.where(mask, 1.0 - V / Ps, 0.0), jnp.where(mask, 1.0 / Ps, 0.0)


def scaled_objective(p: Factors, problem: Problem, loss: str, l2: float):
    """F = c·(mean loss over the training entries + l2·(ΣA² + ΣB²))."""
    return _scale(problem, loss) * losses.objective(p, problem, loss, l2)


def row_costs(A, H, V, mask, loss: str, pen):
    """Per-row part of F for rows of A with the other factor H = exp(B) fixed, shape (n,)."""
    P = jnp.exp(A) @ H.T
    if loss == "frobenius":
        phi = 0.5 * jnp.where(mask, P - V, 0.0) ** 2
    else:
        Ps = jnp.where(mask, P, 1.0)
        Vs = jnp.where(V > 0, V, 1.0)
        phi = jnp.where(mask, Ps - V + jnp.where(V > 0, V * (jnp.log(Vs) - jnp.log(Ps)), 0.0), 0.0)
    return jnp.sum(phi, axis=1) + pen * jnp.sum(A**2, axis=1)


def normal_blocks(W, H, omega):
    """Diagonal blocks of JᵀΩJ: U_i (n, r, r) and S_j (m, r, r)."""
    U = jnp.einsum("ij,ja,jb->iab", omega, H, H) * W[:, :, None] * W[:, None, :]
    S = jnp.einsum("ij,ia,ib->jab", omega, W, W) * H[:, :, None] * H[:, None, :]
    return U, S


def gradient(W, H, psi, A, B, pen):
    """(g_A, g_B) of F."""
    return (psi @ H) * W + 2 * pen * A, (psi.T @ W) * H + 2 * pen * B


def _add_diag(blocks, d):
    r = blocks.shape[-1]
    return blocks + d[..., :, None] * jnp.eye(r, dtype=blocks.dtype)


def schur_product(Linv, W, H, omega, row_block: int):
    """Cᵀ U'⁻¹ C as an (m r × m r) matrix, from the inverses L_i⁻¹ of the Cholesky factors of U'_i.

    Rows are processed in blocks of ``row_block`` under a scan so that the
    (m(m+1)/2 × rows) intermediate stays small. Both symmetries are used: only
    the r(r+1)/2 pairs a ≤ c and the m(m+1)/2 pairs j ≤ k are formed.

    Layout matters more than flops here (XLA on the CPU): the row index i is
    kept innermost, so K's gather runs over whole contiguous rows and its
    product with W∘W is a plain (pairs × rows) @ (rows × r(r+1)/2) matmul. With
    i outermost the same product took twice as long (12.4 ms against 6 ms at
    the question's size in float32), most of it in a gather that could not
    vectorise.
    """
    n, r = W.shape
    m = H.shape[0]
    nb = -(-n // row_block)
    row_block = -(-n // nb)  # same number of blocks, least padding
    pad = nb * row_block - n
    # Padding rows have W = 0, so they add nothing whatever their L⁻¹.
    Lp = jnp.pad(Linv, ((0, pad), (0, 0), (0, 0)))
    Wp = jnp.pad(W, ((0, pad), (0, 0)))
    Op = jnp.pad(omega, ((0, pad), (0, 0)))

    # (a, c) and (c, a) blocks are equal, and so are (j, k) and (k, j).
    ia, ic = np.triu_indices(r)
    pair = np.zeros((r, r), np.int64)
    pair[ia, ic] = pair[ic, ia] = np.arange(ia.size)
    tj, tk = np.triu_indices(m)

    def block(acc, xs):
        Lb, Wb, Ob = xs
        rows = Wb.shape[0]
        P = (Lb * Wb[:, None, :]).transpose(2, 1, 0).reshape(r, r * rows)  # [b, (a, i)] = (L_i⁻¹ diag(W_i))_ab
        # Y[j, a, i] = ω_ij (L_i⁻¹ u_ij)_a as one matmul (an einsum here lowered to a slow transpose).
        Y = jax.lax.optimization_barrier((H @ P).reshape(m, r, rows) * Ob.T[:, None, :])
        # K[(j,k), i] = ω_ij ω_ik u_ijᵀ U_i⁻¹ u_ik for j ≤ k; the barrier keeps it
        # from being fused (recomputed) into the matmul.
        K = jax.lax.optimization_barrier(sum(Y[tj, a] * Y[tk, a] for a in range(r)))
        return acc + K @ (Wb[:, ia] * Wb[:, ic]), None

    blocks = (Lp.reshape(nb, row_block, r, r), Wp.reshape(nb, row_block, r), Op.reshape(nb, row_block, m))
    Tt, _ = jax.lax.scan(block, jnp.zeros((tj.size, ia.size), W.dtype), blocks)
    # One gather builds the full matrix: entry ((j,a),(k,c)) is Tt[(min, max of j, k), pair(a, c)] H_ja H_kc.
    J, A, K, C = np.ix_(np.arange(m), np.arange(r), np.arange(m), np.arange(r))
    lo, hi = np.minimum(J, K), np.maximum(J, K)
    flat = ((lo * m - lo * (lo - 1) // 2 + hi - lo) * ia.size + pair[A, C]).reshape(m * r, m * r).astype(np.int32)
    h = H.reshape(-1)
    return Tt.reshape(-1)[flat] * h[:, None] * h[None, :]


UNROLL_MAX_RANK = 16  # above it the unrolled factorisation compiles too slowly (r³/6 terms)


def inverse_cholesky(U):
    """L⁻¹ for the Cholesky factors L of a batch of small SPD matrices U (…, r, r).

    For r ≤ UNROLL_MAX_RANK, Cholesky–Banachiewicz and forward substitution
    unrolled over the r² entries: elementwise arithmetic over the batch that
    XLA fuses into a few loops, 0.2 ms for 1000 blocks of 8 × 8 against
    0.8 ms for LAPACK's potrf and trsm called block by block. Same operations
    as the unblocked Cholesky algorithm. A block that is not positive definite
    gets NaN entries from its failing pivot on (LAPACK's path NaNs the whole
    block); either way the step built on it is non-finite and rejected.
    """
    r = U.shape[-1]
    if r > UNROLL_MAX_RANK:
        L = jnp.linalg.cholesky(U)
        return jsl.solve_triangular(L, jnp.broadcast_to(jnp.eye(r, dtype=L.dtype), L.shape), lower=True)
    L = [[None] * r for _ in range(r)]
    for j in range(r):
        L[j][j] = jnp.sqrt(U[..., j, j] - sum(L[j][k] ** 2 for k in range(j)))
        for i in range(j + 1, r):
            L[i][j] = (U[..., i, j] - sum(L[i][k] * L[j][k] for k in range(j))) / L[j][j]
    M = [[None] * r for _ in range(r)]  # M = L⁻¹, lower triangular
    for i in range(r):
        M[i][i] = 1.0 / L[i][i]
        for j in range(i):
            M[i][j] = -sum(L[i][k] * M[k][j] for k in range(j, i)) / L[i][i]
    zero = jnp.zeros_like(U[..., 0, 0])
    return jnp.stack([jnp.stack([M[i][j] if j <= i else zero for j in range(r)], -1) for i in range(r)], -2)


class SchurFactor(NamedTuple):
    """Factorisation of the damped Gauss-Newton matrix, reusable for many right-hand sides."""

    Linv: jax.Array  # (n, r, r) L_i⁻¹, L_i the Cholesky factor of U'_i: U'_i⁻¹ b = L_i⁻ᵀ (L_i⁻¹ b)
    R: jax.Array  # (m r, m r) Cholesky factor of the reduced matrix S' − Cᵀ U'⁻¹ C


def factorize(W, H, omega, U, S, dA, dB, row_block: int = 256, schur_dtype=None) -> SchurFactor:
    """Factor JᵀΩJ + diag(dA, dB). ``dA`` (n, r) and ``dB`` (m, r) hold everything
    added to the diagonal (penalty curvature, damping).

    With ``schur_dtype=float32`` the reduced matrix (its product is nearly all
    the flops) is formed and factored in float32; pair it with
    :func:`refined_solve`, which recovers float64 accuracy by iterative
    refinement against the float64 operator.
    """
    r = W.shape[1]
    m = H.shape[0]
    # The inverses L_i⁻¹ are used by the Schur product and by every Schur solve
    # as batched matvecs: with 2n tiny LAPACK triangular solves a Schur solve
    # took 1.7 ms at the question's size, now 0.8 ms.
    Linv = inverse_cholesky(_add_diag(U, dA))
    c = (lambda x: x.astype(schur_dtype)) if schur_dtype is not None else (lambda x: x)
    red = -schur_product(*jax.lax.optimization_barrier((c(Linv), c(W), c(H), c(omega))), min(row_block, W.shape[0]))
    # S' goes on the block diagonal by a broadcast product rather than a
    # scatter, so that the whole assembly is one elementwise fusion.
    bd = jnp.eye(m, dtype=red.dtype)[:, None, :, None] * c(_add_diag(S, dB))[:, :, None, :]
    red = red + bd.reshape(m * r, m * r)
    # red is symmetric by construction (to the rounding of S's own product;
    # potrf reads one triangle): no symmetrisation, and its transpose (a free
    # relayout) is what LAPACK's column-major potrf wants without a copy.
    return SchurFactor(Linv, jax.lax.linalg.cholesky(red.T, symmetrize_input=False))


def gn_matvec(W, H, omega, dA, dB, vA, vB):
    """(JᵀΩJ + diag(dA, dB)) v, matrix-free: Jv = (W∘v_A)Hᵀ + W(H∘v_B)ᵀ, O(n m r)."""
    Jv = omega * ((W * vA) @ H.T + W @ (H * vB).T)
    return (Jv @ H) * W + dA * vA, (Jv.T @ W) * H + dB * vB


def refined_solve(f: SchurFactor, W, H, omega, dA, dB, bA, bB, iters: int):
    """Solve (JᵀΩJ + diag(dA, dB)) x = b with a lower-precision factor ``f`` and
    ``iters`` steps of iterative refinement, residuals in the working precision."""
    xA, xB, _ = schur_solve(f, W, H, omega, bA, bB)

    def body(x, _):
        rA, rB = gn_matvec(W, H, omega, dA, dB, *x)
        cA, cB, _ = schur_solve(f, W, H, omega, bA - rA, bB - rB)
        return (x[0] + cA, x[1] + cB), None

    (xA, xB), _ = jax.lax.scan(body, (xA, xB), None, length=iters)
    return xA, xB


def schur_solve(f: SchurFactor, W, H, omega, bA, bB):
    """(ΔA, ΔB, U'⁻¹ b_A) with (JᵀΩJ + diag(dA, dB)) (ΔA, ΔB) = (b_A, b_B).

    ΔB = (S' − Cᵀ U'⁻¹ C)⁻¹ (b_B − Cᵀ U'⁻¹ b_A),  ΔA = U'⁻¹ (b_A − C ΔB).
    """
    m, r = H.shape

    def blocks(Linv, g):  # U'⁻¹ g, row by row
        return jnp.einsum("iba,ib->ia", Linv, jnp.einsum("iab,ib->ia", Linv, g))

    z = blocks(f.Linv, bA)  # U'⁻¹ b_A
    CtUb = ((omega * ((W * z) @ H.T)).T @ W) * H
    rhs = (bB - CtUb).reshape(-1)
    dB = jsl.cho_solve((f.R, True), rhs.astype(f.R.dtype)).astype(rhs.dtype).reshape(m, r)
    CdB = ((omega * (W @ (H * dB).T)) @ H) * W
    return blocks(f.Linv, bA - CdB), dB, z


def damped_step(W, H, omega, gA, gB, U, S, dA, dB, row_block: int = 256):
    """Solve (JᵀΩJ + diag(dA, dB)) (ΔA, ΔB) = −(g_A, g_B) by the Schur complement on B.

    Returns (ΔA, ΔB, −U'⁻¹ g_A); ΔA + U'⁻¹ g_A is the part of ΔA that responds
    to ΔB alone (variable projection's linearised A*(B + ΔB) − A).
    """
    f = factorize(W, H, omega, U, S, dA, dB, row_block)
    return schur_solve(f, W, H, omega, -gA, -gB)


def newton_cg(hvp, precond, g, d, x0, iters: int):
    """Preconditioned CG on (∇²F + diag(d)) x = −g, ``iters`` iterations at most.

    The preconditioner is the factored damped Gauss-Newton matrix, so the
    preconditioned operator is the identity plus the second-order term
    Σ r_ij ∇²r_ij (DESIGN.md §3) seen through it: near a minimum a few
    iterations turn the linearly convergent Gauss-Newton tail into a Newton
    step. Starts from the Gauss-Newton step ``x0``. Stops (keeping the last
    iterate) on negative curvature, as Steihaug's CG does. Vectors are pytrees.
    """
    dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    axpy = lambda a, x, y: jax.tree.map(lambda u, v: a * u + v, x, y)
    op = lambda v: jax.tree.map(lambda hv, dd, vv: hv + dd * vv, hvp(v), d, v)
    r = axpy(-1.0, op(x0), jax.tree.map(jnp.negative, g))  # −g − A x0
    z = precond(r)
    p = z
    rz = dot(r, z)

    def body(carry, _):
        x, r, z, p, rz, stop = carry
        Ap = op(p)
        pAp = dot(p, Ap)
        neg = pAp <= 0
        alpha = rz / jnp.where(neg, 1.0, pAp)
        x_new = axpy(alpha, p, x)
        r_new = axpy(-alpha, Ap, r)
        z_new = precond(r_new)
        rz_new = dot(r_new, z_new)
        tiny = rz_new <= 1e-30 * jnp.abs(rz) + jnp.finfo(rz.dtype).tiny
        beta = rz_new / jnp.where(rz == 0, 1.0, rz)
        p_new = axpy(beta, p, z_new)
        keep = stop | neg
        sel = lambda a, b: jax.tree.map(lambda u, v: jnp.where(keep, v, u), a, b)
        return (sel(x_new, x), sel(r_new, r), sel(z_new, z), sel(p_new, p), jnp.where(keep, rz, rz_new),
                keep | tiny), None

    init = (x0, r, z, p, rz, jnp.asarray(False))
    (x, *_), _ = jax.lax.scan(body, init, None, length=iters)
    return x


def refine_rows(A, H, V, mask, loss: str, pen, iters: int, ridge, A_alt=None, delta0=1e-3):
    """``iters`` safeguarded Gauss-Newton iterations on every row of A, H fixed.

    Each row is an independent r-unknown nonlinear least-squares problem; a row
    keeps its new value only where its own cost decreased, and its private
    Levenberg damping (relative to the block's mean diagonal, starting at
    ``delta0``) grows ×10 after a failure and shrinks ÷10 after a success. With
    ``A_alt``, each row starts from whichever of A, A_alt is cheaper.
    """
    n, r = A.shape
    cost = row_costs(A, H, V, mask, loss, pen)
    if A_alt is not None:
        cost_alt = row_costs(A_alt, H, V, mask, loss, pen)
        better = jnp.isfinite(cost_alt) & (cost_alt < cost)
        A = jnp.where(better[:, None], A_alt, A)
        cost = jnp.where(better, cost_alt, cost)
    if iters == 0:
        return A
    delta = jnp.full((n,), delta0, A.dtype)

    def body(carry, _):
        A, cost, delta = carry
        W = jnp.exp(A)
        P = W @ H.T
        psi, omega = _psi_omega(P, V, mask, loss)
        g = (psi @ H) * W + 2 * pen * A
        U = jnp.einsum("ij,ja,jb->iab", omega, H, H) * W[:, :, None] * W[:, None, :]
        scale = jnp.trace(U, axis1=1, axis2=2) / r
        Ud = _add_diag(U, (2 * pen + delta * jnp.maximum(scale, 1e-300))[:, None] * jnp.ones((1, r), A.dtype))
        step = -jax.vmap(jnp.linalg.solve)(Ud, g)
        A_new = A + step
        new_cost = row_costs(A_new, H, V, mask, loss, pen)
        ok = jnp.isfinite(new_cost) & (new_cost <= cost)
        A = jnp.where(ok[:, None], A_new, A)
        cost = jnp.where(ok, new_cost, cost)
        delta = jnp.where(ok, jnp.maximum(delta / 10, ridge), jnp.minimum(delta * 10, 1e10))
        return (A, cost, delta), None

    (A, _, _), _ = jax.lax.scan(body, (A, cost, delta), None, length=iters)
    return A


def nnls_rows(A, H, V, mask, sweeps: int, floor_rel: float = 1e-10, A_alt=None):
    """Re-solve the rows of W = exp(A) for fixed H by exact coordinate descent (frobenius, no L2).

    With H fixed, row i is the non-negative least-squares problem
    min_{w ≥ f} ½‖M_i ∘ (H w − V_i)‖², with Gram G_i = Σ_j M_ij H_j H_jᵀ and
    b_i = Σ_j M_ij V_ij H_j. One sweep sets each w_k to its exact minimiser
    max(f, w_k − (G_i w − b_i)_k / G_i,kk) (HALS on one row). Working in W
    rather than log W keeps entries at the floor alive: in log space their
    gradient and curvature underflow and they never return (DESIGN.md §2). The
    floor f = floor_rel · max_k w_k per row keeps log W finite. With ``A_alt``
    each row starts from whichever of A, A_alt is cheaper.
    """
    Mf = mask.astype(H.dtype)
    G = jnp.einsum("ij,ja,jb->iab", Mf, H, H)
    b = (jnp.where(mask, V, 0.0)) @ H
    if A_alt is not None:
        pen0 = jnp.zeros((), A.dtype)
        c0, c1 = row_costs(A, H, V, mask, "frobenius", pen0), row_costs(A_alt, H, V, mask, "frobenius", pen0)
        A = jnp.where((jnp.isfinite(c1) & (c1 < c0))[:, None], A_alt, A)
    w = jnp.exp(A)
    r = w.shape[1]

    def sweep(w, _):
        floor = floor_rel * jnp.max(w, axis=1)
        for k in range(r):
            gk = jnp.einsum("ia,ia->i", G[:, k, :], w) - b[:, k]
            wk = jnp.maximum(floor, w[:, k] - gk / jnp.maximum(G[:, k, k], jnp.finfo(w.dtype).tiny))
            w = w.at[:, k].set(wk)
        return w, None

    w, _ = jax.lax.scan(sweep, w, None, length=sweeps)
    return jnp.log(w)


def balance_gauge(p: Factors) -> Factors:
    """Shift (A[:,k] + c_k, B[:,k] − c_k) to minimise ΣA² + ΣB²; W Hᵀ is unchanged."""
    n, m = p.A.shape[0], p.B.shape[0]
    c = (m * jnp.mean(p.B, axis=0) - n * jnp.mean(p.A, axis=0)) / (n + m)
    return Factors(p.A + c, p.B - c)


def trust_update(F, F_new, pred, lam, nu, rule: str = "nielsen", lam_down: float = 0.2, extra_ok=True):
    """Gain ratio, acceptance and the damping update (the LM "search" part).

    ρ = (F − F_new) / predicted decrease; a step is accepted when F decreased
    and ρ > 1e-3 (Ceres' min_relative_decrease). Nielsen's rule (as Ceres):
    accepted → λ·max(1/3, 1 − (2ρ − 1)³), ν = 2; rejected → λ·ν, ν·2.
    Returns (ok, ρ, λ, ν).
    """
    actual = F - F_new
    rho = actual / jnp.where(pred > 0, pred, jnp.inf)
    ok = jnp.isfinite(F_new) & (actual > 0) & (rho > 1e-3) & extra_ok
    if rule == "nielsen":
        lam_ok = lam * jnp.maximum(1 / 3, 1 - (2 * jnp.minimum(rho, 1.0) - 1) ** 3)
    else:  # "fast": a good-enough step (ρ > 1/4) cuts λ by a fixed factor
        lam_ok = lam * jnp.where(rho > 0.25, lam_down, jnp.where(rho > 0.1, 1.0, 2.0))
    return ok, rho, jnp.where(ok, lam_ok, lam * nu), jnp.where(ok, 2.0, 2 * nu)


def converged(ok, F, F_new, g_inf, dnorm, theta, nu, ftol, gtol, xtol):
    """Stopping tests (the "termination" part), as Ceres' function/gradient/parameter tolerances.

    Relative decrease of an accepted step ≤ ftol; max|g| ≤ gtol·F; accepted
    step ≤ xtol·(‖θ‖ + xtol); 11 rejections in a row (λ grew ~2⁶⁶: no descent
    left at this precision); a non-finite objective.
    """
    small_f = ok & (F - F_new <= ftol * F)
    small_g = g_inf <= gtol * jnp.maximum(F, jnp.finfo(jnp.asarray(F).dtype).tiny)
    small_x = ok & (dnorm <= xtol * (theta + xtol))
    stalled = nu >= 2.0**12
    return small_f | small_g | small_x | stalled | ~jnp.isfinite(F)


# ----------------------------------------------------------------------------- solver


def make_gauss_newton(
    loss: str = "frobenius",
    l2: float = 0.0,
    rank: int = 8,
    init: str = "keras",
    method: str = "joint",
    damping: str = "levenberg",
    lambda0: float = 1e-3,
    inner: int = 3,
    ftol: float = 1e-10,
    gtol: float = 1e-12,
    xtol: float = 1e-10,
    row_block: int = 256,
    init_inner: int = 10,
    rows: str = "auto",
    newton_iters: int = 0,
    geodesic: bool = False,
    geodesic_alpha: float = 0.75,
    lm_update: str = "nielsen",
    lam_down: float = 0.2,
    schur_precision: str = "full",
    refine: int = 2,
    max_step: float = 0.0,
    backtrack: bool = False,
    restarts: int = 0,
    stall_window: int = 50,
    stall_rtol: float = 1e-3,
) -> Solver:
    """The flagship solver. Fixed settings are arguments; λ, counters and ``done`` live in the state."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if damping not in DAMPINGS:
        raise ValueError(f"unknown damping {damping!r}; known: {', '.join(DAMPINGS)}")
    if backtrack and method != "joint":
        raise ValueError(f"backtrack needs method 'joint' (the step of {method!r} re-solves rows after it)")
    damp_rows = method != "varpro"
    # "mixed": the reduced system in float32, the step refined in the working precision.
    schur_dtype = jnp.float32 if schur_precision == "mixed" else None
    refine = refine if schur_precision == "mixed" else 0
    # Row re-solves: exact NNLS in W space for the plain least-squares loss,
    # safeguarded log-space Gauss-Newton otherwise (KL, L2 on log-parameters).
    row_solver = rows if rows != "auto" else ("nnls" if loss == "frobenius" and l2 == 0 else "gn")
    n_inner = 0 if method == "joint" else inner

    def oriented(p: Factors, problem: Problem):
        """Put the side to eliminate (the larger one) first."""
        if problem.V.shape[0] >= problem.V.shape[1]:
            return p.A, p.B, problem.V, problem.train, False
        return p.B, p.A, problem.V.T, problem.train.T, True

    def unorient(X, Y, flip) -> Factors:
        return Factors(Y, X) if flip else Factors(X, Y)

    def ridge(dtype):
        # Keeps the undamped row blocks of varpro positive definite when a
        # component dies (its curvature underflows); relative to the block's trace.
        return 1e-10 if dtype == jnp.float64 else 1e-5

    def objective(p, problem):
        return losses.objective(p, problem, loss, l2)

    def F_of(p, problem):
        return scaled_objective(p, problem, loss, l2)

    def init_state(p: Factors, problem: Problem, key=None) -> GNState:
        del key
        pen = _scale(problem, loss) * l2
        if method == "varpro":
            X, Y, V, M, flip = oriented(p, problem)
            if row_solver == "nnls":
                X = nnls_rows(X, jnp.exp(Y), V, M, init_inner)
            else:
                X = refine_rows(X, jnp.exp(Y), V, M, loss, pen, init_inner, ridge(X.dtype))
            p = unorient(X, Y, flip)
        if l2 > 0:
            p = balance_gauge(p)
        X, Y, V, M, _ = oriented(p, problem)
        W, H = jnp.exp(X), jnp.exp(Y)
        _, omega = _psi_omega(W @ H.T, V, M, loss)
        U, S = normal_blocks(W, H, omega)
        diag = jnp.concatenate([jnp.diagonal(U, axis1=1, axis2=2).ravel(), jnp.diagonal(S, axis1=1, axis2=2).ravel()])
        lam = lambda0 * jnp.mean(diag)
        F = F_of(p, problem)
        return GNState(
            params=p, F=F, lam=lam, nu=jnp.asarray(2.0, F.dtype),
            accepted=jnp.asarray(True), n_accepted=jnp.asarray(0, jnp.int32),
            grad_inf=jnp.asarray(jnp.inf, F.dtype), rho=jnp.asarray(jnp.nan, F.dtype), done=jnp.asarray(False),
        )

    def step(state: GNState, problem: Problem, cap=None) -> GNState:
        """One damped step; ``cap`` (traced, ≤ 0 = none) bounds max|Δ| in log space."""
        pen = _scale(problem, loss) * l2
        X, Y, V, M, flip = oriented(state.params, problem)
        W, H = jnp.exp(X), jnp.exp(Y)
        P = W @ H.T
        psi, omega = _psi_omega(P, V, M, loss)
        gX, gY = gradient(W, H, psi, X, Y, pen)
        U, S = normal_blocks(W, H, omega)
        r = X.shape[1]
        if damping == "levenberg":
            DX, DY = jnp.ones_like(X), jnp.ones_like(Y)
        elif damping == "marquardt":
            DX = jnp.clip(jnp.diagonal(U, axis1=1, axis2=2), MIN_DIAG, MAX_DIAG)
            DY = jnp.clip(jnp.diagonal(S, axis1=1, axis2=2), MIN_DIAG, MAX_DIAG)
        else:  # "sqrt": geometric mean of Levenberg and Marquardt, relative to the mean diagonal
            dU, dS = jnp.diagonal(U, axis1=1, axis2=2), jnp.diagonal(S, axis1=1, axis2=2)
            mean = (jnp.sum(dU) + jnp.sum(dS)) / (dU.size + dS.size)
            DX = jnp.sqrt(jnp.clip(dU / mean, MIN_DIAG, MAX_DIAG))
            DY = jnp.sqrt(jnp.clip(dS / mean, MIN_DIAG, MAX_DIAG))
        if damp_rows:
            dX = 2 * pen + state.lam * DX
        else:
            tr = jnp.trace(U, axis1=1, axis2=2)[:, None] / r
            dX = 2 * pen + ridge(X.dtype) * jnp.maximum(tr, 1e-300) * jnp.ones_like(X)
        dY = 2 * pen + state.lam * DY
        # In a float32 run there is nothing to refine against: factor in the working precision.
        mixed = schur_dtype is not None and X.dtype != schur_dtype
        f = factorize(W, H, omega, U, S, dX, dY, row_block, schur_dtype if mixed else None)
        if damp_rows and refine and mixed:
            stepX, stepY = refined_solve(f, W, H, omega, dX, dY, -gX, -gY, refine)
        elif damp_rows:
            stepX, stepY, _ = schur_solve(f, W, H, omega, -gX, -gY)
        else:
            # Variable projection: the reduced system of F(A*(B), B), where
            # g_X = 0. X is only approximately optimal and its undamped blocks
            # may be nearly singular (symmetric start, dead components), so the
            # −U⁻¹g_X part is left to the row iterations and X follows ΔY
            # through its linearised optimum A*(B + ΔB) ≈ A − U⁻¹CΔB.
            stepX, stepY, _ = schur_solve(f, W, H, omega, jnp.zeros_like(gX), -gY)

        accel_ok = jnp.asarray(True)
        if geodesic and damp_rows:
            # Geodesic acceleration (Transtrum & Sethna 2012): the second-order
            # correction a = −(JᵀΩJ + λD)⁻¹ JᵀΩ r'' along the velocity v = step,
            # with r''_ij = Σ_k u_ijk (v_A,ik + v_B,jk)², reusing the factorisation.
            # The step v + a/2 follows the curved valley of the exp map; it is
            # refused when 2‖a‖/‖v‖ > geodesic_alpha.
            rpp = (W * stepX**2) @ H.T + 2 * (W * stepX) @ (H * stepY).T + W @ (H * stepY**2).T
            q = omega * rpp
            aX, aY, _ = schur_solve(f, W, H, omega, -(q @ H) * W, -(q.T @ W) * H)
            ratio = 2 * jnp.sqrt((jnp.sum(aX**2) + jnp.sum(aY**2)) / (jnp.sum(stepX**2) + jnp.sum(stepY**2)))
            accel_ok = ratio <= geodesic_alpha
            stepX, stepY = stepX + 0.5 * aX, stepY + 0.5 * aY

        if cap is not None:
            # A cap on the log-space step (max |Δ| ≤ cap, the direction kept;
            # cap ≤ 0: none): a factor changes by at most e^cap per iteration,
            # so one early Gauss-Newton step cannot drive entries to exp(−20).
            size = jnp.maximum(jnp.max(jnp.abs(stepX)), jnp.max(jnp.abs(stepY)))
            shrink = jnp.where(cap > 0, jnp.minimum(1.0, cap / jnp.maximum(size, 1e-300)), 1.0)
            stepX, stepY = shrink * stepX, shrink * stepY

        if newton_iters and damp_rows:
            # Newton-CG on the exact Hessian, preconditioned by the factored
            # damped Gauss-Newton matrix (see newton_cg).
            def F_or(th):
                Xo, Yo = th
                return jnp.sum(row_costs(Xo, jnp.exp(Yo), V, M, loss, pen)) + pen * jnp.sum(Yo**2)

            hvp = lambda v: jax.jvp(jax.grad(F_or), ((X, Y),), (v,))[1]
            precond = lambda v: schur_solve(f, W, H, omega, v[0], v[1])[:2]
            stepX, stepY = newton_cg(hvp, precond, (gX, gY), (dX - 2 * pen, dY - 2 * pen), (stepX, stepY), newton_iters)
            HD = hvp((stepX, stepY))
            lin = jnp.sum(gX * stepX) + jnp.sum(gY * stepY)
            quad = jnp.sum(HD[0] * stepX) + jnp.sum(HD[1] * stepY)
        else:
            # Decrease predicted by the undamped Gauss-Newton model of F (for
            # varpro, the reduced model: g_X dropped as at A*(B)).
            JD = (W * stepX) @ H.T + W @ (H * stepY).T
            lin = jnp.sum(gY * stepY) + (jnp.sum(gX * stepX) if damp_rows else 0.0)
            quad = jnp.sum(omega * JD**2) + 2 * pen * (jnp.sum(stepX**2) + jnp.sum(stepY**2))
        pred = -lin - 0.5 * quad
        Yn = Y + stepY
        Hn = jnp.exp(Yn)
        if n_inner == 0:
            Xn = X + stepX
        elif row_solver == "nnls":
            Xn = nnls_rows(X + stepX, Hn, V, M, n_inner) if damp_rows else nnls_rows(X, Hn, V, M, n_inner, A_alt=X + stepX)
        elif damp_rows:
            Xn = refine_rows(X + stepX, Hn, V, M, loss, pen, n_inner, ridge(X.dtype))
        else:
            Xn = refine_rows(X, Hn, V, M, loss, pen, n_inner, ridge(X.dtype), A_alt=X + stepX)
        new_params = unorient(Xn, Yn, flip)
        if l2 > 0:
            new_params = balance_gauge(new_params)
        F_new = F_of(new_params, problem)
        ok, rho, lam, nu = trust_update(state.F, F_new, pred, state.lam, state.nu, lm_update, lam_down, accel_ok)
        dnorm = jnp.sqrt(jnp.sum(stepX**2) + jnp.sum(stepY**2))
        if backtrack:
            # A rejected step still costs a factorisation; before giving it up,
            # try fractions of it (the objective along the direction is cheap
            # to evaluate). The lowest objective among the fractions BACKTRACK
            # is taken if it passes the same gain test against the model's
            # decrease at that fraction, unless the full step was wild (F grew
            # more than WILD-fold: the model says nothing about that
            # direction). λ still grows, as on a rejection, but ν restarts: a
            # step was taken.
            fracs = jnp.asarray(BACKTRACK, F_new.dtype)

            def at(t):  # the point a fraction t along the step
                q = unorient(X + t * stepX, Y + t * stepY, flip)
                return balance_gauge(q) if l2 > 0 else q

            F_t = jax.vmap(lambda t: F_of(at(t), problem))(fracs)
            k = jnp.argmin(jnp.where(jnp.isfinite(F_t), F_t, jnp.inf))
            t, F_b = fracs[k], F_t[k]
            pred_b = -t * lin - 0.5 * t * t * quad
            ok_b = ~ok & (F_new < WILD * state.F) & (state.F - F_b > 1e-3 * pred_b) & (pred_b > 0)
            new_params = jax.tree.map(lambda u, v: jnp.where(ok_b, u, v), at(t), new_params)
            F_new = jnp.where(ok_b, F_b, F_new)
            dnorm = jnp.where(ok_b, t * dnorm, dnorm)
            lam = jnp.where(ok_b, 2 * state.lam, lam)
            nu = jnp.where(ok_b, 2.0, nu)
            ok = ok | ok_b
        params = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_params, state.params)
        F = jnp.where(ok, F_new, state.F)
        g_inf = jnp.maximum(jnp.max(jnp.abs(gX)), jnp.max(jnp.abs(gY)))
        theta = jnp.sqrt(jnp.sum(X**2) + jnp.sum(Y**2))
        done = converged(ok, state.F, F_new, g_inf, dnorm, theta, nu, ftol, gtol, xtol)
        return GNState(params, F, lam, nu, ok, state.n_accepted + ok.astype(jnp.int32), g_inf, rho, done)

    base_cap = max_step if max_step > 0 else None
    extras = (
        ("lam", lambda s: s.lam),
        ("accepted", lambda s: s.accepted),
        ("grad_inf", lambda s: s.grad_inf),
        ("rho", lambda s: s.rho),
    )
    solver = Solver(
        name="gauss_newton",
        init_params=lambda key, problem: fac.init_factors(key, problem, rank, init),
        init=init_state,
        step=lambda state, problem: step(state, problem, base_cap),
        predict=lambda p, problem: fac.predict(p),
        objective=objective,
        extras=extras,
    )
    if restarts == 0:
        return solver
    return with_restarts(solver, init_state, step, restarts, lambda0, max_step, stall_window, stall_rtol)


class RestartState(NamedTuple):
    """The flagship with restarts: the best point so far and the run in progress."""

    params: Factors  # the lowest-objective point found so far (what is recorded and returned)
    F: jax.Array  # () its scaled objective
    run: GNState  # the run in progress
    first: GNState  # the first run's initial state: every restart begins from it (λ rescaled)
    restart: jax.Array  # () int32: restarts taken
    F_mark: jax.Array  # () the run's objective at the start of the stall window
    since_mark: jax.Array  # () int32: steps since the window started
    done: jax.Array  # () bool


# Restart k (1, 2, ...) runs from the same blind start with (lambda0, max_step) =
# RESTART_SCHEDULE[k − 1]. On the 6 seeds of 100 where the default run ends at a
# stationary point above the oracle, a step cap of 1 alone reaches the oracle on
# all 6, λ0 = 0.1 on 4 (λ0 = 1 on 4): different schedules fall into different
# basins from the same start (results/gn-100-restarts/variants).
RESTART_SCHEDULE = ((None, 1.0), (0.1, 0.0), (1.0, 0.0), (None, 3.0))


def with_restarts(solver: Solver, init_state, step, restarts: int, lambda0: float, max_step: float,
                  window: int, rtol: float) -> Solver:
    """Restart from the blind start with another damping schedule when a run ends.

    A run ends when its own stopping tests fire or when it stalls: over
    ``window`` steps its objective fell by less than ``rtol`` relative (the
    linear crawl towards a stationary point above the best fit). Up to
    ``restarts`` further runs follow, from the same start, with the schedules
    of ``RESTART_SCHEDULE``; the state's ``params`` is always the best point
    any run has reached, so the recorded objective never increases. After the
    last restart the run continues to its own stopping tests (a stall no
    longer ends it) or to the step budget. Everything is ``jnp.where`` on
    whole leaves: a batch of seeds stays one program, each seed restarting on
    its own step.
    """
    if not 0 < restarts <= len(RESTART_SCHEDULE):
        raise ValueError(f"restarts must be between 1 and {len(RESTART_SCHEDULE)}, got {restarts}")
    sched = RESTART_SCHEDULE[:restarts]
    lam_factor = [(lam0 if lam0 is not None else lambda0) / lambda0 for lam0, _ in sched]
    caps = [max_step] + [cap for _, cap in sched]

    def init(params, problem, key=None):
        run = init_state(params, problem, key)
        zero = jnp.asarray(0, jnp.int32)
        return RestartState(run.params, run.F, run, run, zero, run.F, zero, jnp.asarray(False))

    def restart_step(state: RestartState, problem: Problem) -> RestartState:
        cap = jnp.asarray(caps, state.F.dtype)[state.restart]
        run = step(state.run, problem, cap)
        since = state.since_mark + 1
        at_mark = since >= window
        stalled = at_mark & (state.F_mark - run.F <= rtol * state.F_mark)
        better = run.F < state.F
        params = jax.tree.map(lambda a, b: jnp.where(better, a, b), run.params, state.params)
        F = jnp.where(better, run.F, state.F)
        again = (state.restart < restarts) & (run.done | stalled)
        factor = jnp.asarray(lam_factor, state.first.lam.dtype)[jnp.minimum(state.restart, restarts - 1)]
        fresh = state.first._replace(lam=state.first.lam * factor)
        run = jax.tree.map(lambda a, b: jnp.where(again, a, b), fresh, run)
        new_window = at_mark | again
        F_mark = jnp.where(new_window, run.F, state.F_mark)
        since = jnp.where(new_window, 0, since)
        done = run.done & ~again
        return RestartState(params, F, run, state.first, state.restart + again.astype(jnp.int32), F_mark, since, done)

    extras = tuple((name, (lambda fn: lambda s: fn(s.run))(fn)) for name, fn in solver.extras)
    extras += (("restart", lambda s: s.restart), ("run_F", lambda s: s.run.F))
    return solver._replace(init=init, step=restart_step, extras=extras)

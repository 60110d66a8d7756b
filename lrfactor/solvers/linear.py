"""Linear solvers for the damped Gauss-Newton system, Ceres' ``linear_solver_type`` style.

Each solves (JᵀΩJ + diag(dX, dY)) (ΔX, ΔY) = (bX, bY) by eliminating X (the
larger side, rows) through the Schur complement

    R ΔY = bY − Cᵀ U'⁻¹ bX,   R = S' − Cᵀ U'⁻¹ C,   ΔX = U'⁻¹ (bX − C ΔY)

with U' = U + diag(dX), S' = S + diag(dY) (lrfactor/solvers/blocks.py for the
blocks). They differ in how R is solved:

- ``dense_schur``: R formed densely (:func:`schur_product`, the (m r)² matrix,
  dense layout only) and Cholesky-factored; optionally in float32 with float64
  iterative refinement (``schur_dtype``, ``refine``). Exact. Ceres' DENSE_SCHUR.
- ``schur_pcg``: R applied matrix-free through the layout primitives and
  solved by block-Jacobi preconditioned conjugate gradients, stopped at a
  relative residual ``cg_tol`` or after ``cg_iters`` iterations (an inexact,
  truncated-Newton step; Ceres' ITERATIVE_SCHUR with SCHUR_JACOBI). Any layout.

Both use the inverse Cholesky factors L_i⁻¹ of the row blocks U'_i
(:func:`inverse_cholesky`). A block that is not positive definite makes the
step non-finite, and the step is then rejected by the caller.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from lrfactor.solvers import blocks as bk

LINEAR_SOLVERS = ("auto", "dense_schur", "schur_pcg")
# ``auto`` uses dense_schur on the dense layout while the reduced system has at
# most this many unknowns (min(n, m)·r): its factorisation is then (m r)³/3
# flops and an (m r)² matrix (128 MiB in float64 at the limit); above, or on
# coordinate lists, schur_pcg.
AUTO_DENSE_UNKNOWNS = 4096
UNROLL_MAX_RANK = 16  # above it the unrolled factorisation compiles too slowly (r³/6 terms)


def choose(linear_solver: str, coo: bool, n: int, m: int, r: int) -> str:
    """The solver ``auto`` stands for (static shapes); a named one is checked against the layout."""
    if linear_solver not in LINEAR_SOLVERS:
        raise ValueError(f"unknown linear solver {linear_solver!r}; known: {', '.join(LINEAR_SOLVERS)}")
    if linear_solver == "auto":
        return "dense_schur" if not coo and min(n, m) * r <= AUTO_DENSE_UNKNOWNS else "schur_pcg"
    if linear_solver == "dense_schur" and coo:
        raise ValueError("linear solver dense_schur needs the dense layout; use schur_pcg on coordinate lists")
    return linear_solver


def inverse_cholesky(U):
    """L⁻¹ for the Cholesky factors L of a batch of small SPD matrices U (…, r, r).

    For r ≤ UNROLL_MAX_RANK, Cholesky–Banachiewicz and forward substitution
    unrolled over the r² entries: elementwise arithmetic over the batch that
    XLA fuses into a few loops, several times faster on the CPU than LAPACK's
    potrf and trsm called block by block. Same operations as the unblocked
    Cholesky algorithm. A block that is not positive definite gets NaN entries
    from its failing pivot on (LAPACK's path NaNs the whole block); either way
    the step built on it is non-finite and rejected.
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


# ----------------------------------------------------------------------------- dense_schur


def schur_product(Linv, W, H, omega, row_block: int):
    """Cᵀ U'⁻¹ C as an (m r × m r) matrix, from the inverses L_i⁻¹ of the Cholesky factors of U'_i.

    With Y_ij = L_i⁻¹ u_ij,

        (Cᵀ U'⁻¹ C)[(j,a),(k,c)] = H_ja H_kc Σ_i W_ia W_ic · ω_ij ω_ik (Y_ij · Y_ik)

    i.e. K_ijk = ω_ij ω_ik (Y_ij · Y_ik) for the m(m+1)/2 pairs j ≤ k, then one
    (m(m+1)/2 × n) @ (n × r(r+1)/2) product with the pairs W_ia W_ic, a ≤ c:
    n m² (r + r(r+1)/2) flops instead of n m² r³. Dense masks only (ω is (n, m)).

    Rows are processed in blocks of ``row_block`` under a scan so that the
    (m(m+1)/2 × rows) intermediate stays small. Layout matters more than flops
    here (XLA on the CPU): the row index i is kept innermost, so K's gather
    runs over whole contiguous rows and its product with W∘W is a plain
    (pairs × rows) @ (rows × r(r+1)/2) matmul; with i outermost the product
    ran about twice as long, most of it in a gather that could not vectorise.
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

    blks = (Lp.reshape(nb, row_block, r, r), Wp.reshape(nb, row_block, r), Op.reshape(nb, row_block, m))
    Tt, _ = jax.lax.scan(block, jnp.zeros((tj.size, ia.size), W.dtype), blks)
    # One gather builds the full matrix: entry ((j,a),(k,c)) is Tt[(min, max of j, k), pair(a, c)] H_ja H_kc.
    J, A, K, C = np.ix_(np.arange(m), np.arange(r), np.arange(m), np.arange(r))
    lo, hi = np.minimum(J, K), np.maximum(J, K)
    flat = ((lo * m - lo * (lo - 1) // 2 + hi - lo) * ia.size + pair[A, C]).reshape(m * r, m * r).astype(np.int32)
    h = H.reshape(-1)
    return Tt.reshape(-1)[flat] * h[:, None] * h[None, :]


class SchurFactor(NamedTuple):
    """Factorisation of the damped Gauss-Newton matrix, reusable for many right-hand sides."""

    Linv: jax.Array  # (n, r, r) L_i⁻¹, L_i the Cholesky factor of U'_i: U'_i⁻¹ b = L_i⁻ᵀ (L_i⁻¹ b)
    R: jax.Array  # (m r, m r) Cholesky factor of the reduced matrix S' − Cᵀ U'⁻¹ C


def factorize(W, H, omega, U, S, dX, dY, row_block: int = 256, schur_dtype=None) -> SchurFactor:
    """Factor JᵀΩJ + diag(dX, dY) (dense layout). ``dX`` (n, r) and ``dY`` (m, r)
    hold everything added to the diagonal (penalty curvature, damping).

    With ``schur_dtype=float32`` the reduced matrix (its product is nearly all
    the flops) is formed and factored in float32; pair it with
    :func:`refined_solve`, which recovers float64 accuracy by iterative
    refinement against the float64 operator.
    """
    r = W.shape[1]
    m = H.shape[0]
    Linv = inverse_cholesky(bk.add_diag(U, dX))
    c = (lambda x: x.astype(schur_dtype)) if schur_dtype is not None else (lambda x: x)
    red = -schur_product(*jax.lax.optimization_barrier((c(Linv), c(W), c(H), c(omega))), min(row_block, W.shape[0]))
    # S' goes on the block diagonal by a broadcast product rather than a
    # scatter, so that the whole assembly is one elementwise fusion.
    bd = jnp.eye(m, dtype=red.dtype)[:, None, :, None] * c(bk.add_diag(S, dY))[:, :, None, :]
    red = red + bd.reshape(m * r, m * r)
    # red is symmetric by construction (to the rounding of S's own product;
    # potrf reads one triangle): no symmetrisation, and its transpose (a free
    # relayout) is what LAPACK's column-major potrf wants without a copy.
    return SchurFactor(Linv, jax.lax.linalg.cholesky(red.T, symmetrize_input=False))


def schur_solve(f: SchurFactor, prob, W, H, omega, bX, bY):
    """(ΔX, ΔY, U'⁻¹ bX) with (JᵀΩJ + diag(dX, dY)) (ΔX, ΔY) = (bX, bY), by the factor ``f``."""
    m, r = H.shape
    z = bk.chol_apply(f.Linv, bX)  # U'⁻¹ b_X
    rhs = (bY - bk.couple_t(prob, W, H, omega, z)).reshape(-1)
    dY = jsl.cho_solve((f.R, True), rhs.astype(f.R.dtype)).astype(rhs.dtype).reshape(m, r)
    return bk.chol_apply(f.Linv, bX - bk.couple(prob, W, H, omega, dY)), dY, z


def refined_solve(f: SchurFactor, prob, W, H, omega, dX, dY, bX, bY, iters: int):
    """Solve (JᵀΩJ + diag(dX, dY)) x = b with a lower-precision factor ``f`` and
    ``iters`` steps of iterative refinement, residuals in the working precision."""
    xX, xY, _ = schur_solve(f, prob, W, H, omega, bX, bY)

    def body(x, _):
        rX, rY = bk.gn_matvec(prob, W, H, omega, dX, dY, *x)
        cX, cY, _ = schur_solve(f, prob, W, H, omega, bX - rX, bY - rY)
        return (x[0] + cX, x[1] + cY), None

    (xX, xY), _ = jax.lax.scan(body, (xX, xY), None, length=iters)
    return xX, xY


def dense_schur(prob, W, H, omega, U, dX, dY, bX, bY, *, row_block: int = 256, schur_dtype=None,
                refine: int = 0):
    """The exact step by the dense Schur complement; (ΔX, ΔY, 0, 0) (no CG iterations).

    ``U``: the row blocks of JᵀΩJ; the column blocks S are formed here (a
    product on the dense layout).

    ``schur_dtype``: the precision the reduced system is formed and factored in
    (None: the working precision); in a run already at that precision there is
    nothing to refine against, and it factors in the working precision.
    """
    mixed = schur_dtype is not None and W.dtype != schur_dtype
    S = bk.col_blocks(prob, W, H, omega)
    f = factorize(W, H, omega, U, S, dX, dY, row_block, schur_dtype if mixed else None)
    if refine and mixed:
        sX, sY = refined_solve(f, prob, W, H, omega, dX, dY, bX, bY, refine)
    else:
        sX, sY, _ = schur_solve(f, prob, W, H, omega, bX, bY)
    zero = jnp.zeros((), W.dtype)
    return sX, sY, jnp.asarray(0, jnp.int32), zero


# ----------------------------------------------------------------------------- schur_pcg


def pcg(op, precond, b, iters: int, tol: float):
    """Preconditioned CG for op(y) = b from y = 0 (op SPD), at most ``iters``
    iterations, stopping once ‖b − op(y)‖ ≤ tol·‖b‖. Returns (y, iterations, relative residual).

    A ``lax.while_loop``: the iterations past convergence are not computed. A
    direction of non-positive curvature (rounding) leaves y as it is.
    """
    dot = lambda a, c: jnp.vdot(a, c)
    bnorm = jnp.sqrt(dot(b, b))
    thresh = tol * bnorm
    z = precond(b)
    rz = dot(b, z)
    init = (jnp.asarray(0, jnp.int32), jnp.zeros_like(b), b, z, rz, bnorm)

    def cond(c):
        k, _, _, _, _, rnorm = c
        return (k < iters) & (rnorm > thresh)

    def body(c):
        k, y, res, p, rz, _ = c
        Ap = op(p)
        pAp = dot(p, Ap)
        alpha = rz / jnp.where(pAp > 0, pAp, jnp.inf)
        y = y + alpha * p
        res = res - alpha * Ap
        z = precond(res)
        rz_new = dot(res, z)
        p = z + (rz_new / jnp.where(rz == 0, 1.0, rz)) * p
        return k + 1, y, res, p, rz_new, jnp.sqrt(dot(res, res))

    k, y, _, _, _, rnorm = jax.lax.while_loop(cond, body, init)
    return y, k, rnorm / jnp.where(bnorm > 0, bnorm, 1.0)


def schur_pcg(prob, W, H, omega, U, dX, dY, bX, bY, *, cg_iters: int = 100, cg_tol: float = 1e-2):
    """The step by block-Jacobi PCG on the reduced system, matrix-free; any layout.

    Returns (ΔX, ΔY, PCG iterations, relative residual of the reduced solve).
    Memory O(|Ω| + (n + m) r²): neither R nor S is formed; R's diagonal blocks
    are (:func:`lrfactor.solvers.blocks.jacobi_blocks`, one r × r sweep over
    the entries besides U's).
    """
    Linv = inverse_cholesky(bk.add_diag(U, dX))
    Uinv = jnp.einsum("kia,kib->kab", Linv, Linv)  # U'⁻¹ = L⁻ᵀ L⁻¹, for the Jacobi blocks
    Pinv = inverse_cholesky(bk.jacobi_blocks(prob, W, H, omega, Uinv, dY))

    def reduced(y):
        return bk.reduced_apply(prob, W, H, omega, Linv, dY, y)

    rhs = bY - bk.couple_t(prob, W, H, omega, bk.chol_apply(Linv, bX))
    sY, k, relres = pcg(reduced, lambda v: bk.chol_apply(Pinv, v), rhs, cg_iters, cg_tol)
    sX = bk.chol_apply(Linv, bX - bk.couple(prob, W, H, omega, sY))
    return sX, sY, k, relres

"""Levenberg-Marquardt on a coordinate list, reduced system by block-Jacobi PCG.

The large-problem counterpart of lrfactor/solvers/gauss_newton.py (same
objective, same Nielsen damping, same stopping tests), for matrices too large
for dense masks and reduced systems too large to factor densely. It is Ceres'
ITERATIVE_SCHUR linear solver inside a Levenberg-Marquardt loop (Agarwal,
Snavely, Seitz & Szeliski, "Bundle adjustment in the large", ECCV 2010).

Objective (frobenius loss, log space W = exp X, H = exp Y, N = |Ω|)::

    F = ½ Σ_e r_e² + c·l2·(ΣX² + ΣY²),   r_e = W_i·H_j − V_ij,  c = N/2

so F = c·(MSE + l2·(ΣX² + ΣY²)) exactly as the dense solver's scaled objective.
With u_e = W_i ∘ H_j for the entry e = (i, j) (∂r_e/∂X_i = ∂r_e/∂Y_j = u_e),
and pen = c·l2::

    g_X[i] = Σ_{e∈row i} r_e u_e + 2·pen·X_i,   U_i = Σ_{e∈row i} u_e u_eᵀ   (n blocks r × r)
    g_Y[j] = Σ_{e∈col j} r_e u_e + 2·pen·Y_j,   S_j = Σ_{e∈col j} u_e u_eᵀ   (m blocks r × r)
    C_ij = u_e u_eᵀ,  applied matrix-free:
        (C y)_i  = Σ_{e∈row i} u_e (u_eᵀ y_j),     (Cᵀ x)_j = Σ_{e∈col j} u_e (u_eᵀ x_i).

All sums are scatter-adds over chunks of entries (lrfactor/sparse.py), so the
memory is O(N + (n + m)·r²) — no per-entry r × r array is ever whole. The
damped system (JᵀJ + (2·pen + λ)·I) Δ = −g (Levenberg damping, DESIGN.md §2)
is reduced onto the smaller side Y (the larger side X is eliminated)::

    R ΔY = −g_Y + Cᵀ U'⁻¹ g_X,   R = S' − Cᵀ U'⁻¹ C,   ΔX = U'⁻¹ (−g_X − C ΔY)

with U' = U + d_X I, S' = S + d_Y I. R is applied matrix-free,
y ↦ S'y − Cᵀ(U'⁻¹(C y)), and solved by preconditioned conjugate gradients
started from 0, stopped at ‖R y − b‖ ≤ cg_tol·‖b‖ or after cg_iters
iterations (a truncated Newton step: Ceres' ``eta``). The preconditioner is
block Jacobi on R (Ceres' SCHUR_JACOBI): its r × r diagonal blocks

    R_jj = S'_j − Σ_{e∈col j} C_ijᵀ U'_i⁻¹ C_ij = S'_j − Σ_{e∈col j} (u_eᵀ U'_i⁻¹ u_e) u_e u_eᵀ

(one scalar per entry, since C_ij = u_e u_eᵀ has rank one), Cholesky-factored.

The step is scored by the undamped Gauss-Newton model of F,
pred = −gᵀΔ − ½(‖JΔ‖² + 2·pen·‖Δ‖²), ρ = (F − F_new)/pred; Nielsen's update
(as Ceres): accepted steps shrink λ by max(1/3, 1 − (2ρ − 1)³), rejected ones
multiply it by ν and double ν. A rejected step returns the old parameters and
objective via ``jnp.where`` on whole leaves.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from lrfactor import factors as fac
from lrfactor import sparse
from lrfactor.factors import Factors
from lrfactor.solvers.base import Solver
from lrfactor.solvers.gauss_newton import balance_gauge, converged, trust_update
from lrfactor.sparse import Entries, SparseProblem, gather, scatter_add


class SparseGNState(NamedTuple):
    params: Factors  # log-factors A (n, r), B (m, r)
    F: jax.Array  # () scaled objective ½Σr² + c·l2·(ΣA² + ΣB²) at params
    lam: jax.Array  # () damping λ
    nu: jax.Array  # () Nielsen's growth factor for λ after a rejection
    accepted: jax.Array  # () bool: the last step was accepted
    n_accepted: jax.Array  # () int32 accepted steps so far
    grad_inf: jax.Array  # () max |g| at the params the last step started from
    rho: jax.Array  # () gain ratio of the last step
    cg_iters: jax.Array  # () int32 PCG iterations spent on the last step
    cg_relres: jax.Array  # () ‖R y − b‖ / ‖b‖ at the end of the last PCG solve
    done: jax.Array  # () bool: a stopping test fired


# ----------------------------------------------------------------------------- entry sweeps


def normal_equations(W, H, e: Entries, rows_sorted: bool = True):
    """One sweep: (½Σr², Σ r u by row, by col, U (n,r,r), S (m,r,r)). The r × r
    outer products exist one chunk at a time."""
    n, r = W.shape
    m = H.shape[0]

    def body(acc, ch):
        sq, gr, gc, U, S = acc
        rr, cc, vv, ok = ch
        u = gather(W, rr) * gather(H, cc)
        res = jnp.where(ok, jnp.sum(u, axis=1) - vv, 0.0)
        ru = res[:, None] * u
        uu = u[:, :, None] * u[:, None, :]
        return (sq + 0.5 * jnp.sum(res**2), scatter_add(gr, rr, ru, rows_sorted), scatter_add(gc, cc, ru),
                scatter_add(U, rr, uu, rows_sorted), scatter_add(S, cc, uu)), None

    z = jnp.zeros
    init = (z((), W.dtype), z((n, r), W.dtype), z((m, r), W.dtype), z((n, r, r), W.dtype), z((m, r, r), W.dtype))
    out, _ = jax.lax.scan(body, init, tuple(e))
    return out


def couple(W, H, e: Entries, y, rows_sorted: bool = True):
    """C y: (C y)_i = Σ_{e∈row i} u_e (u_eᵀ y_j), shape (n, r)."""

    def body(acc, ch):
        rr, cc, _, _ = ch
        u = gather(W, rr) * gather(H, cc)
        t = jnp.sum(u * gather(y, cc), axis=1)
        return scatter_add(acc, rr, t[:, None] * u, rows_sorted), None

    out, _ = jax.lax.scan(body, jnp.zeros_like(W), tuple(e))
    return out


def couple_t(W, H, e: Entries, x):
    """Cᵀ x: (Cᵀ x)_j = Σ_{e∈col j} u_e (u_eᵀ x_i), shape (m, r)."""

    def body(acc, ch):
        rr, cc, _, _ = ch
        u = gather(W, rr) * gather(H, cc)
        t = jnp.sum(u * gather(x, rr), axis=1)
        return scatter_add(acc, cc, t[:, None] * u), None

    out, _ = jax.lax.scan(body, jnp.zeros_like(H), tuple(e))
    return out


def preconditioner_blocks(W, H, e: Entries, Uinv, Sd):
    """Diagonal blocks of the reduced matrix, R_jj = S'_j − Σ_{e∈col j} (u_eᵀ U'_i⁻¹ u_e) u_e u_eᵀ, (m, r, r)."""

    def body(acc, ch):
        rr, cc, _, _ = ch
        u = gather(W, rr) * gather(H, cc)
        q = jnp.einsum("ea,eab,eb->e", u, gather(Uinv, rr), u)
        return scatter_add(acc, cc, q[:, None, None] * u[:, :, None] * u[:, None, :]), None

    out, _ = jax.lax.scan(body, jnp.zeros_like(Sd), tuple(e))
    return Sd - out


def step_quality(X, Y, dX, dY, e: Entries):
    """One sweep at the trial point: (‖JΔ‖², ½Σ r_e(X + ΔX, Y + ΔY)²)."""
    W, H = jnp.exp(X), jnp.exp(Y)
    Wn, Hn = jnp.exp(X + dX), jnp.exp(Y + dY)

    def body(acc, ch):
        jd, sq = acc
        rr, cc, vv, ok = ch
        u = gather(W, rr) * gather(H, cc)
        Jd = jnp.where(ok, jnp.sum(u * (gather(dX, rr) + gather(dY, cc)), axis=1), 0.0)
        res = jnp.where(ok, jnp.sum(gather(Wn, rr) * gather(Hn, cc), axis=1) - vv, 0.0)
        return (jd + jnp.sum(Jd**2), sq + 0.5 * jnp.sum(res**2)), None

    zero = jnp.zeros((), X.dtype)
    (jd, sq), _ = jax.lax.scan(body, (zero, zero), tuple(e))
    return jd, sq


# ----------------------------------------------------------------------------- linear algebra


def _blocks_apply(M, x):
    return jnp.einsum("iab,ib->ia", M, x)


def _add_diag(blocks, d):
    return blocks + d[..., :, None] * jnp.eye(blocks.shape[-1], dtype=blocks.dtype)


def pcg(op, precond, b, iters: int, tol: float):
    """Preconditioned CG for op(y) = b from y = 0 (op SPD), at most ``iters``
    iterations, stopping once ‖b − op(y)‖ ≤ tol·‖b‖. Returns (y, iterations, relative residual).

    A ``lax.while_loop``: the iterations past convergence are not computed.
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
        alpha = rz / jnp.where(pAp > 0, pAp, jnp.inf)  # a non-SPD direction (roundoff) leaves y as is
        y = y + alpha * p
        res = res - alpha * Ap
        z = precond(res)
        rz_new = dot(res, z)
        p = z + (rz_new / jnp.where(rz == 0, 1.0, rz)) * p
        return k + 1, y, res, p, rz_new, jnp.sqrt(dot(res, res))

    k, y, _, _, _, rnorm = jax.lax.while_loop(cond, body, init)
    return y, k, rnorm / jnp.where(bnorm > 0, bnorm, 1.0)


class SchurPCG(NamedTuple):
    """What the reduced solve needs, built once per step, reusable for any right-hand side."""

    Uinv: jax.Array  # (n, r, r) U'_i⁻¹
    Sd: jax.Array  # (m, r, r) S'_j
    P: jax.Array  # (m, r, r) Cholesky factors of the block-Jacobi blocks R_jj


def prepare(W, H, e: Entries, U, S, dX, dY) -> SchurPCG:
    """U'⁻¹ by Cholesky, S', and the factored block-Jacobi preconditioner of R."""
    r = W.shape[1]
    Ud = _add_diag(U, dX)
    L = jnp.linalg.cholesky(Ud)
    eye = jnp.broadcast_to(jnp.eye(r, dtype=W.dtype), Ud.shape)
    Uinv = jax.vmap(lambda l, i: jsl.cho_solve((l, True), i))(L, eye)
    Uinv = 0.5 * (Uinv + jnp.swapaxes(Uinv, 1, 2))
    Sd = _add_diag(S, dY)
    return SchurPCG(Uinv, Sd, jnp.linalg.cholesky(preconditioner_blocks(W, H, e, Uinv, Sd)))


def solve(f: SchurPCG, W, H, e: Entries, bX, bY, cg_iters: int, cg_tol: float, rows_sorted: bool = True):
    """(ΔX, ΔY, PCG iterations, relative residual) with (JᵀJ + diag(dX, dY)) Δ = (bX, bY):

    ΔY = R⁻¹ (bY − Cᵀ U'⁻¹ bX) by PCG,   ΔX = U'⁻¹ (bX − C ΔY).
    """
    reduced = lambda y: _blocks_apply(f.Sd, y) - couple_t(W, H, e, _blocks_apply(f.Uinv, couple(W, H, e, y, rows_sorted)))
    block_solve = jax.vmap(lambda l, v: jsl.cho_solve((l, True), v))
    precond = lambda v: block_solve(f.P, v)
    rhs = bY - couple_t(W, H, e, _blocks_apply(f.Uinv, bX))
    dY, k, relres = pcg(reduced, precond, rhs, cg_iters, cg_tol)
    dX = _blocks_apply(f.Uinv, bX - couple(W, H, e, dY, rows_sorted))
    return dX, dY, k, relres


def damped_step(W, H, e: Entries, gX, gY, U, S, dX, dY, cg_iters: int = 100, cg_tol: float = 1e-2,
                rows_sorted: bool = True):
    """Solve (JᵀJ + diag(dX, dY)) (ΔX, ΔY) = −(g_X, g_Y) by PCG on the Schur complement
    (the inexact counterpart of lrfactor.solvers.gauss_newton.damped_step)."""
    return solve(prepare(W, H, e, U, S, dX, dY), W, H, e, -gX, -gY, cg_iters, cg_tol, rows_sorted)


# ----------------------------------------------------------------------------- solver


def make_sparse_gauss_newton(
    l2: float = 0.0,
    rank: int = 8,
    init: str = "keras",
    lambda0: float = 1e-3,
    cg_iters: int = 100,
    cg_tol: float = 1e-2,
    chunk: int = sparse.DEFAULT_CHUNK,
    ftol: float = 1e-10,
    gtol: float = 1e-12,
    xtol: float = 1e-10,
) -> Solver:
    """Joint Levenberg LM on a SparseProblem (frobenius loss). Fixed settings are
    arguments; λ, counters and ``done`` live in the state.

    ``cg_tol`` is the relative residual at which PCG stops (Ceres' ``eta``,
    default 0.1 there); ``cg_iters`` caps it. ``chunk`` entries are processed
    at a time. ``predict`` is the dense W Hᵀ of the Solver interface (small
    problems only); score large ones with lrfactor.sparse.val_mse.
    """

    def oriented(p: Factors, problem: SparseProblem):
        """The side to eliminate (the larger one) first, with its entries chunked."""
        n, m = problem.shape
        if n >= m:
            e = sparse.chunk_entries(problem.rows, problem.cols, problem.vals, n, m, chunk)
            return p.A, p.B, e, False
        e = sparse.chunk_entries(problem.cols, problem.rows, problem.vals, m, n, chunk)
        return p.B, p.A, e, True

    def unorient(X, Y, flip) -> Factors:
        return Factors(Y, X) if flip else Factors(X, Y)

    def scale(problem):
        return 0.5 * problem.rows.shape[0]

    def init_state(p: Factors, problem: SparseProblem, key=None) -> SparseGNState:
        del key
        if l2 > 0:
            p = balance_gauge(p)
        X, Y, e, flip = oriented(p, problem)
        sq, _, _, U, S = normal_equations(jnp.exp(X), jnp.exp(Y), e, rows_sorted=not flip)
        diag = jnp.concatenate([jnp.diagonal(U, axis1=1, axis2=2).ravel(), jnp.diagonal(S, axis1=1, axis2=2).ravel()])
        F = sq + scale(problem) * l2 * (jnp.sum(p.A**2) + jnp.sum(p.B**2))
        return SparseGNState(
            params=p, F=F, lam=lambda0 * jnp.mean(diag), nu=jnp.asarray(2.0, F.dtype),
            accepted=jnp.asarray(True), n_accepted=jnp.asarray(0, jnp.int32),
            grad_inf=jnp.asarray(jnp.inf, F.dtype), rho=jnp.asarray(jnp.nan, F.dtype),
            cg_iters=jnp.asarray(0, jnp.int32), cg_relres=jnp.asarray(jnp.nan, F.dtype), done=jnp.asarray(False),
        )

    def step(state: SparseGNState, problem: SparseProblem) -> SparseGNState:
        pen = scale(problem) * l2
        X, Y, e, flip = oriented(state.params, problem)
        W, H = jnp.exp(X), jnp.exp(Y)
        _, gX, gY, U, S = normal_equations(W, H, e, rows_sorted=not flip)
        gX, gY = gX + 2 * pen * X, gY + 2 * pen * Y
        dX = (2 * pen + state.lam) * jnp.ones_like(X)
        dY = (2 * pen + state.lam) * jnp.ones_like(Y)
        stepX, stepY, k, relres = damped_step(W, H, e, gX, gY, U, S, dX, dY, cg_iters, cg_tol, rows_sorted=not flip)

        jd, sq_new = step_quality(X, Y, stepX, stepY, e)
        pred = -(jnp.sum(gX * stepX) + jnp.sum(gY * stepY)) - 0.5 * (jd + 2 * pen * (jnp.sum(stepX**2) + jnp.sum(stepY**2)))
        new_params = unorient(X + stepX, Y + stepY, flip)
        if l2 > 0:
            new_params = balance_gauge(new_params)
        F_new = sq_new + pen * (jnp.sum(new_params.A**2) + jnp.sum(new_params.B**2))
        ok, rho, lam, nu = trust_update(state.F, F_new, pred, state.lam, state.nu)
        params = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_params, state.params)
        F = jnp.where(ok, F_new, state.F)
        g_inf = jnp.maximum(jnp.max(jnp.abs(gX)), jnp.max(jnp.abs(gY)))
        theta = jnp.sqrt(jnp.sum(X**2) + jnp.sum(Y**2))
        dnorm = jnp.sqrt(jnp.sum(stepX**2) + jnp.sum(stepY**2))
        done = converged(ok, state.F, F_new, g_inf, dnorm, theta, nu, ftol, gtol, xtol)
        return SparseGNState(params, F, lam, nu, ok, state.n_accepted + ok.astype(jnp.int32), g_inf, rho,
                             k, relres, done)

    extras = (
        ("lam", lambda s: s.lam),
        ("accepted", lambda s: s.accepted),
        ("grad_inf", lambda s: s.grad_inf),
        ("rho", lambda s: s.rho),
        ("cg_iters", lambda s: s.cg_iters),
    )
    return Solver(
        name="sparse_gauss_newton",
        init_params=lambda key, problem: sparse.init_factors(key, problem, rank, init),
        init=init_state,
        step=step,
        predict=lambda p, problem: fac.predict(p),
        objective=lambda p, problem: sparse.objective(p, problem, l2, chunk),
        extras=extras,
    )

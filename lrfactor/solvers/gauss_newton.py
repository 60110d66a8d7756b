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

i.e. one (r² × n) @ (n × m²) product: n m² (r + r²) flops instead of n m² r³.

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

from lrfactor import factors as fac
from lrfactor import losses
from lrfactor.factors import Factors
from lrfactor.problems import Problem
from lrfactor.solvers.base import Solver

METHODS = ("varpro", "joint", "joint_epi")
DAMPINGS = ("levenberg", "marquardt")
MIN_DIAG, MAX_DIAG = 1e-6, 1e32  # Ceres' clamp of the Marquardt diagonal


class GNState(NamedTuple):
    params: Factors  # log-factors A (n, r), B (m, r)
    F: jax.Array  # () the scaled objective at params
    lam: jax.Array  # () damping λ
    nu: jax.Array  # () Nielsen's growth factor for λ after a rejection
    accepted: jax.Array  # () bool: whether the last step was accepted
    n_accepted: jax.Array  # () int: accepted steps so far
    grad_inf: jax.Array  # () max |g| at params
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


def schur_product(L, W, H, omega, row_block: int):
    """Cᵀ U'⁻¹ C as an (m r × m r) matrix, from the Cholesky factors L_i of U'_i.

    Rows are processed in blocks of ``row_block`` under a scan so that the
    (rows × m × m) intermediate stays small.
    """
    n, r = W.shape
    m = H.shape[0]
    nb = -(-n // row_block)
    pad = nb * row_block - n
    eye = jnp.eye(r, dtype=W.dtype)
    Lp = jnp.concatenate([L, jnp.broadcast_to(eye, (pad, r, r))]) if pad else L
    Wp = jnp.pad(W, ((0, pad), (0, 0)))
    Op = jnp.pad(omega, ((0, pad), (0, 0)))

    def block(acc, xs):
        Lb, Wb, Ob = xs
        P = jax.vmap(lambda l, w: jsl.solve_triangular(l, jnp.diag(w), lower=True))(Lb, Wb)  # L⁻¹ diag(W_i)
        Y = jnp.einsum("iab,jb->iaj", P, H) * Ob[:, None, :]  # ω_ij L_i⁻¹ u_ij
        K = jnp.einsum("iaj,iak->ijk", Y, Y)  # ω_ij ω_ik u_ijᵀ U_i⁻¹ u_ik
        WW = (Wb[:, :, None] * Wb[:, None, :]).reshape(row_block, r * r)
        return acc + WW.T @ K.reshape(row_block, m * m), None

    blocks = (Lp.reshape(nb, row_block, r, r), Wp.reshape(nb, row_block, r), Op.reshape(nb, row_block, m))
    T, _ = jax.lax.scan(block, jnp.zeros((r * r, m * m), W.dtype), blocks)
    T = T.reshape(r, r, m, m).transpose(2, 0, 3, 1) * H[:, :, None, None] * H[None, None, :, :]
    return T.reshape(m * r, m * r)


def damped_step(W, H, omega, gA, gB, U, S, dA, dB, row_block: int = 128):
    """Solve (JᵀΩJ + diag(dA, dB)) (ΔA, ΔB) = −(g_A, g_B) by the Schur complement on B.

    ``dA`` (n, r) and ``dB`` (m, r) hold everything added to the diagonal
    (penalty curvature, damping). Returns (ΔA, ΔB, U'⁻¹ g_A); ΔA + U'⁻¹ g_A is
    the part of ΔA that responds to ΔB alone (variable projection's linearised
    A*(B + ΔB) − A).
    """
    n, r = W.shape
    m = H.shape[0]
    L = jnp.linalg.cholesky(_add_diag(U, dA))
    Sp = _add_diag(S, dB)
    red = -schur_product(L, W, H, omega, min(row_block, n))
    idx = jnp.arange(m)
    red = red.reshape(m, r, m, r).at[idx, :, idx, :].add(Sp).reshape(m * r, m * r)
    z = jax.vmap(lambda l, g: jsl.cho_solve((l, True), g))(L, gA)  # U'⁻¹ g_A
    CtUg = ((omega * ((W * z) @ H.T)).T @ W) * H
    rhs = (-gB + CtUg).reshape(-1)
    dBv = jsl.cho_solve(jsl.cho_factor(red, lower=True), rhs).reshape(m, r)
    CdB = ((omega * (W @ (H * dBv).T)) @ H) * W
    dAv = jax.vmap(lambda l, g: jsl.cho_solve((l, True), g))(L, -gA - CdB)
    return dAv, dBv, z


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


def balance_gauge(p: Factors) -> Factors:
    """Shift (A[:,k] + c_k, B[:,k] − c_k) to minimise ΣA² + ΣB²; W Hᵀ is unchanged."""
    n, m = p.A.shape[0], p.B.shape[0]
    c = (m * jnp.mean(p.B, axis=0) - n * jnp.mean(p.A, axis=0)) / (n + m)
    return Factors(p.A + c, p.B - c)


# ----------------------------------------------------------------------------- solver


def make_gauss_newton(
    loss: str = "frobenius",
    l2: float = 0.0,
    rank: int = 8,
    init: str = "keras",
    method: str = "varpro",
    damping: str = "levenberg",
    lambda0: float = 1e-3,
    inner: int = 3,
    ftol: float = 1e-10,
    gtol: float = 1e-12,
    xtol: float = 1e-10,
    row_block: int = 128,
    init_inner: int = 10,
) -> Solver:
    """The flagship solver. Fixed settings are arguments; λ, counters and ``done`` live in the state."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if damping not in DAMPINGS:
        raise ValueError(f"unknown damping {damping!r}; known: {', '.join(DAMPINGS)}")
    damp_rows = method != "varpro"
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
            X = refine_rows(X, jnp.exp(Y), V, M, loss, pen, init_inner, ridge(X.dtype))
            p = unorient(X, Y, flip)
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
            grad_inf=jnp.asarray(jnp.inf, F.dtype), done=jnp.asarray(False),
        )

    def step(state: GNState, problem: Problem) -> GNState:
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
        else:
            DX = jnp.clip(jnp.diagonal(U, axis1=1, axis2=2), MIN_DIAG, MAX_DIAG)
            DY = jnp.clip(jnp.diagonal(S, axis1=1, axis2=2), MIN_DIAG, MAX_DIAG)
        if damp_rows:
            dX = 2 * pen + state.lam * DX
        else:
            tr = jnp.trace(U, axis1=1, axis2=2)[:, None] / r
            dX = 2 * pen + ridge(X.dtype) * jnp.maximum(tr, 1e-300) * jnp.ones_like(X)
        dY = 2 * pen + state.lam * DY
        if damp_rows:
            stepX, stepY, _ = damped_step(W, H, omega, gX, gY, U, S, dX, dY, row_block)
        else:
            # Variable projection: the reduced system of F(A*(B), B), where
            # g_X = 0. X is only approximately optimal and its undamped blocks
            # may be nearly singular (symmetric start, dead components), so the
            # −U⁻¹g_X part is left to the safeguarded row iterations and X
            # follows ΔY through its linearised optimum A*(B + ΔB) ≈ A − U⁻¹CΔB.
            stepX, stepY, _ = damped_step(W, H, omega, jnp.zeros_like(gX), gY, U, S, dX, dY, row_block)

        # Decrease predicted by the undamped Gauss-Newton model of F (for
        # varpro, the reduced model: g_X dropped as at A*(B)).
        JD = (W * stepX) @ H.T + W @ (H * stepY).T
        lin = jnp.sum(gY * stepY) + (jnp.sum(gX * stepX) if damp_rows else 0.0)
        pred = -lin - 0.5 * (jnp.sum(omega * JD**2) + 2 * pen * (jnp.sum(stepX**2) + jnp.sum(stepY**2)))
        Yn = Y + stepY
        if damp_rows:
            Xn = refine_rows(X + stepX, jnp.exp(Yn), V, M, loss, pen, n_inner, ridge(X.dtype))
        else:
            Xn = refine_rows(X, jnp.exp(Yn), V, M, loss, pen, n_inner, ridge(X.dtype), A_alt=X + stepX)
        new_params = balance_gauge(unorient(Xn, Yn, flip))
        F_new = F_of(new_params, problem)
        actual = state.F - F_new
        rho = actual / jnp.where(pred > 0, pred, jnp.inf)
        ok = jnp.isfinite(F_new) & (actual > 0) & (rho > 1e-3)

        lam_ok = state.lam * jnp.maximum(1 / 3, 1 - (2 * jnp.minimum(rho, 1.0) - 1) ** 3)
        lam = jnp.where(ok, lam_ok, state.lam * state.nu)
        nu = jnp.where(ok, 2.0, 2 * state.nu)
        params = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_params, state.params)
        F = jnp.where(ok, F_new, state.F)

        g_inf = jnp.maximum(jnp.max(jnp.abs(gX)), jnp.max(jnp.abs(gY)))
        theta = jnp.sqrt(jnp.sum(X**2) + jnp.sum(Y**2))
        dnorm = jnp.sqrt(jnp.sum(stepX**2) + jnp.sum(stepY**2))
        small_f = ok & (actual <= ftol * state.F)
        small_g = g_inf <= gtol * jnp.maximum(state.F, jnp.finfo(F.dtype).tiny)
        small_x = ok & (dnorm <= xtol * (theta + xtol))
        stalled = nu >= 2.0**12  # 11 rejections in a row (λ grew ~2⁶⁶): no descent left at this precision
        done = small_f | small_g | small_x | stalled | ~jnp.isfinite(state.F)
        return GNState(params, F, lam, nu, ok, state.n_accepted + ok.astype(jnp.int32), g_inf, done)

    extras = (
        ("lam", lambda s: s.lam),
        ("accepted", lambda s: s.accepted),
        ("grad_inf", lambda s: s.grad_inf),
    )
    return Solver(
        name="gauss_newton",
        init_params=lambda key, problem: fac.init_factors(key, problem, rank, init),
        init=init_state,
        step=step,
        predict=lambda p, problem: fac.predict(p),
        objective=objective,
        extras=extras,
    )

"""Curvature of a training objective: HVPs, exact spectra, Lanczos, SLQ, the tracer.

The Hessian of ``f(x) = objective(params, problem)`` on the flattened parameters
``x = ravel_pytree(params)`` is never formed in the traced runs. Everything goes
through Hessian-vector products, forward-over-reverse (Pearlmutter 1994)::

    H v = d/dt ∇f(x + t v) |_{t=0}          (jax.jvp of jax.grad, linearized once)

For the factor model f = mean_Ω (Σ_k exp(A_ik + B_jk) − V_ij)² + l2·‖x‖² the
Hessian splits as H = G + Σ_Ω (2/|Ω|) r_ij ∇²r_ij, with the Gauss-Newton part
G = (2/|Ω|) JᵀJ + 2·l2·I (docs/design.md). Each ∇²r_ij is positive semidefinite
(exp of a sum), so negative curvature comes only from entries the model
under-predicts (r_ij < 0); G drops it.

What is measured (docs/design.md; Ghorbani, Krishnan & Xiao 2019, "An
investigation into neural net optimization via Hessian eigenvalue density";
Yao et al. 2020, PyHessian; Dauphin et al. 2014 for the index):

- extreme eigenvalues: Lanczos with full reorthogonalization, k steps from a
  random start; the largest/smallest Ritz values converge to λmax/λmin first;
- spectral density and index by stochastic Lanczos quadrature (SLQ; Golub &
  Meurant 2010, Ubaru, Chen & Saad 2017): for a probe v, the Lanczos
  tridiagonal T_k = S diag(θ) Sᵀ gives the Gauss quadrature

      vᵀ φ(H) v ≈ ‖v‖² Σ_j S_1j² φ(θ_j),

  so with Rademacher probes tr φ(H) ≈ mean_v ‖v‖² Σ_j S_1j² φ(θ_j). The index
  (fraction of negative eigenvalues) is φ = 1[λ < 0] divided by the dimension;
  the density is φ = a Gaussian bump, applied at plot time from the raw
  tridiagonals, which the tracer stores as init2winit does;
- where the gradient lies: ‖Vᵀg‖²/‖g‖² on the top Ritz vectors V
  (Gur-Ari, Roberts & Dyer 2018, "Gradient descent happens in a tiny subspace").

Gauge. For ``Factors`` the r directions z_k = (A[:,k] + c, B[:,k] − c) leave
W Hᵀ unchanged, so the data term is constant along them everywhere and
H z_k = 2·l2·z_k exactly: without an L2 term they are exact zero modes, with it
eigenvectors of eigenvalue 2·l2. Either way they are exact eigenvectors, so the
tracer removes them from the Lanczos operator (it runs on the orthogonal
complement, in Householder coordinates: see ``complement_maps``) and
reports them apart (``n_gauge``, ``gauge_rayleigh``, ``gauge_residual``); the
residual ‖H z − (zᵀHz) z‖ checks the invariance on every trace. ``eig_min`` is
then the smallest eigenvalue of the rest of the spectrum, and the index counts
the gauge modes as zero (not negative) eigenvalues of the full N × N Hessian.

The gauge is the straight-line part of a larger symmetry: f(W M, H M⁻ᵀ) = f(W, H)
for every invertible r × r M near I, an r²-dimensional orbit through every
point. Its r diagonal directions are straight lines in log space (the gauge);
the other r² − r curve (γ'' ≠ 0), so along them zᵀHz = −gᵀγ'' is not zero in
general. At a critical point (g = 0) the whole orbit is a manifold of critical
points and H has r² zero modes; only the r straight ones are removed, so
near convergence ``eig_min`` and the density show the other r² − r as
eigenvalues of size O(‖g‖) around zero.

Precision. The tracer computes in the run's precision: under ``--precision 32``
(the first-order default) float64 is switched off process-wide, so there is
nothing to upcast to. Full reorthogonalization keeps the Lanczos basis
orthonormal to working precision, so extreme eigenvalues stay accurate to about
1e-6·‖H‖; what float32 cannot resolve is the sign of eigenvalues within a few
ulps·‖H‖ of zero (the HVP itself carries that error). The index therefore counts
only θ < −tol with tol = 64·eps·max|θ| (``index_tol``; 7.6e-6·‖H‖ in float32,
1.4e-14·‖H‖ in float64), so round-off around flat directions does not pass for
negative curvature. ``exact_spectrum`` is float64 only.

Resolution. k-step Gauss quadrature resolves the spectrum to about
(λmax − λmin)/k in its interior. When most eigenvalues sit in a bulk narrower
than that around zero (the question's Adam runs: up to ~90 % within
1e-3·λmax after a few hundred epochs), the index is decided by the sign of the
one or two nodes standing for the bulk and jumps between probes and steps.
``near_zero`` (the bulk's mass, |λ| ≤ 1e-3·max|λ|) says when that happens, and
``index_significant`` (λ < −1e-3·max|λ|) counts only negative curvature the
quadrature separates from the bulk.

Lanczos (``lanczos``) is a short loop written here rather than matfree's
``decomp.tridiag_sym``: the basis is kept as k rows of length N, preset to
zero, and every step reorthogonalizes against all of it by classical
Gram-Schmidt applied twice (two (k, N) matrix-vector products; the rows not
yet filled are zero and contribute nothing). In the tracer on the question's
problem (10 seeds, 4 probes × 80 steps) that costs 0.68 s a trace against
matfree's Arnoldi-based full reorthogonalization at 1.0 s, a third of the
tracer's whole cost besides the Hessian-vector products, which nothing here
can cut. The tests check the tridiagonal against matfree's and the Ritz
values against dense ``eigh``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from lrfactor.factors import Factors

# Top Ritz vectors on which the gradient share is reported (``grad_top_share``).
TOP = 10
# Eigenvalues within INDEX_TOL_ULPS·eps·max|θ| of zero are not counted as negative.
INDEX_TOL_ULPS = 64
# The near-zero bulk: |λ| ≤ BULK_REL·max|λ| (``near_zero``; ``index_significant`` counts λ below it).
BULK_REL = 1e-3


# --------------------------------------------------------------------------- products


def hvp(objective: Callable, params, problem, v):
    """H v = ∂/∂t ∇f(params + t v)|₀ by forward-over-reverse (``jvp`` of ``grad``).

    ``v`` has the structure of ``params``. Pure and vmappable over ``v``.
    Pearlmutter (1994), "Fast exact multiplication by the Hessian".
    """
    return jax.jvp(lambda p: jax.grad(objective)(p, problem), (params,), (v,))[1]


def linearized_hessian(objective: Callable, params, problem):
    """The gradient and ``v ↦ H v`` on flat vectors, with the forward pass done once.

    Returns ``(g, matvec, unravel)`` with g = ∇f(x) (N,), ``matvec(v)`` = H v for
    v (N,), and ``unravel`` mapping a flat vector back to the params' pytree.
    ``jax.linearize`` of the flat gradient is forward-over-reverse with the
    primal evaluated once, so k Lanczos steps cost k tangent passes only.
    """
    x0, unravel = ravel_pytree(params)

    def grad_flat(x):
        return ravel_pytree(jax.grad(objective)(unravel(x), problem))[0]

    g, matvec = jax.linearize(grad_flat, x0)
    return g, matvec, unravel


def gnvp(predict: Callable, data_loss: Callable, params, problem, v, penalty: Optional[Callable] = None):
    """Generalized Gauss-Newton product G v = Jᵀ ∇²_ŷ ℓ J v (+ ∇²R v).

    ``predict(params, problem) -> ŷ``, ``data_loss(ŷ, problem) -> scalar`` (convex
    in ŷ), optional ``penalty(params) -> scalar`` R whose exact Hessian is added.
    J v by ``jvp`` of the model, the loss Hessian by forward-over-reverse in
    prediction space, Jᵀ by ``vjp``. Schraudolph (2002), "Fast curvature
    matrix-vector products for second-order gradient descent".
    """
    y, Jv = jax.jvp(lambda p: predict(p, problem), (params,), (v,))
    HJv = jax.jvp(lambda q: jax.grad(data_loss)(q, problem), (y,), (Jv,))[1]
    _, vjp = jax.vjp(lambda p: predict(p, problem), params)
    (out,) = vjp(HJv)
    if penalty is not None:
        out = jax.tree.map(jnp.add, out, hvp(lambda p, _: penalty(p), params, None, v))
    return out


def factor_gnvp(params: Factors, problem, v: Factors, loss: str = "frobenius", l2: float = 0.0) -> Factors:
    """Gauss-Newton product of the factor model's training objective, on either problem layout.

    Frobenius: G = (2/|Ω|) JᵀJ + 2·l2·I with J = ∂r/∂(A, B), r = (WHᵀ − V) on Ω,
    the matrix the structured solver factorizes (docs/design.md). KL: Fisher
    scoring weights, G = (1/|Ω|) Jᵀ diag(V/μ²) J + 2·l2·I (the exact loss
    Hessian in μ; its expectation under the Poisson model is diag(1/μ)).
    """
    from lrfactor import layout, losses

    def model(p, prob):
        return layout.predictions(prob, p)

    if loss not in losses.LOSSES:
        raise ValueError(f"unknown loss {loss!r}")

    def data(pred, prob):
        return losses.data_loss(pred, prob, loss)

    penalty = (lambda p: l2 * losses.l2_penalty(p)) if l2 else None
    return gnvp(model, data, params, problem, v, penalty)


# --------------------------------------------------------------------------- exact


def exact_hessian(objective: Callable, params, problem) -> jax.Array:
    """The dense N × N Hessian of the flattened objective, ``jax.hessian``, symmetrized."""
    return _exact_hessian(objective, params, problem)


@partial(jax.jit, static_argnums=0)
def _exact_hessian(objective, params, problem):
    x0, unravel = ravel_pytree(params)
    Hm = jax.hessian(lambda x: objective(unravel(x), problem))(x0)
    return 0.5 * (Hm + Hm.T)


def exact_spectrum(objective: Callable, params, problem) -> jax.Array:
    """All N eigenvalues (ascending) of the Hessian by ``eigh`` in float64.

    The reference the matrix-free estimates are tested against; affordable up
    to ~10k parameters. Requires ``jax_enable_x64``.
    """
    if not jax.config.jax_enable_x64:
        raise ValueError("exact_spectrum needs float64: enable jax_enable_x64")
    f64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, t)
    return jnp.linalg.eigvalsh(exact_hessian(objective, f64(params), f64(problem)))


# --------------------------------------------------------------------------- gauge


def gauge_basis(params) -> jax.Array:
    """Orthonormal gauge directions (g, N) in flat coordinates; g = r for Factors, else 0.

    z_k = (A[:,k] += 1, B[:,k] −= 1)/√(n+m): exp(A) exp(B)ᵀ is invariant along
    each, and distinct k touch disjoint columns, so the z_k are orthonormal.
    """
    x0, _ = ravel_pytree(params)
    if not isinstance(params, Factors):
        return jnp.zeros((0, x0.size), x0.dtype)
    n, r = params.A.shape
    m = params.B.shape[0]
    eye = jnp.eye(r, dtype=x0.dtype)

    def one(e):
        return ravel_pytree(Factors(jnp.broadcast_to(e, (n, r)), -jnp.broadcast_to(e, (m, r))))[0]

    return jax.vmap(one)(eye) / jnp.sqrt(jnp.asarray(n + m, x0.dtype))


def complement_maps(Z: jax.Array):
    """Exact coordinates on the orthogonal complement of the rows of Z (g, N).

    Householder QR Zᵀ = Q R, Q = H_1 ⋯ H_g: Q's first g columns span the gauge,
    the other N − g its complement. Returns ``(embed, restrict)`` with
    ``embed(y) = Q [0; y]`` (R^{N−g} → N) and ``restrict(x) = (Qᵀ x)[g:]``,
    O(gN) each. Lanczos on ``restrict ∘ H ∘ embed`` lives in R^{N−g}, where
    the gauge does not exist. Projecting with P = I − ZᵀZ inside the iteration
    is not enough: rounding leaves ~eps of z in each vector, the recurrence
    amplifies it like a Lanczos polynomial at the (outlying) gauge eigenvalue,
    and after enough steps a Ritz value near zero reappears.
    """
    g, N = Z.shape
    idx = jnp.arange(N)
    vs, taus = [], []
    A = Z.T
    for i in range(g):  # Householder QR of Zᵀ, column by column
        x = jnp.where(idx >= i, A[:, i], 0.0)
        sign = jnp.where(x[i] >= 0, 1.0, -1.0).astype(x.dtype)
        v = x.at[i].add(sign * jnp.linalg.norm(x))
        tau = 2.0 / jnp.dot(v, v)
        A = A - tau * jnp.outer(v, v @ A)
        vs.append(v)
        taus.append(tau)

    def reflect(x, i):
        return x - taus[i] * vs[i] * jnp.dot(vs[i], x)

    def embed(y):
        x = jnp.concatenate([jnp.zeros((g,), y.dtype), y])
        for i in reversed(range(g)):  # Q x = H_1 ⋯ H_g x
            x = reflect(x, i)
        return x

    def restrict(x):
        for i in range(g):  # Qᵀ x = H_g ⋯ H_1 x
            x = reflect(x, i)
        return x[g:]

    return embed, restrict


# --------------------------------------------------------------------------- Lanczos


def lanczos(matvec: Callable, v0: jax.Array, num_steps: int):
    """k = ``num_steps`` Lanczos steps with full reorthogonalization.

    Returns ``(alpha (k,), beta (k−1,), Q (k, N))`` with Q's rows orthonormal,
    Q[0] = v0/‖v0‖ and Q H Qᵀ = T = tridiag(beta, alpha, beta).
    ``num_steps`` must not exceed N (the Krylov space is then all of it).

    Each step forms w = H q_j − α_j q_j − β_{j−1} q_{j−1} and removes its
    components on the whole basis twice ("twice is enough", Giraud et al.
    2005), so the basis stays orthonormal to working precision however many
    Ritz values have converged. If the Krylov space closes early (after the
    first pass w ≈ 0: an invariant subspace was found, as happens on a small
    Hessian with repeated eigenvalues), the second pass starts instead from a
    fixed dense vector (a cosine of the step and the coordinate) and β_j is
    set to 0: T splits into blocks whose eigenvalues are all eigenvalues of H,
    and the probe's quadrature weights on the new blocks are exactly zero.
    """
    N = v0.shape[0]
    k = int(num_steps)
    if not 1 <= k <= N:
        raise ValueError(f"num_steps must be in [1, {N}], got {k}")
    dtype = v0.dtype
    tiny = jnp.finfo(dtype).eps * 16
    golden = 2.399963229728653  # 2π/φ²: a dense restart vector that no small structure shares

    def project_out(Q, w):  # one classical Gram-Schmidt pass against every row of Q
        return w - (Q @ w) @ Q

    def body(j, carry):
        Q, alpha, beta, b_prev = carry
        q = Q[j]
        w = matvec(q)
        a = jnp.dot(q, w)
        w = project_out(Q, w - a * q - b_prev * Q[jnp.maximum(j - 1, 0)])
        scale = jnp.maximum(jnp.abs(a), b_prev)
        broke = jnp.linalg.norm(w) <= tiny * jnp.where(scale > 0, scale, 1.0)
        w = jnp.where(broke, jnp.cos(golden * (j + 1) * jnp.arange(N, dtype=dtype) + 1.0), w)
        w = project_out(Q, w)
        b = jnp.linalg.norm(w)
        nxt = w / b
        b = jnp.where(broke, jnp.zeros((), dtype), b)
        Q = Q.at[jnp.minimum(j + 1, k - 1)].set(jnp.where(j + 1 < k, nxt, Q[k - 1]))
        return Q, alpha.at[j].set(a), beta.at[j].set(b), b

    Q = jnp.zeros((k, N), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    zeros = jnp.zeros((k,), dtype)
    Q, alpha, beta, _ = jax.lax.fori_loop(0, k, body, (Q, zeros, zeros, jnp.zeros((), dtype)))
    return alpha, beta[:-1], Q


def tridiag_eigh(alpha: jax.Array, beta: jax.Array):
    """Ritz values θ (ascending) and eigenvectors S of T = tridiag(beta, alpha, beta)."""
    T = jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)
    return jnp.linalg.eigh(T)


def extreme_eigenvalues(matvec: Callable, v0: jax.Array, num_steps: int):
    """(λmin, λmax) estimates: the extreme Ritz values of one Lanczos run."""
    alpha, beta, _ = lanczos(matvec, v0, num_steps)
    theta, _ = tridiag_eigh(alpha, beta)
    return theta[0], theta[-1]


def slq_count(alpha: jax.Array, beta: jax.Array, norm2: jax.Array, phi: Callable) -> jax.Array:
    """SLQ estimate of tr φ(H) from per-probe tridiagonals (P, k), (P, k−1) and ‖v‖² (P,).

    tr φ(H) ≈ mean_v ‖v‖² Σ_j S_1j² φ(θ_j)  (Ubaru, Chen & Saad 2017).
    """
    theta, S = jax.vmap(tridiag_eigh)(alpha, beta)
    w = S[:, 0, :] ** 2
    return jnp.mean(norm2 * jnp.sum(w * phi(theta), axis=-1))


def rademacher(key: jax.Array, shape, dtype) -> jax.Array:
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


# --------------------------------------------------------------------------- tracer


def make_tracer(objective: Callable, cfg, top: int = TOP) -> Callable:
    """``trace(params, problem, key) -> dict`` of one seed's curvature diagnostics.

    Pure and vmappable (the driver calls ``jit(vmap(trace))`` over seeds).
    ``cfg.lanczos_steps`` = k, ``cfg.slq_probes`` = P Rademacher probes. Each
    probe's Lanczos run serves both the SLQ density/index and the extreme
    eigenvalues (every Ritz value lies in [λmin, λmax], so the max/min over
    probes is the best estimate): P·k HVPs per trace, plus r for the gauge.

    Returns, per seed (shapes without the seed axis):

    ``eig_max``, ``eig_min``   extreme Ritz values of H on the gauge's complement
    ``index``                  SLQ fraction of negative eigenvalues of the N × N H
    ``index_tol``              eigenvalues above −index_tol count as non-negative
    ``near_zero``              SLQ fraction with |λ| ≤ 1e-3·max|λ| (the bulk)
    ``index_significant``      SLQ fraction with λ < −1e-3·max|λ|
    ``grad_norm``, ``objective``
    ``grad_top_share``         share of ‖g‖² on the top ``top`` Ritz vectors
    ``ritz_grad_share`` (k,)   (vᵀg)²/‖g‖² on each Ritz vector (ascending θ) of the
                               probe with the largest top Ritz value
    ``lanczos_alpha`` (P, k), ``lanczos_beta`` (P, k−1)   raw tridiagonals
    ``lanczos_norm2`` (P,)     ‖v‖² of each probe (= N − g; SLQ weights)
    ``n_gauge``, ``dim``       gauge directions removed, N
    ``gauge_rayleigh`` (g,), ``gauge_residual`` (g,)   zᵀHz and ‖Hz − (zᵀHz)z‖
    ``A`` (n, r), ``B`` (m, r) the log-parameters, when params are ``Factors``
    """
    k_req = int(cfg.lanczos_steps)
    probes = int(cfg.slq_probes)
    if k_req < 2 or probes < 1:
        raise ValueError("Hessian tracing needs lanczos_steps >= 2 and slq_probes >= 1")

    def trace(params, problem, key):
        f = objective(params, problem)
        g, H, _ = linearized_hessian(objective, params, problem)
        N = g.shape[0]
        Z = gauge_basis(params)
        ng = Z.shape[0]
        k = min(k_req, N - ng)
        if ng:
            embed, restrict = complement_maps(Z)
        else:
            embed = restrict = lambda v: v

        def op(y):  # H on the gauge's complement, in its own coordinates
            return restrict(H(embed(y)))

        Y0 = rademacher(key, (probes, N - ng), g.dtype)
        norm2 = jnp.sum(Y0**2, axis=-1)
        g_c = restrict(g)

        def one_probe(y0):
            # Probes run one after another (lax.map): only one k × N Lanczos
            # basis per seed is alive at a time, and it is reduced here to the
            # gradient's components on its Ritz vectors.
            alpha, beta, Q = lanczos(op, y0, k)
            theta, S = tridiag_eigh(alpha, beta)
            return alpha, beta, theta, S, (S.T @ (Q @ g_c)) ** 2

        alpha, beta, theta, S, proj = jax.lax.map(one_probe, Y0)
        eig_max = jnp.max(theta[:, -1])
        eig_min = jnp.min(theta[:, 0])
        scale = jnp.maximum(jnp.abs(eig_max), jnp.abs(eig_min))
        tol = INDEX_TOL_ULPS * jnp.finfo(g.dtype).eps * scale
        w = norm2[:, None] * S[:, 0, :] ** 2  # quadrature weights, Σ over nodes ≈ N − g per probe

        def fraction(mask):
            return jnp.mean(jnp.sum(w * mask, axis=-1)) / N

        gn2 = jnp.sum(g**2)
        share = proj[jnp.argmax(theta[:, -1])] / jnp.where(gn2 > 0, gn2, 1.0)  # (k,), ascending θ
        out = {
            "objective": f,
            "eig_max": eig_max,
            "eig_min": eig_min,
            "index": fraction(theta < -tol),
            "index_tol": tol,
            "index_significant": fraction(theta < -BULK_REL * scale),
            "near_zero": fraction(jnp.abs(theta) <= BULK_REL * scale),
            "grad_norm": jnp.sqrt(gn2),
            "grad_top_share": jnp.sum(share[-min(top, k):]),
            "ritz_grad_share": share,
            "lanczos_alpha": alpha,
            "lanczos_beta": beta,
            "lanczos_norm2": norm2,
            "n_gauge": jnp.asarray(ng, jnp.int32),
            "dim": jnp.asarray(N, jnp.int32),
        }
        if ng:
            HZ = jax.vmap(H)(Z)
            rq = jnp.sum(Z * HZ, axis=-1)
            out["gauge_rayleigh"] = rq
            out["gauge_residual"] = jnp.linalg.norm(HZ - rq[:, None] * Z, axis=-1)
        if isinstance(params, Factors):
            out["A"] = params.A
            out["B"] = params.B
        return out

    return trace


__all__ = [
    "hvp", "linearized_hessian", "gnvp", "factor_gnvp", "exact_hessian", "exact_spectrum", "gauge_basis",
    "complement_maps", "lanczos", "tridiag_eigh", "extreme_eigenvalues", "slq_count", "make_tracer",
]

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor import losses, sparse
from lrfactor.factors import Factors, init_factors
from lrfactor.solvers import gauss_newton as gn
from lrfactor.solvers import sparse_gauss_newton as sgn
from tests.helpers import small_problem


def _setup(n, m, rank=3, seed=1, observed=0.6):
    problem, _ = small_problem(seed=seed, n=n, m=m, true_rank=4, observed=observed)
    p = init_factors(jax.random.PRNGKey(seed + 1), problem, rank, "scaled")
    return problem, sparse.to_sparse(problem), p


def _oriented(p, problem, sp, chunk):
    """(X, Y, V, M, entries, flip) with the larger side first, as both solvers orient."""
    n, m = problem.V.shape
    if n >= m:
        return p.A, p.B, problem.V, problem.train, sparse.chunk_entries(sp.rows, sp.cols, sp.vals, n, m, chunk), False
    e = sparse.chunk_entries(sp.cols, sp.rows, sp.vals, m, n, chunk)
    return p.B, p.A, problem.V.T, problem.train.T, e, True


def test_to_sparse_and_losses_match_dense():
    problem, sp, p = _setup(13, 7)
    assert sp.shape == (13, 7)
    assert sp.rows.shape[0] == int(problem.train.sum()) and sp.val_rows.shape[0] == int(problem.val.sum())
    np.testing.assert_array_equal(np.asarray(sp.row_count), np.asarray(problem.train.sum(1)))
    l2 = 0.01
    chunk = 5  # the last chunk is ragged (padding must not count)

    @jax.jit
    def both(p, sp, problem):
        return ((sparse.train_mse(p, sp, chunk), sparse.val_mse(p, sp, chunk), sparse.gradient(p, sp, l2, chunk),
                 jax.grad(sparse.objective)(p, sp, l2, chunk)),
                (losses.train_mse(p, problem), losses.val_mse(p, problem), jax.grad(losses.objective)(p, problem, "frobenius", l2)))

    (tr, va, g_explicit, g_auto), (tr_d, va_d, g_d) = both(p, sp, problem)
    np.testing.assert_allclose(tr, tr_d, rtol=1e-13)
    np.testing.assert_allclose(va, va_d, rtol=1e-13)
    for g in (g_explicit, g_auto):
        np.testing.assert_allclose(g.A, g_d.A, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(g.B, g_d.B, rtol=1e-11, atol=1e-14)


def test_synthetic_generator_is_consistent():
    key = jax.random.PRNGKey(0)
    sp, truth = sparse.make_sparse_synthetic(key, 300, 50, true_rank=5, observed=0.1, decay=2.0, n_val=400)
    n, m = sp.shape
    assert (n, m) == (300, 50)
    lin = np.asarray(sp.rows, np.int64) * m + np.asarray(sp.cols)
    vlin = np.asarray(sp.val_rows, np.int64) * m + np.asarray(sp.val_cols)
    assert np.all(np.diff(lin) > 0)  # sorted row-major, no duplicates
    assert not np.intersect1d(lin, vlin).size  # held-out entries are unseen
    assert 0.9 * 0.1 * n * m < lin.size <= 0.1 * n * m
    V = np.asarray(truth.W @ truth.H.T)
    np.testing.assert_allclose(sp.vals, V[sp.rows, sp.cols], rtol=1e-13)
    np.testing.assert_allclose(sp.val_vals, V[sp.val_rows, sp.val_cols], rtol=1e-13)
    np.testing.assert_allclose(np.asarray(truth.W).std(0)[-1] / np.asarray(truth.W).std(0)[0], 1e-2, rtol=0.7)


def _dense_reduced(W, H, M, U, S, dX, dY):
    """The reduced matrix S' − Cᵀ U'⁻¹ C built densely (small problems only)."""
    n, r = W.shape
    m = H.shape[0]
    u = W[:, None, :] * H[None, :, :]  # (n, m, r)
    C = jnp.where(M[:, :, None, None], u[:, :, :, None] * u[:, :, None, :], 0.0)  # C_ij
    Cfull = C.transpose(0, 2, 1, 3).reshape(n * r, m * r)
    Ud = jax.scipy.linalg.block_diag(*(U + jax.vmap(jnp.diag)(dX)))
    Sd = jax.scipy.linalg.block_diag(*(S + jax.vmap(jnp.diag)(dY)))
    return Sd - Cfull.T @ jnp.linalg.solve(Ud, Cfull)


def test_preconditioner_blocks_are_diagonal_blocks_of_reduced_matrix():
    problem, sp, p = _setup(13, 7)
    X, Y, V, M, e, _ = _oriented(p, problem, sp, chunk=8)
    W, H = jnp.exp(X), jnp.exp(Y)
    U, S = gn.normal_blocks(W, H, M.astype(W.dtype))
    lam = 0.3
    dX, dY = lam * jnp.ones_like(X), lam * jnp.ones_like(Y)
    f = jax.jit(sgn.prepare)(W, H, e, U, S, dX, dY)
    blocks = jnp.einsum("jab,jcb->jac", f.P, f.P)  # undo the Cholesky factorisation
    R = _dense_reduced(W, H, M, U, S, dX, dY)
    m, r = H.shape
    idx = jnp.arange(m)
    ref = R.reshape(m, r, m, r)[idx, :, idx, :]
    np.testing.assert_allclose(blocks, ref, rtol=1e-10, atol=1e-12 * float(jnp.max(jnp.abs(ref))))


def test_converged_pcg_step_equals_exact_schur_step():
    problem, sp, p = _setup(13, 7)
    X, Y, V, M, e, flip = _oriented(p, problem, sp, chunk=8)
    W, H = jnp.exp(X), jnp.exp(Y)
    pen = 0.5 * float(problem.train.sum()) * 0.01
    psi, omega = gn._psi_omega(W @ H.T, V, M, "frobenius")
    gX, gY = gn.gradient(W, H, psi, X, Y, pen)
    sq, sgX, sgY, U, S = jax.jit(sgn.normal_equations)(W, H, e)
    Ud, Sd = gn.normal_blocks(W, H, omega)
    np.testing.assert_allclose(U, Ud, rtol=1e-12)
    np.testing.assert_allclose(S, Sd, rtol=1e-12)
    np.testing.assert_allclose(sgX + 2 * pen * X, gX, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(sgY + 2 * pen * Y, gY, rtol=1e-11, atol=1e-14)
    lam = 0.3
    dX, dY = (2 * pen + lam) * jnp.ones_like(X), (2 * pen + lam) * jnp.ones_like(Y)
    refX, refY, _ = jax.jit(gn.damped_step, static_argnames="row_block")(W, H, omega, gX, gY, U, S, dX, dY, row_block=4)
    pcg_step = jax.jit(sgn.damped_step, static_argnames=("cg_iters", "cg_tol"))
    stX, stY, k, relres = pcg_step(W, H, e, gX, gY, U, S, dX, dY, cg_iters=500, cg_tol=1e-14)
    assert 0 < int(k) < 500 and float(relres) <= 1e-14
    ref = jnp.concatenate([refX.ravel(), refY.ravel()])
    got = jnp.concatenate([stX.ravel(), stY.ravel()])
    assert float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref)) < 1e-8
    # A loose tolerance stops early, with the residual it promised.
    _, _, k1, rel1 = pcg_step(W, H, e, gX, gY, U, S, dX, dY, cg_iters=500, cg_tol=1e-1)
    assert int(k1) < int(k) and float(rel1) <= 1e-1


@pytest.mark.parametrize("shape", [(13, 7), (6, 11)])
def test_one_step_matches_dense_joint_levenberg(shape):
    problem, sp, p = _setup(*shape)
    l2 = 0.01
    dense = gn.make_gauss_newton(loss="frobenius", l2=l2, rank=3, method="joint", damping="levenberg")
    sparse_solver = sgn.make_sparse_gauss_newton(l2=l2, rank=3, cg_iters=500, cg_tol=1e-14, chunk=8)
    sd, ss = dense.init(p, problem), sparse_solver.init(p, sp)
    np.testing.assert_allclose(ss.F, sd.F, rtol=1e-12)
    np.testing.assert_allclose(ss.lam, sd.lam, rtol=1e-12)
    for _ in range(2):
        sd, ss = jax.jit(dense.step)(sd, problem), jax.jit(sparse_solver.step)(ss, sp)
        assert bool(ss.accepted) == bool(sd.accepted)
        np.testing.assert_allclose(ss.F, sd.F, rtol=1e-9)
        np.testing.assert_allclose(ss.lam, sd.lam, rtol=1e-8)
        for a, b in zip(ss.params, sd.params):
            assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) < 1e-8


def test_objective_never_increases():
    problem, sp, _ = _setup(40, 25, rank=4, seed=3, observed=0.4)
    solver = sgn.make_sparse_gauss_newton(rank=4, init="keras", cg_iters=30, cg_tol=1e-2, chunk=64)
    state = solver.init(solver.init_params(jax.random.PRNGKey(0), sp), sp)

    def run(state, sp):
        return jax.lax.scan(lambda s, _: (solver.step(s, sp), (s.F, s.cg_iters, s.accepted)), state, None, length=25)

    state, (F, k, acc) = jax.jit(run)(state, sp)
    F = np.append(np.asarray(F), float(state.F))
    assert np.all(np.diff(F) <= 0)
    assert F[-1] < 1e-2 * F[0]
    assert np.asarray(acc).sum() >= 10 and np.asarray(k)[1:].max() > 1  # PCG did work
    np.testing.assert_allclose(state.F, 0.5 * sp.rows.shape[0] * sparse.train_mse(state.params, sp), rtol=1e-10)


def _largest_intermediate(jaxpr):
    big = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            if hasattr(v.aval, "shape"):
                big = max(big, int(np.prod(v.aval.shape)))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            big = max(big, _largest_intermediate(sub))
    return big


def test_memory_scales_with_entries_not_matrix():
    n, m, r, chunk = 3000, 2000, 4, 256
    sp, _ = sparse.make_sparse_synthetic(jax.random.PRNGKey(0), n, m, true_rank=5, observed=0.002, n_val=100)
    N = sp.rows.shape[0]
    solver = sgn.make_sparse_gauss_newton(rank=r, chunk=chunk)
    p = solver.init_params(jax.random.PRNGKey(1), sp)
    state = jax.eval_shape(solver.init, p, sp)
    biggest = max(_largest_intermediate(jax.make_jaxpr(f)(*a).jaxpr)
                  for f, a in ((solver.step, (state, sp)), (solver.init, (p, sp))))
    allowed = max(2 * N, chunk * r * r, (n + m) * r * r)
    assert biggest <= allowed, (biggest, allowed)
    assert biggest * 50 < n * m

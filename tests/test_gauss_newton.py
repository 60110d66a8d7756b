import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor.factors import Factors, init_factors, predict
from lrfactor.solvers import gauss_newton as gn
from tests.helpers import full_problem, small_problem


def dense_reference(p, problem, loss, l2, lam, D):
    """(JᵀΩJ + 2c·l2·I + λ diag(D)) Δ = −g by a dense solve, J from jax.jacfwd."""
    n, r = p.A.shape
    m = p.B.shape[0]
    F = lambda th: gn.scaled_objective(Factors(th[: n * r].reshape(n, r), th[n * r:].reshape(m, r)), problem, loss, l2)
    th = jnp.concatenate([p.A.ravel(), p.B.ravel()])
    g = jax.grad(F)(th)
    pred = lambda th: jnp.exp(th[: n * r].reshape(n, r)) @ jnp.exp(th[n * r:].reshape(m, r)).T
    J = jax.jacfwd(pred)(th).reshape(n * m, -1)
    P = pred(th).ravel()
    M = problem.train.ravel()
    om = jnp.where(M, 1.0 if loss == "frobenius" else 1 / P, 0.0)
    pen = 2 * gn._scale(problem, loss) * l2
    JJ = J.T @ (om[:, None] * J) + pen * jnp.eye(th.size)
    return jnp.linalg.solve(JJ + lam * jnp.diag(D(JJ)), -g), g


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
@pytest.mark.parametrize("shape", [(13, 7), (6, 11)])
@pytest.mark.parametrize("damping", ["levenberg", "marquardt"])
def test_schur_step_equals_dense_solve(loss, shape, damping):
    n, m = shape
    problem, _ = small_problem(seed=1, n=n, m=m, true_rank=4)
    p = init_factors(jax.random.PRNGKey(2), problem, 3, "scaled")
    l2, lam = 0.01, 0.3
    Dfun = (lambda JJ: jnp.ones(JJ.shape[0])) if damping == "levenberg" else (
        lambda JJ: jnp.clip(jnp.diag(JJ) - 2 * gn._scale(problem, loss) * l2, gn.MIN_DIAG, gn.MAX_DIAG))
    ref, g = dense_reference(p, problem, loss, l2, lam, Dfun)
    flip = n < m
    X, Y, V, M = (p.B, p.A, problem.V.T, problem.train.T) if flip else (p.A, p.B, problem.V, problem.train)
    W, H = jnp.exp(X), jnp.exp(Y)
    pen = gn._scale(problem, loss) * l2
    psi, omega = gn._psi_omega(W @ H.T, V, M, loss)
    gX, gY = gn.gradient(W, H, psi, X, Y, pen)
    U, S = gn.normal_blocks(W, H, omega)
    if damping == "levenberg":
        DX, DY = jnp.ones_like(X), jnp.ones_like(Y)
    else:
        DX = jnp.clip(jnp.diagonal(U, axis1=1, axis2=2), gn.MIN_DIAG, gn.MAX_DIAG)
        DY = jnp.clip(jnp.diagonal(S, axis1=1, axis2=2), gn.MIN_DIAG, gn.MAX_DIAG)
    dX, dY, _ = gn.damped_step(W, H, omega, gX, gY, U, S, 2 * pen + lam * DX, 2 * pen + lam * DY, row_block=4)
    dA, dB = (dY, dX) if flip else (dX, dY)
    got = jnp.concatenate([dA.ravel(), dB.ravel()])
    gA, gB = (gY, gX) if flip else (gX, gY)
    np.testing.assert_allclose(jnp.concatenate([gA.ravel(), gB.ravel()]), g, rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref))) < 1e-10


@pytest.mark.parametrize("row_block", [1, 3, 10])  # 10 blocks, 4 padded blocks, one block
def test_schur_product_equals_dense(row_block):
    problem, _ = small_problem(seed=3, n=10, m=5)
    p = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    W, H = jnp.exp(p.A), jnp.exp(p.B)
    n, r = W.shape
    m = H.shape[0]
    _, omega = gn._psi_omega(W @ H.T, problem.V, problem.train, "frobenius")
    U, _ = gn.normal_blocks(W, H, omega)
    Ud = U + 0.1 * jnp.eye(r)
    Linv = jnp.linalg.inv(jnp.linalg.cholesky(Ud))
    # The coupling matrix C (n r × m r), block (i, j) = ω_ij u_ij u_ijᵀ, and Cᵀ U'⁻¹ C densely.
    u = W[:, None, :] * H[None, :, :]
    C = (omega[:, :, None, None] * u[:, :, :, None] * u[:, :, None, :]).transpose(0, 2, 1, 3).reshape(n * r, m * r)
    Ubd = jax.scipy.linalg.block_diag(*Ud)
    ref = C.T @ jnp.linalg.solve(Ubd, C)
    got = gn.schur_product(Linv, W, H, omega, row_block)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-12 * float(jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize("r", [1, 3, 8, gn.UNROLL_MAX_RANK + 1])  # unrolled, and LAPACK above the limit
def test_inverse_cholesky(r):
    X = jax.random.normal(jax.random.PRNGKey(r), (5, r, r + 3))
    U = X @ X.transpose(0, 2, 1) + 1e-3 * jnp.eye(r)
    M = gn.inverse_cholesky(U)
    L = jnp.linalg.cholesky(U)  # the unique factor with a positive diagonal
    np.testing.assert_allclose(M, jnp.linalg.inv(L), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(jnp.triu(M, 1), 0.0)
    np.testing.assert_allclose(M.transpose(0, 2, 1) @ M @ U, jnp.broadcast_to(jnp.eye(r), U.shape), atol=1e-9)


def test_inverse_cholesky_flags_a_block_that_is_not_positive_definite():
    U = jnp.stack([jnp.eye(3), jnp.diag(jnp.array([1.0, -1.0, 1.0]))])
    M = gn.inverse_cholesky(U)
    np.testing.assert_array_equal(M[0], jnp.eye(3))
    assert bool(jnp.isnan(M[1]).any())


def test_balance_gauge_keeps_prediction_and_minimises_penalty():
    problem, _ = small_problem()
    p = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    p = Factors(p.A + 1.0, p.B - 3.0)
    q = gn.balance_gauge(p)
    np.testing.assert_allclose(predict(q), predict(p), rtol=1e-12)
    pen = lambda c: jnp.sum((q.A + c) ** 2) + jnp.sum((q.B - c) ** 2)
    for k in range(3):  # d/dc of the penalty along each gauge direction is 0
        assert abs(float(jax.grad(lambda c: pen(jnp.zeros(3).at[k].set(c)))(0.0))) < 1e-9


@pytest.mark.parametrize("method", ["joint", "joint_epi", "varpro"])
def test_never_increases_objective(method):
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    solver = gn.make_gauss_newton(rank=3, method=method, init="keras")
    state = solver.init(solver.init_params(jax.random.PRNGKey(0), problem), problem, None)
    step = jax.jit(solver.step)
    F = [float(state.F)]
    for _ in range(25):
        state = step(state, problem)
        F.append(float(state.F))
    assert np.all(np.diff(F) <= 0)
    assert F[-1] < F[0]
    np.testing.assert_allclose(state.F, gn.scaled_objective(state.params, problem, "frobenius", 0.0), rtol=1e-10)


def test_exact_low_rank_fully_observed_is_fitted():
    key = jax.random.PRNGKey(5)
    W = jnp.exp(jax.random.normal(key, (20, 3)))
    H = jnp.exp(jax.random.normal(jax.random.PRNGKey(6), (8, 3)))
    problem = full_problem(W @ H.T)
    solver = gn.make_gauss_newton(rank=3, method="joint", init="scaled", ftol=0.0, xtol=0.0, gtol=0.0)
    state = solver.init(solver.init_params(jax.random.PRNGKey(1), problem), problem, None)
    step = jax.jit(solver.step)
    for _ in range(200):
        state = step(state, problem)
    rel = jnp.linalg.norm(predict(state.params) - problem.V) / jnp.linalg.norm(problem.V)
    assert float(rel) < 1e-8


def test_mixed_precision_refinement_recovers_the_float64_step():
    problem, _ = small_problem(seed=2, n=40, m=12, true_rank=4)
    p = init_factors(jax.random.PRNGKey(3), problem, 3, "scaled")
    W, H = jnp.exp(p.A), jnp.exp(p.B)
    psi, omega = gn._psi_omega(W @ H.T, problem.V, problem.train, "frobenius")
    gA, gB = gn.gradient(W, H, psi, p.A, p.B, 0.0)
    U, S = gn.normal_blocks(W, H, omega)
    dA, dB = 0.05 * jnp.ones_like(p.A), 0.05 * jnp.ones_like(p.B)
    ref = gn.damped_step(W, H, omega, gA, gB, U, S, dA, dB)
    f32 = gn.factorize(W, H, omega, U, S, dA, dB, schur_dtype=jnp.float32)
    assert f32.R.dtype == jnp.float32
    errs = []
    for it in (0, 3):
        x = gn.refined_solve(f32, W, H, omega, dA, dB, -gA, -gB, it)
        errs.append(max(float(jnp.max(jnp.abs(x[k] - ref[k])) / jnp.max(jnp.abs(ref[k]))) for k in (0, 1)))
    assert errs[0] > 1e-9  # the float32 factor alone is visibly inexact
    assert errs[1] < 1e-9 and errs[1] < 1e-3 * errs[0]


def test_step_cap_bounds_every_log_space_step_and_keeps_the_direction():
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    free = gn.make_gauss_newton(rank=3, init="scaled", lambda0=1.0)
    capped = gn.make_gauss_newton(rank=3, init="scaled", lambda0=1.0, max_step=0.25)
    p0 = free.init_params(jax.random.PRNGKey(0), problem)
    s_free, s_cap = free.init(p0, problem, None), capped.init(p0, problem, None)
    # From the same state the capped step is the free step scaled to max|Δ| = 0.25.
    a, b = jax.jit(free.step)(s_free, problem), jax.jit(capped.step)(s_cap, problem)
    dA, dB = a.params.A - p0.A, a.params.B - p0.B
    big = max(float(jnp.max(jnp.abs(dA))), float(jnp.max(jnp.abs(dB))))
    assert bool(a.accepted) and bool(b.accepted) and big > 0.25  # a large first step, taken
    np.testing.assert_allclose(b.params.A - p0.A, dA * 0.25 / big, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.params.B - p0.B, dB * 0.25 / big, rtol=1e-9, atol=1e-12)
    step = jax.jit(capped.step)
    state, F = s_cap, [float(s_cap.F)]
    for _ in range(30):
        new = step(state, problem)
        d = max(float(jnp.max(jnp.abs(new.params.A - state.params.A))),
                float(jnp.max(jnp.abs(new.params.B - state.params.B))))
        assert d <= 0.25 * (1 + 1e-12)
        state = new
        F.append(float(state.F))
    assert np.all(np.diff(F) <= 0) and F[-1] < F[0]


def test_restarts_follow_the_first_run_then_keep_the_best():
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    plain = gn.make_gauss_newton(rank=3, init="keras", ftol=1e-6)
    rs = gn.make_gauss_newton(rank=3, init="keras", restarts=2, stall_window=5, stall_rtol=1e-3, ftol=1e-6)
    p0 = plain.init_params(jax.random.PRNGKey(0), problem)
    a, b = plain.init(p0, problem, None), rs.init(p0, problem, None)
    step_a, step_b = jax.jit(plain.step), jax.jit(rs.step)
    first = True
    best, restarts_at = [float(b.F)], []
    for t in range(400):  # the restarts come at ~110 and ~300 (the path's rounding decides exactly when)
        prev = b
        b = step_b(b, problem)
        if first and int(b.restart) == 0:
            a = step_a(a, problem)  # until the first restart, the run is the plain solver's
            np.testing.assert_array_equal(b.run.params.A, a.params.A)
            assert float(b.run.F) == float(a.F)
        if int(b.restart) > int(prev.restart):
            first = False
            restarts_at.append(t)
            # a restart begins at the blind start with the schedule's damping
            np.testing.assert_array_equal(b.run.params.A, p0.A)
            np.testing.assert_array_equal(b.run.params.B, p0.B)
        elif int(b.restart) == 1:  # the second run's schedule caps every log-space step at 1
            d = max(float(jnp.max(jnp.abs(b.run.params.A - prev.run.params.A))),
                    float(jnp.max(jnp.abs(b.run.params.B - prev.run.params.B))))
            assert d <= 1.0 * (1 + 1e-12)
        best.append(float(b.F))
        # params is the best point any run reached, and F is its objective
        assert float(b.F) <= float(b.run.F)
    assert int(b.restart) == 2 and len(restarts_at) == 2  # both restarts taken, after stalls
    assert not bool(b.done)  # the last run is not ended by a stall
    assert np.all(np.diff(best) <= 0)
    np.testing.assert_allclose(b.F, gn.scaled_objective(b.params, problem, "frobenius", 0.0), rtol=1e-12)
    assert float(b.F) <= float(a.F)  # never worse than the first run where it restarted


def test_backtracking_takes_a_fraction_of_a_rejected_step_and_nothing_else():
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    seen = {"same": 0, "backtracked": 0}
    for init, lam0 in (("keras", 1e-3), ("scaled", 1e-2)):
        plain = gn.make_gauss_newton(rank=3, init=init, lambda0=lam0, schur_precision="full")
        bt = gn.make_gauss_newton(rank=3, init=init, lambda0=lam0, schur_precision="full", backtrack=True)
        step_a, step_b = jax.jit(plain.step), jax.jit(bt.step)
        s0 = plain.init(plain.init_params(jax.random.PRNGKey(0), problem), problem, None)
        for _ in range(40):  # along the plain run, one step of each from the same state
            a, b = step_a(s0, problem), step_b(s0, problem)
            p0 = s0.params
            if bool(a.accepted):  # an accepted full step is left exactly as it is
                for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
                    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
                seen["same"] += 1
            elif bool(b.accepted):
                # The full step was rejected: b took α·Δ for one α of BACKTRACK, Δ the damped step.
                W, H = jnp.exp(p0.A), jnp.exp(p0.B)
                psi, omega = gn._psi_omega(W @ H.T, problem.V, problem.train, "frobenius")
                gX, gY = gn.gradient(W, H, psi, p0.A, p0.B, 0.0)
                U, S = gn.normal_blocks(W, H, omega)
                one = lambda x: s0.lam * jnp.ones_like(x)
                dX, dY, _ = gn.damped_step(W, H, omega, gX, gY, U, S, one(p0.A), one(p0.B))
                alpha = float(jnp.vdot(b.params.B - p0.B, dY) / jnp.vdot(dY, dY))
                assert min(abs(alpha - c) for c in gn.BACKTRACK) < 1e-9
                scale = float(jnp.max(jnp.abs(dX)))
                np.testing.assert_allclose(b.params.A, p0.A + alpha * dX, rtol=0, atol=1e-9 * scale)
                np.testing.assert_allclose(b.params.B, p0.B + alpha * dY, rtol=0, atol=1e-9 * scale)
                assert float(b.F) < float(s0.F)
                np.testing.assert_allclose(float(b.F), float(gn.scaled_objective(b.params, problem, "frobenius", 0.0)),
                                           rtol=1e-12)
                assert float(b.lam) == 2 * float(s0.lam) and float(b.nu) == 2.0
                assert int(b.n_accepted) == int(s0.n_accepted) + 1
                seen["backtracked"] += 1
            s0 = a
    assert seen["same"] > 0 and seen["backtracked"] > 0, seen


def test_backtracking_is_for_the_joint_method_only():
    with pytest.raises(ValueError, match="joint"):
        gn.make_gauss_newton(method="varpro", backtrack=True)

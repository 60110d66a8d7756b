import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor import layout
from lrfactor.config import RunConfig, resolve
from lrfactor.factors import Factors, init_factors, predict
from lrfactor.problems import to_coo
from lrfactor.solvers import blocks as bk
from lrfactor.solvers import gauss_newton as gn
from lrfactor.solvers import linear
from tests.helpers import full_problem, small_problem, to_float32

EXACT = dict(backtrack=False, restarts=0, schur_precision="full", ftol=0.0, gtol=0.0, xtol=0.0)
PCG_TIGHT = dict(linear_solver="schur_pcg", cg_iters=500, cg_tol=1e-13)


def dense_reference(p, problem, loss, l2, lam, damping):
    """(JᵀΩJ + 2c·l2·I + λ D) Δ = −g by a dense solve, J from jax.jacfwd; D = I or clip(diag JᵀΩJ)."""
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
    JJ = J.T @ (om[:, None] * J)
    D = jnp.ones(th.size) if damping == "levenberg" else jnp.clip(jnp.diag(JJ), gn.MIN_DIAG, gn.MAX_DIAG)
    pen = 2 * gn._scale(problem, loss) * l2
    return jnp.linalg.solve(JJ + pen * jnp.eye(th.size) + lam * jnp.diag(D), -g), g


def pieces(p, problem, loss, l2):
    """The oriented blocks of one step, as the solver forms them."""
    n, m = layout.shape(problem)
    flip = n < m
    prob = layout.transpose(problem) if flip else problem
    X, Y = (p.B, p.A) if flip else (p.A, p.B)
    W, H = jnp.exp(X), jnp.exp(Y)
    pen = gn._scale(problem, loss) * l2
    psi, omega = bk.psi_omega(layout.entry_products(prob, W, H), layout.values(prob), layout.mask(prob), loss)
    gX, gY = bk.gradient(prob, W, H, psi, X, Y, pen)
    U, S = bk.row_blocks(prob, W, H, omega), bk.col_blocks(prob, W, H, omega)
    return dict(prob=prob, X=X, Y=Y, W=W, H=H, pen=pen, omega=omega, gX=gX, gY=gY, U=U, S=S, flip=flip)


def _flat(a, b, flip):
    A, B = (b, a) if flip else (a, b)
    return jnp.concatenate([A.ravel(), B.ravel()])


@pytest.mark.parametrize("loss,shape,damping,solver,lay", [
    (loss, shape, damping, "dense_schur", "dense")
    for loss in ("frobenius", "kl") for shape in ((13, 7), (6, 11)) for damping in gn.DAMPINGS
] + [
    ("frobenius", (13, 7), "levenberg", "schur_pcg", "dense"),
    ("kl", (6, 11), "marquardt", "schur_pcg", "dense"),
    ("frobenius", (6, 11), "levenberg", "schur_pcg", "coo"),
    ("kl", (13, 7), "marquardt", "schur_pcg", "coo"),
])
def test_linear_solvers_give_the_dense_damped_step(loss, shape, damping, solver, lay):
    n, m = shape
    problem, _ = small_problem(seed=1, n=n, m=m, true_rank=4)
    p = init_factors(jax.random.PRNGKey(2), problem, 3, "scaled")
    l2, lam = 0.01, 0.3
    ref, g = dense_reference(p, problem, loss, l2, lam, damping)
    q = pieces(p, to_coo(problem, chunk=8) if lay == "coo" else problem, loss, l2)
    np.testing.assert_allclose(_flat(q["gX"], q["gY"], q["flip"]), g, rtol=1e-10, atol=1e-12)
    diag = lambda B: jnp.diagonal(B, axis1=1, axis2=2)
    DX, DY = gn.damping_diagonal(diag(q["U"]), diag(q["S"]), damping)
    dX, dY = 2 * q["pen"] + lam * DX, 2 * q["pen"] + lam * DY
    args = (q["prob"], q["W"], q["H"], q["omega"], q["U"], dX, dY, -q["gX"], -q["gY"])
    if solver == "dense_schur":
        sX, sY, k, _ = linear.dense_schur(*args, row_block=4)
        assert int(k) == 0
    else:
        sX, sY, k, rel = linear.schur_pcg(*args, cg_iters=500, cg_tol=1e-13)
        assert 0 < int(k) < 500 and float(rel) <= 1e-13
    got = _flat(sX, sY, q["flip"])
    assert float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref))) < 1e-9


def test_pcg_stops_at_its_tolerance_or_its_cap():
    problem, _ = small_problem(seed=1, n=30, m=12, true_rank=4)
    p = init_factors(jax.random.PRNGKey(2), problem, 3, "scaled")
    q = pieces(p, problem, "frobenius", 0.0)
    d = (0.01 * jnp.ones_like(q["X"]), 0.01 * jnp.ones_like(q["Y"]))
    args = (q["prob"], q["W"], q["H"], q["omega"], q["U"], *d, -q["gX"], -q["gY"])
    _, _, k_tight, rel_tight = linear.schur_pcg(*args, cg_iters=500, cg_tol=1e-12)
    _, _, k_loose, rel_loose = linear.schur_pcg(*args, cg_iters=500, cg_tol=1e-1)
    _, _, k_cap, rel_cap = linear.schur_pcg(*args, cg_iters=2, cg_tol=1e-12)
    assert float(rel_tight) <= 1e-12 and float(rel_loose) <= 1e-1 and int(k_loose) < int(k_tight)
    assert int(k_cap) == 2 and float(rel_cap) > 1e-12


def test_reduced_matrix_jacobi_blocks_product_and_diagonals_against_dense():
    problem, _ = small_problem(seed=1, n=13, m=7, true_rank=4)
    p = init_factors(jax.random.PRNGKey(2), problem, 3, "scaled")
    qd = pieces(p, problem, "kl", 0.0)  # kl: ω ≠ 1 enters squared
    for prob in (problem, to_coo(problem, chunk=5)):
        q = pieces(p, prob, "kl", 0.0)
        W, H, U, S = q["W"], q["H"], q["U"], q["S"]
        n, r = W.shape
        m = H.shape[0]
        dY = 0.2 * jnp.ones((m, r))
        Ud, Sd = bk.add_diag(U, 0.3 * jnp.ones((n, r))), bk.add_diag(S, dY)
        Uinv = jnp.linalg.inv(Ud)
        got = bk.jacobi_blocks(q["prob"], W, H, q["omega"], Uinv, dY)
        om = qd["omega"]
        u = W[:, None, :] * H[None, :, :]
        C = (om[:, :, None, None] * u[:, :, :, None] * u[:, :, None, :]).transpose(0, 2, 1, 3).reshape(n * r, m * r)
        R = jax.scipy.linalg.block_diag(*Sd) - C.T @ jnp.linalg.solve(jax.scipy.linalg.block_diag(*Ud), C)
        idx = jnp.arange(m)
        ref = R.reshape(m, r, m, r)[idx, :, idx, :]
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * float(jnp.max(jnp.abs(ref))))
        # the matrix-free product with R, and the blocks' diagonals, against the same dense matrices
        y = jax.random.normal(jax.random.PRNGKey(5), (m, r), W.dtype)
        Linv = jnp.linalg.inv(jnp.linalg.cholesky(Ud))
        np.testing.assert_allclose(bk.reduced_apply(q["prob"], W, H, q["omega"], Linv, dY, y), (R @ y.ravel()).reshape(m, r),
                                   rtol=1e-10, atol=1e-12 * float(jnp.max(jnp.abs(R))))
        np.testing.assert_allclose(bk.row_diagonal(q["prob"], W, H, q["omega"]), jnp.diagonal(U, axis1=1, axis2=2), rtol=1e-12)
        np.testing.assert_allclose(bk.col_diagonal(q["prob"], W, H, q["omega"]), jnp.diagonal(S, axis1=1, axis2=2), rtol=1e-12)


@pytest.mark.parametrize("row_block", [1, 3, 10])  # 10 blocks, 4 padded blocks, one block
def test_schur_product_equals_dense(row_block):
    problem, _ = small_problem(seed=3, n=10, m=5)
    p = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    W, H = jnp.exp(p.A), jnp.exp(p.B)
    n, r = W.shape
    m = H.shape[0]
    _, omega = bk.psi_omega(W @ H.T, problem.V, problem.train, "frobenius")
    U = bk.row_blocks(problem, W, H, omega)
    Ud = U + 0.1 * jnp.eye(r)
    Linv = jnp.linalg.inv(jnp.linalg.cholesky(Ud))
    # The coupling matrix C (n r × m r), block (i, j) = ω_ij u_ij u_ijᵀ, and Cᵀ U'⁻¹ C densely.
    u = W[:, None, :] * H[None, :, :]
    C = (omega[:, :, None, None] * u[:, :, :, None] * u[:, :, None, :]).transpose(0, 2, 1, 3).reshape(n * r, m * r)
    Ubd = jax.scipy.linalg.block_diag(*Ud)
    ref = C.T @ jnp.linalg.solve(Ubd, C)
    got = linear.schur_product(Linv, W, H, omega, row_block)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-12 * float(jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize("r", [1, 3, 8, linear.UNROLL_MAX_RANK + 1])  # unrolled, and LAPACK above the limit
def test_inverse_cholesky(r):
    X = jax.random.normal(jax.random.PRNGKey(r), (5, r, r + 3))
    U = X @ X.transpose(0, 2, 1) + 1e-3 * jnp.eye(r)
    M = linear.inverse_cholesky(U)
    L = jnp.linalg.cholesky(U)  # the unique factor with a positive diagonal
    np.testing.assert_allclose(M, jnp.linalg.inv(L), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(jnp.triu(M, 1), 0.0)
    np.testing.assert_allclose(M.transpose(0, 2, 1) @ M @ U, jnp.broadcast_to(jnp.eye(r), U.shape), atol=1e-9)


def test_inverse_cholesky_flags_a_block_that_is_not_positive_definite():
    U = jnp.stack([jnp.eye(3), jnp.diag(jnp.array([1.0, -1.0, 1.0]))])
    M = linear.inverse_cholesky(U)
    np.testing.assert_array_equal(M[0], jnp.eye(3))
    assert bool(jnp.isnan(M[1]).any())


def test_auto_picks_dense_schur_for_small_dense_problems_only():
    assert linear.choose("auto", False, 1000, 100, 8) == "dense_schur"
    assert linear.choose("auto", False, 1000, 600, 8) == "schur_pcg"  # 4800 reduced unknowns
    assert linear.choose("auto", True, 1000, 100, 8) == "schur_pcg"
    assert linear.choose("schur_pcg", False, 10, 10, 2) == "schur_pcg"
    with pytest.raises(ValueError, match="dense layout"):
        linear.choose("dense_schur", True, 10, 10, 2)


def test_balance_gauge_keeps_prediction_and_minimises_penalty():
    problem, _ = small_problem()
    p = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    p = Factors(p.A + 1.0, p.B - 3.0)
    q = gn.balance_gauge(p)
    np.testing.assert_allclose(predict(q), predict(p), rtol=1e-12)
    pen = lambda c: jnp.sum((q.A + c) ** 2) + jnp.sum((q.B - c) ** 2)
    for k in range(3):  # d/dc of the penalty along each gauge direction is 0
        assert abs(float(jax.grad(lambda c: pen(jnp.zeros(3).at[k].set(c)))(0.0))) < 1e-9


def test_factory_defaults_are_the_command_lines():
    cfg = resolve(RunConfig(solver="gauss_newton"))
    sig = inspect.signature(gn.make_gauss_newton).parameters
    for name, par in sig.items():
        if hasattr(cfg, name):
            assert par.default == getattr(cfg, name), name
    assert {"loss", "l2", "rank", "damping", "lambda0", "backtrack", "restarts", "refine"} <= set(sig)


# ----------------------------------------------------------------------------- options change the step


def _one_step(problem, p0, lambda0, **kw):
    """The initial λ (lambda0 × the mean diagonal of JᵀJ) and the state after one step."""
    solver = gn.make_gauss_newton(rank=p0.A.shape[1], lambda0=lambda0, **{**EXACT, **kw})
    s0 = solver.init(p0, problem)
    return float(s0.lam), jax.jit(solver.step)(s0, problem)


@pytest.mark.parametrize("lay", ["dense", "coo"])
@pytest.mark.parametrize("damping", gn.DAMPINGS)
def test_damping_option_sets_the_step_the_docstring_gives(lay, damping):
    # damping=marquardt: Δ = solve(JᵀJ + λ·clip(diag JᵀJ), −g); levenberg: Δ = solve(JᵀJ + λI, −g).
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    p0 = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    prob = to_coo(problem, chunk=64) if lay == "coo" else problem
    lam, b = _one_step(prob, p0, 1.0, damping=damping, **(PCG_TIGHT if lay == "coo" else {}))
    ref, _ = dense_reference(p0, problem, "frobenius", 0.0, lam, damping)
    other, _ = dense_reference(p0, problem, "frobenius", 0.0, lam, "marquardt" if damping == "levenberg" else "levenberg")
    assert bool(b.accepted)
    got = jnp.concatenate([(b.params.A - p0.A).ravel(), (b.params.B - p0.B).ravel()])
    assert float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref))) < 1e-9
    assert float(jnp.max(jnp.abs(other - ref)) / jnp.max(jnp.abs(ref))) > 1e-2  # the options differ


def test_schur_precision_and_refine_set_the_accuracy_of_the_step():
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    p0 = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    err = {}
    for prec, refine in (("full", 0), ("mixed", 0), ("mixed", 1), ("mixed", 3)):
        lam, b = _one_step(problem, p0, 1.0, schur_precision=prec, refine=refine)
        ref, _ = dense_reference(p0, problem, "frobenius", 0.0, lam, "levenberg")
        assert bool(b.accepted)
        got = jnp.concatenate([(b.params.A - p0.A).ravel(), (b.params.B - p0.B).ravel()])
        err[prec, refine] = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
    assert err["full", 0] < 1e-10
    assert err["mixed", 0] > 1e-9  # the float32 factor alone is visibly inexact
    assert err["mixed", 3] < 1e-9 and err["mixed", 3] < 1e-3 * err["mixed", 0]
    assert err["mixed", 1] < err["mixed", 0]


def test_mixed_precision_refinement_recovers_the_float64_step():
    problem, _ = small_problem(seed=2, n=40, m=12, true_rank=4)
    p = init_factors(jax.random.PRNGKey(3), problem, 3, "scaled")
    q = pieces(p, problem, "frobenius", 0.0)
    W, H, omega, U, S = q["W"], q["H"], q["omega"], q["U"], q["S"]
    dA, dB = 0.05 * jnp.ones_like(p.A), 0.05 * jnp.ones_like(p.B)
    ref = linear.dense_schur(problem, W, H, omega, U, dA, dB, -q["gX"], -q["gY"])
    f32 = linear.factorize(W, H, omega, U, S, dA, dB, schur_dtype=jnp.float32)
    assert f32.R.dtype == jnp.float32
    errs = []
    for it in (0, 3):
        x = linear.refined_solve(f32, problem, W, H, omega, dA, dB, -q["gX"], -q["gY"], it)
        errs.append(max(float(jnp.max(jnp.abs(x[k] - ref[k])) / jnp.max(jnp.abs(ref[k]))) for k in (0, 1)))
    assert errs[0] > 1e-9
    assert errs[1] < 1e-9 and errs[1] < 1e-3 * errs[0]


def test_step_cap_bounds_every_log_space_step_and_keeps_the_direction():
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    kw = dict(rank=3, init="scaled", lambda0=1.0, backtrack=False, restarts=0)
    free = gn.make_gauss_newton(**kw)
    capped = gn.make_gauss_newton(max_step=0.25, **kw)
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


def capped_run(problem, steps=60, strict=True):
    """λ, the floor at each step's point, and F along a run whose every step the cap shortens."""
    solver = gn.make_gauss_newton(rank=3, init="scaled", max_step=1e-3, backtrack=False, restarts=0,
                                  schur_precision="full")
    state = solver.init(solver.init_params(jax.random.PRNGKey(0), problem), problem, None)
    step = jax.jit(solver.step)
    lams, floors, F = [], [], [float(state.F)]
    for _ in range(steps):
        W, H = jnp.exp(state.params.A), jnp.exp(state.params.B)
        _, omega = bk.psi_omega(layout.entry_products(problem, W, H), layout.values(problem), layout.mask(problem),
                                "frobenius")
        diag = jnp.concatenate([bk.row_diagonal(problem, W, H, omega).ravel(),
                                bk.col_diagonal(problem, W, H, omega).ravel()])
        floors.append(gn.CAPPED_LAMBDA_FLOOR * float(jnp.mean(diag)))
        state = step(state, problem)
        assert not strict or (bool(state.accepted) and not bool(state.done))
        lams.append(float(state.lam))
        F.append(float(state.F))
    return np.array(lams), np.array(floors), np.array(F)


def test_capped_steps_keep_lambda_above_its_floor(monkeypatch):
    # A cap far below the Gauss-Newton step binds on every step, and every
    # capped step is accepted with ρ near 1, so Nielsen's update alone lowers λ
    # threefold each time.
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    lams, floors, F = capped_run(problem)
    assert np.all(lams >= floors * (1 - 1e-12)) and np.all(np.diff(F) < 0)
    assert np.isclose(lams[-1], floors[-1], rtol=1e-9)  # the floor, not Nielsen's update, sets λ at the end
    # Without the floor λ falls far past it, to where the damped system is singular.
    monkeypatch.setattr(gn, "CAPPED_LAMBDA_FLOOR", 0.0)
    lams0, _, _ = capped_run(problem, strict=False)
    assert lams0.min() < 1e-6 * floors.min()


def test_backtracking_takes_a_fraction_of_a_rejected_step_and_nothing_else():
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    seen = {"same": 0, "backtracked": 0}
    for init, lam0 in (("keras", 1e-3), ("scaled", 1e-2)):
        kw = dict(rank=3, init=init, lambda0=lam0, schur_precision="full", restarts=0)
        plain = gn.make_gauss_newton(backtrack=False, **kw)
        bt = gn.make_gauss_newton(backtrack=True, **kw)
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
                q = pieces(p0, problem, "frobenius", 0.0)
                one = lambda x: s0.lam * jnp.ones_like(x)
                dX, dY, _, _ = linear.dense_schur(problem, q["W"], q["H"], q["omega"], q["U"], one(p0.A),
                                                  one(p0.B), -q["gX"], -q["gY"])
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


def test_a_non_finite_full_step_is_backtracked_and_a_wild_finite_one_is_not():
    F, F_b, pred_b = jnp.asarray(1.0), jnp.asarray(0.5), jnp.asarray(0.6)
    no = jnp.asarray(False)
    take = lambda F_new: bool(gn.backtrack_accept(no, F, jnp.asarray(F_new), F_b, pred_b))
    assert take(jnp.nan) and take(jnp.inf)  # exp overflow: the fractions are tried
    assert not take(gn.WILD * 1.0 + 1.0)  # finite but wild: the model says nothing about the direction
    assert take(1.5)  # an ordinary rejected step
    assert not bool(gn.backtrack_accept(jnp.asarray(True), F, jnp.asarray(0.9), F_b, pred_b))  # accepted already
    assert not bool(gn.backtrack_accept(no, F, jnp.asarray(jnp.nan), jnp.asarray(0.9999), pred_b))  # gain < 1e-3 x model


def test_restarts_follow_the_first_run_then_keep_the_best():
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    kw = dict(rank=3, init="keras", ftol=1e-6, schur_precision="full", backtrack=False)
    plain = gn.make_gauss_newton(restarts=0, **kw)
    rs = gn.make_gauss_newton(restarts=2, stall_window=5, stall_rtol=1e-3, **kw)
    p0 = plain.init_params(jax.random.PRNGKey(0), problem)
    a, b = plain.init(p0, problem, None), rs.init(p0, problem, None)
    step_a, step_b = jax.jit(plain.step), jax.jit(rs.step)
    first = True
    best, restarts_at = [float(b.F)], []
    for t in range(400):  # the path's rounding decides exactly when the restarts come
        prev = b
        b = step_b(b, problem)
        if first and int(b.restart) == 0:
            a = step_a(a, problem)  # until the first restart, the run is the plain solver's
            np.testing.assert_array_equal(b.run.params.A, a.params.A)
            assert float(b.run.F) == float(a.F)
        if int(b.restart) > int(prev.restart):
            first = False
            restarts_at.append(t)
            # restart k begins at the k-th fresh draw of the blind start (rs.init was given no key: PRNGKey(0))
            k = int(b.restart)
            start = rs.init_params(jax.random.fold_in(jax.random.PRNGKey(0), gn.RESTART_KEY + k), problem)
            assert not np.allclose(start.A, p0.A)
            np.testing.assert_array_equal(b.run.params.A, start.A)
            np.testing.assert_array_equal(b.run.params.B, start.B)
            fresh = plain.init(start, problem, None)  # with the run's own λ0
            assert float(b.run.lam) == float(fresh.lam) and float(b.run.F) == float(fresh.F)
        best.append(float(b.F))
        # params is the best point any run reached, and F is its objective
        assert float(b.F) <= float(b.run.F)
    assert int(b.restart) == 2 and len(restarts_at) == 2  # both restarts taken, after stalls
    # the last run is not ended by a stall: the seed ends only by its stopping tests
    assert bool(b.done) == bool(b.run.done) and int(b.stalls) <= 2
    assert np.all(np.diff(best) <= 0)
    np.testing.assert_allclose(b.F, gn.scaled_objective(b.params, problem, "frobenius", 0.0), rtol=1e-12)
    assert float(b.F) <= float(a.F)  # never worse than the first run where it restarted


def test_restarts_record_the_gradient_and_damping_at_the_best_point():
    # best_grad_inf is max|∇F| at the returned point (not at the run in progress) once a step from that point
    # has computed it, and at the point the step to it started from until then; best_lam the λ the run had
    # there. Checked against autodiff of F, float64.
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    rs = gn.make_gauss_newton(rank=3, init="keras", ftol=1e-6, schur_precision="full", backtrack=False,
                              restarts=2, stall_window=5, stall_rtol=1e-3)
    b = rs.init(rs.init_params(jax.random.PRNGKey(0), problem), problem, None)
    step = jax.jit(rs.step)
    grad = jax.jit(jax.grad(lambda p: gn.scaled_objective(p, problem, "frobenius", 0.0)))

    def g_inf(p):
        g = grad(p)
        return max(float(jnp.max(jnp.abs(g.A))), float(jnp.max(jnp.abs(g.B))))

    at_best = new_best = lam_checked = 0
    for _ in range(300):
        prev, b = b, step(b, problem)
        if float(b.F) < float(prev.F):  # a new best point: the gradient where its step started
            np.testing.assert_allclose(float(b.best_grad_inf), g_inf(prev.run.params), rtol=1e-8)
            new_best += 1
        elif float(prev.run.F) <= float(prev.F):  # the step started from the best point: its own gradient
            np.testing.assert_allclose(float(b.best_grad_inf), g_inf(b.params), rtol=1e-8)
            at_best += 1
        if float(b.run.F) == float(b.F):  # the run sits at the best point
            assert float(b.best_lam) == float(b.run.lam)
            lam_checked += 1
        if bool(b.done):
            break
    assert int(b.restart) >= 1  # a restart happened, so the run in progress is not the best point's run
    assert np.isfinite(float(b.best_grad_inf))
    assert new_best >= 10 and at_best >= 5 and lam_checked >= 10, (new_best, at_best, lam_checked)


# ----------------------------------------------------------------------------- stopping tests


def _trajectory(problem, steps, **kw):
    """States along a run with the given settings (no backtracking or restarts)."""
    solver = gn.make_gauss_newton(rank=3, init="scaled", backtrack=False, restarts=0, schur_precision="full", **kw)
    s = solver.init(solver.init_params(jax.random.PRNGKey(0), problem), problem)
    step = jax.jit(solver.step)
    out = [s]
    for _ in range(steps):
        s = step(s, problem)
        out.append(s)
    return out


@pytest.mark.parametrize("which", ["ftol", "gtol", "xtol"])
def test_each_stopping_tolerance_fires_where_its_test_says(which):
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    free = _trajectory(problem, 25, ftol=0.0, gtol=0.0, xtol=0.0)
    assert not any(bool(s.done) for s in free)
    F = np.array([float(s.F) for s in free])
    theta = np.array([np.sqrt(float(jnp.sum(s.params.A**2) + jnp.sum(s.params.B**2))) for s in free])
    ok = np.array([bool(s.accepted) for s in free[1:]])
    dnorm = np.array([np.sqrt(float(jnp.sum((b.params.A - a.params.A) ** 2) + jnp.sum((b.params.B - a.params.B) ** 2)))
                      for a, b in zip(free[:-1], free[1:])])
    g = np.array([float(s.grad_inf) for s in free[1:]])  # max|g| at the point each step started from
    # Each tolerance set between its quantity's values along the run, at step 8.
    if which == "ftol":
        rel = (F[:-1] - F[1:]) / F[:-1]
        tol = 0.5 * (np.min(rel[:8][ok[:8]]) + rel[8]) if rel[8] < np.min(rel[:8][ok[:8]]) else rel[8] * (1 + 1e-9)
        fires = ok & (F[:-1] - F[1:] <= tol * F[:-1])
    elif which == "gtol":
        ratio = g / F[:-1]
        tol = ratio[8] * (1 + 1e-9)
        fires = ratio <= tol
    else:
        ratio = dnorm / theta[:-1]
        tol = ratio[8] * (1 + 1e-9) if ok[8] else None
        if tol is None:
            pytest.skip("step 8 rejected")
        fires = ok & (dnorm <= tol * (theta[:-1] + tol))
    expect = int(np.argmax(fires))
    assert fires.any() and expect <= 8
    run = _trajectory(problem, expect + 1, **{"ftol": 0.0, "gtol": 0.0, "xtol": 0.0, which: float(tol)})
    done = [bool(s.done) for s in run[1:]]
    assert done.index(True) == expect, (which, done, expect)


# ----------------------------------------------------------------------------- whole runs, float64 and float32


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lay", ["dense", "coo"])
def test_never_increases_objective(dtype, lay):
    problem, _ = small_problem(seed=4, n=30, m=12, true_rank=4)
    if dtype == "float32":
        problem = to_float32(problem)
    prob = to_coo(problem, chunk=64) if lay == "coo" else problem
    solver = gn.make_gauss_newton(rank=3, init="keras")
    state = solver.init(solver.init_params(jax.random.PRNGKey(0), prob), prob, None)
    assert state.F.dtype == jnp.dtype(dtype)
    step = jax.jit(solver.step)
    F = [float(state.F)]
    for _ in range(25):
        state = step(state, prob)
        F.append(float(state.F))
    assert np.all(np.diff(F) <= 0)
    assert F[-1] < 1e-2 * F[0]
    rtol = 1e-10 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(state.F, gn.scaled_objective(state.params, prob, "frobenius", 0.0), rtol=rtol)


@pytest.mark.parametrize("dtype,lay,tol", [("float64", "dense", 1e-8), ("float32", "dense", 1e-3),
                                           ("float64", "coo", 1e-8)])
def test_exact_low_rank_fully_observed_is_fitted(dtype, lay, tol):
    key = jax.random.PRNGKey(5)
    W = jnp.exp(jax.random.normal(key, (20, 3)))
    H = jnp.exp(jax.random.normal(jax.random.PRNGKey(6), (8, 3)))
    problem = full_problem(W @ H.T)
    if dtype == "float32":
        problem = to_float32(problem)
    prob = to_coo(problem) if lay == "coo" else problem
    solver = gn.make_gauss_newton(rank=3, init="scaled", ftol=0.0, xtol=0.0, gtol=0.0, restarts=0,
                                  **(dict(cg_tol=1e-12, cg_iters=200) if lay == "coo" else {}))
    state = solver.init(solver.init_params(jax.random.PRNGKey(1), prob), prob, None)
    step = jax.jit(solver.step)
    for _ in range(150):
        state = step(state, prob)
    rel = jnp.linalg.norm(predict(state.params) - problem.V) / jnp.linalg.norm(problem.V)
    assert float(rel) < tol


def test_unknown_or_removed_options_are_refused():
    for kw, msg in ((dict(damping="sqrt"), "damping"),
                    (dict(linear_solver="qr"), "linear solver"), (dict(schur_precision="half"), "schur_precision"),
                    (dict(cg_iters=0), "cg_iters"), (dict(loss="huber"), "loss")):
        with pytest.raises(ValueError, match=msg):
            gn.make_gauss_newton(**kw)
    with pytest.raises(ValueError, match="restarts"):
        gn.make_gauss_newton(restarts=9)


def _scripted_runs(script):
    """A stand-in LM run for :func:`gn.with_restarts`: run k (told apart by its start) follows script[k].

    script[k] = (F_end, steps, converges): the objective falls to F_end over
    ``steps`` steps, then either a stopping test fires (converges) or it stays
    at F_end for ever (a stall).
    """
    from lrfactor.factors import Factors

    # A start's B holds its tag: 0 for the blind start, 100 + a uniform draw of
    # its key for a fresh one (B never changes along a run).
    def init_params(key, problem):
        return Factors(jnp.zeros((1, 1)), jnp.full((1, 1), 100.0) + jax.random.uniform(key))

    names = [0.0] + [float(init_params(jax.random.fold_in(jax.random.PRNGKey(0), gn.RESTART_KEY + k), None).B[0, 0])
                     for k in range(1, len(script))]

    def init_state(params, problem, key=None, weight=None, fweight=None):
        z = jnp.zeros(())
        return gn.GNState(params, jnp.asarray(10.0), jnp.asarray(1.0), z + 2, jnp.asarray(True),
                          jnp.asarray(0, jnp.int32), z, z, jnp.asarray(0, jnp.int32), z, jnp.asarray(False), z, z)

    def step(state, problem):
        k = jnp.argmin(jnp.abs(jnp.asarray(names) - state.params.B[0, 0]))
        F_end, steps, conv = (jnp.asarray([s[i] for s in script])[k] for i in range(3))
        n = state.n_accepted + 1
        F = jnp.where(n >= steps, F_end, F_end + (10.0 - F_end) * (1 - n / steps))
        params = state.params._replace(A=state.params.A + 1.0)  # tell the runs' points apart
        return state._replace(params=params, F=F, n_accepted=n, done=(n >= steps) & (conv > 0))

    solver = gn.Solver(name="scripted", init_params=init_params, init=init_state, step=None, predict=None,
                       objective=None, extras=())
    return gn.with_restarts(solver, init_state, step, restarts=len(script) - 1, window=5, rtol=1e-3)


def _drive(rs, steps):
    from lrfactor.factors import Factors
    s = rs.init(Factors(jnp.zeros((1, 1)), jnp.zeros((1, 1))), None)
    for _ in range(steps):
        if bool(s.done):
            break
        s = rs.step(s, None)
    return s


def test_a_run_converged_at_the_best_value_ends_the_seed_without_restarts():
    s = _drive(_scripted_runs([(2.0, 8, 1), (1.0, 8, 1), (1.0, 8, 1)]), 100)
    assert bool(s.done) and int(s.restart) == 0 and int(s.best_run) == 0 and int(s.stalls) == 0
    assert float(s.F) == 2.0 and int(s.run.n_accepted) == 8


def test_a_stall_at_a_value_an_earlier_run_reached_ends_the_seed():
    # run 0 stalls at 2; restart 1 stalls at 2 again (within rtol): the best value seen twice ends the seed
    s = _drive(_scripted_runs([(2.0, 8, 0), (2.0 * (1 + 1e-4), 8, 0), (1.0, 8, 1)]), 100)
    assert bool(s.done) and int(s.restart) == 1 and int(s.best_run) == 0 and float(s.F) == 2.0
    assert int(s.stalls) == 2
    # a stall at a better value (1.5) or a worse one (3) is not a repeat: the next restart runs
    for second in (1.5, 3.0):
        s = _drive(_scripted_runs([(2.0, 8, 0), (second, 8, 0), (1.0, 8, 1)]), 100)
        assert bool(s.done) and int(s.restart) == 2 and int(s.best_run) == 2 and float(s.F) == 1.0
    # the first run's stall is never a repeat; after the last restart a repeated stall still ends the seed
    s = _drive(_scripted_runs([(2.0, 8, 0), (2.0, 8, 0)]), 100)
    assert bool(s.done) and int(s.restart) == 1 and float(s.F) == 2.0


def test_a_stall_restarts_and_a_worse_converged_restart_restarts_again():
    # run 0 stalls at 2; restart 1 converges above it (3); restart 2 converges at 1: best
    s = _drive(_scripted_runs([(2.0, 8, 0), (3.0, 8, 1), (1.0, 8, 1)]), 100)
    assert bool(s.done) and int(s.restart) == 2 and int(s.best_run) == 2 and int(s.stalls) == 1
    assert float(s.F) == 1.0
    # restart 1 reaching the best value seen (within rtol) and converging there ends the seed
    s = _drive(_scripted_runs([(2.0, 8, 0), (2.0 * (1 + 1e-4), 8, 1), (1.0, 8, 1)]), 100)
    assert bool(s.done) and int(s.restart) == 1 and int(s.best_run) == 0 and float(s.F) == 2.0

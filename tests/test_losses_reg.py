"""The log loss and the factor penalty reg·(ΣW² + ΣH²): values, gradients and
Gauss-Newton matrices against dense float64 references, both layouts, every
solver that takes them, and the refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor import cli, layout, losses
from lrfactor.factors import Factors, init_factors, predict
from lrfactor.problems import to_coo
from lrfactor.solvers import blocks as bk
from lrfactor.solvers import gauss_newton as gn
from lrfactor.solvers.first_order import factor_entry_loss
from lrfactor.solvers.nmf import make_hals, make_mu
from tests.helpers import small_problem

EXACT = dict(backtrack=False, restarts=0, schur_precision="full", ftol=0.0, gtol=0.0, xtol=0.0)


def _split(th, n, m, r):
    return Factors(th[: n * r].reshape(n, r), th[n * r:].reshape(m, r))


def residual_vector(th, problem, loss, l2, reg, shape):
    """The objective as ½‖R(θ)‖²: data residuals, then the two penalties' residuals.

    frobenius: P − V; log: log P − log V (on the training entries; 0 elsewhere);
    √(2c·l2)·θ; √(2c·reg)·exp(θ). Written from the definitions, not from the solver's formulas."""
    n, m, r = shape
    p = _split(th, n, m, r)
    P = predict(p)
    M = problem.train
    if loss == "frobenius":
        rd = jnp.where(M, P - problem.V, 0.0)
    else:
        rd = jnp.where(M, jnp.log(P) - jnp.log(jnp.where(M, problem.V, 1.0)), 0.0)
    c = 0.5 * jnp.sum(M)
    return jnp.concatenate([rd.ravel(), jnp.sqrt(2 * c * l2) * th, jnp.sqrt(2 * c * reg) * jnp.exp(th)])


def dense_gn(p, problem, loss, l2, reg):
    """(F, g, JᵀJ) of the least-squares form, by jax.jacfwd on the residual vector."""
    n, r = p.A.shape
    m = p.B.shape[0]
    th = jnp.concatenate([p.A.ravel(), p.B.ravel()])
    R = residual_vector(th, problem, loss, l2, reg, (n, m, r))
    J = jax.jacfwd(residual_vector)(th, problem, loss, l2, reg, (n, m, r))
    return 0.5 * jnp.sum(R**2), J.T @ R, J.T @ J, th


def _problem(seed=1, n=13, m=7, noise=0.1):
    """A problem with multiplicative noise: V = (W Hᵀ)·exp(noise·z) > 0."""
    problem, truth = small_problem(seed=seed, n=n, m=m, true_rank=4)
    z = jax.random.normal(jax.random.PRNGKey(seed + 100), problem.V.shape)
    return problem._replace(V=problem.V * jnp.exp(noise * z)), truth


def test_log_loss_closed_form_and_zero_at_the_data():
    problem, truth = _problem()
    p = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    P, V, M = predict(p), problem.V, np.asarray(problem.train)
    ref = np.mean((np.log(np.asarray(P)) - np.log(np.asarray(V)))[M] ** 2)
    assert float(losses.data_loss(P, problem, "log")) == pytest.approx(ref, rel=1e-12)
    assert abs(float(losses.data_loss(V, problem, "log"))) == 0.0
    # held-out entries: the same loss on the other mask
    ref_val = np.mean((np.log(np.asarray(P)) - np.log(np.asarray(V)))[~M] ** 2)
    assert float(losses.data_loss(P, problem, "log", "val")) == pytest.approx(ref_val, rel=1e-12)
    assert float(losses.factor_penalty(p)) == pytest.approx(float(jnp.sum(jnp.exp(p.A) ** 2) + jnp.sum(jnp.exp(p.B) ** 2)))


@pytest.mark.parametrize("loss,l2,reg", [("log", 0.0, 0.0), ("log", 0.01, 0.05), ("frobenius", 0.02, 0.3)])
@pytest.mark.parametrize("shape", [(13, 7), (6, 11)])
def test_gradient_and_gauss_newton_blocks_equal_the_dense_jacobian(loss, l2, reg, shape):
    problem, _ = _problem(n=shape[0], m=shape[1])
    p = init_factors(jax.random.PRNGKey(2), problem, 3, "scaled")
    F_ref, g_ref, JJ, _ = dense_gn(p, problem, loss, l2, reg)
    # the scaled objective is ½‖R‖², and its autodiff gradient is JᵀR
    assert float(gn.scaled_objective(p, problem, loss, l2, reg)) == pytest.approx(float(F_ref), rel=1e-12)
    th = jnp.concatenate([p.A.ravel(), p.B.ravel()])
    F = lambda t: gn.scaled_objective(_split(t, shape[0], shape[1], 3), problem, loss, l2, reg)
    np.testing.assert_allclose(jax.grad(F)(th), g_ref, rtol=1e-10, atol=1e-12)
    for prob in (problem, to_coo(problem, chunk=8)):
        c = gn._scale(prob, loss)
        W, H = jnp.exp(p.A), jnp.exp(p.B)
        psi, omega = bk.psi_omega(layout.entry_products(prob, W, H), layout.values(prob), layout.mask(prob), loss)
        gX, gY = bk.gradient(prob, W, H, psi, p.A, p.B, c * l2, c * reg if reg else None)
        np.testing.assert_allclose(jnp.concatenate([gX.ravel(), gY.ravel()]), g_ref, rtol=1e-10, atol=1e-12)
        # JᵀΩJ + the penalties' diagonals, assembled densely from the blocks and the coupling
        U, S = bk.row_blocks(prob, W, H, omega), bk.col_blocks(prob, W, H, omega)
        fX, fY = bk.factor_penalty_diagonal(W, H, c * reg)
        n, r = W.shape
        m = H.shape[0]
        Ud = bk.add_diag(U, 2 * c * l2 + fX)
        Sd = bk.add_diag(S, 2 * c * l2 + fY)
        eye_m = jnp.eye(m * r)
        C = jax.vmap(lambda e: bk.couple(prob, W, H, omega, e.reshape(m, r)).ravel(), out_axes=1)(eye_m)
        G = jnp.block([[jax.scipy.linalg.block_diag(*Ud), C], [C.T, jax.scipy.linalg.block_diag(*Sd)]])
        np.testing.assert_allclose(G, JJ, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(JJ))))


@pytest.mark.parametrize("lay,linear_solver,loss,l2,reg", [
    ("dense", "dense_schur", "log", 0.0, 0.0), ("dense", "dense_schur", "log", 0.0, 0.05),
    ("dense", "schur_pcg", "frobenius", 0.01, 0.2), ("coo", "schur_pcg", "log", 0.0, 0.05),
])
def test_one_step_is_the_dense_damped_gauss_newton_step(lay, linear_solver, loss, l2, reg):
    """Δ = solve(JᵀJ + λI, −g) with every term from jacfwd; the gain ratio uses the model
    decrease −gᵀΔ − ½ΔᵀJᵀJΔ; the new point is the gauge-balanced θ + Δ."""
    problem, _ = _problem(seed=4, n=30, m=12)
    prob = to_coo(problem, chunk=64) if lay == "coo" else problem
    kw = dict(linear_solver=linear_solver, cg_iters=500, cg_tol=1e-13) if linear_solver == "schur_pcg" else {}
    solver = gn.make_gauss_newton(loss=loss, l2=l2, reg=reg, rank=3, lambda0=1.0, **EXACT, **kw)
    p0 = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    s0 = solver.init(p0, prob)
    s1 = jax.jit(solver.step)(s0, prob)
    assert bool(s1.accepted)
    F0, g, JJ, th = dense_gn(s0.params, problem, loss, l2, reg)
    assert float(s0.F) == pytest.approx(float(F0), rel=1e-12)
    delta = jnp.linalg.solve(JJ + float(s0.lam) * jnp.eye(th.size), -g)
    n, m = 30, 12
    new = _split(th + delta, n, m, 3)
    if l2 or reg:
        new = gn.balance_gauge(new, l2, reg)
    np.testing.assert_allclose(predict(s1.params), predict(new), rtol=1e-8)
    np.testing.assert_allclose(s1.params.A, new.A, rtol=1e-8, atol=1e-9)
    pred = -g @ delta - 0.5 * delta @ JJ @ delta
    F1 = gn.scaled_objective(new, problem, loss, l2, reg)
    assert float(s1.rho) == pytest.approx(float((F0 - F1) / pred), rel=1e-6)


@pytest.mark.parametrize("l2,reg", [(0.0, 0.3), (0.01, 0.3), (1e-4, 2.0)])
def test_balance_gauge_keeps_prediction_and_minimises_both_penalties(l2, reg):
    problem, _ = small_problem()
    p = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    p = Factors(p.A + jnp.array([1.0, -2.0, 0.5]), p.B - 3.0)
    q = gn.balance_gauge(p, l2, reg)
    np.testing.assert_allclose(predict(q), predict(p), rtol=1e-12)
    pen = lambda c: l2 * losses.l2_penalty(Factors(q.A + c, q.B - c)) + reg * losses.factor_penalty(Factors(q.A + c, q.B - c))
    assert float(pen(jnp.zeros(3))) < float(pen(p.A[0] * 0 + (p.A - q.A)[0]))  # below where it started
    g = jax.grad(pen)(jnp.zeros(3))  # stationary along every gauge direction
    assert float(jnp.max(jnp.abs(g))) < 1e-9 * float(pen(jnp.zeros(3)))


@pytest.mark.parametrize("loss,reg", [("log", 0.02), ("kl", 0.02)])
def test_runs_lower_the_objective_and_agree_on_both_layouts(loss, reg):
    problem, _ = _problem(seed=3, n=25, m=10)
    solver = gn.make_gauss_newton(loss=loss, reg=reg, rank=3, linear_solver="schur_pcg", cg_iters=300,
                                  cg_tol=1e-12, schur_precision="full", restarts=0)
    p0 = init_factors(jax.random.PRNGKey(5), problem, 3, "scaled")
    out = {}
    for lay, prob in (("dense", problem), ("coo", to_coo(problem, chunk=16))):
        def run(s):
            def body(s, _):
                s = solver.step(s, prob)
                return s, s.F
            return jax.lax.scan(body, s, None, length=10)

        s, Fs = jax.jit(run)(solver.init(p0, prob))
        assert bool(jnp.all(jnp.diff(Fs) <= 1e-12 * jnp.abs(Fs[:-1])))
        assert float(Fs[-1]) < 0.5 * float(solver.init(p0, prob).F)
        out[lay] = s.params
    np.testing.assert_allclose(predict(out["coo"]), predict(out["dense"]), rtol=1e-7)


def test_the_first_order_entry_loss_is_the_objectives():
    problem, _ = _problem()
    p = init_factors(jax.random.PRNGKey(1), problem, 3, "scaled")
    rows, cols = np.nonzero(np.asarray(problem.train))
    v = problem.V[rows, cols]
    valid = jnp.ones(rows.size, bool)
    for loss in losses.LOSSES:
        total = factor_entry_loss(p, rows, cols, v, valid, loss) / rows.size
        assert float(total) == pytest.approx(float(losses.data_loss(predict(p), problem, loss)), rel=1e-12)
    # padding entries (value 0 for log) contribute nothing, not even a NaN gradient
    pad = jnp.concatenate([valid, jnp.zeros(2, bool)])
    r2, c2, v2 = np.r_[rows, 0, 1], np.r_[cols, 0, 0], jnp.concatenate([v, jnp.zeros(2)])
    g = jax.grad(lambda q: factor_entry_loss(q, r2, c2, v2, pad, "log"))(p)
    assert bool(jnp.all(jnp.isfinite(g.A)))


def _kkt(objective, W, H, eps):
    """max |∂f/∂W| where W > eps, relative (the stationarity of a minimiser over [eps, ∞))."""
    gW, gH = jax.grad(objective, argnums=(0, 1))(W, H)
    free = jnp.concatenate([jnp.where(W > 10 * eps, gW, 0.0).ravel(), jnp.where(H > 10 * eps, gH, 0.0).ravel()])
    return float(jnp.max(jnp.abs(free)))


def test_hals_column_update_is_the_exact_minimiser_with_reg():
    problem, _ = _problem(seed=2, n=12, m=8)
    reg, eps = 0.05, 1e-12
    solver = make_hals(rank=1, init="scaled", reg=reg)
    p0 = init_factors(jax.random.PRNGKey(1), problem, 1, "scaled")
    s = solver.init(p0, problem, None)
    s1 = jax.jit(solver.step)(s, problem)
    f = lambda W, H: layout.masked_mse(problem, W @ H.T) + reg * (jnp.sum(W**2) + jnp.sum(H**2))  # noqa: E731
    # after the sweep H is the exact minimiser given W: ∂f/∂H = 0 wherever H is off the floor
    gH = jax.grad(f, argnums=1)(s1.W, s1.H)
    assert float(jnp.max(jnp.abs(jnp.where(s1.H > 10 * eps, gH, 0.0)))) < 1e-10
    assert float(s1.loss) == pytest.approx(float(f(s1.W, s1.H)), rel=1e-12)
    assert float(s1.loss) < float(s.loss)


@pytest.mark.parametrize("loss", ["frobenius", "kl"])
def test_mu_with_reg_decreases_and_converges_to_a_stationary_point(loss):
    problem, _ = _problem(seed=2, n=12, m=8)
    reg, eps = 0.05, 1e-12
    solver = make_mu(rank=2, loss=loss, init="scaled", reg=reg)
    p0 = init_factors(jax.random.PRNGKey(1), problem, 2, "scaled")

    def run(s):
        def body(s, _):
            s = solver.step(s, problem)
            return s, s.loss
        return jax.lax.scan(body, s, None, length=4000)

    s, Ls = jax.jit(run)(solver.init(p0, problem, None))
    assert bool(jnp.all(jnp.diff(Ls) <= 1e-13 * jnp.abs(Ls[:-1])))
    f = lambda W, H: (losses.data_loss(W @ H.T, problem, loss) + reg * (jnp.sum(W**2) + jnp.sum(H**2)))
    assert float(Ls[-1]) == pytest.approx(float(f(s.W, s.H)), rel=1e-12)
    assert _kkt(f, s.W, s.H, eps) < 1e-6


# ----------------------------------------------------------------------------- refusals


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def _refusals(tmp_path):
    V = np.arange(1.0, 31.0).reshape(6, 5)
    tr = np.ones((6, 5), bool)
    tr[0, 0] = False
    zero = V.copy()
    zero[2, 3] = 0.0
    csv = tmp_path / "t.csv"
    csv.write_text("p,s,v\na,1,1\nb,1,0\na,2,3\nb,2,4\n")
    return {
        "mu with log": (["--solver", "mu", "--loss", "log"], "--loss log is not minimised by the mu solver"),
        "hals with log": (["--solver", "hals", "--loss", "log"], "--loss log has no effect here: the hals solver"),
        "mlp with reg": (["--solver", "mlp", "--reg", "0.1"], "--reg 0.1 has no effect here: the mlp solver"),
        "negative reg": (["--reg", "-1"], "--reg must be >= 0"),
        "log with a zero (npz)": (["--data", _npz(tmp_path, V=zero, train_mask=tr), "--loss", "log", "--rank", "2"],
                                  "the log loss needs V > 0"),
        "log with a zero (csv)": (["--data", str(csv), "--loss", "log", "--rank", "1", "--val-fraction", "0"],
                                  "value 0.0 at line 3 (1 in all); the log loss needs V > 0"),
        "log with noisy synthetic": (["--n", "30", "--m", "20", "--rank", "2", "--true-rank", "3", "--noise", "1", "--seeds", "1",
                                      "--loss", "log"], "break the rule: the log loss needs V > 0"),
        "kl with noisy synthetic": (["--n", "30", "--m", "20", "--rank", "2", "--true-rank", "3", "--noise", "1", "--seeds", "1",
                                     "--loss", "kl"], "break the rule: the kl loss needs V >= 0"),
    }


@pytest.mark.parametrize("case", ["mu with log", "hals with log", "mlp with reg", "negative reg",
                                  "log with a zero (npz)", "log with a zero (csv)", "log with noisy synthetic",
                                  "kl with noisy synthetic"])
def test_refusals_exit_2_with_one_line(case, tmp_path, capsys):
    args, msg = _refusals(tmp_path)[case]
    before = sorted(tmp_path.rglob("*"))
    code = cli.main(args + ["--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and msg in err, err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("solver", ["gauss_newton", "adam", "mu", "hals"])
def test_reg_and_log_run_end_to_end(solver, tmp_path):
    import lrfactor

    problem, _ = _problem(seed=6, n=20, m=8)
    kw = dict(solver=solver, rank=2, seeds=2, steps=30, reg=0.01)
    if solver in ("gauss_newton", "adam"):
        kw["loss"] = "log"
    if solver == "adam":
        kw.update(lr=1e-2, batch_size=64)
    fit = lrfactor.fit(np.asarray(problem.V), np.asarray(problem.train), np.asarray(problem.val), **kw)
    h = fit.history["objective"]
    assert np.all(np.isfinite(h)) and np.all(h[:, -1] < h[:, 0])
    assert fit.config.reg == 0.01


# ---------------------------------------------------------------------------
# Negative values: refused only where the loss or the solver needs V >= 0.


def _negative_data(tmp_path, seed=3):
    """An exact rank-2 positive matrix plus additive noise large enough to make some entries negative."""
    rng = np.random.default_rng(seed)
    V = rng.random((12, 2)) @ rng.random((2, 7)) + 0.3 * rng.standard_normal((12, 7))
    assert (V < 0).sum() >= 3
    tr = rng.random(V.shape) < 0.7
    tr[np.arange(12), np.arange(12) % 7] = True  # no empty row or column
    tr[np.arange(7) % 12, np.arange(7)] = True
    return V, tr, _npz(tmp_path, V=V, train_mask=tr, val_mask=~tr)


@pytest.mark.parametrize("extra, msg", [
    (["--loss", "kl"], "the kl loss needs V >= 0 (V log P)"),
    (["--loss", "log"], "the log loss needs V > 0 (log V)"),
    (["--solver", "mu"], "the mu solver needs V >= 0 (multiplicative updates)"),
    (["--solver", "mu", "--loss", "kl"], "the kl loss needs V >= 0"),
    (["--solver", "adam", "--loss", "kl"], "the kl loss needs V >= 0"),
    (["--cv", "2", "--loss", "frobenius,kl"], "the kl loss needs V >= 0"),  # every listed loss is checked
])
def test_negative_values_refused_where_loss_or_solver_needs_them(extra, msg, tmp_path, capsys):
    _, _, path = _negative_data(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code = cli.main(["--data", path, "--rank", "2", "--steps", "3", "--seeds", "1", "--quiet",
                     "--out", str(tmp_path / "out")] + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and msg in err, err
    assert "value -" in err  # names the offending value
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("solver", ["gauss_newton", "hals", "adam"])
def test_negative_values_are_fitted_by_frobenius(solver, tmp_path):
    """frobenius takes V as it is: the run's MSEs are those of its factors against the negative values too."""
    import lrfactor

    V, tr, path = _negative_data(tmp_path)
    kw = dict(solver=solver, rank=2, seeds=1, steps=40, data=path)
    if solver == "adam":
        kw.update(lr=1e-2, batch_size=64, precision=64)
    fit = lrfactor.fit(**kw)
    P = fit.W[0] @ fit.H[0].T
    assert np.all(P >= 0)
    f = fit.summary["final"]
    np.testing.assert_allclose(f["train_mse"][0], np.mean((P - V)[tr] ** 2), rtol=1e-9)
    np.testing.assert_allclose(f["val_mse"][0], np.mean((P - V)[~tr] ** 2), rtol=1e-9)
    h = fit.history["train_mse"][0]
    assert np.isfinite(h).all() and h[-1] < h[0]


def test_value_rule_is_one_table():
    """The rule every check reads: which (loss, solver) pairs refuse a negative value and a zero."""
    want = {("frobenius", "gauss_newton"): (False, False), ("frobenius", "hals"): (False, False),
            ("frobenius", "adam"): (False, False), ("frobenius", "mu"): (True, False),
            ("kl", "gauss_newton"): (True, False), ("kl", "mu"): (True, False),
            ("log", "gauss_newton"): (True, True), ("log", "adam"): (True, True)}
    for (loss, solver), (neg, zero) in want.items():
        got = losses.bad_values(np.array([-1.0, 0.0, 1.0]), loss, solver)
        assert got.tolist() == [neg, zero, False], (loss, solver)
        assert (losses.value_requirement(loss, solver) is None) == (not neg)

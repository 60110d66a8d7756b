"""Per-entry weights: each training entry's loss term times its weight (lrfactor/layout.py).

The mathematics first, in float64 on small problems: an entry of weight 0 is
that entry removed from the training mask (every solver, both layouts);
scaling every weight by one constant changes neither the objective nor the
Gauss-Newton step; integer weights are repeated entries; the Gauss-Newton
gradient and matrix are those of a dense weighted reference (jax.grad,
jax.jacfwd). Then the data path: weights read from every file format, the
same weighted run on both layouts, weighted runs end to end for every solver,
the weighted objective and held-out score recomputed from the saved factors.
(Bad weights on the command line: tests/test_cli.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import lrfactor
from lrfactor import cli, cv, layout, losses, results
from lrfactor.factors import Factors, init_factors
from lrfactor.problems import Problem, from_coo, pad_entries, stack_coo, to_coo
from lrfactor.solvers import blocks as bk
from lrfactor.solvers import gauss_newton as gn
from lrfactor.solvers.first_order import make_first_order
from lrfactor.solvers.nmf import make_hals, make_mu
from lrfactor.tables import read_table, write_table
from tests.helpers import layout_config, small_problem


def _weighted(seed=1, n=13, m=7, observed=0.7):
    """A small problem with weights in [0.3, 3] (garbage off the training mask, which must not matter)."""
    problem, _ = small_problem(seed=seed, n=n, m=m, true_rank=4, observed=observed)
    w = np.random.default_rng(seed).uniform(0.3, 3.0, size=(n, m))
    return problem._replace(weight=jnp.asarray(w))


def _trajectory_end(solver, params, problem, steps, key=None):
    """The parameters after ``steps`` steps from ``params``."""

    def go(params, problem):
        state = solver.init(params, problem, key)
        return jax.lax.scan(lambda s, _: (solver.step(s, problem), None), state, None, length=steps)[0].params

    return jax.jit(go)(params, problem)


def _same_params(a, b, rtol=1e-10):
    for x, y in zip(a, b):
        scale = float(jnp.max(jnp.abs(y)))
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale)


def _spare_entries(train, k=3):
    """k training entries in distinct rows and columns, each leaving its row and column other entries."""
    train = np.asarray(train)
    rows, cols, out = set(), set(), []
    for i, j in zip(*np.nonzero(train)):
        if i in rows or j in cols or train[i].sum() < 2 or train[:, j].sum() < 2:
            continue
        rows.add(i)
        cols.add(j)
        out.append((int(i), int(j)))
        if len(out) == k:
            return out
    raise AssertionError("no spare entries")


# ----------------------------------------------------------------------------- the mathematics


def _solver(name, n_train):
    if name == "gauss_newton":
        return gn.make_gauss_newton(rank=3, init="scaled", restarts=0), 10
    if name == "hals":
        return make_hals(rank=3, init="scaled"), 20
    if name == "mu":
        return make_mu(rank=3, init="scaled", loss="kl"), 20
    cfg = layout_config(solver="adam", rank=3, batch_size=16, precision=64, lr=1e-2)
    return make_first_order(cfg, n_train), 4


@pytest.mark.parametrize("lay", ["dense", "coo"])
@pytest.mark.parametrize("name", ["gauss_newton", "hals", "mu", "adam"])
def test_an_entry_of_weight_zero_is_that_entry_removed(name, lay):
    """Weight 0 on a few training entries, against the same problem without those entries
    (the other entries keeping their weights): the same final factors."""
    problem = _weighted()
    drop = _spare_entries(problem.train)
    i, j = (np.array(x) for x in zip(*drop))
    zeroed = problem._replace(weight=problem.weight.at[i, j].set(0.0))
    removed = zeroed._replace(train=problem.train.at[i, j].set(False))
    assert int(layout.count(zeroed)) == int(layout.count(removed)) + len(drop)
    if lay == "coo":
        zeroed, removed = to_coo(zeroed, chunk=8), to_coo(removed, chunk=8)
    solver, steps = _solver(name, int(layout.count(zeroed)))
    p0 = init_factors(jax.random.PRNGKey(5), zeroed, 3, "scaled")  # the weighted mean: the same start for both
    key = jax.random.PRNGKey(7)
    a = _trajectory_end(solver, p0, zeroed, steps, key)
    b = _trajectory_end(solver, p0, removed, steps, key)
    assert float(jnp.max(jnp.abs(a.A - p0.A))) > 1e-3  # it moved
    _same_params(a, b)


@pytest.mark.parametrize("lay, loss", [("dense", "frobenius"), ("coo", "kl")])
def test_scaling_every_weight_changes_neither_the_objective_nor_the_step(lay, loss):
    """Weights c·w against w, and c·1 against no weights: the same objective, the same
    Gauss-Newton steps (accepted or rejected alike: the gain ratio does not change either),
    and the same Adam epochs, whose batch weights are normalised."""
    base = _weighted(seed=2)
    c = 37.5
    unit = base._replace(weight=None)
    pairs = [(base._replace(weight=c * base.weight), base), (unit._replace(weight=jnp.full(base.V.shape, c)), unit)]
    solver = gn.make_gauss_newton(loss=loss, rank=3, init="scaled", restarts=0, backtrack=False, lambda0=1.0,
                                  schur_precision="full", linear_solver="schur_pcg" if lay == "coo" else "auto",
                                  cg_iters=500, cg_tol=1e-14)
    adam = make_first_order(layout_config(solver="adam", rank=3, batch_size=16, precision=64, lr=1e-2, loss=loss),
                            int(layout.count(base)))
    steps = jax.jit(lambda p, q: jax.lax.scan(lambda s, _: (solver.step(s, q), None), solver.init(p, q), None,
                                              length=4)[0])
    for scaled, plain in pairs:
        if lay == "coo":
            scaled, plain = to_coo(scaled, chunk=8), to_coo(plain, chunk=8)
        p0 = init_factors(jax.random.PRNGKey(3), plain, 3, "scaled")
        np.testing.assert_allclose(losses.objective(p0, scaled, loss), losses.objective(p0, plain, loss), rtol=1e-13)
        s_scaled, s_plain = steps(p0, scaled), steps(p0, plain)
        assert int(s_plain.n_accepted) >= 2 and int(s_scaled.n_accepted) == int(s_plain.n_accepted)
        np.testing.assert_allclose(s_scaled.F, c * s_plain.F, rtol=1e-12)  # F = Σ w·φ scales, its steps do not
        _same_params(s_scaled.params, s_plain.params, rtol=1e-10)
        key = jax.random.PRNGKey(1)
        _same_params(_trajectory_end(adam, p0, scaled, 2, key), _trajectory_end(adam, p0, plain, 2, key), rtol=1e-10)


def test_integer_weights_are_the_entry_repeated():
    """A coordinate list may hold an entry more than once (from_coo does not refuse it): entry e
    listed k_e times is the list with weight k_e on e, for the objective and every solver."""
    problem, _ = small_problem(seed=3, n=12, m=8, true_rank=4, observed=0.7)
    coo = to_coo(problem, chunk=8)
    rows, cols, vals = (np.asarray(x) for x in (coo.rows, coo.cols, coo.vals))
    k = np.random.default_rng(0).integers(1, 4, size=rows.size)
    vr, vc, vv = (np.asarray(x) for x in (coo.val_rows, coo.val_cols, coo.val_vals))
    weighted = from_coo(rows, cols, vals, vr, vc, vv, (12, 8), chunk=8, weights=k.astype(float))
    repeated = from_coo(np.repeat(rows, k), np.repeat(cols, k), np.repeat(vals, k), vr, vc, vv, (12, 8), chunk=8)
    p0 = init_factors(jax.random.PRNGKey(2), weighted, 3, "scaled")
    for loss in ("frobenius", "kl"):
        np.testing.assert_allclose(losses.objective(p0, weighted, loss, 1e-3),
                                   losses.objective(p0, repeated, loss, 1e-3), rtol=1e-13)
    for solver, steps in ((gn.make_gauss_newton(rank=3, restarts=0, linear_solver="schur_pcg", cg_iters=500,
                                                cg_tol=1e-14), 6),
                          (make_hals(rank=3), 10), (make_mu(rank=3, loss="kl"), 10)):
        _same_params(_trajectory_end(solver, p0, weighted, steps), _trajectory_end(solver, p0, repeated, steps))


PHI = {  # the per-entry losses of the scaled Gauss-Newton objective F = Σ w·φ
    "frobenius": lambda P, V: 0.5 * (P - V) ** 2,
    "kl": lambda P, V: V * jnp.log(V / P) - V + P,
    "log": lambda P, V: 0.5 * (jnp.log(P) - jnp.log(V)) ** 2,
}
FISHER = {"frobenius": lambda P: jnp.ones_like(P), "kl": lambda P: 1 / P, "log": lambda P: 1 / P**2}


@pytest.mark.parametrize("lay", ["dense", "coo"])
@pytest.mark.parametrize("loss", ["frobenius", "kl", "log"])
def test_weighted_gradient_and_gauss_newton_matrix_equal_a_dense_reference(loss, lay):
    """F = Σ_Ω w φ(P, V) written out densely; its jax.grad and Jᵀ diag(w ω) J (J = jax.jacfwd of
    P) against the solver's ψ/ω blocks: the gradient, the row blocks U and the whole matrix."""
    n, m, r = 7, 5, 2
    rng = np.random.default_rng(4)
    V = rng.uniform(0.2, 2.0, size=(n, m))
    train = rng.uniform(size=(n, m)) < 0.7
    train[:, 0] = train[0, :] = True
    w = rng.uniform(0.1, 4.0, size=(n, m))
    w[np.nonzero(train)[0][3], np.nonzero(train)[1][3]] = 0.0  # one training entry of weight 0
    problem = Problem(jnp.asarray(V), jnp.asarray(train), jnp.asarray(~train), jnp.asarray(w))
    prob = to_coo(problem, chunk=4) if lay == "coo" else problem
    p = Factors(jnp.asarray(rng.normal(scale=0.3, size=(n, r))), jnp.asarray(rng.normal(scale=0.3, size=(m, r))))
    th = jnp.concatenate([p.A.ravel(), p.B.ravel()])
    unflat = lambda t: (t[: n * r].reshape(n, r), t[n * r:].reshape(m, r))  # noqa: E731
    pred = lambda t: jnp.exp(unflat(t)[0]) @ jnp.exp(unflat(t)[1]).T  # noqa: E731
    Wt = jnp.asarray(np.where(train, w, 0.0))

    def F_ref(t):
        return jnp.sum(Wt * jnp.where(train, PHI[loss](pred(t), jnp.asarray(V)), 0.0))

    np.testing.assert_allclose(gn.scaled_objective(p, prob, loss, 0.0), F_ref(th), rtol=1e-12)
    J = jax.jacfwd(pred)(th).reshape(n * m, -1)
    G_ref = J.T @ ((Wt * FISHER[loss](pred(th))).ravel()[:, None] * J)

    W, H = jnp.exp(p.A), jnp.exp(p.B)
    psi, omega = bk.psi_omega(layout.entry_products(prob, W, H), layout.values(prob), layout.weights(prob), loss)
    gA, gB = bk.gradient(prob, W, H, psi, p.A, p.B, 0.0)
    np.testing.assert_allclose(jnp.concatenate([gA.ravel(), gB.ravel()]), jax.grad(F_ref)(th), rtol=1e-11, atol=1e-13)
    U = bk.row_blocks(prob, W, H, omega)
    for i in range(n):
        np.testing.assert_allclose(U[i], G_ref[i * r:(i + 1) * r, i * r:(i + 1) * r], rtol=1e-11, atol=1e-13)
    zA, zB = jnp.zeros((n, r)), jnp.zeros((m, r))

    def column(e):
        eA, eB = unflat(e)
        a, b = bk.gn_matvec(prob, W, H, omega, zA, zB, eA, eB)
        return jnp.concatenate([a.ravel(), b.ravel()])

    G = jax.vmap(column)(jnp.eye(th.size)).T
    np.testing.assert_allclose(G, G_ref, rtol=1e-11, atol=1e-12)


def test_padding_and_stacking_weigh_nothing():
    """Weighted coordinate lists cut into shards (padding of weight 0) or stacked into a padded batch
    give the objective and the Gauss-Newton run of the list as it is."""
    a, b = _weighted(seed=1, n=20, m=9), _weighted(seed=2, n=20, m=9, observed=0.5)
    ca, cb = to_coo(a, chunk=8), to_coo(b, chunk=8)
    p0 = init_factors(jax.random.PRNGKey(0), ca, 3, "scaled")
    cut = pad_entries(ca, 7)
    assert cut.weights.shape[0] > ca.weights.shape[0] and float(jnp.sum(cut.weights[ca.weights.shape[0]:])) == 0.0
    np.testing.assert_allclose(losses.objective(p0, cut, "kl"), losses.objective(p0, ca, "kl"), rtol=1e-13)
    solver = gn.make_gauss_newton(rank=3, restarts=0, linear_solver="schur_pcg", cg_iters=500, cg_tol=1e-14)
    run = jax.jit(lambda p, q: jax.lax.scan(lambda s, _: (solver.step(s, q), None), solver.init(p, q), None,
                                            length=5)[0].F)
    batch = stack_coo([ca, cb])
    got = jax.vmap(run, in_axes=(None, 0))(p0, batch)
    np.testing.assert_allclose(got, [run(p0, ca), run(p0, cb)], rtol=1e-10)


def test_folds_keep_each_entrys_weight_and_pin_an_entry_of_positive_weight():
    """Every fold fits the weights of its own entries, and every row and column keeps an entry of
    positive weight outside every fold (an entry of weight 0 cannot carry a row)."""
    rng = np.random.default_rng(1)
    n, m, K = 30, 8, 4
    train = rng.uniform(size=(n, m)) < 0.6
    train[:, 0] = train[0, :] = True
    w = np.where(rng.uniform(size=(n, m)) < 0.3, 0.0, rng.uniform(0.5, 2.0, size=(n, m)))
    w[:, 0] = np.where(train[:, 0], 1.0, w[:, 0])  # every row and column has a positive weight
    w[0, :] = np.where(train[0, :], 1.0, w[0, :])
    table = lrfactor.tables.table_from_dense(rng.uniform(1, 2, size=(n, m)), train, None, train_weight=w)
    positive = table.weights > 0
    fold = cv.assign_folds(table.rows, table.cols, table.shape, K, 0, positive)
    for f in range(K):
        keep = (fold != f) & positive
        assert set(table.rows[keep]) == set(range(n)) and set(table.cols[keep]) == set(range(m))
        ft = cv.fold_table(table, fold, f)
        np.testing.assert_array_equal(ft.weights, table.weights)
        assert np.array_equal(ft.is_val, fold == f)
    # Pinning by entries alone, this draw leaves some row or column of some fold with zero weights only.
    plain = cv.assign_folds(table.rows, table.cols, table.shape, K, 0)
    assert any(len(set(table.rows[(plain != f) & positive])) < n or len(set(table.cols[(plain != f) & positive])) < m
               for f in range(K))


# ----------------------------------------------------------------------------- the data path


def _frame(rng, n=30, m=12, held_out_weights=True):
    """A long table of a rank-3 matrix with noise, weights (some 0) and a split column."""
    W, H = rng.lognormal(size=(n, 3)), rng.lognormal(size=(m, 3))
    seen = rng.uniform(size=(n, m)) < 0.7
    seen[:, :2] = seen[:2, :] = True
    i, j = np.nonzero(seen)
    val = (rng.uniform(size=i.size) < 0.2) & (i >= 2) & (j >= 2)  # rows/columns 0-1 keep training entries
    w = rng.lognormal(sigma=0.7, size=i.size)
    w[(rng.uniform(size=i.size) < 0.1) & (i >= 2) & (j >= 2)] = 0.0
    qty = (W @ H.T)[i, j] * rng.lognormal(0, 0.1, i.size)
    df = pd.DataFrame({"item": [f"p{k:02d}" for k in i], "shop": j, "qty": qty, "conf": w,
                       "split": np.where(val, "val", "train")})
    if not held_out_weights:
        df.loc[val, "conf"] = np.nan
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_a_weight_column_round_trips_through_every_format(tmp_path):
    df = _frame(np.random.default_rng(0))
    df.to_csv(tmp_path / "t.csv", index=False, float_format="%.17g")
    t = read_table(tmp_path / "t.csv", split_key="split", weight_key="conf")
    assert t.weight_key == "conf" and t.val_weighted
    np.testing.assert_array_equal(t.weights, df["conf"].to_numpy())  # bit for bit, line by line
    for name in ("t.parquet", "t.npz", "t2.csv"):
        write_table(tmp_path / name, t)
        back = read_table(tmp_path / name, **({} if name.endswith(".npz") else {"split_key": "split",
                                                                                 "weight_key": "conf"}))
        np.testing.assert_array_equal(back.weights, t.weights)
        np.testing.assert_array_equal(back.is_val, t.is_val)
    # Held-out lines without weights: read as none (NaN), and the table says so.
    df2 = _frame(np.random.default_rng(0), held_out_weights=False)
    df2.to_csv(tmp_path / "u.csv", index=False, float_format="%.17g")
    u = read_table(tmp_path / "u.csv", split_key="split", weight_key="conf")
    assert not u.val_weighted and np.isnan(u.weights[u.is_val]).all() and u.dense_weights()[1] is None
    write_table(tmp_path / "u.npz", u)
    assert not read_table(tmp_path / "u.npz").val_weighted
    # The dense file: train_weight (n, m) beside V, NaN off the training mask ignored.
    V, train, val = t.to_dense()
    tw, vw = t.dense_weights()
    np.testing.assert_array_equal(vw[val], t.weights[t.is_val][np.lexsort((t.cols[t.is_val], t.rows[t.is_val]))])
    np.savez(tmp_path / "d.npz", V=V, train_mask=train, val_mask=val, train_weight=np.where(train, tw, np.nan))
    d = read_table(tmp_path / "d.npz")
    np.testing.assert_array_equal(d.dense_weights()[0], tw)
    assert not d.val_weighted  # a dense file has training weights only


@pytest.fixture(scope="module")
def weighted_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "sales.csv"
    _frame(np.random.default_rng(5)).to_csv(path, index=False, float_format="%.17g")
    return str(path)


KEYS = dict(row_key="item", col_key="shop", value_key="qty", split_key="split", weight_key="conf")


@pytest.mark.parametrize("solver, steps", [("gauss_newton", 8), ("adam", 3)])
def test_dense_and_coordinate_layouts_give_the_same_weighted_run(weighted_csv, solver, steps):
    kw = dict(data=weighted_csv, solver=solver, rank=3, seeds=2, steps=steps, precision=64, **KEYS)
    if solver == "adam":
        kw.update(batch_size=64)
    else:  # the same linear solver on both layouts (auto picks the dense Schur solve on dense masks)
        kw.update(linear_solver="schur_pcg", cg_tol=1e-14, cg_iters=500)
    a = lrfactor.fit(layout="dense", **kw)
    b = lrfactor.fit(layout="coo", **kw)
    np.testing.assert_allclose(b.W, a.W, rtol=1e-10)
    np.testing.assert_allclose(b.H, a.H, rtol=1e-10)
    for k in ("objective", "train_mse", "val_mse", "val_wmse"):
        np.testing.assert_allclose(b.summary["final"][k], a.summary["final"][k], rtol=1e-10)


def _scores(df, P, l2=0.0, A=None, B=None):
    """(weighted training objective, weighted held-out MSE, plain held-out and training MSEs) of the
    predictions P (rows and columns in sorted id order) at the table's lines."""
    i = np.searchsorted(sorted(set(df["item"])), df["item"].to_numpy())
    j = np.searchsorted(sorted(set(df["shop"])), df["shop"].to_numpy())
    err2 = (P[i, j] - df["qty"].to_numpy()) ** 2
    w = df["conf"].to_numpy()
    tr = (df["split"] == "train").to_numpy()
    obj = np.sum(w[tr] * err2[tr]) / np.sum(w[tr])
    if l2:
        obj += l2 * (np.sum(A**2) + np.sum(B**2))
    return obj, np.sum(w[~tr] * err2[~tr]) / np.sum(w[~tr]), np.mean(err2[~tr]), np.mean(err2[tr])


FLAGS = ["--row-key", "item", "--col-key", "shop", "--value-key", "qty", "--split-key", "split", "--weight-key", "conf"]


@pytest.mark.parametrize("solver", ["gauss_newton", "hals", "mu", "adam", "sgd", "mlp"])
def test_weighted_runs_end_to_end_for_every_solver(weighted_csv, tmp_path, solver):
    """run.py on a CSV with a weight column: the recorded objective is the weighted one, val_wmse the
    weighted held-out MSE and val_mse the plain one, all recomputed here from the saved factors."""
    out = tmp_path / "run"
    steps = {"gauss_newton": "5", "hals": "10", "mu": "10"}.get(solver, "3")
    argv = ["--data", weighted_csv, *FLAGS, "--solver", solver, "--rank", "3", "--seeds", "2", "--steps", steps,
            "--precision", "64", "--out", str(out), "--quiet"]
    if solver in ("adam", "sgd", "mlp"):
        argv += ["--batch-size", "64"]
    assert cli.main(argv) == 0
    run = results.load_run(str(out))
    rec = run["config"]
    assert rec["weights"] == {"train": True, "val": True} and rec["config"]["weight_key"] == "conf"
    assert "val_wmse" in run["history"] and run["history"]["val_wmse"].shape == run["history"]["val_mse"].shape
    f = run["summary"]["final"]
    df = pd.read_csv(weighted_csv)
    l2 = rec["config"]["l2"]
    for k in range(2):
        if solver == "mlp":
            P, A, B = np.asarray(run["predictions"]["P"][k]), None, None
        else:
            W, H = run["factors"]["W"][k], run["factors"]["H"][k]
            P, A, B = W @ H.T, np.log(W), np.log(H)
        obj, wval, val, train = _scores(df, P, l2 if solver != "mlp" else 0.0, A, B)
        if solver != "mlp":  # the mlp's penalty is on its embeddings, not on factors
            np.testing.assert_allclose(f["objective"][k], obj, rtol=1e-9)
        np.testing.assert_allclose(f["val_wmse"][k], wval, rtol=1e-9)
        np.testing.assert_allclose(f["val_mse"][k], val, rtol=1e-9)
        np.testing.assert_allclose(f["train_mse"][k], train, rtol=1e-9)


def test_fit_takes_training_weights_with_arrays_as_the_dense_file_does(tmp_path):
    """lrfactor.fit(V, train_mask, val_mask, train_weight=...) is the run of the dense .npz holding
    train_weight; weights without arrays are refused."""
    problem = _weighted(seed=4, n=20, m=9)
    V, train, val, w = (np.asarray(x) for x in (problem.V, problem.train, problem.val, problem.weight))
    np.savez(tmp_path / "d.npz", V=V, train_mask=train, val_mask=val, train_weight=w)
    kw = dict(solver="hals", rank=3, seeds=1, steps=6)
    a = lrfactor.fit(V, train, val, train_weight=w, **kw)
    b = lrfactor.fit(data=str(tmp_path / "d.npz"), **kw)
    c = lrfactor.fit(V, train, val, **kw)
    np.testing.assert_array_equal(a.W, b.W)
    assert not np.allclose(a.W, c.W)  # the weights changed the fit
    np.testing.assert_allclose(a.summary["final"]["objective"],
                               losses.objective(Factors(np.log(a.W[0]), np.log(a.H[0])), problem), rtol=1e-12)
    with pytest.raises(lrfactor.config.ConfigError, match="train_weight goes with the arrays"):
        lrfactor.fit(data=str(tmp_path / "d.npz"), train_weight=w, **kw)

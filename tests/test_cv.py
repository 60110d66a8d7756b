"""K-fold cross-validation (lrfactor/cv.py): folds, the batch against single runs, the choice, cv.json, refusals.

One small noisy problem of true rank 2 (30 × 20, 5 % Gaussian noise, 80 %
observed, a fifth of the lines held out) serves every test; the grid is
rank {2, 5} × l2 {0, 1e-3} for gauss_newton (one compiled batch per rank,
l2 a value per element) and rank {2, 5} for hals through the command line.
"""

import json

import numpy as np
import pandas as pd
import pytest

import dataclasses

from lrfactor import cli, cv, experiment, results, tables
from lrfactor import config as C
from lrfactor.config import ConfigError, RunConfig, resolve, validate

K = 3
SEEDS = [0, 1]
STEPS = 30
# The reduced system factored in float64 too: with the default float32
# factorization (refined once) a batched and a single solve agree to ~1e-10
# absolute in the log-factors after 30 iterations, not to rounding.
EXACT = {"schur_precision": "full"}


def noisy_table(seed=0, n=30, m=20, rank=2, noise=0.05, observed=0.8):
    rng = np.random.default_rng(seed)
    W, H = np.exp(rng.normal(size=(n, rank))), np.exp(rng.normal(size=(m, rank)))
    V = W @ H.T
    V = np.abs(V + noise * V.std() * rng.normal(size=V.shape))
    seen = rng.random((n, m)) < observed
    val = seen & (rng.random((n, m)) < 0.2)
    return V, seen & ~val, val


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    V, train, val = noisy_table()
    d = tmp_path_factory.mktemp("cv")
    i, j = np.nonzero(train | val)
    pd.DataFrame({"row": i, "col": j, "value": V[i, j], "split": np.where(val[i, j], "val", "train")}).to_csv(
        d / "noisy.csv", index=False, float_format="%.17g")
    return {"table": tables.table_from_dense(V, train, val), "csv": str(d / "noisy.csv"), "dir": d}


@pytest.fixture(scope="module")
def grid_run(data):
    """rank {2, 5} × l2 {0, 1e-3} for gauss_newton, every fold and seed in two compiled batches."""
    cfg = resolve(RunConfig(solver="gauss_newton", data="noisy.csv", cv=K, rank=(2, 5), l2=(0.0, 1e-3),
                            reg=(0.0,), loss=("frobenius",), seeds=len(SEEDS), steps=STEPS, **EXACT))
    cvp = cv.prepare(cfg, table=data["table"])
    return cfg, cvp, cv.run_grid(cfg, cvp.prep.table, cvp.fold, cvp.settings, SEEDS)


# ---------------------------------------------------------------------------
# Folds


def test_folds_partition_the_training_entries_and_keep_every_row_and_column(data):
    t = data["table"]
    tr = ~t.is_val
    rows, cols = t.rows[tr], t.cols[tr]
    for seed in (0, 1, 2):
        fold = cv.assign_folds(rows, cols, t.shape, K, seed)
        assert fold.shape == rows.shape and set(np.unique(fold)) <= {cv.PINNED, *range(K)}
        sizes = [np.count_nonzero(fold == f) for f in range(K)]
        assert max(sizes) - min(sizes) <= t.shape[0]  # dealt round each row: at most one apart per row
        for f in range(K):
            fitted = fold != f
            assert np.all(np.bincount(rows[fitted], minlength=t.shape[0]) > 0)
            assert np.all(np.bincount(cols[fitted], minlength=t.shape[1]) > 0)
            # Each row holds ⌊c/K⌋ or ⌈c/K⌉ of its c entries in fold f, before pinning moves one out.
            c = np.bincount(rows, minlength=t.shape[0])
            in_f = np.bincount(rows[fold == f], minlength=t.shape[0])
            assert np.all(in_f <= -(-c // K))


def test_a_row_with_one_training_entry_is_pinned_and_never_held_out():
    # Row 0 has a single entry; column 3 has two, in a 3 x 4 matrix with K = 2.
    rows = np.array([0, 1, 1, 1, 1, 2, 2, 2, 2])
    cols = np.array([0, 0, 1, 2, 3, 0, 1, 2, 3])
    fold = cv.assign_folds(rows, cols, (3, 4), 2, seed=0)
    assert fold[0] == cv.PINNED
    for f in range(2):
        assert np.all(np.bincount(rows[fold != f], minlength=3) > 0)
        assert np.all(np.bincount(cols[fold != f], minlength=4) > 0)


def test_held_out_entries_never_reach_a_fold(grid_run, data):
    _, cvp, _ = grid_run
    V, train, val = data["table"].to_dense()
    seen_val = []
    for f in range(K):
        p = experiment.problem_from_table(cv.fold_table(cvp.prep.table, cvp.fold, f), "dense", np.float64)
        fit, score = np.asarray(p.train), np.asarray(p.val)
        assert not np.any((fit | score) & val)  # the run's held-out entries: neither fitted nor scored
        assert not np.any(fit & score)
        assert np.array_equal(fit | score, train)  # the fold's fit and score are the training entries
        seen_val.append(score)
    total = np.sum(seen_val, axis=0)
    assert total.max() == 1  # folds are disjoint
    assert np.count_nonzero(total) == np.count_nonzero(cvp.fold != cv.PINNED)


# ---------------------------------------------------------------------------
# The batch


def test_the_batch_equals_a_fold_and_setting_run_alone(grid_run):
    # Fold 1 at rank 2, l2 1e-3: l2 a value in a batch where it also is 0. A fold run is a plain run with the
    # fold settings (no restarts, a looser ftol, fewer steps; lrfactor.config.cv_fold_config).
    cfg, cvp, res = grid_run
    f, g = 1, 1
    setting = cvp.settings[g]
    assert setting == {"rank": 2, "l2": 1e-3, "reg": 0.0, "loss": "frobenius"}
    alone_cfg = validate(resolve(RunConfig(solver="gauss_newton", data="noisy.csv", seeds=len(SEEDS), steps=STEPS,
                                           restarts=0, ftol=C.CV_FOLD["gauss_newton"]["ftol"], **setting, **EXACT)))
    assert C.cv_fold_config(dataclasses.replace(cfg, **setting)) == dataclasses.replace(alone_cfg, data=cfg.data)
    prep = experiment.prepare(alone_cfg, seeds=SEEDS, table=cv.fold_table(cvp.prep.table, cvp.fold, f))
    alone = experiment.run_prepared(prep, None, progress=False)
    np.testing.assert_allclose(res.params[f][g].A, alone.params.A, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(res.params[f][g].B, alone.params.B, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(res.val_mse[f, g], alone.summary["final"]["val_mse"], rtol=1e-10)
    np.testing.assert_allclose(res.objective[f, g], alone.summary["final"]["objective"], rtol=1e-10)
    assert list(res.steps[f, g]) == list(alone.summary["final"]["steps"])


def test_fold_runs_loosen_only_what_ranking_does_not_need():
    """cv_fold_config: gauss_newton folds without restarts, with ftol at least and steps at most CV_FOLD's (the
    run's own where looser); everything else, other solvers, and a plain run untouched."""
    fold = C.CV_FOLD["gauss_newton"]
    gn = resolve(RunConfig(solver="gauss_newton", data="x.csv", cv=K))
    f = C.cv_fold_config(gn)
    assert (f.restarts, f.ftol, f.steps, f.cv) == (0, fold["ftol"], fold["steps"], 0)
    assert fold["ftol"] > gn.ftol and fold["steps"] < gn.steps and gn.restarts > 0  # looser than a plain run
    assert f.chunk <= f.steps
    assert dataclasses.replace(f, restarts=gn.restarts, ftol=gn.ftol, steps=gn.steps, chunk=gn.chunk,
                               cv=gn.cv) == gn  # nothing else changes
    loose = C.cv_fold_config(dataclasses.replace(gn, ftol=1e-2, steps=50))
    assert (loose.ftol, loose.steps) == (1e-2, 50)  # the run's own, when looser
    for solver in ("hals", "mu", "adam"):
        c = resolve(RunConfig(solver=solver, data="x.csv", cv=K))
        assert C.cv_fold_config(c) == dataclasses.replace(c, cv=0)  # not measured: their folds run as given


def test_one_batch_per_rank_with_l2_as_a_value(grid_run):
    _, cvp, res = grid_run
    assert [s["rank"] for s in cvp.settings] == [2, 2, 5, 5]
    assert [g["settings"] for g in res.groups] == [[0, 1], [2, 3]]
    assert [g["elements"] for g in res.groups] == [K * 2 * len(SEEDS)] * 2


def test_cv_prefers_the_true_rank_to_an_overfitting_one(grid_run):
    _, cvp, res = grid_run
    sc = cv.scores(res)
    mean = sc["mean_val_mse"]
    # rank 5 has about as many parameters as a fold fits entries: it fits the noise.
    for l2_index in (0, 1):
        assert mean[l2_index] < 0.5 * mean[2 + l2_index]
    assert cvp.settings[sc["choice"]]["rank"] == 2
    # The choice is the lowest mean of the fold scores, each the best-objective seed's.
    fold_val = sc["fold_val_mse"]
    best = np.argmin(res.objective, axis=2)
    assert fold_val[1, 2] == res.val_mse[1, 2, best[1, 2]]
    assert sc["choice"] == int(np.argmin(fold_val.mean(axis=0)))


# ---------------------------------------------------------------------------
# The command line: grid, refit, cv.json, figure


@pytest.fixture(scope="module")
def cli_run(data):
    out = data["dir"] / "hals-cv"
    argv = ["--solver", "hals", "--data", data["csv"], "--split-key", "split", "--cv", str(K), "--rank", "2,5",
            "--reg", "0", "--seeds", "2", "--steps", "60", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    return out


def test_cli_writes_cv_json_and_the_refit_of_the_choice(cli_run, data):
    rec = cv.load(str(cli_run))
    assert rec["k"] == K and rec["axes"] == {"rank": [2, 5], "l2": [0.0], "reg": [0.0], "loss": ["frobenius"]}
    assert len(rec["scores"]["val_mse"]) == K and len(rec["scores"]["val_mse"][0]) == 2
    mean = np.mean(np.asarray(rec["scores"]["val_mse"], float), axis=0)
    np.testing.assert_allclose(rec["scores"]["mean_val_mse"], mean, rtol=1e-12)
    choice = rec["choice"]["setting"]
    assert rec["choice"]["index"] == int(np.argmin(mean)) and choice["rank"] == 2
    run = results.load_run(str(cli_run))
    cfg = run["config"]["config"]
    assert cfg["rank"] == 2 and cfg["cv"] == 0  # config.json: the refit, a plain run
    # The folds ran with the looser ftol of cross-validation; the refit with the run's own.
    assert rec["fold_run"] == {"steps": 60, "ftol": RunConfig().ftol} and cfg["ftol"] == RunConfig().ftol  # hals
    assert np.asarray(rec["scores"]["seed_steps"]).shape == (K, 2, 2)
    assert run["summary"]["cv"]["choice"] == choice and run["summary"]["cv"]["file"] == "cv.json"
    # The refit fits all training entries: its train MSE is over them, its val MSE over the held-out ones.
    V, train, val = data["table"].to_dense()
    W, H = run["factors"]["W"], run["factors"]["H"]
    assert W.shape[-1] == 2
    for s in range(2):
        P = W[s] @ H[s].T
        np.testing.assert_allclose(run["summary"]["final"]["train_mse"][s], np.mean((P - V)[train] ** 2), rtol=1e-9)
        np.testing.assert_allclose(run["summary"]["final"]["val_mse"][s], np.mean((P - V)[val] ** 2), rtol=1e-9)


def test_cv_json_round_trip(cli_run):
    rec = cv.load(str(cli_run))
    again = json.loads(json.dumps(rec))
    assert again == rec
    path = cli_run / "copy.json"
    results.write_json(str(path), rec)
    assert results.read_json(str(path)) == rec
    # Every fold score is a (fold, setting)'s best-objective seed's.
    seed_val = np.asarray(rec["scores"]["seed_val_mse"], float)
    seed_obj = np.asarray(rec["scores"]["seed_objective"], float)
    best = np.argmin(seed_obj, axis=2)
    np.testing.assert_array_equal(np.take_along_axis(seed_val, best[..., None], 2)[..., 0],
                                  np.asarray(rec["scores"]["val_mse"], float))


def test_cv_figure_from_the_saved_folder(cli_run, tmp_path):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import plot

    assert plot.main([str(cli_run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "cv.png").stat().st_size > 0


def test_cv_figure_draws_each_loss_with_its_own_penalties(data):
    """The default grid's per-loss factor penalties: one line per (reg, loss) pair against the rank,
    through each pair's mean fold scores."""
    from lrfactor import plots

    t = data["table"]
    fold = cv.assign_folds(t.rows[~t.is_val], t.cols[~t.is_val], t.shape, K, 0)
    ax = cv.axes(resolve(RunConfig(solver="gauss_newton", data="x.csv", cv=K)), cv.summarise(t, fold, K))
    settings = cv.grid(ax)
    G = len(settings)
    fold_scores = 1.0 + np.arange(K * G, dtype=float).reshape(K, G) / G
    rec = results.plain({"k": K, "solver": "gauss_newton", "seeds": [0], "axes": ax, "settings": settings,
                         "scores": {"val_mse": fold_scores, "mean_val_mse": fold_scores.mean(0),
                                    "std_val_mse": fold_scores.std(0, ddof=1)},
                         "choice": {"index": 0, "setting": settings[0]}})
    fig = plots.cv_figure(json.loads(json.dumps(rec)))
    mean = fold_scores.mean(0)
    expected = {}
    for g, s in enumerate(settings):
        expected.setdefault((s["reg"], s["loss"]), []).append((float(s["rank"]), round(float(mean[g]), 9)))
    assert len(expected) == 3 * len(ax["loss"])
    drawn = set()
    for bar in fig.axes[0].containers:
        x, y = bar.lines[0].get_data()
        drawn.add(tuple((float(a), round(float(b), 9)) for a, b in zip(x, y)))
    assert drawn == {tuple(v) for v in expected.values()}


# ---------------------------------------------------------------------------
# Refusals and defaults


@pytest.mark.parametrize("argv, message", [
    (["--rank", "2,4"], "--rank 2,4: a list of values needs --cv K"),
    (["--data", "x.csv", "--l2", "0,1e-3"], "--l2 0.0,0.001: a list of values needs --cv K"),
    (["--data", "x.csv", "--loss", "frobenius,kl", "--solver", "mu"], "a list of values needs --cv K"),
    (["--cv", "3", "--rank", "2,4"], "cross-validation needs --data"),
    (["--cv", "1", "--data", "x.csv"], "--cv must be >= 2"),
    (["--cv", "3", "--data", "x.csv", "--rank", "2,2"], "listed twice"),
    (["--cv", "3", "--data", "x.csv", "--rank", "2,0"], "--rank must be >= 1"),
    (["--cv", "3", "--data", "x.csv", "--loss", "frobenius,kl", "--solver", "hals"], "--loss kl has no effect"),
    (["--cv", "3", "--data", "x.csv", "--solver", "mlp"], "--cv 3 has no effect"),
    (["--cv-seed", "2", "--data", "x.csv"], "cross-validation is off"),
])
def test_lists_and_cv_refused_where_they_mean_nothing(argv, message, tmp_path, capsys):
    assert cli.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_fit_takes_lists_with_cv_only():
    import lrfactor

    V, train, val = noisy_table(n=8, m=6)
    with pytest.raises(ConfigError, match="needs --cv"):
        lrfactor.fit(V, train, val, rank=[2, 3])
    with pytest.raises(ConfigError, match="listed twice"):
        lrfactor.fit(V, train, val, rank=[2, 2], cv=2)


def test_fit_cross_validates_and_returns_the_refit(data):
    import lrfactor

    V, train, val = data["table"].to_dense()
    fit = lrfactor.fit(V, train, val, solver="hals", cv=2, rank=[5, 2], seeds=1, steps=40)
    choice = fit.cv["choice"]["setting"]
    assert fit.cv["axes"]["rank"] == [5, 2]  # the grid in the order given
    assert fit.cv["choice"]["index"] == int(np.argmin(np.mean(fit.cv["scores"]["val_mse"], axis=0)))
    r = choice["rank"]
    assert fit.config.rank == r and fit.config.cv == 0 and fit.W.shape == (1, 30, r)
    assert fit.summary["cv"]["choice"] == choice
    P = fit.W[0] @ fit.H[0].T
    np.testing.assert_allclose(fit.summary["final"]["val_mse"][0], np.mean((P - V)[val] ** 2), rtol=1e-9)


def test_default_grid_follows_the_data_and_the_solver(data):
    t = data["table"]
    fold = cv.assign_folds(t.rows[~t.is_val], t.cols[~t.is_val], t.shape, K, 0)
    d = cv.summarise(t, fold, K)
    ax = cv.axes(resolve(RunConfig(solver="gauss_newton", data="x.csv", cv=K)), d)
    # 30 x 20: rank 5 would have 250 parameters for the fewer a fold fits.
    assert ax["rank"] == tuple(r for r in C.CV_RANKS if r * 50 <= d.n_fit) == (2, 3, 4)
    v = t.vals[~t.is_val]
    # κ / ((n + m)·mean V), κ = mean V² (frobenius), mean V / 2 (kl), 1 (log)
    kappa = {"frobenius": float(np.mean(v**2)), "kl": float(np.mean(v)) / 2, "log": 1.0}
    assert ax["l2"] == (0.0,)  # the question's penalty only when given
    # the losses gauss_newton minimises that these values allow (the log loss needs V > 0)
    assert ax["loss"] == (("frobenius", "kl", "log") if v.min() > 0 else ("frobenius", "kl"))
    assert set(ax["reg"]) == set(ax["loss"])
    for loss in ax["loss"]:
        s = kappa[loss] / (50 * float(np.mean(v)))
        np.testing.assert_allclose(ax["reg"][loss], (0.0, 1e-3 * s, 1e-2 * s), rtol=1e-12)
    hals = cv.axes(resolve(RunConfig(solver="hals", data="x.csv", cv=K, rank=(3,))), d)
    # hals: no loss choice, frobenius's penalties
    assert hals == {"rank": (3,), "l2": (0.0,), "reg": {"frobenius": ax["reg"]["frobenius"]}, "loss": ("frobenius",)}
    settings = cv.grid(ax)
    assert len(settings) == len(ax["rank"]) * 1 * 3 * len(ax["loss"])
    # each setting's penalty is one of its own loss's, in the order rank, l2, reg, loss (loss fastest)
    assert [s["loss"] for s in settings[: len(ax["loss"])]] == list(ax["loss"])
    for i, s in enumerate(settings):
        assert s["reg"] == ax["reg"][s["loss"]][(i // len(ax["loss"])) % 3]
    # a given --reg list is the same values for every loss
    given = cv.axes(resolve(RunConfig(solver="gauss_newton", data="x.csv", cv=K, reg=(0.0, 0.5))), d)
    assert given["reg"] == (0.0, 0.5)
    assert {(s["loss"], s["reg"]) for s in cv.grid(given)} == {(l, r) for l in ax["loss"] for r in (0.0, 0.5)}


@pytest.mark.parametrize("loss", ["frobenius", "kl", "log"])
def test_loss_curvature_is_half_the_second_derivative_in_the_log_prediction(loss):
    """κ of lrfactor.config.loss_curvature: the mean of ½·∂²ℓ/∂(log P)² at P = V, by automatic
    differentiation of the loss itself on random positive values."""
    import jax
    import jax.numpy as jnp

    from lrfactor import losses

    V = jnp.asarray(np.random.default_rng(0).gamma(2.0, 3.0, size=200))
    d2 = jax.vmap(jax.grad(jax.grad(lambda u, v: losses.entry_loss(jnp.exp(u), v, loss))))(jnp.log(V), V)
    np.testing.assert_allclose(C.loss_curvature(loss, float(jnp.mean(V**2)), float(jnp.mean(V))),
                               float(jnp.mean(d2)) / 2, rtol=1e-10)


def test_default_penalty_shrinks_a_fit_by_the_same_fraction_for_every_loss():
    """The derivation of lrfactor.config.reg_scale, on the one problem with a closed form: a constant
    n × n matrix c, fitted at rank 1 by the objective itself (Newton in float64 on the two log-factor
    levels). With reg = ρ·reg_scale the prediction is c·(1 − ρ/2) (frobenius), c/(1 + ρ/2) (kl) and
    c·x with log x = −ρx/2 (log): the same shrinkage ρ/2 to first order. With frobenius's scale for
    every loss kl and log would shrink far more."""
    import jax
    import jax.numpy as jnp

    from lrfactor import losses
    from lrfactor.factors import Factors
    from lrfactor.problems import Problem

    n, c = 12, 7.0
    V = np.full((n, n), c)
    train = np.ones((n, n), bool)
    val = np.zeros((n, n), bool)
    val[0, 0], train[0, 0] = True, False  # one held-out entry; the 143 fitted ones are all c
    t = tables.table_from_dense(V, train, val)
    cvp = cv.prepare(resolve(RunConfig(solver="gauss_newton", data="x.csv", cv=K)), table=t)
    assert cvp.axes["loss"] == ("frobenius", "kl", "log")
    problem = Problem(jnp.asarray(V), jnp.asarray(train), jnp.asarray(val))

    def fitted(loss, reg):
        f = lambda z: losses.objective(Factors(jnp.full((n, 1), z[0]), jnp.full((n, 1), z[1])), problem, loss,
                                       0.0, reg)
        z = jnp.full(2, np.log(c) / 2)
        for _ in range(50):
            z = z - jnp.linalg.solve(jax.hessian(f)(z) + 1e-14 * jnp.eye(2), jax.grad(f)(z))
        assert float(jnp.max(jnp.abs(jax.grad(f)(z)))) < 1e-12
        return float(jnp.exp(z[0] + z[1])) / c  # the prediction's fraction of c

    rho = C.REG_STRENGTHS[-1]
    shrink = {}
    for loss in ("frobenius", "kl", "log"):
        reg = cvp.axes["reg"][loss][-1]
        assert reg == pytest.approx(rho * C.reg_scale(loss, cv.summarise(t, cvp.fold, K)), rel=1e-12)
        shrink[loss] = 1 - fitted(loss, reg)
    x_log = 1.0
    for _ in range(50):  # log x = −ρx/2 by Newton
        x_log -= (np.log(x_log) + rho * x_log / 2) / (1 / x_log + rho / 2)
    np.testing.assert_allclose([shrink["frobenius"], shrink["kl"], shrink["log"]],
                               [rho / 2, 1 - 1 / (1 + rho / 2), 1 - x_log], rtol=1e-8)
    np.testing.assert_allclose(list(shrink.values()), rho / 2, rtol=rho)  # the same to first order in ρ
    # frobenius's penalty applied to the other losses: several times the shrinkage
    for loss in ("kl", "log"):
        assert 1 - fitted(loss, cvp.axes["reg"]["frobenius"][-1]) > 5 * rho / 2


def test_default_grid_offers_no_loss_the_values_refuse():
    """Additive noise makes some values negative: frobenius only for gauss_newton (no kl, no log), and mu,
    whose updates need V >= 0, is refused before any fold runs; the rule is the runs' own
    (lrfactor.losses.value_requirement)."""
    V, train, val = noisy_table(seed=4)
    V = V - 0.5 * V.min() - 0.2 * np.median(V)  # a shift that leaves a few entries below zero
    seen = train | val
    assert (V[seen] < 0).any() and (V[seen] > 0).any()
    t = tables.table_from_dense(V, train, val)
    cvp = cv.prepare(resolve(RunConfig(solver="gauss_newton", data="x.csv", cv=K)), table=t)
    assert cvp.axes["loss"] == ("frobenius",)
    assert {s["loss"] for s in cvp.settings} == {"frobenius"}
    # a negative value among the held-out entries only is enough: the refit checks every observed value
    Vh = np.abs(V)
    i, j = np.argwhere(val)[0]
    Vh[i, j] = -1.0
    cvh = cv.prepare(resolve(RunConfig(solver="gauss_newton", data="x.csv", cv=K)), table=tables.table_from_dense(Vh, train, val))
    assert cvh.axes["loss"] == ("frobenius",)
    cvpos = cv.prepare(resolve(RunConfig(solver="gauss_newton", data="x.csv", cv=K)),
                       table=tables.table_from_dense(np.abs(V) + 1e-3, train, val))
    assert cvpos.axes["loss"] == ("frobenius", "kl", "log")
    with pytest.raises(tables.ProblemError, match="the mu solver needs V >= 0"):
        cv.prepare(resolve(RunConfig(solver="mu", data="x.csv", cv=K)), table=t)
    with pytest.raises(tables.ProblemError, match="the log loss needs V > 0"):
        cv.prepare(resolve(RunConfig(solver="gauss_newton", data="x.csv", cv=K, loss=("frobenius", "log"))), table=t)


def test_surprise_baseline_scores_the_runs_own_held_out_entries(cli_run, data, tmp_path):
    pytest.importorskip("surprise")
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import surprise_baseline

    table, _, cfg = surprise_baseline.run_split(str(cli_run))
    t = data["table"]
    key = lambda tb, sel: set(zip(tb.rows[sel].tolist(), tb.cols[sel].tolist()))
    assert key(table, table.is_val) == key(t, t.is_val) and key(table, ~table.is_val) == key(t, ~t.is_val)
    assert cfg.rank == 2  # the refit's rank: the baselines get the rank cross-validation chose
    assert surprise_baseline.main([str(cli_run), "--out", str(tmp_path / "s.json")]) == 0
    rec = results.read_json(str(tmp_path / "s.json"))
    assert rec["n_val"] == int(t.is_val.sum()) and set(rec["surprise"]) == {"svd", "nmf"}
    for name, key in (("svd", "reg_all"), ("nmf", "reg_pu")):
        r = rec["surprise"][name]
        reg = r["cv_choice"][key]
        assert min(r["cv_rmse"], key=r["cv_rmse"].get) == str(reg)  # chosen on the training entries' folds
        assert r["cv_choice"]["val_mse"] == r["grid"][str(reg)]["val_mse"]
    # --factors: another number of factors than the run's rank (surprise's own default, say)
    assert surprise_baseline.main([str(cli_run), "--factors", "5", "--out", str(tmp_path / "s5.json")]) == 0
    rec5 = results.read_json(str(tmp_path / "s5.json"))
    assert rec5["n_factors"] == 5 and rec["n_factors"] == 2 and rec5["rank"] == 2
    assert rec5["surprise"]["svd"]["default"]["train_mse"] != rec["surprise"]["svd"]["default"]["train_mse"]
    assert surprise_baseline.main([str(cli_run), "--factors", "0"]) == 2

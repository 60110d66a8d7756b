"""The Python API and the table path end to end: the same settings give the command line's numbers.

A small instance of the question's recipe is written as a dense .npz and as a
long-format CSV (string ids, an explicit split column); runs from either file,
and from arrays through ``lrfactor.fit``, must agree to 1e-10 (float64).
"""

import numpy as np
import pandas as pd
import pytest

import lrfactor
from lrfactor import cli, results
from lrfactor.config import ConfigError
from lrfactor.problems import ProblemError

SMALL = ["--n", "40", "--m", "24", "--true-rank", "4", "--rank", "3", "--seeds", "2", "--steps", "12"]


def _run(argv, out):
    assert cli.main(argv + ["--out", str(out), "--quiet"]) == 0
    return results.load_run(str(out))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The question's recipe at 40 × 24 (one draw) as a dense .npz and as a CSV with string ids."""
    import jax

    from lrfactor.problems import SyntheticConfig, make_synthetic

    d = tmp_path_factory.mktemp("data")
    with jax.enable_x64(True):
        problem, truth = make_synthetic(jax.random.PRNGKey(3), SyntheticConfig(n=40, m=24, true_rank=4, observed=0.6))
    V, train = np.asarray(problem.V), np.asarray(problem.train)
    val = ~train
    val[::7] = False  # some entries in neither split: predicted by --predict missing
    np.savez(d / "dense.npz", V=V, train_mask=train, val_mask=val, W_true=np.asarray(truth.W), H_true=np.asarray(truth.H))
    i, j = np.nonzero(train | val)
    df = pd.DataFrame({"store": [f"s{k:02d}" for k in j], "product": [f"p{k:02d}" for k in i], "sales": V[i, j],
                       "split": np.where(val[i, j], "val", "train")})
    df.sample(frac=1.0, random_state=0).to_csv(d / "sales.csv", index=False, float_format="%.17g")
    pd.DataFrame({"product": ["p03", "p39"], "store": ["s00", "s23"]}).to_csv(d / "pairs.csv", index=False)
    return {"npz": str(d / "dense.npz"), "csv": str(d / "sales.csv"), "pairs": str(d / "pairs.csv"),
            "V": V, "train": train, "val": val}


CSV_KEYS = ["--row-key", "product", "--col-key", "store", "--value-key", "sales", "--split-key", "split"]


@pytest.mark.parametrize("solver", ["gauss_newton", "hals"])
def test_table_and_dense_file_give_the_same_run(files, tmp_path, solver):
    argv = ["--solver", solver, "--rank", "3", "--seeds", "2", "--steps", "12"]
    a = _run(argv + ["--data", files["npz"]], tmp_path / "npz")
    b = _run(argv + ["--data", files["csv"]] + CSV_KEYS, tmp_path / "csv")
    # Sorted string ids p00..p39 / s00..s23 are the dense file's row and column order.
    np.testing.assert_allclose(b["factors"]["W"], a["factors"]["W"], rtol=1e-10, atol=0)
    np.testing.assert_allclose(b["factors"]["H"], a["factors"]["H"], rtol=1e-10, atol=0)
    for k in ("train_mse", "val_mse"):
        np.testing.assert_allclose(b["summary"]["final"][k], a["summary"]["final"][k], rtol=1e-10)
    assert list(b["factors"]["row_ids"][:2]) == ["p00", "p01"] and list(b["factors"]["col_ids"][:1]) == ["s00"]


def test_coordinate_layout_of_a_table_gives_the_dense_run(files, tmp_path):
    argv = ["--data", files["csv"], *CSV_KEYS, "--rank", "3", "--seeds", "1", "--steps", "8",
            "--linear-solver", "schur_pcg", "--cg-tol", "1e-12", "--cg-iters", "400"]
    a = _run(argv + ["--layout", "dense"], tmp_path / "dense")
    b = _run(argv + ["--layout", "coo"], tmp_path / "coo")
    np.testing.assert_allclose(b["history"]["train_mse"], a["history"]["train_mse"], rtol=1e-9)
    np.testing.assert_allclose(b["factors"]["W"], a["factors"]["W"], rtol=1e-8)


def test_predictions_are_the_best_seeds_factors_at_the_pairs(files, tmp_path):
    run = _run(["--data", files["csv"], *CSV_KEYS, "--rank", "3", "--seeds", "2", "--steps", "6",
                "--predict", files["pairs"]], tmp_path / "pred")
    obj = np.asarray(run["summary"]["final"]["objective"])
    k = int(np.argmin(obj))
    W, H = run["factors"]["W"][k], run["factors"]["H"][k]
    pred = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert list(pred.columns) == ["product", "store", "prediction"]
    assert list(pred["product"]) == ["p03", "p39"] and list(pred["store"]) == ["s00", "s23"]
    np.testing.assert_allclose(pred["prediction"], [W[3] @ H[0], W[39] @ H[23]], rtol=1e-12)
    assert run["summary"]["predictions"] == {"file": "predictions.csv", "pairs": 2, "seed": run["summary"]["seeds"][k]}


def test_predict_missing_covers_every_unobserved_pair(files, tmp_path):
    run = _run(["--data", files["csv"], *CSV_KEYS, "--rank", "3", "--seeds", "1", "--steps", "3",
                "--predict", "missing"], tmp_path / "miss")
    pred = pd.read_csv(tmp_path / "miss" / "predictions.csv")
    neither = ~(files["train"] | files["val"])
    assert len(pred) == neither.sum() == run["summary"]["predictions"]["pairs"]
    i = pred["product"].str[1:].astype(int).to_numpy()
    j = pred["store"].str[1:].astype(int).to_numpy()
    assert neither[i, j].all()


def test_unknown_id_in_pairs_is_refused_before_anything_is_written(files, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"product": ["p03", "nope"], "store": ["s00", "s01"]}).to_csv(bad, index=False)
    out = tmp_path / "never"
    assert cli.main(["--data", files["csv"], *CSV_KEYS, "--predict", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert not out.exists()


def test_fit_equals_the_command_line_on_the_synthetic_problem(tmp_path):
    cli_run = _run(SMALL, tmp_path / "cli")
    fit = lrfactor.fit(n=40, m=24, true_rank=4, rank=3, seeds=2, steps=12)
    np.testing.assert_allclose(fit.W, cli_run["factors"]["W"], rtol=1e-10, atol=0)
    np.testing.assert_allclose(fit.H, cli_run["factors"]["H"], rtol=1e-10, atol=0)
    for k in ("train_mse", "val_mse", "objective", "steps"):
        np.testing.assert_allclose(fit.summary["final"][k], cli_run["summary"]["final"][k], rtol=1e-10)
    assert fit.summary["reference"]["oracle_train_mse"] == pytest.approx(
        cli_run["summary"]["reference"]["oracle_train_mse"], rel=1e-10)
    np.testing.assert_allclose(fit.history["train_mse"], cli_run["history"]["train_mse"], rtol=1e-10)


def test_fit_of_arrays_equals_the_command_line_on_the_same_file(files, tmp_path):
    cli_run = _run(["--data", files["npz"], "--rank", "3", "--seeds", "2", "--steps", "10"], tmp_path / "cli")
    fit = lrfactor.fit(files["V"], files["train"], files["val"], rank=3, seeds=2, steps=10)
    np.testing.assert_allclose(fit.W, cli_run["factors"]["W"], rtol=1e-10, atol=0)
    np.testing.assert_allclose(fit.summary["final"]["val_mse"], cli_run["summary"]["final"]["val_mse"], rtol=1e-10)
    rows, cols = np.array([0, 5, 39]), np.array([1, 0, 23])
    k = fit.best
    np.testing.assert_allclose(fit.predict(rows, cols), np.sum(fit.W[k, rows] * fit.H[k, cols], axis=1), rtol=1e-12)
    np.testing.assert_allclose(fit.predict(rows, cols, seed=1 - k),
                               np.sum(fit.W[1 - k, rows] * fit.H[1 - k, cols], axis=1), rtol=1e-12)


def test_fit_writes_the_command_lines_files_only_when_asked(files, tmp_path):
    fit = lrfactor.fit(data=files["csv"], row_key="product", col_key="store", value_key="sales", split_key="split",
                       rank=2, seeds=1, steps=3, solver="hals", out=str(tmp_path / "run"))
    saved = results.load_run(str(tmp_path / "run"))
    np.testing.assert_array_equal(saved["factors"]["W"], fit.W)
    assert list(fit.row_ids[:2]) == ["p00", "p01"]
    assert saved["config"]["config"]["data"] == files["csv"]


@pytest.mark.parametrize("call, error, match", [
    (lambda f: lrfactor.fit(f["V"], f["train"], rank=3, lambda0=0.0), ConfigError, "--lambda0 must be > 0"),
    (lambda f: lrfactor.fit(f["V"], f["train"], ranks=3), ConfigError, "unknown settings ranks"),
    (lambda f: lrfactor.fit(f["V"], f["train"], rank=30), ProblemError, "rank 30 must be between 1 and"),
    (lambda f: lrfactor.fit(f["V"], None), ConfigError, "both V and train_mask"),
    (lambda f: lrfactor.fit(f["V"], f["train"], data=f["npz"]), ConfigError, "give the data once"),
    (lambda f: lrfactor.fit(f["V"], f["train"], solver="mlp", loss="kl"), ConfigError, "has no effect here"),
    (lambda f: lrfactor.fit(f["V"], f["train"], n=10), ConfigError, "--data replaces that problem"),
    (lambda f: lrfactor.fit(np.where(f["train"], np.nan, f["V"]), f["train"]), ProblemError, "NaN or inf"),
])
def test_fit_refuses_what_the_command_line_refuses(files, call, error, match):
    with pytest.raises(error, match=match):
        call(files)



def test_summary_carries_each_seeds_final_solver_records(tmp_path):
    """λ, max|gradient|, gain ratio and restarts at the end of each seed, as the history's last column."""
    run = _run(SMALL + ["--restarts", "1"], tmp_path / "gn")
    final, hist = run["summary"]["final"], run["history"]
    for name in ("lam", "grad_inf", "rho", "restart", "accepted", "cg_iters"):
        np.testing.assert_array_equal(np.asarray(final[name], dtype=hist[name].dtype), hist[name][:, -1], err_msg=name)
    assert "train_mse" in final and "wall_s" not in final

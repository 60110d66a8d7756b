import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from lrfactor import cli, experiment
from lrfactor.config import RunConfig
from lrfactor.results import read_npz

SMALL = ["--n", "40", "--m", "12", "--true-rank", "4", "--rank", "3", "--quiet"]


@pytest.fixture(autouse=True)
def keep_x64():
    yield
    jax.config.update("jax_enable_x64", True)


def _npz(tmp_path, **arrays):
    path = tmp_path / f"d{len(list(tmp_path.glob('d*.npz')))}.npz"
    np.savez(path, **arrays)
    return str(path)


def _bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    V = rng.random((8, 6))
    tr = rng.random((8, 6)) < 0.6
    tr[:, 0] = tr[0, :] = True
    nan_V = V.copy()
    nan_V[0, 0] = np.nan
    empty_row = tr.copy()
    empty_row[3] = False
    empty_col = tr.copy()
    empty_col[:, 2] = False
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    return {
        "unreadable file": (["--data", str(garbage)], "not a readable"),
        "missing file": (["--data", str(tmp_path / "nope.npz")], "no such file"),
        "wrong shapes": (["--data", _npz(tmp_path, V=V, train_mask=tr[:5])], "shape"),
        "nan observed": (["--data", _npz(tmp_path, V=nan_V, train_mask=tr)], "NaN or inf"),
        "empty row": (["--data", _npz(tmp_path, V=V, train_mask=empty_row)], "empty rows"),
        "empty column": (["--data", _npz(tmp_path, V=V, train_mask=empty_col)], "empty columns"),
        "rank too large": (["--data", _npz(tmp_path, V=V, train_mask=tr), "--rank", "7"], "rank 7"),
        "unknown solver": (["--solver", "newton"], "unknown solver 'newton'; known solvers:"),
        "unknown loss": (["--loss", "hinge"], "unknown loss"),
        "missing key": (["--data", _npz(tmp_path, V=V)], "missing key 'train_mask'"),
        "hals with kl": (["--solver", "hals", "--loss", "kl"], "kl"),
        "too many restarts": (["--restarts", "9"], "--restarts must be between 0 and 4, got 9"),
        "negative restarts": (["--restarts", "-1"], "--restarts must be between 0 and 4, got -1"),
    }


@pytest.mark.parametrize("case", ["unreadable file", "missing file", "wrong shapes", "nan observed", "empty row",
                                  "empty column", "rank too large", "unknown solver", "unknown loss", "missing key",
                                  "hals with kl", "too many restarts", "negative restarts"])
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys):
    args, msg = _bad_inputs(tmp_path)[case]
    code = cli.main(args + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and msg in err, err
    assert not os.path.exists(tmp_path / "out" / "history.npz")


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert cli.main(["--out", str(out)] + SMALL) == 2
    assert "exists" in capsys.readouterr().err


def test_run_writes_contract_files(tmp_path):
    out = str(tmp_path / "run")
    assert cli.main(["--solver", "gauss_newton", "--seeds", "2", "--steps", "5", "--out", out] + SMALL) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["config"]["solver"] == "gauss_newton" and cfg["precision"] == 64
    assert cfg["devices"]["count"] >= 1 and "jax" in cfg["versions"]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["seeds"] == [0, 1] and len(summary["final"]["val_mse"]) == 2
    assert len(summary["reference"]["truth_val_mse"]) == 2 and "oracle_train_mse" in summary["reference"]
    f = read_npz(os.path.join(out, "factors.npz"))
    assert f["W"].shape == (2, 40, 3) and f["H"].shape == (2, 12, 3) and (f["W"] > 0).all()
    h = read_npz(os.path.join(out, "history.npz"))
    for k in ("step", "train_mse", "val_mse", "wall_s"):
        assert k in h
    # the saved MSE is the pure masked MSE of the saved factors
    prep = experiment.prepare(experiment.load_config(out))
    P = np.einsum("snr,smr->snm", f["W"], f["H"])
    V, tr = np.asarray(prep.problem.V), np.asarray(prep.problem.train)
    mse = ((P - V) ** 2 * tr).sum((1, 2)) / tr.sum((1, 2))
    np.testing.assert_allclose(mse, summary["final"]["train_mse"], rtol=1e-10)
    assert not os.path.exists(os.path.join(out, "checkpoint.npz"))


def test_exact_fit_reference_is_reported_not_divided_by(tmp_path, capsys):
    # rank ≥ true rank without noise: the truncated truth fits exactly, its MSE is 0
    out = str(tmp_path / "run")
    argv = ["--solver", "gauss_newton", "--seeds", "1", "--steps", "3", "--out", out,
            "--n", "30", "--m", "10", "--true-rank", "2", "--rank", "3", "--quiet"]
    assert cli.main(argv) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["reference"]["truth_val_mse"] == [0.0]
    assert summary["relative"]["truth_val"] == [None]  # NaN, written as null
    assert "val/theoretical —" in capsys.readouterr().out


def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    args = ["--solver", "gauss_newton", "--seeds", "2", "--steps", "12", "--chunk", "4"] + SMALL
    full = str(tmp_path / "full")
    assert cli.main(args + ["--out", full]) == 0

    part = str(tmp_path / "part")
    real = experiment._checkpoint
    calls = []

    def dying(*a, **k):
        real(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the second chunk was saved

    monkeypatch.setattr(experiment, "_checkpoint", dying)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args + ["--out", part])
    monkeypatch.setattr(experiment, "_checkpoint", real)
    assert json.load(open(os.path.join(part, "summary.json")))["complete"] is False
    assert cli.main(["--resume", part, "--quiet"]) == 0
    a, b = read_npz(os.path.join(full, "history.npz")), read_npz(os.path.join(part, "history.npz"))
    for k in ("train_mse", "val_mse", "objective"):
        np.testing.assert_array_equal(a[k], b[k])
    fa, fb = read_npz(os.path.join(full, "factors.npz")), read_npz(os.path.join(part, "factors.npz"))
    np.testing.assert_array_equal(fa["W"], fb["W"])
    assert json.load(open(os.path.join(part, "summary.json")))["complete"] is True


def test_every_flag_has_help_from_config_comments():
    helps = cli.field_help()
    assert set(helps) == {f.name for f in dataclasses.fields(RunConfig)}
    text = cli.parser().format_help()
    assert "model rank r" in text and "--precision 32|64" in text

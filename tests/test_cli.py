import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from lrfactor import cli, experiment
from lrfactor.config import RunConfig
from lrfactor.results import read_npz
from tests.helpers import interrupted_after_checkpoints

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
    neg_V = V.copy()
    neg_V[0, 0] = -0.5
    empty_row = tr.copy()
    empty_row[3] = False
    empty_col = tr.copy()
    empty_col[:, 2] = False
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    dirnpz = tmp_path / "dir.npz"
    dirnpz.mkdir()
    weighted = {}  # small tables with a weight column w, the weight of line 4 (row b, column 1) varied
    for name, w4 in (("neg", "-1"), ("nan", "NaN"), ("text", "heavy"), ("inf", "inf"), ("zero", "0")):
        w5 = "0" if name == "zero" else "1"  # zero: both of row b's weights 0
        weighted[name] = tmp_path / f"w_{name}.csv"
        weighted[name].write_text(f"p,s,v,w\na,1,1,1\na,2,2,1\nb,1,3,{w4}\nb,2,4,{w5}\n")
    W_ARGS = ["--val-fraction", "0", "--rank", "1", "--weight-key", "w"]
    old = tmp_path / "old_run"  # saved before backtracking, restarts and refinement existed
    old.mkdir()
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "results", "gn-100-1000", "config.json"), old)
    np.savez(old / "checkpoint.npz", x=np.zeros(1))
    return {
        "lambda0 zero": (["--solver", "gauss_newton", "--lambda0", "0"], "--lambda0 must be > 0, got 0.0"),
        "batch size zero": (["--solver", "adam", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        "one Lanczos step": (["--hessian-every", "1", "--lanczos-steps", "1"], "--lanczos-steps must be >= 2"),
        "negative seed": (["--seed", "-3"], "--seed must be in [0, 2**32), got -3"),
        "mlp with kl": (["--solver", "mlp", "--loss", "kl"], "--loss kl has no effect here: the mlp solver"),
        "hals with lambda0": (["--solver", "hals", "--lambda0", "1"], "--lambda0 1.0 has no effect here"),
        "withdrawn method": (["--method", "joint_epi"], "unrecognized arguments: --method"),
        "unreadable file": (["--data", str(garbage)], "not a readable"),
        "directory as data": (["--data", str(dirnpz)], "is a directory, not a data file"),
        "unknown data type": (["--data", str(a_file)], "unknown file type; expected .npz, .csv, .parquet"),
        "missing file": (["--data", str(tmp_path / "nope.npz")], "no such file"),
        "wrong shapes": (["--data", _npz(tmp_path, V=V, train_mask=tr[:5])], "shape"),
        "nan observed": (["--data", _npz(tmp_path, V=nan_V, train_mask=tr)], "NaN or inf"),
        "negative with kl": (["--data", _npz(tmp_path, V=neg_V, train_mask=tr), "--loss", "kl", "--rank", "2"],
                             "the kl loss needs V >= 0"),
        "empty row": (["--data", _npz(tmp_path, V=V, train_mask=empty_row)], "empty rows"),
        "empty column": (["--data", _npz(tmp_path, V=V, train_mask=empty_col)], "empty columns"),
        "rank too large": (["--data", _npz(tmp_path, V=V, train_mask=tr), "--rank", "7"], "rank 7"),
        "rank above synthetic": (["--n", "6", "--m", "4", "--rank", "5"], "--rank 5 must be between 1 and min"),
        "non-bool mask": (["--data", _npz(tmp_path, V=V, train_mask=tr.astype(int))], "must be boolean"),
        "unknown solver": (["--solver", "newton"], "unknown solver 'newton'; known solvers:"),
        "unknown loss": (["--loss", "hinge"], "unknown loss"),
        "missing key": (["--data", _npz(tmp_path, V=V)], "missing key 'train_mask'"),
        "hals with kl": (["--solver", "hals", "--loss", "kl"], "kl"),
        "too many restarts": (["--restarts", "9"], "--restarts must be between 0 and 8, got 9"),
        "negative restarts": (["--restarts", "-1"], "--restarts must be between 0 and 8, got -1"),
        "not a number": (["--rank", "eight"], "argument --rank: invalid int value: 'eight'"),
        "out is a file": (["--out", str(a_file)], "exists and is a file"),
        "out under a file": (["--out", str(a_file / "run")], "is a file, so the folder cannot be created"),
        "resume with flags": (["--resume", str(old), "--steps", "5"], "remove --steps (only --quiet and the process"),
        "resume old record": (["--resume", str(old)], "saved before refine, backtrack, restarts existed"),
        "entries on dense": (["--shard", "entries", "--layout", "dense"], "--shard entries shards the entries"),
        "entries for mlp": (["--solver", "mlp", "--shard", "entries"], "the mlp solver needs dense masks"),
        "unknown shard": (["--shard", "rows"], "unknown shard 'rows'; known values: auto, seeds, entries"),
        "process flags alone": (["--coordinator", "127.0.0.1:9999"], "go together (give all three)"),
        "process id too large": (["--coordinator", "127.0.0.1:9999", "--num-processes", "2", "--process-id", "2"],
                                 "--process-id must be in [0, 2), got 2"),
        "bad coordinator": (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
                            "--coordinator must be HOST:PORT"),
        "negative weight": (["--data", str(weighted["neg"])] + W_ARGS,
                            "weight -1.0 in 'w' at line 4 (1 in all); weights must be finite and >= 0"),
        "NaN weight": (["--data", str(weighted["nan"])] + W_ARGS, "missing weight (empty or NaN) in 'w' at line 4"),
        "text weight": (["--data", str(weighted["text"])] + W_ARGS,
                        "non-numeric value 'heavy' in column 'w' at line 4"),
        "infinite weight": (["--data", str(weighted["inf"])] + W_ARGS, "weight inf in 'w' at line 4"),
        "no weight column": (["--data", str(weighted["neg"]), "--weight-key", "conf"],
                             "no column 'conf' (weight key); columns found: p, s, v, w"),
        "zero weights on a row": (["--data", str(weighted["zero"])] + W_ARGS,
                                  "row 'b' has no training entry of positive weight"),
        "weight key on npz": (["--data", _npz(tmp_path, V=V, train_mask=tr), "--weight-key", "w"],
                              "--weight-key w has no effect here: it applies to long-format tables only"),
        "negative coo weight": (["--data", _npz(tmp_path, rows=[0, 1], cols=[0, 1], vals=[1.0, 2.0], shape=[2, 2],
                                                weights=[1.0, -2.0]), "--rank", "1"],
                                "weight -2.0 in 'weights' at entry 1"),
        "dense weight shape": (["--data", _npz(tmp_path, V=V, train_mask=tr, train_weight=np.ones((8, 5)))],
                               "train_weight shape (8, 5) differs from V shape (8, 6)"),
    }


BAD = [
        "lambda0 zero", "batch size zero", "one Lanczos step", "negative seed", "mlp with kl", "hals with lambda0",
        "withdrawn method", "unreadable file", "directory as data", "unknown data type", "missing file",
        "wrong shapes", "nan observed", "negative with kl", "empty row", "empty column", "rank too large",
        "rank above synthetic", "non-bool mask", "unknown solver", "unknown loss", "missing key", "hals with kl",
        "too many restarts", "negative restarts", "not a number", "out is a file", "out under a file",
        "resume with flags", "resume old record", "entries on dense", "entries for mlp", "unknown shard",
        "process flags alone", "process id too large", "bad coordinator", "negative weight", "NaN weight",
        "text weight", "infinite weight", "no weight column", "zero weights on a row", "weight key on npz",
        "negative coo weight", "dense weight shape"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys):
    args, msg = _bad_inputs(tmp_path)[case]
    before = sorted(p for p in tmp_path.rglob("*"))
    stamp = {p: p.stat().st_mtime_ns for p in before if p.is_file()}
    argv = args if "--out" in args or "--resume" in args else args + ["--out", str(tmp_path / "out")]
    code = cli.main(argv + ["--quiet"])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and msg in err, err
    assert captured.out == ""
    # nothing written: no new file or folder, no file changed
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert {p: p.stat().st_mtime_ns for p in before if p.is_file()} == stamp


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
    assert summary["peak_rss_mb"] >= _rss_now_mb() * 0.5  # recorded, in MiB (the run's process is this one)


def _rss_now_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_peak_memory_is_in_mib_and_sees_an_allocation():
    a = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    peak = experiment.peak_memory()["peak_rss_mb"]
    # ≥ 300 (MiB, not KiB or bytes); the kernel updates its high-water mark lazily, hence the 0.9
    assert 300 <= peak <= 64 * 1024 and peak >= 0.9 * _rss_now_mb()
    del a


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


def test_data_without_held_out_entries_runs_and_reports(tmp_path, capsys):
    # val_mask is optional in a dense .npz: no held-out MSE to print, and the run still ends with status 0
    rng = np.random.default_rng(0)
    V = rng.random((12, 2)) @ rng.random((2, 8))
    np.savez(tmp_path / "full.npz", V=V, train_mask=np.ones(V.shape, bool))
    out = str(tmp_path / "run")
    assert cli.main(["--solver", "gauss_newton", "--data", str(tmp_path / "full.npz"), "--rank", "2", "--seeds", "1",
                     "--steps", "3", "--out", out, "--quiet"]) == 0
    assert json.load(open(os.path.join(out, "summary.json")))["final"]["val_mse"] == [None]
    line = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("seed")][0]
    assert "val —" in line and "train —" not in line


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, capsys):
    args = ["--solver", "gauss_newton", "--seeds", "2", "--steps", "12", "--chunk", "4"] + SMALL
    full = str(tmp_path / "full")
    assert cli.main(args + ["--out", full]) == 0

    part = str(tmp_path / "part")
    with interrupted_after_checkpoints(monkeypatch, 2):  # Ctrl-C after the second chunk was saved
        assert cli.main(args + ["--out", part]) == 130  # no traceback: a line that says how to go on
    assert f"continue with --resume {part}" in capsys.readouterr().err
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


def test_outputs_get_the_mode_open_would_give(tmp_path):
    # atomic writes go through mkstemp (0600); the saved file has the umask's mode, as predictions.csv does
    from lrfactor import results

    old = os.umask(0o027)
    try:
        results.write_json(str(tmp_path / "a.json"), {"x": 1})
        results.write_npz(str(tmp_path / "b.npz"), x=np.zeros(2))
        (tmp_path / "c.txt").write_text("")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o640, "b.npz": 0o640, "c.txt": 0o640}

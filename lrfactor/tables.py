"""Long-format tables: observed entries in, predictions out (host-side, numpy).

A user's data is often a table with one line per observed entry — (product,
store, weekly sales) — and no line where nothing was observed. This module
reads such a table into a :class:`Table`: parallel arrays of row index, column
index, value and held-out flag, plus the original ids of the rows and columns,
so that the ids can be given back with the predictions. It reads

* CSV and Parquet (one line per observed entry, columns named by
  ``row_key``/``col_key``/``value_key``, defaults: the first three columns,
  optional ``split_key`` column of ``train``/``val``, optional ``weight_key``
  column of per-entry weights);
* a coordinate-list ``.npz`` (``rows``, ``cols``, ``vals``, ``shape``,
  optional ``split`` 0 train / 1 val, ``weights``, ``W_true``, ``H_true``,
  and the ``row_ids``/``col_ids`` that :func:`write_table` stores);
* a dense ``.npz`` (``V``, ``train_mask``, optional ``val_mask``,
  ``train_weight``, ``W_true``, ``H_true``), through
  :func:`table_from_dense`; :meth:`Table.to_dense` goes back to (V,
  train_mask, val_mask) for problems small enough to be dense.

Files are parsed by pyarrow (and handled with pandas and numpy), not by hand:
a maintained reader infers column types, handles quoting, embedded delimiters
and empty or ``NaN``/``NA`` fields the way other tools write them, reads
Parquet, and parses a CSV of ten million lines in a few seconds on several
threads.

Conventions, the same for every format:

* **Ids.** ``row_ids[i]`` is the id of row ``i`` (``col_ids`` likewise), in
  sorted order of the ids, so that indices do not depend on the order of the
  lines. An id column is integer when every id in it is a plain decimal
  integer (``-12``, ``0``, ``7``; no leading zeros, no ``+``, at most 18
  digits): ``row_ids`` is then int64. Otherwise the ids are strings, kept as
  written (``"007"`` stays ``"007"``), and ``row_ids`` is an object array of
  ``str``. Ids of another Parquet type are read as their text.
* **Missing values.** A value that is empty or NaN (``""``, ``NaN``, ``NA``,
  ``null``, ...) marks a line with no observation: the line is dropped and
  counted in ``Table.n_missing``. Rows and columns are those of the kept
  lines.
* **Split.** With ``split_key`` the column says ``train`` or ``val`` on every
  line. Without it, exactly ``round(val_fraction · lines)`` of the kept lines,
  drawn by ``numpy.random.default_rng(split_seed)``, are held out. An ``.npz``
  carries its own split (``split`` / ``val_mask``); without one every entry
  is a training entry, as for the dense file read by
  :func:`lrfactor.problems.load_npz`.
* **Weights** (optional): a number per line that multiplies the entry's
  term in the training loss (a confidence, an exposure, a count). Every
  training line needs one, finite and >= 0; held-out lines have one each
  (then the run also reports a weighted held-out MSE) or none (empty / NaN);
  every row and column needs a training entry of positive weight
  (:func:`check_weights`). A line whose value is missing is dropped whatever
  its weight.
* **Errors** raise :class:`lrfactor.problems.ProblemError` with one line that
  names the file and the problem: unreadable file or unknown extension, a
  missing key column, an empty id, a non-numeric or infinite value, a value
  the loss or the solver cannot fit (a negative one for the kl loss or the mu
  solver, a zero or negative one for the log loss:
  :func:`lrfactor.losses.value_requirement`), a duplicate (row, column)
  pair, an empty table, a split column with another value, a row or column
  with no training entry, a weight that breaks the rules above. Line
  numbers count the header as line 1 (CSV); Parquet and ``.npz`` name the
  0-based record.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lrfactor.losses import LOSSES, bad_values, value_requirement
from lrfactor.problems import ProblemError, check_problem

TABLE_EXTENSIONS = (".csv", ".parquet", ".pq", ".npz")
MISSING_PAIRS_LIMIT = 10_000_000  # missing_pairs refuses more pairs than this (3 int64/float64 arrays: 240 MB)
CSV_BLOCK = 1 << 24  # bytes of CSV text parsed per block (per thread)
PREDICT_CHUNK = 65_536  # pairs per chunk in predict_pairs: (chunk, r) temporaries, never (n, m)
SPLIT_VALUES = ("train", "val")
_INT_ID = r"^-?(0|[1-9][0-9]{0,17})$"  # a plain decimal integer that fits in int64


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """Observed entries of an (n, m) matrix as parallel arrays of lines (host numpy).

    Line ``k`` says V[rows[k], cols[k]] = vals[k], held out when ``is_val[k]``.
    """
    rows: np.ndarray  # (L,) int64 row index in 0..n-1
    cols: np.ndarray  # (L,) int64 column index in 0..m-1
    vals: np.ndarray  # (L,) float64 observed value, finite and >= 0
    is_val: np.ndarray  # (L,) bool: held out (scored, never fitted)
    shape: tuple  # (n, m)
    row_ids: np.ndarray  # (n,) id of each row: int64, or object array of str
    col_ids: np.ndarray  # (m,) id of each column, likewise
    W_true: Optional[np.ndarray] = None  # (n, k) generating factors, when the file has them
    H_true: Optional[np.ndarray] = None  # (m, k)
    row_key: Optional[str] = None  # the source's column names (None for .npz)
    col_key: Optional[str] = None
    value_key: Optional[str] = None
    n_missing: int = 0  # lines dropped because their value was empty or NaN
    source: str = ""  # the file read, for messages
    # (L,) float64 per-line weight (each training entry's loss term times it), or None (every
    # entry counts once): finite and >= 0 on training lines; on held-out lines all finite and
    # >= 0 (held-out weights, for a weighted held-out score) or all NaN (none given).
    weights: Optional[np.ndarray] = None
    weight_key: Optional[str] = None  # the source's weight column (None for .npz)

    @property
    def n_train(self) -> int:
        return int(self.is_val.size - np.count_nonzero(self.is_val))

    @property
    def n_val(self) -> int:
        return int(np.count_nonzero(self.is_val))

    @property
    def val_weighted(self) -> bool:
        """Whether the held-out entries have weights of their own."""
        return self.weights is not None and self.n_val > 0 and not np.isnan(self.weights[self.is_val]).any()

    def dense_weights(self):
        """(train_weight, val_weight): (n, m) float64 arrays, 0 off their mask; either None when absent."""
        if self.weights is None:
            return None, None
        n, m = self.shape
        out = []
        for part, given in ((~self.is_val, True), (self.is_val, self.val_weighted)):
            if not given:
                out.append(None)
                continue
            w = np.zeros((n, m), np.float64)
            w[self.rows[part], self.cols[part]] = self.weights[part]
            out.append(w)
        return tuple(out)

    def to_dense(self):
        """(V, train_mask, val_mask): (n, m) float64 with 0 off both masks, and two bool masks."""
        n, m = self.shape
        V = np.zeros((n, m), np.float64)
        V[self.rows, self.cols] = self.vals
        train = np.zeros((n, m), bool)
        val = np.zeros((n, m), bool)
        train[self.rows[~self.is_val], self.cols[~self.is_val]] = True
        val[self.rows[self.is_val], self.cols[self.is_val]] = True
        return V, train, val


# ---------------------------------------------------------------------------
# Reading


def read_table(path, row_key=None, col_key=None, value_key=None, split_key=None,
               val_fraction=0.2, split_seed=0, loss="frobenius", solver=None, weight_key=None) -> Table:
    """Read a CSV, Parquet or ``.npz`` file of observed entries. Raises ProblemError.

    ``row_key``, ``col_key``, ``value_key`` name the columns of a CSV/Parquet
    table (default: its first three columns); ``split_key`` names a column of
    ``train``/``val``; without it ``val_fraction`` of the lines drawn with
    ``split_seed`` are held out. The key arguments do not apply to an ``.npz``.
    ``loss`` and ``solver`` are the loss the data will be fitted with and the
    solver that fits it: values they cannot take are refused
    (:func:`lrfactor.losses.value_requirement`: V >= 0 for the kl loss and the
    mu solver, V > 0 for the log loss; frobenius takes any real value).
    ``weight_key`` names a column of per-entry weights (:func:`check_weights`);
    an ``.npz`` carries its own (``weights`` beside ``vals``, ``train_weight``
    beside ``V``).
    """
    path = os.fspath(path)
    if loss not in LOSSES:
        raise ProblemError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ProblemError(f"val_fraction {val_fraction} must be in [0, 1)")
    ext = _extension(path)
    if not os.path.isfile(path):
        raise ProblemError(f"{path}: no such file")
    if ext == ".npz":
        given = [k for k, v in (("row_key", row_key), ("col_key", col_key), ("value_key", value_key),
                                ("split_key", split_key), ("weight_key", weight_key)) if v is not None]
        if given:
            raise ProblemError(f"{path}: key arguments ({', '.join(given)}) apply to CSV/Parquet tables, not to an .npz")
        return _read_npz(path, loss, solver)
    cols, where = _read_columns(path, ext, row_key, col_key, value_key, split_key, weight_key=weight_key)
    return _table_from_columns(path, cols, where, val_fraction, split_seed, loss, solver)


def table_from_dense(V, train_mask, val_mask=None, W_true=None, H_true=None, source="dense",
                     train_weight=None) -> Table:
    """The entries of a dense problem (the ``--data FILE.npz`` layout) as a Table.

    Lines are the entries of ``train_mask | val_mask`` in row-major order; ids
    are the indices 0..n-1, 0..m-1. The checks are those of
    :func:`lrfactor.problems.check_problem` (NaN or inf among observed entries
    is an error here, as for the dense file). ``train_weight`` (n, m): per-entry
    weights of the training entries (values off ``train_mask`` are ignored;
    :func:`check_weights`). Raises ProblemError.
    """
    V, train = np.asarray(V), np.asarray(train_mask)
    val = None if val_mask is None else np.asarray(val_mask)
    check_problem(V, train, val, rank=1, name=source)
    seen = train if val is None else train | val
    rows, cols = np.nonzero(seen)
    n, m = V.shape
    is_val = np.zeros(rows.size, bool) if val is None else val[rows, cols]
    W_true, H_true = _truth(source, W_true, H_true, (n, m))
    is_val = np.asarray(is_val, bool)
    weights = None
    if train_weight is not None:
        tw = np.asarray(train_weight)
        if tw.shape != V.shape:
            raise ProblemError(f"{source}: train_weight shape {tw.shape} differs from V shape {V.shape}")
        if not (np.issubdtype(tw.dtype, np.floating) or np.issubdtype(tw.dtype, np.integer)):
            raise ProblemError(f"{source}: train_weight must be numeric, got dtype {tw.dtype}")
        weights = np.where(is_val, np.nan, tw[rows, cols]).astype(np.float64)
        ids = np.arange(max(n, m), dtype=np.int64)
        check_weights(source, weights, is_val, rows, cols, (n, m), ids[:n], ids[:m],
                      lambda k: f"entry (row {rows[k]}, column {cols[k]})", "train_weight")
    return Table(rows=rows.astype(np.int64), cols=cols.astype(np.int64), vals=V[rows, cols].astype(np.float64),
                 is_val=is_val, shape=(n, m), row_ids=np.arange(n, dtype=np.int64),
                 col_ids=np.arange(m, dtype=np.int64), W_true=W_true, H_true=H_true, source=source,
                 weights=weights)


def _extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in TABLE_EXTENSIONS:
        raise ProblemError(f"{path}: unknown extension {ext or '(none)'!r}; known: {', '.join(TABLE_EXTENSIONS)}")
    return ext


def _read_columns(path, ext, row_key, col_key, value_key, split_key, n_keys=3, weight_key=None):
    """The named columns as pyarrow arrays: {role: array}, and a function naming line k.

    Key columns (ids, split) are read as text or integers; the value column
    (and the weight column) as float64 where every field parses, else as text
    for :func:`_values` to locate the first bad line.
    """
    try:
        if ext == ".csv":
            header = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16)).schema.names
        else:
            header = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as e:
        raise ProblemError(f"{path}: not a readable {ext[1:]} file ({_first_line(e)})") from None
    roles = {"row": row_key, "col": col_key, "value": value_key}
    roles = dict(list(roles.items())[:n_keys])
    for i, role in enumerate(roles):
        if roles[role] is None:
            if i >= len(header):
                raise ProblemError(f"{path}: has {len(header)} column(s) {header}, needs at least {n_keys}")
            roles[role] = header[i]
    if split_key is not None:
        roles["split"] = split_key
    if weight_key is not None:
        roles["weight"] = weight_key
    for role, name in roles.items():
        if name not in header:
            raise ProblemError(f"{path}: no column {name!r} ({role} key); columns found: {', '.join(header)}")
    if len(set(roles.values())) < len(roles):
        raise ProblemError(f"{path}: the same column is named for two roles: {roles}")
    numeric = [roles[r] for r in ("value", "weight") if r in roles]
    text = {roles[r] for r in roles if r not in ("value", "weight")}

    def read(value_type):
        if ext == ".csv":
            types = {name: pa.dictionary(pa.int32(), pa.string()) for name in text}
            for name in numeric:
                types[name] = value_type
            opts = pacsv.ConvertOptions(include_columns=list(roles.values()), column_types=types)
            # Large blocks: fewer chunks, so fewer per-chunk id dictionaries to unify.
            return pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK), convert_options=opts)
        return pq.read_table(path, columns=list(roles.values()), read_dictionary=list(text))

    try:
        try:
            t = read(pa.float64())
        except pa.ArrowInvalid as e:
            if not numeric or "conversion error" not in str(e):
                raise
            t = read(pa.string())  # a non-numeric value or weight: read it as text to find its line
    except (OSError, pa.ArrowException) as e:
        raise ProblemError(f"{path}: not a readable {ext[1:]} file ({_first_line(e)})") from None
    cols = {role: t.column(name) for role, name in roles.items()}  # chunked: no copy of the columns
    del t
    cols["names"] = roles
    where = (lambda k: f"line {k + 2}") if ext == ".csv" else (lambda k: f"record {k}")
    return cols, where


def _first_line(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _values(path, arr, where, name) -> np.ndarray:
    """A pyarrow column of values as float64, NaN where missing; a non-numeric field is an error."""
    t = arr.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t):
        return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        s = pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)
        s = s.where(~s.isin(pacsv.ConvertOptions().null_values), None)  # missing, as when the column is numeric
        num = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
        bad = np.isnan(num) & s.notna().to_numpy()
        if bad.any():
            k = int(np.argmax(bad))
            raise ProblemError(f"{path}: non-numeric value {s.iloc[k]!r} in column {name!r} at {where(k)}")
        return num
    raise ProblemError(f"{path}: column {name!r} holds {t} values, not numbers")


def _encode_ids(path, arr, where, name):
    """Index of each line's id in the sorted ids, and the ids (int64 or object array of str).

    The column is dictionary-encoded (the CSV reader decodes ids straight into
    a dictionary; other columns are encoded here), so the ids are handled once
    each, not once per line.
    """
    if not isinstance(arr, pa.ChunkedArray):
        arr = pa.chunked_array([arr])
    if arr.null_count:
        k = int(np.argmax(pc.is_null(arr).to_numpy(zero_copy_only=False)))
        raise ProblemError(f"{path}: empty id in column {name!r} at {where(k)}")
    # One dictionary shared by all chunks: unified, or built so by dictionary_encode.
    arr = arr.unify_dictionaries() if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    index = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in arr.chunks])
    dictionary = arr.chunk(0).dictionary
    if not (pa.types.is_integer(dictionary.type) or pa.types.is_string(dictionary.type)
            or pa.types.is_large_string(dictionary.type)):
        try:
            dictionary = pc.cast(dictionary, pa.string())
        except pa.ArrowException:
            raise ProblemError(f"{path}: ids of type {dictionary.type} in column {name!r} cannot be read as text") from None
    if pa.types.is_integer(dictionary.type):
        ids = dictionary.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        empty = pc.equal(pc.utf8_length(dictionary), 0).to_numpy(zero_copy_only=False)
        if empty.any():
            raise ProblemError(f"{path}: empty id in column {name!r} at {where(int(np.argmax(index == np.argmax(empty))))}")
        if pc.all(pc.match_substring_regex(dictionary, _INT_ID)).as_py():
            ids = pc.cast(dictionary, pa.int64()).to_numpy(zero_copy_only=False)
        else:
            ids = np.array(dictionary.to_pylist(), dtype=object)
    order = np.argsort(ids, kind="stable")
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    return _compact(rank[index], ids[order])


def _table_from_columns(path, cols, where, val_fraction, split_seed, loss, solver=None) -> Table:
    """Validate the columns read from a CSV/Parquet file and build the Table (see the module's conventions).

    Each pyarrow column is dropped as soon as its numpy form exists, so that
    the file's text and the arrays of the Table are not all held at once.
    """
    names = cols.pop("names")
    vals = _values(path, cols.pop("value"), where, names["value"])
    if vals.size == 0:
        raise ProblemError(f"{path}: empty table (no lines)")
    weights = _values(path, cols.pop("weight"), where, names["weight"]) if "weight" in cols else None
    is_val = None
    if "split" in cols:
        split = cols.pop("split")
        ok = pc.fill_null(pc.is_in(split, value_set=pa.array(SPLIT_VALUES)), False).to_numpy(zero_copy_only=False)
        if not ok.all():
            k = int(np.argmax(~ok))
            raise ProblemError(f"{path}: split column {names['split']!r} has {split[k].as_py()!r} at {where(k)}; "
                               f"expected {' or '.join(SPLIT_VALUES)}")
        is_val = pc.equal(split, "val").to_numpy(zero_copy_only=False)
        del split
    # Ids are checked on every line (an empty id is an error even where the value is missing).
    rows, row_ids = _encode_ids(path, cols.pop("row"), where, names["row"])
    cols_, col_ids = _encode_ids(path, cols.pop("col"), where, names["col"])
    pa.default_memory_pool().release_unused()
    missing = np.isnan(vals)
    n_missing = int(np.count_nonzero(missing))
    if n_missing == vals.size:
        raise ProblemError(f"{path}: empty table (all {vals.size} values are missing)")
    line = None  # file line of each kept entry, when lines were dropped
    if n_missing:
        line = np.flatnonzero(~missing)
        vals, is_val = vals[line], (None if is_val is None else is_val[line])
        weights = None if weights is None else weights[line]
        rows, row_ids = _compact(rows[line], row_ids)
        cols_, col_ids = _compact(cols_[line], col_ids)
    del missing
    at = where if line is None else (lambda k: where(int(line[k])))
    _check_values(path, vals, at, loss, solver)
    shape = (row_ids.size, col_ids.size)
    _check_duplicates(path, rows, cols_, shape, row_ids, col_ids, at)
    if is_val is None:
        is_val = random_split(vals.size, val_fraction, split_seed)
    _check_coverage(path, rows, cols_, ~np.asarray(is_val, bool), shape, row_ids, col_ids)
    is_val = np.asarray(is_val, bool)
    if weights is not None:
        check_weights(path, weights, is_val, rows, cols_, shape, row_ids, col_ids, at, names["weight"])
    return Table(rows=rows, cols=cols_, vals=vals, is_val=is_val, shape=shape,
                 row_ids=row_ids, col_ids=col_ids, row_key=names["row"], col_key=names["col"],
                 value_key=names["value"], n_missing=n_missing, source=path, weights=weights,
                 weight_key=names.get("weight"))


def _compact(codes, ids):
    """Drop ids no longer used by ``codes``, keeping the order of the rest."""
    used = np.zeros(ids.size, bool)
    used[codes] = True
    if used.all():
        return codes, ids
    new = np.cumsum(used) - 1
    return new[codes], ids[used]


def random_split(lines: int, val_fraction: float, seed: int) -> np.ndarray:
    """Held-out flags: exactly round(val_fraction · lines) lines drawn by default_rng(seed)."""
    k = int(round(val_fraction * lines))
    is_val = np.zeros(lines, bool)
    is_val[np.random.default_rng(seed).choice(lines, size=k, replace=False)] = True
    return is_val


def _check_values(path, vals, where, loss, solver=None):
    inf = np.isinf(vals)
    if inf.any():
        k = int(np.argmax(inf))
        raise ProblemError(f"{path}: infinite value {vals[k]} at {where(k)}")
    bad = bad_values(vals, loss, solver)
    if bad.any():
        k = int(np.argmax(bad))
        raise ProblemError(f"{path}: value {vals[k]} at {where(k)} ({int(bad.sum())} in all); "
                           f"{value_requirement(loss, solver)}")


def check_loss(table: Table, loss: str, solver: Optional[str] = None) -> None:
    """The table's observed values (training and held-out) suit ``loss`` fitted by ``solver``
    (:func:`lrfactor.losses.value_requirement`). Raises ProblemError, one line."""
    _check_values(table.source or "data", table.vals, lambda k: f"entry {k}", loss, solver)


def _check_duplicates(path, rows, cols, shape, row_ids, col_ids, where):
    """A (row, column) pair given twice is ambiguous: name the first such pair and its two lines."""
    flat = rows * np.int64(shape[1]) + cols
    flat_sorted = np.sort(flat)  # a sort needs far less memory than a hash table of 10⁷ keys
    same = flat_sorted[1:] == flat_sorted[:-1]
    if same.any():
        twice = np.isin(flat, flat_sorted[1:][same])  # lines whose pair occurs more than once
        dup = twice & pd.Series(flat).duplicated().to_numpy()
        k = int(np.argmax(dup))
        j = int(np.argmax(flat == flat[k]))
        raise ProblemError(f"{path}: duplicate entry (row {_show(row_ids[rows[k]])}, column "
                           f"{_show(col_ids[cols[k]])}) at {where(j)} and {where(k)}")


def _check_coverage(path, rows, cols, fitted, shape, row_ids, col_ids, kind: str = ""):
    """Every row and every column needs an entry among ``fitted`` (the training entries, or those of
    positive weight: ``kind`` says which in the message), else its factor is undetermined."""
    for what, idx, ids, size in (("row", rows, row_ids, shape[0]), ("column", cols, col_ids, shape[1])):
        count = np.bincount(idx[fitted], minlength=size)
        if (count == 0).any():
            empty = np.flatnonzero(count == 0)
            raise ProblemError(f"{path}: {what} {_show(ids[empty[0]])} has no training entry{kind} "
                               f"({empty.size} {what}s without one)")


def check_weights(path, weights, is_val, rows, cols, shape, row_ids, col_ids, where, name) -> None:
    """Per-line weights (float64, NaN where missing) as a run can use them. Raises ProblemError, one line.

    Every training line has a weight, finite and >= 0; the held-out lines have
    one each (finite and >= 0, scored by the weighted held-out MSE) or none at
    all; every row and column keeps a training entry of positive weight (an
    entry of weight 0 counts as not observed, so a row of zero weights has
    nothing to fit, like a row without training entries). ``name``: the
    weights' column or key, for the messages.
    """
    train = ~is_val
    lost = train & np.isnan(weights)
    if lost.any():
        k = int(np.argmax(lost))
        raise ProblemError(f"{path}: missing weight (empty or NaN) in {name!r} at {where(k)} ({int(lost.sum())} "
                           f"in all); every training entry needs a weight")
    bad = ~np.isnan(weights) & ~((weights >= 0) & np.isfinite(weights))
    if bad.any():
        k = int(np.argmax(bad))
        raise ProblemError(f"{path}: weight {weights[k]} in {name!r} at {where(k)} ({int(bad.sum())} in all); "
                           f"weights must be finite and >= 0")
    held = is_val & np.isnan(weights)
    if held.any() and held.sum() < is_val.sum():
        k = int(np.argmax(held))
        raise ProblemError(f"{path}: missing weight in {name!r} at {where(k)}, a held-out entry, while other "
                           f"held-out entries have one; give every held-out entry a weight or none")
    _check_coverage(path, rows, cols, train & (weights > 0), shape, row_ids, col_ids, " of positive weight")


def _show(x) -> str:
    x = x.item() if isinstance(x, np.generic) else x
    return repr(x) if isinstance(x, str) else str(x)


def _truth(path, W, H, shape):
    if W is None and H is None:
        return None, None
    if W is None or H is None:
        raise ProblemError(f"{path}: W_true and H_true must be given together")
    W, H = np.asarray(W, np.float64), np.asarray(H, np.float64)
    if W.ndim != 2 or H.ndim != 2 or W.shape[0] != shape[0] or H.shape[0] != shape[1] or W.shape[1] != H.shape[1]:
        raise ProblemError(f"{path}: W_true {W.shape} and H_true {H.shape} do not fit the shape {tuple(shape)}")
    return W, H


def _read_npz(path, loss, solver=None) -> Table:
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:  # zip/format/pickle errors: name the file, not the traceback
        raise ProblemError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    if "V" in data:
        if "train_mask" not in data:
            raise ProblemError(f"{path}: missing key 'train_mask' (found {sorted(data)})")
        table = table_from_dense(data["V"], data["train_mask"], data.get("val_mask"),
                                 data.get("W_true"), data.get("H_true"), source=path,
                                 train_weight=data.get("train_weight"))
        check_loss(table, loss, solver)
        return table
    for key in ("rows", "cols", "vals", "shape"):
        if key not in data:
            raise ProblemError(f"{path}: missing key {key!r}: neither a coordinate list (rows, cols, vals, "
                               f"shape) nor a dense file (V, train_mask); found {sorted(data)}")
    rows, cols, vals, shape = data["rows"], data["cols"], data["vals"], data["shape"]
    if shape.shape != (2,) or not np.issubdtype(shape.dtype, np.integer) or (shape < 1).any():
        raise ProblemError(f"{path}: shape must be two positive integers (n, m), got {shape.tolist()}")
    n, m = (int(s) for s in shape)
    L = rows.shape[0] if rows.ndim == 1 else -1
    extra = tuple(k for k in ("split", "weights") if k in data)
    for key in ("rows", "cols", "vals") + extra:
        if data[key].ndim != 1 or data[key].shape[0] != L:
            raise ProblemError(f"{path}: rows, cols, vals{''.join(', ' + k for k in extra)} must be 1-D "
                               f"of one length, got {[data[k].shape for k in ('rows', 'cols', 'vals') + extra]}")
    for key, size in (("rows", n), ("cols", m)):
        a = data[key]
        if not np.issubdtype(a.dtype, np.integer):
            raise ProblemError(f"{path}: {key} must be integers, got dtype {a.dtype}")
        out = (a < 0) | (a >= size)
        if out.any():
            k = int(np.argmax(out))
            raise ProblemError(f"{path}: {key}[{k}] = {int(a[k])} is outside 0..{size - 1}")
    for key in ("vals",) + (("weights",) if "weights" in data else ()):
        if not (np.issubdtype(data[key].dtype, np.floating) or np.issubdtype(data[key].dtype, np.integer)):
            raise ProblemError(f"{path}: {key} must be numeric, got dtype {data[key].dtype}")
    if L == 0:
        raise ProblemError(f"{path}: empty table (no entries)")
    split = data.get("split")
    if split is not None and not np.isin(split, (0, 1)).all():
        k = int(np.argmax(~np.isin(split, (0, 1))))
        raise ProblemError(f"{path}: split[{k}] = {split[k]}; expected 0 (train) or 1 (val)")
    row_ids = ids_from_npz(data["row_ids"]) if "row_ids" in data else np.arange(n, dtype=np.int64)
    col_ids = ids_from_npz(data["col_ids"]) if "col_ids" in data else np.arange(m, dtype=np.int64)
    if row_ids.shape != (n,) or col_ids.shape != (m,):
        raise ProblemError(f"{path}: row_ids {row_ids.shape} / col_ids {col_ids.shape} do not fit the shape ({n}, {m})")
    vals = vals.astype(np.float64)
    missing = np.isnan(vals)
    line = np.flatnonzero(~missing)
    if line.size == 0:
        raise ProblemError(f"{path}: empty table (all {L} values are missing)")
    rows, cols, vals = rows[line].astype(np.int64), cols[line].astype(np.int64), vals[line]
    is_val = np.zeros(line.size, bool) if split is None else split[line] == 1
    where = lambda k: f"entry {int(line[k])}"  # noqa: E731
    _check_values(path, vals, where, loss, solver)
    _check_duplicates(path, rows, cols, (n, m), row_ids, col_ids, where)
    _check_coverage(path, rows, cols, ~is_val, (n, m), row_ids, col_ids)
    weights = None
    if "weights" in data:
        weights = data["weights"].astype(np.float64)[line]
        check_weights(path, weights, is_val, rows, cols, (n, m), row_ids, col_ids, where, "weights")
    W_true, H_true = _truth(path, data.get("W_true"), data.get("H_true"), (n, m))
    return Table(rows=rows, cols=cols, vals=vals, is_val=is_val, shape=(n, m), row_ids=row_ids, col_ids=col_ids,
                 W_true=W_true, H_true=H_true, n_missing=int(missing.sum()), source=path, weights=weights)


# ---------------------------------------------------------------------------
# Writing tables


def write_table(path, table: Table, row_key=None, col_key=None, value_key=None, split_key="split",
                weight_key=None) -> None:
    """Write a Table as CSV, Parquet (long format) or coordinate-list ``.npz``.

    CSV/Parquet columns: the table's key names (or ``row_id``, ``col_id``,
    ``value``) unless given, ``split_key`` (``train``/``val``; None: no
    split column) and, when the table has weights, ``weight_key`` (default the
    table's, or ``weight``; empty where a held-out line has none). The ``.npz``
    holds ``rows``, ``cols``, ``vals``, ``shape``, ``split``, ``row_ids``,
    ``col_ids`` (see :func:`ids_for_npz`), ``weights`` when the table has them
    (NaN where a held-out line has none) and the true factors when known.
    Values and weights are written so that they read back exactly.
    """
    path = os.fspath(path)
    ext = _extension(path)
    if ext == ".npz":
        extra = {} if table.W_true is None else {"W_true": table.W_true, "H_true": table.H_true}
        if table.weights is not None:
            extra["weights"] = table.weights
        np.savez(path, rows=table.rows, cols=table.cols, vals=table.vals, shape=np.asarray(table.shape, np.int64),
                 split=table.is_val.astype(np.int8), row_ids=ids_for_npz(table.row_ids),
                 col_ids=ids_for_npz(table.col_ids), **extra)
        return

    names = (row_key or table.row_key or "row_id", col_key or table.col_key or "col_id",
             value_key or table.value_key or "value")
    frame = {names[0]: table.row_ids[table.rows], names[1]: table.col_ids[table.cols], names[2]: table.vals}
    if split_key is not None:
        frame[split_key] = np.where(table.is_val, "val", "train")
    if table.weights is not None:
        frame[weight_key or table.weight_key or "weight"] = table.weights
    df = pd.DataFrame(frame)
    if ext == ".csv":
        df.to_csv(path, index=False)  # floats as their shortest round-trip repr
    else:
        df.to_parquet(path, index=False)


# ---------------------------------------------------------------------------
# Predictions


def read_pairs(path, table: Table, row_key=None, col_key=None):
    """(rows, cols) int64 indices of the (row id, column id) pairs in a CSV/Parquet file.

    Columns: ``row_key``, ``col_key`` (default: the first two). Ids are read
    as for :func:`read_table` and matched to ``table.row_ids``/``col_ids``;
    an id the table does not have is an error. Raises ProblemError.
    """
    path = os.fspath(path)
    ext = _extension(path)
    if ext == ".npz":
        raise ProblemError(f"{path}: pairs are read from a CSV or Parquet table, not an .npz")
    if not os.path.isfile(path):
        raise ProblemError(f"{path}: no such file")
    cols, where = _read_columns(path, ext, row_key, col_key, None, None, n_keys=2)
    if len(cols["row"]) == 0:
        raise ProblemError(f"{path}: no pairs (a header and no lines)")
    out = []
    for role, ids, what in (("row", table.row_ids, "row"), ("col", table.col_ids, "column")):
        codes, found = _encode_ids(path, cols[role], where, cols["names"][role])
        index = _match_ids(found, ids)
        if (index < 0).any():
            k = int(np.argmax(index < 0))
            raise ProblemError(f"{path}: {what} id {_show(found[k])} (column {cols['names'][role]!r}, "
                               f"{where(int(np.argmax(codes == k)))}) is not in the fitted data")
        out.append(index[codes])
    return out[0], out[1]


def _match_ids(found, ids) -> np.ndarray:
    """Index in ``ids`` of each of ``found`` (-1: absent). Ints and strings never equal each other,
    except that integer ids read from text match integer ids."""
    if ids.dtype == object and found.dtype != object:  # "7" read as 7 but the table's ids are strings
        found = np.array([str(x) for x in found.tolist()], dtype=object)
    elif ids.dtype != object and found.dtype == object:  # text ids can match no integer id
        return np.full(found.size, -1, np.int64)
    return pd.Index(ids).get_indexer(found).astype(np.int64)


def missing_pairs(table: Table, limit: int = MISSING_PAIRS_LIMIT):
    """(rows, cols) of every entry in neither split, row-major. Raises ProblemError past ``limit`` pairs."""
    n, m = table.shape
    count = n * m - table.rows.size
    if count > limit:
        raise ProblemError(f"{table.source or 'table'}: {count} missing pairs ({n} x {m} minus {table.rows.size} "
                           f"observed) exceed the limit of {limit}; give the pairs to predict in a file")
    seen = np.zeros((n, m), bool)
    seen[table.rows, table.cols] = True
    rows, cols = np.nonzero(~seen)
    return rows.astype(np.int64), cols.astype(np.int64)


def predict_pairs(W, H, rows, cols, chunk: int = PREDICT_CHUNK) -> np.ndarray:
    """(W Hᵀ)[rows, cols] for one set of factors W (n, r), H (m, r), in chunks: never forms n × m."""
    W, H = np.asarray(W, np.float64), np.asarray(H, np.float64)
    rows, cols = np.asarray(rows), np.asarray(cols)
    out = np.empty(rows.shape[0], np.float64)
    for s in range(0, rows.shape[0], chunk):
        e = s + chunk
        out[s:e] = np.einsum("kr,kr->k", W[rows[s:e]], H[cols[s:e]])
    return out


def write_predictions(path, table: Table, rows, cols, pred) -> None:
    """CSV: a header (the table's row and column key names, or ``row_id``, ``col_id``; then
    ``prediction``), then one line per pair with the ids as read and the prediction."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    df = pd.DataFrame({table.row_key or "row_id": table.row_ids[rows], table.col_key or "col_id": table.col_ids[cols],
                       "prediction": np.asarray(pred, np.float64)})
    df.to_csv(os.fspath(path), index=False)


def ids_for_npz(ids) -> np.ndarray:
    """Ids as stored in ``factors.npz`` (``allow_pickle=False``): numeric stay numeric,
    strings become a fixed-width unicode array. Inverse: :func:`ids_from_npz`."""
    ids = np.asarray(ids)
    if ids.dtype != object:
        if ids.dtype.kind in "iufb":
            return ids
        if ids.dtype.kind == "U":
            return ids
    values = ids.tolist()
    if all(isinstance(x, str) for x in values):
        return np.array(values, dtype=str) if values else np.zeros(0, "<U1")
    if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in values):
        return np.array(values, dtype=np.int64)
    raise ValueError("ids must be all integers or all strings to be stored in an .npz")


def ids_from_npz(arr) -> np.ndarray:
    """Ids as held in a Table from their ``.npz`` form: int64, float64, or an object array of str."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "U":
        return np.array(arr.tolist(), dtype=object)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    return arr

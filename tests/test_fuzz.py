"""Fuzz the command line: random flag combinations and malformed data files.

Every case must end with exit status 0, or 2 with exactly one ``error: ...``
line on stderr: never a traceback, and nothing already saved in ``--out`` is
lost (a refused case writes nothing at all).

``test_fuzz_flags`` (200 cases) and ``test_fuzz_data`` (200) go through ``lrfactor.cli.main``
in-process up to the start of the run (validation, data loading, the solver
factories); a case that passes all of that is counted and not run, which keeps
hundreds of cases within seconds. ``test_fuzz_runs`` runs the cases that pass,
on tiny problems (20 × 10, 2 steps, 1 seed), to the saved files.
"""

import contextlib
import io
import os

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lrfactor import cli, cv, experiment
from lrfactor import config as C

TINY = ["--n", "20", "--m", "10", "--steps", "2", "--seeds", "1", "--quiet"]
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# Counts per test, printed at the end of the module (pytest -s) and checked.
COUNTS = {}


@pytest.fixture(autouse=True)
def keep_x64():
    yield
    jax.config.update("jax_enable_x64", True)


class Started(Exception):
    """Raised by the stand-in for ``execute``: the case passed every check before the run."""


@pytest.fixture
def no_run(monkeypatch):
    def execute(cfg, out, **kw):
        raise Started(out)

    monkeypatch.setattr(experiment, "execute", execute)
    monkeypatch.setattr(cv, "execute", execute)  # a cross-validation (--cv) starts here


def call(argv):
    """(exit status, stderr) of ``cli.main(argv)``; 'started' when it reached the run."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except Started:
            code = "started"
        except SystemExit as e:  # --help
            code = e.code
    return code, err.getvalue()


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            found[os.path.join(root, d)] = None
        for f in files:
            p = os.path.join(root, f)
            found[p] = open(p, "rb").read()
    return found


def check(code, err, before, after, out_state):
    assert code in (0, 2, "started"), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err
        assert after == before, "a refused case wrote or removed something"
    else:
        assert "Traceback" not in err
        for path, data in before.items():  # nothing saved before is lost
            assert path in after and (data is None or after[path] == data), path
    if out_state in ("full", "file"):
        assert code == 2


# ---------------------------------------------------------------------------
# Flags.

INT_VALUES = ["-1", "0", "1", "2", "3", "x", "1.5", "99999999999999999999", "4294967295"]
SMALL_INT_VALUES = ["-1", "0", "1", "2", "3", "x"]  # sizes: runs that start stay tiny
SMALL = {"seeds", "steps", "n", "m", "true_rank", "rank", "mlp_steps", "lanczos_steps", "slq_probes",
         "hessian_every", "inner", "refine", "restarts", "cg_iters", "chunk", "patience", "plateau_patience"}
FLOAT_VALUES = ["-1", "0", "1e-3", "0.5", "1", "2", "nan", "inf", "-inf", "abc", "1e400"]


def flag_values(name):
    if name in C.BOOLS:
        return st.sampled_from([[C.flag(name)], ["--no-" + C.flag(name)[2:]]])
    if name in C.INTS:
        vals = SMALL_INT_VALUES if name in SMALL else INT_VALUES
    elif name in C.FLOATS:
        vals = FLOAT_VALUES
    else:
        vals = {
            "data": ["x.npz", "x.csv", "x.txt", "", "DATA_OK", "DATA_DIR"],
            "predict": ["missing", "pairs.csv", "pairs.txt", ""],
            "optimizer": ["adam", "sgd", "rmsprop", "nosuch", "apply_updates"],
            "out": [],  # set by the test
        }.get(name) or list(map(str, C.choices().get(name, ()))) + ["bogus", ""]
    if not vals:
        return st.just([])
    return st.sampled_from(vals).map(lambda v: [C.flag(name), v])


FLAGGED = [n for n in C.FIELDS if n != "out"]
junk = st.sampled_from([[], [], [], ["--nosuch"], ["--resume"], ["-h"], ["--lam", "1"], ["positional"], ["--rank"]])


@st.composite
def argvs(draw):
    names = draw(st.lists(st.sampled_from(FLAGGED), max_size=6, unique=True))
    argv = []
    for name in names:
        argv += draw(flag_values(name))
    argv += draw(junk)
    return argv


def prepare_out(base, state):
    out = os.path.join(base, "out")
    if state == "empty":
        os.makedirs(out)
    elif state == "full":  # a saved run
        os.makedirs(out)
        with open(os.path.join(out, "summary.json"), "w") as f:
            f.write('{"complete": true}')
    elif state == "file":
        with open(out, "w") as f:
            f.write("keep me")
    return out


def _case_dir(factory):
    return str(factory.mktemp("case", numbered=True))


def _good_npz(path):
    rng = np.random.default_rng(0)
    V = rng.random((12, 8))
    tr = rng.random((12, 8)) < 0.7
    tr[:, 0] = tr[0, :] = True
    np.savez(path, V=V, train_mask=tr, val_mask=~tr)


@given(argv=argvs(), out_state=st.sampled_from(["new", "empty", "full", "file"]))
@settings(FUZZ, max_examples=200)
def test_fuzz_flags(argv, out_state, tmp_path_factory, no_run):
    base = _case_dir(tmp_path_factory)
    argv = [os.path.join(base, "x.npz") if a == "DATA_OK" else os.path.join(base, "d.npz") if a == "DATA_DIR" else a
            for a in argv]
    _good_npz(os.path.join(base, "x.npz"))
    os.makedirs(os.path.join(base, "d.npz"))
    out = prepare_out(base, out_state)
    if "--resume" in argv:  # resume the saved run, or a folder that is not one
        argv[argv.index("--resume")] = "--resume=" + out
    full = TINY + argv + ["--out", out]
    if any(a.startswith("--data") for a in argv):  # the synthetic sizes would be refused with --data
        full = full[8:]
    before = snapshot(base)
    code, err = call(full)
    special = any(a.startswith("--resume") for a in argv) or "-h" in argv
    check(code, err, before, snapshot(base), "-" if special else out_state)
    COUNTS.setdefault("flags", []).append(code)


# ---------------------------------------------------------------------------
# Data files.

@st.composite
def data_files(draw):
    n = draw(st.integers(1, 8))
    m = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    V = rng.random((n, m)) * draw(st.sampled_from([1.0, 1e3, 1e-3]))
    tr = rng.random((n, m)) < draw(st.sampled_from([0.3, 0.7, 1.0]))
    val = ~tr
    arrays = {"V": V, "train_mask": tr, "val_mask": val}
    faults = draw(st.lists(st.sampled_from([
        "nan_train", "inf_train", "nan_outside", "negative", "empty_row", "empty_col", "int_mask", "float_mask",
        "no_V", "no_train", "no_val", "wrong_shape", "overlap", "string_V", "3d_V", "scalar_V", "bad_truth",
        "half_truth", "good_truth", "object_V", "truncate", "garbage", "directory", "empty_file", "not_zip_npz",
    ]), max_size=3, unique=True))
    return arrays, faults


def write_data(path, arrays, faults, draw_cut):
    arrays = dict(arrays)
    V, tr = arrays["V"].copy(), arrays["train_mask"].copy()
    n, m = V.shape
    if "nan_train" in faults and tr.any():
        V[np.argwhere(tr)[0][0], np.argwhere(tr)[0][1]] = np.nan
    if "inf_train" in faults and tr.any():
        V[tuple(np.argwhere(tr)[-1])] = np.inf
    if "nan_outside" in faults:  # allowed: entries outside both masks are ignored
        arrays["val_mask"] = np.zeros_like(tr)
        V[~tr] = np.nan
    if "negative" in faults:
        V[0, 0] = -1.0
    if "empty_row" in faults:
        tr[0] = False
    if "empty_col" in faults:
        tr[:, 0] = False
    arrays["V"], arrays["train_mask"] = V, tr
    if "overlap" in faults:
        arrays["val_mask"] = np.ones_like(tr)
    if "int_mask" in faults:
        arrays["train_mask"] = tr.astype(np.int64)
    if "float_mask" in faults:
        arrays["val_mask"] = np.asarray(arrays["val_mask"], float)
    if "wrong_shape" in faults:
        arrays["train_mask"] = np.asarray(arrays["train_mask"])[: max(n - 1, 0)]
    if "string_V" in faults:
        arrays["V"] = V.astype(str)
    if "3d_V" in faults:
        arrays["V"] = V[None]
    if "scalar_V" in faults:
        arrays["V"] = np.asarray(1.0)
    if "good_truth" in faults:
        arrays["W_true"], arrays["H_true"] = np.ones((n, 2)), np.ones((m, 2))
    if "bad_truth" in faults:
        arrays["W_true"], arrays["H_true"] = np.ones((n + 1, 2)), np.ones((m, 3))
    if "half_truth" in faults:
        arrays["W_true"] = np.ones((n, 2))
    for key in ("V", "train", "val"):
        if f"no_{key}" in faults:
            arrays.pop(key if key == "V" else f"{key}_mask", None)
    if "directory" in faults:
        os.makedirs(path)
        return
    if "object_V" in faults:
        arrays["V"] = np.array([{"a": 1}], dtype=object)
    np.savez(path, **arrays)
    raw = open(path, "rb").read()
    if "truncate" in faults:
        raw = raw[: int(len(raw) * draw_cut)]
    if "garbage" in faults:
        raw = bytes(np.random.default_rng(len(raw)).integers(0, 256, 64, dtype=np.uint8))
    if "empty_file" in faults:
        raw = b""
    if "not_zip_npz" in faults:  # a plain .npy under the .npz name
        buf = io.BytesIO()
        np.save(buf, V)
        raw = buf.getvalue()
    with open(path, "wb") as f:
        f.write(raw)


@given(case=data_files(), cut=st.floats(0.0, 0.99), solver=st.sampled_from(["gauss_newton", "hals", "mu", "adam"]),
       loss=st.sampled_from([[], ["--loss", "kl"]]), rank=st.sampled_from(["1", "2", "3", "7", "9"]))
@settings(FUZZ, max_examples=200)
def test_fuzz_data(case, cut, solver, loss, rank, tmp_path_factory, no_run):
    arrays, faults = case
    base = _case_dir(tmp_path_factory)
    path = os.path.join(base, "data.npz")
    write_data(path, arrays, faults, cut)
    out = prepare_out(base, "new")
    argv = ["--data", path, "--solver", solver, "--rank", rank, "--steps", "2", "--seeds", "1", "--quiet",
            "--out", out] + loss
    before = snapshot(base)
    code, err = call(argv)
    check(code, err, before, snapshot(base), "new")
    if code == "started":  # what passed must be valid input
        # a negative value is refused only where the loss (kl) or the solver (mu) needs V >= 0
        assert not ("negative" in faults and (loss or solver == "mu")), (faults, solver, loss)
        # half_truth after good_truth rewrites W_true with a valid one: both factors present, no fault
        faults = [f for f in faults if not (f == "half_truth" and "good_truth" in faults)]
        assert not ({"nan_train", "inf_train", "empty_row", "empty_col", "int_mask", "float_mask",
                     "no_V", "no_train", "wrong_shape", "string_V", "3d_V", "scalar_V", "bad_truth", "half_truth",
                     "object_V", "garbage", "directory", "empty_file", "not_zip_npz", "overlap"} & set(faults)), faults
    COUNTS.setdefault("data", []).append(code)


# ---------------------------------------------------------------------------
# Cases that pass, run to the end on tiny problems.

run_flags = st.lists(st.sampled_from([
    ["--solver", "gauss_newton"], ["--solver", "adam"], ["--solver", "sgd"], ["--solver", "hals"], ["--solver", "mu"],
    ["--solver", "mlp"], ["--loss", "kl"], ["--precision", "32"], ["--precision", "64"], ["--init", "scaled"],
    ["--damping", "marquardt"], ["--no-backtrack"], ["--restarts", "0"],
    ["--schur-precision", "full"], ["--max-step", "1"], ["--hessian-every", "1"], ["--lanczos-steps", "2"],
    ["--rank", "1"], ["--rank", "3"], ["--noise", "0.1"], ["--batch-size", "7"], ["--optimizer", "rmsprop"],
    ["--momentum", "0.5"], ["--lr", "0.5"], ["--min-lr", "0"], ["--no-early-stopping"], ["--patience", "1"],
    ["--mlp-steps", "0"], ["--mlp-dims", "linear"], ["--chunk", "1"], ["--l2", "0.1"], ["--eps", "1e-6"],
]), max_size=4)


def _valid(argv):
    try:
        C.validate(cli.RunConfig(**C.grid_settings({k: v for k, v in vars(cli.parser().parse_args(argv)).items()
                                                    if k in C.FIELDS and v is not None})))
        return True
    except (C.ConfigError, cli.UsageError):
        return False


@given(flags=run_flags)
@settings(FUZZ, max_examples=3)
def test_fuzz_runs(flags, tmp_path_factory):
    argv = TINY + [a for f in flags for a in f]
    assume(_valid(argv))  # refusals are the other tests' business; these cases run
    base = _case_dir(tmp_path_factory)
    out = os.path.join(base, "out")
    code, err = call(argv + ["--out", out])
    check(code, err, {}, snapshot(base), "new")
    if code == 0:
        assert os.path.exists(os.path.join(out, "summary.json")) and os.path.exists(os.path.join(out, "config.json"))
    COUNTS.setdefault("runs", []).append(code)


def test_fuzz_counts():
    """The fuzz tests above ran (in this process) and reached both outcomes."""
    if set(COUNTS) != {"flags", "data", "runs"}:
        pytest.skip("run with the fuzz tests above")
    flags, data, runs = COUNTS["flags"], COUNTS["data"], COUNTS["runs"]
    print(f"\nfuzz cases: flags {len(flags)} ({flags.count(2)} refused, {flags.count('started')} passed), "
          f"data {len(data)} ({data.count(2)} refused, {data.count('started')} passed), "
          f"runs {len(runs)} ({runs.count(0)} ran)")
    assert flags.count(2) and flags.count("started") and data.count(2) and data.count("started")
    assert runs.count(0) == len(runs)  # every valid case runs to the end

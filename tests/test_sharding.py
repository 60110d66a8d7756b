"""Sharded runs give the same results as one device.

The seed axis of a batch, or the entry axis of one coordinate-list problem,
sharded over 4 forced host devices of one process, or over 2 processes of 2
devices each joined through a localhost coordinator, against the same run on
one device (float64).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from lrfactor import cli
from lrfactor.results import read_npz

ROOT = os.path.join(os.path.dirname(__file__), "..")
# A data file rather than the synthetic problem: no oracle to polish, so the
# runs cost little more than their compilation.
DATA = "data.npz"
# A batch of seeds (dense masks): 3 seeds padded to 4, one per device. In float64
# throughout (the mixed-precision Schur solve rounds differently per batch size).
ARGS = ["--solver", "gauss_newton", "--seeds", "3", "--steps", "6", "--chunk", "3", "--rank", "3",
        "--schur-precision", "full", "--quiet"]
# One problem on coordinate lists: fewer seeds than devices, so its entries are sharded.
SINGLE = ["--seeds", "1", "--steps", "4", "--chunk", "2", "--rank", "3", "--layout", "coo", "--precision", "64",
          "--quiet"]
RUNS = {"batch": ARGS, "gauss_newton": SINGLE + ["--solver", "gauss_newton"], "hals": SINGLE + ["--solver", "hals"]}

# Runs each argument list of argv[1] (JSON) through the command line, then
# prints, per solver of argv[2], the shapes of the arrays its compiled chunk
# all-gathers across devices (the entries must never be among them).
SCRIPT = r"""
import json, sys
from lrfactor import cli
for argv in json.loads(sys.argv[1]):
    assert cli.main(argv) == 0, argv
from lrfactor import distributed, driver, experiment
from lrfactor.config import RunConfig, resolve
gathered = {}
for name in json.loads(sys.argv[2]):
    prep = experiment.prepare(resolve(RunConfig(solver=name, seeds=1, steps=2, chunk=1, rank=3, layout="coo",
                                                data=sys.argv[3])))
    solver, carry, _, _ = experiment.build(prep)
    pl = experiment.run_placement(prep)
    ax = prep.problem_axis
    csh, rsh = driver.shardings(solver, carry, prep.problem, ax, pl)
    chunk = driver.make_chunk(solver, 2, 1, ax, (csh, rsh))
    hlo = chunk.lower(distributed.place(carry, csh), distributed.place(
        prep.problem, distributed.problem_shardings(pl, prep.problem, ax))).compile().as_text()
    gathered[name] = {"entries": int(prep.problem.rows.shape[-1]),
                      "all_gather": [l.split("=", 1)[1].split("all-gather")[0].strip() for l in hlo.splitlines()
                                     if "all-gather(" in l or "all-gather-start(" in l]}
print("GATHERED " + json.dumps(gathered))
"""


def _env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                PYTHONPATH=os.path.abspath(ROOT))


def _start(runs: list, devices: int, inspect=(), data=""):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(runs), json.dumps(list(inspect)), data],
                            env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """A 40 × 12 matrix of rank 3, 60 % of it observed for training, the rest held out."""
    rng = np.random.default_rng(0)
    V = (rng.random((40, 3)) + 0.1) @ (rng.random((12, 3)) + 0.1).T
    train = rng.random(V.shape) < 0.6
    train[:, 0] = train[0, :] = True
    path = tmp_path_factory.mktemp("data") / DATA
    np.savez(path, V=V, train_mask=train, val_mask=~train)
    return str(path)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, data):
    """The reference runs on this process's single device."""
    base = tmp_path_factory.mktemp("one")
    outs = {}
    for name, args in RUNS.items():
        outs[name] = str(base / name)
        assert cli.main(args + ["--data", data, "--out", outs[name]]) == 0
    return outs


def _same(a: str, b: str, rtol: float, seeds: int) -> None:
    ha, hb = read_npz(os.path.join(a, "history.npz")), read_npz(os.path.join(b, "history.npz"))
    assert ha["train_mse"].shape == hb["train_mse"].shape and ha["train_mse"].shape[0] == seeds
    for k in ("train_mse", "val_mse", "objective"):
        np.testing.assert_allclose(hb[k], ha[k], rtol=rtol, atol=0, err_msg=k)
    fa, fb = read_npz(os.path.join(a, "factors.npz")), read_npz(os.path.join(b, "factors.npz"))
    for k in ("W", "H"):
        np.testing.assert_allclose(fb[k], fa[k], rtol=rtol, atol=0, err_msg=k)
    sa = json.load(open(os.path.join(a, "summary.json")))
    sb = json.load(open(os.path.join(b, "summary.json")))
    assert sa["seeds"] == sb["seeds"] and sa["final"]["steps"] == sb["final"]["steps"]
    np.testing.assert_allclose(sb["final"]["val_mse"], sa["final"]["val_mse"], rtol=rtol, atol=0)


def _sharding(out: str) -> dict:
    return json.load(open(os.path.join(out, "config.json")))["sharding"]


def test_four_devices_equal_one(tmp_path, data, one_device):
    """Seeds: 3 seeds padded to 4, one per device; entries: one coordinate-list problem cut into 4 shards."""
    outs = {name: str(tmp_path / name) for name in RUNS}
    proc = _start([args + ["--data", data, "--out", outs[name]] for name, args in RUNS.items()], 4,
                  inspect=("gauss_newton", "hals"), data=data)
    gathered = json.loads(_finish(proc).split("GATHERED ", 1)[1])
    cfg = json.load(open(os.path.join(outs["batch"], "config.json")))
    assert cfg["devices"]["count"] == 4
    assert _sharding(outs["batch"]) == {"axis": "seeds", "devices": 4, "processes": 1}
    _same(one_device["batch"], outs["batch"], 1e-10, 3)
    assert _sharding(one_device["gauss_newton"])["axis"] is None
    for name in ("gauss_newton", "hals"):
        assert _sharding(outs[name]) == {"axis": "entries", "devices": 4, "processes": 1}
        _same(one_device[name], outs[name], 1e-10, 1)
        # The partitioned chunk sums each device's own entries and all-reduces
        # the per-row and per-column sums: no array of entries is gathered.
        g = gathered[name]
        assert not any(str(g["entries"]) in shape for shape in g["all_gather"]), g


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_two_devices_equal_one(tmp_path, data, one_device):
    """One problem's entries, and a batch of seeds, over 2 processes × 2 devices (localhost coordinator)."""
    flags = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--process-id"]
    procs = []
    for pid in range(2):
        runs = [RUNS[name] + ["--data", data, "--out", str(tmp_path / f"p{pid}-{name}")]
                for name in ("gauss_newton", "batch")]
        runs[0] = runs[0] + flags + [str(pid)]  # the first run joins the processes; the next runs reuse them
        procs.append(_start(runs, 2))
    for p in procs:
        _finish(p)
    assert _sharding(str(tmp_path / "p0-gauss_newton")) == {"axis": "entries", "devices": 4, "processes": 2}
    assert _sharding(str(tmp_path / "p0-batch")) == {"axis": "seeds", "devices": 4, "processes": 2}
    _same(one_device["gauss_newton"], str(tmp_path / "p0-gauss_newton"), 1e-10, 1)
    _same(one_device["batch"], str(tmp_path / "p0-batch"), 1e-10, 3)
    # Only process 0 writes.
    assert not any(os.path.exists(tmp_path / f"p1-{name}") for name in ("gauss_newton", "batch"))

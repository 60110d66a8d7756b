"""The seed axis sharded over several (simulated) devices gives the same results as one device."""

import json
import os
import subprocess
import sys

import numpy as np

from lrfactor import cli
from lrfactor.results import read_npz

ARGS = ["--solver", "gauss_newton", "--seeds", "3", "--steps", "6", "--chunk", "3",
        "--n", "40", "--m", "12", "--true-rank", "4", "--rank", "3", "--quiet"]


def test_four_devices_equal_one(tmp_path):
    one = str(tmp_path / "one")
    assert cli.main(ARGS + ["--out", one]) == 0
    four = str(tmp_path / "four")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.join(os.path.dirname(__file__), "..")
    proc = subprocess.run([sys.executable, os.path.join(root, "experiments", "run.py")] + ARGS + ["--out", four],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cfg = json.load(open(os.path.join(four, "config.json")))
    assert cfg["devices"]["count"] == 4  # 3 seeds padded to 4, one per device
    a, b = read_npz(os.path.join(one, "history.npz")), read_npz(os.path.join(four, "history.npz"))
    assert a["train_mse"].shape == b["train_mse"].shape == (3, 7)
    np.testing.assert_allclose(a["train_mse"], b["train_mse"], rtol=1e-9)
    np.testing.assert_allclose(a["val_mse"], b["val_mse"], rtol=1e-9)
    sa = json.load(open(os.path.join(one, "summary.json")))
    sb = json.load(open(os.path.join(four, "summary.json")))
    assert sa["seeds"] == sb["seeds"] == [0, 1, 2]
    np.testing.assert_allclose(sa["final"]["val_mse"], sb["final"]["val_mse"], rtol=1e-9)

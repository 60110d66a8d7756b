"""experiments/gpu_check.sh in its dry-run mode: every command of the accelerator check, tiny sizes, on the CPU."""

import json
import os
import subprocess
import sys


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(["bash", os.path.join(ROOT, "experiments", "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dest = tmp_path / "gpu-check-dry"
    rows = json.load(open(dest / "throughput-cpu.json"))["rows"]
    assert {r["solver"] for r in rows} == {"gauss_newton", "hals"}
    assert json.load(open(dest / "f32" / "throughput-cpu.json"))["rows"][0]["precision"] == 32
    summary = json.load(open(dest / "gn-2" / "summary.json"))
    assert summary["complete"] and summary["seeds"] == [0, 1] and summary["final"]["steps"] == [5, 5]
    assert "2-seed flagship run, wall incl. compile and oracle" in done.stdout
    # a second check into the same folder is refused, the first one's files kept
    again = subprocess.run(["bash", os.path.join(ROOT, "experiments", "gpu_check.sh")], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr
    assert json.load(open(dest / "gn-2" / "summary.json")) == summary


def test_gpu_check_large_dry_run(tmp_path):
    # the large part with a small problem and a few steps: both runs complete, their folders packed
    import tarfile

    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(["bash", os.path.join(ROOT, "experiments", "gpu_check.sh"), "large"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with tarfile.open(tmp_path / "gpu-large-dry" / "large.tgz") as tar:
        names = set(tar.getnames())
        gn = json.load(tar.extractfile("gn/summary.json"))
        hals = json.load(tar.extractfile("hals/summary.json"))
        gn_cfg = json.load(tar.extractfile("gn/config.json"))["config"]
        hals_cfg = json.load(tar.extractfile("hals/config.json"))["config"]
    # the penalty both fits share, and gauss_newton's PCG cap and start (the script's defaults)
    assert gn_cfg["reg"] == hals_cfg["reg"] == 1e-8 and gn_cfg["cg_iters"] == 20
    # gauss_newton from the hals start, once; HALS from its own scaled start
    assert (gn_cfg["init"], gn_cfg["restarts"], hals_cfg["init"]) == ("hals", 0, "scaled")
    assert not any(n.endswith("factors.npz") for n in names)
    assert gn["complete"] and gn["final"]["steps"][0] <= 20 and hals["final"]["steps"] == [50]

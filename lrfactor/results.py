"""Saved runs: atomic writes, the files of docs/contract.md, and loading them back.

Every file is written to a temporary name in the same folder and moved into
place with ``os.replace``, so a crash never leaves a half-written file that
looks complete.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write_bytes(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode open() would, as every other output has
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(x: Any):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        return _jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def write_json(path: str, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())


def plain(obj: Any) -> Any:
    """``obj`` as :func:`read_json` returns it after :func:`write_json`: lists, numbers, None for NaN."""
    return json.loads(json.dumps(_jsonable(obj)))


def update_json(path: str, **fields) -> None:
    """Add ``fields`` to the JSON object in ``path``, atomically."""
    write_json(path, {**read_json(path), **fields})


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def write_npz(path: str, _compress: bool = True, **arrays) -> None:
    """Atomically write ``arrays`` to ``path``; compressed unless ``_compress=False``."""
    buf = io.BytesIO()
    (np.savez_compressed if _compress else np.savez)(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    _atomic_write_bytes(path, buf.getvalue())


def read_npz(path: str) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def environment() -> dict:
    """Library versions, device and precision: recorded with every run and benchmark."""
    import importlib.metadata as md

    import jax

    versions = {}
    for pkg in ("jax", "jaxlib", "optax", "numpy", "matplotlib"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    devs = jax.devices()
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": {"count": len(devs), "kind": devs[0].device_kind, "platform": devs[0].platform},
        "x64": bool(jax.config.jax_enable_x64),
        "cpu_count": os.cpu_count(),
        # Threads of the OpenBLAS behind XLA's CPU LAPACK calls (lrfactor/__init__.py).
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def pick_seeds(run: dict, spec) -> list:
    """The seeds of a loaded run named by ``spec``, a comma-separated string (None: all of them).

    Raises ValueError with a one-line message for a malformed list or a seed the run does not hold."""
    seeds = list(run["summary"]["seeds"])
    if spec is None:
        return seeds
    try:
        want = [int(s) for s in spec.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {spec}: not a comma-separated list of integers") from None
    if not set(want) <= set(seeds):
        raise ValueError(f"--seeds {spec}: the run holds seeds {seeds}")
    return want


def check_finished(folders, names=("history.npz", "summary.json")) -> None:
    """Raise ValueError (one line) for the first folder lacking one of ``names``: a script reading saved runs
    refuses before it prints anything."""
    if not folders:
        raise ValueError("give one or more run folders")
    for folder in folders:
        for name in names:
            if not os.path.exists(os.path.join(folder, name)):
                raise ValueError(f"{folder}: no {name} (not a finished run folder)")


def load_finished(folder: str, seeds=None):
    """(run, config, seeds) of a finished run folder, for a script that starts from its saved factors.

    ``seeds`` as for :func:`pick_seeds`. Raises ValueError (ConfigError for a
    config that cannot be honoured) with a one-line message."""
    from lrfactor.experiment import load_config

    if not os.path.exists(os.path.join(folder, "factors.npz")):
        raise ValueError(f"{folder}: no factors.npz (not a finished run folder)")
    run = load_run(folder)
    return run, load_config(folder), pick_seeds(run, seeds)


def load_run(folder: str) -> dict:
    """Everything a saved run holds (missing optional files are absent from the dict)."""
    run = {"config": read_json(os.path.join(folder, "config.json"))}
    for name in ("summary.json",):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            run["summary"] = read_json(p)
    for name in ("history", "factors", "hessian", "predictions"):
        p = os.path.join(folder, name + ".npz")
        if os.path.exists(p):
            run[name] = read_npz(p)
    return run

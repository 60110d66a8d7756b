"""Figures from saved runs only: nothing here trains, traces or recomputes a run.

Everything is read back with :func:`lrfactor.results.load_run` (docs/contract.md
files). The one computation done at plot time is turning the saved Lanczos
tridiagonals into a smoothed spectral density (Ghorbani, Krishnan & Xiao 2019;
init2winit saves the raw tridiagonals and smooths when plotting): for each
probe, T = S diag(θ) Sᵀ gives quadrature nodes θ_j with weights S_1j², and

    ρ(s) = Σ_probes ‖v‖² Σ_j S_1j² 𝒩(s; s(θ_j), σ²) / Σ_probes ‖v‖²,
    s(λ) = sign(λ) log10(1 + |λ|/c),

a Gaussian-smoothed density on the symlog eigenvalue axis s (linear within
±c of zero). The gauge modes (docs/design.md §2), projected out by the tracer, are
put back as a point mass n_gauge/N at their Rayleigh quotient.

Figures (each a function of loaded runs returning a matplotlib Figure; the
``plot_run``/``plot_compare`` helpers write the PNGs):

- ``loss.png``: the question's two panels, train and validation MSE per seed
  against step (first 50 steps skipped when there are more than 100), the
  question's "theoretical MSE" (truncated true factors) marked;
- ``hessian_traces.png``: λmax, λmin, index, gradient norm and the gradient's
  share on the top eigenvectors against step, per seed, beside the loss;
- ``spectral_density.png``: density across traced steps, a heatmap on a symlog
  eigenvalue axis;
- ``loss_vs_index.png``: training MSE against the index at every traced point
  (Dauphin et al. 2014, "Identifying and attacking the saddle point problem");
- ``compare.png``: several runs (first-order, Gauss-Newton, ...) side by side;
- ``success_map.png``: a success map's rates per (axis, value) and solver
  (``map.json`` of experiments/success_map.py);
- ``cv.png``: a cross-validated run's grid (``cv.json`` of lrfactor/cv.py):
  the mean fold held-out MSE of every setting with its spread over the folds,
  the choice marked.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from lrfactor import results, success  # noqa: E402

SKIP = 50  # steps hidden at the start of long runs (the question's n_skip)
SKIP_ABOVE = 100  # ... when a run has more steps than this
MAX_DENSITY_SEEDS = 4  # spectral-density panels (one per seed)


class PlotError(ValueError):
    """A folder that is not a readable saved run; the message is one line."""


def load(folder: str) -> dict:
    """A saved run (``results.load_run``), checked for what the figures need."""
    if not os.path.isdir(folder):
        raise PlotError(f"{folder}: no such folder")
    for name in ("config.json", "history.npz"):
        if not os.path.exists(os.path.join(folder, name)):
            raise PlotError(f"{folder}: not a saved run ({name} missing)")
    try:
        run = results.load_run(folder)
    except Exception as e:  # a truncated or foreign file: name it, no traceback
        raise PlotError(f"{folder}: unreadable run files ({type(e).__name__}: {e})") from None
    h = run.get("history", {})
    for key in ("train_mse", "val_mse"):
        if key not in h or np.ndim(h[key]) != 2:
            raise PlotError(f"{folder}: history.npz lacks a (seeds, steps) '{key}'")
    cv_path = os.path.join(folder, "cv.json")
    if os.path.exists(cv_path):
        run["cv"] = load_cv(folder)
    run["folder"] = folder
    run["name"] = run_name(run)
    return run


def load_cv(folder: str) -> dict:
    """``cv.json`` of a cross-validated run, checked for what :func:`cv_figure` needs."""
    try:
        rec = results.read_json(os.path.join(folder, "cv.json"))
        settings, scores = rec["settings"], rec["scores"]["val_mse"]
        if not settings or np.shape(scores) != (rec["k"], len(settings)):
            raise ValueError("scores do not match the grid")
        rec["axes"], rec["choice"]["index"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlotError(f"{folder}: unreadable cv.json ({type(e).__name__}: {e})") from None
    return rec


def run_name(run: dict) -> str:
    cfg = run["config"].get("config", {})
    solver = cfg.get("solver", run.get("summary", {}).get("solver", "?"))
    extra = []
    if solver == "gauss_newton":
        extra.append(cfg.get("method", ""))
    if cfg.get("l2"):
        extra.append(f"l2={cfg['l2']:g}")
    label = solver + (f" ({', '.join(e for e in extra if e)})" if any(extra) else "")
    return f"{label}: {os.path.basename(os.path.normpath(run.get('folder', '')))}"


def _seeds(run: dict) -> list:
    S = run["history"]["train_mse"].shape[0]
    return list(run.get("summary", {}).get("seeds", range(S)))[:S]


def _reference_values(run: dict, key: str) -> Optional[np.ndarray]:
    """A summary reference (one value or one per seed) as floats, None → NaN; None when absent."""
    vals = run.get("summary", {}).get("reference", {}).get(key)
    if vals is None:
        return None
    return np.asarray([np.nan if v is None else v for v in np.atleast_1d(vals)], float)


def _reference(run: dict, key: str) -> Optional[float]:
    vals = _reference_values(run, key)
    if vals is None or not np.isfinite(vals).any():
        return None
    return float(np.nanmedian(vals))


def _steps(run: dict) -> np.ndarray:
    h = run["history"]
    return np.asarray(h["step"]) if "step" in h else np.arange(h["train_mse"].shape[1])


def _colors(n: int):
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _positive(y):
    y = np.asarray(y, float)
    return np.where(y > 0, y, np.nan)


# --------------------------------------------------------------------------- loss


def loss_figure(run: dict) -> plt.Figure:
    """The question's two panels: train and validation MSE per seed against step."""
    h = run["history"]
    steps = _steps(run)
    skip = SKIP if len(steps) > SKIP_ABOVE else 0
    seeds = _seeds(run)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, key, title, ref_key in ((axes[0], "train_mse", "train MSE", "truth_train_mse"),
                                    (axes[1], "val_mse", "validation MSE", "truth_val_mse")):
        y = h[key]
        for k, c in zip(range(y.shape[0]), _colors(y.shape[0])):
            ax.plot(steps[skip:], _positive(y[k, skip:]), color=c, lw=1, label=f"seed {seeds[k]}" if k < 10 else None)
        ref = _reference(run, ref_key)
        if ref is not None:
            ax.axhline(ref, color="k", ls="--", lw=1.2, label=f"theoretical MSE (truncated truth) {ref:.3g}")
        oracle = _reference(run, "oracle_" + key)
        if oracle is not None:
            ax.axhline(oracle, color="k", ls=":", lw=1.2, label=f"oracle optimum {oracle:.3g}")
        best = np.nanmin(y) if np.isfinite(y).any() else np.nan
        ax.set_title(f"{title}, min={best:.4g}")
        ax.set_yscale("log")
        ax.set_xlabel("step" + (f" (first {skip} not shown)" if skip else ""))
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(run["name"])
    fig.tight_layout()
    return fig


def _success_threshold(run: dict) -> Optional[np.ndarray]:
    """Each seed's success threshold (summary.json ``success_threshold``; for a summary written before it
    was recorded, FACTOR × its oracle's train MSE); None without an oracle."""
    y = np.asarray(run["history"]["train_mse"], float)
    thr = run.get("summary", {}).get("success_threshold")
    if thr is not None:
        thr = np.asarray([np.nan if v is None else v for v in np.atleast_1d(thr)], float)
    else:
        oracle = _reference_values(run, "oracle_train_mse")
        thr = None if oracle is None else success.FACTOR * oracle
    if thr is None or thr.size not in (1, y.shape[0]):
        return None
    return np.broadcast_to(thr, (y.shape[0],))


def success_curve(run: dict):
    """(steps, fraction of seeds whose train MSE has been at or below their success threshold by that step).

    None when the run has no oracle (``--data`` without truth)."""
    thr = _success_threshold(run)
    if thr is None:
        return None
    y = np.asarray(run["history"]["train_mse"], float)
    return _steps(run), np.logical_or.accumulate(y <= thr[:, None], axis=1).mean(axis=0)


def success_figure(run: dict) -> Optional[plt.Figure]:
    """Many seeds at a glance: train MSE relative to each seed's success threshold, and the success rate
    against step."""
    curve = success_curve(run)
    if curve is None:
        return None
    steps, frac = curve
    rel = np.asarray(run["history"]["train_mse"], float) / _success_threshold(run)[:, None]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k in range(rel.shape[0]):
        ax0.plot(steps, _positive(rel[k]), color="C0", lw=0.6, alpha=0.5)
    ax0.axhline(1.0, color="k", ls=":", lw=1.2,
                label=f"success: {success.FACTOR:g} × oracle + {success.FLOOR_REL:g} × mean V²")
    ax0.set_yscale("log")
    ax0.set_xlabel("step")
    ax0.set_ylabel("train MSE / success threshold")
    ax0.set_title(f"{rel.shape[0]} seeds, each against its own oracle")
    ax0.legend(fontsize=8)
    ax0.grid(True, which="both", alpha=0.3)
    ax1.plot(steps, 100 * frac, color="C1", lw=1.5)
    ax1.set_xlabel("step")
    ax1.set_ylabel("seeds that reached their success threshold (%)")
    ax1.set_ylim(0, 100)
    ax1.set_title(f"success rate: {100 * frac[-1]:.0f} % at step {steps[-1]}")
    ax1.grid(True, alpha=0.3)
    fig.suptitle(run["name"])
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- Hessian


def _hessian(run: dict) -> dict:
    if "hessian" not in run:
        raise PlotError(f"{run.get('folder', 'run')}: no hessian.npz (run with --hessian-every K)")
    return run["hessian"]


def _at_steps(run: dict, key: str, steps: np.ndarray) -> np.ndarray:
    """History ``key`` (S, T+1) at the traced steps (history index = step)."""
    y = run["history"][key]
    idx = np.clip(np.asarray(steps, int), 0, y.shape[1] - 1)
    return y[:, idx]


def hessian_traces_figure(run: dict) -> plt.Figure:
    """λmax, λmin, index, ‖g‖ and the gradient's top-eigenvector share against step, beside the loss."""
    hz = _hessian(run)
    st = np.asarray(hz["steps"])
    seeds = _seeds(run)
    S = hz["eig_max"].shape[0]
    colors = _colors(S)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharex=True)
    ax = axes[0, 0]
    steps = _steps(run)
    for k in range(S):
        ax.plot(steps, _positive(run["history"]["train_mse"][k]), color=colors[k], lw=0.8)
        ax.plot(st, _positive(_at_steps(run, "train_mse", st)[k]), "o", color=colors[k], ms=3)
    ref = _reference(run, "truth_train_mse")
    if ref is not None:
        ax.axhline(ref, color="k", ls="--", lw=1, label="theoretical (train)")
        ax.legend(fontsize=7)
    ax.set(yscale="log", title="train MSE (dots: traced steps)")
    panels = [
        (axes[0, 1], "eig_max", "largest eigenvalue λmax", "log"),
        (axes[0, 2], "eig_min", "smallest eigenvalue λmin (gauge excluded)", "symlog"),
        (axes[1, 0], "index", "index (fraction of negative eigenvalues)", "linear"),
        (axes[1, 1], "grad_norm", "gradient norm ‖g‖", "log"),
        (axes[1, 2], "grad_top_share", "share of ‖g‖² on the top Ritz vectors", "linear"),
    ]
    for ax, key, title, scale in panels:
        if key not in hz:
            ax.set_title(f"{title}: not traced")
            continue
        y = np.asarray(hz[key], float)
        for k in range(S):
            ax.plot(st, _positive(y[k]) if scale == "log" else y[k], "-o", color=colors[k], ms=3, lw=1,
                    label=f"seed {seeds[k]}" if (key == "index" and k < 10) else None)
        if scale == "symlog":
            lin = np.nanmax(np.abs(y)) if np.isfinite(y).any() else 1.0
            ax.set_yscale("symlog", linthresh=max(lin * 1e-4, 1e-300))
            ax.axhline(0, color="k", lw=0.6)
        elif scale == "log":
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
    if "index_significant" in hz:  # negative curvature the quadrature separates from the near-zero bulk
        for k in range(S):
            axes[1, 0].plot(st, hz["index_significant"][k], ":", color=colors[k], lw=1)
        axes[1, 0].set_title("index (dotted: λ < −1e-3·max|λ|)", fontsize=10)
    axes[1, 0].legend(fontsize=7, ncol=2)
    for ax in axes.ravel():
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(f"Hessian of the training objective — {run['name']}")
    fig.tight_layout()
    return fig


def symlog(x, c: float):
    """s = sign(x)·log10(1 + |x|/c)."""
    x = np.asarray(x, float)
    return np.sign(x) * np.log10(1.0 + np.abs(x) / c)


def symlog_inv(s, c: float):
    s = np.asarray(s, float)
    return np.sign(s) * c * (10.0 ** np.abs(s) - 1.0)


def quadrature_nodes(alpha, beta):
    """Nodes θ (P, k) and weights S_1j² (P, k) of per-probe tridiagonals (P, k), (P, k−1)."""
    alpha, beta = np.atleast_2d(np.asarray(alpha, float)), np.atleast_2d(np.asarray(beta, float))
    T = np.zeros(alpha.shape + alpha.shape[-1:])
    i = np.arange(alpha.shape[-1])
    T[:, i, i] = alpha
    T[:, i[:-1], i[1:]] = beta
    T[:, i[1:], i[:-1]] = beta
    bad = ~np.all(np.isfinite(T), axis=(-2, -1))  # a broken-down run: NaN nodes, no error
    T[bad] = np.eye(T.shape[-1])
    theta, S = np.linalg.eigh(T)
    theta[bad] = np.nan
    return theta, S[:, 0, :] ** 2


def slq_density(theta, w, norm2, s_grid, c: float, sigma: float, gauge: Optional[tuple] = None) -> np.ndarray:
    """Smoothed spectral density (per unit of s) on ``s_grid`` from quadrature nodes.

    ``theta``, ``w`` (P, k) from :func:`quadrature_nodes`, ``norm2`` (P,) the
    probes' squared norms. ``gauge = (n_gauge, dim, rayleigh (g,))`` adds the
    projected-out gauge modes back as mass n_gauge/dim. The result integrates
    to 1 over s (up to the grid's reach).
    """
    theta, w = np.atleast_2d(theta), np.atleast_2d(w)
    ok = np.all(np.isfinite(theta), axis=-1)
    if not ok.any():
        return np.full(np.shape(s_grid), np.nan)
    norm2 = np.broadcast_to(np.asarray(norm2, float), ok.shape)[ok]
    w = w[ok] * norm2[:, None] / norm2.sum()
    s = symlog(theta[ok], c)
    bumps = np.exp(-0.5 * ((s_grid[:, None] - s.ravel()[None, :]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    rho = bumps @ w.ravel()
    if gauge is not None and gauge[0] > 0:
        ng, dim, rq = gauge
        frac = ng / dim
        g = symlog(np.asarray(rq, float), c)
        gb = np.exp(-0.5 * ((s_grid[:, None] - g[None, :]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        rho = (1 - frac) * rho + frac * gb.mean(axis=1)
    return rho


def spectral_density_figure(run: dict, sigma: float = 0.05, n_grid: int = 400,
                            max_seeds: int = MAX_DENSITY_SEEDS) -> plt.Figure:
    """Density across traced steps: heatmap over (step, eigenvalue) on a symlog eigenvalue axis."""
    hz = _hessian(run)
    if "lanczos_alpha" not in hz:
        raise PlotError(f"{run.get('folder', 'run')}: hessian.npz holds no Lanczos tridiagonals")
    st = np.asarray(hz["steps"], float)
    alpha, beta = np.asarray(hz["lanczos_alpha"], float), np.asarray(hz["lanczos_beta"], float)
    S, T = alpha.shape[:2]
    norm2 = np.asarray(hz.get("lanczos_norm2", np.ones(alpha.shape[:3])), float)
    theta, w = quadrature_nodes(alpha.reshape(-1, alpha.shape[-1]), beta.reshape(-1, beta.shape[-1]))
    theta, w = theta.reshape(alpha.shape), w.reshape(alpha.shape)
    top = np.nanmax(np.abs(theta)) if np.isfinite(theta).any() else 1.0
    c = top * 1e-6  # linear within a millionth of the largest |eigenvalue|: six decades either side
    smax = symlog(top, c) * 1.05
    s_grid = np.linspace(-smax, smax, n_grid)
    lam = symlog_inv(s_grid, c)
    x_edges = np.concatenate([[st[0] - 0.5], 0.5 * (st[1:] + st[:-1]), [st[-1] + 0.5]]) if T > 1 else \
        np.array([st[0] - 0.5, st[0] + 0.5])
    y_edges = symlog_inv(np.concatenate([[s_grid[0]], 0.5 * (s_grid[1:] + s_grid[:-1]), [s_grid[-1]]]), c)
    seeds = _seeds(run)
    shown = list(range(min(S, max_seeds)))
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown) + 1.6, 4.6), squeeze=False, sharey=True,
                             layout="constrained")
    dens = np.zeros((len(shown), n_grid, T))
    for a, k in enumerate(shown):
        for t in range(T):
            gauge = None
            if "n_gauge" in hz and int(hz["n_gauge"][k, t]) > 0 and "gauge_rayleigh" in hz:
                gauge = (int(hz["n_gauge"][k, t]), int(hz["dim"][k, t]), hz["gauge_rayleigh"][k, t])
            dens[a, :, t] = slq_density(theta[k, t], w[k, t], norm2[k, t], s_grid, c, sigma, gauge)
    vmax = np.nanmax(dens) if np.isfinite(dens).any() else 1.0
    norm = LogNorm(vmin=max(vmax * 1e-5, 1e-300), vmax=vmax)
    mesh = None
    for a, k in enumerate(shown):
        ax = axes[0, a]
        mesh = ax.pcolormesh(x_edges, y_edges, np.maximum(dens[a], vmax * 1e-5), norm=norm, cmap="magma",
                             shading="flat")
        for key, ls in (("eig_max", "-"), ("eig_min", "--")):
            if key in hz:
                ax.plot(st, hz[key][k], ls, color="c", lw=0.8)
        ax.axhline(0, color="w", lw=0.5, alpha=0.6)
        ax.set_yscale("symlog", linthresh=c)
        ax.set_ylim(lam[0], lam[-1])
        ax.set_title(f"seed {seeds[k]}", fontsize=10)
        ax.set_xlabel("step")
    axes[0, 0].set_ylabel(f"eigenvalue (symlog, linear within ±{c:.1e})")
    fig.colorbar(mesh, ax=axes[0, :].tolist(), label="density per unit of symlog axis (SLQ, Gaussian-smoothed)")
    fig.suptitle(f"Hessian spectral density (lines: λmax, λmin) — {run['name']}", fontsize=10)
    return fig


def loss_vs_index_figure(run: dict) -> plt.Figure:
    """Training MSE against the index at every traced point, coloured by step (Dauphin et al. 2014)."""
    hz = _hessian(run)
    st = np.asarray(hz["steps"])
    idx = np.asarray(hz["index"], float)
    loss = _at_steps(run, "train_mse", st)
    S = idx.shape[0]
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for k in range(S):
        ax.plot(idx[k], _positive(loss[k]), "-", color="0.75", lw=0.6, zorder=1)
    sc = ax.scatter(idx.ravel(), _positive(loss.ravel()), c=np.broadcast_to(st, idx.shape).ravel(),
                    cmap="viridis", s=18, zorder=2)
    fig.colorbar(sc, ax=ax, label="step")
    ref = _reference(run, "truth_train_mse")
    if ref is not None:
        ax.axhline(ref, color="k", ls="--", lw=1, label="theoretical MSE (train)")
        ax.legend(fontsize=8)
    ax.set(yscale="log", xlabel="index (fraction of negative Hessian eigenvalues)", ylabel="train MSE",
           title=f"loss against index — {run['name']}")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- compare


def compare_figure(runs: Sequence[dict]) -> plt.Figure:
    """Runs side by side: train and validation MSE against each run's own steps, and
    validation MSE against wall time for all of them (median over seeds, band = min..max)."""
    R = len(runs)
    fig, axes = plt.subplots(2, R + 1, figsize=(4.2 * (R + 1), 7), squeeze=False)
    ref_val = None
    for j, run in enumerate(runs):
        h = run["history"]
        steps = _steps(run)
        colors = _colors(h["train_mse"].shape[0])
        for i, key in enumerate(("train_mse", "val_mse")):
            ax = axes[i, j]
            for k in range(h[key].shape[0]):
                ax.plot(steps, _positive(h[key][k]), color=colors[k], lw=0.8)
            ref = _reference(run, "truth_" + key)
            if ref is not None:
                ax.axhline(ref, color="k", ls="--", lw=1, label="theoretical")
            oracle = _reference(run, "oracle_" + key)
            if oracle is not None:
                ax.axhline(oracle, color="k", ls=":", lw=1, label="oracle optimum")
            ax.set(yscale="log", xlabel="step", ylabel=key.replace("_", " "))
            ax.grid(True, which="both", alpha=0.3)
        axes[0, j].set_title(run["name"], fontsize=9)
        if ref_val is None:
            ref_val = _reference(run, "truth_val_mse")
    axes[0, 0].legend(fontsize=7)
    for i, key in enumerate(("train_mse", "val_mse")):
        ax = axes[i, R]
        for j, (run, c) in enumerate(zip(runs, _colors(R))):
            h = run["history"]
            y = _positive(h[key])
            wall = np.nanmedian(np.asarray(h.get("wall_s", np.broadcast_to(_steps(run), y.shape)), float), axis=0)
            with np.errstate(all="ignore"):
                med, lo, hi = np.nanmedian(y, 0), np.nanmin(y, 0), np.nanmax(y, 0)
            ax.plot(wall, med, color=c, lw=1.2, label=run["name"].split(":")[0])
            ax.fill_between(wall, lo, hi, color=c, alpha=0.2)
        ref = _reference(runs[0], "truth_" + key)
        if ref is not None:
            ax.axhline(ref, color="k", ls="--", lw=1)
        ax.set(yscale="log", xlabel="wall time [s] (after compilation)", ylabel=key.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    axes[0, R].set_title("all runs against wall time\n(median over seeds, band: min–max)", fontsize=9)
    axes[0, R].legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- writing


def _save(fig: plt.Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_run(run: dict, out: Optional[str] = None, prefix: str = "") -> list:
    """Write a run's figures into ``out`` (default: its folder). Returns the paths written."""
    out = out or run["folder"]
    paths = [_save(loss_figure(run), os.path.join(out, prefix + "loss.png"))]
    fig = success_figure(run)
    if fig is not None:
        paths.append(_save(fig, os.path.join(out, prefix + "success.png")))
    if "cv" in run:
        paths.append(_save(cv_figure(run["cv"]), os.path.join(out, prefix + "cv.png")))
    if "hessian" in run:
        paths.append(_save(hessian_traces_figure(run), os.path.join(out, prefix + "hessian_traces.png")))
        if "lanczos_alpha" in run["hessian"]:
            paths.append(_save(spectral_density_figure(run), os.path.join(out, prefix + "spectral_density.png")))
        if "index" in run["hessian"]:
            paths.append(_save(loss_vs_index_figure(run), os.path.join(out, prefix + "loss_vs_index.png")))
    return paths


def plot_compare(runs: Sequence[dict], out: Optional[str] = None) -> str:
    out = out or runs[0]["folder"]
    return _save(compare_figure(runs), os.path.join(out, "compare.png"))


def _score(x) -> float:
    return np.nan if x is None else float(x)


def cv_figure(rec: dict) -> plt.Figure:
    """Mean fold held-out MSE of every setting of a cross-validation, the spread over folds, the choice.

    The x axis is the rank when the grid has several (else the first axis with
    several values, else the settings in order); one line per combination of
    the other axes. Error bars: one standard deviation over the folds; dots:
    the single folds. A failed setting (a non-finite fold score) has no point.
    """
    settings = rec["settings"]
    fold = np.vectorize(_score, otypes=[float])(np.asarray(rec["scores"]["val_mse"], dtype=object))
    mean = np.vectorize(_score, otypes=[float])(np.asarray(rec["scores"]["mean_val_mse"], dtype=object))
    std = np.vectorize(_score, otypes=[float])(np.asarray(rec["scores"]["std_val_mse"], dtype=object))
    # an axis per loss ({loss: values}, the default factor penalties): its values of every loss together
    axes = {a: list(dict.fromkeys(x for vs in v.values() for x in vs)) if isinstance(v, dict) else v
            for a, v in rec["axes"].items()}
    varied = [a for a, v in axes.items() if len(v) > 1]
    x_axis = "rank" if "rank" in varied else (varied[0] if varied else None)
    others = [a for a in varied if a != x_axis]
    lines = {}
    for g, s in enumerate(settings):
        lines.setdefault(tuple(s[a] for a in others), []).append(g)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    numeric = x_axis is not None and all(isinstance(v, (int, float)) for v in axes[x_axis])
    ticks = list(axes[x_axis]) if x_axis else list(range(len(settings)))
    pos = (lambda g: settings[g][x_axis] if numeric else ticks.index(settings[g][x_axis])) if x_axis else (lambda g: g)
    for colour, (key, members) in zip(_colors(len(lines)), lines.items()):
        x = np.asarray([pos(g) for g in members], float)
        label = ", ".join(f"{a} {v:g}" if isinstance(v, float) else f"{a} {v}" for a, v in zip(others, key)) or None
        ax.errorbar(x, mean[members], yerr=std[members], color=colour, marker="o", capsize=3, label=label)
        for g in members:
            ax.plot(np.full(fold.shape[0], pos(g)), fold[:, g], ".", color=colour, alpha=0.35)
    c = rec["choice"]["index"]
    if c is not None:
        ax.plot([pos(c)], [mean[c]], marker="*", markersize=16, color="k", linestyle="none",
                label="chosen: " + ", ".join(f"{a} {v}" for a, v in settings[c].items()))
    if not numeric:
        ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
    ax.set_xlabel(x_axis or "setting")
    ax.set_ylabel(f"held-out MSE on the fold (mean over {rec['k']} folds)")
    if np.all(fold[np.isfinite(fold)] > 0):
        ax.set_yscale("log")
    ax.set_title(f"{rec['k']}-fold cross-validation ({rec['solver']}, {len(rec['seeds'])} seeds, best seed per fold)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cv(folder: str, out: Optional[str] = None, prefix: str = "") -> str:
    """``cv.png`` from a folder's cv.json alone (a cross-validation whose refit is not there)."""
    return _save(cv_figure(load_cv(folder)), os.path.join(out or folder, prefix + "cv.png"))


__all__ = ["PlotError", "load", "load_cv", "cv_figure", "plot_cv", "loss_figure", "success_curve", "success_figure", "hessian_traces_figure", "spectral_density_figure",
           "loss_vs_index_figure", "compare_figure", "slq_density", "quadrature_nodes", "plot_run", "plot_compare"]


# --------------------------------------------------------------------------- success map


def success_map_figure(m: dict) -> plt.Figure:
    """The success map (``map.json`` of experiments/success_map.py): one row per (axis, value), one column per
    solver, colour = success rate, the count written in each cell; rows below the well-posed criterion (on
    average fewer than 2·r training entries per row or per column) hatched and marked ✗; cells not run grey."""
    entries, solvers, cells = m["axes"], m["solvers"], m["cells"]
    R, C = len(entries), len(solvers)
    rate = np.full((R, C), np.nan)
    text = [["not run"] * C for _ in range(R)]
    for i, e in enumerate(entries):
        for j, s in enumerate(solvers):
            r = cells[e["cell"]]["solvers"].get(s, {})
            if r.get("state") == "complete":
                rate[i, j] = r["rate"]
                text[i][j] = f"{r['n_success']}/{r['n_seeds']}"
            elif r.get("state") in ("resumable", "partial"):
                text[i][j] = "interrupted"
    fig, ax = plt.subplots(figsize=(2.6 + 1.5 * C, 1.2 + 0.42 * R))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")  # grey: not run
    im = ax.imshow(np.ma.masked_invalid(rate), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(R):
        for j in range(C):
            dark = np.isfinite(rate[i, j]) and rate[i, j] < 0.6
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color="w" if dark else "k")
    labels = []
    recipe_cell = m.get("plan", {}).get("recipe_cell")
    for i, e in enumerate(entries):
        c = cells[e["cell"]]
        ill = "well_posed" in c and not c["well_posed"]
        if ill:
            ax.add_patch(plt.Rectangle((-0.5, i - 0.5), C, 1, fill=False, hatch="///", edgecolor="r", lw=0))
        base = e["cell"] == recipe_cell
        labels.append(f"{e['axis']} {e['label']}" + (" (recipe)" if base else "") + (" ✗" if ill else ""))
    for i in range(1, R):  # a line between axes
        if entries[i]["axis"] != entries[i - 1]["axis"]:
            ax.axhline(i - 0.5, color="w", lw=3)
    ax.set_xticks(range(C), solvers)
    ax.xaxis.tick_top()
    ax.set_yticks(range(R), labels, fontsize=8)
    ax.set_title("success rate (final train MSE ≤ 1.01 × best known + floor)\n"
                 "hatched ✗: fewer than 2·r training entries per row or column on average", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03, label="success rate")
    fig.tight_layout()
    return fig


def plot_success_map(path: str, out: Optional[str] = None) -> str:
    """Draw ``success_map.png`` from a success map's ``map.json`` (a file or its folder) into ``out``
    (default: beside it). Returns the path written."""
    if os.path.isdir(path):
        path = os.path.join(path, "map.json")
    try:
        m = results.read_json(path)
        for key in ("axes", "solvers", "cells"):
            m[key]
    except FileNotFoundError:
        raise PlotError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlotError(f"{path}: not a success map ({type(e).__name__}: {e})") from None
    return _save(success_map_figure(m), os.path.join(out or os.path.dirname(os.path.abspath(path)), "success_map.png"))


__all__ += ["success_map_figure", "plot_success_map"]

"""experiments/plot.py and lrfactor.plots: figures from saved runs, nothing recomputed."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from lrfactor import cli, plots

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIGURES = ("loss.png", "success.png", "hessian_traces.png", "spectral_density.png", "loss_vs_index.png")


def _plot_main():
    spec = importlib.util.spec_from_file_location("plot_cli", os.path.join(ROOT, "experiments", "plot.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """A traced float32 Adam run through the CLI, and a copy of it labelled as Gauss-Newton without traces."""
    base = tmp_path_factory.mktemp("runs")
    adam = str(base / "adam")
    code = cli.main(["--solver", "adam", "--n", "40", "--m", "12", "--true-rank", "4", "--rank", "3",
                     "--steps", "6", "--batch-size", "64", "--seeds", "2", "--hessian-every", "2",
                     "--lanczos-steps", "20", "--slq-probes", "2", "--quiet", "--out", adam])
    jax.config.update("jax_enable_x64", True)
    assert code == 0
    gn = str(base / "gn")
    shutil.copytree(adam, gn)
    os.unlink(os.path.join(gn, "hessian.npz"))
    cfg_path = os.path.join(gn, "config.json")
    rec = json.load(open(cfg_path))
    rec["config"]["solver"] = "gauss_newton"
    json.dump(rec, open(cfg_path, "w"))
    return adam, gn


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


def test_plot_cli_writes_every_figure_of_a_traced_run(saved_runs, capsys):
    adam, _ = saved_runs
    assert _plot_main()([adam]) == 0
    for name in FIGURES:
        assert _is_png(os.path.join(adam, name)), name
    assert len(capsys.readouterr().out.splitlines()) == len(FIGURES)


def test_plot_cli_compares_runs_into_out(saved_runs, tmp_path):
    adam, gn = saved_runs
    out = str(tmp_path / "figs")
    assert _plot_main()([adam, gn, "--out", out]) == 0
    assert _is_png(os.path.join(out, "compare.png"))
    for name in FIGURES:
        assert _is_png(os.path.join(out, "adam-" + name))
    # the untraced run gets its loss figure only
    assert _is_png(os.path.join(out, "gn-loss.png"))
    assert not os.path.exists(os.path.join(out, "gn-hessian_traces.png"))


def test_plot_cli_bad_input_exits_2_with_one_line(saved_runs, tmp_path, capsys):
    adam, _ = saved_runs
    broken = str(tmp_path / "broken")
    shutil.copytree(adam, broken)
    with open(os.path.join(broken, "history.npz"), "wb") as f:
        f.write(b"truncated")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [([str(tmp_path / "missing")], "no such folder"), ([str(empty)], "config.json missing"),
             ([broken], "unreadable"), ([adam, str(tmp_path / "missing")], "no such folder"), ([], "RUN_DIR")]
    for args, msg in cases:
        code = _plot_main()(args)
        err = capsys.readouterr().err.strip()
        assert code == 2, args
        assert len(err.splitlines()) == 1 and msg in err and err.startswith("error:"), err


def test_plots_never_import_the_numerics():
    """Figures come from saved files: lrfactor.plots must not pull in jax (nothing can be recomputed)."""
    code = "import sys; import lrfactor.plots; assert 'jax' not in sys.modules, 'jax imported'"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_loss_figure_skips_the_first_50_steps_of_long_runs_and_marks_the_reference():
    S, T = 3, 301
    y = np.exp(-np.linspace(0, 5, T))[None] * np.arange(1, S + 1)[:, None]
    run = {"history": {"train_mse": y, "val_mse": 2 * y, "step": np.arange(T)},
           "summary": {"seeds": [0, 1, 2], "reference": {"truth_val_mse": [1e-4, 2e-4, 3e-4],
                                                           "truth_train_mse": [1e-4] * 3}},
           "config": {"config": {"solver": "adam"}}, "name": "adam"}
    fig = plots.loss_figure(run)
    train_ax, val_ax = fig.axes
    xs = [line.get_xdata() for line in val_ax.get_lines() if len(line.get_xdata()) > 2]
    assert len(xs) == S and all(x[0] == plots.SKIP and x[-1] == T - 1 for x in xs)
    refs = [line.get_ydata()[0] for line in val_ax.get_lines() if len(line.get_xdata()) == 2]
    assert 2e-4 in refs  # the median theoretical MSE
    run["history"] = {k: v[:, :80] if k != "step" else v[:80] for k, v in run["history"].items()}
    fig = plots.loss_figure(run)
    assert min(line.get_xdata()[0] for line in fig.axes[0].get_lines() if len(line.get_xdata()) > 2) == 0


def test_slq_density_is_a_normalized_smoothing_of_the_quadrature():
    rng = np.random.default_rng(0)
    k = 12
    alpha, beta = rng.normal(size=(3, k)), np.abs(rng.normal(size=(3, k - 1))) + 0.1
    theta, w = plots.quadrature_nodes(alpha, beta)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    T0 = np.diag(alpha[0]) + np.diag(beta[0], 1) + np.diag(beta[0], -1)
    np.testing.assert_allclose(theta[0], np.linalg.eigvalsh(T0), rtol=1e-12)
    c, sigma = 1e-3, 0.02
    s = np.linspace(-5, 5, 20001)
    norm2 = np.array([1.0, 2.0, 1.0])
    rho = plots.slq_density(theta, w, norm2, s, c, sigma)
    np.testing.assert_allclose(np.trapezoid(rho, s), 1.0, rtol=1e-6)
    neg = np.sum(norm2[:, None] * w * (theta < 0)) / norm2.sum()
    np.testing.assert_allclose(np.trapezoid(np.where(s < 0, rho, 0), s), neg, atol=1e-3)
    rho_g = plots.slq_density(theta, w, norm2, s, c, sigma, gauge=(2, 10, np.zeros(2)))
    np.testing.assert_allclose(np.trapezoid(rho_g, s), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.trapezoid(np.where(np.abs(s) < 0.1, rho_g - 0.8 * rho, 0), s), 0.2, rtol=1e-6)
    assert np.all(np.isnan(plots.quadrature_nodes(np.full((1, 3), np.nan), np.zeros((1, 2)))[0]))


def test_success_curve_counts_seeds_that_have_reached_their_own_oracle():
    # seed 0 reaches 1.01 × its oracle at step 2, seed 1 at step 4 then rises again
    # (it still counts: reached), seed 2 never does.
    train = np.array([[5.0, 2.0, 1.005, 1.0, 1.0],
                      [9.0, 8.0, 6.0, 5.0, 2.02],
                      [3.0, 3.0, 3.0, 3.0, 3.0]]) * np.array([[1.0], [2.0], [1.0]])
    train[1, -1] = 2.5
    train[1, 3] = 2.0
    run = {"history": {"train_mse": train, "val_mse": train, "step": np.arange(5)},
           "summary": {"seeds": [0, 1, 2], "reference": {"oracle_train_mse": [1.0, 2.0, 1.0]}},
           "config": {"config": {"solver": "gauss_newton"}}, "name": "gn"}
    steps, frac = plots.success_curve(run)
    np.testing.assert_allclose(frac, [0, 0, 1 / 3, 2 / 3, 2 / 3])
    fig = plots.success_figure(run)
    rate = fig.axes[1].get_lines()[0].get_ydata()
    np.testing.assert_allclose(rate, 100 * frac)
    del run["summary"]["reference"]
    assert plots.success_curve(run) is None and plots.success_figure(run) is None

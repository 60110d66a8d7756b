"""Run options that the configuration carries to the problem, the driver and the optimizers do what they say."""

import os

import jax
import numpy as np
import pytest

from lrfactor import cli, experiment
from lrfactor.config import RunConfig, resolve
from lrfactor.results import read_json, read_npz
from lrfactor.solvers import make_solver


@pytest.fixture(autouse=True)
def keep_x64():
    yield
    jax.config.update("jax_enable_x64", True)


def prepared(**kw):
    return experiment.prepare(resolve(RunConfig(**{"precision": 64, "seeds": 1, **kw})))


def test_synthetic_options_shape_the_problem():
    p = prepared(n=400, m=30, true_rank=5, rank=3, decay=1.5, observed=0.3, noise=0.0)
    V, train, W, H = (np.asarray(x)[0] for x in (p.problem.V, p.problem.train, p.truth.W, p.truth.H))
    assert V.shape == (400, 30) and W.shape == (400, 5) and H.shape == (30, 5)
    assert abs(train.mean() - 0.3) < 0.03  # 12,000 Bernoulli(0.3) draws: sd 0.004
    np.testing.assert_allclose(V, W @ H.T, rtol=1e-12)  # no noise: exactly the truth's product
    # the last component's scale is 10**-decay of the first's (medians of log-normal columns)
    ratio = np.log10(np.median(W[:, -1]) / np.median(W[:, 0]))
    assert abs(ratio + 1.5) < 0.25
    noisy = prepared(n=400, m=30, true_rank=5, rank=3, noise=0.2)
    resid = np.asarray(noisy.problem.V)[0] - np.asarray(noisy.truth.W)[0] @ np.asarray(noisy.truth.H)[0].T
    assert abs(resid.std() - 0.2) < 0.01


def test_seed_and_seeds_pick_the_draws():
    two = prepared(n=30, m=10, rank=2, seed=2, seeds=2)
    one = prepared(n=30, m=10, rank=2, seed=3, seeds=1)
    assert two.seeds == [2, 3] and one.seeds == [3]
    np.testing.assert_array_equal(np.asarray(two.problem.V)[1], np.asarray(one.problem.V)[0])
    assert not np.array_equal(np.asarray(two.problem.V)[0], np.asarray(two.problem.V)[1])


@pytest.mark.parametrize("precision, dtype", [(32, np.float32), (64, np.float64)])
def test_precision_sets_the_dtype(precision, dtype):
    assert np.asarray(prepared(n=30, m=10, rank=2, precision=precision).problem.V).dtype == dtype


def test_steps_chunk_and_quiet(tmp_path, capsys, monkeypatch):
    saves = []
    real = experiment._checkpoint
    monkeypatch.setattr(experiment, "_checkpoint", lambda *a, **k: (saves.append(1), real(*a, **k)))
    base = ["--solver", "hals", "--n", "30", "--m", "10", "--true-rank", "3", "--rank", "2", "--seeds", "2",
            "--steps", "7", "--ftol", "0"]
    out = str(tmp_path / "quiet")
    assert cli.main(base + ["--chunk", "3", "--quiet", "--out", out]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress bar
    assert read_json(os.path.join(out, "summary.json"))["final"]["steps"] == [7, 7]  # ftol 0: the whole budget
    assert read_npz(os.path.join(out, "history.npz"))["train_mse"].shape == (2, 8)  # the start and 7 steps
    assert len(saves) == 3  # a checkpoint after each chunk of 3 steps: 3, 6, 7
    assert cli.main(base + ["--out", str(tmp_path / "loud")]) == 0
    assert "step" in capsys.readouterr().err  # the progress bar counts steps on stderr


def test_optimizer_settings_reach_optax():
    sgd = make_solver(resolve(RunConfig(solver="sgd", momentum=0.5, lr=0.02)), {"n_train_max": 100})
    p = prepared(n=30, m=10, rank=2)
    problem = jax.tree.map(lambda x: x[0], p.problem)
    state = sgd.init(sgd.init_params(jax.random.PRNGKey(0), problem), problem, jax.random.PRNGKey(1))
    hyper = state.opt_state.hyperparams
    assert float(hyper["momentum"]) == 0.5 and float(hyper["learning_rate"]) == pytest.approx(0.02)
    rms = make_solver(resolve(RunConfig(solver="adam", optimizer="rmsprop")), {"n_train_max": 100})
    state = rms.init(rms.init_params(jax.random.PRNGKey(0), problem), problem, jax.random.PRNGKey(1))
    names = {type(s).__name__ for s in jax.tree.leaves(state.opt_state.inner_state,
                                                        is_leaf=lambda x: hasattr(x, "_fields"))}
    assert "ScaleByRmsState" in names

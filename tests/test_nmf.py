import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor import cli, losses
from lrfactor.factors import init_factors
from lrfactor.problems import Problem
from lrfactor.results import read_json, read_npz
from lrfactor.config import RunConfig, resolve
from lrfactor.solvers import make_solver
from lrfactor.solvers.nmf import make_hals, make_mu, numpy_hals
from tests.helpers import full_problem, small_problem

SOLVERS = {
    "hals": lambda **kw: make_hals(rank=kw.pop("rank"), **kw),
    "mu_frobenius": lambda **kw: make_mu(rank=kw.pop("rank"), loss="frobenius", **kw),
    "mu_kl": lambda **kw: make_mu(rank=kw.pop("rank"), loss="kl", **kw),
}


def run_steps(solver, params, problem, steps, batched=False):
    """Per-step objective (index 0 = start) and the final state, one compiled scan
    (vmapped over a leading axis of params and problem when ``batched``)."""

    def go(params, problem):
        state = solver.init(params, problem, None)

        def body(s, _):
            s = solver.step(s, problem)
            return s, solver.objective(s.params, problem)

        state, objs = jax.lax.scan(body, state, None, length=steps)
        return jnp.concatenate([solver.objective(params, problem)[None], objs]), state

    return jax.jit(jax.vmap(go) if batched else go)(params, problem)


def random_problems(rng, count):
    """``count`` random non-negative matrices of one random shape with random masks
    (no empty row or column), stacked, and a random rank."""
    n, m = int(rng.integers(3, 30)), int(rng.integers(3, 20))
    rank = int(rng.integers(1, min(n, m, 5) + 1))
    probs = []
    for _ in range(count):
        k = int(rng.integers(1, 5))
        V = rng.exponential(size=(n, k)) @ rng.exponential(size=(m, k)).T + 0.1 * rng.exponential(size=(n, m))
        train = rng.random((n, m)) < rng.uniform(0.3, 0.9)
        train[np.arange(n), np.arange(n) % m] = True
        train[np.arange(m) % n, np.arange(m)] = True
        probs.append(Problem(jnp.asarray(V), jnp.asarray(train), jnp.asarray(~train)))
    return jax.tree.map(lambda *x: jnp.stack(x), *probs), rank


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_sweep_lowers_its_own_loss(name):
    rng = np.random.default_rng(7)
    for draw in range(3):  # 3 random shapes × 3 random matrices and masks each
        problems, rank = random_problems(rng, 3)
        solver = SOLVERS[name](rank=rank, init="scaled" if draw % 2 else "keras")
        p0 = jax.vmap(solver.init_params)(jax.random.split(jax.random.PRNGKey(draw), 3), problems)
        objs, state = run_steps(solver, p0, problems, 40, batched=True)
        objs = np.asarray(objs)
        assert np.all(np.isfinite(objs))
        # Non-increasing at every sweep, up to rounding of the loss itself.
        assert np.all(np.diff(objs, axis=1) <= 1e-12 * objs[:, :-1]), (name, draw, np.diff(objs).max())
        assert np.all(objs[:, -1] < 0.9 * objs[:, 0]), (name, draw)
        # The loss the state tracks is the solver's objective.
        np.testing.assert_allclose(state.loss, objs[:, -1], rtol=1e-9)


def test_objectives_are_the_losses_they_minimise():
    problem, _ = small_problem(seed=2)
    p = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    np.testing.assert_allclose(make_hals(rank=3).objective(p, problem), losses.train_mse(p, problem), rtol=1e-14)
    np.testing.assert_allclose(make_mu(rank=3, loss="kl").objective(p, problem),
                               losses.kl_divergence(jnp.exp(p.A) @ jnp.exp(p.B).T, problem), rtol=1e-14)


def test_hals_fits_an_exact_nonnegative_rank_r_matrix():
    rng = np.random.default_rng(0)
    W0, H0 = rng.uniform(0.5, 1.5, (12, 3)), rng.uniform(0.5, 1.5, (9, 3))
    problem = full_problem(W0 @ H0.T)
    solver = make_hals(rank=3, init="scaled")
    p0 = solver.init_params(jax.random.PRNGKey(1), problem)
    _, state = run_steps(solver, p0, problem, 3000)
    P = np.exp(state.params.A) @ np.exp(state.params.B).T
    rel = np.linalg.norm(P - problem.V) / np.linalg.norm(problem.V)
    assert rel < 1e-8, rel


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_entries_off_the_training_mask_never_matter(name):
    problem, _ = small_problem(seed=3, n=15, m=9)
    solver = SOLVERS[name](rank=3)
    p0 = solver.init_params(jax.random.PRNGKey(0), problem)
    rng = np.random.default_rng(0)
    other = np.where(problem.train, problem.V, rng.exponential(5.0, problem.V.shape))
    other[~np.asarray(problem.train) & (rng.random(other.shape) < 0.3)] = np.nan
    changed = problem._replace(V=jnp.asarray(other))
    objs_a, a = run_steps(solver, p0, problem, 15)
    objs_b, b = run_steps(solver, p0, changed, 15)
    np.testing.assert_array_equal(a.params.A, b.params.A)
    np.testing.assert_array_equal(a.params.B, b.params.B)
    np.testing.assert_array_equal(objs_a, objs_b)


def numpy_mu(W, H, V, M, sweeps, loss, eps=1e-12):
    W, H = W.copy(), H.copy()
    Mf = M.astype(float)
    Vm = np.where(M, V, 0.0)
    for _ in range(sweeps):
        if loss == "frobenius":
            W = np.maximum(eps, W * (Vm @ H) / ((Mf * (W @ H.T)) @ H))
            H = np.maximum(eps, H * (Vm.T @ W) / ((Mf * (W @ H.T)).T @ W))
        else:
            W = np.maximum(eps, W * ((Vm / (W @ H.T)) @ H) / (Mf @ H))
            H = np.maximum(eps, H * ((Vm / (W @ H.T)).T @ W) / (Mf.T @ W))
    return W, H


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_sweeps_equal_a_plain_numpy_implementation(name):
    problem, _ = small_problem(seed=4, n=17, m=8, true_rank=4)
    solver = SOLVERS[name](rank=3)
    p0 = init_factors(jax.random.PRNGKey(5), problem, 3, "scaled")
    _, state = run_steps(solver, p0, problem, 7)
    V, M = np.asarray(problem.V), np.asarray(problem.train)
    W0, H0 = np.exp(np.asarray(p0.A)), np.exp(np.asarray(p0.B))
    if name == "hals":
        W, H = numpy_hals(W0, H0, V, M, 7)
    else:
        W, H = numpy_mu(W0, H0, V, M, 7, name.split("_")[1])
    np.testing.assert_allclose(state.W, W, rtol=1e-10)
    np.testing.assert_allclose(state.H, H, rtol=1e-10)
    np.testing.assert_allclose(state.params.A, np.log(W), rtol=1e-10, atol=1e-12)


def test_vmapped_hals_equals_a_loop():
    problems = [small_problem(seed=s, n=14, m=8)[0] for s in range(3)]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *problems)
    solver = make_hals(rank=3)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    p0 = jax.vmap(solver.init_params)(keys, batch)

    def go(p, problem):
        state = solver.init(p, problem, None)
        return jax.lax.scan(lambda s, _: (solver.step(s, problem), None), state, None, length=20)[0]

    batched = jax.jit(jax.vmap(go))(p0, batch)
    for k, problem in enumerate(problems):
        one = jax.jit(go)(jax.tree.map(lambda x: x[k], p0), problem)
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(one)):
            np.testing.assert_allclose(a[k], b, rtol=1e-10, atol=1e-13)


def test_floor_keeps_log_factors_finite_and_done_freezes_a_stall():
    # An exact fit stalls at rounding level: the relative-decrease test marks it done.
    rng = np.random.default_rng(1)
    problem = full_problem(rng.uniform(0.5, 1.5, (6, 2)) @ rng.uniform(0.5, 1.5, (5, 2)).T)
    solver = make_hals(rank=4, ftol=1e-10)  # rank above the truth: spare components go to the floor
    p0 = solver.init_params(jax.random.PRNGKey(0), problem)
    _, state = run_steps(solver, p0, problem, 2000)
    assert np.all(np.isfinite(state.params.A)) and np.all(np.isfinite(state.params.B))
    assert np.all(np.asarray(state.W) >= 1e-12) and np.all(np.asarray(state.H) >= 1e-12)
    assert bool(state.done)


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError, match="l2"):
        make_hals(rank=2, l2=1e-6)
    with pytest.raises(ValueError, match="loss"):
        make_mu(rank=2, loss="huber")
    with pytest.raises(ValueError, match="kl"):
        make_hals(rank=2, loss="kl")
    with pytest.raises(ValueError, match="eps"):
        make_mu(rank=2, eps=0.0)


@pytest.fixture
def keep_x64():
    yield
    jax.config.update("jax_enable_x64", True)


@pytest.mark.parametrize("args", [["--solver", "hals"], ["--solver", "mu", "--loss", "kl"]])
def test_cli_runs_write_factors(args, tmp_path, keep_x64):
    # A data file without true factors: no oracle reference to compute, the test stays fast.
    problem, _ = small_problem(seed=0, n=40, m=12, true_rank=4)
    data = str(tmp_path / "d.npz")
    np.savez(data, V=np.asarray(problem.V), train_mask=np.asarray(problem.train), val_mask=np.asarray(problem.val))
    out = str(tmp_path / "run")
    assert cli.main(args + ["--data", data, "--rank", "3", "--seeds", "2", "--steps", "30", "--out", out, "--quiet"]) == 0
    f = read_npz(f"{out}/factors.npz")
    assert f["W"].shape == (2, 40, 3) and f["H"].shape == (2, 12, 3)
    assert np.all(f["W"] > 0) and np.all(f["H"] > 0)
    s = read_json(f"{out}/summary.json")
    h = read_npz(f"{out}/history.npz")
    assert np.all(np.diff(h["objective"], axis=1) <= 1e-12 * h["objective"][:, :-1])
    np.testing.assert_allclose(s["final"]["train_mse"], h["train_mse"][:, -1])


def test_registry_builds_both():
    for solver, loss in (("hals", "frobenius"), ("mu", "frobenius"), ("mu", "kl")):
        cfg = resolve(RunConfig(solver=solver, loss=loss))
        assert cfg.l2 == 0.0
        assert make_solver(cfg, {"n_train_max": 10}).name == solver


def test_hals_start_is_the_lifted_hals_point_of_the_scaled_draw():
    """``init="hals"``: HALS_SWEEPS sweeps from the ``scaled`` draw of the same key, each
    entry lifted to HALS_LIFT × its column's mean; far closer to the data than that draw."""
    from lrfactor import factors

    problem, _ = small_problem(seed=3)
    key = jax.random.PRNGKey(4)
    p = init_factors(key, problem, 3, "hals")
    W, H = np.exp(p.A), np.exp(p.B)
    hals = make_hals(rank=3)
    _, state = run_steps(hals, init_factors(key, problem, 3, "scaled"), problem, factors.HALS_SWEEPS)
    for got, raw in ((W, np.asarray(state.W)), (H, np.asarray(state.H))):
        floor = factors.HALS_LIFT * raw.mean(axis=0)
        np.testing.assert_allclose(got, np.maximum(raw, floor), rtol=1e-12)
        assert np.all(got >= floor * (1 - 1e-12))
    scaled = init_factors(key, problem, 3, "scaled")
    assert losses.train_mse(p, problem) < 1e-2 * losses.train_mse(scaled, problem)


def test_hals_start_is_the_same_on_both_layouts():
    from lrfactor.problems import to_coo

    problem, _ = small_problem(seed=5)
    coo = to_coo(problem, chunk=7)
    a = init_factors(jax.random.PRNGKey(1), problem, 3, "hals")
    b = init_factors(jax.random.PRNGKey(1), coo, 3, "hals")
    np.testing.assert_allclose(a.A, b.A, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.B, b.B, rtol=1e-10, atol=1e-12)

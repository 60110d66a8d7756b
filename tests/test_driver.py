import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor import driver, experiment, layout
from lrfactor.config import RunConfig, resolve
from lrfactor.results import read_npz
from tests.helpers import killed_after_checkpoints, layout_config


def _cfg(**kw):
    base = dict(solver="gauss_newton", seeds=3, steps=6, chunk=3, n=40, m=12, true_rank=4, rank=3, precision=64)
    base.update(kw)
    return resolve(RunConfig(**base))


def _run(cfg):
    prep = experiment.prepare(cfg)
    solver, carry, _, _ = experiment.build(prep)
    return driver.run(solver, prep.problem, carry, steps=cfg.steps, chunk=cfg.chunk,
                      problem_axis=prep.problem_axis, progress=False)


def test_vmapped_batch_equals_seeds_one_at_a_time():
    for solver in ("gauss_newton", "adam"):
        cfg = _cfg(solver=solver, batch_size=64, steps=6)
        batch = _run(cfg)
        for k in range(cfg.seeds):
            one = _run(dataclasses.replace(cfg, seed=cfg.seed + k, seeds=1))
            np.testing.assert_allclose(batch.history["train_mse"][k], one.history["train_mse"][0], rtol=1e-9)
            np.testing.assert_allclose(batch.history["val_mse"][k], one.history["val_mse"][0], rtol=1e-9)
            # Batched and unbatched matmuls round differently; GN steps on the
            # near-symmetric start amplify that in the ill-determined directions
            # of the log-factors, not in the prediction.
            for a, b in zip(jax.tree.leaves(batch.carry.state.params), jax.tree.leaves(one.carry.state.params)):
                np.testing.assert_allclose(a[k], b[0], atol=1e-5)


def test_an_explicit_seed_list_draws_what_each_seed_draws_alone():
    cfg = _cfg(seeds=2)
    listed = experiment.prepare(cfg, seeds=[5, 2])
    assert listed.seeds == [5, 2]
    for k, seed in enumerate([5, 2]):
        alone = experiment.prepare(dataclasses.replace(cfg, seed=seed, seeds=1))
        for a, b in zip(jax.tree.leaves((listed.problem, listed.truth, listed.keys)),
                        jax.tree.leaves((alone.problem, alone.truth, alone.keys))):
            np.testing.assert_array_equal(a[k], b[0])


def test_second_call_does_not_recompile():
    cfg = _cfg()
    prep = experiment.prepare(cfg)
    solver, carry, _, _ = experiment.build(prep)
    advance = driver.make_chunk(solver, cfg.steps, cfg.chunk, 0)
    carry, _ = advance(carry, prep.problem)
    n = advance._cache_size()
    carry, _ = advance(carry, prep.problem)
    assert advance._cache_size() == n == 1


def test_done_seeds_are_frozen():
    cfg = _cfg(steps=40, chunk=5, ftol=0.2)  # loose tolerance: seeds stop early
    res = _run(cfg)
    done = res.history["done"]
    assert done[:, -1].all()
    for k in range(cfg.seeds):
        first = int(np.argmax(done[k]))
        assert np.all(res.history["train_mse"][k, first:] == res.history["train_mse"][k, first])
        assert int(res.carry.t[k]) == first  # history index = steps taken


def test_history_starts_at_initial_point_and_objective_never_rises():
    res = _run(_cfg(steps=9))
    assert res.history["train_mse"].shape[1] == 10
    assert np.all(np.diff(res.history["objective"], axis=1) <= 1e-15)


def test_compacting_the_running_seeds_changes_no_result():
    # Seeds stop at different steps (loose ftol); once half are done the chunk is
    # recompiled for the rest. Histories and final states equal the full batch's.
    # The float64 Schur solve: the float32 factor's rounding depends on the
    # batch size's kernels, and one refinement leaves it at ~1e-9 in ρ.
    cfg = _cfg(seeds=4, steps=60, chunk=2, ftol=0.05, schur_precision="full")
    prep = experiment.prepare(cfg)
    solver, carry, _, _ = experiment.build(prep)
    kw = dict(steps=cfg.steps, chunk=cfg.chunk, problem_axis=prep.problem_axis, progress=False)
    full = driver.run(solver, prep.problem, carry, compact=False, **kw)
    comp = driver.run(solver, prep.problem, carry, compact=True, **kw)
    assert full.batch_sizes == (4,) and len(comp.batch_sizes) > 1 and comp.batch_sizes[-1] < 4
    assert set(full.history) == set(comp.history)
    for k in full.history:
        if k == "wall_s":
            continue
        np.testing.assert_allclose(comp.history[k], full.history[k], rtol=1e-9, atol=0, err_msg=k)
    np.testing.assert_array_equal(comp.carry.t, full.carry.t)
    np.testing.assert_array_equal(comp.carry.state.done, full.carry.state.done)


def test_float32_run_is_judged_against_a_float64_oracle():
    cfg = _cfg(precision=32, seeds=2)
    jax.config.update("jax_enable_x64", False)
    try:
        prep32 = experiment.prepare(cfg)
        assert prep32.problem.V.dtype == jnp.float32
        ref32 = experiment.oracle(prep32)
    finally:
        jax.config.update("jax_enable_x64", True)
    # The same float32 data, cast up, polished in a float64 session.
    up = lambda x: jnp.asarray(np.asarray(x), jnp.float64) if np.asarray(x).dtype.kind == "f" else jnp.asarray(x)
    prep64 = prep32._replace(problem=jax.tree.map(up, prep32.problem), truth=jax.tree.map(up, prep32.truth))
    ref64 = experiment.oracle(prep64)
    for k in ("oracle_train_mse", "oracle_val_mse"):
        assert np.asarray(ref32[k]).dtype == np.float64
        np.testing.assert_allclose(ref32[k], ref64[k], rtol=1e-12)


def test_importing_lrfactor_gives_openblas_one_thread_unless_told_otherwise():
    import os
    import subprocess
    import sys

    code = "import os, lrfactor; print(os.environ.get('OPENBLAS_NUM_THREADS'))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, cwd=root, capture_output=True,
                                   text=True, check=True).stdout.strip()
    assert run(env) == "1"
    assert run({**env, "OPENBLAS_NUM_THREADS": "3"}) == "3"


# ----------------------------------------------------------------------------- coordinate lists


COO_RUN = dict(seeds=2, steps=6, chunk=3, n=40, m=12, true_rank=4, rank=3, precision=64)


@pytest.mark.parametrize("solver,kw", [
    ("gauss_newton", dict(linear_solver="schur_pcg", cg_iters=500, cg_tol=1e-14)),
    ("hals", {}),
    ("adam", dict(batch_size=64)),
])
def test_a_coordinate_list_run_equals_the_dense_run(solver, kw):
    runs, refs = {}, {}
    for lay in ("dense", "coo"):
        cfg = layout_config(solver=solver, layout=lay, **COO_RUN, **kw)
        prep = experiment.prepare(cfg)
        assert layout.is_coo(prep.problem) == (lay == "coo")
        solver_, carry, _, _ = experiment.build(prep)
        runs[lay] = driver.run(solver_, prep.problem, carry, steps=cfg.steps, chunk=cfg.chunk,
                               problem_axis=prep.problem_axis, progress=False)
        refs[lay] = experiment.references(prep)
    for k in ("train_mse", "val_mse", "objective"):
        np.testing.assert_allclose(runs["coo"].history[k], runs["dense"].history[k], rtol=1e-10, err_msg=k)
    np.testing.assert_array_equal(runs["coo"].carry.t, runs["dense"].carry.t)
    for k in refs["dense"]:  # the references too (the oracle of a small coordinate problem is polished densely)
        np.testing.assert_allclose(refs["coo"][k], refs["dense"][k], rtol=1e-8, err_msg=k)


def test_an_interrupted_coordinate_list_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    cfg = layout_config(solver="hals", layout="coo", **{**COO_RUN, "steps": 8, "chunk": 2})
    prep = experiment.prepare(cfg)
    full = str(tmp_path / "full")
    experiment.execute(cfg, full, progress=False, prep=prep)
    part = str(tmp_path / "part")
    with killed_after_checkpoints(monkeypatch, 2):  # killed after the second chunk was saved
        experiment.execute(cfg, part, progress=False, prep=prep)
    experiment.execute(cfg, part, resume=True, progress=False, prep=experiment.prepare(cfg))
    a, b = read_npz(os.path.join(full, "history.npz")), read_npz(os.path.join(part, "history.npz"))
    for k in ("train_mse", "val_mse", "objective", "at_floor"):
        np.testing.assert_array_equal(a[k], b[k])
    fa, fb = read_npz(os.path.join(full, "factors.npz")), read_npz(os.path.join(part, "factors.npz"))
    np.testing.assert_array_equal(fa["W"], fb["W"])
    assert fa["W"].shape == (2, 40, 3)


def test_layout_auto_follows_the_size_and_mlp_refuses_coordinates(monkeypatch):
    from lrfactor.problems import ProblemError

    assert layout.resolve_layout("auto", 1000, 100) == "dense"
    assert layout.resolve_layout("auto", 100_000, 10_000) == "coo"
    monkeypatch.setattr(layout, "DENSE_MAX_ENTRIES", 100)  # 40 x 12 is now "large"
    prep = experiment.prepare(layout_config(solver="hals", **COO_RUN))
    assert layout.is_coo(prep.problem)
    with pytest.raises(ProblemError, match="mlp"):
        experiment.prepare(layout_config(solver="mlp", layout="coo", **COO_RUN))
    with pytest.raises(ProblemError, match="layout"):
        experiment.prepare(layout_config(solver="hals", layout="csr", **COO_RUN))


def test_a_data_file_is_prepared_in_either_layout(tmp_path):
    from lrfactor.problems import to_dense
    from tests.helpers import small_problem

    problem, _ = small_problem(seed=0, n=30, m=10, true_rank=4)
    path = str(tmp_path / "d.npz")
    np.savez(path, V=np.asarray(problem.V), train_mask=np.asarray(problem.train), val_mask=np.asarray(problem.val))
    dense = experiment.prepare(layout_config(solver="hals", data=path, rank=3, layout="dense", seeds=2))
    coo = experiment.prepare(layout_config(solver="hals", data=path, rank=3, layout="coo", seeds=2))
    assert coo.problem_axis is None and layout.is_coo(coo.problem) and not layout.is_coo(dense.problem)
    for a, b in zip(to_dense(coo.problem), dense.problem):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    solver, carry, _, _ = experiment.build(coo)
    res = driver.run(solver, coo.problem, carry, steps=4, chunk=2, problem_axis=None, progress=False)
    assert res.history["train_mse"].shape == (2, 5) and np.all(np.diff(res.history["objective"], axis=1) <= 1e-15)

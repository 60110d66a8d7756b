import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor import experiment
from lrfactor.config import RunConfig, resolve
from lrfactor.results import load_run
from lrfactor.solvers import mlp
from tests.helpers import small_problem


def question_dims(in_dim, n_steps, scale):
    """The question's code (the practitioner's question, docs/design.md §1), verbatim but for the function wrapper."""
    if scale == "log":
        dims = np.exp(np.linspace(np.log(in_dim), 0, n_steps + 2)).round().astype(int)
    else:
        dims = np.linspace(in_dim, 1, n_steps + 2).round().astype(int)
    if n_steps > 0:
        for i in range(len(dims) - 1, 0, -1):
            if dims[i - 1] <= dims[i]:
                dims[i - 1] = dims[i] + 1
        dims = dims[1:-1]
        return list(dims)
    return []


@pytest.mark.parametrize("scale", ["log", "linear"])
def test_layer_widths_match_the_question(scale):
    for in_dim in (16, 6, 4):
        for n_steps in range(9):
            assert mlp.mlp_widths(in_dim, n_steps, scale) == question_dims(in_dim, n_steps, scale)
    # A few by hand (rank 8: 16 inputs); numpy rounds 8.5 to 8.
    assert mlp.mlp_widths(16, 3, "log") == [8, 4, 2]
    assert mlp.mlp_widths(16, 3, "linear") == [12, 8, 5]
    assert mlp.mlp_widths(16, 1, "log") == [4]
    # Many steps on few inputs: the de-duplication pushes widths up.
    assert mlp.mlp_widths(4, 5, "log") == [6, 5, 4, 3, 2]


def test_model_shapes_and_keras_initialization():
    problem, _ = small_problem(n=13, m=7)
    widths = mlp.mlp_widths(6, 3, "linear")
    p = mlp.init_mlp(jax.random.PRNGKey(0), problem, 3, widths)
    assert p.prod.shape == (13, 3) and p.store.shape == (7, 3)
    assert np.all(np.abs(p.prod) < 0.05) and np.all(np.abs(p.store) < 0.05)
    sizes = [6, *widths, 1]
    layers = [*p.hidden, p.out]
    assert [l.kernel.shape for l in layers] == list(zip(sizes[:-1], sizes[1:]))
    for l, (a, b) in zip(layers, zip(sizes[:-1], sizes[1:])):
        assert np.all(np.abs(l.kernel) <= np.sqrt(6 / (a + b)))
        assert np.all(l.bias == 0)
    assert all(np.all(bn.gamma == 1) and np.all(bn.beta == 0) for bn in p.norms)
    assert all(np.all(st.mean == 0) and np.all(st.var == 1) for st in p.stats)


def numpy_forward(p, i, j, train, valid=None):
    """The model written out with explicit concatenation, for a list of entries."""
    x = np.concatenate([np.asarray(p.prod)[i], np.asarray(p.store)[j]], axis=-1)
    stats = []
    for dense, bn, st in zip(p.hidden, p.norms, p.stats):
        z = x @ np.asarray(dense.kernel) + np.asarray(dense.bias)
        z = np.where(z > 0, z, np.expm1(np.minimum(z, 0)))
        if train:
            mean, var = z[valid].mean(0), z[valid].var(0)
            stats.append((0.99 * np.asarray(st.mean) + 0.01 * mean, 0.99 * np.asarray(st.var) + 0.01 * var))
        else:
            mean, var = np.asarray(st.mean), np.asarray(st.var)
        x = np.asarray(bn.gamma) * (z - mean) / np.sqrt(var + 1e-3) + np.asarray(bn.beta)
    return np.exp(x @ np.asarray(p.out.kernel) + np.asarray(p.out.bias))[:, 0], stats


def _perturbed(p, key):
    """Random non-default BatchNorm parameters and statistics, so the test sees them."""
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(key, len(leaves))
    leaves = [x + 0.3 * jax.random.uniform(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("n_steps", [0, 2])
def test_forward_matches_explicit_model(n_steps):
    problem, _ = small_problem(n=13, m=7)
    p = mlp.init_mlp(jax.random.PRNGKey(1), problem, 3, mlp.mlp_widths(6, n_steps, "log"))
    p = _perturbed(p, jax.random.PRNGKey(2))
    i, j = np.meshgrid(np.arange(13), np.arange(7), indexing="ij")
    # Inference: the dense (n, m) prediction uses the running statistics.
    ref, _ = numpy_forward(p, i.ravel(), j.ravel(), train=False)
    np.testing.assert_allclose(mlp.predict(p, problem), ref.reshape(13, 7), rtol=1e-12)
    # Training: batch statistics over the valid entries only; padding changes nothing.
    rows, cols = jnp.asarray(i.ravel()[:40]), jnp.asarray(j.ravel()[:40])
    valid = np.arange(40) < 29
    v = jnp.asarray(np.asarray(problem.V).ravel()[:40])
    sse, stats = mlp.entry_loss(p, rows, cols, v, jnp.asarray(valid))
    ref, ref_stats = numpy_forward(p, np.asarray(rows), np.asarray(cols), True, valid)
    np.testing.assert_allclose(sse, np.sum((ref[valid] - np.asarray(v)[valid]) ** 2), rtol=1e-12)
    for st, (mean, var) in zip(stats, ref_stats):
        np.testing.assert_allclose(st.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(st.var, var, rtol=1e-12)
    garbage = jnp.where(jnp.asarray(valid), rows, 12), jnp.where(jnp.asarray(valid), cols, 6)
    sse2, stats2 = mlp.entry_loss(p, *garbage, v, jnp.asarray(valid))
    np.testing.assert_allclose(sse2, sse, rtol=1e-13)
    for a, b in zip(jax.tree.leaves(stats2), jax.tree.leaves(stats)):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def _cfg(tmp_path, **kw):
    # A data file without true factors: no oracle reference to compute, the test stays fast.
    problem, _ = small_problem(seed=0, n=40, m=12, true_rank=4)
    data = str(tmp_path / "d.npz")
    np.savez(data, V=np.asarray(problem.V), train_mask=np.asarray(problem.train), val_mask=np.asarray(problem.val))
    base = dict(solver="mlp", seeds=2, steps=40, chunk=20, rank=3, precision=64, batch_size=16, data=data,
                out=str(tmp_path / "run"))
    base.update(kw)
    return resolve(RunConfig(**base))


def test_training_lowers_the_loss_and_writes_predictions(tmp_path):
    cfg = _cfg(tmp_path)
    assert cfg.lr == 3e-3 and cfg.l2 == 1e-6
    summary = experiment.execute(cfg, cfg.out, progress=False)
    run = load_run(cfg.out)
    h = run["history"]
    assert np.all(np.isfinite(h["train_mse"]))
    assert np.all(h["train_mse"][:, -1] < 0.3 * h["train_mse"][:, 0])
    # Keras' epoch loss (training mode, batch statistics of 16 entries) is noisy: compare averages.
    assert np.all(h["loss"][:, -5:].mean(axis=1) < 0.5 * h["loss"][:, 1])
    # No factors: the dense predictions are saved and scored like every solver's.
    assert "factors" not in run
    P = run["predictions"]["P"]
    prep = experiment.prepare(cfg)
    V, val = np.asarray(prep.problem.V), np.asarray(prep.problem.val)
    assert P.shape == (2, 40, 12) and np.all(P > 0)
    np.testing.assert_allclose(summary["final"]["val_mse"], np.sum(np.where(val, P - V, 0) ** 2, axis=(1, 2)) / val.sum(),
                               rtol=1e-10)


def test_running_statistics_stay_out_of_the_gradient(tmp_path):
    cfg = _cfg(tmp_path, steps=1, chunk=1, mlp_steps=2)
    prep = experiment.prepare(cfg)
    solver, carry, _, _ = experiment.build(prep)
    p0 = jax.tree.map(lambda x: x[0], carry.state.params)
    rows, cols = jnp.arange(10) % 40, jnp.arange(10) % 12
    g = jax.grad(lambda p: mlp.entry_loss(p, rows, cols, jnp.ones(10), jnp.ones(10, bool))[0])(p0)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g.stats))
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(g.hidden))
    # One epoch moves the running statistics (the trainer's update_state) and not to NaN.
    state = jax.jit(jax.vmap(solver.step, in_axes=(0, None)))(carry.state, prep.problem)
    for st in state.params.stats:
        assert np.all(np.isfinite(st.var)) and np.all(np.asarray(st.var) != 1.0)


def test_mlp_refuses_coordinate_lists():
    from lrfactor.solvers import make_solver
    from tests.helpers import layout_config

    with pytest.raises(ValueError, match="dense layout"):
        make_solver(layout_config(solver="mlp", layout="coo"), {"n_train_max": 100})
    with pytest.raises(ValueError, match="dense layout"):
        make_solver(layout_config(solver="mlp"), {"n_train_max": 100, "layout": "coo"})

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor import losses
from lrfactor.factors import Factors, init_factors, predict
from lrfactor.problems import (ProblemError, SyntheticConfig, check_problem, make_synthetic, masked_mse,
                               reference_scores)
from tests.helpers import small_problem


def test_synthetic_matches_question_recipe():
    cfg = SyntheticConfig()
    problem, truth = make_synthetic(jax.random.PRNGKey(0), cfg)
    assert problem.V.shape == (1000, 100) and truth.W.shape == (1000, 12)
    np.testing.assert_allclose(problem.V, truth.W @ truth.H.T, rtol=1e-12)
    # component k has scale 10**(-2k/11): median of log W[:, k] ≈ log(10**(-2k/11))
    med = np.median(np.log(np.asarray(truth.W)), axis=0)
    np.testing.assert_allclose(med, np.log(10.0 ** np.linspace(0, -2, 12)), atol=0.15)
    frac = float(problem.train.mean())
    assert 0.49 < frac < 0.51 and not bool(jnp.any(problem.train & problem.val))
    # the question's assertion on sufficient training data
    assert problem.train.sum(0).min() > np.sqrt(1000) and problem.train.sum(1).min() > np.sqrt(100)


def test_synthetic_is_pure_in_key_and_vmaps():
    cfg = SyntheticConfig(n=20, m=10, true_rank=3)
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    batch, _ = jax.vmap(lambda k: make_synthetic(k, cfg))(keys)
    for i, k in enumerate(keys):
        one, _ = make_synthetic(k, cfg)
        np.testing.assert_array_equal(batch.V[i], one.V)
        np.testing.assert_array_equal(batch.train[i], one.train)


def test_theoretical_mse_in_question_range():
    problem, truth = make_synthetic(jax.random.PRNGKey(0), SyntheticConfig())
    ref = reference_scores(problem, truth, 8)
    # the question printed 7.16e-05; about 6e-5 to 7e-5 depending on the draw (docs/design.md §1)
    assert 2e-5 < float(ref["truth_val_mse"]) < 2e-4


def test_masked_mse_closed_form_and_inf_safe():
    V = jnp.arange(6.0).reshape(2, 3)
    mask = jnp.array([[True, False, True], [False, True, False]])
    pred = V + jnp.array([[1.0, jnp.inf, -2.0], [jnp.nan, 3.0, 0.0]])
    assert float(masked_mse(pred, V, mask)) == pytest.approx((1 + 4 + 9) / 3)


def test_kl_zero_at_truth_and_positive_elsewhere():
    problem, truth = small_problem()
    p = Factors(jnp.log(truth.W), jnp.log(truth.H))
    assert abs(float(losses.kl_divergence(predict(p), problem))) < 1e-12
    q = Factors(p.A + 0.1, p.B)
    assert float(losses.kl_divergence(predict(q), problem)) > 1e-4


def test_l2_keras_semantics():
    p = Factors(jnp.ones((3, 2)), 2 * jnp.ones((4, 2)))
    assert float(losses.l2_penalty(p)) == 6 + 32
    problem, _ = small_problem()
    q = init_factors(jax.random.PRNGKey(0), problem, 2)
    assert float(losses.objective(q, problem, l2=0.5)) == pytest.approx(
        float(losses.train_mse(q, problem)) + 0.5 * float(losses.l2_penalty(q)))


def test_keras_init_range():
    problem, _ = small_problem()
    p = init_factors(jax.random.PRNGKey(0), problem, 4, "keras")
    assert float(jnp.max(jnp.abs(p.A))) <= 0.05 and float(jnp.max(jnp.abs(p.B))) <= 0.05


def test_residual_gradient_matches_finite_differences():
    problem, _ = small_problem()
    p = init_factors(jax.random.PRNGKey(1), problem, 2, "scaled")
    f = lambda a: losses.objective(Factors(a, p.B), problem, "kl", 1e-3)
    g = jax.grad(f)(p.A)
    e = jnp.zeros_like(p.A).at[2, 1].set(1.0)
    h = 1e-6
    fd = (f(p.A + h * e) - f(p.A - h * e)) / (2 * h)
    assert float(g[2, 1]) == pytest.approx(float(fd), rel=1e-6)


@pytest.mark.parametrize("bad, msg", [
    (dict(V=np.array([[np.nan, 1.0], [1.0, 1.0]])), "NaN or inf"),
    (dict(train=np.array([[False, False], [True, True]])), "empty rows"),
    (dict(train=np.array([[True, False], [True, False]])), "empty columns"),
    (dict(rank=3), "rank 3"),
    (dict(V=np.ones(4)), "2-D"),
])
def test_check_problem_rejects(bad, msg):
    args = dict(V=np.ones((2, 2)), train=np.ones((2, 2), bool), val=None, rank=1)
    args.update(bad)
    with pytest.raises(ProblemError, match=msg):
        check_problem(**args)


def test_a_coordinate_npz_loads_as_the_same_problem_as_its_dense_form(tmp_path):
    from lrfactor.experiment import problem_from_table
    from lrfactor.problems import CooProblem, to_dense
    from lrfactor.tables import read_table

    problem, truth = small_problem(seed=2, n=13, m=7)
    V, tr, va = (np.asarray(x) for x in (problem.V, problem.train, problem.val))
    np.savez(tmp_path / "dense.npz", V=V, train_mask=tr, val_mask=va, W_true=truth.W, H_true=truth.H)
    ti, tj = np.nonzero(tr)
    vi, vj = np.nonzero(va)
    rows, cols = np.concatenate([vi, ti]), np.concatenate([vj, tj])  # any order
    split = np.concatenate([np.ones(vi.size, int), np.zeros(ti.size, int)])
    np.savez(tmp_path / "coo.npz", rows=rows, cols=cols, vals=V[rows, cols], shape=np.array(V.shape), split=split,
             W_true=truth.W, H_true=truth.H)
    t1, t2 = read_table(str(tmp_path / "dense.npz")), read_table(str(tmp_path / "coo.npz"))
    dense = problem_from_table(t1, "dense", np.float64)
    coo = problem_from_table(t2, "coo", np.float64)
    assert isinstance(coo, CooProblem) and coo.shape == (13, 7)
    for a, b in zip(to_dense(coo), dense):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(t1.W_true, t2.W_true)
    bad = dict(rows=rows, cols=cols, vals=V[rows, cols], shape=np.array(V.shape), split=split)
    bad["rows"] = bad["rows"].copy()
    bad["rows"][0] = 99
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ProblemError, match="outside 0..12"):
        read_table(str(tmp_path / "bad.npz"))
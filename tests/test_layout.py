"""lrfactor.layout: the coordinate-list primitives against their dense forms, the
coordinate problem's construction, and every solver giving the same trajectory on
both layouts of one problem."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from lrfactor import layout, losses
from lrfactor.factors import Factors, init_factors
from lrfactor.problems import (ProblemError, SyntheticConfig, check_coo, from_coo, make_sparse_synthetic, pad_entries,
                               stack_coo, to_coo, to_dense)
from lrfactor.solvers import gauss_newton as gn
from lrfactor.solvers.first_order import make_first_order
from lrfactor.solvers.nmf import make_hals, make_mu
from tests.helpers import layout_config, small_problem


def _pair(n=13, m=7, seed=1, chunk=5, observed=0.6):
    problem, _ = small_problem(seed=seed, n=n, m=m, true_rank=4, observed=observed)
    return problem, to_coo(problem, chunk=chunk)


def _to_entries(coo, F):
    """A dense (n, m) array read at the coordinate list's training entries."""
    return jnp.asarray(np.asarray(F)[np.asarray(coo.rows), np.asarray(coo.cols)])


@pytest.mark.parametrize("chunk", [1, 5, 1000])  # one entry a chunk, a ragged last chunk, one chunk
def test_primitives_equal_their_dense_forms(chunk):
    problem, coo = _pair(chunk=chunk)
    n, m = layout.shape(problem)
    assert layout.shape(coo) == (n, m)
    rng = np.random.default_rng(0)
    X, Y = jnp.asarray(rng.normal(size=(n, 3))), jnp.asarray(rng.normal(size=(m, 3)))
    x, y = X[:, 0], Y[:, 1]
    F = jnp.where(problem.train, jnp.asarray(rng.normal(size=(n, m))), 0.0)
    Fc = _to_entries(coo, F)
    M = jnp.asarray(rng.normal(size=(n, 3, 3)))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    close(layout.entry_products(coo, X, Y), _to_entries(coo, X @ Y.T))
    close(layout.entry_products(coo, x, y), _to_entries(coo, np.outer(x, y)))
    close(layout.entry_products(coo, X, Y, "val"), np.asarray(X @ Y.T)[np.asarray(coo.val_rows), np.asarray(coo.val_cols)])
    for fn, Z in ((layout.row_sums, Y), (layout.row_sums, y), (layout.col_sums, X), (layout.col_sums, x),
                  (layout.row_gram, Y), (layout.col_gram, X)):
        close(fn(coo, Fc, Z), fn(problem, F, Z))
    close(layout.entry_quad(coo, M, Y), _to_entries(coo, layout.entry_quad(problem, M, Y)))
    close(layout.count(coo), layout.count(problem))
    close(layout.count(coo, "val"), layout.count(problem, "val"))
    p = Factors(0.3 * X, 0.3 * Y)
    close(losses.train_mse(p, coo), losses.train_mse(p, problem))
    close(losses.val_mse(p, coo), losses.val_mse(p, problem))
    close(losses.objective(p, coo, "kl", 0.01), losses.objective(p, problem, "kl", 0.01))
    # the transpose exchanges rows and columns on both layouts
    ct, pt = layout.transpose(coo), layout.transpose(problem)
    close(layout.row_sums(ct, Fc, X), layout.row_sums(pt, layout.transpose_entries(problem, F), X))
    close(layout.row_sums(ct, Fc, X), layout.col_sums(coo, Fc, X))


def test_entries_cut_into_shards_give_the_same_sums(shards=7):
    """Entry lists cut into shards (each swept into its own accumulator, the
    accumulators added) give the sums of one sequential sweep; the padding
    entries that make the length a multiple of the shard count are dropped
    whatever values their entry arrays hold."""
    _, coo = _pair(chunk=3)
    cut = pad_entries(coo, shards)
    N, Np = coo.rows.shape[0], cut.rows.shape[0]
    assert cut.shards == shards and Np % shards == 0 and 0 < Np - N < shards and cut.val_rows.shape[0] % shards == 0
    n, m = layout.shape(coo)
    rng = np.random.default_rng(2)
    X, Y = jnp.asarray(rng.normal(size=(n, 3))), jnp.asarray(rng.normal(size=(m, 3)))
    M = jnp.asarray(rng.normal(size=(n, 3, 3)))
    F = jnp.asarray(rng.normal(size=N))
    Fp = jnp.concatenate([F, jnp.full(Np - N, 1e3)])  # garbage on the padding entries
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    for fn, Z in ((layout.row_sums, Y), (layout.row_sums, Y[:, 0]), (layout.col_sums, X), (layout.col_sums, X[:, 1]),
                  (layout.row_gram, Y), (layout.col_gram, X)):
        close(fn(cut, Fp, Z), fn(coo, F, Z))
    close(layout.entry_products(cut, X, Y)[:N], layout.entry_products(coo, X, Y))
    close(layout.entry_products(cut, X, Y, "val")[: coo.val_rows.shape[0]], layout.entry_products(coo, X, Y, "val"))
    close(layout.entry_quad(cut, M, Y)[:N], layout.entry_quad(coo, M, Y))
    close(layout.count(cut), layout.count(coo))
    p = Factors(0.3 * X, 0.3 * Y)
    close(losses.objective(p, cut, "kl", 0.01), losses.objective(p, coo, "kl", 0.01))
    close(layout.row_sums(layout.transpose(cut), Fp, X), layout.col_sums(coo, F, X))


def test_gradients_through_the_chunked_sweeps_equal_the_dense_ones():
    problem, coo = _pair(chunk=4)
    p = init_factors(jax.random.PRNGKey(2), problem, 3, "scaled")
    for loss in ("frobenius", "kl"):
        gd = jax.grad(losses.objective)(p, problem, loss, 0.01)
        gc = jax.jit(jax.grad(losses.objective), static_argnums=2)(p, coo, loss, 0.01)
        for a, b in zip(gc, gd):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_padding_entries_count_nowhere():
    problem, coo = _pair(chunk=4)
    small, _ = small_problem(seed=9, n=13, m=7, true_rank=4, observed=0.3)
    batch = stack_coo([coo, to_coo(small, chunk=4)])
    assert batch.rows.shape[0] == 2 and int(jnp.sum(batch.rows[1] == 13)) > 0  # the second seed is padded
    p = init_factors(jax.random.PRNGKey(2), problem, 3, "scaled")
    got = jax.vmap(lambda q: (losses.train_mse(p, q), jax.grad(losses.objective)(p, q, "frobenius")))(batch)
    for k, prob in enumerate((problem, small)):
        np.testing.assert_allclose(got[0][k], losses.train_mse(p, prob), rtol=1e-12)
        for a, b in zip(got[1], jax.grad(losses.objective)(p, prob, "frobenius")):
            np.testing.assert_allclose(a[k], b, rtol=1e-11, atol=1e-14)


def test_construction_round_trips_and_sorts():
    problem, coo = _pair()
    back = to_dense(coo)
    for a, b in zip(back, problem):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rng = np.random.default_rng(1)
    perm = rng.permutation(coo.rows.shape[0])
    shuffled = from_coo(np.asarray(coo.rows)[perm], np.asarray(coo.cols)[perm], np.asarray(coo.vals)[perm],
                        coo.val_rows, coo.val_cols, coo.val_vals, (13, 7))
    for f in ("rows", "cols", "vals"):
        np.testing.assert_array_equal(getattr(shuffled, f), getattr(coo, f))


@pytest.mark.parametrize("case,msg", [
    ("dup", "duplicate training entry"), ("overlap", "both training and held-out"), ("range", "out of range"),
    ("nan", "NaN or inf"), ("empty", "empty rows"), ("rank", "rank 9"), ("float idx", "integers"),
])
def test_check_coo_names_the_problem(case, msg):
    rows, cols, vals = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), np.array([1.0, 2.0, 3.0, 4.0])
    vr, vc, vv = np.array([1]), np.array([0]), np.array([1.0])
    shape, rank = (3, 3), 2
    if case == "dup":
        rows, cols = np.array([0, 0, 1, 2]), np.array([0, 0, 1, 2])
    elif case == "overlap":
        vr, vc = np.array([0]), np.array([1])
    elif case == "range":
        cols = np.array([0, 1, 1, 3])
    elif case == "nan":
        vals = np.array([1.0, np.nan, 3.0, 4.0])
    elif case == "empty":
        shape = (4, 3)
    elif case == "rank":
        rank = 9
    elif case == "float idx":
        rows = rows.astype(float)
    with pytest.raises(ProblemError, match=msg):
        check_coo(rows, cols, vals, vr, vc, vv, shape, rank)
    check_coo(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), np.ones(4), np.array([1]), np.array([0]),
              np.ones(1), (3, 3), 2)
    # The sign of the values is the loss's and the solver's rule (lrfactor.losses.value_requirement), not the layout's.
    check_coo(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), -np.ones(4), np.array([1]), np.array([0]),
              -np.ones(1), (3, 3), 2)


def test_sparse_synthetic_generator_is_consistent():
    cfg = SyntheticConfig(n=300, m=50, true_rank=5, observed=0.1)
    sp, truth = make_sparse_synthetic(jax.random.PRNGKey(0), cfg, n_val=400)
    n, m = sp.shape
    assert (n, m) == (300, 50)
    lin = np.asarray(sp.rows, np.int64) * m + np.asarray(sp.cols)
    vlin = np.asarray(sp.val_rows, np.int64) * m + np.asarray(sp.val_cols)
    assert np.all(np.diff(lin) > 0)  # sorted row-major, no duplicates
    assert not np.intersect1d(lin, vlin).size  # held-out entries are unseen
    assert 0.9 * 0.1 * n * m < lin.size <= 0.1 * n * m
    V = np.asarray(truth.W @ truth.H.T)
    np.testing.assert_allclose(sp.vals, V[sp.rows, sp.cols], rtol=1e-13)
    np.testing.assert_allclose(sp.val_vals, V[sp.val_rows, sp.val_cols], rtol=1e-13)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_entry_uniform_is_the_dense_draw_at_the_listed_entries(dtype):
    problem, coo = _pair(n=37, m=23, chunk=7, observed=0.3)
    key = jax.random.split(jax.random.PRNGKey(5))[1]
    dense = np.asarray(layout.entry_uniform(problem, key, dtype))
    got = np.asarray(jax.jit(lambda k, p: layout.entry_uniform(p, k, dtype))(key, coo))
    np.testing.assert_array_equal(got, dense[np.asarray(coo.rows), np.asarray(coo.cols)])
    np.testing.assert_array_equal(dense.ravel(), np.asarray(jax.random.uniform(key, (37 * 23,), dtype)))


# ----------------------------------------------------------------------------- same trajectories on both layouts


def _trajectory(solver, params, problem, steps, key=None):
    def go(params, problem):
        state = solver.init(params, problem, key)

        def body(s, _):
            s = solver.step(s, problem)
            return s, (s.params, solver.objective(s.params, problem))

        return jax.lax.scan(body, state, None, length=steps)[1]

    return jax.jit(go)(params, problem)


def _assert_same(a, b, rtol=1e-10):
    (pa, fa), (pb, fb) = a, b
    np.testing.assert_allclose(fa, fb, rtol=rtol)
    for x, y in zip(pa, pb):
        scale = float(jnp.max(jnp.abs(y)))
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale)


GN_TIGHT = dict(rank=3, init="scaled", cg_iters=500, cg_tol=1e-14)


@pytest.mark.parametrize("shape", [(30, 12), (9, 20)])  # rows or columns eliminated
def test_gauss_newton_trajectories_agree_across_layouts_and_linear_solvers(shape):
    problem, coo = _pair(n=shape[0], m=shape[1], seed=4, chunk=16)
    p0 = init_factors(jax.random.PRNGKey(0), problem, 3, "scaled")
    pcg = gn.make_gauss_newton(linear_solver="schur_pcg", **GN_TIGHT)
    exact = gn.make_gauss_newton(linear_solver="dense_schur", schur_precision="full", **GN_TIGHT)
    on_coo = _trajectory(pcg, p0, coo, 15)
    _assert_same(on_coo, _trajectory(pcg, p0, problem, 15))  # the same solver on both layouts
    _assert_same(on_coo, _trajectory(exact, p0, problem, 15), rtol=1e-9)  # PCG at a tight tolerance = exact Schur


def test_kl_gauss_newton_agrees_across_layouts():
    problem, coo = _pair(n=20, m=9, seed=2, chunk=16)
    p0 = init_factors(jax.random.PRNGKey(1), problem, 3, "scaled")
    s = gn.make_gauss_newton(loss="kl", l2=1e-3, linear_solver="schur_pcg", **GN_TIGHT)
    _assert_same(_trajectory(s, p0, coo, 10), _trajectory(s, p0, problem, 10))


@pytest.mark.parametrize("name", ["hals", "mu_frobenius", "mu_kl"])
def test_nmf_trajectories_agree_across_layouts(name):
    problem, coo = _pair(n=17, m=8, seed=4, chunk=9)
    solver = make_hals(rank=3) if name == "hals" else make_mu(rank=3, loss=name.split("_")[1])
    p0 = init_factors(jax.random.PRNGKey(5), problem, 3, "scaled")
    _assert_same(_trajectory(solver, p0, coo, 30), _trajectory(solver, p0, problem, 30))


def test_adam_trajectory_agrees_across_layouts():
    problem, coo = _pair(n=40, m=12, seed=3, chunk=32)
    cfg = layout_config(solver="adam", rank=3, batch_size=32, precision=64)
    n_train = int(problem.train.sum())
    solver = make_first_order(cfg, n_train)
    p0 = init_factors(jax.random.PRNGKey(5), problem, 3, "keras")
    key = jax.random.PRNGKey(7)
    _assert_same(_trajectory(solver, p0, coo, 5, key), _trajectory(solver, p0, problem, 5, key))


def test_a_padded_batch_of_coordinate_problems_equals_each_alone():
    probs = [small_problem(seed=s, n=20, m=9, true_rank=4, observed=o)[0] for s, o in ((1, 0.6), (2, 0.4))]
    batch = stack_coo([to_coo(p, chunk=16) for p in probs])
    solver = gn.make_gauss_newton(linear_solver="schur_pcg", **GN_TIGHT)
    p0 = jax.vmap(lambda k, q: init_factors(k, q, 3, "scaled"), in_axes=(0, None))(
        jax.random.split(jax.random.PRNGKey(0), 2), probs[0])

    def run(p, q):
        s = solver.init(p, q)
        return jax.lax.scan(lambda s, _: (solver.step(s, q), None), s, None, length=8)[0].F

    batched = jax.jit(jax.vmap(run))(p0, batch)
    for k, prob in enumerate(probs):
        np.testing.assert_allclose(batched[k], jax.jit(run)(jax.tree.map(lambda x: x[k], p0), prob), rtol=1e-9)


# ----------------------------------------------------------------------------- memory


def _shapes(jaxpr, out):
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            if hasattr(v.aval, "shape"):
                out.add(tuple(v.aval.shape))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            _shapes(sub, out)
    return out


@pytest.mark.parametrize("solver", ["gauss_newton", "hals", "mu"])
def test_memory_scales_with_entries_not_matrix(solver):
    n, m, r, chunk = 3000, 2000, 4, 256
    cfg = SyntheticConfig(n=n, m=m, true_rank=5, observed=0.002)
    sp, _ = make_sparse_synthetic(jax.random.PRNGKey(0), cfg, n_val=100, chunk=chunk)
    N = sp.rows.shape[0]
    s = {"gauss_newton": lambda: gn.make_gauss_newton(rank=r), "hals": lambda: make_hals(rank=r),
         "mu": lambda: make_mu(rank=r)}[solver]()
    p = s.init_params(jax.random.PRNGKey(1), sp)
    state = jax.eval_shape(lambda p, q: s.init(p, q, None), p, sp)
    shapes = set()
    for f, a in ((s.step, (state, sp)), (lambda p, q: s.init(p, q, None), (p, sp))):
        _shapes(jax.make_jaxpr(f)(*a).jaxpr, shapes)
    N_pad = -(-N // chunk) * chunk
    big = [sh for sh in shapes if np.prod(sh) >= N]
    assert big  # the entry arrays themselves
    for sh in big:
        # Arrays as large as the entry list are per-row or per-column blocks
        # ((n, r, r), (m, r, r)) or a few entry arrays (the three backtracking
        # trials are one vmapped (3, N) array); never one r-vector per entry.
        # The sweeps' accumulators carry a leading shard axis (one shard here),
        # the restarts' initial factors a leading axis of restarts + 1.
        lead = (1, gn.RESTARTS_MAX + 1)
        assert sh[0] in (n, m) or (sh[0] in lead and sh[1] in (n, m)) or np.prod(sh) <= 3 * N_pad, sh
        assert np.prod(sh) * 50 < n * m, sh

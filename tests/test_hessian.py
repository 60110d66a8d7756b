"""lrfactor.hessian: HVPs against finite differences and jax.hessian, Lanczos and
SLQ against exact float64 eigh, the gauge zero modes, and the tracer end to end."""

import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.helpers import small_problem

from lrfactor import cli, hessian, losses
from lrfactor.factors import Factors, init_factors
from lrfactor.problems import Problem
from lrfactor.results import read_npz


@pytest.fixture(autouse=True)
def keep_x64():
    yield
    jax.config.update("jax_enable_x64", True)


def _objective(l2=0.0, loss="frobenius"):
    return lambda p, problem: losses.objective(p, problem, loss, l2)


def _point(n, m, rank, true_rank=4, seed=0, init="keras", observed=0.5):
    problem, truth = small_problem(seed, n=n, m=m, true_rank=true_rank, observed=observed)
    params = init_factors(jax.random.PRNGKey(seed + 1), problem, rank, init)
    return problem, truth, params


def _tracer(steps=80, probes=4):
    return jax.jit(hessian.make_tracer(_objective(), SimpleNamespace(lanczos_steps=steps, slq_probes=probes)))


def _without_gauge(eigs, r, value=0.0):
    """The exact spectrum with the r eigenvalues nearest the gauge eigenvalue removed."""
    return np.delete(eigs, np.argsort(np.abs(eigs - value))[:r])


def _random_like(key, params):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


# --------------------------------------------------------------------------- products


@pytest.mark.parametrize("loss,l2", [("frobenius", 0.0), ("frobenius", 1e-3), ("kl", 0.0)])
def test_hvp_matches_float64_finite_differences(loss, l2):
    problem, _, params = _point(13, 7, 3, init="scaled")
    obj = _objective(l2, loss)
    v = _random_like(jax.random.PRNGKey(5), params)
    Hv, _ = jax.flatten_util.ravel_pytree(hessian.hvp(obj, params, problem, v))
    grad = jax.grad(obj)
    h = 1e-5
    plus = jax.tree.map(lambda p, d: p + h * d, params, v)
    minus = jax.tree.map(lambda p, d: p - h * d, params, v)
    fd = (jax.flatten_util.ravel_pytree(grad(plus, problem))[0]
          - jax.flatten_util.ravel_pytree(grad(minus, problem))[0]) / (2 * h)
    assert Hv.dtype == jnp.float64
    np.testing.assert_allclose(Hv, fd, rtol=1e-6, atol=1e-8 * float(jnp.abs(fd).max()))


def test_hvp_and_linearized_matvec_match_jax_hessian():
    problem, _, params = _point(13, 7, 3)
    obj = _objective(1e-4)
    Hd = hessian.exact_hessian(obj, params, problem)
    v = _random_like(jax.random.PRNGKey(2), params)
    vf, _ = jax.flatten_util.ravel_pytree(v)
    Hv, _ = jax.flatten_util.ravel_pytree(hessian.hvp(obj, params, problem, v))
    g, matvec, _ = hessian.linearized_hessian(obj, params, problem)
    np.testing.assert_allclose(Hv, Hd @ vf, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(matvec(vf), Hd @ vf, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g, jax.flatten_util.ravel_pytree(jax.grad(obj)(params, problem))[0], rtol=1e-12)


def test_gauss_newton_product_is_jtj_and_the_hessian_at_an_exact_fit():
    problem, _, params = _point(13, 7, 3, init="scaled")
    l2 = 1e-3
    v = _random_like(jax.random.PRNGKey(3), params)
    vf, unravel = jax.flatten_util.ravel_pytree(v)
    x0, _ = jax.flatten_util.ravel_pytree(params)
    J = jax.jacfwd(lambda x: losses.residuals(unravel(x), problem)[problem.train])(x0)
    dense = 2.0 / problem.train.sum() * J.T @ (J @ vf) + 2 * l2 * vf
    Gv, _ = jax.flatten_util.ravel_pytree(hessian.factor_gnvp(params, problem, v, "frobenius", l2))
    np.testing.assert_allclose(Gv, dense, rtol=1e-10)
    # With zero residuals the second-order term vanishes: G = H (both losses).
    exact = Problem(jnp.exp(params.A) @ jnp.exp(params.B).T, problem.train, problem.val)
    for loss in ("frobenius", "kl"):
        Gv, _ = jax.flatten_util.ravel_pytree(hessian.factor_gnvp(params, exact, v, loss))
        Hv, _ = jax.flatten_util.ravel_pytree(hessian.hvp(_objective(0.0, loss), params, exact, v))
        np.testing.assert_allclose(Gv, Hv, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- gauge


def _fit_point(r, exact):
    """Log-factors of spread 0.5 and a problem that they fit exactly (or the synthetic one)."""
    problem, _ = small_problem(0, n=40, m=12, true_rank=3, observed=0.6)
    kA, kB = jax.random.split(jax.random.PRNGKey(4))
    params = Factors(0.5 * jax.random.normal(kA, (40, r)), 0.5 * jax.random.normal(kB, (12, r)))
    if exact:
        problem = problem._replace(V=jnp.exp(params.A) @ jnp.exp(params.B).T)
    return problem, params


def _zero_modes(eigs):
    return int(np.sum(np.abs(eigs) < 1e-12 * np.abs(eigs).max()))


def test_gauge_directions_are_exact_zero_modes_without_l2():
    r = 3
    problem, params = _fit_point(r, exact=False)
    Hd = hessian.exact_hessian(_objective(), params, problem)
    eigs = np.linalg.eigvalsh(np.asarray(Hd))
    scale = np.abs(eigs).max()
    assert _zero_modes(eigs) == r  # at a generic point: the r gauge directions and nothing else
    Z = hessian.gauge_basis(params)
    np.testing.assert_allclose(Z @ Z.T, np.eye(r), atol=1e-14)
    assert float(jnp.abs(Hd @ Z.T).max()) < 1e-12 * scale
    # At an exact fit (a critical point) the whole GL(r) orbit is critical: r² zero modes.
    problem, params = _fit_point(r, exact=True)
    assert _zero_modes(np.asarray(hessian.exact_spectrum(_objective(), params, problem))) == r * r


def test_gauge_zero_modes_are_kept_out_of_eig_min():
    # Rank 1 fitted exactly: H = G is PSD with the gauge as its only zero mode,
    # so without the projection the smallest eigenvalue would be that zero.
    problem, params = _fit_point(1, exact=True)
    eigs = np.asarray(hessian.exact_spectrum(_objective(), params, problem))
    scale = np.abs(eigs).max()
    assert _zero_modes(eigs) == 1 and eigs[1] > 1e-4 * scale
    # k = N − 1 steps: the whole complement. Projecting with I − ZZᵀ instead of
    # working in complement coordinates let rounding regrow the gauge here.
    out = jax.device_get(_tracer(steps=60)(params, problem, jax.random.PRNGKey(0)))
    np.testing.assert_allclose(out["eig_min"], eigs[1], rtol=1e-6)
    np.testing.assert_allclose(out["eig_max"], eigs[-1], rtol=1e-6)
    assert out["n_gauge"] == 1 and out["index"] == 0.0
    assert abs(out["gauge_rayleigh"][0]) < 1e-12 * scale and out["gauge_residual"][0] < 1e-12 * scale


def test_with_l2_the_gauge_directions_are_eigenvectors_of_eigenvalue_2l2():
    l2 = 1e-3
    problem, _, params = _point(13, 7, 3)
    Hd = hessian.exact_hessian(_objective(l2), params, problem)
    Z = hessian.gauge_basis(params)
    np.testing.assert_allclose(Hd @ Z.T, 2 * l2 * Z.T, atol=1e-12)
    assert hessian.gauge_basis({"w": jnp.zeros(3)}).shape == (0, 3)


# --------------------------------------------------------------------------- Lanczos / SLQ


def test_lanczos_extreme_eigenvalues_match_eigh():
    problem, _, params = _point(60, 20, 4)  # N = 320, near the symmetric (Keras) start
    r = params.A.shape[1]
    Hd = hessian.exact_hessian(_objective(), params, problem)
    full = np.linalg.eigvalsh(np.asarray(Hd))
    eigs = _without_gauge(full, r)
    assert eigs.min() < 0 < eigs.max()
    out = jax.device_get(_tracer()(params, problem, jax.random.PRNGKey(0)))
    np.testing.assert_allclose(out["eig_max"], eigs.max(), rtol=1e-6)
    np.testing.assert_allclose(out["eig_min"], eigs.min(), rtol=1e-6)
    # The bare Lanczos on the dense matrix, gauge included, gives the same extremes.
    lo, hi = jax.jit(lambda M: hessian.extreme_eigenvalues(lambda v: M @ v, jnp.ones(M.shape[0]), 80))(Hd)
    np.testing.assert_allclose([lo, hi], [full.min(), full.max()], rtol=1e-6)


def test_lanczos_tridiagonal_matches_matfree_and_stays_orthonormal():
    from matfree import decomp  # the test extra installs it

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 200))
    M = jnp.asarray((X + X.T) / 2)
    v0 = jnp.asarray(rng.standard_normal(200))
    k = 40
    alpha, beta, Q = jax.jit(lambda M, v: hessian.lanczos(lambda x: M @ x, v, k))(M, v0)
    ref = decomp.tridiag_sym(k, materialize=False, reortho="full")(lambda x: M @ x, v0)
    np.testing.assert_allclose(alpha, ref.J_small[0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(beta, ref.J_small[1], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(Q @ Q.T, np.eye(k), atol=1e-13)
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    np.testing.assert_allclose(Q @ M @ Q.T, T, atol=1e-12)
    np.testing.assert_allclose(Q[0], v0 / np.linalg.norm(v0), atol=1e-15)


def test_lanczos_through_an_early_invariant_subspace():
    """Three distinct eigenvalues: the Krylov space of any start closes after 3 steps."""
    values = np.repeat([-2.0, 0.5, 3.0], [10, 20, 10])
    U, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((40, 40)))
    M = jnp.asarray(U @ np.diag(values) @ U.T)
    k = 12
    alpha, beta, Q = jax.jit(lambda M, v: hessian.lanczos(lambda x: M @ x, v, k))(M, jnp.ones(40))
    assert np.all(np.isfinite(alpha)) and np.all(np.isfinite(beta))
    assert abs(beta[2]) < 1e-12  # the split after the first invariant subspace
    np.testing.assert_allclose(Q @ Q.T, np.eye(k), atol=1e-12)
    theta, S = hessian.tridiag_eigh(alpha, beta)
    # every Ritz value is an eigenvalue, and the probe's weights sit on its first block only
    assert np.min(np.abs(np.asarray(theta)[:, None] - np.array([-2.0, 0.5, 3.0])), axis=1).max() < 1e-10
    np.testing.assert_allclose(np.sum(np.asarray(S)[0, :] ** 2), 1.0, rtol=1e-12)
    weights = jax.device_get(hessian.slq_count(alpha[None], beta[None], jnp.asarray([40.0]), lambda t: (t < 0) * 1.0))
    np.testing.assert_allclose(weights, np.sum((U[:, :10].T @ np.ones(40)) ** 2), rtol=1e-10)  # = vᵀ 1[H<0] v


@pytest.mark.slow
def test_lanczos_extreme_eigenvalues_match_eigh_on_a_few_thousand_parameters():
    problem, _, params = _point(450, 100, 6, init="scaled")  # N = 3300
    eigs = _without_gauge(np.asarray(hessian.exact_spectrum(_objective(), params, problem)), 6)
    out = jax.device_get(_tracer()(params, problem, jax.random.PRNGKey(0)))
    np.testing.assert_allclose(out["eig_max"], eigs.max(), rtol=1e-6)
    np.testing.assert_allclose(out["eig_min"], eigs.min(), rtol=1e-6)
    # Most of this spectrum is a bulk within 1e-3·λmax of zero, finer than 80-step
    # quadrature resolves: the plain index is not determined there (hessian.py,
    # "Resolution"), the bulk's mass and the negative curvature outside it are.
    N, rel = len(eigs) + 6, 1e-3 * np.abs(eigs).max()
    assert abs(out["near_zero"] - np.sum(np.abs(eigs) <= rel) / N) < 0.02  # gauge modes apart
    assert abs(out["index_significant"] - np.sum(eigs < -rel) / N) < 0.02


def test_slq_index_matches_exact_fraction():
    problem, _, params = _point(150, 50, 4)  # N = 800
    eigs = np.asarray(hessian.exact_spectrum(_objective(), params, problem))
    exact = np.mean(eigs < -1e-12 * np.abs(eigs).max())
    out = jax.device_get(_tracer(probes=10)(params, problem, jax.random.PRNGKey(0)))
    assert 0.05 < exact < 0.95
    assert abs(out["index"] - exact) < 0.02, (out["index"], exact)
    rel = 1e-3 * np.abs(eigs).max()
    assert abs(out["index_significant"] - np.mean(eigs < -rel)) < 0.02
    assert abs(out["near_zero"] - np.mean(np.abs(eigs) <= rel)) < 0.02
    # the same estimate from the saved tridiagonals
    count = hessian.slq_count(out["lanczos_alpha"], out["lanczos_beta"], out["lanczos_norm2"],
                              lambda t: t < -out["index_tol"])
    np.testing.assert_allclose(count / out["dim"], out["index"], rtol=1e-10)


def test_float32_trace_is_accurate_to_its_precision():
    problem, _, params = _point(60, 20, 4)
    eigs = _without_gauge(np.asarray(hessian.exact_spectrum(_objective(), params, problem)), 4)
    f32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.float64 else a, t)
    out = jax.device_get(_tracer()(f32(params), f32(problem), jax.random.PRNGKey(0)))
    assert out["eig_max"].dtype == np.float32
    np.testing.assert_allclose(out["eig_max"], eigs.max(), rtol=1e-5)
    np.testing.assert_allclose(out["eig_min"], eigs.min(), rtol=1e-5)
    assert out["index_tol"] > 1e-6 * eigs.max()  # float32's flat directions are not called negative
    assert np.all(np.abs(out["gauge_rayleigh"]) < 1e-5 * eigs.max())


# --------------------------------------------------------------------------- tracer


def test_tracer_vmaps_over_seeds_like_one_at_a_time():
    problem, _, p0 = _point(20, 8, 2)
    _, _, p1 = _point(20, 8, 2, seed=7)
    params = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    trace = hessian.make_tracer(_objective(), SimpleNamespace(lanczos_steps=20, slq_probes=2))
    batch = jax.device_get(jax.jit(jax.vmap(trace, in_axes=(0, None, 0)))(params, problem, keys))
    for s, p in enumerate((p0, p1)):
        one = jax.device_get(jax.jit(trace)(p, problem, keys[s]))
        for k in ("eig_max", "eig_min", "index", "grad_norm", "A"):
            np.testing.assert_allclose(batch[k][s], one[k], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("solver", ["gauss_newton", pytest.param("adam", marks=pytest.mark.slow)])
def test_cli_writes_hessian_npz_with_contract_keys(tmp_path, solver):
    out = str(tmp_path / "run")
    args = ["--solver", solver, "--n", "40", "--m", "12", "--true-rank", "4", "--rank", "3", "--steps", "4",
            "--quiet", "--hessian-every", "2", "--seeds", "2", "--lanczos-steps", "20", "--slq-probes", "3",
            "--out", out]
    if solver == "adam":
        args += ["--batch-size", "64"]  # float32, the question's precision
    assert cli.main(args) == 0
    hz = read_npz(os.path.join(out, "hessian.npz"))
    S, T, n, m, r = 2, 3, 40, 12, 3
    np.testing.assert_array_equal(hz["steps"], [0, 2, 4])
    for key in ("eig_max", "eig_min", "index", "index_significant", "near_zero", "grad_norm", "grad_top_share",
                "n_gauge", "objective"):
        assert hz[key].shape == (S, T), key
        assert np.all(np.isfinite(hz[key])), key
    assert hz["A"].shape == (S, T, n, r) and hz["B"].shape == (S, T, m, r)
    assert hz["lanczos_alpha"].shape == (S, T, 3, 20) and hz["lanczos_beta"].shape == (S, T, 3, 19)
    assert hz["gauge_rayleigh"].shape == (S, T, r)
    assert np.all(hz["n_gauge"] == r) and np.all((0 <= hz["index"]) & (hz["index"] <= 1))
    assert np.all(hz["eig_min"] <= hz["eig_max"])
    assert hz["eig_max"].dtype == (np.float32 if solver == "adam" else np.float64)
    # the last trace is taken at the final parameters
    fac = read_npz(os.path.join(out, "factors.npz"))
    np.testing.assert_allclose(np.exp(hz["A"][:, -1]), fac["W"], rtol=1e-6)
    np.testing.assert_allclose(np.exp(hz["B"][:, -1]), fac["H"], rtol=1e-6)


def test_tracer_and_gauss_newton_product_on_coordinate_lists_equal_dense():
    from lrfactor.problems import to_coo

    problem, _, params = _point(20, 8, 2, init="scaled")
    coo = to_coo(problem, chunk=16)
    trace = jax.jit(hessian.make_tracer(_objective(1e-3), SimpleNamespace(lanczos_steps=10, slq_probes=2)))
    key = jax.random.PRNGKey(0)
    a, b = jax.device_get(trace(params, problem, key)), jax.device_get(trace(params, coo, key))
    for k in ("objective", "eig_max", "eig_min", "index", "grad_norm", "lanczos_alpha", "lanczos_beta"):
        np.testing.assert_allclose(b[k], a[k], rtol=1e-8, atol=1e-12, err_msg=k)
    v = _random_like(jax.random.PRNGKey(3), params)
    for loss in ("frobenius", "kl"):
        gd = hessian.factor_gnvp(params, problem, v, loss, 1e-3)
        gc = hessian.factor_gnvp(params, coo, v, loss, 1e-3)
        for x, y in zip(gc, gd):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13)

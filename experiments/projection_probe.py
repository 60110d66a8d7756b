"""Is a stuck run's fit hard to find, or only its non-negative factors? Variable projection from its saved point.

    python experiments/projection_probe.py RUN [--seeds 0,1] [--iters 60]

For each seed of a finished synthetic ``run.py`` folder (frobenius loss, no
penalty, dense masks; the problem is drawn again from the run's config):

- **oracle**: the oracle's factors (Levenberg–Marquardt in log space, float64,
  polished from the truncated truth as ``lrfactor.experiment.oracle`` does);
- **free**: variable projection from the run's saved factors with the signs
  of W and H left free. W is eliminated exactly (per row, the least-squares
  fit to the observed entries given H), and H takes Levenberg–Marquardt steps
  on the reduced Gauss-Newton system C − Bᵀ A⁻¹ B (Kaufman's approximation,
  Marquardt damping; Golub & Pereyra 2003, Hong, Zach & Fitzgibbon 2017).
  Printed: its train MSE against the oracle's, the distance of its product
  W Hᵀ from the oracle's over the whole matrix, and its most negative entry;
- **cone**: the same steps with the factors kept non-negative: each row of W
  a non-negative least-squares fit (``scipy.optimize.nnls``), H's step on the
  variables not held at zero by an outward gradient, then projected onto
  H ≥ 0 (a projected variable projection);
- **mixing**: how the run's columns are made of the oracle's: the run's
  W ≈ W_oracle · G, and per oracle component the number of run columns that
  take more than a quarter of their weight from it, next to the
  components' scales ‖W_k‖·‖H_k‖ in both.

If *free* reaches the oracle's product in a few dozen steps while *cone*
stays where the run stopped, the fit itself is easy to find and what holds
the run is the non-negative representation of it.

Prints markdown. Dense float64 reference algebra (an (m·r)² reduced system and
an n × m × m intermediate): for the question's sizes, not for large problems.
"""

from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from lrfactor import cli  # noqa: E402


def reduced_system(W, H, M, V, free=None):
    """(S, g, mse): Kaufman's reduced Gauss-Newton matrix on H with W eliminated, the gradient on H, the train MSE.

    ``free`` (n, r) 0/1 marks W's entries that the elimination may move (all
    by default); the others stay fixed, as at an NNLS solution's zeros.
    """
    import jax.numpy as jnp

    n, m = M.shape
    r = H.shape[1]
    R = M * (W @ H.T - V)
    free = jnp.ones_like(W) if free is None else free
    F = free[:, :, None] * free[:, None, :]
    A = jnp.einsum("ij,ja,jb->iab", M, H, H) * F + jnp.eye(r) * (1 - free)[:, :, None]
    Ainv = jnp.linalg.inv(A) * F
    Q = jnp.einsum("ja,iab,kb->ijk", H, Ainv, H)  # H_j A_i⁻¹ H_k per row i
    T = jnp.einsum("ij,ik,ijk,ia,ib->jakb", M, M, Q, W, W).reshape(m * r, m * r)
    C = jnp.einsum("ij,ia,ib->jab", M, W, W)
    Cb = jnp.zeros((m, r, m, r), W.dtype).at[jnp.arange(m), :, jnp.arange(m), :].set(C).reshape(m * r, m * r)
    g = jnp.einsum("ij,ia->ja", R, W).reshape(-1)
    return Cb - T, g, jnp.sum(R**2) / jnp.sum(M)


def ls_rows(H, M, V):
    """Per row, the least-squares W_i given H on the row's observed entries (signs free)."""
    import jax.numpy as jnp

    A = jnp.einsum("ij,ja,jb->iab", M, H, H)
    b = jnp.einsum("ij,ij,ja->ia", M, V, H)
    return jnp.linalg.solve(A, b[..., None])[..., 0]


def nnls_rows(H, M, V):
    """Per row, the non-negative least-squares W_i given H ≥ 0."""
    from scipy.optimize import nnls

    H = np.asarray(H)
    W = np.zeros((M.shape[0], H.shape[1]))
    for i in range(M.shape[0]):
        o = M[i] > 0
        W[i] = nnls(H[o], V[i, o], maxiter=50 * H.shape[1])[0]
    return W


def varpro(H, M, V, iters: int, cone: bool):
    """Levenberg–Marquardt on H with W eliminated; ``cone``: W by NNLS and H projected onto H ≥ 0. Returns (W, H)."""
    import jax
    import jax.numpy as jnp

    system = jax.jit(reduced_system)
    solve_w = (lambda H: nnls_rows(H, np.asarray(M), np.asarray(V))) if cone else jax.jit(
        lambda H: ls_rows(H, M, V))
    mse = lambda W, H: float(jnp.sum((M * (W @ H.T - V)) ** 2) / jnp.sum(M))
    H = np.asarray(H)
    W = np.asarray(solve_w(H))
    f, lam = mse(W, H), 1e-6
    for _ in range(iters):
        free = (W > 0).astype(float) if cone else None
        S, g, _ = (np.asarray(x) for x in system(jnp.asarray(W), jnp.asarray(H), M, V, free))
        held = (H.ravel() <= 0) & (g > 0) if cone else np.zeros(g.shape, bool)  # at the bound, pushed outward
        d = np.diag(S).copy()
        d = np.maximum(d, 1e-12 * d.max())
        K = S + lam * np.diag(d)
        K[held, :], K[:, held] = 0.0, 0.0
        K[held, held] = 1.0
        gg = np.where(held, 0.0, g)
        step = -np.linalg.solve(K, gg).reshape(H.shape)
        Hn = np.maximum(H + step, 0.0) if cone else H + step
        Wn = np.asarray(solve_w(Hn))
        fn = mse(Wn, Hn)
        pred = (-(gg @ step.ravel()) - 0.5 * step.ravel() @ S @ step.ravel()) / float(np.sum(M))
        if np.isfinite(fn) and fn < f:
            rho = (f - fn) / max(pred, 1e-300)
            H, W, f = Hn, Wn, fn
            lam = max(lam * max(1 / 3, 1 - (2 * min(rho, 1.0) - 1) ** 3), 1e-15)
        else:
            lam *= 4
    return W, H


@cli.one_line_errors
def main(argv=None) -> int:
    p = cli.Parser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of the run (default all)")
    p.add_argument("--iters", type=int, default=60, help="variable-projection iterations per variant")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error(f"--iters {args.iters}: must be >= 1")
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from lrfactor.experiment import prepare, truth_start
    from lrfactor.results import load_finished
    from lrfactor.solvers.gauss_newton import make_gauss_newton

    try:
        run, cfg, want = load_finished(args.run, args.seeds)
    except ValueError as e:  # ConfigError too
        p.error(str(e))
    if cfg.data is not None or cfg.loss != "frobenius" or cfg.reg or cfg.l2:
        p.error(f"{args.run}: not a run on the synthetic problem with the frobenius loss and no penalty")
    seeds = list(run["summary"]["seeds"])
    prep = prepare(dataclasses.replace(cfg, layout="dense", precision=64), seeds=want)
    fac = np.load(os.path.join(args.run, "factors.npz"))
    polish = make_gauss_newton(loss="frobenius", rank=cfg.rank, lambda0=1e-6, ftol=1e-10, gtol=1e-12, xtol=1e-10,
                               schur_precision="full", max_step=0.0, backtrack=False, restarts=0)
    print(f"{args.run}: {args.iters} variable-projection iterations per variant\n")
    print("| seed | run | oracle | free: train MSE | free: ‖P − P_oracle‖ / ‖P_oracle‖ | free: least entry / column max "
          "| cone: train MSE | run columns per oracle component | component scales: oracle / run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, s in enumerate(want):
        i = seeds.index(s)
        prob = jax.tree.map(lambda x: x[k], prep.problem)
        truth = jax.tree.map(lambda x: x[k], prep.truth)
        M, V = prob.train.astype(jnp.float64), prob.V
        if M.shape[0] < M.shape[1]:  # eliminate the longer side
            M, V = M.T, V.T
            W0, H0 = np.asarray(fac["H"][i]), np.asarray(fac["W"][i])
        else:
            W0, H0 = np.asarray(fac["W"][i]), np.asarray(fac["H"][i])
        step = jax.jit(lambda st, prob=prob: polish.step(st, prob))
        st = polish.init(truth_start(truth, cfg.rank), prob)
        for _ in range(40):
            st = step(st)
        Wo, Ho = np.exp(np.asarray(st.params.A)), np.exp(np.asarray(st.params.B))
        if prob.V.shape[0] < prob.V.shape[1]:
            Wo, Ho = Ho, Wo
        mse = lambda W, H: float(jnp.sum((M * (W @ H.T - V)) ** 2) / jnp.sum(M))
        f0, fo = mse(W0, H0), mse(Wo, Ho)
        Wf, Hf = varpro(H0, M, V, args.iters, cone=False)
        Wc, Hc = varpro(H0, M, V, args.iters, cone=True)
        Po = Wo @ Ho.T
        dist = np.linalg.norm(Wf @ Hf.T - Po) / np.linalg.norm(Po)
        least = min(float(np.min(X / np.max(np.abs(X), axis=0))) for X in (Wf, Hf))
        G = np.linalg.lstsq(Wo, W0, rcond=None)[0]  # W0 ≈ Wo G: column j of the run from the oracle's
        share = np.abs(G) * np.linalg.norm(Wo, axis=0)[:, None]
        share = share / share.sum(axis=0, keepdims=True)
        per = (share > 0.25).sum(axis=1)
        so = np.linalg.norm(Wo, axis=0) * np.linalg.norm(Ho, axis=0)
        sr = np.sort(np.linalg.norm(W0, axis=0) * np.linalg.norm(H0, axis=0))[::-1]
        order = np.argsort(-so)
        print(f"| {s} | {f0:.3g} | {fo:.3g} | {mse(Wf, Hf):.3g} | {dist:.2g} | {least:.2g} | {mse(Wc, Hc):.3g} "
              f"| {' '.join(str(int(c)) for c in per[order])} "
              f"| {' '.join(f'{x:.2g}' for x in so[order])} / {' '.join(f'{x:.2g}' for x in sr)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One Levenberg-Marquardt step from a saved fit, for a range of damping λ: what the damping holds back.

    python experiments/damping_probe.py RUN [--seeds 0,1] [--schur-precision full]

For each seed of a finished synthetic ``run.py`` folder the problem is drawn
again from the run's config, the saved factors are the point, and one step
of the run's Gauss-Newton solver (no backtracking, no restarts) is taken
from it with λ = 10⁻², 10⁻³, ..., 10⁻¹⁰ times the mean diagonal of JᵀJ.
Printed per λ: the actual decrease of the objective F over the decrease the
Gauss-Newton model predicts (the gain ratio ρ; 1 where the model is exact),
the relative decrease of the train MSE, and max|Δ| in log space.
Shows whether the run's own λ is what keeps it from the undamped Gauss-Newton
step (a far larger decrease at smaller λ with ρ near 1) or whether the model
fails there (ρ far from 1, or an increase: the valley curves away).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from lrfactor import cli  # noqa: E402


@cli.one_line_errors
def main(argv=None) -> int:
    p = cli.Parser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of the run (default all)")
    p.add_argument("--schur-precision", default=None, choices=("mixed", "full"), help="default: the run's")
    args = p.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from lrfactor import layout
    from lrfactor.experiment import prepare
    from lrfactor.factors import Factors
    from lrfactor.results import load_finished
    from lrfactor.solvers import blocks as bk
    from lrfactor.solvers.gauss_newton import make_gauss_newton

    try:
        run, cfg, want = load_finished(args.run, args.seeds)
    except ValueError as e:  # ConfigError too
        p.error(str(e))
    if cfg.solver != "gauss_newton" or cfg.data is not None or cfg.loss != "frobenius":
        p.error(f"{args.run}: not a gauss_newton run on the synthetic problem with the frobenius loss")
    seeds = list(run["summary"]["seeds"])
    prep = prepare(cfg, seeds=want)
    fac = np.load(os.path.join(args.run, "factors.npz"))
    solver = make_gauss_newton(rank=cfg.rank, restarts=0, backtrack=False,
                               schur_precision=args.schur_precision or cfg.schur_precision)
    for k, s in enumerate(want):
        i = seeds.index(s)
        prob = jax.tree.map(lambda x: x[k], prep.problem)
        params = Factors(jnp.log(jnp.asarray(fac["W"][i])), jnp.log(jnp.asarray(fac["H"][i])))
        state = solver.init(params, prob)
        W, H = jnp.exp(params.A), jnp.exp(params.B)
        _, omega = bk.psi_omega(layout.entry_products(prob, W, H), layout.values(prob), layout.weights(prob), "frobenius")
        dU, dS = bk.row_diagonal(prob, W, H, omega), bk.col_diagonal(prob, W, H, omega)
        mean_diag = float(jnp.mean(jnp.concatenate([dU.ravel(), dS.ravel()])))
        mse0 = float(solver.objective(params, prob))
        print(f"seed {s}: train MSE {mse0:.4g}, mean diag(JᵀJ) {mean_diag:.4g}, the run's final λ "
              f"{run['summary']['final']['lam'][i]:.3g} (= {run['summary']['final']['lam'][i] / mean_diag:.2g} × mean diag)")
        print("| λ / mean diag | ρ | relative decrease of the train MSE | max abs Δ |")
        print("|---|---|---|---|")
        step = jax.jit(lambda st: solver.step(st, prob))
        for e in range(2, 11):
            st = step(state._replace(lam=jnp.asarray(10.0**-e * mean_diag)))
            mse = float(solver.objective(st.params, prob)) if bool(st.accepted) else float("nan")
            dmax = float(max(jnp.max(jnp.abs(st.params.A - params.A)), jnp.max(jnp.abs(st.params.B - params.B))))
            print(f"| 1e-{e} | {float(st.rho):.3g} | {1 - mse / mse0 if bool(st.accepted) else float('nan'):.3g} "
                  f"| {dmax if bool(st.accepted) else float('nan'):.3g} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

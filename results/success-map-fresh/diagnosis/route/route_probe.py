"""Decay 4 by a detour: a free-sign fit from the blind start, then the non-negative factors of its completed product.

    python results/success-map-fresh/diagnosis/route/route_probe.py RUN --seeds 0,1,2,3 --out DIR

RUN: a finished map run on the decay-4 cell (its config draws the problem).
Per seed:

1. **free**: variable projection with the factors' signs free
   (experiments/projection_probe.py ``varpro``), ``--iters`` iterations from
   the seed's own Keras start (the start run.py draws for it), or with
   ``--from-run`` from RUN's final (stuck) factors;
2. **complete**: its product P = W Hᵀ over the whole matrix, written as a
   dense ``.npz`` with every entry observed, and
   ``run.py --solver gauss_newton --rank r --seed S --seeds 1`` on it (the
   same Keras start, the flagship's defaults): a non-negative factorisation
   of a complete matrix that has an exact one when P is the oracle's product;
3. **score**: those non-negative factors' train MSE on the seed's real
   training entries against the success map's threshold
   (1.01 × the oracle's + 10⁻¹² × mean V²).

Prints a markdown table; the run.py folders stay in DIR.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..", "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import numpy as np  # noqa: E402


def main() -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--seeds", default=None)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--out", required=True)
    p.add_argument("--from-run", action="store_true",
                   help="start the free-sign fit from RUN's final factors instead of the seed's Keras start")
    args = p.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from lrfactor import factors as fac
    from lrfactor.experiment import prepare, truth_start
    from lrfactor.results import load_finished
    from lrfactor.solvers.gauss_newton import make_gauss_newton
    from projection_probe import varpro

    run, cfg, want = load_finished(args.run, args.seeds)
    prep = prepare(dataclasses.replace(cfg, layout="dense", precision=64), seeds=want)
    polish = make_gauss_newton(loss="frobenius", rank=cfg.rank, lambda0=1e-6, schur_precision="full",
                               max_step=0.0, backtrack=False, restarts=0)
    os.makedirs(args.out, exist_ok=True)
    print("| seed | oracle train MSE | threshold | free: train MSE | free: ‖P − P_oracle‖ / ‖P_oracle‖ "
          "| complete: steps, train MSE on P | non-negative factors: train MSE | / threshold | success |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, s in enumerate(want):
        prob = jax.tree.map(lambda x: x[k], prep.problem)
        truth = jax.tree.map(lambda x: x[k], prep.truth)
        M, V = prob.train.astype(jnp.float64), prob.V
        mse = lambda W, H: float(jnp.sum((M * (W @ H.T - V)) ** 2) / jnp.sum(M))
        step = jax.jit(lambda st, prob=prob: polish.step(st, prob))
        st = polish.init(truth_start(truth, cfg.rank), prob)
        for _ in range(40):
            st = step(st)
        Wo, Ho = np.exp(np.asarray(st.params.A)), np.exp(np.asarray(st.params.B))
        fo = mse(Wo, Ho)
        thr = 1.01 * fo + 1e-12 * float(jnp.sum(M * V**2) / jnp.sum(M))
        if args.from_run:  # the run's stuck point (the map's runs are 1000 × 100: H is the shorter side)
            H0 = np.load(os.path.join(args.run, "factors.npz"))["H"][list(run["summary"]["seeds"]).index(s)]
        else:
            H0 = np.exp(np.asarray(fac.init_factors(jax.random.fold_in(prep.keys[k], 1), prob, cfg.rank, cfg.init).B))
        Wf, Hf = varpro(H0, M, V, args.iters, cone=False)
        P = np.asarray(Wf @ Hf.T)
        dist = np.linalg.norm(P - Wo @ Ho.T) / np.linalg.norm(Wo @ Ho.T)
        data = os.path.join(args.out, f"complete-seed{s}.npz")
        np.savez(data, V=P, train_mask=np.ones(P.shape, bool))
        out = os.path.join(args.out, f"complete-seed{s}")
        if not os.path.exists(os.path.join(out, "factors.npz")):  # a finished refit is kept
            subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "run.py"), "--solver", "gauss_newton",
                            "--data", data, "--rank", str(cfg.rank), "--seed", str(s), "--seeds", "1",
                            "--precision", "64", "--out", out, "--quiet"], check=True)
        got = np.load(os.path.join(out, "factors.npz"))
        hist = np.load(os.path.join(out, "history.npz"))
        with open(os.path.join(out, "summary.json")) as fh:
            steps = json.load(fh)["final"]["steps"][0]
        fn = mse(got["W"][0], got["H"][0])
        print(f"| {s} | {fo:.3g} | {thr:.3g} | {mse(Wf, Hf):.3g} | {dist:.2g} | {steps}, "
              f"{float(hist['train_mse'][0][steps]):.3g} | {fn:.3g} | {fn / thr:.3g} | {'yes' if fn <= thr else 'no'} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

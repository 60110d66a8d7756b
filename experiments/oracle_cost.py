"""The oracle's cost on a coordinate-list problem beyond the dense limit, at two PCG settings.

The oracle (lrfactor.experiment.oracle) polishes the truncated true factors
by 20 Levenberg-Marquardt iterations; past the dense limit its steps are
solved by PCG. This times it on the large run's recipe (true rank 20, decay 2,
1 % observed, model rank 16, float64) at a given size, with each PCG setting,
and prints the reference it reaches:

    python experiments/oracle_cost.py --n 10000 --m 10000 --settings 1e-6:250 1e-2:100 1e-3:100
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--m", type=int, default=10_000)
    ap.add_argument("--settings", nargs="+", default=["1e-6:250", "1e-2:100"], help="cg_tol:cg_iters pairs")
    a = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    from lrfactor import experiment, layout
    from lrfactor.config import RunConfig, resolve

    cfg = resolve(RunConfig(solver="gauss_newton", seeds=1, n=a.n, m=a.m, true_rank=20, decay=2.0, observed=0.01,
                            rank=16, precision=64, layout="coo", restarts=0))
    prep = experiment.prepare(cfg)
    print(f"{a.n} x {a.m}, |Ω| = {int(layout.count(prep.problem)[0]):,}", flush=True)
    for s in a.settings:
        tol, its = s.split(":")
        t0 = time.perf_counter()
        ref = experiment.oracle(prep, cg_tol=float(tol), cg_iters=int(its))
        print(f"cg_tol {tol}, cg_iters {its}: {time.perf_counter() - t0:.1f} s, oracle train MSE "
              f"{float(ref['oracle_train_mse'][0]):.7g}, held-out {float(ref['oracle_val_mse'][0]):.7g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the gradient tell a stall at the best value from a stall above it? Read from saved gauss_newton runs.

    python experiments/stall_gradients.py RUN [RUN ...]

gauss_newton's restarts end a seed when a run stalls within ``stall_rtol``
of the best value an earlier run reached (``with_restarts`` in
lrfactor/solvers/gauss_newton.py: the best value seen twice). A seed can
end that way above its optimum when two runs stall in the same valley. One
proposed guard counts a stall as "seen" only at a small gradient. This
script reads what such a guard would have to separate: for every seed that
the rule ended (its stall count and ``done`` both rise at its last step),
the relative gradient max|∇F| / F at the stall (at the last step, and the
least over the last ``WINDOW`` steps) and the seed's final train MSE over
its oracle's (summary.json ``reference``). A guard works only if the
seeds above their oracle stall at gradients no seed at its oracle reaches.

Per run folder, one markdown row per ended seed, then the ranges of the
least relative gradient over the seeds at their oracle (final ≤ 1.01 ×
oracle) and above it.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lrfactor import results, success  # noqa: E402

WINDOW = 10  # steps before the stall over which the least relative gradient is taken
AT_ORACLE = success.FACTOR  # final train MSE / oracle's at or below which a seed counts as at its oracle


def ended_by_rule(folder: str):
    """Per seed the rule ended: (seed, step, final / oracle train MSE, relative gradient at the stall, least over WINDOW)."""
    h = np.load(os.path.join(folder, "history.npz"))
    with open(os.path.join(folder, "summary.json")) as fh:
        summ = json.load(fh)
    for key in ("run_F", "stalls", "done", "grad_inf", "train_mse"):
        if key not in h:
            raise ValueError(f"{folder}: history.npz has no {key!r} (not a gauss_newton run with restarts)")
    oracle = summ.get("reference", {}).get("oracle_train_mse")
    if oracle is None:
        raise ValueError(f"{folder}: summary.json has no oracle reference")
    out = []
    for k, T in enumerate(int(t) for t in summ["final"]["steps"]):
        stalls, done = h["stalls"][k], h["done"][k]
        if T < 1 or not (done[T] and not done[T - 1] and stalls[T] > stalls[T - 1]):
            continue
        F, g = h["run_F"][k], h["grad_inf"][k]
        rel = g[max(1, T - WINDOW + 1): T + 1] / F[max(0, T - WINDOW): T]  # step t's gradient is at the point F[t-1]
        orc = oracle[k]
        out.append((summ["seeds"][k], T, float(h["train_mse"][k][T] / orc) if orc else np.inf,
                    float(rel[-1]), float(np.min(rel))))
    return out


def main(argv=None) -> int:
    runs = sys.argv[1:] if argv is None else argv
    try:
        results.check_finished(runs)
        rows = [(f, *r) for f in runs for r in ended_by_rule(f)]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"| run | seed | step | final / oracle train MSE | max|g| / F at the stall | least over {WINDOW} steps |")
    print("|---|---|---|---|---|---|")
    for f, seed, T, ratio, last, least in rows:
        print(f"| {f} | {seed} | {T} | {ratio:.4g} | {last:.2e} | {least:.2e} |")
    print()
    good = [r[5] for r in rows if r[3] <= AT_ORACLE]
    bad = [r[5] for r in rows if r[3] > AT_ORACLE]
    for what, g in (("at the oracle", good), ("above it", bad)):
        span = f"{min(g):.2e} – {max(g):.2e}" if g else "none"
        print(f"- {len(g)} seeds ended {what}: least relative gradient {span}")
    if good and bad:
        above = sum(g > min(bad) for g in good)
        print(f"- a guard that keeps every seed above its oracle running (a stall counts as seen only at a least "
              f"relative gradient below {min(bad):.2e}) keeps {above} of the {len(good)} seeds at the oracle "
              f"running too")
    return 0


if __name__ == "__main__":
    sys.exit(main())

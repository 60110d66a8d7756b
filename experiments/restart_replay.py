"""What "a stall at the value an earlier run reached ends the seed" would have changed on saved gauss_newton runs.

    python experiments/restart_replay.py RUN [RUN ...]

The rule (lrfactor/solvers/gauss_newton.py ``with_restarts``) only ends a
seed earlier than before; up to that step a seed's path is the same (seeds
of a batch are independent). So a run saved before the rule, with its
per-step history (``run_F``, ``restart``, ``stalls``, ``objective``,
``val_mse``), shows what the rule would have done: at each restart that
followed a stall, compare the stalled run's objective with the best of the
runs before it; within ``stall_rtol`` the seed ends there, and its result is
the best point recorded at that step.

Per run folder, printed as a markdown row: the seeds' steps, before and
replayed; how many seeds end earlier; the largest ratio of the replayed final
training objective to the saved one (1: the rule loses nothing) and the range
of the ratio of held-out MSEs.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lrfactor import results  # noqa: E402

RTOL = 1e-3  # make_gauss_newton's stall_rtol


def replay(folder: str):
    """Per seed: (steps, replayed steps, objective, replayed objective, held-out MSE, replayed held-out MSE)."""
    h = np.load(os.path.join(folder, "history.npz"))
    with open(os.path.join(folder, "summary.json")) as fh:
        steps = json.load(fh)["final"]["steps"]
    out = []
    for k, T in enumerate(int(t) for t in steps):
        run_F, restart, stalls = h["run_F"][k], h["restart"][k], h["stalls"][k]
        before, stop = np.inf, T  # the best objective of the runs before the one in progress
        for t in range(1, T + 1):
            if restart[t] > restart[t - 1]:  # the run in progress ended at step t
                ended = run_F[t - 1]
                if stalls[t] > stalls[t - 1] and np.isfinite(before) and abs(ended - before) <= RTOL * before:
                    stop = t
                    break
                before = min(before, float(np.min(run_F[:t])))
        obj, val = h["objective"][k], h["val_mse"][k]
        out.append((T, stop, obj[T], obj[stop], val[T], val[stop]))
    return out


def main(argv=None) -> int:
    runs = sys.argv[1:] if argv is None else argv
    try:
        results.check_finished(runs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| run | steps: saved → replayed | seeds ended earlier | replayed / saved final objective: max "
          "| replayed / saved held-out MSE: min – max |")
    print("|---|---|---|---|---|")
    for f in runs:
        r = np.asarray(replay(f), dtype=float)
        obj, val = r[:, 3] / r[:, 2], r[:, 5] / r[:, 4]
        print(f"| {f} | {int(r[:, 0].sum())} → {int(r[:, 1].sum())} | {int(np.sum(r[:, 1] < r[:, 0]))}/{len(r)} "
              f"| {obj.max():.4g} | {val.min():.4g} – {val.max():.4g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

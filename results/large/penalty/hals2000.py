"""HALS's held-out MSE after 2,000 sweeps at full size, and when gauss_newton from the hals start reached it.

    python results/large/penalty/hals2000.py > hals2000.txt

Reads ``full-hals-2000`` (masked HALS, 2,000 sweeps) and ``full-gn-hals``
(gauss_newton ``--init hals --restarts 0``, run alone) in this folder: the
same problem (same flags and seed), the same penalty. gauss_newton's time to
a value is its solver time at the first iteration at or below it (history
``wall_s``), plus its start's 20 HALS sweeps at HALS's per-sweep cost
(not timed on their own). HALS's time for its 2,000 sweeps is given twice:
as this run measured it (the machine shared with other jobs) and at the
3.5 s per sweep that ``full-hals`` measured alone (every sweep does the same
work). Compilation is not counted on either side.
"""

import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
START_SWEEPS = 20  # lrfactor/factors.py HALS_SWEEPS: the hals start's sweeps
IDLE_SWEEP_S = 3.5  # full-hals, alone: README.md in this folder

hals = np.load(os.path.join(HERE, "full-hals-2000", "history.npz"))
gn = np.load(os.path.join(HERE, "full-gn-hals", "history.npz"))
hv, hw = hals["val_mse"][0], hals["wall_s"][0]
T = len(hv) - 1
target = float(hv[T])
best = int(np.argmin(hv[1:]) + 1)
print(f"HALS: {T} sweeps, held-out MSE {target:.4g} at the last (lowest {hv[best]:.4g} at sweep {best}); "
      f"train MSE {hals['train_mse'][0][T]:.4g}")
print(f"HALS time for them: {hw[T]:.0f} s measured here ({hw[T] / T:.2f} s per sweep, shared machine), "
      f"{IDLE_SWEEP_S * T:.0f} s at {IDLE_SWEEP_S} s per sweep alone")
gv, gw = gn["val_mse"][0], gn["wall_s"][0]
hit = np.nonzero(gv <= target)[0]
if not hit.size:
    print(f"gauss_newton never reached {target:.4g} in its {len(gv) - 1} iterations (lowest {np.min(gv):.4g})")
else:
    t = int(hit[0])
    start = START_SWEEPS * IDLE_SWEEP_S
    total = gw[t] + start
    print(f"gauss_newton (hals start) at or below it from iteration {t}: {gw[t]:.0f} s solver time "
          f"+ {start:.0f} s for the start's {START_SWEEPS} sweeps = {total:.0f} s")
    print(f"sooner: {hw[T] / total:.1f}× against HALS's measured time, {IDLE_SWEEP_S * T / total:.1f}× against "
          f"its time alone")

"""When a run counts as having found the best fit: the one rule for run.py's summary, its plots, the benchmarks
and the success map.

A seed succeeds when its final train MSE is within 1 % of a reference (the
oracle optimum in a run's summary; the best-known value, the lowest any run
or the oracle reached, in the success map), or within an absolute floor:

    train MSE ≤ FACTOR × reference + FLOOR_REL × mean(V² over the training entries)

The floor matters where the model rank reaches the true rank of noise-free
data: the truth then fits exactly, the reference is rounding (~1e-32 × mean
V²), and a relative test alone would demand the same rounding from every
run. FLOOR_REL = 1e-12 accepts a fit whose root-mean-square error is 1e-6 of
the typical entry's magnitude; it is far below every MSE a rank-deficient or
noisy problem attains, so it changes nothing there.
"""

from __future__ import annotations

import numpy as np

FACTOR = 1.01  # within 1 % of the reference (Hong & Fitzgibbon's count)
FLOOR_REL = 1e-12  # absolute floor, relative to mean(V²) over the training entries


def floor(mean_v2):
    """The absolute part of the rule, per seed: FLOOR_REL × mean(V² over the training entries)."""
    return FLOOR_REL * np.asarray(mean_v2, float)


def threshold(reference, mean_v2):
    """The train MSE at or below which a seed succeeds, per seed."""
    return FACTOR * np.asarray(reference, float) + floor(mean_v2)


def judge(final, reference, floor_):
    """(success, final / max(reference, floor), threshold) per seed, from the absolute floor itself
    (:func:`floor`); a non-finite final never succeeds."""
    final, reference, floor_ = (np.asarray(x, float) for x in (final, reference, floor_))
    thr = FACTOR * reference + floor_
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = final / np.maximum(reference, floor_)
    return np.isfinite(final) & (final <= thr), rel, thr

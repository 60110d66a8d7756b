"""When each seed of a diagnosis run first came under the success map's threshold.

    python results/success-map-fresh/diagnosis/first_under_threshold.py > first-under-threshold.txt

The threshold is experiments/success_map.py's rule with the best-known taken
as the lower of the run's oracle and its own final train MSE: 1.01 × that +
FLOOR_REL × mean(V²) over the training entries, those drawn again as the
run drew them (its config.json). Where an exact fit exists (the exact-top8
runs) the oracle is ~1e-31 and the floor is the threshold.
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "experiments"))
import success_map as sm  # noqa: E402

for name in ("exact-top8/o90", "exact-top8/o50", "d4-observed90"):
    folder = os.path.join(HERE, name)
    cfg = json.load(open(os.path.join(folder, "config.json")))["config"]
    summ = json.load(open(os.path.join(folder, "summary.json")))
    recipe = sm.Recipe(**{k: cfg[k] for k in sm.RECIPE_FIELDS})
    seeds = list(summ["seeds"])
    stats = sm.data_stats(recipe, seeds)
    tr = np.load(os.path.join(folder, "history.npz"))["train_mse"]
    print(f"{name}: {recipe.name()}, {cfg['steps']} steps")
    for k, s in enumerate(seeds):
        final = summ["final"]["train_mse"][k]
        best = min(summ["reference"]["oracle_train_mse"][k], final)
        thr = 1.01 * best + sm.FLOOR_REL * stats["mean_v2_train"][k]
        hit = np.nonzero(tr[k] <= thr)[0]
        print(f"  seed {s}: threshold {thr:.3g}, final train MSE {final:.3g} ({final / thr:.3g}× the threshold), "
              f"first under it at iteration {hit[0] if hit.size else 'never'}")

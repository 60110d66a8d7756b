"""When each seed of the exact top-8 runs first came under the success map's exact-fit floor.

    python results/success-map-fresh/diagnosis/exact-top8/first_under_floor.py > first-under-floor.txt

The floor is experiments/success_map.py's: FLOOR_REL × mean(V²) over the
training entries, that data drawn again as the run drew it (its config.json).
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "..", "experiments"))
import success_map as sm  # noqa: E402

for name in ("o90", "o50"):
    folder = os.path.join(HERE, name)
    cfg = json.load(open(os.path.join(folder, "config.json")))["config"]
    recipe = sm.Recipe(**{k: cfg[k] for k in sm.RECIPE_FIELDS})
    seeds = list(range(cfg["seed"], cfg["seed"] + cfg["seeds"]))
    stats = sm.data_stats(recipe, seeds)
    tr = np.load(os.path.join(folder, "history.npz"))["train_mse"]
    print(f"{name}: {recipe.name()}, {cfg['steps'] or 'default'} steps")
    for k, s in enumerate(seeds):
        floor = sm.FLOOR_REL * stats["mean_v2_train"][k]
        hit = np.nonzero(tr[k] <= floor)[0]
        print(f"  seed {s}: floor {floor:.3g}, final train MSE {tr[k, -1]:.3g}, "
              f"first under the floor at iteration {hit[0] if hit.size else 'never'}")

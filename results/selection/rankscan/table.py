"""The table of README.md from the folders beside this file: held-out MSE over the noise floor per file, rank and reg.

    python results/selection/rankscan/table.py     # from the repository root; reads results/selection/data
"""

import glob
import json
import os
import re

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
KIND = {"g": "gaussian", "p": "poisson"}

rows = {}
for f in sorted(glob.glob(os.path.join(HERE, "*", "summary.json"))):
    name = os.path.basename(os.path.dirname(f))
    k, d, r, reg = re.fullmatch(r"([gp])(\d)-r(\d+)-reg(.+)", name).groups()
    z = np.load(os.path.join(DATA, f"{KIND[k]}-{d}.npz"))
    floor = float(np.mean((z["W_true"] @ z["H_true"].T - z["V"])[z["val_mask"]] ** 2))
    s = json.load(open(f))
    rows.setdefault((KIND[k], int(d), float(reg)), {})[int(r)] = s["final"]["val_mse"][0] / floor
ranks = sorted({r for v in rows.values() for r in v})
print("| file | reg | " + " | ".join(f"rank {r}" for r in ranks) + " |")
print("|---|---|" + "---|" * len(ranks))
for (kind, d, reg), v in sorted(rows.items()):
    best = min(v.values())
    cells = [("**%.3f**" if v[r] == best else "%.3f") % v[r] if r in v else "–" for r in ranks]
    print(f"| {kind}-{d} | {reg:g} | " + " | ".join(cells) + " |")

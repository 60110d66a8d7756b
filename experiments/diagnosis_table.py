"""The numbers of results/DIAGNOSIS.md, read from saved traced runs only.

    python experiments/diagnosis_table.py results/diagnosis/*

Per run and seed, at the first and last traced steps and where λmin is most
negative: λmax, λmin (gauge excluded), the significant index, ‖g‖, and the
symmetry of the factors — σ₂/σ₁ of W = exp(A) (about 0.01 at the question's
init, where all r components are nearly equal: a rank-one point of the
permutation symmetry) — plus final train/val MSE against the references.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lrfactor.results import load_run  # noqa: E402


def sigma_ratio(A):
    s = np.linalg.svd(np.exp(A), compute_uv=False)
    return s[1] / s[0]


def main(folders):
    print("| run | seed | step | λmax | λmin | index (significant) | ‖g‖ | σ₂/σ₁ of W | train MSE |")
    print("|---|---|---|---|---|---|---|---|---|")
    finals = []
    for f in folders:
        if not os.path.exists(os.path.join(f, "hessian.npz")):
            continue
        run = load_run(f)
        h, hist, s = run["hessian"], run["history"], run["summary"]
        name = os.path.basename(os.path.normpath(f))
        idx = h.get("index_significant", h["index"])
        for k in range(len(s["seeds"])):
            picks = sorted({0, int(np.argmin(h["eig_min"][k])), len(h["steps"]) - 1})
            for t in picks:
                step = int(h["steps"][t])
                tr = hist["train_mse"][k, min(step, hist["train_mse"].shape[1] - 1)]
                print(f"| {name} | {s['seeds'][k]} | {step} | {h['eig_max'][k, t]:.3g} | {h['eig_min'][k, t]:.3g} | "
                      f"{idx[k, t]:.3f} | {h['grad_norm'][k, t]:.2g} | {sigma_ratio(h['A'][k, t]):.3f} | {tr:.3g} |")
            ref = s["reference"]
            finals.append((name, s["seeds"][k], s["final"]["steps"][k], s["final"]["train_mse"][k],
                           s["final"]["val_mse"][k], ref["truth_val_mse"][k], ref["oracle_train_mse"][k]))
    print()
    print("| run | seed | steps | train MSE | val MSE | val / theoretical | train / oracle |")
    print("|---|---|---|---|---|---|---|")
    for name, seed, steps, tr, va, th, orc in finals:
        print(f"| {name} | {seed} | {steps} | {tr:.3g} | {va:.3g} | {va / th:.3g} | {tr / orc:.3g} |")


if __name__ == "__main__":
    main(sys.argv[1:])

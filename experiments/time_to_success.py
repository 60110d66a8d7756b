"""Time to success of single-seed runs, from saved results only.

    python experiments/time_to_success.py results/time-to-success/full/seed* [--out FILE.md]

Each folder is a one-seed run (so its wall time is that seed's alone, after
compilation). Success: train MSE within 1 % of the oracle (summary.json);
time to success is the run's ``wall_s`` at the first such step.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lrfactor import success  # noqa: E402
from lrfactor.results import load_run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    lines = ["| run | seed | success | steps to success | s to success | s / iteration | final train / oracle |",
             "|---|---|---|---|---|---|---|"]
    times, steps_all, ok_all = [], [], []
    for f in a.runs:
        r = load_run(f)
        s, h = r["summary"], r["history"]
        if len(s["seeds"]) != 1:
            print(f"error: {f} ran {len(s['seeds'])} seeds; time to success needs one-seed runs", file=sys.stderr)
            return 2
        oracle = s["reference"]["oracle_train_mse"][0]
        hit = np.nonzero(h["train_mse"][0] <= success.FACTOR * oracle)[0]
        n = int(s["final"]["steps"][0])
        per_it = s["wall_s"] / max(n, 1)
        if hit.size:
            k = int(hit[0])
            t = float(h["wall_s"][0, k])
            times.append(t)
            steps_all.append(k)
        ok_all.append(bool(hit.size))
        lines.append(f"| {os.path.basename(os.path.dirname(os.path.normpath(f)))} | {s['seeds'][0]} | {bool(hit.size)} | "
                     f"{k if hit.size else '–'} | {f'{t:.2f}' if hit.size else '–'} | {per_it * 1e3:.1f} ms | "
                     f"{s['final']['train_mse'][0] / oracle:.4g} |")
    lines.append("")
    lines.append(f"success {sum(ok_all)}/{len(ok_all)}; median steps to success "
                 f"{np.median(steps_all) if steps_all else float('nan'):.0f}; median s to success "
                 f"{np.median(times) if times else float('nan'):.2f} (over the successful seeds)")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        from lrfactor.results import _atomic_write_bytes

        _atomic_write_bytes(a.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

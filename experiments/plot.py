"""Figures from saved runs, nothing recomputed (see CONTRACT.md and lrfactor/plots.py).

    python experiments/plot.py results/adam-seed                   # PNGs into the run folder
    python experiments/plot.py results/adam results/gn --out figs  # each run's figures + compare.png

Bad input ends with exit status 2 and one line naming the problem.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


def main(argv=None) -> int:
    p = _Parser(prog="plot.py", description="Figures from saved lrfactor runs.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="saved run folders")
    p.add_argument("--out", default=None, help="write the PNGs here instead of into the run folders")
    try:
        args = p.parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from lrfactor.plots import PlotError, load, plot_compare, plot_run

    try:
        runs = [load(d) for d in args.runs]
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = [os.path.basename(os.path.normpath(d)) for d in args.runs]
    prefixes = [f"{n}-" if args.out and len(runs) > 1 else "" for n in names]
    written = []
    try:
        for run, prefix in zip(runs, prefixes):
            written += plot_run(run, args.out, prefix)
        if len(runs) > 1:
            written.append(plot_compare(runs, args.out))
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

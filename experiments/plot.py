"""Figures from saved runs, nothing recomputed (see docs/contract.md and lrfactor/plots.py).

    python experiments/plot.py results/adam-seed                   # PNGs into the run folder
    python experiments/plot.py results/adam results/gn --out figs  # each run's figures + compare.png
    python experiments/plot.py results/success-map                 # a success map (map.json): success_map.png
    python experiments/plot.py results/sales-cv                    # a --cv run: its figures + cv.png (cv.json)

Bad input ends with exit status 2 and one line naming the problem.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


from lrfactor.cli import Parser, UsageError, one_line_errors  # noqa: E402


@one_line_errors
def main(argv=None) -> int:
    p = Parser(prog="plot.py", description="Figures from saved lrfactor runs.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="saved run folders")
    p.add_argument("--out", default=None, help="write the PNGs here instead of into the run folders")
    args = p.parse_args(argv)

    from lrfactor.plots import PlotError, load, plot_compare, plot_cv, plot_run, plot_success_map

    maps = [d for d in args.runs if os.path.isfile(os.path.join(d, "map.json"))]
    try:
        if maps:  # success maps (experiments/success_map.py) are drawn from their map.json alone
            if len(maps) != len(args.runs):
                raise UsageError("give either success-map folders or run folders, not both")
            if args.out and len(maps) > 1:
                raise UsageError("--out takes one success map at a time (each writes success_map.png)")
            written = [plot_success_map(d, args.out) for d in maps]
        elif len(args.runs) == 1 and os.path.isfile(os.path.join(args.runs[0], "cv.json")) and \
                not os.path.isfile(os.path.join(args.runs[0], "history.npz")):
            written = [plot_cv(args.runs[0], args.out)]  # a cross-validation whose refit did not run
        else:
            runs = [load(d) for d in args.runs]
            names = [os.path.basename(os.path.normpath(d)) for d in args.runs]
            prefixes = [f"{n}-" if args.out and len(runs) > 1 else "" for n in names]
            written = []
            for run, prefix in zip(runs, prefixes):
                written += plot_run(run, args.out, prefix)
            if len(runs) > 1:
                written.append(plot_compare(runs, args.out))
    except PlotError as e:
        raise UsageError(str(e)) from None
    for path in written:
        print(path)
    return 0

if __name__ == "__main__":
    sys.exit(main())

"""Fit a low-rank non-negative factorization, many seeds at once (docs/contract.md).

    python experiments/run.py --solver gauss_newton
    python experiments/run.py --solver adam --seeds 10 --out results/adam-seed
    python experiments/run.py --help          # every setting, and which solvers use it
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lrfactor.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

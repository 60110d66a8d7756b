"""Time one call of each entry primitive of lrfactor/layout.py on a coordinate list.

Where a Gauss-Newton iteration's time goes on coordinate lists: the plain
sweeps (``entry_products``, ``row_sums``, ``col_sums``: r numbers per entry;
a PCG iteration is four of them) against the r × r ones (``row_gram``,
``col_gram``, ``entry_quad``: the row blocks, the Jacobi blocks, once per
iteration). Random entries and factors, float64, the best of three calls
after compilation.

    python experiments/sweep_cost.py [--n 10000 --m 1000 --observed 0.1 --rank 16]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lrfactor import cli  # noqa: E402


@cli.one_line_errors
def main(argv=None) -> int:
    p = cli.Parser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="rows")
    p.add_argument("--m", type=int, default=1_000, help="columns")
    p.add_argument("--observed", type=float, default=0.1, help="fraction of the entries listed")
    p.add_argument("--rank", type=int, default=16, help="factor rank r")
    args = p.parse_args(argv)
    if min(args.n, args.m, args.rank) < 1 or not 0 < args.observed <= 1:
        raise cli.UsageError("--n, --m, --rank must be >= 1 and --observed in (0, 1]")
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from lrfactor import layout
    from lrfactor.problems import from_coo

    n, m, r = args.n, args.m, args.rank
    rng = np.random.default_rng(0)
    want = int(n * m * args.observed)
    flat = np.unique(rng.integers(0, n * m, int(want * 1.2) + 10))[:want]
    prob = from_coo(flat // m, flat % m, rng.random(flat.size), shape=(n, m))
    W, H = jnp.asarray(rng.random((n, r))), jnp.asarray(rng.random((m, r)))
    F = jnp.asarray(rng.random(flat.size))
    M = jnp.asarray(rng.random((n, r, r)))
    cases = {
        "entry_products": lambda: layout.entry_products(prob, W, H),
        "row_sums": lambda: layout.row_sums(prob, F, H),
        "col_sums": lambda: layout.col_sums(prob, F, W),
        "row_gram": lambda: layout.row_gram(prob, F, H),
        "col_gram": lambda: layout.col_gram(prob, F, W),
        "entry_quad": lambda: layout.entry_quad(prob, M, H),
    }
    print(f"|Omega| = {flat.size}, r = {r}, chunk = {prob.chunk}, devices = {jax.devices()}")
    for name, f in cases.items():
        g = jax.jit(f)
        jax.block_until_ready(g())
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(g())
            best = min(best, time.perf_counter() - t0)
        print(f"{name:15s} {best * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

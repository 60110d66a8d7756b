"""lrfactor: structured Gauss-Newton, classical NMF baselines and Hessian diagnostics for log-parameterized NMF."""

import os

# XLA's CPU Cholesky and triangular solves call LAPACK from scipy's bundled
# OpenBLAS, loaded at the first such call. OpenBLAS's own thread pool then
# competes with XLA's for the same cores, and the reduced Cholesky of every
# Gauss-Newton step runs several times slower than on one thread (figures in
# results/README.md). One OpenBLAS thread leaves the parallelism to XLA. An
# explicit setting is respected, and every run records the value it ran with.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__all__ = ["fit", "Fit"]


def __getattr__(name):
    # ``lrfactor.fit`` without importing JAX and the table readers on ``import lrfactor``.
    if name in __all__:
        from lrfactor import api

        return getattr(api, name)
    raise AttributeError(f"module 'lrfactor' has no attribute {name!r}")

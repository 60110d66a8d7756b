"""lrfactor: structured Gauss-Newton, classical NMF baselines and Hessian diagnostics for log-parameterized NMF."""

import os

# XLA's CPU Cholesky and triangular solves call LAPACK from scipy's bundled
# OpenBLAS, loaded at the first such call. OpenBLAS's own thread pool then
# competes with XLA's for the same cores: on 2 cores the 800 × 800 Cholesky
# of the question's reduced system took 11 ms inside a Gauss-Newton step
# instead of 3.5 ms, and the whole step 32 ms instead of 21 ms. One OpenBLAS
# thread leaves the parallelism to XLA. An explicit setting is respected.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

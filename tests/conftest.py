"""float64 on for every test, so float64 tests really run in float64.

XLA's persistent compilation cache is on for the session, in a fresh temporary
folder, also for the command-line runs the tests start as subprocesses (through
the environment): many tests compile the same small programs (the same solver
on the same tiny problem), and a cache hit skips a compilation of seconds. A
fresh folder per session keeps one session's programs out of the next.
"""

import atexit
import os
import shutil
import sys
import tempfile

# pytest-xdist's workers are started by the main process after it has read
# this file, so they inherit its folder through the environment and share it.
_CACHE = os.environ.get("LRFACTOR_TEST_XLA_CACHE")
if not _CACHE:
    _CACHE = tempfile.mkdtemp(prefix="lrfactor-xla-cache-")
    os.environ["LRFACTOR_TEST_XLA_CACHE"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402  (after the environment it reads)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

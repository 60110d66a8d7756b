#!/usr/bin/env bash
# One short GPU check (issue: 1,000 seeds of the flagship on the question's
# problem in <= 60 s on one H100). Installs nothing: the GPU image has jax,
# optax, numpy, matplotlib and tqdm; lrfactor is used from this checkout.
# Prints a throughput table, then times the full 1,000-seed run.
#   bash experiments/gpu_check.sh            # output under ${OUT:-/tmp}/gpu-check
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
dest="${OUT:-/tmp}/gpu-check"
mkdir -p "$dest"
python3 -c "import jax; print('devices:', jax.devices())"
python3 experiments/throughput.py --solvers gauss_newton adam hals --seeds 1 10 100 1000 --steps 10 --out "$dest"
# float32 and float64 side by side for the flagship at 1,000 seeds
python3 experiments/throughput.py --solvers gauss_newton --seeds 1000 --steps 10 --precision 32 --out "$dest/f32"
start=$(date +%s)
python3 experiments/run.py --solver gauss_newton --seeds 1000 --steps 250 --quiet --out "$dest/gn-1000" | tail -3
echo "1000-seed flagship run, wall incl. compile and oracle: $(( $(date +%s) - start )) s"
python3 experiments/success_table.py "$dest/gn-1000" | tail -3

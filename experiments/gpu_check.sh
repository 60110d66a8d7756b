#!/usr/bin/env bash
# The prepared accelerator check: a throughput table, then the flagship solver
# on 1,000 seeds of the question's problem, timed end to end (compilation and
# the oracle included). Installs nothing: it needs jax, optax, numpy,
# matplotlib and tqdm, and uses lrfactor from this checkout.
#
#   bash experiments/gpu_check.sh                   # output under ${OUT:-/tmp}/gpu-check
#   GPU_CHECK_DRY=1 bash experiments/gpu_check.sh   # the same steps, tiny sizes: runs on a CPU in seconds
#
# The dry run exercises every command with small batches and a 60 x 20
# problem, so a broken script is found before accelerator time is spent on it
# (tests/test_gpu_check.py runs it). PYTHON picks the interpreter.
#
#   bash experiments/gpu_check.sh large   # the large problem instead: 100,000 x 10,000, 1 % observed,
#                                         # rank 16, through run.py on coordinate lists: gauss_newton for
#                                         # GN_LIMIT s (default 300), then masked HALS for HALS_LIMIT s
#                                         # (default 150, at most 2,000 sweeps); each stopped at its limit
#                                         # keeps what it finished (run.py checkpoints). The run folders,
#                                         # without factors and checkpoints, go to $dest/large.tgz.
#                                         # Both fit with the penalty REG (default 1e-8) on the factors:
#                                         # unpenalised, both over-fit this recipe (results/gpu); gauss_newton
#                                         # caps PCG at CG_ITERS (default 20) iterations per step and
#                                         # starts from GN_INIT (default hals: 20 HALS sweeps first, one
#                                         # start, no restarts) (results/large/penalty).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
part="${1:-check}"
if [[ "$part" == large ]]; then
  if [[ "${GPU_CHECK_DRY:-0}" == 1 ]]; then
    dest="${OUT:-/tmp}/gpu-large-dry"; size=(--n 3000 --m 300 --observed 0.05 --true-rank 6 --rank 4)
    gn_steps=(--steps 20); hals_steps=50
  else
    dest="${OUT:-/tmp}/gpu-large"; size=(--n 100000 --m 10000 --observed 0.01 --true-rank 20 --rank 16)
    gn_steps=(); hals_steps=2000
  fi
  if [[ -e "$dest/gn" ]]; then
    echo "error: $dest/gn exists; set OUT to another folder" >&2
    exit 2
  fi
  mkdir -p "$dest"
  "$py" -c "import jax; print('devices:', jax.devices())"
  common=(--layout coo --decay 2 --seeds 1 --reg "${REG:-1e-8}" "${size[@]}")
  timeout "${GN_LIMIT:-300}" "$py" experiments/run.py --solver gauss_newton --linear-solver schur_pcg \
    --cg-iters "${CG_ITERS:-20}" "${gn_steps[@]}" "${common[@]}" --init "${GN_INIT:-hals}" --restarts 0 \
    --quiet --out "$dest/gn" || echo "gauss_newton: exit $? (124: stopped at GN_LIMIT)"
  timeout "${HALS_LIMIT:-150}" "$py" experiments/run.py --solver hals --steps "$hals_steps" "${common[@]}" --init scaled --quiet \
    --out "$dest/hals" || echo "hals: exit $? (124: stopped at HALS_LIMIT)"
  tar czf "$dest/large.tgz" -C "$dest" --exclude 'factors.npz' --exclude 'checkpoint*' gn hals
  ls -la "$dest"
  exit 0
fi
if [[ "${GPU_CHECK_DRY:-0}" == 1 ]]; then
  dest="${OUT:-/tmp}/gpu-check-dry"
  solvers=(gauss_newton hals); batch=(1); big=2; steps=2; run_steps=5
  problem=(--n 60 --m 20 --true-rank 4 --rank 3)
else
  dest="${OUT:-/tmp}/gpu-check"
  solvers=(gauss_newton adam hals); batch=(1 10 100 1000); big=1000; steps=10; run_steps=250
  problem=()
fi
if [[ -e "$dest/gn-$big" ]]; then  # never overwrite an earlier check
  echo "error: $dest/gn-$big exists; set OUT to another folder" >&2
  exit 2
fi
mkdir -p "$dest"
"$py" -c "import jax; print('devices:', jax.devices())"
"$py" experiments/throughput.py --solvers "${solvers[@]}" --seeds "${batch[@]}" --steps "$steps" --out "$dest"
# float32 beside the default float64 for the flagship at the largest batch
"$py" experiments/throughput.py --solvers gauss_newton --seeds "$big" --steps "$steps" --precision 32 --out "$dest/f32"
start=$(date +%s)
"$py" experiments/run.py --solver gauss_newton --seeds "$big" --steps "$run_steps" "${problem[@]}" --quiet \
  --out "$dest/gn-$big" | tail -3
echo "$big-seed flagship run, wall incl. compile and oracle: $(( $(date +%s) - start )) s"
"$py" experiments/success_table.py "$dest/gn-$big" | tail -3

#!/usr/bin/env bash
# The one command for a lent GPU machine (H100/H200, no network; this tree is copied there):
#
#   OUT=DIR bash benchmarks/gpu_run.sh                  # on the GPU machine, inside 8 minutes
#   OUT=DIR bash benchmarks/gpu_run.sh --device cpu --dry-run   # the same plumbing on a CPU (CI)
#
# It checks the CUDA path (pytest -m gpu, gpu_check.py, match / stitch / batch --device cuda),
# builds the training data from the TRAIN photos, runs the Exp-TLoss ablation grid, trains
# HardNet and Exp-TLoss, distils a half-width student and scores every run on the TEST patch
# pairs; everything lands in $OUT as it finishes (benchmarks/gpu_run.py says what and when).
#
# Python there: the machine's own python3 (with its CUDA torch). Packages it lacks travel as
# wheels in .whl/ (faiss-cpu; see benchmarks/gpu_prepare.sh), installed with --no-index.
# The photos travel in .gpudata/ (the TRAIN photos and the few TEST images; gpu_prepare.sh);
# without it the shared data beside the repository is used (../shared/data).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/featmatch-site \
        .whl/*.whl >"$OUT/setup.txt" 2>&1 || echo "gpu_run.sh: could not install the wheels in .whl/ (see setup.txt)" >&2
    export PYTHONPATH="/tmp/featmatch-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA="${FEATMATCH_GPU_DATA:-.gpudata}"
[ -d "$DATA" ] || DATA=../shared/data
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >&2
exec "$PY" benchmarks/gpu_run.py --out "$OUT" --data-root "$DATA" --work "${WORK:-/tmp/featmatch-gpu-work}" "$@"

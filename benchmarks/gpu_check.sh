#!/usr/bin/env bash
# One-call GPU check for a lent H100/H200 machine (no network; this tree is copied there).
#
#   bash benchmarks/gpu_check.sh [WHEELS_DIR]
#
# 1. Python: if the machine's python3 imports a CUDA torch, a venv with --system-site-packages
#    reuses it (and whatever else is installed); otherwise a plain venv gets torch and the rest
#    from WHEELS_DIR (default: shared/wheels, or $FEATMATCH_WHEELS), pip --no-index (no network).
#    Missing featmatch dependencies are installed from WHEELS_DIR too.
# 2. Runs the CUDA tests: pytest -m gpu  -> $OUT/pytest_gpu.txt
# 3. Measures fp16 patches/s and a warm Matcher loop (benchmarks/gpu_check.py)
#    -> $OUT/gpu_check.json  (goals: >= 1,000,000 patches/s, <= 100 ms/pair, <= 1 GiB)
#
# $OUT defaults to ./gpu_out. The exit code is gpu_check.py's (0: measured; 2: no usable GPU);
# failed tests are recorded in the JSON ("pytest_gpu"), they do not stop the measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
WHEELS="${1:-${FEATMATCH_WHEELS:-shared/wheels}}"
PY="${PYTHON:-python3}"
VENV="${VENV:-/tmp/featmatch-gpu-venv}"
mkdir -p "$OUT"
log() { echo "gpu_check.sh: $*" | tee -a "$OUT/setup.txt" >&2; }

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    log "using the machine's CUDA torch ($("$PY" -c 'import torch; print(torch.__version__)')) via --system-site-packages"
    "$PY" -m venv --system-site-packages "$VENV"
else
    log "no CUDA torch in $PY: installing torch from $WHEELS"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" torch >>"$OUT/setup.txt" 2>&1 \
        || { log "cannot install torch from $WHEELS"; exit 2; }
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
for pair in numpy:numpy cv2:opencv-python-headless click:click faiss:faiss-cpu onnxruntime:onnxruntime \
            kornia:kornia tqdm:tqdm h5py:h5py pytest:pytest; do
    mod="${pair%%:*}"; pkg="${pair#*:}"
    if ! python -c "import $mod" >/dev/null 2>&1; then
        log "installing $pkg from $WHEELS"
        pip install -q --no-index --find-links "$WHEELS" "$pkg" >>"$OUT/setup.txt" 2>&1 || log "could not install $pkg"
    fi
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"

log "pytest -m gpu"
python -m pytest -q -m gpu tests/ >"$OUT/pytest_gpu.txt" 2>&1
log "pytest exit code $? ($(tail -n 1 "$OUT/pytest_gpu.txt"))"

python benchmarks/gpu_check.py --out "$OUT/gpu_check.json" --pytest-log "$OUT/pytest_gpu.txt" "${@:2}"

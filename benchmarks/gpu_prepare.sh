#!/usr/bin/env bash
# Lay out what benchmarks/gpu_run.sh needs on a GPU machine that has no network and no ../shared:
#   .gpudata/  the TRAIN photos (wallpaper-photos/, nine skimage photos) and the TEST images of the
#              patch pairs (four skimage photos, opencv-samples graf1/graf3 + H1to3p.xml)
#   .whl/      faiss-cpu for the machine's Python 3.12 (its image lacks it)
# Both are ignored by git (.git/info/exclude); pass them in `carry`. Prints what will travel.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${1:-../shared/data}"
grep -qx '/.gpudata/' .git/info/exclude 2>/dev/null || echo '/.gpudata/' >>.git/info/exclude
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf .gpudata && mkdir -p .gpudata/wallpaper-photos .gpudata/skimage-photos .gpudata/opencv-samples
cp "$SRC"/wallpaper-photos/*.jpg .gpudata/wallpaper-photos/
cp "$SRC"/skimage-photos/*.png "$SRC"/skimage-photos/*.jpg .gpudata/skimage-photos/
cp "$SRC"/opencv-samples/{graf1.png,graf3.png,H1to3p.xml} .gpudata/opencv-samples/
if [ ! -f .whl/faiss_cpu-1.15.1-cp310-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl faiss-cpu==1.15.1
fi
tracked=$(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1)
untracked=$( (git ls-files -z --others --exclude-standard | xargs -0 -r du -cb | tail -n 1 | cut -f1) || echo 0)
carried=$(du -cb .gpudata .whl | tail -n 1 | cut -f1)
total=$((tracked + ${untracked:-0} + carried))
printf 'gpu_prepare: tracked %.1f MiB + untracked %.1f MiB + .gpudata/.whl %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
    "$(echo "$tracked/1048576" | bc -l)" "$(echo "${untracked:-0}/1048576" | bc -l)" \
    "$(echo "$carried/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
[ "$total" -lt $((64 * 1048576)) ] || { echo "gpu_prepare: over the 64 MiB that may travel" >&2; exit 1; }

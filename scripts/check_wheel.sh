#!/usr/bin/env bash
# Build featmatch's wheel, install it (not editable) in a fresh venv and use the installed
# `featmatch` from a folder outside the repository, as a user of the package would:
# every command's --help, match (hardnet and sift) on the bundled pair, stitch on the bundled
# set, batch, eval on the bundled benchmark, and the commands that need a source checkout or
# data say so in one line with exit code 2. Called by .ci/run; fails loudly (exit 1).
#
#   bash scripts/check_wheel.sh            # about 1-3 minutes (most of it pip)
#   KEEP=1 bash scripts/check_wheel.sh     # keep the work folder for a look
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/featmatch-wheel.XXXXXX")
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH FEATMATCH_MODELS FEATMATCH_DATA
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
T0=$SECONDS

fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }
log() { echo "check_wheel: $* ($((SECONDS - T0)) s)"; }

log "building the wheel"
"$PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO" || fail "pip wheel"
WHEEL=$(ls "$WORK"/dist/featmatch-*.whl) || fail "no wheel built"
# The weights are package data: the wheel must hold them.
"$PY" - "$WHEEL" <<'EOF' || fail "the wheel lacks the weights or a package"
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["featmatch/models/hardnet.pt", "featmatch/models/hardnet.pt.sha256", "featmatch/models/hardnet.int8.json",
        "featmatch/models/exptloss.pt", "featmatch/models/exptloss.pt.sha256", "featmatch/models/exptloss.int8.json",
        "featmatch/models/hardnet.fp32.onnx", "featmatch/models/hardnet.int8.onnx",
        "featmatch/models/hardnet.int8-w7.onnx", "featmatch/models/hardnet.onnx.json",
        "featmatch/models/exptloss.fp32.onnx", "featmatch/models/exptloss.int8.onnx",
        "featmatch/models/exptloss.int8-w7.onnx", "featmatch/models/exptloss.onnx.json",
        "featmatch/engines/onnx_engine.py",
        "featmatch/evaldata/graf1.png", "featmatch/evaldata/H1to3p.xml", "featmatch/cli.py"]
missing = [n for n in need if n not in names]
if missing:
    sys.exit(f"missing from the wheel: {', '.join(missing)}")
EOF

log "installing it in a fresh venv"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
FM="$WORK/venv/bin/featmatch"
# torch first, and the CPU build, only while the base dependencies still need it (it may become
# an optional extra); read from the wheel's own metadata.
NEEDS_TORCH=$("$PY" - "$WHEEL" <<'EOF'
import re, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
reqs = [l.split(":", 1)[1].strip() for l in meta.splitlines() if l.startswith("Requires-Dist:")]
print(int(any(re.match(r"torch\b", r) and "extra ==" not in r for r in reqs)))
EOF
)
if [[ "$NEEDS_TORCH" == 1 ]]; then
    "$VPY" -m pip install -q torch==2.13.0 || fail "pip install torch==2.13.0"
fi
"$VPY" -m pip install -q "$WHEEL" || fail "pip install the wheel"
if [[ "$NEEDS_TORCH" == 0 ]]; then  # the small CPU install: the learned descriptors run without torch
    "$VPY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'kornia')))" ||
        fail "the base install pulled in torch or kornia"
fi

RUN="$WORK/run"
mkdir -p "$RUN"
cd "$RUN"  # outside the repository: nothing may be found through it
WHERE=$("$VPY" -c "import featmatch; print(featmatch.__file__)")
[[ "$WHERE" == "$WORK/venv/"* ]] || fail "featmatch imported from $WHERE, not from the venv"

log "--help of every command"
"$FM" --help >help.txt 2>&1 || fail "featmatch --help: $(tail -3 help.txt)"
COMMANDS=$("$VPY" -c "import click; from featmatch.cli import cli; print(' '.join(cli.list_commands(click.Context(cli))))")
for c in match stitch batch eval bench train eval-patches calibrate; do
    [[ " $COMMANDS " == *" $c "* ]] || fail "command '$c' is not listed by featmatch --help"
done
for c in $COMMANDS; do
    "$FM" "$c" --help >help.txt 2>&1 || fail "featmatch $c --help: $(tail -3 help.txt)"
    grep -q "^Usage: featmatch $c" help.txt || fail "featmatch $c --help printed no usage"
    grep -q "Example" help.txt || fail "featmatch $c --help shows no example"
done

expect_h() {  # a match with --json that must have a homography
    "$FM" match "$REPO/examples/roofs1.jpg" "$REPO/examples/roofs2.jpg" --json "$@" >m.json 2>m.err ||
        fail "featmatch match $*: exit $?: $(tail -3 m.err)"
    "$VPY" -c "import json,sys; r=json.load(open('m.json')); sys.exit(0 if r['homography'] and r['inliers'] >= 50 else 1)" ||
        fail "featmatch match $*: no homography: $(cat m.json)"
}
log "match with every descriptor (hardnet, exptloss: the shipped weights)"
expect_h --descriptor hardnet
expect_h --descriptor sift
expect_h --descriptor rootsift
expect_h --descriptor exptloss --max-keypoints 1000

log "stitch the bundled set (its image_list.txt)"
"$FM" stitch "$REPO/examples/river" -o pano.jpg --plot layout.png --json >s.json 2>s.err ||
    fail "featmatch stitch: $(tail -3 s.err)"
"$VPY" - <<'EOF' || fail "stitch: $(head -c 300 s.json)"
import json, cv2
r = json.load(open("s.json"))
placed = [i for i in r["images"] if i["placed"]]
assert len(placed) == 2 and [i["name"].split("/")[-1] for i in r["images"]] == ["river1.jpg", "river2.jpg"], r
assert cv2.imread("pano.jpg").shape[1] > 700 and cv2.imread("layout.png") is not None
EOF

log "batch and eval on bundled data"
"$FM" batch "$REPO/examples/river" -o pairs.jsonl --quiet >b.out 2>&1 || fail "featmatch batch: $(tail -3 b.out)"
"$VPY" -c "import json; r=[json.loads(l) for l in open('pairs.jsonl')]; assert len(r)==1 and r[0]['homography'], r" ||
    fail "batch: $(cat pairs.jsonl)"
"$FM" eval -d sift,hardnet --max-pairs 1 --out-dir eval-out --cache-dir cache --no-progress --json >e.json 2>e.err ||
    fail "featmatch eval: $(tail -3 e.err)"
[[ -s eval-out/results.json ]] || fail "eval wrote no results.json"

log "what needs a source checkout or data says so: one line, exit 2"
one_line_exit_2() {
    set +e
    "$FM" "$@" >o.out 2>o.err
    local rc=$?
    set -e
    [[ $rc == 2 ]] || fail "featmatch $*: exit $rc, want 2: $(tail -3 o.err)"
    [[ $(wc -l <o.err) == 1 ]] || fail "featmatch $*: want one line on stderr, got: $(cat o.err)"
    if grep -q "lib/python.*/shared" o.err; then fail "featmatch $*: names a path inside the venv: $(cat o.err)"; fi
}
one_line_exit_2 bench --quick
one_line_exit_2 train --steps 1
one_line_exit_2 calibrate hardnet

log "passed"

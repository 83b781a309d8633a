"""Check featmatch's CPU engine on an x86 CPU this machine does not have, under QEMU's emulator.

``qemu-x86_64 -cpu MODEL`` runs this machine's Python with the CPUID of another CPU, so ONNX
Runtime's kernel dispatch (and featmatch's CPU probe, which checks ``/proc/cpuinfo`` against
CPUID) see that CPU: ``EPYC-Rome`` (Zen 2) and ``Haswell`` have AVX2 but neither AVX-512 nor
VNNI, the kind of CPU where the int8 kernel sums u8 x s8 products in a saturating int16.

This checks, for each model, what an AVX2-only user gets:

- the probe sees AVX2 and neither AVX-512 nor VNNI, and ``--precision auto`` picks the 7-bit
  int8 file (``onnx int8-w7``);
- the 7-bit file's descriptors are bit-identical to this machine's (its integer arithmetic
  cannot saturate, so every x86 kernel computes the same);
- every file (fp32, int8, int8-w7) agrees with the emulated fp32 (mean cosine >= 0.99).

It says nothing about speed: the emulator is tens of times slower than the CPU it emulates.

Usage (needs ``apt-get install qemu-user``, x86_64 only; about a minute)::

    python scripts/emulated_cpu.py [--cpu EPYC-Rome] [--patches 64]

Exit 0 when every check holds, 1 when one fails (each printed), 2 when QEMU is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "int8", "int8-w7")
MODELS = ("hardnet", "exptloss")
#: Emulated CPUs: AVX2 without AVX-512 or VNNI (QEMU's TCG emulates up to AVX2).
AVX2_CPUS = ("EPYC-Rome", "Haswell")


def describe_here(patches: np.ndarray, out: Path) -> None:
    """Run by the emulated Python: the CPU as featmatch sees it, auto's pick, every file's output."""
    from featmatch.engines import choose_engine, probe_cpu
    from featmatch.engines.onnx_engine import OnnxEngine
    from featmatch.engines.select import fresh_exports
    from featmatch.weights import onnx_path

    cpu = probe_cpu()
    result: dict = {"cpu": cpu.to_json(), "auto": {}}
    arrays = {}
    for name in MODELS:
        exports = fresh_exports(name)
        choice = choose_engine(name, "auto", "cpu", cpu, True, False, exports.variants, exports.reason)
        result["auto"][name] = {"label": choice.label, "why": choice.why}
        for variant in VARIANTS:
            engine = OnnxEngine(onnx_path(name, variant), "fp32" if variant == "fp32" else "int8", cached=False)
            arrays[f"{name}/{variant}"] = engine(patches)
    np.savez(out, **arrays)
    out.with_suffix(".json").write_text(json.dumps(result))


def run_emulated(cpu_model: str, patches_file: Path, out: Path, qemu: str) -> dict:
    """Run :func:`describe_here` under ``qemu-x86_64 -cpu cpu_model``; its JSON."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [qemu, "-cpu", cpu_model, sys.executable, str(Path(__file__).resolve()), "--child", str(patches_file),
           str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "TCG doesn't support" not in ln]
        raise RuntimeError(f"the emulated run failed (exit {proc.returncode}): {' | '.join(lines[-5:])}")
    return json.loads(out.with_suffix(".json").read_text())


def compare(host: dict, emulated: dict, info: dict) -> list[str]:
    """The failed checks (empty: all hold), see the module docstring."""
    failures = []
    isa = info["cpu"]["isa"]
    if "AVX2" not in isa or "AVX-512" in isa or "VNNI" in isa:
        failures.append(f"the probe sees {isa} under the emulator, not AVX2 alone")
    for name in MODELS:
        if info["auto"][name]["label"] != "onnx int8-w7":
            failures.append(f"{name}: auto picked {info['auto'][name]['label']} on AVX2, not onnx int8-w7")
        w7_host, w7_emu = host[f"{name}/int8-w7"], emulated[f"{name}/int8-w7"]
        if not np.array_equal(w7_host, w7_emu):
            failures.append(f"{name}: int8-w7 differs from this CPU's by {np.abs(w7_host - w7_emu).max():.2e}")
        ref = emulated[f"{name}/fp32"]
        for variant in VARIANTS:
            cos = float((emulated[f"{name}/{variant}"] * ref).sum(1).mean())
            if not cos >= 0.99:
                failures.append(f"{name}: emulated {variant} mean cosine to fp32 {cos:.4f} < 0.99")
    return failures


def summary(host: dict, emulated: dict) -> list[str]:
    """One line per model and file: max |emulated - this CPU| and mean cosine to the emulated fp32."""
    lines = []
    for name in MODELS:
        ref = emulated[f"{name}/fp32"]
        for variant in VARIANTS:
            e, h = emulated[f"{name}/{variant}"], host[f"{name}/{variant}"]
            lines.append(f"  {name} {variant:8s} max |emulated - this CPU| {np.abs(e - h).max():.2e}, "
                         f"mean cosine to emulated fp32 {float((e * ref).sum(1).mean()):.5f}")  # fmt: skip
    return lines


def check(cpu_model: str, n_patches: int, workdir: Path, qemu: str) -> tuple[list[str], list[str]]:
    """``(failures, report lines)`` of one emulated CPU."""
    from featmatch.evaluation.bench import real_patches

    patches = real_patches(REPO / "examples" / "river" / "river1.jpg", n_patches)
    patches_file = workdir / "patches.npy"
    np.save(patches_file, patches)
    describe_here(patches, workdir / "host.npz")
    info = run_emulated(cpu_model, patches_file, workdir / "emulated.npz", qemu)
    host, emulated = dict(np.load(workdir / "host.npz")), dict(np.load(workdir / "emulated.npz"))
    report = [f"emulated {cpu_model}: ISA {', '.join(info['cpu']['isa'])} (CPUID denies "
              f"{len(info['cpu']['denied_by_cpuid'])} flags of this CPU); auto: "  # fmt: skip
              + ", ".join(f"{k} -> {v['label']}" for k, v in info["auto"].items())]
    return compare(host, emulated, info), report + summary(host, emulated)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        describe_here(np.load(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", default=AVX2_CPUS[0], help=f"QEMU CPU model (AVX2 ones: {', '.join(AVX2_CPUS)})")
    parser.add_argument("--patches", type=int, default=64, help="real patches per file (default 64)")
    args = parser.parse_args()
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or platform.machine() != "x86_64":
        print("needs qemu-x86_64 on an x86_64 machine: apt-get install qemu-user", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        failures, report = check(args.cpu, args.patches, Path(tmp), qemu)
    print("\n".join(report))
    for f in failures:
        print(f"FAILED: {f}")
    print("all checks hold" if not failures else f"{len(failures)} checks failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

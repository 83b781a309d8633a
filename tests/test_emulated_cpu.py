"""featmatch's CPU engine on an AVX2-only CPU, emulated by QEMU (``scripts/emulated_cpu.py``).

The machines here have AVX-512 with VNNI; most users' CPUs have AVX2 alone, where ONNX Runtime's
int8 kernel sums u8 x s8 products in a saturating int16. Under ``qemu-x86_64 -cpu EPYC-Rome``
this machine's Python sees such a CPU's CPUID, and ONNX Runtime dispatches its AVX2 kernels:
the test checks that ``auto`` picks the 7-bit file there and that its descriptors are
bit-identical to this machine's. Speed cannot be measured this way.

Without ``qemu-x86_64`` (``apt-get install qemu-user``) the test is skipped with that reason;
``FEATMATCH_REQUIRE_EMULATOR=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import os
import platform
import shutil

import pytest

from .conftest import REPO, load_script

REQUIRE_ENV = "FEATMATCH_REQUIRE_EMULATOR"


def _script():
    return load_script(REPO / "scripts" / "emulated_cpu.py", "emulated_cpu")


@pytest.fixture(scope="module")
def qemu() -> str:
    path = shutil.which("qemu-x86_64")
    if path is None or platform.machine() != "x86_64":
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but qemu-x86_64 is missing (apt-get install qemu-user)")
        pytest.skip("needs qemu-x86_64 on x86_64 (apt-get install qemu-user)")
    return path


def test_an_avx2_only_cpu_gets_the_7bit_file_and_the_same_descriptors(qemu, tmp_path):
    failures, report = _script().check("EPYC-Rome", 32, tmp_path, qemu)
    assert not failures, "\n".join(failures + report)


def test_the_comparison_fails_when_the_emulated_cpu_computes_otherwise():
    """The checks can fail: a changed 7-bit output, a wrong pick or an ISA with VNNI are reported."""
    import numpy as np

    script = _script()
    rng = np.random.default_rng(0)
    host = {f"{m}/{v}": rng.standard_normal((4, 128)).astype(np.float32) for m in script.MODELS for v in script.VARIANTS}
    for k, v in host.items():
        host[k] = v / np.linalg.norm(v, axis=1, keepdims=True)
    same = {k: v.copy() for k, v in host.items()}
    for k in same:  # every variant equal to fp32: cosine 1
        same[k] = same[k.split("/")[0] + "/fp32"].copy()
    host = {k: v.copy() for k, v in same.items()}
    info = {"cpu": {"isa": ["AVX2"]}, "auto": {m: {"label": "onnx int8-w7"} for m in script.MODELS}}
    assert script.compare(host, same, info) == []
    changed = dict(same, **{"hardnet/int8-w7": same["hardnet/int8-w7"] + np.float32(1e-6)})
    assert any("int8-w7 differs" in f for f in script.compare(host, changed, info))
    vnni = {"cpu": {"isa": ["AVX2", "AVX-512", "VNNI"]}, "auto": {m: {"label": "onnx int8"} for m in script.MODELS}}
    found = script.compare(host, same, vnni)
    assert any("not AVX2 alone" in f for f in found) and any("auto picked onnx int8" in f for f in found)

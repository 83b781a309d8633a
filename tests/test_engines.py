"""The engine seam: what --precision auto picks on every kind of CPU (fake probes), and a torch-free CPU path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from featmatch.engines import ENGINES, CpuInfo, choose_engine
from featmatch.engines.cpuinfo import parse_cpuinfo
from featmatch.errors import ConfigError, ModelNotFoundError

from .conftest import EXAMPLES, REPO

ALL = frozenset({"fp32", "int8", "int8-w7"})


def cpu(arch: str, *flags: str) -> CpuInfo:
    return CpuInfo(arch=arch, flags=frozenset(flags), cores=2, mhz=3000.0)


AVX2_ONLY = cpu("x86_64", "sse4_2", "fma", "avx", "avx2")
AVX512_VNNI = cpu("x86_64", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16")
AVX_VNNI = cpu("x86_64", "avx2", "avx_vnni")
AMX = cpu("x86_64", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
NO_AVX2 = cpu("x86_64", "sse4_2", "avx")
ARM_DOT = cpu("aarch64", "fp", "asimd", "asimddp")
ARM_PLAIN = cpu("aarch64", "fp", "asimd")


def auto(c: CpuInfo, **kw):
    opts = dict(have_onnxruntime=True, have_torch=True, exports=ALL)
    opts.update(kw)
    return choose_engine("hardnet", "auto", kw.pop("device", "cpu"), c, **opts)


@pytest.mark.parametrize(
    "c, engine, variant, why",
    [
        (AVX2_ONLY, "onnx", "int8-w7", "vpmaddubsw"),
        (AVX512_VNNI, "onnx", "int8", "AVX512_VNNI"),
        (AVX_VNNI, "onnx", "int8", "AVX_VNNI"),
        (AMX, "onnx", "int8", "AMX"),
        (ARM_DOT, "onnx", "int8", "asimddp"),
        (ARM_PLAIN, "onnx", "fp32", "without dot products"),
        (NO_AVX2, "onnx", "fp32", "without AVX2"),
    ],
)
def test_auto_on_every_cpu(c, engine, variant, why):
    choice = auto(c)
    assert (choice.engine, choice.variant) == (engine, variant)
    assert choice.precision == ("int8" if variant.startswith("int8") else "fp32")
    assert why in choice.why
    assert json.loads(json.dumps(choice.to_json()))["name"] == engine


def test_auto_without_onnxruntime_or_exports_and_on_cuda():
    assert auto(AVX512_VNNI, have_onnxruntime=False).label == "torch fp32"
    assert "onnxruntime is not installed" in auto(AVX512_VNNI, have_onnxruntime=False).why
    no_int8 = auto(AVX2_ONLY, exports=frozenset({"fp32"}))
    assert no_int8.label == "onnx fp32" and "int8 export" in no_int8.why
    none = auto(AVX2_ONLY, exports=frozenset(), exports_reason="no ONNX export of 'hardnet'")
    assert none.label == "torch fp32" and "no ONNX export" in none.why
    cuda = choose_engine("hardnet", "auto", "cuda", AVX2_ONLY, True, True, ALL)
    assert (cuda.engine, cuda.precision, cuda.device) == ("torch", "fp16", "cuda")
    with pytest.raises(ConfigError, match="onnxruntime"):
        auto(AVX2_ONLY, have_onnxruntime=False, have_torch=False)
    with pytest.raises(ConfigError, match="featmatch\\[torch\\]"):
        auto(AVX2_ONLY, have_torch=False, exports=frozenset(), exports_reason="no export")
    # auto never picks bf16, even where it is native
    assert auto(AMX).precision == "int8" and auto(cpu("x86_64", "avx512_bf16")).precision == "fp32"


def test_explicit_precisions():
    def pick(precision, c=AVX512_VNNI, device="cpu", **kw):
        opts = dict(have_onnxruntime=True, have_torch=True, exports=ALL)
        opts.update(kw)
        return choose_engine("hardnet", precision, device, c, **opts)

    assert pick("int8").variant == "int8"
    assert pick("int8", AVX2_ONLY).variant == "int8-w7"
    assert pick("int8", NO_AVX2).variant == "int8-w7"  # runs if asked, the exact 7-bit file
    assert pick("fp32").label == "onnx fp32"
    assert pick("fp32", have_onnxruntime=False).label == "torch fp32"
    assert pick("bf16").label == "torch bf16"
    with pytest.raises(ConfigError, match="emulated"):
        pick("bf16", AVX2_ONLY)
    with pytest.raises(ConfigError, match="PyTorch"):
        pick("bf16", have_torch=False)
    with pytest.raises(ConfigError, match="CUDA"):
        pick("fp16")
    with pytest.raises(ConfigError, match="CPU only"):
        pick("int8", device="cuda")
    with pytest.raises(ModelNotFoundError, match="featmatch export hardnet"):
        pick("int8", exports=frozenset({"fp32"}))
    with pytest.raises(ConfigError, match="onnxruntime"):
        pick("int8", have_onnxruntime=False)
    with pytest.raises(ConfigError, match="unknown precision"):
        pick("int4")
    assert pick("fp32", in_memory=True).label == "torch fp32"
    with pytest.raises(ConfigError, match="in-memory"):
        pick("int8", in_memory=True)


def test_cpuinfo_parsing():
    x86 = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu avx2 avx512f avx512_vnni\ncpu MHz\t\t: 2596.1\n"
    )
    info = parse_cpuinfo(x86 + x86.replace(": 0", ": 1"), "x86_64", 2)
    assert info.isa() == ["AVX2", "AVX-512", "VNNI"] and info.mhz == pytest.approx(2596.1) and info.model == "AMD EPYC"
    assert (info.vendor, info.family) == ("AuthenticAMD", 25)
    arm = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp bf16\n", "aarch64", 4)
    assert arm.isa() == ["BF16", "NEON", "DOTPROD"] and arm.mhz is None and arm.dotprod
    assert parse_cpuinfo("", "riscv64", 1).isa() == []


def test_flags_that_cpuid_denies_are_dropped():
    """/proc/cpuinfo says AVX-512 VNNI, CPUID (an emulator, a masking VM) says AVX2 alone: auto follows CPUID."""
    from featmatch.engines.cpuinfo import confirm_with_cpuid, cpuid_features

    text = "flags\t\t: fpu avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni amx_int8\ncpu MHz\t: 2596\n"
    listed = parse_cpuinfo(text, "x86_64", 2)
    avx2_only = {"AVX2": True, "FMA3": True, "AVX512F": False, "AVX512BW": False, "AVX512VNNI": False}
    seen = confirm_with_cpuid(listed, avx2_only)
    # CPUID disagrees, so the CPU is masked: AVX-VNNI, which numpy's CPUID view cannot confirm, goes too
    assert seen.isa() == ["AVX2"] and seen.flags == {"fpu", "avx2", "fma"}
    assert seen.denied == {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni"}
    # a real AVX2 CPU with AVX-VNNI (no disagreement with CPUID) keeps it
    alder = parse_cpuinfo("flags\t\t: fpu avx2 fma avx_vnni\n", "x86_64", 2)
    assert confirm_with_cpuid(alder, avx2_only) is alder and alder.isa() == ["AVX2", "VNNI"]
    assert seen.to_json()["denied_by_cpuid"] == sorted(seen.denied)
    no_avx2 = confirm_with_cpuid(listed, dict(avx2_only, AVX2=False))
    assert no_avx2.isa() == [] and "avx_vnni" in no_avx2.denied
    assert confirm_with_cpuid(listed, {k: True for k in avx2_only}) is listed  # all confirmed
    assert confirm_with_cpuid(listed, None) is listed  # numpy without a CPUID view: /proc/cpuinfo as it is
    arm = parse_cpuinfo("Features\t: fp asimd asimddp\n", "aarch64", 4)
    assert confirm_with_cpuid(arm, {"AVX2": False}) is arm
    features = cpuid_features()  # this numpy exposes CPUID, so the probe really cross-checks
    assert features is not None and "AVX2" in features


def test_registry_entries_resolve():
    import importlib

    for name, target in ENGINES.items():
        module, attr = target.split(":")
        assert getattr(importlib.import_module(module), attr).name == name


_PROBE = """
import sys
from click.testing import CliRunner
from featmatch.cli import cli
res = CliRunner().invoke(cli, sys.argv[1:])
heavy = sorted(m for m in ("torch", "kornia") if m in sys.modules)
print(res.exit_code, heavy, repr(res.output[-300:]), file=sys.stderr)
print(res.output.strip().splitlines()[-1] if res.output.strip() else "")
"""


@pytest.mark.parametrize("command", ["match", "stitch", "batch"])
def test_cpu_path_imports_neither_torch_nor_kornia(command, tmp_path):
    pair = [str(EXAMPLES / "river" / "river1.jpg"), str(EXAMPLES / "river" / "river2.jpg")]
    args = {
        "match": ["match", *pair, "-n", "500", "--json", "--descriptor", "hardnet"],
        "stitch": ["stitch", *pair, "-o", str(tmp_path / "pano.jpg"), "-n", "500", "--descriptor", "hardnet"],
        "batch": ["batch", str(tmp_path / "list.txt"), "-o", str(tmp_path / "r.jsonl"), "-n", "500", "-d", "hardnet"],
    }[command]
    (tmp_path / "list.txt").write_text("\n".join(pair) + "\n")
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, check=False)  # fmt: skip
    code, heavy = proc.stderr.strip().splitlines()[-1].split(" ", 2)[:2]
    assert code == "0", proc.stderr[-2000:]
    assert heavy == "[]", proc.stderr[-2000:]
    if command == "match":
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["engine"]["name"] == "onnx" and out["engine"]["why"]
        assert out["homography"] is not None and out["inliers"] >= 12


def test_device_resolution_without_torch_or_driver(monkeypatch):
    import featmatch.descriptors as d
    import featmatch.engines as engines
    from featmatch.errors import DeviceError

    monkeypatch.setattr(d, "nvidia_driver_present", lambda: False)
    before = "torch" in sys.modules
    assert d.resolve_device("auto") == "cpu"
    assert ("torch" in sys.modules) == before  # decided without importing torch
    monkeypatch.setattr(engines, "have_module", lambda name: name != "torch")
    assert d.resolve_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="needs PyTorch") as info:
        d.resolve_device("cuda")
    assert "\n" not in str(info.value)


def test_commands_that_need_torch_say_so_in_one_line():
    # a Python where torch and kornia cannot be imported (a meta-path blocker), as on a small CPU install
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'kornia'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from featmatch.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "export", "hardnet"], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs PyTorch" in lines[0] and "featmatch[torch]" in lines[0], lines


def test_building_the_onnx_engine_hashes_the_weights_once(monkeypatch):
    """Choosing the engine (fresh_exports) and building it (for_model) share one digest of the .pt."""
    from featmatch import weights
    from featmatch.descriptors import CNNDescriptor
    from featmatch.engines import onnx_engine, select

    hashed = []

    def counting(path):
        hashed.append(path.name)
        return weights.sha256_of(path)

    monkeypatch.setattr(select, "sha256_of", counting)
    monkeypatch.setattr(onnx_engine, "sha256_of", counting)
    d = CNNDescriptor("hardnet", device="cpu", precision="int8")
    assert d.choice.engine == "onnx"
    assert hashed.count("hardnet.pt") == 1 and any(n.endswith(".onnx") for n in hashed)
    # built on its own (no digest handed over), the engine still checks the weights itself
    hashed.clear()
    onnx_engine.OnnxEngine.for_model("hardnet", d.choice, 256)
    assert hashed.count("hardnet.pt") == 1

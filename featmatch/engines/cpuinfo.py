"""What the CPU can do, from ``/proc/cpuinfo`` checked against CPUID (no torch): the facts
``--precision auto`` decides on.

``/proc/cpuinfo`` names the flags, the model and the clock. On x86 the ISA flags are then checked
against CPUID as numpy reads it (with the operating system's XSAVE support), which is also how
ONNX Runtime picks its kernels: a flag that ``/proc/cpuinfo`` lists but CPUID denies (under an
emulator such as ``qemu-x86_64 -cpu EPYC-Rome``, or a VM that masks AVX-512) is dropped, so that
``auto`` decides on the instructions that ONNX Runtime's kernels will really use.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

#: x86 flags that give 8-bit dot products summed in int32 (no int16 saturation).
X86_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: x86 flags of native bf16 arithmetic.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: numpy's CPUID feature names and the ``/proc/cpuinfo`` flags each one confirms.
CPUID_FLAGS = {"AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
               "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16"}  # fmt: skip


@dataclass(frozen=True)
class CpuInfo:
    """One CPU as featmatch sees it.

    Attributes:
        arch: ``x86_64``, ``aarch64``, ... (``platform.machine()``, lower case).
        flags: the ISA flags (x86 ``flags``, ARM ``Features`` of ``/proc/cpuinfo``).
        cores: usable cores of this process (its CPU affinity).
        mhz: clock in MHz as ``/proc/cpuinfo`` reports it (None where it does not).
        model: the model name.
        vendor: ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``; empty where not reported).
        family: x86 ``cpu family`` (None where not reported).
        denied: flags that ``/proc/cpuinfo`` lists but CPUID denies (dropped from ``flags``).
    """

    arch: str
    flags: frozenset
    cores: int
    mhz: float | None = None
    model: str = ""
    vendor: str = ""
    family: int | None = None
    denied: frozenset = frozenset()

    @property
    def x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i686", "i386")

    @property
    def arm64(self) -> bool:
        return self.arch in ("aarch64", "arm64")

    @property
    def avx2(self) -> bool:
        return self.x86 and "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return self.x86 and "avx512f" in self.flags

    @property
    def vnni(self) -> bool:
        """x86 8-bit dot products into int32 (AVX512_VNNI, AVX_VNNI or AMX)."""
        return self.x86 and any(f in self.flags for f in X86_VNNI_FLAGS)

    @property
    def amx(self) -> bool:
        return self.x86 and "amx_int8" in self.flags

    @property
    def neon(self) -> bool:
        return self.arm64 and ("asimd" in self.flags or "neon" in self.flags)

    @property
    def dotprod(self) -> bool:
        """ARM 8-bit dot products (``asimddp``, the SDOT/UDOT instructions)."""
        return self.arm64 and "asimddp" in self.flags

    @property
    def bf16(self) -> bool:
        """Native bf16 arithmetic (x86 AVX512_BF16 / AMX-BF16, ARM ``bf16``)."""
        if self.x86:
            return any(f in self.flags for f in X86_BF16_FLAGS)
        return self.arm64 and "bf16" in self.flags

    def isa(self) -> list[str]:
        """The ISA features that matter here, e.g. ``["AVX2", "AVX-512", "VNNI"]``."""
        names = [("AVX2", self.avx2), ("AVX-512", self.avx512), ("VNNI", self.vnni), ("AMX", self.amx),
                 ("BF16", self.bf16), ("NEON", self.neon), ("DOTPROD", self.dotprod)]  # fmt: skip
        return [n for n, ok in names if ok]

    def to_json(self) -> dict:
        return {"arch": self.arch, "model": self.model, "vendor": self.vendor, "family": self.family,
                "cores": self.cores, "mhz": self.mhz, "isa": self.isa(), "denied_by_cpuid": sorted(self.denied)}  # fmt: skip


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_cpuinfo(text: str, arch: str, cores: int) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (the first processor's block)."""
    flags: set[str] = set()
    mhz: list[float] = []
    model = vendor = ""
    family = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "cpu mhz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
        elif key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "cpu family" and family is None:
            try:
                family = int(value)
            except ValueError:
                pass
    return CpuInfo(arch=arch.lower(), flags=frozenset(flags), cores=cores, mhz=max(mhz) if mhz else None, model=model,
                   vendor=vendor, family=family)  # fmt: skip


def cpuid_features() -> dict | None:
    """numpy's CPUID view of this CPU (``{"AVX2": True, ...}``); None where numpy does not expose it."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return dict(importlib.import_module(module).__cpu_features__)
        except (ImportError, AttributeError):
            continue
    return None


def confirm_with_cpuid(cpu: CpuInfo, features: dict | None) -> CpuInfo:
    """``cpu`` less the x86 flags that CPUID (``features``, :func:`cpuid_features`) denies.

    Only flags that CPUID knows are checked; without AVX-512F every ``avx512*`` and AMX flag goes
    (every AMX CPU has AVX-512), without AVX2 AVX-VNNI goes; and once CPUID denies any flag (a
    masked or emulated CPU), AVX-VNNI and AMX, which it cannot confirm, go too.
    """
    if not cpu.x86 or not features:
        return cpu
    denied = {flag for key, flag in CPUID_FLAGS.items() if features.get(key) is False and flag in cpu.flags}
    if features.get("AVX512F") is False:
        denied |= {f for f in cpu.flags if f.startswith(("avx512", "amx"))}
    if features.get("AVX2") is False:
        denied |= {f for f in cpu.flags if f == "avx_vnni"}
    if not denied:
        return cpu
    # CPUID and /proc/cpuinfo disagree: the CPU is masked or emulated (QEMU shows the host's
    # /proc/cpuinfo). Then only what CPUID can confirm counts: numpy's CPUID view has no AVX-VNNI
    # or AMX bit, so those host flags go too. A real CPU (no disagreement) keeps them.
    denied |= {f for f in cpu.flags if f == "avx_vnni" or f.startswith("amx")}
    return dataclasses.replace(cpu, flags=cpu.flags - denied, denied=frozenset(denied))


@functools.lru_cache(maxsize=1)
def probe_cpu() -> CpuInfo:
    """This machine's :class:`CpuInfo` (cached; tests pass a fake one to the selection instead)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    cpu = parse_cpuinfo(text, platform.machine() or "unknown", usable_cores())
    return confirm_with_cpuid(cpu, cpuid_features())

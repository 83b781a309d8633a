"""What the CPU can do, from ``/proc/cpuinfo`` (no torch): the facts ``--precision auto`` decides on."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

#: x86 flags that give 8-bit dot products summed in int32 (no int16 saturation).
X86_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: x86 flags of native bf16 arithmetic.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
    """

    arch: str
    flags: frozenset
    cores: int
    mhz: float | None = None
    model: str = ""
    vendor: str = ""
    family: int | None = None

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
                "cores": self.cores, "mhz": self.mhz, "isa": self.isa()}  # fmt: skip


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


@functools.lru_cache(maxsize=1)
def probe_cpu() -> CpuInfo:
    """This machine's :class:`CpuInfo` (cached; tests pass a fake one to the selection instead)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine() or "unknown", usable_cores())

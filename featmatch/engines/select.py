"""Which engine and precision run a CNN descriptor: the rules of ``--precision auto``.

``auto`` is the fastest precision that keeps quality, and never an emulated one:

- CUDA: torch fp16.
- CPU, with onnxruntime and an int8 export: int8 ONNX where 8-bit integer products pay: the
  8-bit-weight file on x86 with VNNI (AVX512_VNNI, AVX_VNNI, AMX) and on aarch64 with dot
  products (``asimddp``); the 7-bit-weight file on x86 with AVX2 but without VNNI (its int8
  kernel sums pairs of u8 x s8 products in a saturating int16, which 7-bit weights cannot
  overflow). fp32 ONNX where no int8 kernel pays (x86 without AVX2, aarch64 without dot products).
- CPU without onnxruntime (or without exports): torch fp32.

bf16 is never chosen by ``auto``; asked for explicitly it runs in torch on CPUs with native
bf16 and is refused elsewhere (it would be emulated, tens of times slower).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass

from ..errors import ConfigError, ModelNotFoundError
from ..weights import ONNX_VARIANTS, models_dir, onnx_path, sha256_of, weight_path
from .cpuinfo import CpuInfo

#: The precisions of the CLI (``--precision``).
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True)
class EngineChoice:
    """The engine, precision and (for onnx) file variant that describe patches, and why.

    Attributes:
        engine: a name of :data:`featmatch.engines.ENGINES`.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        variant: the ONNX file (``fp32``, ``int8``, ``int8-w7``); None for torch.
        why: one line saying why.
        device: ``cpu`` or ``cuda``.
    """

    engine: str
    precision: str
    variant: str | None
    why: str
    device: str = "cpu"

    @property
    def label(self) -> str:
        """``onnx int8-w7``, ``torch fp32``, ..."""
        return f"{self.engine} {self.variant or self.precision}"

    def to_json(self) -> dict:
        return {"name": self.engine, "precision": self.precision, "variant": self.variant, "device": self.device,
                "why": self.why}  # fmt: skip


def have_module(name: str) -> bool:
    """True when ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Exports:
    """The ONNX exports of one model that belong to its current weights.

    Attributes:
        variants: the fresh variants (``fp32``, ``int8``, ``int8-w7``); empty when none.
        reason: why there are none (empty otherwise).
        weights_sha256: the ``.pt``'s digest as just computed (None when it was not), so that
            building the engine need not hash the weights again.
    """

    variants: frozenset = frozenset()
    reason: str = ""
    weights_sha256: str | None = None


def fresh_exports(name: str) -> Exports:
    """The ONNX variants of ``name`` made from the current ``models/<name>.pt``, and a reason when none.

    Reads ``models/<name>.onnx.json`` (written by ``featmatch export``) and compares its
    weights digest with the ``.pt``'s actual sha256; no onnxruntime, no torch.
    """
    manifest = models_dir() / f"{name}.onnx.json"
    pt = weight_path(name)
    if not manifest.is_file() or not pt.is_file():
        return Exports(reason=f"no ONNX export of '{name}' in {models_dir()} (make one with `featmatch export {name}`)")
    try:
        info = json.loads(manifest.read_text())
        recorded, files = str(info["weights_sha256"]), dict(info["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return Exports(reason=f"{manifest} is unreadable (`featmatch export {name}` rewrites it)")
    digest = sha256_of(pt)
    if recorded != digest:
        return Exports(reason=f"the ONNX export of '{name}' was made from other weights (run `featmatch export {name}`)",
                       weights_sha256=digest)  # fmt: skip
    variants = frozenset(v for v in ONNX_VARIANTS if v in files and onnx_path(name, v).is_file())
    return Exports(variants, "" if variants else f"no ONNX file listed in {manifest} exists", digest)


def _int8_variant(cpu: CpuInfo) -> tuple[str | None, str]:
    """The int8 file that pays on ``cpu`` (None: none does) and why."""
    if cpu.x86:
        if cpu.vnni:
            which = "AMX" if cpu.amx else ("AVX512_VNNI" if "avx512_vnni" in cpu.flags else "AVX_VNNI")
            return "int8", f"x86 with {which}: u8 x s8 dot products summed in int32"
        if cpu.avx2:
            return "int8-w7", ("x86 AVX2 without VNNI: 7-bit weights, so that vpmaddubsw's int16 pair sums "
                               "cannot saturate")  # fmt: skip
        return None, "x86 without AVX2: no int8 kernel pays"
    if cpu.arm64:
        if cpu.dotprod:
            return "int8", "aarch64 with dot products (asimddp)"
        return None, "aarch64 without dot products: int8 does not pay"
    return None, f"{cpu.arch}: no int8 kernel known to pay"


def choose_engine(
    name: str,
    precision: str,
    device: str,
    cpu: CpuInfo,
    have_onnxruntime: bool,
    have_torch: bool,
    exports: frozenset = frozenset(),
    exports_reason: str = "",
    in_memory: bool = False,
) -> EngineChoice:
    """Resolve ``precision`` (``auto`` included) for model ``name`` on ``device``.

    Args:
        name: model name (for messages).
        precision: one of :data:`PRECISIONS`.
        device: ``cpu`` or ``cuda`` (already resolved).
        cpu: the CPU (tests pass fakes).
        have_onnxruntime, have_torch: which runtimes are installed.
        exports: the fresh ONNX variants of the model (:func:`fresh_exports`).
        exports_reason: why there are none, for the ``why`` line.
        in_memory: the model is a torch module in memory (no export): torch only.

    Raises:
        ConfigError: the precision cannot run here (the message says what would).
        ModelNotFoundError: ``int8`` asked for, but its ONNX export is missing or stale.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    torch_missing = 'needs PyTorch: pip install torch==2.13.0 && pip install "featmatch[torch]"'
    if device == "cuda":
        if precision == "int8":
            raise ConfigError("int8 runs on the CPU only; use fp16 or fp32 on CUDA")
        if precision == "bf16":
            raise ConfigError("bf16 is a CPU option; use fp16 (the auto choice) or fp32 on CUDA")
        p = "fp16" if precision == "auto" else precision
        why = "CUDA: torch fp16 (tensor cores)" if precision == "auto" else f"CUDA: torch {p} (asked for)"
        return EngineChoice("torch", p, None, why, device="cuda")
    if precision == "fp16":
        raise ConfigError("fp16 is only supported on CUDA; use int8, fp32 (or bf16 on CPUs with native bf16)")
    if precision == "bf16":
        if not cpu.bf16:
            raise ConfigError(
                "bf16 would be emulated on this CPU (no AVX512_BF16 / AMX-BF16), tens of times slower: use "
                "--precision auto (int8) or fp32"
            )
        if not have_torch:
            raise ConfigError(f"--precision bf16 {torch_missing}")
        return EngineChoice("torch", "bf16", None, "bf16 asked for; this CPU has native bf16")
    if in_memory:
        if precision == "int8":
            raise ConfigError("int8 needs an ONNX export of saved weights; an in-memory model runs in fp32 or bf16")
        return EngineChoice("torch", "fp32", None, "an in-memory torch model: torch fp32")
    variant, why_int8 = _int8_variant(cpu)
    if precision == "int8":
        if not have_onnxruntime:
            raise ConfigError("--precision int8 needs onnxruntime: pip install onnxruntime")
        # where no int8 kernel pays it still runs if asked: the 7-bit file is exact on every x86 kernel
        want = variant or ("int8-w7" if cpu.x86 else "int8")
        if want not in exports:
            reason = exports_reason or f"models/{name}.{want}.onnx is missing"
            raise ModelNotFoundError(
                f"--precision int8 needs the int8 ONNX export of '{name}': {reason}; it is made from the int8 "
                f"calibration (`featmatch calibrate {name}`, then `featmatch export {name}`)"
            )
        return EngineChoice("onnx", "int8", want, f"int8 asked for; {why_int8}")
    # precision is auto or fp32 from here on
    if have_onnxruntime and precision == "auto" and variant is not None and variant in exports:
        return EngineChoice("onnx", "int8", variant, why_int8)
    if have_onnxruntime and "fp32" in exports:
        if precision == "fp32":
            why = "fp32 asked for: ONNX Runtime fp32"
        elif variant is None:
            why = f"{why_int8}: ONNX Runtime fp32"
        else:
            why = f"no current int8 export of '{name}' (`featmatch calibrate {name}`): ONNX Runtime fp32"
        return EngineChoice("onnx", "fp32", "fp32", why)
    if have_torch:
        why = "onnxruntime is not installed" if not have_onnxruntime else exports_reason
        return EngineChoice("torch", "fp32", None, f"{why}: torch fp32")
    if not have_onnxruntime:
        raise ConfigError(f"the CNN descriptor '{name}' needs onnxruntime (pip install onnxruntime) or PyTorch")
    raise ConfigError(f"the CNN descriptor '{name}' cannot run: {exports_reason}; the torch fallback {torch_missing}")


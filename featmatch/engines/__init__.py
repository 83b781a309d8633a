"""CNN inference engines: ``(N, 1, 32, 32)`` float32 patches -> ``(N, 128)`` float32 unit descriptors.

:data:`ENGINES` is the registry: name -> ``"module:Class"``, imported only when that engine is
built (the ``onnx`` engine must not import torch). An engine class is built by its
``for_model(model_name, choice, batch_size, model=None, weights_sha256=None)`` classmethod, has
``name``, ``precision``, ``device`` and ``variant`` attributes and is called on a numpy array. Adding an engine is one file plus one
entry here (and a rule in :func:`featmatch.engines.select.choose_engine` if ``auto`` should pick it).

- ``onnx``: ONNX Runtime on the CPU, from the exports in ``models/`` (``featmatch export``):
  fp32, int8 (8-bit weights) and int8-w7 (7-bit weights, AVX2 without VNNI). One session per
  file per process, graph optimizations on, one intra-op thread per usable core.
- ``torch``: the BN-folded PyTorch network (:mod:`featmatch.inference`): fp32 or bf16 (native
  bf16 CPUs) on the CPU, fp16 or fp32 on CUDA; also the engine of in-memory models (tests).
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .cpuinfo import CpuInfo, probe_cpu
from .select import EngineChoice, choose_engine, have_module

#: name -> "module:Class" of each engine.
ENGINES: dict[str, str] = {
    "onnx": "featmatch.engines.onnx_engine:OnnxEngine",
    "torch": "featmatch.engines.torch_engine:TorchEngine",
}

#: What a command that needs PyTorch prints where it is not installed.
TORCH_INSTALL_HINT = 'pip install torch==2.13.0 && pip install "featmatch[torch]"'

__all__ = ["ENGINES", "TORCH_INSTALL_HINT", "CpuInfo", "EngineChoice", "build_engine", "choose_engine",
           "have_module", "probe_cpu", "require_torch"]  # fmt: skip


def require_torch(what: str) -> None:
    """Raise a one-line :class:`ConfigError` (exit 2) when PyTorch is not installed."""
    if not have_module("torch"):
        raise ConfigError(f"{what} needs PyTorch: {TORCH_INSTALL_HINT}")


def build_engine(choice: EngineChoice, model_name: str, batch_size: int, model=None, weights_sha256=None):
    """Build the engine ``choice.engine`` for ``model_name`` (or an in-memory torch ``model``);
    ``weights_sha256``: the ``.pt``'s digest when the caller has just computed it (not hashed again)."""
    if choice.engine not in ENGINES:
        raise ConfigError(f"unknown engine '{choice.engine}'; choose one of {', '.join(sorted(ENGINES))}")
    if choice.engine == "torch":
        require_torch(f"the torch engine ({choice.precision})")
    module, attr = ENGINES[choice.engine].split(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls.for_model(model_name, choice, batch_size, model=model, weights_sha256=weights_sha256)

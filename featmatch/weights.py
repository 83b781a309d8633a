"""The one weight resolver, without torch: where ``models/`` is and what its files are.

Everything that looks up a model file (``<name>.pt``, its ``.sha256`` record, the int8
calibration ``<name>.int8.json`` and the ONNX exports ``<name>.<variant>.onnx``) goes through
:func:`models_dir`, so there is one place that decides where weights live. This module imports
neither torch nor onnxruntime: the CPU path of ``match`` resolves its model files with it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from pathlib import Path

#: Environment variable that points the resolver at another models folder.
MODELS_ENV = "FEATMATCH_MODELS"
#: The exported ONNX variants: ``fp32``; ``int8`` (8-bit weights, for VNNI / dot-product CPUs);
#: ``int8-w7`` (7-bit weights, for x86 AVX2 without VNNI, where 8-bit products can saturate).
ONNX_VARIANTS = ("fp32", "int8", "int8-w7")


def models_dir() -> Path:
    """Where weights are looked up: ``$FEATMATCH_MODELS``, else the package data ``featmatch.models``.

    ``featmatch.models`` is the repository's ``models/`` folder, installed as a package (wheel
    or editable install); a source tree that is only on ``PYTHONPATH`` falls back to its own
    ``models/`` folder beside ``featmatch/``.
    """
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env)
    try:
        return Path(str(importlib.resources.files("featmatch.models")))
    except ModuleNotFoundError:  # not installed: a source tree on PYTHONPATH
        return Path(__file__).resolve().parent.parent / "models"


def weight_path(name: str) -> Path:
    """``models/<name>.pt``."""
    return models_dir() / f"{name}.pt"


def existing_weight_path(name: str) -> Path:
    """``models/<name>.pt``, which must exist.

    Raises:
        ModelNotFoundError: no such file (the message says how to get one; nothing is downloaded).
    """
    path = weight_path(name)
    if not path.is_file():
        from .errors import ModelNotFoundError

        raise ModelNotFoundError(
            f"no weights for descriptor '{name}': {path} does not exist. featmatch never downloads "
            f"weights; train them with `featmatch train --loss {name}` (see models/README.md) or set "
            f"{MODELS_ENV} to a folder that has {name}.pt"
        )
    return path


def onnx_path(name: str, variant: str) -> Path:
    """``models/<name>.<variant>.onnx`` for a variant of :data:`ONNX_VARIANTS`."""
    if variant not in ONNX_VARIANTS:
        raise ValueError(f"unknown ONNX variant '{variant}'; choose one of {', '.join(ONNX_VARIANTS)}")
    return models_dir() / f"{name}.{variant}.onnx"


def recorded_sha256(path: Path) -> str | None:
    """The digest recorded in ``<path>.sha256`` beside a weight file, or None without one."""
    digest_file = Path(str(path) + ".sha256")
    if not digest_file.is_file():
        return None
    words = digest_file.read_text(errors="replace").split()
    return words[0] if words else ""


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

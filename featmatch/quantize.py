"""Int8 calibration of the CNN descriptors: activation ranges measured once, stored beside the weights.

Static post-training quantization; the int8 networks themselves are ONNX files
(:mod:`featmatch.export`, run by the ``onnx`` engine; torch's quantized modules, marked
deprecated by torch, are no longer used):

- weights: per output channel, symmetric int8, from the BN-folded fp32 weights (8-bit, or
  7-bit for x86 CPUs without VNNI, see :mod:`featmatch.export`);
- activations: per tensor uint8, from ranges measured once on TRAIN-split patches and stored
  next to the weights in ``models/<name>.int8.json`` (``featmatch calibrate``). The file names
  the sha256 of the weights it was measured on; a stale file is refused;
- the per-patch input normalization and the final L2 normalization stay in fp32.

This module imports torch only inside :func:`measure_ranges`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError
from .weights import models_dir, recorded_sha256, sha256_of, weight_path

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

#: Suffix of the calibration file next to ``<name>.pt``.
CALIBRATION_SUFFIX = ".int8.json"
#: Activation ranges clip at this percentile of the calibration activations (outliers would
#: otherwise stretch the 256 levels over values that almost never occur).
PERCENTILE = 99.99
#: Activation values sampled per layer and batch to estimate the percentile.
_SAMPLES_PER_BATCH = 200_000


@dataclass(frozen=True)
class Calibration:
    """Activation ranges of one weight file.

    Attributes:
        weights_sha256: the weights these ranges were measured on.
        input_range: ``(lo, hi)`` of the normalized input patch.
        relu_max: upper range of each ReLU output (6 values; the lower end is 0).
        output_range: ``(lo, hi)`` of the last convolution (the unnormalized descriptor).
        percentile: the clipping percentile used.
        source: what data the ranges come from.
    """

    weights_sha256: str
    input_range: tuple[float, float]
    relu_max: tuple[float, ...]
    output_range: tuple[float, float]
    percentile: float
    source: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> Calibration:
        try:
            return cls(
                weights_sha256=str(obj["weights_sha256"]),
                input_range=(float(obj["input_range"][0]), float(obj["input_range"][1])),
                relu_max=tuple(float(v) for v in obj["relu_max"]),
                output_range=(float(obj["output_range"][0]), float(obj["output_range"][1])),
                percentile=float(obj["percentile"]),
                source=str(obj["source"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"malformed int8 calibration: {exc}") from exc


def calibration_path(name: str) -> Path:
    """``models/<name>.int8.json``."""
    return models_dir() / f"{name}{CALIBRATION_SUFFIX}"


def load_calibration(name: str) -> Calibration | None:
    """The calibration of ``models/<name>.pt``, or None when there is none or it is stale."""

    path = calibration_path(name)
    if not path.is_file():
        return None
    try:
        calib = Calibration.from_json(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ConfigError) as exc:
        logger.warning("ignoring unreadable int8 calibration %s: %s", path, exc)
        return None
    # load_weights checks the file against its recorded digest, so the record stands for it
    weights = weight_path(name)
    actual = recorded_sha256(weights) or sha256_of(weights)
    if calib.weights_sha256 != actual:
        logger.warning("ignoring int8 calibration %s: it was measured on other weights", path)
        return None
    return calib


def _percentile_sampler(gen: torch.Generator):
    import torch

    def sample(x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().flatten().float()
        if flat.numel() > _SAMPLES_PER_BATCH:
            idx = torch.randint(0, flat.numel(), (_SAMPLES_PER_BATCH,), generator=gen)
            flat = flat[idx]
        return flat

    return sample


def measure_ranges(
    folded: nn.Module, patches: torch.Tensor, weights_sha256: str, source: str, batch_size: int = 512
) -> Calibration:
    """Activation ranges of a BN-folded fp32 HardNet (:func:`fold_for_inference`) on ``patches``."""
    import torch
    from torch import nn

    patches = torch.as_tensor(patches)
    convs = [m for m in folded.body if isinstance(m, nn.Conv2d)]
    if len(convs) != 7:
        raise ConfigError(f"expected the 7 convolutions of HardNet, found {len(convs)}")
    gen = torch.Generator().manual_seed(0)
    sample = _percentile_sampler(gen)
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(8)}  # 0: input, 1..7: convs

    hooks = [folded.body.register_forward_pre_hook(lambda _m, args: seen[0].append(sample(args[0])))]
    for i, conv in enumerate(convs, start=1):
        # A ReLU follows convolutions 1..6: its output range is [0, max(conv output)].
        hooks.append(conv.register_forward_hook(lambda _m, _a, out, i=i: seen[i].append(sample(out))))
    try:
        with torch.inference_mode():
            for start in range(0, patches.shape[0], batch_size):
                chunk = patches[start : start + batch_size].float().contiguous(memory_format=torch.channels_last)
                folded(chunk)
    finally:
        for h in hooks:
            h.remove()

    def pct(i: int, q: float) -> float:
        values = torch.cat(seen[i]).numpy()
        return float(np.percentile(values, q))

    lo_q = 100.0 - PERCENTILE
    return Calibration(
        weights_sha256=weights_sha256,
        input_range=(pct(0, lo_q), pct(0, PERCENTILE)),
        relu_max=tuple(pct(i, PERCENTILE) for i in range(1, 7)),
        output_range=(pct(7, lo_q), pct(7, PERCENTILE)),
        percentile=PERCENTILE,
        source=source,
    )


def _qparams(lo: float, hi: float, levels: int) -> tuple[float, int]:
    """Affine quint8 parameters covering ``[lo, hi]`` (which is widened to contain 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-6) / levels
    zero_point = int(round(-lo / scale))
    return scale, min(max(zero_point, 0), levels)

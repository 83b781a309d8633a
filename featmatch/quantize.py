"""Int8 inference for the CNN descriptors on x86 CPUs (VNNI), from a stored calibration.

Static post-training quantization, built by hand from torch's quantized modules (no FX
tracing at run time, so building the int8 network costs milliseconds):

- weights: per output channel, symmetric ``qint8`` (``scale = max|w| / 127``), computed from
  the BN-folded fp32 weights when the model is loaded;
- activations: per tensor ``quint8``, from ranges measured once on TRAIN-split patches and
  stored next to the weights in ``models/<name>.int8.json`` (``featmatch calibrate``). The
  file names the sha256 of the weights it was measured on; a stale file is refused;
- the per-patch input normalization and the final L2 normalization stay in fp32.

On CPUs without VNNI, fbgemm sums pairs of 8-bit products into int16 and can saturate, so
activations there use 7 bits (``reduce_range``); ``auto`` precision only picks int8 on VNNI
CPUs.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

logger = logging.getLogger(__name__)

# torch 2.13 warns that quantized tensors are deprecated (pytorch issue 184982); they work in
# the torch this package pins, and the warning would be printed on every ``match``.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")

#: Suffix of the calibration file next to ``<name>.pt``.
CALIBRATION_SUFFIX = ".int8.json"
#: Activation ranges clip at this percentile of the calibration activations (outliers would
#: otherwise stretch the 256 levels over values that almost never occur).
PERCENTILE = 99.99
#: Activation values sampled per layer and batch to estimate the percentile.
_SAMPLES_PER_BATCH = 200_000


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (8-bit dot products into int32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


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
    from .network import models_dir

    return models_dir() / f"{name}{CALIBRATION_SUFFIX}"


def load_calibration(name: str) -> Calibration | None:
    """The calibration of ``models/<name>.pt``, or None when there is none or it is stale."""
    from .network import recorded_sha256, sha256_of, weight_path

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


class Int8HardNet(nn.Module):
    """A BN-folded HardNet with quantized convolutions; same input and output as HardNet."""

    def __init__(self, body: nn.Sequential, normalize_input, in_scale: float, in_zero_point: int):
        super().__init__()
        self.body = body
        self.normalize_input = normalize_input
        self.in_scale = in_scale
        self.in_zero_point = in_zero_point

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.normalize_input(patches.float())
        q = torch.quantize_per_tensor(x, self.in_scale, self.in_zero_point, torch.quint8)
        out = self.body(q).dequantize()
        return F.normalize(out.flatten(1), dim=1)


def _quantized_conv(conv: nn.Conv2d, relu: bool, scale: float, zero_point: int) -> nn.Module:
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    cls = nniq.ConvReLU2d if relu else nnq.Conv2d
    q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=True)
    w = conv.weight.detach().float()
    w_scale = (w.abs().amax(dim=(1, 2, 3)) / 127.0).clamp(min=1e-12).double()
    qw = torch.quantize_per_channel(w, w_scale, torch.zeros_like(w_scale, dtype=torch.long), 0, torch.qint8)
    q.set_weight_bias(qw, conv.bias.detach().float())
    q.scale = float(scale)
    q.zero_point = int(zero_point)
    return q


def quantize(folded: nn.Module, calib: Calibration, vnni: bool | None = None) -> Int8HardNet:
    """Int8 copy of a BN-folded fp32 HardNet (CPU only)."""
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    elif "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    else:
        raise ConfigError("this torch build has no x86 quantized engine; int8 is unavailable, use bf16 or fp32")
    vnni = cpu_has_vnni() if vnni is None else vnni
    levels = 255 if vnni else 127
    convs = [m for m in folded.body if isinstance(m, nn.Conv2d)]
    if len(convs) != 7 or len(calib.relu_max) != 6:
        raise ConfigError("int8 quantization expects HardNet's 7 convolutions and 6 ReLU ranges")
    with warnings.catch_warnings():  # the module filter above does not hold where filters are reset
        warnings.simplefilter("ignore", UserWarning)
        layers = _quantized_layers(convs, calib, levels)
    in_scale, in_zp = _qparams(*calib.input_range, levels)
    return Int8HardNet(nn.Sequential(*layers), folded.normalize_input, in_scale, in_zp).eval()


def _quantized_layers(convs: list[nn.Conv2d], calib: Calibration, levels: int) -> list[nn.Module]:
    layers = []
    for i, conv in enumerate(convs):
        if i < 6:
            scale, zp = _qparams(0.0, calib.relu_max[i], levels)
            layers.append(_quantized_conv(conv, True, scale, zp))
        else:
            scale, zp = _qparams(*calib.output_range, levels)
            layers.append(_quantized_conv(conv, False, scale, zp))
    return layers

"""The torch engine's inference: BN folding, channels-last, reduced precision (bf16 / fp16), chunks.

BatchNorm without affine parameters is ``(conv(x) - mean) / sqrt(var + eps)``, so at inference
it folds into the convolution's weight and a bias. Dropout is the identity in eval mode.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class FoldedHardNet(nn.Module):
    """HardNet with BatchNorm folded into its convolutions; same input and output as HardNet."""

    def __init__(self, body: nn.Sequential, normalize_input):
        super().__init__()
        self.body = body
        self.normalize_input = normalize_input

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.body(self.normalize_input(patches))
        return F.normalize(x.flatten(1).float(), dim=1)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * inv_std.view(-1, 1, 1, 1)
    bias = -bn.running_mean * inv_std
    if conv.bias is not None:
        bias = bias + conv.bias * inv_std
    if bn.affine:
        weight = weight * bn.weight.view(-1, 1, 1, 1)
        bias = bias * bn.weight + bn.bias
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


def fold_for_inference(model: nn.Module, device: str) -> nn.Module:
    """Return an eval-mode copy of a HardNet with BN folded, channels-last, on ``device``."""
    model = model.eval()
    layers: list[nn.Module] = []
    mods = [m for m in model.features if not isinstance(m, nn.Dropout)]
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
            layers.append(_fold(m, mods[i + 1]))
            i += 2
        else:
            layers.append(m)
            i += 1
    folded = FoldedHardNet(nn.Sequential(*layers), model.normalize_input).eval()
    return folded.to(device=device, memory_format=torch.channels_last)


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def run_batched(net: nn.Module, patches: torch.Tensor, batch_size: int, device: str, precision: str) -> np.ndarray:
    """Describe ``(N, 1, 32, 32)`` patches in chunks of ``batch_size``; returns ``(N, 128)`` float32."""
    n = patches.shape[0]
    out = torch.empty((n, 128), dtype=torch.float32, device=device)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            chunk = patches[start : start + batch_size].to(device, non_blocking=True)
            chunk = chunk.contiguous(memory_format=torch.channels_last)
            if precision in _DTYPES:
                with torch.autocast(device_type=device, dtype=_DTYPES[precision]):
                    out[start : start + batch_size] = net(chunk)
            else:
                out[start : start + batch_size] = net(chunk)
    return out.cpu().numpy()

"""The ``torch`` engine: the BN-folded PyTorch network (:mod:`featmatch.inference`).

fp32 on any CPU, bf16 on CPUs with native bf16, fp16 or fp32 on CUDA. It is also the engine of
models that exist only in memory (random weights in the tests).
"""

from __future__ import annotations

import numpy as np


class TorchEngine:
    """Describe patches with a folded :class:`~featmatch.network.HardNet`.

    Args:
        net: a model from :func:`featmatch.inference.fold_for_inference` on ``device``.
        precision: ``fp32``, ``bf16`` (CPU) or ``fp16`` (CUDA).
        device: ``cpu`` or ``cuda``.
        batch_size: patches per forward pass.
    """

    name = "torch"
    variant = None

    def __init__(self, net, precision: str, device: str, batch_size: int = 256):
        self.net = net
        self.precision = precision
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def for_model(cls, model_name: str, choice, batch_size: int, model=None, weights_sha256=None) -> TorchEngine:
        """The torch engine of ``models/<model_name>.pt`` (or ``model``); ``load_weights`` checks the
        weights against their ``.sha256`` itself, so ``weights_sha256`` is not needed here."""
        from ..inference import fold_for_inference
        from ..network import load_weights

        net = model if model is not None else load_weights(model_name)
        return cls(fold_for_inference(net, choice.device), choice.precision, choice.device, batch_size)

    def __call__(self, patches) -> np.ndarray:
        """Shape: ``(N, 1, 32, 32)`` float32 (numpy or torch) -> ``(N, 128)`` float32 unit vectors."""
        import torch

        from ..inference import run_batched

        x = patches if isinstance(patches, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(patches))
        return run_batched(self.net, x.float(), self.batch_size, self.device, self.precision)

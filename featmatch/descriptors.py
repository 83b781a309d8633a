"""Stage 3: descriptors, by name.

``DESCRIPTORS`` is the registry that both the CLI and the API read. ``sift`` and ``rootsift``
are OpenCV's descriptors computed on the detected keypoints (no torch involved); ``hardnet``
and ``exptloss`` are our CNN (:class:`featmatch.network.HardNet`) run on the normalized
patches of :mod:`featmatch.patches`. torch is imported only when a CNN descriptor is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .detect import Keypoints
from .errors import ConfigError, DeviceError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: Default descriptor of the API and the CLI.
DEFAULT_DESCRIPTOR = "hardnet"
#: Patches described per forward pass: bounds peak memory whatever the keypoint count.
DEFAULT_BATCH_SIZE = 256
#: Device choices of the CLI.
DEVICES = ("auto", "cpu", "cuda")
#: Precision choices of the CNN descriptors ("auto": int8 on CPUs with VNNI when the weights have
#: an int8 calibration, else bf16 on CPUs with native bf16, else fp32; fp16 on CUDA).
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` without one is an error."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise DeviceError(
            "--device cuda was requested but no CUDA GPU is available (torch.cuda.is_available() is False)"
        )
    return "cpu"


class SiftDescriptor:
    """OpenCV SIFT descriptors (128-d, float32) on the detected keypoints.

    With ``root=True`` it is RootSIFT (Arandjelovic & Zisserman 2012): L1-normalize, square root,
    which makes Euclidean distance behave like the Hellinger kernel.
    """

    def __init__(self, root: bool = False):
        self.root = root
        self.name = "rootsift" if root else "sift"
        self._sift = cv2.SIFT_create()

    def __call__(self, keypoints: Keypoints) -> np.ndarray:
        """Shape: ``Keypoints`` of N points -> ``(N, 128)`` float32."""
        if len(keypoints) == 0:
            return np.zeros((0, 128), np.float32)
        if keypoints.sift is not None:  # computed by the detector in the same pass
            desc = keypoints.sift.copy()
        elif keypoints.frame is not None:
            raise ConfigError(
                "SIFT descriptors of simulated oblique views are computed while detecting: "
                "detect with DetectConfig(with_sift=True, max_tilt=...)"
            )
        else:
            _, desc = self._sift.compute(keypoints.det_image, list(keypoints.cv_keypoints))
            if desc is None or desc.shape[0] != len(keypoints):
                raise ConfigError("OpenCV SIFT dropped keypoints while describing; cannot keep indices aligned")
            desc = desc.astype(np.float32)
        if self.root:
            desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-7)
            np.sqrt(desc, out=desc)
        return desc


class CNNDescriptor:
    """A learned descriptor (``hardnet`` or ``exptloss``) from ``models/<name>.pt``.

    The model is loaded once; for inference BatchNorm is folded into the convolutions, the
    network runs channels-last, and patches are described in chunks of ``batch_size``.

    Args:
        name: weight file name in ``models/``.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto`` (int8 on CPUs with VNNI when ``models/<name>.int8.json`` exists,
            else bf16 on CPUs with native bf16 support, else fp32; fp16 on CUDA), ``fp32``,
            ``bf16``, ``fp16`` (CUDA) or ``int8`` (CPU, needs the calibration).
        batch_size: patches per forward pass.
        model: an already built :class:`~featmatch.network.HardNet` (tests use random weights);
            when given, ``name`` is only a label.
        calibration: int8 activation ranges (:class:`~featmatch.quantize.Calibration`);
            by default ``models/<name>.int8.json`` when ``model`` is not given.
    """

    def __init__(
        self,
        name: str,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        model: torch.nn.Module | None = None,
        calibration=None,
    ):
        from .inference import fold_for_inference, pick_precision
        from .network import load_weights
        from .quantize import load_calibration, quantize

        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.device = resolve_device(device)
        if calibration is None and model is None and precision in ("auto", "int8") and self.device == "cpu":
            calibration = load_calibration(name)
        self.precision = pick_precision(precision, self.device, int8_ready=calibration is not None)
        if self.precision == "int8" and calibration is None:
            raise ConfigError(
                f"--precision int8 needs an int8 calibration of '{name}' (models/{name}.int8.json); "
                f"make it with `featmatch calibrate {name}`"
            )
        self.batch_size = batch_size
        net = model if model is not None else load_weights(name)
        self.net = fold_for_inference(net, self.device)
        if self.precision == "int8":
            self.net = quantize(self.net, calibration)

    def describe_patches(self, patches: torch.Tensor) -> np.ndarray:
        """Shape: ``(N, 1, 32, 32)`` patches -> ``(N, 128)`` float32 unit vectors."""
        from .inference import run_batched

        return run_batched(self.net, patches, self.batch_size, self.device, self.precision)

    def __call__(self, keypoints: Keypoints) -> np.ndarray:
        from .patches import patches_for

        if len(keypoints) == 0:
            return np.zeros((0, 128), np.float32)
        return self.describe_patches(patches_for(keypoints, device=self.device))


#: name -> factory(device, precision, batch_size) building a descriptor callable.
DESCRIPTORS: dict[str, Callable[..., Callable[[Keypoints], np.ndarray]]] = {
    "sift": lambda **_: SiftDescriptor(root=False),
    "rootsift": lambda **_: SiftDescriptor(root=True),
    "hardnet": lambda **kw: CNNDescriptor("hardnet", **kw),
    "exptloss": lambda **kw: CNNDescriptor("exptloss", **kw),
}


def check_descriptor_name(name: str) -> None:
    """Raise ConfigError (listing the valid names) when ``name`` is not in :data:`DESCRIPTORS`."""
    if name not in DESCRIPTORS:
        raise ConfigError(f"unknown descriptor '{name}'; choose one of {', '.join(sorted(DESCRIPTORS))}")


def build_descriptor(name: str, **options) -> Callable[[Keypoints], np.ndarray]:
    """Build the descriptor ``name`` from :data:`DESCRIPTORS`.

    Raises:
        ConfigError: unknown name (the message lists the valid ones).
        ModelNotFoundError: a learned descriptor whose weights are missing.
    """
    check_descriptor_name(name)
    return DESCRIPTORS[name](**options)

"""Stage 3: descriptors, by name.

``DESCRIPTORS`` is the registry that both the CLI and the API read. ``sift`` and ``rootsift``
are OpenCV's descriptors computed on the detected keypoints (no torch involved); ``hardnet``
and ``exptloss`` are our CNN (:class:`featmatch.network.HardNet`) run on the normalized
patches of :mod:`featmatch.patches`, by an inference engine (:mod:`featmatch.engines`: ONNX
Runtime on the CPU, torch on CUDA or as the fallback). On the CPU with ONNX Runtime nothing
here imports torch or kornia.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .detect import Keypoints
from .engines.select import PRECISIONS, EngineChoice
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
#: The descriptors OpenCV computes on the keypoints (no patches, no CNN); the others are learned.
SIFT_DESCRIPTORS = ("sift", "rootsift")
# PRECISIONS: the precision choices of the CNN descriptors (from :mod:`featmatch.engines.select`;
# "auto": the fastest that keeps quality on this machine).
__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_DESCRIPTOR", "DESCRIPTORS", "DEVICES", "PRECISIONS", "SIFT_DESCRIPTORS", "CNNDescriptor",
           "SiftDescriptor", "build_descriptor", "check_descriptor_name", "describe_patches", "resolve_device"]  # fmt: skip


def nvidia_driver_present() -> bool:
    """True when an NVIDIA driver is loaded (``/proc/driver/nvidia/version`` or ``/dev/nvidia0``)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` without one is an error.

    ``auto`` imports torch only where CUDA is possible at all: torch installed and an NVIDIA
    driver present. So the CPU path of a machine without a GPU never pays for ``import torch``.
    """
    from .engines import TORCH_INSTALL_HINT, have_module

    if device not in DEVICES:
        raise ConfigError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    if not have_module("torch"):
        if device == "cuda":
            raise DeviceError(f"--device cuda needs PyTorch with CUDA: {TORCH_INSTALL_HINT}")
        return "cpu"
    if device == "auto" and not nvidia_driver_present():
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

    The engine and precision are chosen once (:func:`featmatch.engines.choose_engine`: ONNX
    Runtime int8 or fp32 on the CPU from the exports beside the weights, torch fp16 on CUDA,
    torch fp32 as the fallback); patches are described in chunks of ``batch_size``.

    Args:
        name: weight file name in ``models/``.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto`` (the fastest that keeps quality here, never an emulated bf16),
            ``fp32``, ``bf16`` (torch, CPUs with native bf16), ``fp16`` (CUDA) or ``int8``
            (ONNX Runtime, needs the int8 export).
        batch_size: patches per forward pass.
        model: an already built :class:`~featmatch.network.HardNet` (tests use random weights);
            when given, ``name`` is only a label and the torch engine runs it.
        cpu: a :class:`~featmatch.engines.CpuInfo` to decide for (default: this machine's).

    Attributes:
        choice: the :class:`~featmatch.engines.EngineChoice` (engine, precision, variant, why).
        precision: ``choice.precision``.
    """

    def __init__(
        self,
        name: str,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        model: torch.nn.Module | None = None,
        cpu=None,
    ):
        from .engines import build_engine, choose_engine, have_module, probe_cpu
        from .engines.select import Exports, fresh_exports
        from .weights import existing_weight_path

        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.device = resolve_device(device)
        if model is None and self.device == "cpu":
            existing_weight_path(name)  # a missing .pt gets the training advice, whichever engine runs
            exports = fresh_exports(name)
        else:
            exports = Exports()
        self.choice: EngineChoice = choose_engine(
            name,
            precision,
            self.device,
            cpu or probe_cpu(),
            have_onnxruntime=have_module("onnxruntime"),
            have_torch=have_module("torch"),
            exports=exports.variants,
            exports_reason=exports.reason,
            in_memory=model is not None,
        )
        self.precision = self.choice.precision
        self.batch_size = batch_size
        self.engine = build_engine(self.choice, name, batch_size, model=model, weights_sha256=exports.weights_sha256)

    def describe_patches(self, patches) -> np.ndarray:
        """Describe patches (see :func:`as_patch_array` for what is accepted).

        Shape: ``(N, 1, 32, 32)`` or ``(N, 32, 32)`` patches -> ``(N, 128)`` float32 unit vectors.
        """
        x = as_patch_array(patches)
        if x.shape[0] == 0:
            return np.zeros((0, 128), np.float32)
        return self.engine(x)

    def __call__(self, keypoints: Keypoints) -> np.ndarray:
        from .patches import patches_for

        if len(keypoints) == 0:
            return np.zeros((0, 128), np.float32)
        return self.engine(patches_for(keypoints))


def as_patch_array(patches) -> np.ndarray:
    """Patches as a float32 ``(N, 1, 32, 32)`` numpy array with values in [0, 1].

    Accepts numpy arrays or torch tensors (any device), uint8 (0..255) or float (0..1), of shape
    ``(N, 1, 32, 32)`` or ``(N, 32, 32)``; ``N = 0`` is fine.

    Raises:
        ConfigError: another shape or dtype.
    """
    if type(patches).__module__.split(".")[0] == "torch":  # a tensor, without importing torch here
        patches = patches.detach().cpu().numpy()
    x = np.asarray(patches)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != (1, 32, 32):
        raise ConfigError(f"patches must be (N, 1, 32, 32) or (N, 32, 32), got shape {tuple(np.shape(patches))}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    if not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"patches must be uint8 (0..255) or float (0..1), got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _cached_descriptor(name: str, device: str, precision: str) -> CNNDescriptor:
    return CNNDescriptor(name, device=device, precision=precision)


def describe_patches(patches, descriptor: str = DEFAULT_DESCRIPTOR, device: str = "auto",
                     precision: str = "auto") -> np.ndarray:  # fmt: skip
    """Descriptors of ready-cut patches with a learned descriptor (built once per process).

    Args:
        patches: numpy array or torch tensor, uint8 (0..255) or float (0..1), ``(N, 1, 32, 32)``
            or ``(N, 32, 32)``; any ``N`` including 0.
        descriptor: ``hardnet`` or ``exptloss``.
        device, precision: as for :class:`CNNDescriptor`.

    Returns:
        ``(N, 128)`` float32 unit vectors.
    """
    check_descriptor_name(descriptor)
    if descriptor in SIFT_DESCRIPTORS:
        raise ConfigError("describe_patches needs a learned descriptor (hardnet or exptloss); SIFT describes keypoints")
    return _cached_descriptor(descriptor, device, precision).describe_patches(patches)


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

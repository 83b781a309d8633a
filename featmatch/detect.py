"""Stage 1: keypoint detection with OpenCV's DoG (SIFT) detector.

Large images are downscaled so that their longer side is at most ``max_side`` before
detection; every later stage (patches, SIFT descriptors) works on that same detection image,
and keypoint coordinates and sizes are mapped back to full resolution at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import ConfigError

#: Default number of strongest keypoints kept per image.
DEFAULT_MAX_KEYPOINTS = 4000
#: Default cap on the longer image side used for detection (pixels).
DEFAULT_MAX_SIDE = 2048


@dataclass(frozen=True)
class DetectConfig:
    """Options of the detector.

    Attributes:
        max_keypoints: keep at most this many keypoints, the strongest by DoG response.
        max_side: images whose longer side exceeds this are downscaled for detection.
        contrast_threshold: OpenCV SIFT's DoG contrast threshold (lower finds more points).
        edge_threshold: OpenCV SIFT's edge rejection threshold.
        with_sift: also compute SIFT descriptors in the same pass (saves building the scale
            space twice when the descriptor is ``sift`` or ``rootsift``).
    """

    max_keypoints: int = DEFAULT_MAX_KEYPOINTS
    max_side: int = DEFAULT_MAX_SIDE
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0
    with_sift: bool = False

    def __post_init__(self) -> None:
        if self.max_keypoints < 1:
            raise ConfigError(f"max_keypoints must be at least 1, got {self.max_keypoints}")
        if self.max_side < 64:
            raise ConfigError(f"max_side must be at least 64 pixels, got {self.max_side}")


@dataclass(frozen=True)
class Keypoints:
    """Keypoints of one image.

    Attributes:
        xy: ``(N, 2)`` float32 full-resolution pixel coordinates (x, y), pixel centres at integers.
        size: ``(N,)`` OpenCV ``KeyPoint.size`` (a diameter) at full resolution.
        angle: ``(N,)`` OpenCV ``KeyPoint.angle`` in degrees (OpenCV's convention).
        response: ``(N,)`` DoG response.
        scale: full-resolution pixels per detection-image pixel (1.0 when not downscaled).
        det_image: ``(h, w)`` uint8 detection image the keypoints were found in.
        cv_keypoints: the OpenCV keypoints in detection-image coordinates (for SIFT descriptors).
        sift: ``(N, 128)`` float32 SIFT descriptors when detected ``with_sift``, else None.
    """

    xy: np.ndarray
    size: np.ndarray
    angle: np.ndarray
    response: np.ndarray
    scale: float = 1.0
    det_image: np.ndarray = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    cv_keypoints: tuple = field(default=(), repr=False, compare=False)
    sift: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @property
    def det_xy(self) -> np.ndarray:
        """``(N, 2)`` coordinates in the detection image."""
        return to_detection_coords(self.xy, self.scale)

    @property
    def det_size(self) -> np.ndarray:
        """``(N,)`` sizes in detection-image pixels."""
        return (self.size / self.scale).astype(np.float32)


def to_detection_coords(xy: np.ndarray, scale: float) -> np.ndarray:
    """Map full-resolution pixel coordinates into the detection image (pixel centres kept)."""
    return ((xy + 0.5) / scale - 0.5).astype(np.float32)


def to_full_coords(xy: np.ndarray, scale: float) -> np.ndarray:
    """Map detection-image coordinates back to full resolution (pixel centres kept)."""
    return ((xy + 0.5) * scale - 0.5).astype(np.float32)


def detection_image(gray: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Return the uint8 image to detect in and its full-resolution pixels per pixel.

    A downscale uses area interpolation (no aliasing); a single factor is used for both axes.
    """
    h, w = gray.shape[:2]
    scale = max(h, w) / max_side if max(h, w) > max_side else 1.0
    img = gray
    if scale > 1.0:
        size = (max(1, round(w / scale)), max(1, round(h / scale)))
        img = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        scale = w / size[0]
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), float(scale)


def _from_cv(kps: tuple, det: np.ndarray, scale: float, sift: np.ndarray | None = None) -> Keypoints:
    n = len(kps)
    xy = cv2.KeyPoint_convert(kps).reshape(n, 2).astype(np.float32) if n else np.zeros((0, 2), np.float32)
    attrs = np.array([(k.size, k.angle, k.response) for k in kps], dtype=np.float32).reshape(n, 3)
    return Keypoints(
        xy=to_full_coords(xy, scale),
        size=attrs[:, 0] * scale,
        angle=attrs[:, 1].copy(),
        response=attrs[:, 2].copy(),
        scale=scale,
        det_image=det,
        cv_keypoints=tuple(kps),
        sift=sift,
    )


def detect(gray: np.ndarray, config: DetectConfig = DetectConfig()) -> Keypoints:
    """Detect DoG keypoints in a grayscale float image.

    Args:
        gray: ``(H, W)`` float32 image in [0, 1].
        config: detector options.

    Returns:
        The strongest ``config.max_keypoints`` keypoints (possibly none), sorted by response.
    """
    det, scale = detection_image(gray, config.max_side)
    sift = cv2.SIFT_create(
        nfeatures=config.max_keypoints,
        contrastThreshold=config.contrast_threshold,
        edgeThreshold=config.edge_threshold,
    )
    if config.with_sift:
        kps, desc = sift.detectAndCompute(det, None)
        desc = np.zeros((0, 128), np.float32) if desc is None else desc.astype(np.float32, copy=False)
    else:
        kps, desc = sift.detect(det, None), None
    # OpenCV may return a few more than nfeatures when responses tie; keep the contract exact.
    order = np.argsort([-k.response for k in kps], kind="stable")[: config.max_keypoints]
    kps = tuple(kps[i] for i in order)
    return _from_cv(kps, det, scale, None if desc is None else desc[order])

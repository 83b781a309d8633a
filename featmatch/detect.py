"""Stage 1: keypoint detection with OpenCV's DoG (SIFT) detector.

Large images are downscaled so that their longer side is at most ``max_side`` before
detection; every later stage (patches, SIFT descriptors) works on that same detection image,
and keypoint coordinates and sizes are mapped back to full resolution at the end.

Affine view simulation (``max_tilt > 1``, ASIFT: Morel & Yu, SIAM J. Imaging Sciences 2009):
DoG is not affine invariant, so two views of a surface seen from very different angles share
few keypoints. Besides the image itself, DoG then also runs on simulated oblique views: the
image rotated by a roll ``phi`` and squeezed by a tilt ``t`` along x (after an anti-aliasing
blur), for ``t = sqrt(2), 2, 2 sqrt(2), ...`` up to ``max_tilt`` and ``phi`` in steps of
``72 / t`` degrees over [0, 180). Each keypoint found in a view is mapped back into the
image, and it keeps the view's local affine frame (:attr:`Keypoints.frame`) so that its patch,
or its SIFT descriptor, is the view's: affine-normalized.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from .errors import ConfigError, check_type

#: Default number of strongest keypoints kept per image.
DEFAULT_MAX_KEYPOINTS = 4000
#: Default cap on the longer image side used for detection (pixels).
DEFAULT_MAX_SIDE = 2048
#: Largest keypoint count or image side OpenCV takes (a C int).
C_INT_MAX = 2**31 - 1
#: Largest ``max_tilt`` accepted (ASIFT's own limit: 80 degrees of viewpoint change).
MAX_TILT_LIMIT = 5.7

#: The type each :class:`DetectConfig` field takes (checked first: ``"1000"`` is refused by name).
_DETECT_TYPES = {
    "max_keypoints": "int",
    "max_side": "int",
    "contrast_threshold": "number",
    "edge_threshold": "number",
    "with_sift": "bool",
    "max_tilt": "number",
    "view_keypoints": "int",
}


@dataclass(frozen=True)
class DetectConfig:
    """Options of the detector.

    Attributes:
        max_keypoints: keep at most this many keypoints, the strongest by DoG response.
        max_side: images whose longer side exceeds this are downscaled for detection.
        contrast_threshold: OpenCV SIFT's DoG contrast threshold (lower finds more points).
        edge_threshold: OpenCV SIFT's edge rejection threshold.
        with_sift: also compute SIFT descriptors in the same pass (saves building the scale
            space twice when the descriptor is ``sift`` or ``rootsift``; required for SIFT
            descriptors of simulated views).
        max_tilt: simulate oblique views up to this tilt (1: off; 2: up to 60 degrees of
            viewpoint change, 9 more views; 4: up to 75 degrees, 27 more views). Each view keeps up to
            ``view_keypoints`` keypoints, so the work grows with the number of views.
        view_keypoints: keypoints kept per simulated view (0: ``max_keypoints``).
    """

    max_keypoints: int = DEFAULT_MAX_KEYPOINTS
    max_side: int = DEFAULT_MAX_SIDE
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0
    with_sift: bool = False
    max_tilt: float = 1.0
    view_keypoints: int = 0

    def __post_init__(self) -> None:
        for name, kind in _DETECT_TYPES.items():
            check_type(name, getattr(self, name), kind)
        if self.view_keypoints < 0:
            raise ConfigError(f"view_keypoints must be 0 (same as max_keypoints) or more, got {self.view_keypoints}")
        if not 1.0 <= self.max_tilt <= MAX_TILT_LIMIT:
            raise ConfigError(f"max_tilt must be between 1 (off) and {MAX_TILT_LIMIT:g}, got {self.max_tilt}")
        if not 1 <= self.max_keypoints <= C_INT_MAX:
            raise ConfigError(f"max_keypoints must be between 1 and {C_INT_MAX}, got {self.max_keypoints}")
        if not 64 <= self.max_side <= C_INT_MAX:
            raise ConfigError(f"max_side must be between 64 and {C_INT_MAX} pixels, got {self.max_side}")
        if self.view_keypoints > C_INT_MAX:
            raise ConfigError(f"view_keypoints must be at most {C_INT_MAX}, got {self.view_keypoints}")


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
        cv_keypoints: the OpenCV keypoints in detection-image coordinates (for SIFT descriptors);
            empty when oblique views were simulated (their SIFT descriptors come from detection).
        sift: ``(N, 128)`` float32 SIFT descriptors when detected ``with_sift``, else None.
        frame: ``(N, 2, 2)`` float32 when oblique views were simulated, else None: the linear
            map from the keypoint's view into the detection image. The keypoint's region is
            ``frame`` applied to the disk of diameter ``size`` around ``xy`` (identity for
            keypoints of the image itself); ``size`` and ``angle`` are measured in the view.
    """

    xy: np.ndarray
    size: np.ndarray
    angle: np.ndarray
    response: np.ndarray
    scale: float = 1.0
    det_image: np.ndarray = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    cv_keypoints: tuple = field(default=(), repr=False, compare=False)
    sift: np.ndarray | None = field(default=None, repr=False, compare=False)
    frame: np.ndarray | None = field(default=None, repr=False, compare=False)

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
    xy, attrs = _cv_arrays(kps)
    return _assemble(xy, attrs, det, scale, tuple(kps), sift)


def _cv_arrays(kps: tuple) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV keypoints -> ``(N, 2)`` float32 positions and ``(N, 3)`` size, angle, response rows."""
    n = len(kps)
    xy = cv2.KeyPoint_convert(kps).reshape(n, 2).astype(np.float32) if n else np.zeros((0, 2), np.float32)
    return xy, np.array([(k.size, k.angle, k.response) for k in kps], dtype=np.float32).reshape(n, 3)


def _assemble(
    det_xy: np.ndarray,
    attrs: np.ndarray,
    det: np.ndarray,
    scale: float,
    cv_keypoints: tuple,
    sift: np.ndarray | None,
    frame: np.ndarray | None = None,
) -> Keypoints:
    """Keypoints from detection-image positions and ``(N, 3)`` size, angle, response rows."""
    return Keypoints(
        xy=to_full_coords(det_xy, scale),
        size=attrs[:, 0] * scale,
        angle=attrs[:, 1].copy(),
        response=attrs[:, 2].copy(),
        scale=scale,
        det_image=det,
        cv_keypoints=cv_keypoints,
        sift=sift,
        frame=frame,
    )


def _detect_cv(img: np.ndarray, config: DetectConfig, mask: np.ndarray | None = None):
    """OpenCV keypoints (strongest first, at most ``max_keypoints``) and SIFT descriptors or None."""
    sift = cv2.SIFT_create(
        nfeatures=config.max_keypoints,
        contrastThreshold=config.contrast_threshold,
        edgeThreshold=config.edge_threshold,
    )
    if config.with_sift:
        kps, desc = sift.detectAndCompute(img, mask)
        desc = np.zeros((0, 128), np.float32) if desc is None else desc.astype(np.float32, copy=False)
    else:
        kps, desc = sift.detect(img, mask), None
    # OpenCV may return a few more than nfeatures when responses tie; keep the contract exact.
    order = np.argsort([-k.response for k in kps], kind="stable")[: config.max_keypoints]
    return tuple(kps[i] for i in order), None if desc is None else desc[order]


def detect(gray: np.ndarray, config: DetectConfig = DetectConfig()) -> Keypoints:
    """Detect DoG keypoints in a grayscale float image.

    Args:
        gray: ``(H, W)`` float32 image in [0, 1].
        config: detector options.

    Returns:
        The strongest ``config.max_keypoints`` keypoints (possibly none), sorted by response;
        with ``max_tilt > 1`` followed by those of each simulated view (see the module doc).
    """
    det, scale = detection_image(gray, config.max_side)
    kps, desc = _detect_cv(det, config)
    base = _from_cv(kps, det, scale, desc)
    if config.max_tilt <= 1.0:
        return base
    return _with_views(base, det, scale, config)


def view_parameters(max_tilt: float) -> list[tuple[float, float]]:
    """``(tilt, roll in degrees)`` of the simulated views, ASIFT's sampling up to ``max_tilt``."""
    views = []
    k = 1
    while (tilt := round(math.sqrt(2.0) ** k, 9)) <= max_tilt + 1e-9:
        step = 72.0 / tilt
        views += [(tilt, step * i) for i in range(math.ceil(180.0 / step - 1e-6))]
        k += 1
    return views


def simulate_view(img: np.ndarray, tilt: float, roll: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An oblique view of ``img``: rotated by ``roll`` degrees, then squeezed by ``tilt`` along x.

    Returns:
        ``(view, mask, A)``: the uint8 view, the mask of its pixels that come from the image
        (eroded so that the canvas border yields no keypoints), and the ``(2, 3)`` affine map
        from image pixels to view pixels (pixel centres at integers).
    """
    h, w = img.shape[:2]
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    rot = np.array([[c, -s], [s, c]])
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64) @ rot.T
    lo, hi = corners.min(0), corners.max(0)
    size = (int(math.ceil(hi[0] - lo[0])) + 1, int(math.ceil(hi[1] - lo[1])) + 1)
    a_rot = np.hstack([rot, -lo[:, None]])
    view = cv2.warpAffine(img, a_rot, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(np.full((h, w), 255, np.uint8), a_rot, size, flags=cv2.INTER_NEAREST)
    a = np.vstack([a_rot, [0.0, 0.0, 1.0]])
    if tilt > 1.0:
        # anti-aliasing along x only (ASIFT: sigma = 0.8 sqrt(t^2 - 1)), then squeeze x by 1/t
        view = cv2.GaussianBlur(view, (0, 0), sigmaX=0.8 * math.sqrt(tilt * tilt - 1.0), sigmaY=1e-3)
        squeeze = np.array([[1.0 / tilt, 0.0, 0.5 / tilt - 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        out = (max(1, int(math.ceil(size[0] / tilt))), size[1])
        view = cv2.warpAffine(view, squeeze[:2], out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.warpAffine(mask, squeeze[:2], out, flags=cv2.INTER_NEAREST)
        a = squeeze @ a
    mask = cv2.erode(mask, np.ones((7, 7), np.uint8))
    return view, mask, a[:2].astype(np.float64)


def _view_keypoints(det: np.ndarray, tilt: float, roll: float, config: DetectConfig):
    view, mask, a = simulate_view(det, tilt, roll)
    kps, desc = _detect_cv(view, config, mask)
    if len(kps) == 0:
        return None
    inv = np.linalg.inv(a[:, :2])
    pts, attrs = _cv_arrays(kps)
    xy = (pts.astype(np.float64) - a[:, 2]) @ inv.T
    h, w = det.shape
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    idx = np.flatnonzero(inside)
    attrs = attrs[idx]
    frames = np.repeat(inv[None].astype(np.float32), len(idx), axis=0)
    return xy[idx].astype(np.float32), attrs, frames, None if desc is None else desc[idx]


def _with_views(base: Keypoints, det: np.ndarray, scale: float, config: DetectConfig) -> Keypoints:
    views = view_parameters(config.max_tilt)
    if config.view_keypoints:
        config = replace(config, max_keypoints=config.view_keypoints)
    # OpenCV releases the GIL: the views are detected on all cores.
    with ThreadPoolExecutor(max_workers=max(1, min(len(views), os.cpu_count() or 1))) as pool:
        found = [r for r in pool.map(lambda v: _view_keypoints(det, v[0], v[1], config), views) if r is not None]
    n0 = len(base)
    xy = np.concatenate([base.det_xy] + [f[0] for f in found])
    attrs = np.concatenate(
        [np.stack([base.size / scale, base.angle, base.response], 1).astype(np.float32)] + [f[1] for f in found]
    )
    frames = np.concatenate([np.repeat(np.eye(2, dtype=np.float32)[None], n0, axis=0)] + [f[2] for f in found])
    sift = None
    if config.with_sift:
        sift = np.concatenate([base.sift] + [f[3] for f in found]).astype(np.float32, copy=False)
    return _assemble(xy, attrs, det, scale, (), sift, frames)

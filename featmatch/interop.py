"""Interop with OpenCV and kornia: keypoints, matches and patches in their types.

Every conversion is in **full-resolution** pixel coordinates of the image (origin at the
centre of the top-left pixel, OpenCV's convention), whatever resolution featmatch detected at.
Exported from :mod:`featmatch`::

    import featmatch
    f = featmatch.describe("a.jpg")                       # featmatch keypoints + descriptors
    kps = featmatch.to_cv_keypoints(f.keypoints)          # list[cv2.KeyPoint], full resolution
    own = featmatch.from_cv_keypoints(orb_kps, "a.jpg")   # cv2.KeyPoint list -> Keypoints
    lafs = featmatch.to_kornia_lafs(f.keypoints)          # (1, N, 2, 3) torch tensor
    dm = featmatch.to_cv_matches(result)                  # list[cv2.DMatch]
    patches = featmatch.extract_patches(gray_u8, xy, size, angle)   # featmatch.patches' sampler

Keypoints found in simulated oblique views (``max_tilt > 1``) carry an affine frame that a
``cv2.KeyPoint`` cannot hold: their KeyPoint has the full-resolution ``pt``, the ``size`` of the
circle with the frame's area and the ``angle`` of the frame's orientation axis. ``to_kornia_lafs``
keeps the frame exactly. Importing this module does not import torch (only :func:`to_kornia_lafs`
does); ``featmatch.extract_patches`` is :func:`featmatch.patches.extract_patches`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .detect import DEFAULT_MAX_SIDE, Keypoints, detection_image, to_detection_coords
from .errors import ConfigError
from .imageio import Image, ImageLike, load_image

__all__ = ["to_cv_keypoints", "from_cv_keypoints", "to_kornia_lafs", "to_cv_matches"]


def _check_keypoints(keypoints: object) -> None:
    if not isinstance(keypoints, Keypoints):
        hint = " (pass features.keypoints)" if hasattr(keypoints, "keypoints") else ""
        raise ConfigError(
            f"keypoints must be featmatch Keypoints (Features.keypoints), got {type(keypoints).__name__}{hint}"
        )


def _frame_size_angle(keypoints: Keypoints) -> tuple[np.ndarray, np.ndarray]:
    """``size`` and ``angle`` per keypoint in the image, with simulated-view frames folded in."""
    size = keypoints.size.astype(np.float32)
    angle = keypoints.angle.astype(np.float32)
    if keypoints.frame is None:
        return size, angle
    f = keypoints.frame.astype(np.float64)
    identity = np.all(np.abs(f - np.eye(2)) < 1e-7, axis=(1, 2))
    det = np.abs(np.linalg.det(f))
    # The patch's first axis is (cos a, sin a) for OpenCV angle a (featmatch.patches.keypoints_to_laf);
    # a simulated view's frame maps it into the image.
    a = np.radians(keypoints.angle.astype(np.float64))
    axis = np.einsum("nij,nj->ni", f, np.stack([np.cos(a), np.sin(a)], 1))
    view_angle = np.degrees(np.arctan2(axis[:, 1], axis[:, 0])) % 360.0
    size = np.where(identity, size, (keypoints.size * np.sqrt(det)).astype(np.float32))
    angle = np.where(identity, angle, view_angle.astype(np.float32))
    return size.astype(np.float32), angle.astype(np.float32)


def to_cv_keypoints(keypoints: Keypoints) -> list[cv2.KeyPoint]:
    """featmatch keypoints -> ``cv2.KeyPoint`` list in full-resolution image coordinates.

    Args:
        keypoints: detected :class:`~featmatch.detect.Keypoints` (``Features.keypoints``), with
            or without simulated views.

    Returns:
        One ``cv2.KeyPoint`` per keypoint, same order: ``pt`` = ``keypoints.xy``, ``size``,
        ``angle`` (OpenCV's conventions), ``response``, the detector's ``octave`` (0 for
        simulated views; SIFT descriptors read it); ``class_id`` is the keypoint's index.
        For a simulated-view keypoint, ``size`` and ``angle`` approximate its affine frame
        (see the module doc).

    Raises:
        ConfigError: ``keypoints`` is not a :class:`~featmatch.detect.Keypoints`.
    """
    _check_keypoints(keypoints)
    size, angle = _frame_size_angle(keypoints)
    xy = keypoints.xy.astype(np.float32)
    detected = keypoints.cv_keypoints
    octave = [k.octave for k in detected] if len(detected) == len(keypoints) else [0] * len(keypoints)
    return [
        cv2.KeyPoint(float(xy[i, 0]), float(xy[i, 1]), float(size[i]), float(angle[i]), float(r), octave[i], i)
        for i, r in enumerate(keypoints.response.astype(np.float32))
    ]


def from_cv_keypoints(
    keypoints: Sequence[cv2.KeyPoint], image: ImageLike | Image, max_side: int = DEFAULT_MAX_SIDE
) -> Keypoints:
    """``cv2.KeyPoint`` list (full-resolution coordinates of ``image``) -> featmatch keypoints.

    The result can be described by any featmatch descriptor (``Matcher(name).describer(kps)``,
    SIFT included) exactly like detected keypoints: the image is downscaled to ``max_side``
    for patch sampling as the detector would do. ``size`` is read as OpenCV's diameter (a DoG
    keypoint's; a learned descriptor's patch side is 6 times it).

    Args:
        keypoints: OpenCV keypoints, e.g. from ``cv2.ORB_create().detect`` or :func:`to_cv_keypoints`.
        image: the image they belong to: a path, an array (gray, BGR, BGRA; 8/16-bit/float) or
            an :class:`~featmatch.imageio.Image`.
        max_side: longer side of the image patches and SIFT descriptors are computed on.

    Returns:
        :class:`~featmatch.detect.Keypoints` in the given order, without simulated-view frames.
    """
    gray = image.gray if isinstance(image, Image) else load_image(image).gray
    det, scale = detection_image(gray, max_side)
    n = len(keypoints)
    xy = np.array([k.pt for k in keypoints], np.float32).reshape(n, 2)
    attrs = np.array([(k.size, k.angle, k.response) for k in keypoints], np.float32).reshape(n, 3)
    if n and not (np.isfinite(xy).all() and np.isfinite(attrs).all() and (attrs[:, 0] > 0).all()):
        raise ConfigError("cv2.KeyPoint list has a non-finite position, size or angle, or a size <= 0")
    det_xy = to_detection_coords(xy, scale)
    cv_det = tuple(
        cv2.KeyPoint(float(p[0]), float(p[1]), float(a[0] / scale), float(a[1]), float(a[2]), k.octave, k.class_id)
        for p, a, k in zip(det_xy, attrs, keypoints, strict=True)
    )
    return Keypoints(
        xy=xy,
        size=attrs[:, 0].copy(),
        angle=attrs[:, 1].copy(),
        response=attrs[:, 2].copy(),
        scale=scale,
        det_image=det,
        cv_keypoints=cv_det,
    )


def to_kornia_lafs(keypoints: Keypoints, magnification: float | None = None):
    """featmatch keypoints -> kornia local affine frames ``(1, N, 2, 3)`` (float32 torch tensor).

    Full-resolution pixel coordinates; the LAF covers the patch featmatch describes (side
    ``magnification * size``, default :data:`featmatch.patches.MAGNIFICATION` = 6, rotated by the
    keypoint's angle, shaped by a simulated view's frame). Needs torch (imported here only).

    Raises:
        ConfigError: PyTorch is not installed (the message says how to install it).
    """
    _check_keypoints(keypoints)
    from .engines import require_torch

    require_torch("featmatch.to_kornia_lafs")
    import torch

    from .patches import MAGNIFICATION, keypoints_to_laf

    magnification = MAGNIFICATION if magnification is None else magnification

    if len(keypoints) == 0:
        return torch.zeros((1, 0, 2, 3), dtype=torch.float32)
    return keypoints_to_laf(keypoints.xy, keypoints.size, keypoints.angle, magnification, keypoints.frame)


def to_cv_matches(matches, inliers_only: bool = False) -> list[cv2.DMatch]:
    """Matches -> ``cv2.DMatch`` list (``queryIdx`` in image 1, ``trainIdx`` in image 2).

    Args:
        matches: a :class:`~featmatch.pipeline.MatchResult` (``result.matches``, with its
            ``inliers``), a :class:`~featmatch.match.Matches` (with descriptor distances) or an
            ``(M, 2)`` integer array of index pairs.
        inliers_only: with a ``MatchResult``, keep only the homography's inliers.

    Returns:
        ``cv2.DMatch(queryIdx, trainIdx, distance)``; ``distance`` is the descriptor distance
        when ``matches`` carries one (``Matches``), else 0.
    """
    distances = getattr(matches, "distances", None)
    pairs = getattr(matches, "pairs", None)
    keep = None
    if pairs is None and hasattr(matches, "inliers"):  # a MatchResult
        pairs = matches.matches
        keep = np.asarray(matches.inliers, bool) if inliers_only else None
    if pairs is None:
        pairs = matches
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        return []
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ConfigError(f"matches must be (M, 2) index pairs, got shape {pairs.shape}")
    dist = np.zeros(len(pairs), np.float32) if distances is None else np.asarray(distances, np.float32)
    idx = np.arange(len(pairs)) if keep is None else np.flatnonzero(keep)
    return [cv2.DMatch(int(pairs[i, 0]), int(pairs[i, 1]), float(dist[i])) for i in idx]

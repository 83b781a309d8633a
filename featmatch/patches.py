"""Stage 2: scale- and orientation-normalized 32x32 patches around keypoints.

Each keypoint becomes a local affine frame (kornia's LAF): centre = keypoint, orientation =
the keypoint's, and a square region whose side is ``MAGNIFICATION x KeyPoint.size``. With
OpenCV's ``size = 2 sigma`` and ``MAGNIFICATION = 6`` the patch covers 12 sigma, the support of
a SIFT descriptor. Patches are sampled in one batched warp per pyramid level by kornia's
``extract_patches_from_pyramid``, which reads each patch from the pyramid level closest to its
scale, so that large regions are smoothed before they are shrunk to 32 pixels (no aliasing).

Orientation: OpenCV's ``KeyPoint.angle`` turns the other way from kornia's LAF orientation,
so the LAF is built with ``-angle`` (tested on rotated copies in ``tests/test_patches.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from kornia.feature import extract_patches_from_pyramid, laf_from_center_scale_ori

from .detect import Keypoints

#: Side of the square patches fed to the learned descriptors.
PATCH_SIZE = 32
#: Patch side = MAGNIFICATION x KeyPoint.size (OpenCV's diameter).
MAGNIFICATION = 6.0


def image_tensor(image_u8: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(h, w)`` uint8 -> ``(1, 1, h, w)`` float32 in [0, 1] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(image_u8))
    return t.to(device=device).to(torch.float32).div_(255.0)[None, None]


def keypoints_to_laf(
    xy: np.ndarray | torch.Tensor,
    size: np.ndarray | torch.Tensor,
    angle: np.ndarray | torch.Tensor,
    magnification: float = MAGNIFICATION,
) -> torch.Tensor:
    """OpenCV keypoint attributes (one image) -> kornia LAFs ``(1, N, 2, 3)``.

    Args:
        xy: ``(N, 2)`` pixel coordinates.
        size: ``(N,)`` OpenCV ``KeyPoint.size``.
        angle: ``(N,)`` OpenCV ``KeyPoint.angle`` in degrees.
        magnification: patch side in units of ``size``.
    """
    xy_t = torch.as_tensor(np.asarray(xy, dtype=np.float32)).reshape(1, -1, 2)
    n = xy_t.shape[1]
    # A LAF covers c + A [-1, 1]^2, so its scale is half the patch side.
    half_side = torch.as_tensor(np.asarray(size, dtype=np.float32)).reshape(1, n, 1, 1) * (magnification / 2.0)
    ori = -torch.as_tensor(np.asarray(angle, dtype=np.float32)).reshape(1, n, 1)
    return laf_from_center_scale_ori(xy_t, half_side, ori)


def extract_patches(
    image_u8: np.ndarray,
    xy: np.ndarray,
    size: np.ndarray,
    angle: np.ndarray,
    magnification: float = MAGNIFICATION,
    patch_size: int = PATCH_SIZE,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Cut normalized patches out of one image.

    Args:
        image_u8: ``(h, w)`` uint8 image the coordinates refer to.
        xy, size, angle: keypoints in that image's pixels (see :func:`keypoints_to_laf`).
        magnification: patch side in units of ``size``.
        patch_size: output side in pixels.
        device: where the warp runs and the patches live.

    Returns:
        ``(N, 1, patch_size, patch_size)`` float32 patches in [0, 1]; ``N = 0`` gives an empty tensor.
    """
    n = int(np.asarray(xy).shape[0])
    if n == 0:
        return torch.zeros((0, 1, patch_size, patch_size), dtype=torch.float32, device=device)
    img = image_tensor(image_u8, device)
    laf = keypoints_to_laf(xy, size, angle, magnification).to(img.device)
    with torch.no_grad():
        patches = extract_patches_from_pyramid(img, laf, PS=patch_size)
    return patches[0]


def patches_for(
    keypoints: Keypoints, magnification: float = MAGNIFICATION, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Patches for detected :class:`Keypoints`, sampled from their detection image."""
    return extract_patches(
        keypoints.det_image, keypoints.det_xy, keypoints.det_size, keypoints.angle, magnification, device=device
    )

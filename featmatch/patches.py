"""Stage 2: scale- and orientation-normalized 32x32 patches around keypoints.

Each keypoint becomes a local affine frame (kornia's LAF): centre = keypoint, orientation =
the keypoint's, and a square region whose side is ``MAGNIFICATION x KeyPoint.size``. With
OpenCV's ``size = 2 sigma`` and ``MAGNIFICATION = 6`` the patch covers 12 sigma, the support of
a SIFT descriptor. Patches are sampled in one batched warp per pyramid level by kornia's
``extract_patches_from_pyramid``, which reads each patch from the pyramid level closest to its
scale, so that large regions are smoothed before they are shrunk to 32 pixels (no aliasing).

:func:`sample_from_pyramid` applies kornia's rule (the same pyramid by kornia's ``pyrdown``, the
same level choice, the same sampling positions, border pixels repeated) in fewer passes: one
sampling grid (a single matrix product) and one ``grid_sample`` per pyramid level for that
level's patches. kornia's
general version (batches of images, a level atlas, chunking, non-finite LAFs, ``torch.compile``)
takes about 100 ms for 4,000 patches on our 2-core CPU; this one about 40 ms.
``tests/test_patches.py`` checks that both give the same patches.

Orientation: OpenCV's ``KeyPoint.angle`` turns the other way from kornia's LAF orientation,
so the LAF is built with ``-angle`` (tested on rotated copies in ``tests/test_patches.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from kornia.feature import get_laf_scale, laf_from_center_scale_ori
from kornia.geometry.transform import pyrdown

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
    frame: np.ndarray | None = None,
) -> torch.Tensor:
    """OpenCV keypoint attributes (one image) -> kornia LAFs ``(1, N, 2, 3)``.

    Args:
        xy: ``(N, 2)`` pixel coordinates.
        size: ``(N,)`` OpenCV ``KeyPoint.size``.
        angle: ``(N,)`` OpenCV ``KeyPoint.angle`` in degrees.
        magnification: patch side in units of ``size``.
        frame: ``(N, 2, 2)`` affine frames of keypoints found in simulated oblique views
            (:attr:`featmatch.detect.Keypoints.frame`); the region is the frame applied to the
            view's square.
    """
    xy_t = torch.as_tensor(np.asarray(xy, dtype=np.float32)).reshape(1, -1, 2)
    n = xy_t.shape[1]
    # A LAF covers c + A [-1, 1]^2, so its scale is half the patch side.
    half_side = torch.as_tensor(np.asarray(size, dtype=np.float32)).reshape(1, n, 1, 1) * (magnification / 2.0)
    ori = -torch.as_tensor(np.asarray(angle, dtype=np.float32)).reshape(1, n, 1)
    laf = laf_from_center_scale_ori(xy_t, half_side, ori)
    if frame is not None:
        f = torch.as_tensor(np.asarray(frame, dtype=np.float32)).reshape(1, n, 2, 2)
        laf = torch.cat([f @ laf[..., :2], laf[..., 2:]], dim=-1)
    return laf


def extract_patches(
    image_u8: np.ndarray,
    xy: np.ndarray,
    size: np.ndarray,
    angle: np.ndarray,
    magnification: float = MAGNIFICATION,
    patch_size: int = PATCH_SIZE,
    device: torch.device | str = "cpu",
    frame: np.ndarray | None = None,
) -> torch.Tensor:
    """Cut normalized patches out of one image.

    Args:
        image_u8: ``(h, w)`` uint8 image the coordinates refer to.
        xy, size, angle: keypoints in that image's pixels (see :func:`keypoints_to_laf`).
        magnification: patch side in units of ``size``.
        patch_size: output side in pixels.
        device: where the warp runs and the patches live.
        frame: optional ``(N, 2, 2)`` affine frames (see :func:`keypoints_to_laf`).

    Returns:
        ``(N, 1, patch_size, patch_size)`` float32 patches in [0, 1]; ``N = 0`` gives an empty tensor.
    """
    n = int(np.asarray(xy).shape[0])
    if n == 0:
        return torch.zeros((0, 1, patch_size, patch_size), dtype=torch.float32, device=device)
    img = image_tensor(image_u8, device)
    laf = keypoints_to_laf(xy, size, angle, magnification, frame).to(img.device)
    with torch.no_grad():
        return sample_from_pyramid(img, laf[0], patch_size)


def pyramid_levels(height: int, width: int, patch_size: int = PATCH_SIZE) -> list[tuple[int, int]]:
    """Level sizes ``(h, w)``: halved (floor) while the shorter side stays >= ``patch_size``."""
    sizes = [(height, width)]
    while True:
        h, w = sizes[-1]
        if min(h, w) <= 2 or min(h // 2, w // 2) < patch_size:
            return sizes
        sizes.append((h // 2, w // 2))


def sample_from_pyramid(img: torch.Tensor, laf: torch.Tensor, patch_size: int = PATCH_SIZE) -> torch.Tensor:
    """Patches of one image, each read from the pyramid level that matches its scale.

    Args:
        img: ``(1, 1, H, W)`` float image.
        laf: ``(N, 2, 3)`` finite LAFs in pixels of ``img``; cell ``(i, j)`` of a patch samples
            ``c + A (u_j, u_i)`` with ``u_k = (2k + 1) / PS - 1`` (kornia's convention).
        patch_size: side of the patches.

    Returns:
        ``(N, 1, PS, PS)`` patches, in ``img``'s dtype and device.

    The level is ``floor(log2(2 s / PS))`` for ``s = sqrt|det A|``, clamped to the levels that
    exist (:func:`pyramid_levels`). ``pyrdown`` maps pixel ``x`` of level 0 to ``(x + 0.5) w_l / w
    - 0.5`` of level ``l``, so in ``grid_sample``'s normalized coordinates (``align_corners=False``)
    one grid addresses the same image positions on every level.
    """
    n = laf.shape[0]
    h, w = img.shape[-2:]
    out = img.new_zeros((n, 1, patch_size, patch_size))
    if n == 0:
        return out
    sizes = pyramid_levels(h, w, patch_size)
    laf = laf.to(device=img.device, dtype=torch.float32)
    scale = get_laf_scale(laf[None])[0].view(n)
    level = (2.0 * scale / patch_size).log2().clamp(0, len(sizes) - 1).long()
    # Pixel LAF -> normalized grid_sample frame of level 0: x_n = (2 x + 1) / w - 1.
    frame = laf.new_tensor([[2.0 / w, 0.0], [0.0, 2.0 / h]])
    theta = torch.cat(
        [frame @ laf[:, :, :2], (frame @ laf[:, :, 2:]) + laf.new_tensor([[1.0 / w - 1.0], [1.0 / h - 1.0]])], 2
    )
    # cell centres u_k = (2k + 1) / PS - 1 as homogeneous (x, y, 1) rows, row-major over the patch
    u = (torch.arange(patch_size, dtype=torch.float32, device=img.device) * 2.0 + 1.0) / patch_size - 1.0
    gy, gx = torch.meshgrid(u, u, indexing="ij")
    cells = torch.stack([gx.flatten(), gy.flatten(), torch.ones_like(gx).flatten()], 1)
    level_img = img.float()
    for lvl in range(int(level.max()) + 1):
        if lvl > 0:
            level_img = pyrdown(level_img)
        idx = torch.nonzero(level == lvl).view(-1)
        if idx.numel() == 0:
            continue
        # F.affine_grid's grid as one contiguous product (several times faster on the CPU)
        grid = torch.einsum("pk,nck->npc", cells, theta[idx]).reshape(1, idx.numel() * patch_size, patch_size, 2)
        patches = F.grid_sample(level_img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[idx] = patches.view(idx.numel(), 1, patch_size, patch_size).to(out.dtype)
    return out


def patches_for(
    keypoints: Keypoints, magnification: float = MAGNIFICATION, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Patches for detected :class:`Keypoints`, sampled from their detection image."""
    return extract_patches(
        keypoints.det_image,
        keypoints.det_xy,
        keypoints.det_size,
        keypoints.angle,
        magnification,
        device=device,
        frame=keypoints.frame,
    )

"""Projection of every placed image onto the panorama canvas: planar, cylindrical, spherical.

Planar uses the homographies to the reference image. Cylindrical and spherical use the
rotating-camera model: a canvas pixel ``(u, v)`` is an angle ``theta = u / f`` around the
vertical axis and a height ``h = v / f`` (cylinder) or an elevation ``phi = v / f`` (sphere);
its world ray is rotated into each camera and projected with ``K``. The canvas size is
checked against a cap before anything is allocated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from ..geometry import corners
from .config import StitchError
from .graph import image_outline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Warped:
    """One image on the canvas.

    Attributes:
        index: the image's index in the input list.
        image: ``(h, w, 3)`` uint8 BGR, the image resampled into its region of the canvas.
        mask: ``(h, w)`` uint8, 255 where the image has a pixel.
        corner: ``(x, y)`` of the region's top-left corner on the canvas.
    """

    index: int
    image: np.ndarray
    mask: np.ndarray
    corner: tuple[int, int]

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` on the canvas."""
        return (self.corner[0], self.corner[1], self.image.shape[1], self.image.shape[0])


def check_canvas(width: int, height: int, max_megapixels: float) -> None:
    """Raise :class:`StitchError` when the canvas would exceed ``max_megapixels``."""
    mp = width * height / 1e6
    if mp > max_megapixels or width > 32000 or height > 32000:
        raise StitchError(
            f"the panorama canvas would be {width}x{height} pixels ({mp:.1f} MP), beyond the cap of "
            f"{max_megapixels:g} MP (and 32000 px a side): a homography is probably wrong, or the set is too "
            "wide for this projection (try --projection cylindrical, or raise --max-megapixels)"
        )


def planar_placement(homographies: dict[int, np.ndarray], shapes: dict[int, tuple[int, int]]) -> str | None:
    """Why the images cannot go on one plane (a corner at or behind the horizon), or None."""
    for v, H in homographies.items():
        w = np.c_[corners(shapes[v]), np.ones(4)] @ H.T
        if not np.all(np.isfinite(w)) or np.any(w[:, 2] <= 1e-6 * np.abs(w[:, :2]).max()):
            return f"image {v} looks beyond 90 degrees from the reference and cannot be placed on a plane"
    return None


#: In planar projection an image is cut where its magnification reaches (1 / this)^2 of its
#: centre's: the part of a steeply tilted image near the reference's horizon is left out
#: instead of stretching the canvas towards infinity.
PLANAR_CLIP_RATIO = 0.25


def _clip_half_plane(poly: np.ndarray, a: np.ndarray, tau: float) -> np.ndarray:
    """Sutherland-Hodgman: the part of a convex polygon ``(K, 2)`` where ``a . (x, y, 1) >= tau``."""
    out = []
    vals = np.c_[poly, np.ones(len(poly))] @ a - tau
    for k in range(len(poly)):
        p, q, vp, vq = poly[k], poly[(k + 1) % len(poly)], vals[k], vals[(k + 1) % len(poly)]
        if vp >= 0:
            out.append(p)
        if (vp >= 0) != (vq >= 0):
            out.append(p + (q - p) * (vp / (vp - vq)))
    return np.array(out, np.float64).reshape(-1, 2)


def planar_threshold(H: np.ndarray, shape: tuple[int, int]) -> float | None:
    """The least homogeneous ``w`` kept of an image under ``H`` (None: its centre is behind the plane)."""
    h, w = shape
    centre_w = float(H[2] @ np.array([(w - 1) / 2.0, (h - 1) / 2.0, 1.0]))
    return None if centre_w <= 0 else PLANAR_CLIP_RATIO * centre_w


def planar_footprint(H: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(K, 2)`` image-pixel polygon of the part of an image that is placed on the plane."""
    tau = planar_threshold(H, shape)
    if tau is None:
        return np.zeros((0, 2))
    return _clip_half_plane(corners(shape), H[2], tau)


def planar_layout(
    homographies: dict[int, np.ndarray], shapes: dict[int, tuple[int, int]], max_megapixels: float
) -> tuple[dict[int, np.ndarray], tuple[int, int]]:
    """Homographies onto the canvas (reference frame shifted to positive coordinates) and its ``(W, H)``.

    An image whose far side runs towards the reference's horizon is cut where its
    magnification exceeds :data:`PLANAR_CLIP_RATIO` ``^-2`` times its centre's.

    Raises:
        StitchError: an image's centre is beyond the horizon, or the canvas is beyond the cap.
    """
    pts = []
    for v, H in homographies.items():
        poly = planar_footprint(H, shapes[v])
        if len(poly) < 3:
            raise StitchError(
                f"planar projection impossible: image {v} looks beyond 90 degrees from the reference "
                "(try --projection cylindrical)"
            )
        if len(poly) != 4 or not np.allclose(poly, corners(shapes[v])):
            logger.info("image %d is cut at the reference's horizon on the plane", v)
        w = np.c_[poly, np.ones(len(poly))] @ H.T
        pts.append(w[:, :2] / w[:, 2:3])
    allp = np.concatenate(pts)
    x0, y0 = np.floor(allp.min(axis=0))
    x1, y1 = np.ceil(allp.max(axis=0))
    width, height = int(x1 - x0) + 1, int(y1 - y0) + 1
    check_canvas(width, height, max_megapixels)
    T = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    return {v: T @ H for v, H in homographies.items()}, (width, height)


def _roi_of(points: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width - 1), min(y1, height - 1)
    return int(x0), int(y0), int(max(x1 - x0 + 1, 0)), int(max(y1 - y0 + 1, 0))


def warp_planar(index: int, color: np.ndarray, H: np.ndarray, canvas: tuple[int, int]) -> Warped:
    """Warp one image with its canvas homography ``H`` into its bounding region of the canvas."""
    shape = color.shape[:2]
    poly = planar_footprint(H, shape)
    w = np.c_[poly, np.ones(len(poly))] @ H.T
    x, y, rw, rh = _roi_of(w[:, :2] / w[:, 2:3], *canvas)
    T = np.array([[1.0, 0.0, -x], [0.0, 1.0, -y], [0.0, 0.0, 1.0]]) @ H
    img = cv2.warpPerspective(color, T, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    keep = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(keep, np.round(poly).astype(np.int32), 255)
    if len(poly) == 4 and np.allclose(poly, corners(shape)):
        keep[:] = 255
    mask = cv2.warpPerspective(keep, T, (rw, rh), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    return Warped(index, img, mask, (x, y))


@dataclass(frozen=True)
class Surface:
    """A cylindrical or spherical canvas of a rotating camera.

    Attributes:
        kind: ``cylindrical`` or ``spherical``.
        scale: canvas pixels per radian (the focal length in pixels keeps the resolution).
        origin: ``(u0, v0)`` surface coordinates (scaled) of the canvas's top-left pixel.
        size: ``(W, H)`` of the canvas.
    """

    kind: str
    scale: float
    origin: tuple[float, float]
    size: tuple[int, int]


def _rays_to_surface(kind: str, rays: np.ndarray, theta_centre: float) -> np.ndarray:
    x, y, z = rays[:, 0], rays[:, 1], rays[:, 2]
    theta = np.arctan2(x, z)
    theta = theta_centre + np.angle(np.exp(1j * (theta - theta_centre)))
    r = np.sqrt(x**2 + z**2)
    second = y / np.maximum(r, 1e-12) if kind == "cylindrical" else np.arctan2(y, r)
    return np.stack([theta, second], axis=1)


def _world_rays(R: np.ndarray, focal: float, centre: np.ndarray, pts: np.ndarray) -> np.ndarray:
    cam = np.c_[(pts - centre) / focal, np.ones(len(pts))]
    return cam @ R  # R^T applied to each row: camera ray -> world ray


def _surface_extent(kind: str, R: np.ndarray, focal: float, shape: tuple[int, int]) -> np.ndarray:
    centre = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    c_ray = _world_rays(R, focal, centre, centre[None])
    theta_c = float(np.arctan2(c_ray[0, 0], c_ray[0, 2]))
    rays = _world_rays(R, focal, centre, image_outline(shape, 64))
    return _rays_to_surface(kind, rays, theta_c)


def surface_layout(
    kind: str,
    rotations: dict[int, np.ndarray],
    focal: float,
    shapes: dict[int, tuple[int, int]],
    max_megapixels: float,
) -> Surface:
    """The canvas that holds every image on the cylinder or sphere (checked against the cap).

    Args:
        kind: ``cylindrical`` or ``spherical``.
        rotations: ``R_i`` world -> camera ``i``.
        focal: focal length in pixels (principal points at the image centres).
        shapes: ``(H, W)`` per image.
        max_megapixels: the cap.
    """
    ext = np.concatenate([_surface_extent(kind, rotations[v], focal, shapes[v]) for v in rotations]) * focal
    u0, v0 = np.floor(ext.min(axis=0))
    u1, v1 = np.ceil(ext.max(axis=0))
    if not np.all(np.isfinite([u0, v0, u1, v1])):
        raise StitchError("an image looks straight up or down: the surface projection is undefined for it")
    width, height = int(u1 - u0) + 1, int(v1 - v0) + 1
    check_canvas(width, height, max_megapixels)
    return Surface(kind, float(focal), (float(u0), float(v0)), (width, height))


def surface_footprint(R: np.ndarray, focal: float, shape: tuple[int, int], surface: Surface) -> np.ndarray:
    """``(K, 2)`` canvas coordinates of an image's border on the surface."""
    return _surface_extent(surface.kind, R, focal, shape) * surface.scale - np.array(surface.origin)


def warp_surface(index: int, color: np.ndarray, R: np.ndarray, focal: float, surface: Surface) -> Warped:
    """Resample one image onto the cylinder/sphere region it covers."""
    shape = color.shape[:2]
    ext = _surface_extent(surface.kind, R, focal, shape) * surface.scale - np.array(surface.origin)
    x, y, rw, rh = _roi_of(ext, *surface.size)
    u = (np.arange(x, x + rw, dtype=np.float64) + surface.origin[0]) / surface.scale
    v = (np.arange(y, y + rh, dtype=np.float64) + surface.origin[1]) / surface.scale
    theta, second = np.meshgrid(u, v)
    if surface.kind == "cylindrical":
        rays = np.stack([np.sin(theta), second, np.cos(theta)], axis=-1)
    else:
        rays = np.stack([np.sin(theta) * np.cos(second), np.sin(second), np.cos(theta) * np.cos(second)], axis=-1)
    cam = rays @ R.T
    z = cam[..., 2]
    front = z > 1e-6
    zs = np.where(front, z, 1.0)
    cx, cy = (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0
    mx = (focal * cam[..., 0] / zs + cx).astype(np.float32)
    my = (focal * cam[..., 1] / zs + cy).astype(np.float32)
    valid = front & (mx >= -0.5) & (mx <= shape[1] - 0.5) & (my >= -0.5) & (my <= shape[0] - 0.5)
    mx[~valid], my[~valid] = -10.0, -10.0
    img = cv2.remap(color, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return Warped(index, img, valid.astype(np.uint8) * 255, (x, y))

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
from .camera import Camera
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


#: A canvas larger than this many times the input images' total area (at the output scale)
#: can only come from a wrong model (a runaway homography, a focal length far too short).
BAD_MODEL_FACTOR = 6.0
#: OpenCV's warps and remaps address at most this many pixels a side.
MAX_SIDE = 32000


def check_canvas(width: int, height: int, max_megapixels: float | None, input_megapixels: float | None = None) -> None:
    """Raise :class:`StitchError` when the canvas is larger than a right model can make, or than asked.

    Args:
        width, height: the canvas.
        max_megapixels: the user's cap (None: none).
        input_megapixels: the input images' total area at the output scale; a canvas more than
            :data:`BAD_MODEL_FACTOR` times larger means a wrong model.
    """
    mp = width * height / 1e6
    if input_megapixels is not None and mp > BAD_MODEL_FACTOR * input_megapixels:
        raise StitchError(
            f"the panorama canvas would be {width}x{height} pixels ({mp:.1f} MP), {mp / input_megapixels:.0f} times "
            f"the {input_megapixels:.1f} MP of the images: the model is wrong (a runaway homography or a far too "
            "short focal length); try --projection cylindrical, or --focal"
        )
    if max_megapixels is not None and mp > max_megapixels:
        raise StitchError(
            f"the panorama canvas would be {width}x{height} pixels ({mp:.1f} MP), beyond --max-megapixels "
            f"{max_megapixels:g}; lower --output-megapixels or raise the cap"
        )
    if width > MAX_SIDE or height > MAX_SIDE:
        raise StitchError(
            f"the panorama canvas would be {width}x{height} pixels, beyond {MAX_SIDE} px a side: "
            "choose a smaller --output-megapixels"
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
    homographies: dict[int, np.ndarray],
    shapes: dict[int, tuple[int, int]],
    max_megapixels: float | None,
    scale: float = 1.0,
) -> tuple[dict[int, np.ndarray], tuple[int, int]]:
    """Homographies onto the canvas (reference frame scaled, shifted to positive coordinates) and its ``(W, H)``.

    An image whose far side runs towards the reference's horizon is cut where its
    magnification exceeds :data:`PLANAR_CLIP_RATIO` ``^-2`` times its centre's.

    Raises:
        StitchError: an image's centre is beyond the horizon, or the canvas is beyond the cap.
    """
    S = np.diag([scale, scale, 1.0])
    homographies = {v: S @ H for v, H in homographies.items()}
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
    check_canvas(width, height, max_megapixels, scale**2 * sum(h * w for h, w in shapes.values()) / 1e6)
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
        scale: canvas pixels per radian (the focal length in pixels keeps the input resolution).
        origin: ``(u0, v0)`` surface coordinates (scaled) of the canvas's top-left pixel.
        size: ``(W, H)`` of the canvas.
        closed: the canvas spans exactly 360 degrees and its left and right edges continue each other.
    """

    kind: str
    scale: float
    origin: tuple[float, float]
    size: tuple[int, int]
    closed: bool = False


def _rays_to_surface(kind: str, rays: np.ndarray, theta_centre: float) -> np.ndarray:
    x, y, z = rays[:, 0], rays[:, 1], rays[:, 2]
    theta = np.arctan2(x, z)
    theta = theta_centre + np.angle(np.exp(1j * (theta - theta_centre)))
    r = np.sqrt(x**2 + z**2)
    second = y / np.maximum(r, 1e-12) if kind == "cylindrical" else np.arctan2(y, r)
    return np.stack([theta, second], axis=1)


def _centre_azimuth(cam: Camera) -> float:
    ray = cam.rays(np.array([[cam.ppx, cam.ppy]]))
    return float(np.arctan2(ray[0, 0], ray[0, 2]))


def _surface_extent(kind: str, cam: Camera, shape: tuple[int, int]) -> np.ndarray:
    """``(K, 2)`` surface coordinates (radians) of an image's border, azimuths unwrapped around its centre's."""
    return _rays_to_surface(kind, cam.rays(image_outline(shape, 64)), _centre_azimuth(cam))


#: Azimuth bins (per full turn) of the coverage test for a closed loop.
_LOOP_BINS = 3600


def loop_cut(kind: str, cameras: dict[int, Camera], shapes: dict[int, tuple[int, int]]) -> float | None:
    """Where to cut a panorama that goes all the way round (an azimuth, radians), or None when it does not.

    The images go round when their azimuth ranges cover the whole circle. The cut goes through
    the centre of the image that looks most opposite to the reference (azimuth 0), so that one
    image owns both edges of the panorama and they continue each other.
    """
    covered = np.zeros(_LOOP_BINS, bool)
    for v, cam in cameras.items():
        theta = _surface_extent(kind, cam, shapes[v])[:, 0]
        a, b = np.floor(theta.min() / (2 * np.pi) * _LOOP_BINS), np.ceil(theta.max() / (2 * np.pi) * _LOOP_BINS)
        if b - a >= _LOOP_BINS:
            return None  # one image sees all round: no rotating-camera panorama
        covered[np.arange(int(a), int(b) + 1) % _LOOP_BINS] = True
    if not covered.all():
        return None
    centres = {v: _centre_azimuth(cam) for v, cam in cameras.items()}
    far = max(centres, key=lambda v: (abs(centres[v]), -v))
    return centres[far]


def surface_layout(
    kind: str,
    cameras: dict[int, Camera],
    shapes: dict[int, tuple[int, int]],
    scale: float,
    max_megapixels: float | None,
    cut: float | None = None,
) -> Surface:
    """The canvas that holds every image on the cylinder or sphere (checked against the size rule).

    Args:
        kind: ``cylindrical`` or ``spherical``.
        cameras: per image.
        shapes: ``(H, W)`` per image.
        scale: canvas pixels per radian.
        max_megapixels: the user's cap (None: only the bad-model rule).
        cut: for a closed 360 degree loop the azimuth of its left and right edges (see
            :func:`loop_cut`); the canvas is then exactly ``2 pi scale`` wide.
    """
    ext = np.concatenate([_surface_extent(kind, cam, shapes[v]) for v, cam in cameras.items()]) * scale
    u0, v0 = np.floor(ext.min(axis=0))
    u1, v1 = np.ceil(ext.max(axis=0))
    if not np.all(np.isfinite([u0, v0, u1, v1])):
        raise StitchError("an image looks straight up or down: the surface projection is undefined for it")
    width, height = int(u1 - u0) + 1, int(v1 - v0) + 1
    if cut is not None:
        u0, width = cut * scale, int(round(2 * np.pi * scale))
    scaled = scale**2 * sum(shapes[v][0] * shapes[v][1] / cam.focal**2 for v, cam in cameras.items())
    check_canvas(width, height, max_megapixels, scaled / 1e6)
    return Surface(kind, float(scale), (float(u0), float(v0)), (width, height), cut is not None)


def surface_footprint(cam: Camera, shape: tuple[int, int], surface: Surface) -> np.ndarray:
    """``(K, 2)`` canvas coordinates of an image's border on the surface (beyond the edges on a closed loop)."""
    fp = _surface_extent(surface.kind, cam, shape) * surface.scale - np.array(surface.origin)
    if surface.closed:
        centre = (_centre_azimuth(cam) * surface.scale - surface.origin[0]) % surface.size[0]
        fp[:, 0] += centre - (_centre_azimuth(cam) * surface.scale - surface.origin[0])
    return fp


def warp_surface(index: int, color: np.ndarray, cam: Camera, surface: Surface) -> list[Warped]:
    """Resample one image onto the cylinder/sphere region it covers.

    Returns one piece, or two on a closed loop when the image straddles the canvas's edges.
    """
    shape = color.shape[:2]
    fp = surface_footprint(cam, shape, surface)
    W = surface.size[0]
    x0, x1 = int(np.floor(fp[:, 0].min())), int(np.ceil(fp[:, 0].max()))
    spans = [(x0, x1)]
    if surface.closed:
        spans = [(a, b) for a, b in ((x0, x1), (x0 - W, x1 - W), (x0 + W, x1 + W)) if b >= 0 and a <= W - 1]
    pieces = []
    for a, b in spans:
        pts = np.array([[a, fp[:, 1].min()], [b, fp[:, 1].max()]])
        x, y, rw, rh = _roi_of(pts, *surface.size)
        if rw <= 0 or rh <= 0:
            continue
        piece = _warp_region(index, color, cam, surface, (x, y, rw, rh))
        if piece.mask.any():
            pieces.append(piece)
    return pieces


#: Canvas pixels whose rays are computed at once (float64 work arrays): memory follows this, not the image.
WARP_CHUNK_PIXELS = 1 << 20
#: The remap tables are computed exactly every this many canvas pixels and interpolated
#: bilinearly in between: the mapping is smooth, so the tables stay within 0.05 px of the
#: exact ones (``cv2.remap`` itself resolves 1/32 px; tests/test_stitching.py: a 67 degree view
#: with strong lens distortion), at 1/64th of the trigonometry.
MAP_STEP = 8


def _exact_maps(cam: Camera, surface: Surface, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pixel coordinates ``(len(ys), len(xs))`` in the image of the canvas pixels ``xs x ys``, and which it sees."""
    theta, second = np.meshgrid((xs + surface.origin[0]) / surface.scale, (ys + surface.origin[1]) / surface.scale)
    if surface.kind == "cylindrical":
        rays = np.stack([np.sin(theta), second, np.cos(theta)], axis=-1)
    else:
        rays = np.stack([np.sin(theta) * np.cos(second), np.sin(second), np.cos(theta) * np.cos(second)], axis=-1)
    pix, front = cam.pixels(rays)
    return pix[..., 0], pix[..., 1], front


def _lerp(coarse: np.ndarray, rows: np.ndarray, cols: np.ndarray, step: int) -> np.ndarray:
    """Bilinear interpolation of ``coarse`` (samples every ``step`` fine pixels) at fine ``rows x cols``."""
    r = rows / step
    i = np.minimum(r.astype(np.int64), coarse.shape[0] - 2)
    t = (r - i)[:, None]
    band = coarse[i] * (1.0 - t) + coarse[i + 1] * t
    c = cols / step
    j = np.minimum(c.astype(np.int64), coarse.shape[1] - 2)
    s = c - j
    return (band[:, j] * (1.0 - s) + band[:, j + 1] * s).astype(np.float32)


def region_maps(cam: Camera, surface: Surface, roi: tuple, step: int = MAP_STEP) -> tuple[np.ndarray, ...]:
    """``(mx, my, valid)`` of a canvas region ``(x, y, w, h)``: where each pixel comes from in the image.

    The maps are computed exactly on a grid every ``step`` pixels and interpolated in between;
    ``step=1`` (or a region where some grid ray is not seen by the camera) computes every pixel.
    """
    x, y, rw, rh = roi
    mx = np.empty((rh, rw), np.float32)
    my = np.empty((rh, rw), np.float32)
    front = np.ones((rh, rw), bool)
    xs = np.arange(x, x + rw, dtype=np.float64)
    coarse = None
    if step > 1:
        gx = x + step * np.arange((rw - 1) // step + 2, dtype=np.float64)
        gy = y + step * np.arange((rh - 1) // step + 2, dtype=np.float64)
        cx, cy, cfront = _exact_maps(cam, surface, gx, gy)
        coarse = (cx, cy) if cfront.all() else None
    chunk = max(1, WARP_CHUNK_PIXELS // max(rw, 1))
    for r0 in range(0, rh, chunk):
        rows = slice(r0, min(r0 + chunk, rh))
        if coarse is not None:
            fine_rows = np.arange(rows.start, rows.stop, dtype=np.float64)
            fine_cols = np.arange(rw, dtype=np.float64)
            mx[rows], my[rows] = (_lerp(c, fine_rows, fine_cols, step) for c in coarse)
        else:
            ys = np.arange(y + rows.start, y + rows.stop, dtype=np.float64)
            mx[rows], my[rows], front[rows] = _exact_maps(cam, surface, xs, ys)
    return mx, my, front


def _warp_region(index: int, color: np.ndarray, cam: Camera, surface: Surface, roi: tuple) -> Warped:
    x, y, rw, rh = roi
    shape = color.shape[:2]
    mx, my, valid = region_maps(cam, surface, roi)
    valid &= (mx >= -0.5) & (mx <= shape[1] - 0.5) & (my >= -0.5) & (my <= shape[0] - 0.5)
    # Pixels outside the image continue its nearest border pixels (not one fill colour): the
    # multi-band blender's pyramids reach past each mask, and a flat fill there shows up as a
    # dark or bright halo wherever a seam runs along an image's border.
    np.clip(mx, 0.0, shape[1] - 1.0, out=mx)
    np.clip(my, 0.0, shape[0] - 1.0, out=my)
    img = cv2.remap(color, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return Warped(index, img, valid.astype(np.uint8) * 255, (x, y))

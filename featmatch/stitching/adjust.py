"""Bundle adjustment of the rotating-camera model, and the evidence for choosing it.

Every image ``v`` has a rotation ``R_v`` (a rotation vector; the reference keeps ``R = I``) and
a focal length (one per camera group with ``tie_focal``); every camera group ``g`` (the images
one physical camera took: same size, see :func:`camera_groups`) has a principal point and
Brown's radial distortion ``k1, k2``. A pixel ``a`` of image ``i`` becomes the world ray ``R_i^T [undistort((a - c) / f), 1]``,
which camera ``j`` sees at ``f distort(x) + c``. The cost is the robust (Huber) symmetric
reprojection error in input pixels over the inliers of every verified pair, wrap-around pairs
of a 360 degree loop included, minimized by :func:`featmatch.stitching.refine.refine`
(Levenberg-Marquardt).

OpenCV's ``cv2.detail.BundleAdjusterRay`` minimizes the same ray error for rotations and
focals, but models neither the principal point shared by one camera nor lens distortion,
which is what takes xue's residual from 3 px to below 1.8 px; hence this module.

Everything works in normalized coordinates: pixels relative to the image centre divided by
one ``scale`` (the median longest side), so that parameters of all kinds are of order 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .camera import Camera, distort, undistort, undistort_xy
from .refine import PairPoints, RefineReport, StackedPairs, refine, rodrigues

logger = logging.getLogger(__name__)

#: Lens parameters per camera group: principal point (x, y), k1, k2.
GROUP_PARAMS = 4
#: Prior weights (normalized residual units per unit of the parameter) that keep the principal
#: point near the image centre and the distortion near zero when the data do not say otherwise.
PRIOR_PRINCIPAL = 2e-2
PRIOR_DISTORTION = 5e-3
#: The lens terms are kept only when they lower the RMS error by this share: on a few images of
#: a lens without distortion they would trade against the focal length for nothing.
LENS_MIN_GAIN = 0.15
#: ``auto`` keeps the rotation model when its RMS error (lens terms included) is at most this many
#: times the pairwise homographies' plus :data:`AUTO_SLACK_PX` (a rotation fits a rotating camera
#: about as well as free homographies do, hand-held parallax aside (xue: 1.9 times); a camera that
#: moves in front of a 3-D scene it does not).
AUTO_RATIO = 2.5
AUTO_SLACK_PX = 0.5
#: ... and when the focal length is at most this many image sides (a field of view above ~23
#: degrees). Scans and maps taken by a moving camera fit a rotation only with a far longer
#: focal (budapest: 3.2 sides); at such narrow views the plane is as good for a real pan too.
AUTO_MAX_FOCAL_SIDES = 2.5
#: ``auto`` uses the sphere instead of the cylinder when an image reaches beyond this elevation.
AUTO_MAX_CYLINDER_ELEVATION = 55.0


def camera_groups(shapes: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Images of one size are taken to come from one camera (one focal, principal point, lens)."""
    sizes: dict[tuple[int, int], int] = {}
    return {v: sizes.setdefault(tuple(shapes[v]), len(sizes)) for v in sorted(shapes)}


class CameraModel:
    """Rotation vectors of the non-reference images, a focal per focal group, ``GROUP_PARAMS`` per camera group.

    Args:
        nodes: the images.
        reference: the image with ``R = I``.
        groups: image -> camera group (shares principal point and distortion).
        free_lens: also adjust the principal point and the distortion (else only R and f).
        focal_groups: image -> focal group (shares a focal length; default: one per image).
    """

    def __init__(
        self,
        nodes: list[int],
        reference: int,
        groups: dict[int, int],
        free_lens: bool = True,
        focal_groups: dict[int, int] | None = None,
    ):
        self.reference = reference
        self.slot = {v: k for k, v in enumerate(n for n in nodes if n != reference)}
        self.groups = {v: groups[v] for v in nodes}
        fg = focal_groups if focal_groups is not None else {v: k for k, v in enumerate(nodes)}
        self.focal_groups = {v: fg[v] for v in nodes}
        self.num_groups = max(self.groups.values()) + 1
        self.num_focals = max(self.focal_groups.values()) + 1
        self.base = 3 * len(self.slot) + self.num_focals
        self.num_params = self.base + GROUP_PARAMS * self.num_groups
        self.free = np.ones(self.num_params, bool)
        self.prior_weight = np.zeros(self.num_params)
        self.prior_mean = np.zeros(self.num_params)
        for g in range(self.num_groups):
            o = self.base + GROUP_PARAMS * g
            self.prior_weight[o : o + 2] = PRIOR_PRINCIPAL
            self.prior_weight[o + 2 : o + 4] = PRIOR_DISTORTION
            if not free_lens:
                self.free[o : o + 4] = False

    def pack(self, rotations: dict[int, np.ndarray], focal: float | dict[int, float], lens: dict | None = None):
        """Parameters from rotations, a focal (one, or per image) and optional ``lens[g] = (px, py, k1, k2)``."""
        p = np.zeros(self.num_params)
        for v, k in self.slot.items():
            p[3 * k : 3 * k + 3] = cv2.Rodrigues(np.ascontiguousarray(rotations[v], np.float64))[0].ravel()
        for v, g in self.focal_groups.items():
            p[3 * len(self.slot) + g] = focal[v] if isinstance(focal, dict) else focal
        for g in range(self.num_groups):
            o = self.base + GROUP_PARAMS * g
            if lens is not None and g in lens:
                p[o : o + 4] = lens[g]
        return p

    def params_of(self, v: int) -> np.ndarray:
        o = self.base + GROUP_PARAMS * self.groups[v]
        idx = [3 * len(self.slot) + self.focal_groups[v], *range(o, o + GROUP_PARAMS)]
        if v != self.reference:
            k = self.slot[v]
            idx = [3 * k, 3 * k + 1, 3 * k + 2, *idx]
        idx_arr = np.array(idx)
        return idx_arr[self.free[idx_arr]]

    def rotation(self, v: int, p: np.ndarray) -> np.ndarray:
        if v == self.reference:
            return np.eye(3)
        k = self.slot[v]
        return cv2.Rodrigues(np.ascontiguousarray(p[3 * k : 3 * k + 3]))[0]

    def intrinsics(self, v: int, p: np.ndarray) -> tuple[float, float, float, float, float]:
        """``(f, px, py, k1, k2)`` of image ``v`` (normalized units)."""
        o = self.base + GROUP_PARAMS * self.groups[v]
        f = p[3 * len(self.slot) + self.focal_groups[v]]
        return (float(f), *(float(x) for x in p[o : o + GROUP_PARAMS]))  # type: ignore[return-value]

    def _transfer(self, src: int, dst: int, pts: np.ndarray, p: np.ndarray) -> np.ndarray:
        f, px, py, k1, k2 = self.intrinsics(src, p)
        x = undistort((pts - [px, py]) / f, k1, k2)
        rays = np.c_[x, np.ones(len(x))] @ self.rotation(src, p)  # R_src^T per row
        cam = rays @ self.rotation(dst, p).T
        z = cam[:, 2:3]
        z = np.where(np.abs(z) < 1e-9, 1e-9, z)
        f2, px2, py2, k12, k22 = self.intrinsics(dst, p)
        return distort(cam[:, :2] / z, k12, k22) * f2 + [px2, py2]

    def pair_residual(self, pp: PairPoints, p: np.ndarray) -> np.ndarray:
        """Symmetric reprojection error ``(4K,)`` of one pair (normalized units)."""
        r1 = self._transfer(pp.i, pp.j, pp.a, p) - pp.b
        r2 = self._transfer(pp.j, pp.i, pp.b, p) - pp.a
        return np.concatenate([r1, r2]).ravel()

    def _rotations(self, v: int, Q: np.ndarray) -> np.ndarray:
        """:meth:`rotation` of every row of ``Q`` ``(m, P)`` -> ``(m, 3, 3)``."""
        if v == self.reference:
            return np.broadcast_to(np.eye(3), (len(Q), 3, 3))
        k = self.slot[v]
        return rodrigues(Q[:, 3 * k : 3 * k + 3])

    def _intrinsic_columns(self, v: int) -> list[int]:
        """Columns of ``f, px, py, k1, k2`` of image ``v`` in the parameter vector."""
        o = self.base + GROUP_PARAMS * self.groups[v]
        return [3 * len(self.slot) + self.focal_groups[v], o, o + 1, o + 2, o + 3]

    def _transfer_batch(self, src: int, dst: int, pts: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_transfer` for every row of ``Q`` ``(m, P)`` -> x and y, each ``(m, K)``.

        Works on separate x and y arrays (numpy reduces a last axis of length 2 slowly), and
        undistorts only once per distinct source lens among the rows: the forward differences
        perturb one parameter per row, so most rows share the unperturbed one.
        """
        cs = self._intrinsic_columns(src)
        # The rows whose source intrinsics differ from row 0's, and which undistorted row each row uses.
        own = np.flatnonzero(np.any(Q[1:, cs] != Q[0, cs], axis=1)) + 1
        use = np.zeros(len(Q), np.intp)
        use[own] = np.arange(1, len(own) + 1)
        sel = np.r_[0, own]
        f, px, py, k1, k2 = (Q[sel, c][:, None] for c in cs)
        x, y = undistort_xy((pts[:, 0] - px) / f, (pts[:, 1] - py) / f, k1, k2)
        x, y = x[use], y[use]
        M = self._rotations(src, Q) @ self._rotations(dst, Q).transpose(0, 2, 1)  # rays @ R_dst^T
        M = M[:, :, :, None]
        cx = x * M[:, 0, 0] + y * M[:, 1, 0] + M[:, 2, 0]
        cy = x * M[:, 0, 1] + y * M[:, 1, 1] + M[:, 2, 1]
        z = x * M[:, 0, 2] + y * M[:, 1, 2] + M[:, 2, 2]
        z = np.where(np.abs(z) < 1e-9, 1e-9, z)
        X, Y = cx / z, cy / z
        f2, px2, py2, k12, k22 = (Q[:, c][:, None] for c in self._intrinsic_columns(dst))
        r2 = X * X + Y * Y
        d = 1.0 + k12 * r2 + k22 * r2 * r2
        return X * d * f2 + px2, Y * d * f2 + py2

    def pair_residuals(self, pp: PairPoints, Q: np.ndarray) -> np.ndarray:
        """:meth:`pair_residual` for every row of ``Q`` ``(m, P)`` -> ``(m, 4K)``."""
        K = len(pp.a)
        out = np.empty((len(Q), 2, K, 2))
        x, y = self._transfer_batch(pp.i, pp.j, pp.a, Q)
        np.subtract(x, pp.b[:, 0], out=out[:, 0, :, 0])
        np.subtract(y, pp.b[:, 1], out=out[:, 0, :, 1])
        x, y = self._transfer_batch(pp.j, pp.i, pp.b, Q)
        np.subtract(x, pp.a[:, 0], out=out[:, 1, :, 0])
        np.subtract(y, pp.a[:, 1], out=out[:, 1, :, 1])
        return out.reshape(len(Q), -1)

    def stacked(self, pairs: list[PairPoints]) -> CameraPairs:
        """All pairs' points in one set of arrays: residuals and analytic Jacobians in one pass."""
        return CameraPairs(self, pairs)

    def cameras(self, p: np.ndarray, shapes: dict[int, tuple[int, int]], scale: float) -> dict[int, Camera]:
        """The adjusted cameras in pixels."""
        out = {}
        for v in self.groups:
            f, px, py, k1, k2 = self.intrinsics(v, p)
            h, w = shapes[v]
            out[v] = Camera(
                self.rotation(v, p),
                f * scale,
                (w - 1) / 2.0 + px * scale,
                (h - 1) / 2.0 + py * scale,
                k1,
                k2,
                self.groups[v],
            )
        return out


class CameraPairs(StackedPairs):
    """The inliers of all pairs of a :class:`CameraModel`, both directions, as one set of arrays.

    :meth:`residuals` is :meth:`CameraModel.pair_residual` of every pair, concatenated;
    :meth:`jacobians` gives every pair's analytic Jacobian (chain rule through the lens, the
    rotations (``cv2.Rodrigues``'s derivative) and the undistortion, the latter by implicit
    differentiation of ``u = x (1 + k1 |x|^2 + k2 |x|^4)``). Computing all points at once keeps
    the numpy overhead per pair out of the solver's inner loop.
    """

    #: Per point and direction, the derivative columns: source rotation (3), destination rotation
    #: (3), source ``f, px, py, k1, k2``, destination ``f, px, py, k1, k2``.
    SLOTS = 16

    def __init__(self, model: CameraModel, pairs: list[PairPoints]):
        self.intr_cols = np.array([model._intrinsic_columns(v) for v in model.groups])  # (n, 5)
        super().__init__(model, pairs, list(model.groups))

    def slot_columns(self, s: int, d: int) -> list[int]:
        m = self.model
        return [*self._rot_cols(s), *self._rot_cols(d), *m._intrinsic_columns(s), *m._intrinsic_columns(d)]

    def _rot_cols(self, v: int) -> list[int]:
        if v == self.model.reference:
            return [-1, -1, -1]
        k = self.model.slot[v]
        return [3 * k, 3 * k + 1, 3 * k + 2]

    def _rotations(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image ``R (n, 3, 3)`` and ``A (n, 3, 3)``: column ``k`` of ``A`` is the axis ``a_k`` with
        ``dR / dr_k = [a_k]x R`` (from ``cv2.Rodrigues``'s derivative; zero for the reference)."""
        R = np.empty((len(self.nodes), 3, 3))
        A = np.zeros((len(self.nodes), 3, 3))
        for n, v in enumerate(self.nodes):
            if v == self.model.reference:
                R[n] = np.eye(3)
                continue
            k = self.model.slot[v]
            Rv, jac = cv2.Rodrigues(np.ascontiguousarray(p[3 * k : 3 * k + 3]))
            R[n] = Rv
            W = jac.reshape(3, 3, 3) @ Rv.T  # skew-symmetric [a_k]x
            A[n] = np.stack([W[:, 2, 1], W[:, 0, 2], W[:, 1, 0]])
        return R, A

    def _forward(self, p: np.ndarray, derivatives: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Residuals ``(2N,)`` and, with ``derivatives``, ``J (SLOTS, 2, N)`` (see :data:`SLOTS`)."""
        R, A = self._rotations(p)
        intr = p[self.intr_cols]  # (n, 5)
        # M = R_s R_d^T per directed pair: a source ray (row) times M is the destination camera ray.
        Rs, Rd = R[self.dp_s], R[self.dp_d]
        M = np.repeat((Rs @ Rd.transpose(0, 2, 1)).reshape(-1, 9).T, self.counts, axis=1).reshape(3, 3, -1)
        fs, pxs, pys, k1s, k2s = np.repeat(intr[self.dp_s].T, self.counts, axis=1)  # contiguous rows
        fd, pxd, pyd, k1d, k2d = np.repeat(intr[self.dp_d].T, self.counts, axis=1)
        ux, uy = (self.src_x - pxs) / fs, (self.src_y - pys) / fs
        x, y = undistort_xy(ux, uy, k1s, k2s)
        cx = x * M[0, 0] + y * M[1, 0] + M[2, 0]
        cy = x * M[0, 1] + y * M[1, 1] + M[2, 1]
        z = x * M[0, 2] + y * M[1, 2] + M[2, 2]
        clamped = np.abs(z) < 1e-9
        z = np.where(clamped, 1e-9, z)
        X, Y = cx / z, cy / z
        sig = X * X + Y * Y
        h = 1.0 + k1d * sig + k2d * sig * sig
        res = np.empty((len(X), 2))
        res[:, 0] = X * h * fd + pxd - self.dst_x
        res[:, 1] = Y * h * fd + pyd - self.dst_y
        if not derivatives:
            return res.ravel(), None
        J = np.empty((self.SLOTS, 2, len(X)))
        # G = d out / d cam (2 x 3): the lens's 2 x 2 times the projection's (1/z) [[1, 0, -X], [0, 1, -Y]].
        inv_z = np.where(clamped, 0.0, 1.0 / z)
        hp2 = 2.0 * (k1d + 2.0 * k2d * sig)
        a00, a01, a11 = fd * (h + hp2 * X * X), fd * hp2 * X * Y, fd * (h + hp2 * Y * Y)
        G = np.stack(
            [
                [a00 * inv_z, a01 * inv_z, -(a00 * X + a01 * Y) * inv_z],
                [a01 * inv_z, a11 * inv_z, -(a01 * X + a11 * Y) * inv_z],
            ]
        )  # (2, 3, N)
        # H = G M^T (2 x 3): d out / d [x, y, 1] of the source ray.
        H = np.einsum("arn,crn->acn", G, M)
        # Source rotation: d cam = M^T (w x a_k), so d out_a = a_k . (H_a x w) with w = (x, y, 1).
        # Destination rotation: d cam = b_k x cam, so d out_a = b_k . (cam x G_a).
        w = np.stack([x, y, np.ones_like(x)])
        cam = np.stack([cx, cy, z])
        As = np.repeat(A[self.dp_s].reshape(-1, 9).T, self.counts, axis=1).reshape(3, 3, -1)  # [comp, k, N]
        Ad = np.repeat(A[self.dp_d].reshape(-1, 9).T, self.counts, axis=1).reshape(3, 3, -1)
        for o in range(2):
            Bs = np.cross(H[o], w, axis=0)
            Bd = np.cross(cam, G[o], axis=0)
            J[0:3, o] = Bs[0] * As[0] + Bs[1] * As[1] + Bs[2] * As[2]
            J[3:6, o] = Bd[0] * Ad[0] + Bd[1] * Ad[1] + Bd[2] * Ad[2]
        # Source intrinsics: E dx = du with E = g I + c x x^T, E^-1 = (I - c x x^T / (g + c rho)) / g.
        rho = x * x + y * y
        g = 1.0 + k1s * rho + k2s * rho * rho
        c = 2.0 * (k1s + 2.0 * k2s * rho)
        cc = c / (g + c * rho)
        e00, e01, e11 = (1.0 - cc * x * x) / g, -cc * x * y / g, (1.0 - cc * y * y) / g
        for o in range(2):
            h0 = H[o, 0] * e00 + H[o, 1] * e01  # (H E^-1)[o]: d out_o / d u
            h1 = H[o, 0] * e01 + H[o, 1] * e11
            J[6, o] = -(h0 * ux + h1 * uy) / fs  # f: du = -u / f
            J[7, o] = -h0 / fs
            J[8, o] = -h1 / fs
            J[9, o] = -(h0 * x + h1 * y) * rho  # k1: E dx = -x rho
            J[10, o] = J[9, o] * rho  # k2: E dx = -x rho^2
        J[11, 0], J[11, 1] = X * h, Y * h
        J[12:14] = 0.0
        J[12, 0] = J[13, 1] = 1.0
        J[14, 0], J[14, 1] = fd * X * sig, fd * Y * sig
        J[15] = J[14] * sig
        return res.ravel(), J


@dataclass(frozen=True)
class Adjustment:
    """The adjusted cameras and the residuals.

    Attributes:
        cameras: per image, in pixels.
        rms_before, rms_after: RMS reprojection error of the inliers in input pixels, before and
            after the adjustment.
        rms_rotation: the error of the rotation-and-focal stage alone (no lens terms).
    """

    cameras: dict[int, Camera]
    rms_before: float
    rms_after: float
    rms_rotation: float


def adjust_cameras(
    nodes: list[int],
    reference: int,
    rotations: dict[int, np.ndarray],
    focal_n: float,
    pairs: list[PairPoints],
    shapes: dict[int, tuple[int, int]],
    scale: float,
    huber_px: float,
    lens: bool = True,
    start: dict[int, Camera] | None = None,
    iterations: int | None = None,
    tie_focal: bool = False,
) -> Adjustment:
    """Bundle-adjust rotations and one focal per camera group, then also principal points and distortion.

    Args:
        nodes, reference: the images and the one fixed at ``R = I``.
        rotations: starting ``R_v`` (chained from the spanning tree's homographies).
        focal_n: starting focal (normalized units).
        pairs: normalized inliers of every verified pair.
        shapes: ``(H, W)`` per image.
        scale: pixels per normalized unit.
        huber_px: the robust loss's threshold in pixels.
        lens: run the second stage (principal point and k1, k2).
        start: cameras to start from instead (a second adjustment after more pairs were found).
        iterations: Levenberg-Marquardt iterations per stage (None: the solver's default; 0:
            only measure the starting cameras' error).
        tie_focal: one focal length per camera group instead of one per image.

    Returns:
        An :class:`Adjustment`; the focal stays as given when the adjustment diverges.
    """
    groups = camera_groups({v: shapes[v] for v in nodes})
    model = CameraModel(nodes, reference, groups, free_lens=False, focal_groups=groups if tie_focal else None)
    if start is not None:
        lens_p = {}
        focals = {}
        for v, c in start.items():
            h, w = shapes[v]
            focals[v] = c.focal / scale
            lens_p[groups[v]] = ((c.ppx - (w - 1) / 2.0) / scale, (c.ppy - (h - 1) / 2.0) / scale, c.k1, c.k2)
        p0 = model.pack({v: c.R for v, c in start.items()}, focals, lens_p)
    else:
        p0 = model.pack(rotations, focal_n)
    its = {} if iterations is None else {"max_iterations": iterations}
    p1, rep1 = refine(model, p0, pairs, scale, huber_px=huber_px, **its)
    if not all(model.intrinsics(v, p1)[0] > 0 and np.isfinite(p1).all() for v in nodes):
        logger.warning("the bundle adjustment diverged; keeping the chained rotations")
        p1, rep1 = p0, RefineReport(rep1.rms_before, rep1.rms_before, 0)
    p, rms_after = p1, rep1.rms_after
    if lens and len(pairs) and iterations != 0:
        model.free[:] = True
        p2, rep2 = refine(model, p1, pairs, scale, huber_px=huber_px, **its)
        if (
            np.isfinite(p2).all()
            and rep2.rms_after <= (1.0 - LENS_MIN_GAIN) * rep1.rms_after
            and all(model.intrinsics(v, p2)[0] > 0 for v in nodes)
        ):
            p, rms_after = p2, rep2.rms_after
    logger.info(
        "bundle adjustment: rms %.3f px -> %.3f px (rotation stage %.3f px)", rep1.rms_before, rms_after, rep1.rms_after
    )
    return Adjustment(model.cameras(p, shapes, scale), rep1.rms_before, rms_after, rep1.rms_after)


def homography_rms(pairs: list[PairPoints], homographies: list[np.ndarray], scale: float) -> float:
    """RMS symmetric transfer error (pixels) of each pair's own homography (normalized ``H``)."""
    sq, n = 0.0, 0
    for pp, H in zip(pairs, homographies, strict=True):
        for src, dst, M in ((pp.a, pp.b, H), (pp.b, pp.a, np.linalg.inv(H))):
            q = np.c_[src, np.ones(len(src))] @ M.T
            q = q[:, :2] / np.where(np.abs(q[:, 2:3]) < 1e-12, 1e-12, q[:, 2:3])
            sq += float(np.sum((q - dst) ** 2))
            n += len(src)
    return float(np.sqrt(sq / max(n, 1))) * scale


def rotation_explains(rms_rotation: float, rms_free: float, focal_px: float, side_px: float) -> bool:
    """Whether the rotation model fits about as well as free homographies, with a real field of view."""
    return rms_rotation <= AUTO_RATIO * rms_free + AUTO_SLACK_PX and focal_px <= AUTO_MAX_FOCAL_SIDES * side_px


def surface_kind(cameras: dict[int, Camera], shapes: dict[int, tuple[int, int]]) -> str:
    """``cylindrical`` unless some image reaches beyond :data:`AUTO_MAX_CYLINDER_ELEVATION` (then ``spherical``)."""
    from .graph import image_outline

    top = 0.0
    for v, cam in cameras.items():
        rays = cam.rays(image_outline(shapes[v], 16))
        elev = np.degrees(np.arctan2(np.abs(rays[:, 1]), np.hypot(rays[:, 0], rays[:, 2])))
        top = max(top, float(elev.max()))
    return "spherical" if top > AUTO_MAX_CYLINDER_ELEVATION else "cylindrical"


#: A pair is predicted to overlap when this share of one image lands inside the other.
PREDICTED_OVERLAP = 0.1


def predicted_pairs(
    cameras: dict[int, Camera], shapes: dict[int, tuple[int, int]], tried: set[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, never tried that the cameras say overlap by :data:`PREDICTED_OVERLAP`."""
    nodes = sorted(cameras)
    out = []
    for a, i in enumerate(nodes):
        for j in nodes[a + 1 :]:
            if (i, j) in tried:
                continue
            zi, zj = cameras[i].R[2], cameras[j].R[2]
            if zi @ zj <= 0.2:  # more than ~78 degrees apart
                continue
            h, w = shapes[j]
            poly, front = cameras[j].pixels(cameras[i].rays(_corners(shapes[i])))
            if not front.all():
                continue
            rect = _corners(shapes[j]).astype(np.float32)
            area, _ = cv2.intersectConvexConvex(poly.astype(np.float32), rect)
            if area > PREDICTED_OVERLAP * min(h * w, shapes[i][0] * shapes[i][1]):
                out.append((i, j))
    return out


def _corners(shape: tuple[int, int]) -> np.ndarray:
    from ..geometry import corners

    return corners(shape).astype(np.float64)

"""Colour compensation: a tone curve per image and channel (exposure, white balance and the
camera's response), then gains that vary across each image (blocks), both fitted on the
overlaps at the seam resolution.

1. Tone curves. Two photos of one sky differ by more than a gain: the brighter one is
   compressed towards white by the camera's response and clips its blue channel first, so
   that the sky is teal in one photo and blue in the next even after the best gray or
   per-channel gain. Every image ``i`` gets per channel a piecewise-linear curve ``T_i``
   (knots every 32 levels) so that overlapping pixels agree, ``T_i(a) = T_j(b)`` for the
   values ``a``, ``b`` of one canvas pixel in images ``i`` and ``j``; the mean curve is held
   at the identity, and a smoothness and a weak identity prior settle the levels that no
   overlap shows. The curves are linear in their knots: one least-squares solve per channel,
   reweighted twice (Huber) so that moving things and small misalignments count little.
   One gray gain per image (Brown & Lowe, OpenCV's ``GainCompensator``) is a special case.
2. Blocks. What one curve per image cannot fix (vignetting, a sky brightening towards the
   sun) is fitted by OpenCV's ``BlocksChannelsCompensator`` on the images already corrected
   by step 1: gains per 32x32 block of the low-resolution images, smoothed, and upsampled to
   each image's size when applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .warp import Warped

logger = logging.getLogger(__name__)

#: Knots of the tone curves (levels 0..255).
KNOTS = np.linspace(0.0, 255.0, 9)
#: Value pairs are counted in bins of this many levels (256 / BIN bins a side): the solves stay
#: small enough that no BLAS call starts threads (which, on a busy machine, cost seconds).
BIN = 4
#: Pairs where both values are at or above this are clipped in both: no evidence.
CLIPPED = 252
#: Block size (pixels of the low-resolution images, about 0.1 MP each) of the spatially varying
#: gains: vignetting and sky gradients vary slowly, and OpenCV's solve grows fast with the block
#: count (xue's 18 pieces: 308 ms at 32 px, 68 ms at 48 px).
BLOCK = 48
#: Weights of the priors, relative to the data (whose weights sum to 1 per channel).
MEAN_PRIOR, SMOOTH_PRIOR, IDENTITY_PRIOR = 10.0, 1e-2, 1e-3


@dataclass(frozen=True)
class Compensation:
    """Colour corrections of the images of one panorama.

    Attributes:
        curves: ``(n, 3, 256)`` float32 tone curve per image and BGR channel (level -> level).
        block_gains: per image a ``(by, bx, 3)`` float32 map of further gains over its
            region, bilinearly upsampled when applied (``(1, 1, 3)`` ones: none).
    """

    curves: np.ndarray
    block_gains: tuple[np.ndarray, ...]

    def apply(self, k: int, w: Warped) -> Warped:
        """Image ``k`` with its curves and gains applied."""
        h, wd = w.image.shape[:2]
        lut = np.clip(np.rint(self.curves[k].T), 0, 255).astype(np.uint8).reshape(256, 1, 3)
        out = cv2.LUT(np.ascontiguousarray(w.image), lut)
        gain = self.block_gains[k]
        if not np.all(gain == 1):
            full = cv2.resize(gain, (wd, h), interpolation=cv2.INTER_LINEAR).reshape(h, wd, 3)
            out = cv2.multiply(out, full, dtype=cv2.CV_8U)
        return Warped(w.index, out, w.mask, w.corner)

    def apply_all(self, warped: list[Warped]) -> list[Warped]:
        """Every image with its corrections (``warped[k]`` is image ``k``), replaced in ``warped``
        one at a time (only one uncorrected copy is alive beside the corrected ones); returns ``warped``."""
        for k, w in enumerate(warped):
            warped[k] = self.apply(k, w)
        return warped


def _hat_basis(levels: np.ndarray | None = None) -> np.ndarray:
    """``(L, K)``: level -> weights of the knots (linear interpolation); every level 0..255 by default."""
    levels = np.arange(256.0) if levels is None else levels
    step = KNOTS[1] - KNOTS[0]
    return np.clip(1.0 - np.abs(levels[:, None] - KNOTS[None, :]) / step, 0.0, 1.0)


def joint_histograms(small: list[Warped]) -> list[tuple[int, int, np.ndarray]]:
    """``(i, j, H)`` per overlapping pair: ``H (3, 256 / BIN, 256 / BIN)`` counts of the binned
    value pairs ``(a, b)`` of one canvas pixel in images ``i`` and ``j``, per channel (pairs
    clipped in both left out)."""
    bins = 256 // BIN
    out = []
    for i in range(len(small)):
        for j in range(i + 1, len(small)):
            r = _intersect(small[i].roi, small[j].roi)
            if r is None:
                continue
            both = (_crop(small[i], r, small[i].mask) > 0) & (_crop(small[j], r, small[j].mask) > 0)
            if not both.any():
                continue
            a = _crop(small[i], r, small[i].image)[both].astype(np.int64) // BIN
            b = _crop(small[j], r, small[j].image)[both].astype(np.int64) // BIN
            H = np.stack([np.bincount(a[:, c] * bins + b[:, c], minlength=bins * bins) for c in range(3)])
            H = H.reshape(3, bins, bins).astype(np.float64)
            H[:, CLIPPED // BIN :, CLIPPED // BIN :] = 0.0
            out.append((i, j, H))
    return out


def tone_curves(small: list[Warped]) -> np.ndarray:
    """``(n, 3, 256)`` curves, per piece of ``small``, that make overlapping pixels agree (see the module doc).

    The normal equations depend on the pixels only through each pair's joint histogram of
    (binned) values, so every solve costs ``O(64^2)`` per pair whatever the image size.
    """
    # The pieces of one image (both ends of a closed loop) share its curves: unknowns per image.
    slot_of = {index: s for s, index in enumerate(sorted({w.index for w in small}))}
    slots = [slot_of[w.index] for w in small]
    n, K = len(slot_of), len(KNOTS)
    basis = _hat_basis(np.arange(0, 256, BIN) + (BIN - 1) / 2.0)
    full = _hat_basis()
    hists = [(slots[i], slots[j], H) for i, j, H in joint_histograms(small) if slots[i] != slots[j]]
    curves = np.repeat(np.arange(256.0, dtype=np.float32)[None, None], n, axis=0).repeat(3, axis=1)
    if not hists:
        return curves[slots]
    D2 = np.diff(np.eye(K), 2, axis=0)  # second differences of the knots
    M = np.zeros((K, n * K))  # mean over images of each knot
    for i in range(n):
        M[:, i * K : (i + 1) * K] = np.eye(K) / n
    for c in range(3):
        total = max(sum(float(H[c].sum()) for _, _, H in hists), 1.0)
        theta = np.tile(KNOTS, n)
        for _ in range(3):  # least squares, then Huber reweighting
            A = MEAN_PRIOR * M.T @ M
            rhs = MEAN_PRIOR * M.T @ KNOTS
            for i, j, H in hists:
                si, sj = slice(i * K, (i + 1) * K), slice(j * K, (j + 1) * K)
                resid = (basis @ theta[si])[:, None] - (basis @ theta[sj])[None, :]
                w = H[c] * np.minimum(1.0, 8.0 / np.maximum(np.abs(resid), 1e-9)) / total
                A[si, si] += basis.T @ (w.sum(axis=1)[:, None] * basis)
                A[sj, sj] += basis.T @ (w.sum(axis=0)[:, None] * basis)
                cross = basis.T @ w @ basis
                A[si, sj] -= cross
                A[sj, si] -= cross.T
            for i in range(n):
                s = slice(i * K, (i + 1) * K)
                A[s, s] += SMOOTH_PRIOR * D2.T @ D2 + IDENTITY_PRIOR * np.eye(K)
                rhs[s] += IDENTITY_PRIOR * KNOTS
            theta = np.linalg.solve(A, rhs)
        for i in range(n):
            lut = np.maximum.accumulate(full @ theta[i * K : (i + 1) * K])  # monotone
            curves[i, c] = np.clip(lut, 0.0, 255.0)
    return curves[slots]


def _intersect(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _crop(w: Warped, r: tuple[int, int, int, int], arr: np.ndarray) -> np.ndarray:
    x, y = r[0] - w.corner[0], r[1] - w.corner[1]
    return arr[y : y + r[3], x : x + r[2]]


def fit(small: list[Warped], blocks: bool = True) -> Compensation:
    """Tone curves, then (``blocks``) block gains, on the low-resolution warped images ``small``."""
    curves = tone_curves(small)
    ones = tuple(np.ones((1, 1, 3), np.float32) for _ in small)
    comp = Compensation(curves, ones)
    if blocks and len(small) > 1:
        corrected = [comp.apply(k, w) for k, w in enumerate(small)]
        blk = cv2.detail.BlocksChannelsCompensator(BLOCK, BLOCK, 1)
        blk.feed([w.corner for w in corrected], [w.image for w in corrected], [w.mask for w in corrected])
        maps = []
        for g in blk.getMatGains():
            g = np.asarray(g, np.float32)
            maps.append(
                g.reshape(g.shape[0], g.shape[1], 3)
                if g.size % 3 == 0 and g.ndim == 3
                else np.ones((1, 1, 3), np.float32)
            )
        comp = Compensation(curves, tuple(maps))
    logger.info("tone curves at mid-gray (BGR): %s", np.round(curves[:, :, 128], 1).tolist())
    return comp


def compensate(warped: list[Warped], blocks: bool = True) -> list[Warped]:
    """The warped images with colours that agree across their overlaps (fitted at low resolution)."""
    from .seams import shrink

    small, _ = shrink(warped)
    comp = fit(small, blocks)
    return [comp.apply(k, w) for k, w in enumerate(warped)]

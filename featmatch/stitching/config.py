"""Options, errors and the warning of the stitching package.

The choices (``PROJECTIONS``, ``BLENDS``) are read by both the API and the CLI, and the
defaults come from the same constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..detect import MAX_TILT_LIMIT
from ..errors import EXIT_NO_HOMOGRAPHY, ConfigError, FeatmatchError

#: Descriptor used by ``featmatch stitch`` and :func:`featmatch.stitch` when none is given:
#: the core default (``python benchmarks/stitch_vs_opencv.py`` compares it with sift).
DEFAULT_STITCH_DESCRIPTOR = "hardnet"
#: ``auto`` picks the rotation model (cylindrical, or spherical for a tall field of view) when it
#: explains the matches about as well as free homographies, planar for flat scenes (scans, maps).
PROJECTIONS = ("auto", "planar", "cylindrical", "spherical")
DEFAULT_PROJECTION = "auto"
BLENDS = ("multiband", "feather", "none")
DEFAULT_BLEND = "multiband"
#: Seam finders (:mod:`.seams`): dynamic programming, graph cut (both on colour and gradient), Voronoi.
SEAMS = ("dp", "graphcut", "voronoi")
DEFAULT_SEAM = "dp"
#: No cap on the canvas by default: only a canvas that a wrong model makes is refused (see
#: :data:`featmatch.stitching.warp.BAD_MODEL_FACTOR`); ``max_megapixels`` sets one.
DEFAULT_MAX_MEGAPIXELS = None
#: Images are registered (detected, described, matched) at most at this many megapixels (OpenCV's
#: stitcher: 0.6 MP); the panorama is still composed at full resolution. Against ground truth
#: (graf, HPatches) 0.3 MP with 1500 keypoints was more accurate than full resolution with 4000,
#: and 0.6 MP no better: docs/stitching.md ("Registration resolution").
DEFAULT_REGISTER_MEGAPIXELS = 0.3
#: Keypoints per image the stitcher keeps when none is asked for (``match`` keeps
#: :data:`featmatch.detect.DEFAULT_MAX_KEYPOINTS`): a panorama's pairs overlap widely and the
#: bundle adjustment pools every pair's inliers; measured in docs/stitching.md.
DEFAULT_STITCH_KEYPOINTS = 1500
#: Up to this many images every pair is matched; above it a FAISS vote shortlists pairs.
DEFAULT_EXHAUSTIVE_MAX = 8
#: Candidate partners kept per image by the FAISS vote.
DEFAULT_PAIRS_PER_IMAGE = 4
#: Unconnected images are retried with simulated oblique views up to this tilt (1: never).
DEFAULT_RETRY_TILT = 4.0


class StitchError(FeatmatchError):
    """The images cannot be stitched (nothing overlaps, the canvas would be absurd, ...).

    Exit code 3, like every "no reliable homography" failure.
    """

    exit_code = EXIT_NO_HOMOGRAPHY


class StitchInputError(FeatmatchError):
    """Unusable input for stitching (fewer than two images); exit code 2."""


class StitchWarning(UserWarning):
    """Emitted when images are left out of a panorama because they connect to nothing."""


@dataclass(frozen=True)
class StitchConfig:
    """Options of the stitcher (the matcher's options live in the :class:`~featmatch.Matcher`).

    Attributes:
        projection: one of :data:`PROJECTIONS`.
        blend: one of :data:`BLENDS`.
        crop: crop the panorama to the largest rectangle of valid pixels (a closed 360 degree
            panorama: to the rows valid all round); False keeps every pixel (the CLI then writes
            an alpha channel to PNG).
        exposure: make colours agree across the overlaps (tone curves per image and channel,
            then block gains; see :mod:`.exposure`).
        seam: one of :data:`SEAMS` (``multiband`` and ``none`` blend along them).
        refine: jointly refine all transforms over all inlier matches after chaining (bundle
            adjustment of the camera model for cylindrical/spherical).
        lens: let the bundle adjustment also fit each camera's principal point and radial
            distortion ``k1, k2``.
        wave_correct: straighten wide cylindrical/spherical panoramas (horizon level).
        focal: focal length in pixels for cylindrical/spherical (None: estimated from the homographies).
        max_megapixels: the largest canvas allowed (None: no cap; a canvas only a wrong model makes
            is refused anyway); a larger one raises :class:`StitchError`.
        output_megapixels: the canvas's area before the crop (None: the input resolution).
        register_megapixels: detect and describe each image downscaled to at most this many
            megapixels (None: at full resolution, up to the matcher's ``max_side``); keypoints
            and every later step stay in full-resolution pixels.
        scale: output resolution relative to the input images' (exclusive with ``output_megapixels``).
        exhaustive_max: match all pairs up to this many images, else shortlist by a FAISS vote.
        pairs_per_image: candidate partners kept per image by the vote.
        min_inliers: fewest inliers for a pair to count as overlapping.
        inlier_alpha, inlier_beta: Brown & Lowe's test, a pair is kept when
            ``inliers > alpha + beta * matches_in_overlap``.
        max_points_per_pair: inliers per pair used by the refinement (evenly subsampled).
        vote_descriptors: descriptors per image that take part in the FAISS vote.
        retry_tilt: images left out of the main group after matching are described again with
            simulated oblique views up to this tilt (ASIFT, see :mod:`featmatch.detect`),
            together with their candidate partners, and those pairs are matched again; this
            finds overlaps seen from very different angles (aerial obliques). 1 disables it.
        retry_keypoints: keypoints kept per simulated view in that retry.
    """

    projection: str = DEFAULT_PROJECTION
    blend: str = DEFAULT_BLEND
    crop: bool = True
    exposure: bool = True
    seam: str = DEFAULT_SEAM
    refine: bool = True
    lens: bool = True
    wave_correct: bool = True
    focal: float | None = None
    max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS
    output_megapixels: float | None = None
    scale: float | None = None
    register_megapixels: float | None = DEFAULT_REGISTER_MEGAPIXELS
    exhaustive_max: int = DEFAULT_EXHAUSTIVE_MAX
    pairs_per_image: int = DEFAULT_PAIRS_PER_IMAGE
    min_inliers: int = 20
    inlier_alpha: float = 8.0
    inlier_beta: float = 0.3
    max_points_per_pair: int = 1000
    vote_descriptors: int = 500
    retry_tilt: float = DEFAULT_RETRY_TILT
    retry_keypoints: int = 1000

    def __post_init__(self) -> None:
        if not 1.0 <= self.retry_tilt <= MAX_TILT_LIMIT:
            raise ConfigError(f"retry_tilt must be between 1 (off) and {MAX_TILT_LIMIT:g}, got {self.retry_tilt}")
        if self.retry_keypoints < 1:
            raise ConfigError(f"retry_keypoints must be at least 1, got {self.retry_keypoints}")
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"unknown projection '{self.projection}'; choose one of {', '.join(PROJECTIONS)}")
        if self.seam not in SEAMS:
            raise ConfigError(f"unknown seam finder '{self.seam}'; choose one of {', '.join(SEAMS)}")
        if self.blend not in BLENDS:
            raise ConfigError(f"unknown blend '{self.blend}'; choose one of {', '.join(BLENDS)}")
        for name in ("max_megapixels", "output_megapixels", "scale", "register_megapixels"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.output_megapixels is not None and self.scale is not None:
            raise ConfigError("give output_megapixels or scale, not both")
        if self.focal is not None and not self.focal > 0:
            raise ConfigError(f"focal must be positive, got {self.focal}")
        if self.exhaustive_max < 2:
            raise ConfigError(f"exhaustive_max must be at least 2, got {self.exhaustive_max}")
        if self.pairs_per_image < 1:
            raise ConfigError(f"pairs_per_image must be at least 1, got {self.pairs_per_image}")
        if self.min_inliers < 4:
            raise ConfigError(f"min_inliers must be at least 4, got {self.min_inliers}")
        if self.max_points_per_pair < 4:
            raise ConfigError(f"max_points_per_pair must be at least 4, got {self.max_points_per_pair}")
        if self.vote_descriptors < 1:
            raise ConfigError(f"vote_descriptors must be at least 1, got {self.vote_descriptors}")

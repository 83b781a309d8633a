"""Panoramas: stitch overlapping photos (``featmatch stitch`` and :func:`featmatch.stitch`).

Modules, one per stage: :mod:`.config` (options, errors), :mod:`.graph` (pair selection,
verification, spanning tree, reference), :mod:`.camera` (the camera model: rotation, focal,
principal point, radial distortion; focal from homographies, wave correction), :mod:`.adjust`
(bundle adjustment of the camera model, the evidence behind ``--projection auto``),
:mod:`.refine` (the Levenberg-Marquardt solver; the planar model), :mod:`.warp` (planar,
cylindrical, spherical; closed 360 degree loops; the size rule), :mod:`.exposure` (colour), :mod:`.seams`, :mod:`.blend`
(blending), :mod:`.crop` (the largest valid rectangle), :mod:`.stitcher` (the pipeline),
:mod:`.plot` (the pair-graph / seam picture) and :mod:`.cli`."""

from __future__ import annotations

from .config import (
    BLENDS,
    DEFAULT_STITCH_DESCRIPTOR,
    PROJECTIONS,
    SEAMS,
    StitchConfig,
    StitchError,
    StitchInputError,
    StitchWarning,
)
from .stitcher import PairEdge, StitchResult, stitch

__all__ = [
    "BLENDS",
    "DEFAULT_STITCH_DESCRIPTOR",
    "PROJECTIONS",
    "SEAMS",
    "PairEdge",
    "StitchConfig",
    "StitchError",
    "StitchInputError",
    "StitchResult",
    "StitchWarning",
    "stitch",
]

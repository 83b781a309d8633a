"""Panoramas: stitch overlapping photos (``featmatch stitch`` and :func:`featmatch.stitch`).

Modules, one per concern: :mod:`.config` (options, errors), :mod:`.graph` (pair selection,
verification, spanning tree, reference), :mod:`.camera` (focal length, rotations, wave
correction), :mod:`.refine` (joint least squares), :mod:`.warp` (planar, cylindrical,
spherical), :mod:`.exposure` (colour), :mod:`.seams`, :mod:`.blend` (blending, crop),
:mod:`.stitcher` (the pipeline),
:mod:`.plot` (the pair-graph / seam picture) and :mod:`.cli`.
"""

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

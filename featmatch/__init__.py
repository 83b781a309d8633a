"""featmatch: local-feature matching for homographies and panoramas.

The public API::

    import featmatch
    result = featmatch.estimate_homography("a.jpg", "b.jpg", descriptor="hardnet")
    matcher = featmatch.Matcher("sift")          # reuse for many pairs
    features = featmatch.describe("a.jpg")
    desc = featmatch.describe_patches(patches)   # (N, 32, 32) uint8 or float patches -> (N, 128)

Submodules are imported on first use, so ``import featmatch`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "estimate_homography": "featmatch.pipeline",
    "describe": "featmatch.pipeline",
    "Matcher": "featmatch.pipeline",
    "MatchResult": "featmatch.pipeline",
    "Features": "featmatch.pipeline",
    "DESCRIPTORS": "featmatch.descriptors",
    "describe_patches": "featmatch.descriptors",
    "stitch": "featmatch.stitching",
    "batch": "featmatch.batching",
    "load_image": "featmatch.imageio",
    "FeatmatchError": "featmatch.errors",
    "ImageReadError": "featmatch.errors",
    "ModelNotFoundError": "featmatch.errors",
    "NotEnoughMatchesError": "featmatch.errors",
    "ConfigError": "featmatch.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featmatch' has no attribute '{name}'")

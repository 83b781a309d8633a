"""featmatch: local-feature matching for homographies and panoramas.

The public API (the same jobs as the ``featmatch`` command)::

    import featmatch

    # one pair: the homography mapping a.jpg's pixels to b.jpg's (MatchResult)
    result = featmatch.estimate_homography("a.jpg", "b.jpg", descriptor="hardnet")
    matcher = featmatch.Matcher("sift")             # builds the stages once, for many pairs
    features = featmatch.describe("a.jpg")          # keypoints and descriptors only
    desc = featmatch.describe_patches(patches)      # (N, 32, 32) patches -> (N, 128)

    # a panorama (StitchResult) and many pairs (an iterator of PairResult, resumable)
    pano = featmatch.stitch(["1.jpg", "2.jpg", "3.jpg"])
    for r in featmatch.batch("photos/", pairs="sequential:3", output="results.jsonl"):
        print(r.image1, r.image2, r.status, r.num_inliers)

    # interop with OpenCV and kornia
    featmatch.to_cv_keypoints, featmatch.from_cv_keypoints, featmatch.to_cv_matches,
    featmatch.to_kornia_lafs, featmatch.extract_patches

Errors derive from ``featmatch.FeatmatchError`` (``ImageReadError``, ``ConfigError``,
``ModelNotFoundError``, ``NotEnoughMatchesError``). Submodules are imported on first use, so
``import featmatch`` stays cheap; ``dir(featmatch)`` and ``help(featmatch)`` list every public name.
"""

from __future__ import annotations

import importlib
import os
import sys

# A second guard against decompression bombs (featmatch.headers reads the common formats'
# headers first): OpenCV refuses images above this many pixels before decoding them. OpenCV
# reads the variable once, when it loads, so this only helps when featmatch is imported
# before cv2; a value the user set is kept. Keep it equal to featmatch.imageio.MAX_PIXELS.
if "cv2" not in sys.modules:
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "200000000")

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
    # interop with OpenCV and kornia (featmatch/interop.py)
    "to_cv_keypoints": "featmatch.interop",
    "from_cv_keypoints": "featmatch.interop",
    "to_kornia_lafs": "featmatch.interop",
    "to_cv_matches": "featmatch.interop",
    "extract_patches": "featmatch.patches",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # imported once; later look-ups skip this function
        return value
    raise AttributeError(f"module 'featmatch' has no attribute '{name}'")


def __dir__() -> list[str]:
    """The public API and the module's own names (tab completion, ``help(featmatch)``)."""
    return sorted(set(globals()) | set(_LAZY))

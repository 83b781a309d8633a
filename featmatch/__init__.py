"""featmatch: local-feature matching for homographies and panoramas.

The public API::

    import featmatch
    result = featmatch.estimate_homography("a.jpg", "b.jpg", descriptor="hardnet")
    matcher = featmatch.Matcher("sift")          # reuse for many pairs
    features = featmatch.describe("a.jpg")
    cv_kps = featmatch.to_cv_keypoints(features.keypoints)   # OpenCV / kornia interop
    desc = featmatch.describe_patches(patches)   # (N, 32, 32) uint8 or float patches -> (N, 128)

Submodules are imported on first use, so ``import featmatch`` stays cheap.
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
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featmatch' has no attribute '{name}'")

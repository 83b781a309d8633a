"""What a panorama looks like: the feather ramp, colour across seams, seams, and the cost of
stray photos (issue 20's checks; the geometry is in test_stitching.py)."""

from __future__ import annotations

import numpy as np

from featmatch.stitching import blend
from featmatch.stitching.warp import Warped


def _flat(value, size=(400, 200), corner=(0, 0)) -> Warped:
    h, w = size
    img = np.full((h, w, 3), value, np.uint8)
    return Warped(0, img, np.full((h, w), 255, np.uint8), corner)


def test_feather_ramps_across_the_overlap_of_two_flat_images():
    a, b = _flat(40), _flat(200, corner=(100, 0))
    pano, valid, _ = blend.blend([a, b], (300, 400), "feather")
    assert valid.all()
    row = pano[200, 100:200, 0].astype(int)  # the overlap, far from the top and bottom borders
    assert row[3] < 60 and row[-4] > 180, row  # from one image's value to the other's
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 50, row  # a ramp across it, not a step
    assert abs(row[50] - 120) < 10, row
    assert pano[200, 20, 0] == 40 and pano[200, 280, 0] == 200  # outside the overlap: the image itself

"""What a panorama looks like: the feather ramp, colour across seams, seams, and the cost of
stray photos (issue 20's checks; the geometry is in test_stitching.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import featmatch
from featmatch.stitching import StitchWarning, blend, stitch, stitcher
from featmatch.stitching.warp import Warped

from .conftest import EVALDATA


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


# -- stray photos ------------------------------------------------------------------------------


def _views_of(photo: np.ndarray, count: int, size: int = 288, step: int = 170) -> list[np.ndarray]:
    return [np.ascontiguousarray(photo[20 : 20 + size, 20 + step * k : 20 + step * k + size]) for k in range(count)]


@pytest.fixture(scope="module")
def two_scenes():
    astronaut = cv2.imread(str(EVALDATA / "astronaut.png"))
    coffee = cv2.imread(str(EVALDATA / "coffee.png"))
    return _views_of(astronaut, 2), _views_of(coffee, 2, step=120)


@pytest.fixture()
def full_asift_count(monkeypatch):
    """How many images get described with simulated views at full resolution."""
    calls = []
    original = featmatch.Matcher.features

    def spy(self, image):
        if self.detect_config.max_tilt > 1 and self.detect_config.max_side > stitcher.RETRY_PROBE_SIDE:
            calls.append(image)
        return original(self, image)

    monkeypatch.setattr(featmatch.Matcher, "features", spy)
    return calls


def test_a_stray_photo_is_probed_cheaply_dropped_and_named(two_scenes, full_asift_count):
    (a, b), (stray, _) = two_scenes
    with pytest.warns(StitchWarning, match=r"<array 1>"):
        r = stitch([a, stray, b], descriptor="sift", max_keypoints=1000)
    assert r.placed == (0, 2) and r.dropped == (1,) and r.to_json()["dropped"] == [1]
    assert "retry" in r.timings_ms  # it was looked at with oblique views ...
    assert full_asift_count == []  # ... but only with the cheap low-resolution probe


def test_a_second_scene_that_matches_itself_is_not_retried(two_scenes):
    (a, b), (c, d) = two_scenes
    with pytest.warns(StitchWarning, match=r"<array 1>, <array 3>"):
        r = stitch([a, c, b, d], descriptor="sift", max_keypoints=1000)
    assert r.placed == (0, 2) and r.dropped == (1, 3)
    assert "retry" not in r.timings_ms

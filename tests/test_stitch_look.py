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
    return _views_of(astronaut, 3, step=100), _views_of(coffee, 2, step=120)


@pytest.fixture()
def oblique_views(monkeypatch):
    """The images described with simulated views: ``{"probe": [...], "full": [...]}`` (low / full resolution)."""
    calls: dict = {"probe": [], "full": []}
    original = featmatch.Matcher.features

    def spy(self, image):
        if self.detect_config.max_tilt > 1:
            low = self.detect_config.max_side <= stitcher.RETRY_PROBE_SIDE
            calls["probe" if low else "full"].append(image)
        return original(self, image)

    monkeypatch.setattr(featmatch.Matcher, "features", spy)
    return calls


def test_a_stray_photo_is_probed_cheaply_dropped_and_named(two_scenes, oblique_views):
    (a, b, c), (stray, _) = two_scenes
    with pytest.warns(StitchWarning, match=r"<array 1>"):
        r = stitch([a, stray, b, c], descriptor="sift", max_keypoints=1000)
    assert r.placed == (0, 2, 3) and r.dropped == (1,) and r.to_json()["dropped"] == [1]
    assert "retry" in r.timings_ms  # it was looked at with oblique views ...
    assert oblique_views["full"] == []  # ... only with the cheap low-resolution probe ...
    assert len(oblique_views["probe"]) == 1 + stitcher.RETRY_PARTNERS  # ... against its 2 best partners


def test_a_second_scene_that_matches_itself_is_not_retried(two_scenes):
    (a, b, _), (c, d) = two_scenes
    with pytest.warns(StitchWarning, match=r"<array 1>, <array 3>"):
        r = stitch([a, c, b, d], descriptor="sift", max_keypoints=1000)
    assert r.placed == (0, 2) and r.dropped == (1, 3)
    assert "retry" not in r.timings_ms


# -- colour ------------------------------------------------------------------------------------


def _tone(img: np.ndarray, gamma: float, cast: tuple[float, float, float]) -> np.ndarray:
    """Another camera's look: a response curve and a white balance (BGR gains), clipped."""
    out = 255.0 * (img / 255.0) ** gamma * np.array(cast)
    return np.clip(out, 0, 255).astype(np.uint8)


def _output_over_input(r, photo: np.ndarray, cols: slice) -> np.ndarray:
    """Per channel, the panorama's mean over the photo's mean in a band of the photo's columns."""
    back = cv2.warpPerspective(r.panorama, np.linalg.inv(r.homographies[0]), photo.shape[1::-1])
    band = (slice(20, photo.shape[0] - 20), cols)
    return back[band].reshape(-1, 3).mean(0) / photo[band].reshape(-1, 3).mean(0)


def test_a_white_balance_and_response_difference_disappears():
    photo = cv2.imread(str(EVALDATA / "astronaut.png"))
    left = np.ascontiguousarray(photo[:, :320])
    right = _tone(np.ascontiguousarray(photo[:, 192:]), 0.9, (1.15, 1.0, 0.85))
    r = stitch([left, right], descriptor="sift", max_keypoints=1000, projection="planar")
    assert r.placed == (0, 1)
    a = _output_over_input(r, photo, slice(20, 170))  # only the left image
    b = _output_over_input(r, photo, slice(360, 490))  # only the right one
    assert np.abs(a / b - 1).max() < 0.04, (a, b)  # one look on both sides (one gray gain: 15% apart)


def test_tone_curves_equalize_a_darker_copy_exactly():
    from featmatch.stitching import exposure

    photo = cv2.imread(str(EVALDATA / "astronaut.png"))[:288, :288]
    mask = np.full(photo.shape[:2], 255, np.uint8)
    dark = np.ascontiguousarray((photo[:, 40:].astype(np.float32) * 0.7).astype(np.uint8))
    a, b = exposure.compensate([Warped(0, photo, mask, (0, 0)), Warped(1, dark, mask[:, 40:], (40, 0))])
    diff = a.image[:, 40:].astype(float) - b.image.astype(float)
    assert abs(diff.mean()) < 1.0 and np.abs(diff).mean() < 2.0, (diff.mean(), np.abs(diff).mean())


# -- seams -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seam", ["dp", "graphcut"])
def test_the_seam_goes_around_a_thing_that_moved(seam):
    """A patch that is in one photo only, in the middle of the overlap: the seam must not cut it."""
    photo = cv2.imread(str(EVALDATA / "astronaut.png"))
    left = np.ascontiguousarray(photo[:, :320])
    right = np.ascontiguousarray(photo[:, 160:])
    right[300:360, 55:105] = (40, 200, 250)  # photo columns 215..265, around the overlap's middle (240)
    r = stitch([left, right], descriptor="sift", max_keypoints=1000, projection="planar", seam=seam)
    assert r.placed == (0, 1)
    assert np.array_equal(r.seams >= 0, r.valid)
    back = cv2.warpPerspective(
        r.seams.astype(np.float32), np.linalg.inv(r.homographies[0]), (512, 512), flags=cv2.INTER_NEAREST
    )
    owners = np.unique(back[300:360, 215:265])  # the patch
    assert len(owners) == 1, owners  # all from one photo (a Voronoi seam splits it at column 240)


def test_seam_option_and_its_errors(tmp_path):
    import json

    from click.testing import CliRunner

    from featmatch.cli import cli
    from featmatch.errors import ConfigError
    from featmatch.stitching import SEAMS, StitchConfig

    assert SEAMS[0] == StitchConfig().seam == "dp"
    with pytest.raises(ConfigError, match="unknown seam finder 'nope'"):
        StitchConfig(seam="nope")
    photo = cv2.imread(str(EVALDATA / "astronaut.png"))
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    cv2.imwrite(paths[0], photo[:, :320])
    cv2.imwrite(paths[1], photo[:, 160:])
    out = str(tmp_path / "p.png")
    ok = CliRunner().invoke(cli, ["stitch", *paths, "-o", out, "-d", "sift", "--seam", "voronoi", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["placed"] == [0, 1]
    bad = CliRunner().invoke(cli, ["stitch", *paths, "-o", out, "--seam", "nope"])
    assert bad.exit_code == 2 and "--seam" in bad.output


def test_both_pieces_of_a_loop_image_share_one_tone_curve():
    # On a closed 360 degree loop one image is cut in two pieces (both ends of the canvas):
    # they are one photo and must get one correction, also when only one piece overlaps.
    from featmatch.stitching.exposure import tone_curves
    from featmatch.stitching.warp import Warped

    rng = np.random.default_rng(3)
    base = rng.integers(40, 200, (60, 80, 3)).astype(np.uint8)
    full = np.full((60, 80), 255, np.uint8)
    left = Warped(0, base[:, :40].copy(), full[:, :40].copy(), (0, 0))  # image 0, left end
    right = Warped(0, base[:, 40:].copy(), full[:, 40:].copy(), (400, 0))  # image 0, right end
    brighter = np.clip(base[:, 40:].astype(np.float32) * 1.3, 0, 255).astype(np.uint8)
    other = Warped(1, brighter, full[:, 40:].copy(), (400, 0))  # overlaps the right piece only
    curves = tone_curves([left, right, other])
    np.testing.assert_array_equal(curves[0], curves[1])
    assert np.abs(curves[1] - curves[2]).max() > 5  # the correction itself is there

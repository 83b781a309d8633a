"""Panorama stitching: the graph, chaining and refinement on synthetic views of a real photo,
the rotating-camera model, compositing helpers, and the CLI's contract (exit codes, JSON)."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import featmatch
from featmatch.cli import cli
from featmatch.errors import ImageReadError
from featmatch.geometry import corners, project
from featmatch.stitching import (
    StitchConfig,
    StitchError,
    StitchInputError,
    StitchWarning,
    camera,
    crop,
    graph,
    stitch,
)
from featmatch.stitching.warp import check_canvas

from .conftest import EVALDATA

KP = 1000
VIEW = 288


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.imread(str(EVALDATA / "astronaut.png"))  # a copy of skimage-photos/astronaut.png


@pytest.fixture(scope="module")
def grid_views(astronaut):
    """Four 288x288 views of a 2x2 grid over the photo, each with a known homography photo -> view."""
    rng = np.random.default_rng(0)
    views, truth = [], []
    for r in range(2):
        for c in range(2):
            shift = np.array([[1.0, 0, -(30 + 180 * c)], [0, 1.0, -(30 + 180 * r)], [0, 0, 1.0]])
            P = np.eye(3)
            P[2, :2] = rng.uniform(-2e-4, 2e-4, 2)
            P[0, 1] = rng.uniform(-0.03, 0.03)
            G = P @ shift
            views.append(cv2.warpPerspective(astronaut, G, (VIEW, VIEW), flags=cv2.INTER_LINEAR))
            truth.append(G)
    return views, truth


@pytest.fixture(scope="module", params=["sift", "hardnet"])
def grid_result(grid_views, request):
    return stitch(grid_views[0], descriptor=request.param, max_keypoints=KP, projection="planar", crop=False)


@pytest.fixture(scope="module")
def unrelated() -> np.ndarray:
    """A photo that overlaps none of the astronaut views."""
    img = cv2.imread(str(EVALDATA / "coffee.png"))
    return np.ascontiguousarray(img[:VIEW, :VIEW])


def _corner_error(H_est: np.ndarray, H_true: np.ndarray, shape=(VIEW, VIEW)) -> np.ndarray:
    c = corners(shape)
    return np.linalg.norm(project(H_est, c) - project(H_true, c), axis=1)


# -- chaining and refinement on synthetic views ------------------------------------------------


def test_planar_stitch_recovers_every_relative_homography(grid_views, grid_result):
    _, truth = grid_views
    r = grid_result
    assert r.placed == (0, 1, 2, 3) and r.dropped == () and r.projection == "planar"
    for i in range(4):
        for j in range(i + 1, 4):
            err = _corner_error(r.relative_homography(i, j), truth[j] @ np.linalg.inv(truth[i]))
            assert err.mean() < 1.0, (i, j, err)
            assert err.max() < 2.5, (i, j, err)


def test_refinement_lowers_the_transfer_error_below_a_pixel(grid_result):
    before, after = grid_result.refine_rms
    assert after <= before and after < 1.0


def test_canvas_homographies_agree_with_the_relative_ones(grid_result):
    r = grid_result
    H01 = np.linalg.inv(r.homographies[1]) @ r.homographies[0]
    assert _corner_error(H01 / H01[2, 2], r.relative_homography(0, 1)).max() < 1e-6
    # every image lands inside the canvas
    h, w = r.panorama.shape[:2]
    for v in r.placed:
        p = project(r.homographies[v], corners((VIEW, VIEW)))
        assert p.min() > -1.0 and p[:, 0].max() < w and p[:, 1].max() < h
    assert r.valid.mean() > 0.8


@pytest.mark.parametrize("projection", ["cylindrical", "spherical"])
def test_rotating_camera_focal_and_rotations(astronaut, projection):
    f = 400.0
    K_base = np.array([[f, 0, 255.5], [0, f, 255.5], [0, 0, 1]])
    K = np.array([[f, 0, 127.5], [0, f, 127.5], [0, 0, 1]])

    def rot(yaw, pitch):
        return (
            cv2.Rodrigues(np.array([0.0, np.radians(yaw), 0.0]))[0]
            @ cv2.Rodrigues(np.array([np.radians(pitch), 0, 0]))[0]
        )

    Rs = [rot(-16, 2), rot(0, 0), rot(16, -2)]
    views = [cv2.warpPerspective(astronaut, K @ R @ np.linalg.inv(K_base), (256, 256)) for R in Rs]
    r = stitch(views, max_keypoints=KP, projection=projection)
    assert r.projection == projection and r.placed == (0, 1, 2)
    assert abs(r.focal - f) / f < 0.02
    assert r.homographies == {} and set(r.rotations) == {0, 1, 2}
    for i, j in ((0, 1), (1, 2), (0, 2)):
        truth = K @ Rs[j] @ Rs[i].T @ np.linalg.inv(K)
        assert _corner_error(r.relative_homography(i, j), truth, (256, 256)).max() < 1.0


def test_focals_from_a_rotation_homography():
    f = 700.0
    K = np.diag([f, f, 1.0])
    R = cv2.Rodrigues(np.array([0.05, 0.3, 0.02]))[0]
    H = K @ R @ np.linalg.inv(K)
    fa, fb = camera.focals_from_homography(H)
    assert fa == pytest.approx(f, rel=1e-6) and fb == pytest.approx(f, rel=1e-6)
    assert camera.estimate_focal([H, H]) == pytest.approx(f, rel=1e-6)
    assert camera.estimate_focal([np.eye(3)]) is None  # a pure translation says nothing about f


def test_wave_correction_levels_a_tilted_pan():
    tilt = cv2.Rodrigues(np.array([0.2, 0.0, 0.1]))[0]  # the pan axis is not the world's y axis
    rots = {
        k: cv2.Rodrigues(np.array([0.0, yaw, 0.0]))[0] @ tilt for k, yaw in enumerate(np.radians([-60, -20, 20, 60]))
    }
    fixed = camera.wave_correct(rots, 1)
    ups = np.array([R[1] for R in fixed.values()])  # camera y axes in the corrected world
    assert np.allclose(ups, ups[0], atol=1e-6)  # all cameras share the vertical
    assert abs(fixed[1][2][0]) < 1e-9  # the reference looks at azimuth 0, the panorama's middle


# -- the graph ---------------------------------------------------------------------------------


def test_spanning_tree_and_reference_on_a_hand_built_graph():
    # a chain 0-1-2-3-4 with a weak shortcut 0-4: the tree drops the shortcut, the centre is 2
    w = {(0, 1): 100.0, (1, 2): 90.0, (2, 3): 80.0, (3, 4): 70.0, (0, 4): 10.0}
    tree = graph.maximum_spanning_tree([0, 1, 2, 3, 4], w)
    assert sorted(tree) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert graph.tree_centre([0, 1, 2, 3, 4], tree, w) == 2
    # an even chain has two centres: the one with more inliers wins
    w4 = {(0, 1): 50.0, (1, 2): 10.0, (2, 3): 200.0}
    tree4 = graph.maximum_spanning_tree([0, 1, 2, 3], w4)
    assert graph.tree_centre([0, 1, 2, 3], tree4, w4) == 2
    # a star: the hub
    star = {(0, 3): 5.0, (1, 3): 5.0, (2, 3): 5.0, (3, 4): 5.0}
    assert graph.tree_centre([0, 1, 2, 3, 4], graph.maximum_spanning_tree([0, 1, 2, 3, 4], star), star) == 3


def test_components_and_chaining():
    assert graph.components([0, 1, 2, 3, 4], [(0, 1), (3, 4)]) == [[0, 1], [3, 4], [2]]
    T = lambda dx, dy: np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1.0]])  # noqa: E731
    # H maps image i to image j for the stored key (i, j)
    pair_H = {(0, 1): T(-10, 0), (1, 2): T(-10, -5)}
    H = graph.chain_to_reference(1, [(0, 1), (1, 2)], pair_H)
    assert (
        np.allclose(H[0], T(-10, 0)) and np.allclose(H[2], np.linalg.inv(T(-10, -5))) and np.allclose(H[1], np.eye(3))
    )


@pytest.mark.parametrize("per_part", [150, 600])  # 600: 21600 descriptors take the HNSW index
def test_faiss_vote_shortlists_the_overlapping_neighbours(per_part):
    rng = np.random.default_rng(1)
    n = 12
    shared = [rng.normal(size=(per_part, 128)).astype(np.float32) for _ in range(n)]  # ring overlap i <-> i+1
    descs = []
    for i in range(n):
        own = rng.normal(size=(per_part, 128)).astype(np.float32)
        left = shared[(i - 1) % n] + 0.01 * rng.normal(size=(per_part, 128)).astype(np.float32)
        descs.append(np.concatenate([shared[i], left, own]))
    pairs = graph.vote_pairs(descs, per_image=2, sample=3 * per_part)
    ring = {(min(i, (i + 1) % n), max(i, (i + 1) % n)) for i in range(n)}
    assert ring <= set(pairs)
    assert len(pairs) <= n * 2


def test_brown_lowe_rejects_weak_pairs():
    assert graph.brown_lowe_ok(100, 200, 8.0, 0.3, 20)
    assert not graph.brown_lowe_ok(30, 200, 8.0, 0.3, 20)
    assert not graph.brown_lowe_ok(15, 10, 8.0, 0.3, 20)


# -- dropped images and bad inputs -------------------------------------------------------------


def test_an_unconnected_image_is_dropped_and_reported(grid_views, unrelated):
    views = [grid_views[0][0], unrelated, grid_views[0][1]]
    with pytest.warns(StitchWarning, match="left out"):
        r = stitch(views, max_keypoints=KP)
    assert r.placed == (0, 2) and r.dropped == (1,)
    js = r.to_json()
    assert js["dropped"] == [1] and js["images"][1]["placed"] is False and js["images"][1]["homography"] is None
    assert any(e["i"] == 0 and e["j"] == 2 and e["verified"] for e in js["edges"])
    assert not any(e["verified"] for e in js["edges"] if 1 in (e["i"], e["j"]))


def test_nothing_connects_raises_exit_code_3(grid_views, unrelated):
    with pytest.raises(StitchError, match="no pair of the 2 images overlaps") as exc:
        stitch([grid_views[0][0], unrelated], max_keypoints=KP)
    assert exc.value.exit_code == 3


def test_fewer_than_two_images_and_missing_files(grid_views, tmp_path):
    with pytest.raises(StitchInputError, match="at least 2 images") as exc:
        stitch([grid_views[0][0]])
    assert exc.value.exit_code == 2
    with pytest.raises(ImageReadError, match="no such file"):
        stitch([grid_views[0][0], str(tmp_path / "nope.jpg")])


def test_canvas_cap_is_a_clear_error(grid_views):
    with pytest.raises(StitchError, match="beyond --max-megapixels 0.05"):
        stitch(grid_views[0][:2], max_keypoints=KP, max_megapixels=0.05)
    with pytest.raises(StitchError, match="MP"):
        check_canvas(100000, 100000, 50.0)
    check_canvas(5000, 4000, None, 4.0)  # no cap by default: 20 MP from 4 MP of images is fine
    with pytest.raises(StitchError, match="the model is wrong"):
        check_canvas(10000, 4000, None, 4.0)  # ten times the images' area: only a wrong model does that
    with pytest.raises(StitchError, match="32000 px a side"):
        check_canvas(40000, 100, None, 4.0)


def test_bad_options_are_config_errors():
    with pytest.raises(featmatch.ConfigError, match="projection"):
        StitchConfig(projection="fisheye")
    with pytest.raises(featmatch.ConfigError, match="blend"):
        StitchConfig(blend="average")
    with pytest.raises(featmatch.ConfigError, match="unknown option"):
        stitch([np.zeros((64, 64), np.uint8)] * 2, frobnicate=1)


# -- compositing -------------------------------------------------------------------------------


def test_largest_rectangle_of_a_hand_made_mask():
    valid = np.zeros((300, 400), bool)
    valid[50:250, 20:380] = True
    valid[0:300, 150:200] = True  # a tall thin band does not win
    x, y, w, h = crop.largest_rectangle(valid)
    assert valid[y : y + h, x : x + w].all()
    assert w * h >= 0.97 * 200 * 360


@pytest.mark.parametrize("kind", ["feather", "none"])
def test_other_blends_and_crop(grid_views, kind):
    r = stitch(grid_views[0][:2], max_keypoints=KP, blend=kind, crop=True)
    assert r.valid.all() and r.panorama.shape[:2] == r.valid.shape
    assert r.panorama[r.valid].mean() > 20


# -- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def view_files(grid_views, unrelated, tmp_path_factory):
    d = tmp_path_factory.mktemp("views")
    paths = []
    for k, v in enumerate(grid_views[0]):
        paths.append(str(d / f"view{k}.png"))
        cv2.imwrite(paths[-1], v)
    other = str(d / "unrelated.png")
    cv2.imwrite(other, unrelated)
    return paths, other


def test_cli_json_plot_and_dropped_image(view_files, tmp_path):
    paths, other = view_files
    out, plot = tmp_path / "pano.jpg", tmp_path / "layout.png"
    r = CliRunner().invoke(
        cli, ["stitch", paths[0], other, paths[1], "-o", str(out), "-n", str(KP), "--json", "--plot", str(plot)]
    )
    assert r.exit_code == 0, r.output
    js = json.loads(r.stdout)
    assert js["placed"] == [0, 2] and js["dropped"] == [1] and js["descriptor"] == "hardnet"  # the default
    assert set(js) >= {"panorama_size", "projection", "reference", "images", "edges", "timings_ms"}
    H = np.array(js["images"][0]["homography"])
    assert H.shape == (3, 3)
    assert "warning" in r.stderr and "unrelated.png" in r.stderr
    pano = cv2.imread(str(out))
    assert pano is not None and list(pano.shape[1::-1]) == js["panorama_size"]
    assert cv2.imread(str(plot)) is not None


def test_cli_exit_codes(view_files, tmp_path):
    paths, other = view_files
    out = str(tmp_path / "p.jpg")
    r = CliRunner().invoke(cli, ["stitch", paths[0], other, "-o", out, "-n", str(KP)])
    assert r.exit_code == 3 and "no pair" in r.stderr and r.stderr.strip().count("\n") == 0
    r = CliRunner().invoke(cli, ["stitch", paths[0], "-o", out])
    assert r.exit_code == 2 and "at least 2 images" in r.stderr
    r = CliRunner().invoke(cli, ["stitch", paths[0], str(tmp_path / "missing.jpg"), "-o", out])
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = CliRunner().invoke(cli, ["stitch", paths[0], paths[1], "-o", out, "--projection", "fisheye"])
    assert r.exit_code == 2


def test_missing_model_is_exit_2(view_files, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    paths, _ = view_files
    r = CliRunner().invoke(cli, ["stitch", *paths[:2], "-o", str(tmp_path / "p.jpg"), "-d", "hardnet"])
    assert r.exit_code == 2 and "hardnet" in r.stderr.lower()


def test_lazy_export():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert featmatch.stitch is stitch


@pytest.mark.parametrize("kind", ["cylindrical", "spherical"])
def test_interpolated_warp_tables_match_the_exact_ones(kind):
    # The remap tables are computed every MAP_STEP pixels and interpolated: they must stay
    # within 0.05 px of the exact ones (cv2.remap itself resolves 1/32 px) for a short focal
    # (a 67 degree view), a rotated camera and strong lens distortion.
    import cv2 as _cv2

    from featmatch.stitching.camera import Camera
    from featmatch.stitching.warp import MAP_STEP, region_maps, surface_footprint, surface_layout

    R = _cv2.Rodrigues(np.array([0.15, 0.6, -0.05]))[0]
    cam = Camera(R, 300.0, 201.0, 148.0, k1=-0.12, k2=0.02)
    shape = (300, 400)
    surface = surface_layout(kind, {0: cam}, {0: shape}, 300.0, None)
    fp = surface_footprint(cam, shape, surface)
    x0, y0 = np.floor(fp.min(axis=0)).astype(int)
    x1, y1 = np.ceil(fp.max(axis=0)).astype(int)
    roi = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    fast = region_maps(cam, surface, roi)
    exact = region_maps(cam, surface, roi, step=1)
    assert MAP_STEP > 1
    inside = exact[2] & (exact[0] >= 0) & (exact[0] < shape[1]) & (exact[1] >= 0) & (exact[1] < shape[0])
    assert inside.mean() > 0.5
    for a, b in zip(fast[:2], exact[:2], strict=True):
        assert np.abs(a - b)[inside].max() < 0.05


def test_registration_runs_at_the_register_resolution(grid_views, monkeypatch):
    # Views of 0.75 MP are detected at <= 0.1 MP when asked, and the homographies still come
    # out in full-resolution pixels (within 2 px at the corners, the truth scaled up).
    import featmatch.detect as detect_module

    big = [cv2.resize(v, (3 * VIEW, 3 * VIEW), interpolation=cv2.INTER_CUBIC) for v in grid_views[0][:2]]
    seen = []
    real = detect_module.detection_image

    def spy(gray, max_side):
        img, scale = real(gray, max_side)
        seen.append(img.shape)
        return img, scale

    monkeypatch.setattr(detect_module, "detection_image", spy)
    r = stitch(big, descriptor="sift", register_megapixels=0.1, projection="planar", crop=False)
    assert len(seen) == 2 and all(h * w <= 0.1e6 for h, w in seen)
    S = np.diag([3.0, 3.0, 1.0])
    t0, t1 = grid_views[1][0], grid_views[1][1]
    truth = S @ t1 @ np.linalg.inv(t0) @ np.linalg.inv(S)
    err = _corner_error(r.relative_homography(0, 1), truth, shape=(3 * VIEW, 3 * VIEW))
    assert err.mean() < 2.0, err

    seen.clear()
    stitch(big, descriptor="sift", register_megapixels=None, projection="planar", crop=False)
    assert [s for s in seen] == [(3 * VIEW, 3 * VIEW)] * 2


def test_warped_pixels_outside_the_image_continue_its_border():
    # The multi-band blender's pyramids reach past each mask: outside its image a warped piece
    # must continue the image's nearest border pixels, not one fill colour (that showed as a
    # dark halo wherever a seam ran along an image's border: parrington, xue).
    import cv2 as _cv2

    from featmatch.stitching.camera import Camera
    from featmatch.stitching.warp import surface_layout, warp_surface

    h, w = 200, 300
    ramp = np.tile(np.linspace(20, 230, w, dtype=np.float32), (h, 1))
    color = _cv2.merge([ramp, ramp, ramp]).astype(np.uint8)
    cam = Camera(_cv2.Rodrigues(np.array([0.1, 0.2, 0.0]))[0], 250.0, (w - 1) / 2, (h - 1) / 2)
    surface = surface_layout("cylindrical", {0: cam}, {0: (h, w)}, 250.0, None)
    (piece,) = warp_surface(0, color, cam, surface)
    inside = piece.mask > 0
    outside = ~inside & (_cv2.dilate(inside.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0)
    assert outside.sum() > 100
    # every pixel just outside the image is within a few levels of the nearest pixel inside it
    _, labels = _cv2.distanceTransformWithLabels(
        (~inside).astype(np.uint8), _cv2.DIST_L2, 5, labelType=_cv2.DIST_LABEL_PIXEL
    )
    ys, xs = np.nonzero(inside)
    nearest = np.zeros(labels.max() + 1, np.float32)
    nearest[labels[ys, xs]] = piece.image[ys, xs, 0]
    diff = np.abs(piece.image[..., 0].astype(np.float32) - nearest[labels])[outside]
    assert np.percentile(diff, 95) < 12, np.percentile(diff, 95)

import cv2
import numpy as np
import pytest
import torch

from featmatch.detect import DetectConfig, detect
from featmatch.patches import PATCH_SIZE, extract_patches, patches_for

from .conftest import EXAMPLES


def _zncc(a, b):
    a = a.flatten(1)
    b = b.flatten(1)
    a = (a - a.mean(1, keepdim=True)) / (a.std(1, keepdim=True) + 1e-6)
    b = (b - b.mean(1, keepdim=True)) / (b.std(1, keepdim=True) + 1e-6)
    return (a * b).mean(1)


@pytest.mark.parametrize("angle, scale", [(60.0, 1.0), (-30.0, 1.0), (0.0, 0.5), (45.0, 1.7), (150.0, 0.8)])
def test_same_point_gives_same_patch_on_rotated_and_scaled_copy(gray_photo, angle, scale):
    kps = detect(gray_photo, DetectConfig(max_keypoints=800))
    h, w = gray_photo.shape
    M = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, scale)
    warped = cv2.warpAffine(gray_photo, M, (w, h), flags=cv2.INTER_LINEAR)
    kps2 = detect(warped, DetectConfig(max_keypoints=3000))
    # pair each keypoint with the detection in the copy at its projection and a similar size
    proj = np.c_[kps.xy, np.ones(len(kps))] @ M.T
    d = np.linalg.norm(proj[:, None] - kps2.xy[None], axis=2)
    j = d.argmin(axis=1)
    ok = (d[np.arange(len(kps)), j] < 1.0) & (np.abs(np.log(kps2.size[j] / (kps.size * scale))) < 0.2)
    assert ok.sum() > 50
    c = _zncc(patches_for(kps)[ok], patches_for(kps2)[j[ok]])
    assert float(c.median()) > 0.8
    # and with the orientation the wrong way round the patches disagree (the test can fail)
    if angle % 180 != 0:
        wrong = extract_patches(kps2.det_image, kps2.det_xy[j[ok]], kps2.det_size[j[ok]], -kps2.angle[j[ok]])
        assert float(_zncc(patches_for(kps)[ok], wrong).median()) < 0.6


def test_patch_covers_magnification_times_size():
    # a bright disc of diameter 20 px, keypoint size 20/6 -> the disc fills the central 1/6... check
    # the other way: size 20, magnification 1 -> the patch is the disc's bounding square.
    img = np.zeros((200, 200), np.uint8)
    cv2.circle(img, (100, 100), 40, 255, -1)
    p = extract_patches(img, np.array([[100.0, 100.0]]), np.array([80.0]), np.array([0.0]), magnification=1.0)
    assert p.shape == (1, 1, PATCH_SIZE, PATCH_SIZE)
    assert float(p[0, 0, 16, 16]) == pytest.approx(1.0, abs=0.02)
    assert float(p[0, 0, 0, 0]) < 0.2  # the corner of the bounding square is outside the disc
    wide = extract_patches(img, np.array([[100.0, 100.0]]), np.array([80.0]), np.array([0.0]), magnification=2.0)
    assert float(wide[0, 0, 16, 4]) < 0.2 and float(wide[0, 0, 16, 12]) > 0.8


def test_no_keypoints_gives_empty_patches():
    p = extract_patches(np.zeros((64, 64), np.uint8), np.zeros((0, 2)), np.zeros(0), np.zeros(0))
    assert p.shape == (0, 1, PATCH_SIZE, PATCH_SIZE)


def test_our_pyramid_sampler_equals_kornias():
    """sample_from_pyramid is kornia's extract_patches_from_pyramid rule in fewer passes."""
    from kornia.feature import extract_patches_from_pyramid

    from featmatch.detect import DetectConfig, detect
    from featmatch.imageio import load_image
    from featmatch.patches import image_tensor, keypoints_to_laf, pyramid_levels, sample_from_pyramid

    kp = detect(load_image(EXAMPLES / "roofs1.jpg").gray, DetectConfig(max_keypoints=3000))
    img = image_tensor(kp.det_image)
    laf = keypoints_to_laf(kp.det_xy, kp.det_size, kp.angle)
    # include giant and tiny regions and ones hanging over the border (levels clamp, borders repeat)
    extra = keypoints_to_laf(np.array([[5.0, 5.0], [300.0, 200.0], [0.0, 300.0]]), np.array([400.0, 0.5, 40.0]),
                             np.array([30.0, 0.0, 200.0]))
    laf = torch.cat([laf, extra], 1)
    want = extract_patches_from_pyramid(img, laf, PS=32)[0]
    got = sample_from_pyramid(img, laf[0], 32)
    assert got.shape == want.shape == (len(kp) + 3, 1, 32, 32)
    assert (got - want).abs().max() < 1e-3
    assert len(pyramid_levels(*img.shape[-2:])) > 3  # the test crosses several levels
    # an image smaller than a patch has one level
    assert pyramid_levels(20, 100) == [(20, 100)]
    tiny = torch.rand(1, 1, 20, 100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample_from_pyramid(tiny, laf[0, :50], 32),
                               extract_patches_from_pyramid(tiny, laf[:, :50], PS=32)[0], atol=1e-3, rtol=0)

import cv2
import numpy as np
import pytest

from featmatch.detect import DetectConfig, detect
from featmatch.patches import PATCH_SIZE, extract_patches, patches_for

from .conftest import EXAMPLES


def _zncc(a, b):
    """Zero-mean normalized cross-correlation of each pair of patches, ``(N,)``."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-6)
    b = (b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-6)
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
    assert float(np.median(c)) > 0.8
    # and with the orientation the wrong way round the patches disagree (the test can fail)
    if angle % 180 != 0:
        wrong = extract_patches(kps2.det_image, kps2.det_xy[j[ok]], kps2.det_size[j[ok]], -kps2.angle[j[ok]])
        assert float(np.median(_zncc(patches_for(kps)[ok], wrong))) < 0.6


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
    assert p.shape == (0, 1, PATCH_SIZE, PATCH_SIZE) and p.dtype == np.float32


def _kornia_reference(gray_u8: np.ndarray, laf_np: np.ndarray) -> np.ndarray:
    """kornia's extract_patches_from_pyramid on the same image and frames (the reference)."""
    import torch
    from kornia.feature import extract_patches_from_pyramid

    img = torch.from_numpy(gray_u8).float().div(255.0)[None, None]
    with torch.no_grad():
        return extract_patches_from_pyramid(img, torch.from_numpy(laf_np)[None], PS=32)[0].numpy()


def test_our_pyramid_sampler_equals_kornias():
    """sample_from_pyramid (OpenCV + numpy) is kornia's extract_patches_from_pyramid rule."""
    from featmatch.imageio import load_image
    from featmatch.patches import keypoint_frames, keypoints_to_laf, pyramid_levels, sample_from_pyramid

    kp = detect(load_image(EXAMPLES / "roofs1.jpg").gray, DetectConfig(max_keypoints=3000))
    laf = keypoint_frames(kp.det_xy, kp.det_size, kp.angle)
    # include giant and tiny regions and ones hanging over the border (levels clamp, borders repeat)
    extra = keypoint_frames(np.array([[5.0, 5.0], [300.0, 200.0], [0.0, 300.0]]), np.array([400.0, 0.5, 40.0]),
                            np.array([30.0, 0.0, 200.0]))  # fmt: skip
    laf = np.concatenate([laf, extra])
    want = _kornia_reference(kp.det_image, laf)
    got = sample_from_pyramid(kp.det_image.astype(np.float32) / 255.0, laf, 32)
    assert got.shape == want.shape == (len(kp) + 3, 1, 32, 32)
    diff = np.abs(got - want)
    # measured: max 6.6e-5, mean 2.0e-6 (float rounding of the interpolation weights)
    assert diff.max() < 1e-3 and diff.mean() < 1e-5, (diff.max(), diff.mean())
    np.testing.assert_allclose(
        extract_patches(kp.det_image, kp.det_xy, kp.det_size, kp.angle), got[: len(kp)], atol=1e-6
    )
    assert len(pyramid_levels(*kp.det_image.shape)) > 3  # the test crosses several levels
    # our frames are kornia's LAFs (keypoints_to_laf is the torch interop)
    import torch
    from kornia.feature import laf_from_center_scale_ori

    ref = laf_from_center_scale_ori(torch.from_numpy(kp.det_xy[None].astype(np.float32)),
                                    torch.from_numpy(kp.det_size.astype(np.float32)).view(1, -1, 1, 1) * 3.0,
                                    -torch.from_numpy(kp.angle.astype(np.float32)).view(1, -1, 1))  # fmt: skip
    np.testing.assert_allclose(keypoints_to_laf(kp.det_xy, kp.det_size, kp.angle).numpy(), ref.numpy(), atol=1e-4)
    # an image smaller than a patch has one level
    assert pyramid_levels(20, 100) == [(20, 100)]
    tiny = (np.random.default_rng(0).random((20, 100)) * 255).astype(np.uint8)
    np.testing.assert_allclose(sample_from_pyramid(tiny.astype(np.float32) / 255.0, laf[:50], 32),
                               _kornia_reference(tiny, laf[:50]), atol=1e-3, rtol=0)  # fmt: skip


def test_pyrdown_is_kornias():
    import torch
    from kornia.geometry.transform import pyrdown as kornia_pyrdown

    from featmatch.patches import pyrdown

    rng = np.random.default_rng(0)
    for shape in ((101, 77), (100, 78), (33, 32)):
        a = rng.random(shape).astype(np.float32)
        want = kornia_pyrdown(torch.from_numpy(a)[None, None])[0, 0].numpy()
        assert pyrdown(a).shape == want.shape == (shape[0] // 2, shape[1] // 2)
        np.testing.assert_allclose(pyrdown(a), want, atol=1e-5)


def test_descriptors_of_our_patches_equal_those_of_kornias():
    """The sampler's differences do not reach the descriptors: hardnet fp32 on both."""
    from featmatch.descriptors import CNNDescriptor
    from featmatch.imageio import load_image
    from featmatch.patches import keypoint_frames

    kp = detect(load_image(EXAMPLES / "roofs2.jpg").gray, DetectConfig(max_keypoints=2000))
    ours = patches_for(kp)
    want = _kornia_reference(kp.det_image, keypoint_frames(kp.det_xy, kp.det_size, kp.angle))
    d = CNNDescriptor("hardnet", device="cpu", precision="fp32")
    cos = (d.describe_patches(ours) * d.describe_patches(want)).sum(1)
    # measured: min cosine 0.99999, mean 1.00000
    assert cos.min() > 0.9999, cos.min()

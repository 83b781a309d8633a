import cv2
import numpy as np

from featmatch.detect import DetectConfig, detect


def test_max_keypoints_keeps_the_strongest(gray_photo):
    many = detect(gray_photo, DetectConfig(max_keypoints=2000))
    few = detect(gray_photo, DetectConfig(max_keypoints=100))
    assert len(few) == 100 and len(many) == 2000
    assert few.response.min() >= np.sort(many.response)[-100] - 1e-6


def test_downscaled_detection_maps_back_to_full_resolution(gray_photo):
    # An image 3x larger than max_side: detection runs on a copy of the original size,
    # so the keypoints found there must land on the original's keypoints x3.
    big = cv2.resize(gray_photo, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    small = detect(gray_photo, DetectConfig(max_keypoints=300, max_side=max(gray_photo.shape)))
    scaled = detect(big, DetectConfig(max_keypoints=300, max_side=max(gray_photo.shape)))
    assert scaled.scale == np.float32(3.0) or abs(scaled.scale - 3.0) < 0.01
    expected = (small.xy + 0.5) * 3 - 0.5
    d = np.linalg.norm(scaled.xy[:, None] - expected[None], axis=2).min(axis=1)
    assert np.median(d) < 1.5
    assert np.median(scaled.size) / np.median(small.size) == pytest_approx(3.0, 0.15)


def pytest_approx(value, rel):
    import pytest

    return pytest.approx(value, rel=rel)


def test_textureless_image_has_no_keypoints():
    kps = detect(np.full((200, 300), 0.5, np.float32))
    assert len(kps) == 0 and kps.xy.shape == (0, 2)

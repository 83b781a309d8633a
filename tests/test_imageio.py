import cv2
import numpy as np
import pytest

from featmatch.errors import ImageReadError
from featmatch.imageio import MIN_SIDE, load_image

from .conftest import EXAMPLES


def test_reads_color_jpeg_as_unit_gray():
    img = load_image(EXAMPLES / "roofs1.jpg")
    assert img.gray.dtype == np.float32 and img.gray.ndim == 2
    assert img.color.shape == img.gray.shape + (3,)
    assert 0.0 <= img.gray.min() and img.gray.max() <= 1.0 and img.gray.std() > 0.05


def test_16bit_tiff_is_stretched_not_black(data_dir):
    img = load_image(data_dir / "bad-inputs" / "chessboard_GRAY_U16.tif")
    assert img.gray.max() == pytest.approx(1.0) and img.gray.min() == pytest.approx(0.0)


def test_palette_png_is_expanded(data_dir):
    img = load_image(data_dir / "bad-inputs" / "green_palette.png")
    assert img.shape == (240, 320)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p / "missing.png", "no such file"),
        (lambda p: p, "is a directory"),
        (lambda p: _write(p / "empty.png", b""), "file is empty"),
        (lambda p: _write(p / "text.jpg", b"hello, not an image"), "not a readable image"),
    ],
)
def test_bad_paths_raise_named_error(tmp_path, make, expected):
    with pytest.raises(ImageReadError, match=expected):
        load_image(make(tmp_path))


def test_truncated_jpeg_is_refused(data_dir):
    with pytest.raises(ImageReadError, match="truncated"):
        load_image(data_dir / "bad-inputs" / "truncated.jpg")


def test_tiny_image_is_refused(tmp_path):
    path = tmp_path / "tiny.png"
    cv2.imwrite(str(path), np.zeros((MIN_SIDE - 1, 40), np.uint8))
    with pytest.raises(ImageReadError, match="at least"):
        load_image(path)


def test_arrays_bgra_and_float_are_accepted():
    rng = np.random.default_rng(0)
    bgra = rng.integers(0, 255, (40, 50, 4), dtype=np.uint8)
    img = load_image(bgra)
    expected = cv2.cvtColor(bgra[:, :, :3], cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
    np.testing.assert_allclose(img.gray, expected, atol=1 / 255)
    f = load_image(rng.normal(size=(30, 30)).astype(np.float32) * 1000)
    assert f.gray.min() == 0.0 and f.gray.max() == 1.0


def test_bad_array_shape_is_refused():
    with pytest.raises(ImageReadError, match="unsupported array shape"):
        load_image(np.zeros((20, 20, 2), np.uint8))

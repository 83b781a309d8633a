import numpy as np
import pytest
import torch

from featmatch.descriptors import DESCRIPTORS, CNNDescriptor, SiftDescriptor, build_descriptor
from featmatch.detect import DetectConfig, detect
from featmatch.errors import ConfigError, ModelNotFoundError
from featmatch.inference import fold_for_inference
from featmatch.network import HardNet, load_weights, save_weights

from .conftest import EXAMPLES


def _random_net(seed=0):
    torch.manual_seed(seed)
    net = HardNet()
    # give BatchNorm non-trivial running statistics so that folding is really tested
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(64, 1, 32, 32))
    return net.eval()


def test_registry_names():
    assert sorted(DESCRIPTORS) == ["exptloss", "hardnet", "rootsift", "sift"]
    with pytest.raises(ConfigError, match="choose one of exptloss, hardnet, rootsift, sift"):
        build_descriptor("surf")


def test_folded_network_equals_original():
    net = _random_net()
    x = torch.rand(50, 1, 32, 32)
    with torch.no_grad():
        want = net(x)
        got = fold_for_inference(net, "cpu")(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert torch.allclose(want.norm(dim=1), torch.ones(50), atol=1e-5)


def test_bf16_descriptors_close_to_fp32_or_refused_where_emulated(gray_photo):
    from featmatch.engines import probe_cpu

    kps = detect(gray_photo, DetectConfig(max_keypoints=300))
    net = _random_net()
    fp32 = CNNDescriptor("t", device="cpu", precision="fp32", model=net)(kps)
    assert fp32.shape == (300, 128)
    if not probe_cpu().bf16:  # bf16 is never emulated: asking for it is an error there
        with pytest.raises(ConfigError, match="emulated"):
            CNNDescriptor("t", device="cpu", precision="bf16", model=net)
        return
    bf16 = CNNDescriptor("t", device="cpu", precision="bf16", model=net, batch_size=64)(kps)
    cos = (fp32 * bf16).sum(1)
    assert cos.min() > 0.99


def test_describe_patches_accepts_numpy_torch_uint8_float_and_empty(gray_photo):
    import featmatch
    from featmatch.descriptors import describe_patches
    from featmatch.patches import patches_for

    assert featmatch.describe_patches is describe_patches  # the public API (issue 13)

    kps = detect(gray_photo, DetectConfig(max_keypoints=200))
    as_u8 = (patches_for(kps) * 255.0 + 0.5).astype(np.uint8)  # (N, 1, 32, 32) uint8 numpy
    as_float = torch.from_numpy(as_u8.astype(np.float32) / 255.0)  # the same values as a float tensor
    d = CNNDescriptor("hardnet", device="cpu", precision="fp32")  # int8 would move by a quantization step
    want = d.describe_patches(as_float)
    assert want.shape == (200, 128) and want.dtype == np.float32
    np.testing.assert_allclose(d.describe_patches(as_u8), want, atol=1e-6)
    np.testing.assert_allclose(d.describe_patches(as_u8[:, 0]), want, atol=1e-6)  # (N, 32, 32)
    np.testing.assert_allclose(describe_patches(torch.from_numpy(as_u8), precision="fp32"), want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(want, axis=1), 1.0, atol=1e-5)
    for empty in (np.zeros((0, 1, 32, 32), np.uint8), np.zeros((0, 32, 32), np.float32), torch.zeros(0, 1, 32, 32)):
        assert describe_patches(empty).shape == (0, 128)
    with pytest.raises(ConfigError, match="32, 32"):
        d.describe_patches(np.zeros((4, 1, 16, 16), np.float32))
    with pytest.raises(ConfigError, match="learned descriptor"):
        describe_patches(as_u8, descriptor="sift")


def test_weights_round_trip_and_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    net = _random_net(1)
    save_weights(net, tmp_path / "hardnet.pt")
    loaded = load_weights("hardnet")
    x = torch.rand(20, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-3, rtol=0)
    # a corrupted file is caught by its recorded sha256
    data = bytearray((tmp_path / "hardnet.pt").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "hardnet.pt").write_bytes(bytes(data))
    with pytest.raises(ModelNotFoundError, match="sha256"):
        load_weights("hardnet")


def test_missing_weights_say_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="featmatch train"):
        build_descriptor("exptloss", device="cpu")


def test_rootsift_is_hellinger_normalized(gray_photo):
    kps = detect(gray_photo, DetectConfig(max_keypoints=100))
    s = SiftDescriptor()(kps)
    r = SiftDescriptor(root=True)(kps)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(r**2, s / s.sum(1, keepdims=True), atol=1e-6)


def test_sift_from_detector_pass_equals_separate_compute(gray_photo):
    kps = detect(gray_photo, DetectConfig(max_keypoints=500))
    both = detect(gray_photo, DetectConfig(max_keypoints=500, with_sift=True))
    np.testing.assert_array_equal(kps.xy, both.xy)
    assert kps.sift is None and both.sift.shape == (500, 128)
    np.testing.assert_allclose(SiftDescriptor()(both), SiftDescriptor()(kps), atol=1e-4)


def test_background_build_gives_the_same_answer_and_reports_when_it_waited():
    from featmatch.pipeline import Matcher

    pair = (EXAMPLES / "roofs1.jpg", EXAMPLES / "roofs2.jpg")
    opts = dict(detect=DetectConfig(max_keypoints=500), device="cpu", precision="fp32")
    eager = Matcher("hardnet", **opts).match(*pair)
    lazy_matcher = Matcher("hardnet", background=True, **opts)
    lazy = lazy_matcher.match(*pair)
    np.testing.assert_array_equal(lazy.matches, eager.matches)
    np.testing.assert_allclose(lazy.homography, eager.homography)
    assert "model" in lazy.timings_ms and "model" not in eager.timings_ms
    assert lazy_matcher.device == "cpu"
    again = lazy_matcher.match(*pair)  # built once, reused
    assert "model" not in again.timings_ms


def test_background_build_errors_surface_at_first_use(tmp_path, monkeypatch):
    import featmatch
    from featmatch.pipeline import Matcher

    with pytest.raises(ConfigError, match="unknown descriptor"):  # checked at once, not in the thread
        Matcher("surf", background=True)
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="featmatch train"):
        featmatch.estimate_homography(EXAMPLES / "roofs1.jpg", EXAMPLES / "roofs2.jpg")

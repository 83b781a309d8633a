"""Known-output tests for every shipped weight file: fixed patches -> stored descriptors.

If a weight file changes on purpose, regenerate the stored outputs with
``python tests/test_models.py --regenerate`` and say why in the commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SHIPPED = ("hardnet", "exptloss")
GOLDEN = Path(__file__).resolve().parent / "data"


def fixed_patches() -> torch.Tensor:
    """Eight deterministic 32x32 patches: smooth blobs, edges and noise (no files needed)."""
    g = torch.Generator().manual_seed(1234)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    out = []
    for k in range(8):
        angle = k * np.pi / 8
        edge = torch.sigmoid(8 * (xx * np.cos(angle) + yy * np.sin(angle)))
        blob = torch.exp(-((xx - 0.3 * np.cos(3 * angle)) ** 2 + (yy - 0.2) ** 2) * (3 + k))
        out.append(0.5 * edge + 0.4 * blob + 0.1 * torch.rand(32, 32, generator=g))
    return torch.stack(out)[:, None]


def describe_fp32(name: str) -> np.ndarray:
    from featmatch.network import load_weights

    with torch.no_grad():
        return load_weights(name)(fixed_patches()).numpy()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_give_the_stored_descriptors(name):
    want = np.load(GOLDEN / f"{name}_golden.npy")
    got = describe_fp32(name)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("name", SHIPPED)
def test_fast_inference_path_agrees_with_reference(name):
    from featmatch.descriptors import CNNDescriptor
    from featmatch.engines import probe_cpu

    want = describe_fp32(name)
    for precision in ("fp32", "bf16") if probe_cpu().bf16 else ("fp32",):  # bf16 is refused where emulated
        got = CNNDescriptor(name, device="cpu", precision=precision).describe_patches(fixed_patches())
        assert (got * want).sum(1).min() > (0.9999 if precision == "fp32" else 0.99), precision


def test_shipped_models_differ_from_each_other_and_from_random():
    a, b = describe_fp32("hardnet"), describe_fp32("exptloss")
    assert np.abs(a - b).max() > 0.05
    from featmatch.network import HardNet

    torch.manual_seed(0)
    with torch.no_grad():
        r = HardNet().eval()(fixed_patches()).numpy()
    assert np.abs(a - r).max() > 0.05


# ---------------------------------------------------------------------------------------------
# the shipped ONNX exports (featmatch export)


@pytest.fixture(scope="module")
def river_patches():
    from featmatch.detect import DetectConfig, detect
    from featmatch.imageio import load_image
    from featmatch.patches import patches_for

    from .conftest import EXAMPLES

    # the bundled 640x480 copy of river1 (a test-split photo), so that a clone without ../shared runs it
    kp = detect(load_image(EXAMPLES / "river" / "river1.jpg").gray, DetectConfig(max_keypoints=1000))
    return patches_for(kp)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_exports_belong_to_the_shipped_weights_and_agree_with_torch(name, river_patches):
    import json

    from featmatch.engines.onnx_engine import OnnxEngine
    from featmatch.network import load_weights
    from featmatch.weights import models_dir, onnx_path, sha256_of, weight_path

    manifest = json.loads((models_dir() / f"{name}.onnx.json").read_text())
    assert manifest["weights_sha256"] == sha256_of(weight_path(name))
    assert manifest["calibration_sha256"] == sha256_of(models_dir() / f"{name}.int8.json")
    engines = {}
    for variant in ("fp32", "int8", "int8-w7"):
        path = onnx_path(name, variant)
        assert manifest["files"][variant]["sha256"] == sha256_of(path), variant
        engines[variant] = OnnxEngine(path, variant, cached=False)
        meta = engines[variant]._sess.get_modelmeta().custom_metadata_map
        assert meta["featmatch.weights_sha256"] == manifest["weights_sha256"]
        assert meta["featmatch.variant"] == variant
    with torch.inference_mode():
        want = load_weights(name)(torch.from_numpy(river_patches)).numpy()
    fp32 = engines["fp32"](river_patches)
    assert np.abs(fp32 - want).max() < 1e-3  # measured: 4e-7
    for variant in ("int8", "int8-w7"):
        cos = (engines[variant](river_patches) * fp32).sum(1)
        # measured (1000 river1 patches): hardnet int8 mean 0.99986 / min 0.9972, int8-w7 0.99981 / 0.9969;
        # exptloss int8 0.99982 / 0.9965, int8-w7 0.99971 / 0.9966
        assert cos.mean() >= 0.99 and cos.min() > 0.98, (variant, cos.mean(), cos.min())
        assert np.abs(engines[variant](river_patches) - fp32).max() > 1e-4  # really integer arithmetic


def test_export_is_deterministic_and_reproduces_the_shipped_files(tmp_path, monkeypatch):
    """`featmatch export` from the shipped .pt and calibration writes the shipped bytes again."""
    import shutil

    from click.testing import CliRunner

    from featmatch.cli import cli
    from featmatch.weights import ONNX_VARIANTS

    from .conftest import REPO

    for f in ("hardnet.pt", "hardnet.pt.sha256", "hardnet.int8.json"):
        shutil.copy(REPO / "models" / f, tmp_path / f)
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    res = CliRunner().invoke(cli, ["export", "hardnet"])
    assert res.exit_code == 0, res.output
    assert "hardnet.int8-w7.onnx" in res.output
    for variant in ONNX_VARIANTS:
        name = f"hardnet.{variant}.onnx"
        assert (tmp_path / name).read_bytes() == (REPO / "models" / name).read_bytes(), name
    assert (tmp_path / "hardnet.onnx.json").read_text() == (REPO / "models" / "hardnet.onnx.json").read_text()


def test_the_seven_bit_export_cannot_saturate_int16_pair_sums():
    """With |w| <= 63 two u8 x s8 products sum below 2^15: what VNNI computes here is what AVX2 computes."""
    import onnx
    from onnx import numpy_helper

    from featmatch.weights import onnx_path

    for variant, limit in (("int8-w7", 63), ("int8", 127)):
        model = onnx.load(str(onnx_path("hardnet", variant)))
        weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_wq")]
        assert len(weights) == 7
        peak = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
        assert peak == limit
    assert 2 * 255 * 63 < 2**15 - 1 < 2 * 255 * 127


# ---------------------------------------------------------------------------------------------
# damaged weight files: one line, a short reason, no torch text (issue 14)


def _one_line_reason(exc: Exception) -> str:
    msg = str(exc)
    assert "\n" not in msg and "weights_only" not in msg and "Traceback" not in msg, msg
    assert len(msg) < 300, msg
    return msg


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("random bytes with their sha256", "not a PyTorch weight file"),
        ("random bytes", "not a PyTorch weight file"),
        ("a list, not a state dict", "not a state dict"),
        ("a pickled object", "other than tensors"),
        ("a wrong state dict", "not HardNet weights"),
        ("an empty file", "empty"),
    ],
)
def test_damaged_weight_files_give_one_line_errors(tmp_path, monkeypatch, kind, reason):
    import pickle

    from featmatch.descriptors import build_descriptor
    from featmatch.errors import ModelNotFoundError
    from featmatch.network import load_weights
    from featmatch.weights import sha256_of

    path = tmp_path / "hardnet.pt"
    if kind.startswith("random bytes"):
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096).astype(np.uint8).tobytes())
        if "sha256" in kind:
            (tmp_path / "hardnet.pt.sha256").write_text(sha256_of(path) + "\n")
    elif kind == "a list, not a state dict":
        torch.save([torch.zeros(3)], path)
    elif kind == "a pickled object":
        path.write_bytes(pickle.dumps({"w": ModelNotFoundError("x")}, protocol=2))
    elif kind == "a wrong state dict":
        torch.save({"features.0.weight": torch.zeros(3, 3), "extra": torch.ones(1)}, path)
    else:
        path.write_bytes(b"")
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as info:
        load_weights("hardnet")
    assert reason in _one_line_reason(info.value)
    with pytest.raises(ModelNotFoundError) as info:  # the same through the descriptor (torch fallback)
        build_descriptor("hardnet", device="cpu")
    assert reason in _one_line_reason(info.value)


def _copy_models(tmp_path, monkeypatch):
    import shutil

    from .conftest import REPO

    for f in (REPO / "models").glob("hardnet.*"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))


def test_damaged_or_missing_onnx_files_give_one_line_errors(tmp_path, monkeypatch):
    import json

    from featmatch.descriptors import CNNDescriptor
    from featmatch.engines import probe_cpu
    from featmatch.errors import ModelNotFoundError
    from featmatch.weights import sha256_of

    _copy_models(tmp_path, monkeypatch)
    variant = "int8-w7" if probe_cpu().x86 and not probe_cpu().vnni else "int8"
    onnx_file = tmp_path / f"hardnet.{variant}.onnx"
    onnx_file.write_bytes(np.random.default_rng(1).integers(0, 256, 2048).astype(np.uint8).tobytes())
    with pytest.raises(ModelNotFoundError) as info:  # caught by the digest in hardnet.onnx.json
        CNNDescriptor("hardnet", device="cpu", precision="int8")
    assert "damaged" in _one_line_reason(info.value)
    manifest = json.loads((tmp_path / "hardnet.onnx.json").read_text())
    manifest["files"][variant]["sha256"] = sha256_of(onnx_file)
    (tmp_path / "hardnet.onnx.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelNotFoundError) as info:  # a damaged file that the record vouches for
        CNNDescriptor("hardnet", device="cpu", precision="int8")
    assert "cannot be loaded" in _one_line_reason(info.value)
    onnx_file.unlink()
    with pytest.raises(ModelNotFoundError) as info:
        CNNDescriptor("hardnet", device="cpu", precision="int8")
    assert "featmatch export hardnet" in _one_line_reason(info.value)
    # auto does without the missing int8 file: ONNX fp32
    assert CNNDescriptor("hardnet", device="cpu").choice.variant == "fp32"


def test_exports_of_other_weights_are_not_used(tmp_path, monkeypatch):
    from featmatch.descriptors import CNNDescriptor
    from featmatch.network import HardNet, save_weights

    _copy_models(tmp_path, monkeypatch)
    torch.manual_seed(5)
    save_weights(HardNet().eval(), tmp_path / "hardnet.pt")  # retrained: the exports are stale now
    d = CNNDescriptor("hardnet", device="cpu")
    assert d.choice.engine == "torch" and "other weights" in d.choice.why


if __name__ == "__main__" and "--regenerate" in sys.argv:
    GOLDEN.mkdir(exist_ok=True)
    for n in SHIPPED:
        np.save(GOLDEN / f"{n}_golden.npy", describe_fp32(n))
        print("wrote", GOLDEN / f"{n}_golden.npy")

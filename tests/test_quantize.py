"""Int8 inference: shipped calibrations, agreement with fp32, stale and missing calibrations.

Nothing here depends on the CPU it runs on: the int8 files are run through ONNX Runtime, whose
7-bit-weight file gives the same integer results on every x86 kernel, and the engine selection
is tested with fake CPUs (tests/test_engines.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from featmatch.errors import ConfigError, ModelNotFoundError
from featmatch.quantize import Calibration, _qparams, load_calibration, measure_ranges

from .conftest import EVALDATA, REPO
from .test_models import SHIPPED, describe_fp32, fixed_patches


@pytest.fixture(scope="module")
def real_patches():
    from featmatch.detect import DetectConfig, detect
    from featmatch.imageio import load_image
    from featmatch.patches import patches_for

    kp = detect(load_image(EVALDATA / "graf1.png").gray, DetectConfig(max_keypoints=1000))
    return torch.from_numpy(patches_for(kp))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_calibration_belongs_to_the_shipped_weights(name):
    calib = load_calibration(name)
    assert calib is not None, f"models/{name}.int8.json is missing or stale: run `featmatch calibrate {name}`"
    assert calib.input_range[0] < 0 < calib.input_range[1]
    assert len(calib.relu_max) == 6 and min(calib.relu_max) > 0
    assert "TRAIN" in calib.source


@pytest.mark.parametrize("name", SHIPPED)
def test_int8_agrees_with_fp32_on_real_patches(name, real_patches):
    from featmatch.descriptors import CNNDescriptor

    fp32 = CNNDescriptor(name, device="cpu", precision="fp32").describe_patches(real_patches)
    int8 = CNNDescriptor(name, device="cpu", precision="int8").describe_patches(real_patches)
    cos = (fp32 * int8).sum(1)
    assert cos.mean() > 0.999 and cos.min() > 0.98, (cos.mean(), cos.min())
    # and it is int8, not fp32 in disguise: the descriptors are not bit-identical
    assert np.abs(fp32 - int8).max() > 1e-4


def test_int8_on_fixed_patches_matches_the_golden_fp32(real_patches):
    from featmatch.descriptors import CNNDescriptor

    want = describe_fp32("hardnet")
    got = CNNDescriptor("hardnet", device="cpu", precision="int8").describe_patches(fixed_patches())
    assert (got * want).sum(1).min() > 0.99


def test_auto_picks_int8_only_where_it_pays_and_with_an_export():
    from featmatch.descriptors import CNNDescriptor
    from featmatch.engines import probe_cpu
    from featmatch.engines.select import _int8_variant

    auto = CNNDescriptor("hardnet", device="cpu", precision="auto")
    variant, _ = _int8_variant(probe_cpu())
    assert auto.choice.engine == "onnx" and auto.choice.variant == (variant or "fp32")
    # a model without exports (e.g. random weights in the tests) never goes int8 on its own
    from featmatch.network import HardNet

    plain = CNNDescriptor("random", device="cpu", precision="auto", model=HardNet())
    assert plain.precision == "fp32" and plain.choice.engine == "torch"


def test_stale_or_missing_calibration(tmp_path, monkeypatch):
    from featmatch.descriptors import CNNDescriptor

    for f in ("hardnet.pt", "hardnet.pt.sha256", "hardnet.int8.json"):
        shutil.copy(REPO / "models" / f, tmp_path / f)
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    assert load_calibration("hardnet") is not None

    stale = json.loads((tmp_path / "hardnet.int8.json").read_text())
    stale["weights_sha256"] = "0" * 64
    (tmp_path / "hardnet.int8.json").write_text(json.dumps(stale))
    assert load_calibration("hardnet") is None
    # no exports in this folder: auto runs torch fp32, int8 says what to make
    assert CNNDescriptor("hardnet", device="cpu", precision="auto").precision == "fp32"
    with pytest.raises(ModelNotFoundError, match="featmatch calibrate hardnet"):
        CNNDescriptor("hardnet", device="cpu", precision="int8")
    # exporting with a stale calibration writes only the fp32 file
    from featmatch.export import export_model

    result = export_model("hardnet")
    assert set(result.files) == {"fp32"} and result.calibration_sha256 is None
    assert CNNDescriptor("hardnet", device="cpu", precision="auto").choice.variant == "fp32"

    (tmp_path / "hardnet.int8.json").unlink()
    with pytest.raises(ModelNotFoundError, match="int8 ONNX export"):
        CNNDescriptor("hardnet", device="cpu", precision="int8")


def test_int8_is_cpu_only():
    from featmatch.engines import choose_engine, probe_cpu

    exports = frozenset({"fp32", "int8", "int8-w7"})
    with pytest.raises(ConfigError, match="CPU only"):
        choose_engine("hardnet", "int8", "cuda", probe_cpu(), True, True, exports)
    assert choose_engine("hardnet", "auto", "cuda", probe_cpu(), True, True, exports).precision == "fp16"


def test_measure_ranges_and_quantize_a_random_network(real_patches, tmp_path):
    """Ranges of a random network, its int8 export (8- and 7-bit weights) agrees with fp32 -- on any CPU:
    ONNX Runtime's integer kernels give these results whatever the ISA (7-bit weights cannot saturate)."""
    from featmatch.engines.onnx_engine import OnnxEngine
    from featmatch.export import build_graph
    from featmatch.inference import fold_for_inference
    from featmatch.network import HardNet

    torch.manual_seed(3)
    net = HardNet().eval()
    folded = fold_for_inference(net, "cpu")
    calib = measure_ranges(folded, real_patches[:256], "x" * 64, "test")
    assert Calibration.from_json(json.loads(json.dumps(calib.to_json()))) == calib
    with torch.inference_mode():
        ref = folded(real_patches[:256].contiguous(memory_format=torch.channels_last)).numpy()
        normalized = folded.normalize_input(real_patches[:256])
    # the input range is a high percentile of what the network saw: inside the true extremes
    assert normalized.min() <= calib.input_range[0] < 0 < calib.input_range[1] <= normalized.max()
    convs = [(c.weight.detach().numpy(), c.bias.detach().numpy(), c.stride[0], c.padding[0])
             for c in folded.body if isinstance(c, torch.nn.Conv2d)]  # fmt: skip
    x = real_patches[:256].numpy()
    fp32_path = tmp_path / "fp32.onnx"
    fp32_path.write_bytes(build_graph(convs).SerializeToString())
    np.testing.assert_allclose(OnnxEngine(fp32_path, "fp32", cached=False)(x), ref, atol=1e-4)
    for levels in (127, 63):  # 8-bit and 7-bit weights
        path = tmp_path / f"int8-{levels}.onnx"
        path.write_bytes(build_graph(convs, calib, levels).SerializeToString())
        got = OnnxEngine(path, "int8", cached=False)(x)
        assert (got * ref).sum(1).mean() > 0.99


def test_qparams_cover_the_range_and_zero():
    scale, zp = _qparams(-2.0, 6.0, 255)
    assert zp == round(2.0 / scale) and abs(scale * 255 - 8.0) < 1e-9
    assert _qparams(1.0, 5.0, 255)[1] == 0  # widened to include 0
    with pytest.raises(ConfigError):
        Calibration.from_json({"weights_sha256": "x"})


def test_shipped_calibration_is_what_the_calibrate_command_computes(tmp_path, data_dir):
    """``featmatch calibrate`` on the train photos reproduces the shipped file."""
    from featmatch.train.calibrate import calibrate

    shipped = json.loads((REPO / "models" / "hardnet.int8.json").read_text())
    for f in ("hardnet.pt", "hardnet.pt.sha256"):
        shutil.copy(REPO / "models" / f, tmp_path / f)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATMATCH_MODELS", str(tmp_path))
        calib, path, n = calibrate("hardnet", data_dir)
    assert path == tmp_path / "hardnet.int8.json" and n > 5000
    got = json.loads(path.read_text())
    assert got["source"] == shipped["source"] and got["weights_sha256"] == shipped["weights_sha256"]
    np.testing.assert_allclose(got["relu_max"], shipped["relu_max"], rtol=1e-4)
    np.testing.assert_allclose(
        got["input_range"] + got["output_range"], shipped["input_range"] + shipped["output_range"], rtol=1e-4
    )

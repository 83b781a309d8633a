"""``featmatch export``: ONNX files of the CNN descriptors, for the torch-free CPU engine.

From ``models/<name>.pt`` (and its int8 calibration ``models/<name>.int8.json``) this writes,
beside the weights:

- ``<name>.fp32.onnx``: BatchNorm folded into the convolutions, the per-patch input
  normalization (zero mean, unit standard deviation, torch's unbiased std) and the final L2
  normalization inside the graph, dynamic batch: ``(N, 1, 32, 32)`` float32 -> ``(N, 128)``.
  The last convolution (an 8x8 kernel on its 8x8 input) is written as a ``Gemm`` on the flattened
  activations: one matrix product over the batch instead of one matrix-vector product per patch
  (in int8 ONNX Runtime's ``QGemm``; 1.5 instead of 7 ms per 256 patches on one core here, same outputs).
- ``<name>.int8.onnx``: the same network in static QDQ form: every convolution's weights
  per output channel, symmetric int8 (``scale = max|w| / 127``), its bias int32 (``scale =
  input scale x weight scale``), every activation per tensor uint8 with the calibration's
  ranges (the input after normalization, the six ReLU outputs, the last convolution). ONNX
  Runtime fuses each ``DequantizeLinear -> Conv -> Relu -> QuantizeLinear`` into one integer
  ``QLinearConv`` (u8 x s8 products summed in int32 where the CPU has VNNI / dot products).
  The quantized patch is padded with three channels at the zero point (and the first weights
  with three channels of zeros), since ONNX Runtime's integer convolution runs 2.4x faster on
  four input channels than on one; the outputs are the same. The activations before the last
  layer are flattened in channels-last order, so that no transpose separates the channels-last
  integer convolutions from the last layer.
- ``<name>.int8-w7.onnx``: the same with 7-bit weights (``|q| <= 63``), for x86 CPUs with AVX2
  but without VNNI. There, the int8 kernel multiplies u8 x s8 with ``vpmaddubsw``, which adds
  two products into a saturating int16: ``2 x 255 x 127 = 64,770`` can overflow, ``2 x 255 x
  63 = 32,130 < 32,767`` cannot. So with 7-bit weights the integer result is exact on every
  x86 kernel, and what is measured on a VNNI machine is what an AVX2 machine computes.
- ``<name>.onnx.json``: what the files were made from (the sha256 of the ``.pt`` and of the
  calibration) and the sha256 of each ``.onnx``; each ONNX file also carries the digests in its
  ``metadata_props``. The engine refuses an export whose weights digest is not the ``.pt``'s.

The graph is built with ``onnx.helper`` from the folded weights (no tracing), so an export
is deterministic: the same ``.pt`` and calibration give byte-identical files. Needs torch and onnx.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, ModelNotFoundError
from .weights import ONNX_VARIANTS, models_dir, onnx_path, sha256_of, weight_path

logger = logging.getLogger(__name__)

#: ONNX opset of the exports (ONNX Runtime >= 1.17 runs it).
OPSET = 17
#: Epsilon of the per-patch input normalization (as :meth:`featmatch.network.HardNet.normalize_input`).
INPUT_EPS = 1e-6
#: Weight levels per side of zero: 8-bit and 7-bit (non-VNNI x86) symmetric weights.
WEIGHT_LEVELS = {"int8": 127, "int8-w7": 63}
#: Activation levels (uint8) of both int8 variants.
ACTIVATION_LEVELS = 255
#: Input channels of the first integer convolution (the one-channel patch padded with zeros).
CONV1_CHANNELS = 4


def manifest_path(name: str) -> Path:
    """``models/<name>.onnx.json``: the provenance of the exports of ``name``."""
    return models_dir() / f"{name}.onnx.json"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        name: the model name.
        files: variant -> path of the written ``.onnx``.
        manifest: the ``<name>.onnx.json`` path.
        weights_sha256: digest of the ``.pt`` the files came from.
        calibration_sha256: digest of the calibration (None: no int8 files were written).
        max_abs_diff_fp32: largest |ONNX fp32 - torch fp32| on the check patches.
    """

    name: str
    files: dict
    manifest: Path
    weights_sha256: str
    calibration_sha256: str | None
    max_abs_diff_fp32: float


def folded_weights(name: str) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    """``[(weight, bias, stride, padding)]`` of the BN-folded convolutions of ``models/<name>.pt``."""
    from torch import nn

    from .inference import fold_for_inference
    from .network import load_weights

    folded = fold_for_inference(load_weights(name), "cpu")
    convs = [m for m in folded.body if isinstance(m, nn.Conv2d)]
    if len(convs) != 7:
        raise ConfigError(f"expected the 7 convolutions of HardNet, found {len(convs)}")
    return [
        (
            c.weight.detach().float().contiguous().numpy().copy(),
            c.bias.detach().float().numpy().copy(),
            int(c.stride[0]),
            int(c.padding[0]),
        )
        for c in convs
    ]


def build_graph(convs, calibration=None, weight_levels: int | None = None, doc: str = ""):
    """The ONNX model of a folded HardNet; QDQ int8 when ``calibration`` is given.

    Args:
        convs: :func:`folded_weights`.
        calibration: a :class:`featmatch.quantize.Calibration` (None: fp32).
        weight_levels: 127 (8-bit) or 63 (7-bit) symmetric weight levels.
        doc: the graph's doc string.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .quantize import _qparams

    nodes, inits = [], []

    def const(name: str, value) -> str:
        if name not in {t.name for t in inits}:
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    # per-patch normalization: (x - mean) / (std + eps), std unbiased over the 1024 pixels
    n_px = 32 * 32
    mean = node("ReduceMean", ["patches"], "mean", axes=[1, 2, 3], keepdims=1)
    diff = node("Sub", ["patches", mean], "centred")
    var = node("ReduceMean", [node("Mul", [diff, diff], "squared")], "var_biased", axes=[1, 2, 3], keepdims=1)
    var = node("Mul", [var, const("unbias", np.float32(n_px / (n_px - 1)))], "var")
    std = node("Add", [node("Sqrt", [var], "std"), const("eps", np.float32(INPUT_EPS))], "std_eps")
    x = node("Div", [diff, std], "normalized")

    def quant(t: str, tag: str, scale: float, zp: int, flatten: bool = False, pad_to: int = 0) -> tuple[str, float]:
        s, z = const(f"{tag}_scale", np.float32(scale)), const(f"{tag}_zp", np.uint8(zp))
        q = node("QuantizeLinear", [t, s, z], f"{tag}_q")
        if pad_to:  # extra channels at the zero point: they dequantize to exactly 0
            pads = const(f"{tag}_pads", np.array([0, 0, 0, 0, 0, pad_to - 1, 0, 0], np.int64))
            q = node("Pad", [q, pads, z], f"{tag}_q_padded", mode="constant")
        if flatten:  # flattened as uint8 in (y, x, channel) order, so that both neighbours fuse
            # into integer kernels and the channels-last convolutions need no transpose before it
            q = node("Transpose", [q], f"{tag}_q_nhwc", perm=[0, 2, 3, 1])
            q = node("Flatten", [q], f"{tag}_q_flat", axis=1)
        return node("DequantizeLinear", [q, s, z], f"{tag}_dq"), scale

    def dq_weights(tag: str, w: np.ndarray, b: np.ndarray, in_scale: float) -> tuple[str, str]:
        """int8 weights per output channel (axis 0) and int32 bias at in_scale x w_scale, dequantized."""
        w_scale = (np.abs(w).reshape(w.shape[0], -1).max(1) / weight_levels).astype(np.float32)
        w_scale = np.maximum(w_scale, np.float32(1e-12))
        per_row = w_scale.reshape((-1,) + (1,) * (w.ndim - 1))
        qw = np.clip(np.round(w / per_row), -weight_levels, weight_levels).astype(np.int8)
        wt = node(
            "DequantizeLinear",
            [const(f"{tag}_wq", qw), const(f"{tag}_ws", w_scale), const(f"{tag}_wzp", np.zeros(len(w), np.int8))],
            f"{tag}_w",
            axis=0,
        )
        b_scale = (np.float32(in_scale) * w_scale).astype(np.float32)
        qb = np.round(b / b_scale).astype(np.int32)
        bt = node(
            "DequantizeLinear",
            [const(f"{tag}_bq", qb), const(f"{tag}_bs", b_scale), const(f"{tag}_bzp", np.zeros(len(b), np.int32))],
            f"{tag}_b",
            axis=0,
        )
        return wt, bt

    in_scale = None
    for i, (w, b, stride, pad) in enumerate(convs):
        tag = f"conv{i + 1}"
        last = i == len(convs) - 1
        integer = calibration is not None
        if last:  # weights in the (y, x, channel) order of the flattened activations
            w = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)
        if integer and i == 0:
            # ONNX Runtime's integer convolution is 2.4x slower with one input channel than with
            # four (190 vs 81 ms per 4096 patches here): the patch gets three channels of zeros,
            # and the weights three channels of zeros, which changes no output
            x, in_scale = quant(
                x, "input", *_qparams(*calibration.input_range, ACTIVATION_LEVELS), pad_to=CONV1_CHANNELS
            )
            w = np.concatenate([w, np.zeros((w.shape[0], CONV1_CHANNELS - w.shape[1]) + w.shape[2:], w.dtype)], 1)
        if integer:
            wt, bt = dq_weights(tag, w, b, in_scale)
        else:
            wt, bt = const(f"{tag}_w", w), const(f"{tag}_b", b)
        if last:
            x = node("Gemm", [x, wt, bt], tag, transB=1)
        else:
            x = node("Conv", [x, wt, bt], tag, kernel_shape=list(w.shape[2:]), strides=[stride, stride],
                     pads=[pad] * 4)  # fmt: skip
            x = node("Relu", [x], f"relu{i + 1}")
        # the last convolution covers its whole 8x8 input: it runs as a matrix product over the
        # batch (Gemm: one GEMM instead of one GEMV per patch) of the flattened activations
        before_last = i == len(convs) - 2
        if calibration is not None:
            lo, hi = calibration.output_range if last else (0.0, calibration.relu_max[i])
            x, in_scale = quant(x, f"act{i + 1}", *_qparams(lo, hi, ACTIVATION_LEVELS), flatten=before_last)
        elif before_last:
            x = node("Transpose", [x], "nhwc_in", perm=[0, 2, 3, 1])
            x = node("Flatten", [x], "flat_in", axis=1)
    norm = node("ReduceL2", [x], "norm", axes=[1], keepdims=1)
    norm = node("Max", [norm, const("tiny", np.float32(1e-12))], "norm_clamped")
    node("Div", [x, norm], "descriptors")
    graph = helper.make_graph(
        nodes,
        "featmatch_hardnet",
        [helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["N", 128])],
        inits,
        doc_string=doc,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="featmatch")
    model.ir_version = 8  # readable by ONNX Runtime 1.17 and later
    onnx.checker.check_model(model)
    return model


def export_model(name: str, check: bool = True) -> ExportResult:
    """Write the ONNX exports of ``models/<name>.pt`` (see the module docstring).

    Args:
        name: model name in the models folder.
        check: compare the fp32 export with torch on fixed patches (max |diff| <= 1e-3).

    Raises:
        ModelNotFoundError: missing or unreadable weights.
        ConfigError: the fp32 export disagrees with torch.
    """
    from .quantize import calibration_path, load_calibration

    weights = weight_path(name)
    convs = folded_weights(name)  # checks the weights (sha256, architecture)
    w_sha = sha256_of(weights)
    calib = load_calibration(name)
    c_sha = sha256_of(calibration_path(name)) if calib is not None else None
    if calib is None:
        logger.warning("%s has no (current) int8 calibration: only the fp32 export is written", name)
    files = {}
    variants = [v for v in ONNX_VARIANTS if v == "fp32" or calib is not None]
    for variant in variants:
        doc = f"featmatch {name} {variant}, from {weights.name} sha256 {w_sha}"
        model = build_graph(convs, None if variant == "fp32" else calib, WEIGHT_LEVELS.get(variant), doc)
        meta = {"featmatch.model": name, "featmatch.variant": variant, "featmatch.weights_sha256": w_sha}
        if variant != "fp32":
            meta["featmatch.calibration_sha256"] = c_sha
        for k, v in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        path = onnx_path(name, variant)
        path.write_bytes(model.SerializeToString(deterministic=True))
        files[variant] = path
    for variant in ONNX_VARIANTS:  # an int8 file left from an older calibration would lie
        if variant not in files and onnx_path(name, variant).is_file():
            onnx_path(name, variant).unlink()
    manifest = {
        "model": name,
        "weights": weights.name,
        "weights_sha256": w_sha,
        "calibration_sha256": c_sha,
        "opset": OPSET,
        "files": {v: {"file": p.name, "sha256": sha256_of(p)} for v, p in files.items()},
    }
    manifest_path(name).write_text(json.dumps(manifest, indent=2) + "\n")
    diff = check_against_torch(name) if check else float("nan")
    return ExportResult(name, files, manifest_path(name), w_sha, c_sha, diff)


def check_against_torch(name: str, tolerance: float = 1e-3) -> float:
    """Max |ONNX fp32 - torch fp32| on 64 seeded random patches; ConfigError above ``tolerance``."""
    import torch

    from .engines.onnx_engine import OnnxEngine
    from .network import load_weights

    x = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = load_weights(name)(x).numpy()
    got = OnnxEngine(onnx_path(name, "fp32"), "fp32", cached=False)(x.numpy())
    diff = float(np.abs(got - want).max())
    if not diff <= tolerance:
        raise ConfigError(f"the fp32 ONNX export of {name} differs from torch by {diff:.2e} (> {tolerance})")
    return diff


def export_names(names: tuple[str, ...]) -> list[ExportResult]:
    """Export each name (default: every ``*.pt`` in the models folder)."""
    if not names:
        names = tuple(sorted(p.stem for p in models_dir().glob("*.pt")))
        if not names:
            raise ModelNotFoundError(f"no weights (*.pt) in {models_dir()} to export")
    return [export_model(n) for n in names]


def _command():
    import click

    @click.command(
        "export",
        help="""Write the ONNX files of trained descriptors for the torch-free CPU engine.

From NAME.pt (and NAME.int8.json) in $FEATMATCH_MODELS (in a source checkout: models/) writes NAME.fp32.onnx, NAME.int8.onnx,
NAME.int8-w7.onnx (7-bit weights for AVX2 CPUs without VNNI) and NAME.onnx.json (the digests they
came from). Needs PyTorch and onnx. Without NAMES: every models/*.pt.

\b
Example:
  featmatch export hardnet exptloss
""",
    )
    @click.argument("names", nargs=-1)
    def export_command(names: tuple[str, ...]) -> None:
        from .weights import MODELS_ENV

        package_root = Path(__file__).resolve().parent.parent
        if not os.environ.get(MODELS_ENV) and not (package_root / "pyproject.toml").is_file():
            raise ConfigError(
                f"export writes beside the weights and never into the installed featmatch: set {MODELS_ENV} "
                "to your weights folder (e.g. the --run-dir of `featmatch train`)"
            )
        for r in export_names(names):
            files = ", ".join(p.name for p in r.files.values())
            click.echo(f"{r.name}: {files} (fp32 vs torch max |diff| {r.max_abs_diff_fp32:.1e}); {r.manifest.name}")

    return export_command


export_command = _command()

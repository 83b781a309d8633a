"""Int8 calibration of a trained descriptor on TRAIN-split patches (``featmatch calibrate``).

The activation ranges that :mod:`featmatch.quantize` needs are measured once, on patches cut
by featmatch's own detector and extractor from the TRAIN photos (never a test image), and
written to ``models/<name>.int8.json`` next to the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - torch is imported when a command runs, not for --help
    import torch

#: Keypoints sampled per train photo (seeded); 37 photos give about 11,000 patches.
PER_PHOTO = 300
#: Photos are downscaled like the training data.
MAX_SIDE = 1024


def calibration_patches(data_root: Path, per_photo: int = PER_PHOTO, seed: int = 0) -> torch.Tensor:
    """``(N, 1, 32, 32)`` float patches of DoG keypoints of the TRAIN photos (deterministic)."""
    import numpy as np
    import torch

    from ..detect import DetectConfig, detect
    from ..imageio import load_image, native_stderr_silenced
    from ..patches import extract_patches
    from .datasets import downscale, train_photos

    rng = np.random.default_rng(seed)
    chunks = []
    for path in train_photos(data_root):
        with native_stderr_silenced():  # libpng chatters about ICC profiles of some photos
            gray = downscale(load_image(path).gray, MAX_SIDE)
        kp = detect(gray, DetectConfig(max_keypoints=4000))
        if len(kp) == 0:
            continue
        idx = np.sort(rng.choice(len(kp), size=min(per_photo, len(kp)), replace=False))
        chunks.append(extract_patches(kp.det_image, kp.det_xy[idx], kp.det_size[idx], kp.angle[idx]))
    if not chunks:
        raise ConfigError(f"no calibration patches found in the train photos under {data_root}")
    return torch.from_numpy(np.concatenate(chunks))


def calibrate(name: str, data_root: Path, per_photo: int = PER_PHOTO, export: bool = True):
    """Measure and write ``models/<name>.int8.json``; returns ``(Calibration, path, num_patches)``.

    With ``export`` (and the onnx package installed) the ONNX exports are rewritten from the new
    ranges too (:func:`featmatch.export.export_model`, about a second).
    """
    from ..inference import fold_for_inference
    from ..network import load_weights, sha256_of, weight_path
    from ..quantize import calibration_path, measure_ranges

    folded = fold_for_inference(load_weights(name), "cpu")
    patches = calibration_patches(data_root, per_photo)
    source = (
        f"{len(patches)} patches: {per_photo} seeded DoG keypoints (seed 0) of each TRAIN photo "
        f"(featmatch.train.datasets.train_photos, downscaled to {MAX_SIDE} px), cut by featmatch.patches"
    )
    calib = measure_ranges(folded, patches, sha256_of(weight_path(name)), source)
    path = calibration_path(name)
    path.write_text(json.dumps(calib.to_json(), indent=2) + "\n")
    if export:
        from ..engines import have_module

        if have_module("onnx"):
            from ..export import export_model

            export_model(name)
    return calib, path, len(patches)


@click.command(
    "calibrate",
    help="""Measure the int8 activation ranges of trained descriptors (``--precision int8``).

Runs each model in fp32 on about 11,000 patches of the TRAIN photos and writes
<NAME>.int8.json beside the weights, in $FEATMATCH_MODELS (in a source checkout: models/);
it records the sha256 of the weights (retrain -> recalibrate). Then it rewrites the ONNX
exports (featmatch export) from it. It never writes into an installed featmatch.

\b
Examples:
  FEATMATCH_MODELS=runs/hardnet featmatch calibrate hardnet --data-root ../shared/data
  featmatch calibrate hardnet exptloss      # a source checkout: models/*.int8.json
""",
)
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The data folder (featmatch's shared data) [default: $FEATMATCH_DATA, else ../shared/data beside "
    "a source checkout].",
)
@click.option(
    "--per-photo",
    type=click.IntRange(min=1),
    default=PER_PHOTO,
    show_default=True,
    help="Keypoints sampled per train photo.",
)
def calibrate_command(names: tuple[str, ...], data_root: Path | None, per_photo: int) -> None:
    import os

    from ..network import MODELS_ENV
    from .datasets import default_data_root, in_source_checkout

    if not os.environ.get(MODELS_ENV) and not in_source_checkout():
        raise ConfigError(
            f"calibrate writes beside the weights and never into the installed featmatch: set {MODELS_ENV} "
            "to your weights folder (e.g. the --run-dir of `featmatch train`)"
        )
    data_root = data_root or default_data_root()
    for name in names:
        calib, path, n = calibrate(name, data_root, per_photo)
        click.echo(
            f"{name}: {n} patches -> {path} (input {calib.input_range[0]:.2f}..{calib.input_range[1]:.2f}, "
            f"output {calib.output_range[0]:.2f}..{calib.output_range[1]:.2f})"
        )

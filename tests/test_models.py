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

    want = describe_fp32(name)
    for precision in ("fp32", "bf16"):
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


if __name__ == "__main__" and "--regenerate" in sys.argv:
    GOLDEN.mkdir(exist_ok=True)
    for n in SHIPPED:
        np.save(GOLDEN / f"{n}_golden.npy", describe_fp32(n))
        print("wrote", GOLDEN / f"{n}_golden.npy")

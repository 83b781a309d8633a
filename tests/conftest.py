"""Shared fixtures: paths to the real data beside the repo and small helpers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples"


def read_oxford_h(path: Path) -> np.ndarray:
    """A ground-truth homography: a plain 3x3 text file, or OpenCV FileStorage XML (graf H1to3p.xml)."""
    if path.suffix == ".xml":
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        return fs.getNode("H13").mat()
    return np.loadtxt(path)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"the shared data folder {DATA} is missing; tests need ../shared/data beside the repo")
    return DATA


@pytest.fixture(scope="session")
def gray_photo(data_dir) -> np.ndarray:
    """A real test photo as float32 gray in [0, 1]."""
    from featmatch.imageio import load_image

    return load_image(data_dir / "vlfeat-pairs" / "river1.jpg").gray


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.fixture
def cuda_device():
    if not cuda_available():
        pytest.skip("no CUDA GPU on this machine")
    return "cuda"

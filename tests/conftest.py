"""Shared fixtures: paths to the real data beside the repo and small helpers.

Every test that reads ``../shared/data`` (the big shared data set beside the repository, which
CI has and a fresh clone does not) takes the ``data_dir`` fixture: without the folder it is
skipped with the one reason :data:`MISSING_DATA`, and the run ends with a count of those skips.
``FEATMATCH_REQUIRE_DATA=1`` (set by ``.ci/run``) turns the skip into a failure, so that CI
cannot pass by skipping. Core behaviour is also tested on small data inside the repository
(``featmatch/evaldata/``, ``examples/``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples"
#: Small real data bundled in the package (graf1/graf3 with their true homography, test photos).
EVALDATA = REPO / "featmatch" / "evaldata"


def read_oxford_h(path: Path) -> np.ndarray:
    """A ground-truth homography: a plain 3x3 text file, or OpenCV FileStorage XML (graf H1to3p.xml)."""
    if path.suffix == ".xml":
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        return fs.getNode("H13").mat()
    return np.loadtxt(path)


def load_script(path: Path, name: str):
    """A repository script (``scripts/*.py``, ``benchmarks/*.py``) imported as a module, for its tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


#: The one reason of every skip for missing shared data.
MISSING_DATA = "needs ../shared/data beside the repo (CI has it)"
#: Set to 1 to fail instead of skipping when ../shared/data is missing (CI).
REQUIRE_DATA_ENV = "FEATMATCH_REQUIRE_DATA"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data`` beside the repository; skips the test (one reason) when it is absent."""
    if not DATA.is_dir():
        if os.environ.get(REQUIRE_DATA_ENV) == "1":
            pytest.fail(f"{REQUIRE_DATA_ENV}=1 but {DATA} is missing")
        pytest.skip(MISSING_DATA)
    return DATA


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "data: needs ../shared/data (set on every test using data_dir); -m 'not data'")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark every test that reaches the shared data (directly or through another fixture) ``data``,
    so that ``-m "not data"`` runs exactly what a fresh clone runs."""
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say at the end how many tests were skipped because ../shared/data is missing."""
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(1 for rep in skipped if MISSING_DATA in str(getattr(rep, "longrepr", "")))
    if n:
        terminalreporter.write_line(f"{n} tests skipped for missing data: {MISSING_DATA}", yellow=True)


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

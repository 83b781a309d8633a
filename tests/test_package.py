"""The package imports cleanly, module by module, and its public names are what they claim."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil

import featmatch

#: Modules that cannot be imported without PyTorch (training, export, the torch engine).
NEEDS_TORCH = ("torch", "kornia", "onnx")


def test_every_submodule_imports_and_describe_stays_the_function():
    have_torch = importlib.util.find_spec("torch") is not None
    imported = []
    for info in pkgutil.walk_packages(featmatch.__path__, prefix="featmatch."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:  # only an optional dependency may be missing
            assert not have_torch and (exc.name or "").split(".")[0] in NEEDS_TORCH, (info.name, exc)
            continue
        imported.append(info.name)
    assert {"featmatch.descriptors", "featmatch.pipeline", "featmatch.patches", "featmatch.engines"} <= set(imported)
    # no submodule shadows the public function featmatch.describe (issue 13)
    assert "featmatch.describe" not in imported
    assert inspect.isfunction(featmatch.describe)
    assert featmatch.describe.__module__ == "featmatch.pipeline"

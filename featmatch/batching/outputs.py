"""Checks of a batch's output paths, made before any work: nothing of the user's is overwritten.

RESULTS must be absent or a JSON-lines file featmatch wrote, the cache absent or an HDF5 file
featmatch wrote, and neither may be one of the inputs (an image, the list file, the pairs
file) nor the other. ``force`` lets a run replace a file of another kind (never an input).
A RESULTS file another run is writing is refused too (its lock is held).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError, FileSystemError, printable
from .cache import NotACacheError, sniff_cache
from .results import NotResultsError, check_results_unlocked, sniff_results

#: What a user with a foreign file in the way can do.
_RESULTS_HINT = "it was left untouched: give another --output (results.jsonl), or pass --force to replace it"
_CACHE_HINT = "it was left untouched: give another --cache, or pass --force to replace it"


def _identity(path: Path) -> tuple:
    """What makes two paths the same file: device and inode when it exists, else its resolved path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def _check_kind(path: Path, option: str) -> bool:
    """Refuse a folder or a special file at an output path; True when a regular file is there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise FileSystemError(path, exc, f"use {option}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{option} '{printable(path)}' is a folder; give a file name")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{option} '{printable(path)}' is not a regular file (a device, pipe or socket)")
    return True


def check_outputs(
    inputs: Iterable[tuple[str, Path]], output: Path | None, cache: Path | None, force: bool = False
) -> None:
    """Refuse, before any work, output paths that would destroy or mix up a file.

    Args:
        inputs: ``(what, path)`` of every file the run reads (``"image 'a.jpg'"``, ``"the image list"``).
        output: the RESULTS path, or None.
        cache: the cache path, or None (a temporary one).
        force: allow replacing a file that is not a featmatch results file or cache.

    Raises:
        ConfigError: the one-line reason (an input, the same file twice, a folder, a file of
            another kind, a RESULTS file in use by another run).
    """
    outs = [(p, opt) for p, opt in ((output, "--output"), (cache, "--cache")) if p is not None]
    if output is not None and cache is not None and _identity(output) == _identity(cache):
        raise ConfigError(
            f"--output and --cache are the same file '{printable(output)}': the results and the feature cache "
            "need two files (the cache defaults to <output stem>.features.h5)"
        )
    if outs:
        ids = {_identity(p): (p, opt) for p, opt in outs}
        for what, path in inputs:
            hit = ids.get(_identity(path))
            if hit is not None:
                raise ConfigError(
                    f"{hit[1]} '{printable(hit[0])}' is {what}, an input of this run: featmatch never writes over "
                    f"its inputs; give another {hit[1]}"
                )
    if output is not None and _check_kind(output, "--output"):
        why = sniff_results(output)
        if why is not None and not force:
            raise NotResultsError(
                f"'{printable(output)}' exists and is not a featmatch results file ({why}); {_RESULTS_HINT}"
            )
        check_results_unlocked(output)
    if cache is not None and _check_kind(cache, "--cache"):
        why = sniff_cache(cache)
        if why is not None and not force:
            raise NotACacheError(f"'{printable(cache)}' exists and is {why}, not a feature cache; {_CACHE_HINT}")

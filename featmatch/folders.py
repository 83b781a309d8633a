"""Which images a folder holds, and in which order: one rule for ``stitch``, ``batch`` and the examples.

A folder with an ``image_list.txt`` gives the images that file names, in its order (the first
word of each line; ``#`` starts a comment; the panoramas-image-stitching sets carry a focal
length after the name, which is ignored). Otherwise its images are taken in *natural* order:
digit runs compare as numbers, so ``2.jpg`` comes before ``10.jpg``, and case is ignored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError, printable

#: File name endings taken as images when a folder is listed (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".pgm", ".ppm", ".pnm", ".jp2")
#: A folder's image order, when it has this file.
IMAGE_LIST = "image_list.txt"


def natural_key(name: str | os.PathLike) -> list:
    """Sort key of a name or relative path: digit runs as numbers, letters without case, folder by folder."""
    parts = Path(name).as_posix().split("/")
    return [
        [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", part) if t] for part in parts
    ]


def natural_sorted(names, key=lambda x: x) -> list:
    """``names`` in natural order (``key`` picks the name or path of each item)."""
    return sorted(names, key=lambda item: natural_key(key(item)))


def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def listed_images(folder: Path) -> list[Path] | None:
    """The images ``folder/image_list.txt`` names, in its order; None when there is no such file."""
    listing = folder / IMAGE_LIST
    if not listing.is_file():
        return None
    try:
        data = listing.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read '{printable(listing)}': {exc.strerror or exc}") from None
    if b"\x00" in data:
        raise ConfigError(f"'{printable(listing)}' is not a text list of image names (it holds binary data)")
    # bytes that are not UTF-8 (a Latin-1 name) decode as os.fsdecode spells such file names
    text = data.decode("utf-8", errors="surrogateescape")
    words = (line.split("#")[0].split() for line in text.splitlines())
    return [folder / w[0] for w in words if w]


def folder_images(folder: str | os.PathLike, recursive: bool = False, exclude=()) -> list[Path]:
    """The images of ``folder`` in the one order (``image_list.txt``'s, else natural).

    Args:
        folder: the folder.
        recursive: also the images of its subfolders (natural order of the relative paths);
            ``image_list.txt`` still decides when the folder has one.
        exclude: paths to leave out (e.g. a panorama being written into the folder).

    Returns:
        The image paths (possibly empty).
    """
    root = Path(folder)
    skip = {os.path.realpath(p) for p in exclude}
    listed = listed_images(root)
    if listed is not None:
        files = listed
    else:
        candidates = root.rglob("*") if recursive else root.iterdir()
        # broken and looping symbolic links are kept: the caller reports them as unusable images
        files = natural_sorted(
            (p for p in candidates if is_image_name(p) and (p.is_file() or (p.is_symlink() and not p.exists()))),
            key=lambda p: p.relative_to(root),
        )
    return [p for p in files if os.path.realpath(p) not in skip]

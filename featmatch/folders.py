"""Which images a folder holds, and in which order: one rule for ``stitch``, ``batch`` and the examples.

A folder with an ``image_list.txt`` gives the images that file names, in its order (the first
word of each line; ``#`` starts a comment; the panoramas-image-stitching sets carry a focal
length after the name, which is ignored). Otherwise its images are taken in *natural* order:
digit runs compare as numbers, so ``2.jpg`` comes before ``10.jpg``, and case is ignored.
The same walk of the folder finds the devices, pipes and sockets named like images, which
``batch`` leaves out with a warning (:func:`list_folder`). :func:`read_name_list` reads
``image_list.txt`` and ``batch``'s list file alike; :func:`read_list_text` also ``batch``'s pairs file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, printable
from .imageio import special_file

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


def read_list_text(path: str | os.PathLike, what: str, holds: str, hint: str = "") -> str:
    """The text of a list file (``image_list.txt``, ``batch``'s list and pairs files).

    Bytes that are not UTF-8 (a Latin-1 name) decode as :func:`os.fsdecode` spells such file names.

    Args:
        what: the file's name in the messages (``image list``).
        holds: what a text file of this kind holds (``list of image names``).
        hint: appended to the binary-data message.

    Raises:
        ConfigError: the file cannot be read, or it holds binary data (an image is not a list).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} '{printable(path)}': {exc.strerror or exc}") from None
    if b"\x00" in data:
        raise ConfigError(f"'{printable(path)}' is not a text {holds} (it holds binary data{hint})")
    return data.decode("utf-8", errors="surrogateescape")


def read_name_list(path: Path) -> list[str]:
    """The names a text list of images holds: its lines, stripped, without blank lines and lines
    that start with ``#``. Both ``image_list.txt`` and ``batch``'s list file are read here.

    Raises:
        ConfigError: the file cannot be read, or it holds binary data (an image is not a list).
    """
    hint = "; is it an image? pass its folder" if is_image_name(path) else ""
    text = read_list_text(path, "image list", "list of image names", hint)
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def listed_images(folder: Path) -> list[Path] | None:
    """The images ``folder/image_list.txt`` names, in its order; None when there is no such file."""
    listing = folder / IMAGE_LIST
    if not listing.is_file():
        return None
    words = (line.split("#")[0].split() for line in read_name_list(listing))
    return [folder / w[0] for w in words if w]


@dataclass(frozen=True)
class FolderListing:
    """What one walk of a folder found.

    Attributes:
        images: the images, in the one order (``image_list.txt``'s, else natural).
        special: devices, named pipes and sockets with an image's name (natural order): never
            opened (reading one could block or never end); empty when ``image_list.txt`` decides.
    """

    images: tuple[Path, ...]
    special: tuple[Path, ...] = ()


def list_folder(folder: str | os.PathLike, recursive: bool = False, exclude=()) -> FolderListing:
    """The images of ``folder`` and the special files among them, from one walk (none when the
    folder has an ``image_list.txt``).

    Args:
        folder: the folder.
        recursive: also the images of its subfolders (natural order of the relative paths);
            ``image_list.txt`` still decides when the folder has one.
        exclude: paths to leave out (e.g. a panorama being written into the folder).
    """
    root = Path(folder)
    skip = {os.path.realpath(p) for p in exclude}
    listed = listed_images(root)
    if listed is not None:
        return FolderListing(tuple(p for p in listed if os.path.realpath(p) not in skip))
    found: dict[str, list[Path]] = {"image": [], "special": []}
    for p in root.rglob("*") if recursive else root.iterdir():
        kind = _kind(p) if is_image_name(p) and os.path.realpath(p) not in skip else None
        if kind is not None:
            found[kind].append(p)
    images, special = (natural_sorted(found[k], key=lambda p: p.relative_to(root)) for k in ("image", "special"))
    return FolderListing(tuple(images), tuple(special))


def _kind(path: Path) -> str | None:
    """What a path found in a folder is: ``"image"`` for a regular file or a broken or looping symbolic
    link (the caller reports those as unusable images), ``"special"`` for a device, pipe or socket,
    None for anything else (a folder)."""
    try:
        st = path.stat()
    except OSError:
        return "image" if path.is_symlink() else None
    if stat.S_ISREG(st.st_mode):
        return "image"
    return "special" if special_file(st) is not None else None


def folder_images(folder: str | os.PathLike, recursive: bool = False, exclude=()) -> list[Path]:
    """The images of ``folder`` in the one order (``image_list.txt``'s, else natural):
    :func:`list_folder`'s images, possibly none."""
    return list(list_folder(folder, recursive, exclude).images)

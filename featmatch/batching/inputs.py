"""The images of a batch: a folder or a list file in, named image entries with fingerprints out.

An image's *name* is what the pairs file and the results use: its path relative to the folder
(POSIX separators), or the line of the list file as written. Its *fingerprint* identifies the
file's content, so that a cached entry or a finished result is reused only for the same bytes.

File names that are not valid UTF-8 are kept losslessly, as Python decodes them
(``os.fsdecode``: each such byte becomes a lone surrogate ``U+DC80..U+DCFF``;
``os.fsencode(name)`` gives the bytes back). In the RESULTS file they appear as JSON escapes
(``"caf\\udce9.jpg"`` for the bytes ``caf\\xe9.jpg``), which Python's ``json`` reads back
unchanged; list and pairs files may hold such names as raw bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, printable
from ..folders import IMAGE_SUFFIXES, is_image_name, list_folder, read_name_list
from ..imageio import read_image_file, special_file

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class ImageEntry:
    """One image of a batch.

    Attributes:
        name: the name used in pairs and results (unique within a batch).
        path: where the file is on this machine.
    """

    name: str
    path: Path


def list_images(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[ImageEntry]:
    """The images of ``source``: a folder (searched recursively), a list file, or paths.

    A list file has one image path per line (blank lines and ``#`` comments are skipped);
    relative paths are taken relative to the list file's folder.

    Raises:
        ConfigError: the source does not exist, holds no image, or names an image twice.
    """
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if root.is_dir():
            # image_list.txt's order, else natural order (2.jpg before 10.jpg), as stitch reads a folder.
            # Broken and looping symbolic links are listed too: they are reported as unusable images,
            # not silently left out; pipes and devices with an image's name come last, and batch()
            # leaves them out with a warning (reading one could block)
            listing = list_folder(root, recursive=True)
            entries = [ImageEntry(_relative_name(p, root), p) for p in listing.images + listing.special]
        elif root.is_file():
            entries = _read_list_file(root)
        else:
            raise ConfigError(f"'{printable(root)}' is neither a folder of images nor a list file")
        where = str(root)
    else:
        entries = [ImageEntry(Path(p).as_posix(), Path(p)) for p in source]
        where = "the given paths"
    if not entries:
        raise ConfigError(f"no images found in {where} (looked for {', '.join(IMAGE_SUFFIXES)})")
    _check_unique(e.name for e in entries)
    return entries


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # image_list.txt may name a file outside the folder
        return path.as_posix()


def _read_list_file(path: Path) -> list[ImageEntry]:
    # relative to the list file's folder (an absolute path stays as it is: "/" joins to the name alone)
    entries = [ImageEntry(name, path.parent / name) for name in read_name_list(path)]
    if entries and not any(e.path.exists() or e.path.is_symlink() for e in entries):
        # a text file that names no existing file is not a list of images (a stray .jpg, a typo)
        what = "a text file named like an image, not an image" if is_image_name(path) else "not a list of images"
        raise ConfigError(
            f"'{printable(path)}' is {what}: none of its {len(entries)} lines names an existing file "
            f"(first line: '{printable(entries[0].name)[:80]}')"
        )
    return entries


def _check_unique(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"image name '{printable(n)}' appears twice in the image list")
        seen.add(n)


def read_bytes(entry: ImageEntry) -> bytes:
    """The file's bytes (:func:`featmatch.imageio.read_image_file`: regular files within the size cap only).

    Raises:
        ImageReadError: missing, a folder, a device, pipe or socket, too large, or unreadable.
    """
    return read_image_file(entry.path)


def split_special(entries: Sequence[ImageEntry]) -> tuple[list[ImageEntry], dict[str, str]]:
    """Leave out the entries that are devices, named pipes or sockets (``/dev/zero`` in a list file
    reads forever, a FIFO blocks): ``(kept, {name: why})``. Only ``stat`` is called: nothing is opened.

    Missing files and broken links are kept: reading them gives their own one-line reason.
    """
    kept, skipped = [], {}
    for e in entries:
        try:
            st = os.stat(e.path)
        except OSError:
            kept.append(e)
            continue
        kind = special_file(st)
        if kind is None:
            kept.append(e)
        else:
            skipped[e.name] = f"not a regular file ({kind}); left out of the batch"
    return kept, skipped


def content_fingerprint(data: bytes) -> str:
    """A short hash of an image file's size and bytes (sha1)."""
    h = hashlib.sha1(len(data).to_bytes(8, "little"))
    h.update(data)
    return h.hexdigest()[:20]

"""The feature cache: one HDF5 file, one group per image (hloc's layout).

Each group holds the datasets ``keypoints (N, 2)`` float32 (full-resolution x, y),
``scales (N,)`` (OpenCV ``KeyPoint.size``, a diameter), ``angles (N,)``, ``responses (N,)``
and ``descriptors (N, D)`` (float16 or float32), and the attributes ``name``,
``image_shape (H, W)``, ``det_scale``, ``image_fingerprint``, ``feature_fingerprint`` and
``fingerprint`` (both together). An entry is used only while its ``fingerprint`` matches: a
changed image or a changed detector/descriptor option recomputes it.

Names that are not valid UTF-8 (file names decoded by Python with ``surrogateescape``, as
``os.fsdecode`` does) are stored losslessly: the group key percent-encodes each such byte
(``%FF``; a literal ``%`` is ``%25``), and the ``name`` attribute holds the raw bytes
(``os.fsencode(name)``) instead of a string.

A cache that cannot be read (cut short by a full disk or a kill during a write, or not HDF5 at
all) raises :class:`CacheUnreadableError`; :func:`featmatch.batching.batch` then moves it aside
and rebuilds it.

h5py is imported when a cache is opened, never at import time. One process writes (the
driver); workers open the file read-only after the writes are done.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..detect import Keypoints
from ..errors import ConfigError, FeatmatchError, FileSystemError, os_condition, printable
from ..pipeline import Features

logger = logging.getLogger(__name__)


#: What h5py raises for a damaged file, depending on where the damage is.
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


class CacheUnreadableError(ConfigError):
    """An existing cache file cannot be read as HDF5 (e.g. a crash cut a write short)."""


class NotACacheError(ConfigError):
    """An existing file at the cache path was not written by featmatch (it is left untouched)."""


#: The first bytes of every HDF5 file featmatch writes (it writes no user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: The root attribute that marks a file as a featmatch feature cache.
CACHE_MARK = "featmatch_feature_cache"
#: What a user with a foreign file at the cache path can do.
_FOREIGN_HINT = "it was left untouched: give another --cache, or pass --force to replace it"


def sniff_cache(path: str | Path) -> str | None:
    """Why an existing file cannot be a featmatch cache, from its first bytes; None when it may be
    one (an HDF5 file, possibly cut short), or is absent or empty. Never writes."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
    except (FileNotFoundError, IsADirectoryError):
        return None
    except OSError as exc:
        raise FileSystemError(path, exc, "read") from None
    if not head or head == HDF5_SIGNATURE[: len(head)]:
        return None
    return "not an HDF5 file"


def _h5_errno(exc: BaseException) -> int | None:
    """The errno behind an h5py error: its ``errno``, or the ``errno = N`` HDF5 writes in its text."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return code
    m = re.search(r"errno = (\d+)", str(exc))
    return int(m.group(1)) if m else None


def _os_refused(path: Path, exc: BaseException, doing: str) -> FileSystemError | None:
    """A :class:`FileSystemError` when ``exc`` is the disk refusing (full, read-only, ...), not damage."""
    code = _h5_errno(exc)
    if os_condition(code) is None:
        return None
    return FileSystemError(path, code, doing, "finished results are kept: run the same command again when it is fixed")


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise FeatmatchError("the feature cache needs h5py: pip install h5py") from None
    return h5py


def entry_fingerprint(image_fingerprint: str, feature_fingerprint: str) -> str:
    """The fingerprint an entry is stored and looked up with."""
    return hashlib.sha1(f"{image_fingerprint}:{feature_fingerprint}".encode()).hexdigest()[:20]


def _escape_segment(seg: str) -> str:
    """``%`` and the bytes of a non-UTF-8 name (surrogate escapes) as ``%XX``: HDF5 keys must be UTF-8."""
    out = []
    for ch in seg:
        code = ord(ch)
        if ch == "%":
            out.append("%25")
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape of the byte code - 0xDC00
            out.append(f"%{code - 0xDC00:02X}")
        elif 0xD800 <= code <= 0xDFFF:  # any other lone surrogate cannot be encoded either
            out.append(f"%u{code:04X}")
        else:
            out.append(ch)
    return "".join(out)


def group_key(name: str) -> str:
    """The HDF5 group path of an image name: ``/`` nests groups (as in hloc); odd segments are escaped.

    ``%``, bytes that are not UTF-8 (``%FF``) and segments made only of dots (``%2E``) are
    percent-encoded, so that different names never share a key.
    """
    parts = []
    for seg in name.split("/"):
        seg = _escape_segment(seg)
        if seg in ("", ".") or set(seg) == {"."}:
            seg = seg.replace(".", "%2E") or "%00"
        parts.append(seg)
    return "/".join(parts)


def name_attribute(name: str):
    """What the ``name`` attribute stores: the name, or its raw bytes when it is not valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return np.bytes_(os.fsencode(name))
    return name


def _is_lock_error(exc: OSError) -> bool:
    """HDF5's "unable to lock file" (another process has it open), not other errors that mention a "lock"."""
    text = str(exc).lower()
    return "unable to lock file" in text or "file locking" in text


def strip_features(features: Features, dtype: str = "float32") -> Features:
    """A copy without the detection image and OpenCV keypoints, descriptors rounded to ``dtype``.

    What is left is all that matching needs, and exactly what the cache gives back, so that a
    freshly computed entry and a cached one match identically.
    """
    k = features.keypoints
    desc = np.asarray(features.descriptors)
    if dtype != "float32":
        desc = desc.astype(dtype)
    kps = Keypoints(
        xy=np.asarray(k.xy, np.float32),
        size=np.asarray(k.size, np.float32),
        angle=np.asarray(k.angle, np.float32),
        response=np.asarray(k.response, np.float32),
        scale=float(k.scale),
    )
    return Features(kps, desc.astype(np.float32), tuple(int(v) for v in features.image_shape))


class FeatureCache:
    """An HDF5 feature cache, opened for reading (``mode="r"``) or reading and writing (``"a"``).

    Use it as a context manager. ``lru`` bounds how many loaded entries are kept in memory.

    Raises:
        CacheUnreadableError: the file exists but cannot be read as HDF5.
        ConfigError: the file cannot be created, or another process holds it open for writing.
    """

    def __init__(self, path: str | Path, mode: str = "r", lru: int = 64):
        if mode not in ("r", "a"):
            raise ConfigError(f"cache mode must be 'r' or 'a', got '{mode}'")
        self.path = Path(path)
        self.mode = mode
        self._file = None
        self._file = self._open(mode)
        self._lru: OrderedDict[str, Features] = OrderedDict()
        self._lru_size = lru
        if not self._is_ours():
            self._file.close()
            raise NotACacheError(
                f"'{printable(self.path)}' is an HDF5 file that featmatch did not write, not a feature cache; "
                + _FOREIGN_HINT
            )
        if mode == "a":
            with contextlib.suppress(*_H5_ERRORS):  # damage shows (and is handled) when entries are read
                if CACHE_MARK not in self._file.attrs:
                    self._file.attrs[CACHE_MARK] = 1

    def _open(self, mode: str):
        h5py = _h5py()
        existed = self.path.is_file()
        why = sniff_cache(self.path)
        if why is not None:
            raise NotACacheError(f"'{printable(self.path)}' exists and is {why}, not a feature cache; {_FOREIGN_HINT}")
        for attempt in range(2):
            try:
                if mode == "a":
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                return h5py.File(self.path, mode)
            except OSError as exc:
                if _is_lock_error(exc) or (_h5_errno(exc) == errno.EEXIST and attempt):
                    raise ConfigError(
                        f"the feature cache '{printable(self.path)}' is in use by another process (HDF5 file lock); "
                        "wait for it to finish or pass another --cache"
                    ) from None
                if _h5_errno(exc) == errno.EEXIST:  # another run created it a moment ago: open it (or wait)
                    existed = True
                    continue
                refused = _os_refused(
                    self.path, exc, "open the feature cache" if existed else "create the feature cache"
                )
                if refused is not None:
                    raise refused from None
                if existed:
                    raise CacheUnreadableError(
                        f"the feature cache '{printable(self.path)}' is damaged ({_h5_reason(exc)})"
                    ) from None
                raise ConfigError(
                    f"cannot open the feature cache '{printable(self.path)}': {_h5_reason(exc)}"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _is_ours(self) -> bool:
        """Marked by featmatch, empty, or (a cache from before the mark) holding an entry with a fingerprint."""
        try:
            if CACHE_MARK in self._file.attrs or len(self._file) == 0:
                return True
            found: list = []

            def first_group_with_data(name, obj):
                if hasattr(obj, "attrs") and "descriptors" in getattr(obj, "keys", lambda: ())():
                    found.append("fingerprint" in obj.attrs)
                    return True
                return None

            self._file.visititems(first_group_with_data)
            return bool(found and found[0])
        except _H5_ERRORS:
            return True  # damaged, not foreign: reading an entry says so

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file.

        Raises:
            CacheUnreadableError: HDF5 could not write its metadata back (a damaged file).
        """
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except _H5_ERRORS as exc:
                refused = _os_refused(self.path, exc, "write the feature cache")
                if refused is not None:
                    raise refused from None
                raise CacheUnreadableError(f"the feature cache '{self.path}' is damaged ({_h5_reason(exc)})") from None

    def fingerprint(self, name: str) -> str | None:
        """The stored fingerprint of ``name``'s entry, or None when there is no entry.

        Raises:
            CacheUnreadableError: the entry's metadata cannot be read (a damaged file).
        """
        key = group_key(name)
        try:
            if key not in self._file:
                return None
            value = self._file[key].attrs.get("fingerprint", "")
            return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)) or None
        except _H5_ERRORS as exc:
            raise CacheUnreadableError(f"the feature cache '{self.path}' is damaged ({_h5_reason(exc)})") from None

    def has(self, name: str, fingerprint: str) -> bool:
        """Whether a valid entry for ``name`` under ``fingerprint`` exists."""
        return self.fingerprint(name) == fingerprint

    def get(self, name: str) -> Features:
        """The entry of ``name`` (descriptors as float32).

        Raises:
            ConfigError: no entry for ``name``.
        """
        if name in self._lru:
            self._lru.move_to_end(name)
            return self._lru[name]
        key = group_key(name)
        if key not in self._file:
            raise ConfigError(f"the feature cache '{self.path}' has no entry for '{name}'")
        try:
            g = self._file[key]
            kps = Keypoints(
                xy=g["keypoints"][()].astype(np.float32).reshape(-1, 2),
                size=g["scales"][()].astype(np.float32),
                angle=g["angles"][()].astype(np.float32),
                response=g["responses"][()].astype(np.float32),
                scale=float(g.attrs["det_scale"]),
            )
            desc = g["descriptors"][()].astype(np.float32)
            shape = tuple(int(v) for v in g.attrs["image_shape"])
        except _H5_ERRORS as exc:
            raise CacheUnreadableError(
                f"the feature cache '{self.path}' is damaged: the entry of '{printable(name)}' cannot be read "
                f"({_h5_reason(exc)})"
            ) from None
        # (N, D) as stored; an image without keypoints has (0, D), which reshape(0, -1) cannot infer
        width = desc.shape[-1] if desc.ndim == 2 else (desc.size // max(len(kps), 1))
        feats = Features(kps, desc.reshape(len(kps), width), shape)
        self._lru[name] = feats
        if len(self._lru) > self._lru_size:
            self._lru.popitem(last=False)
        return feats

    def put(
        self, name: str, features: Features, image_fingerprint: str, feature_fingerprint: str, dtype: str = "float16"
    ) -> None:
        """Write (or replace) the entry of ``name``.

        Raises:
            CacheUnreadableError: the file's structures are damaged (HDF5 cannot update them).
        """
        if self.mode != "a":
            raise ConfigError(f"the feature cache '{self.path}' is open read-only")
        try:
            self._put(name, features, image_fingerprint, feature_fingerprint, dtype)
        except _H5_ERRORS as exc:
            refused = _os_refused(self.path, exc, "write the feature cache")
            if refused is not None:
                raise refused from None
            raise CacheUnreadableError(
                f"the feature cache '{self.path}' is damaged: the entry of '{printable(name)}' cannot be written "
                f"({_h5_reason(exc)})"
            ) from None

    def _put(self, name: str, features: Features, image_fingerprint: str, feature_fingerprint: str, dtype: str) -> None:
        key = group_key(name)
        if key in self._file:
            del self._file[key]
        g = self._file.create_group(key)
        k = features.keypoints
        g.create_dataset("keypoints", data=np.asarray(k.xy, np.float32).reshape(-1, 2))
        g.create_dataset("scales", data=np.asarray(k.size, np.float32))
        g.create_dataset("angles", data=np.asarray(k.angle, np.float32))
        g.create_dataset("responses", data=np.asarray(k.response, np.float32))
        g.create_dataset("descriptors", data=np.asarray(features.descriptors).astype(dtype))
        g.attrs["name"] = name_attribute(name)
        g.attrs["image_shape"] = np.asarray(features.image_shape, np.int64)
        g.attrs["det_scale"] = float(k.scale)
        # fixed-length bytes, stored in the attribute itself: a variable-length string lives in
        # HDF5's global heap, and reading one from a damaged heap can loop forever inside HDF5
        # (found by scripts/fuzz.py), where no Python timeout can stop it
        g.attrs["image_fingerprint"] = np.bytes_(image_fingerprint)
        g.attrs["feature_fingerprint"] = np.bytes_(feature_fingerprint)
        g.attrs["fingerprint"] = np.bytes_(entry_fingerprint(image_fingerprint, feature_fingerprint))
        self._lru.pop(name, None)

    def flush(self) -> None:
        try:
            self._file.flush()
        except _H5_ERRORS as exc:
            refused = _os_refused(self.path, exc, "write the feature cache")
            if refused is not None:
                raise refused from None
            raise CacheUnreadableError(f"the feature cache '{self.path}' is damaged ({_h5_reason(exc)})") from None


def _h5_reason(exc: BaseException) -> str:
    """h5py's message without its ``Unable to open file (...)`` wrapper, on one line."""
    raw = exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) else str(exc)
    text = " ".join(raw.split())  # (str() of a KeyError would quote its message)
    for prefix in ("Unable to open file (", "Unable to synchronously open file ("):
        if text.startswith(prefix) and text.endswith(")"):
            return text[len(prefix) : -1]
    return text or type(exc).__name__

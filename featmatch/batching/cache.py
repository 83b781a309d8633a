"""The feature cache: one HDF5 file, one group per image (hloc's layout).

Each group holds the datasets ``keypoints (N, 2)`` float32 (full-resolution x, y),
``scales (N,)`` (OpenCV ``KeyPoint.size``, a diameter), ``angles (N,)``, ``responses (N,)``
and ``descriptors (N, D)`` (float16 or float32), and the attributes ``name``,
``image_shape (H, W)``, ``det_scale``, ``image_fingerprint``, ``feature_fingerprint`` and
``fingerprint`` (both together). An entry is used only while its ``fingerprint`` matches: a
changed image or a changed detector/descriptor option recomputes it.

h5py is imported when a cache is opened, never at import time. One process writes (the
driver); workers open the file read-only after the writes are done.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..detect import Keypoints
from ..errors import ConfigError, FeatmatchError
from ..pipeline import Features

logger = logging.getLogger(__name__)


class CacheUnreadableError(ConfigError):
    """An existing cache file cannot be read as HDF5 (e.g. a crash cut a write short)."""


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise FeatmatchError("the feature cache needs h5py: pip install h5py") from None
    return h5py


def entry_fingerprint(image_fingerprint: str, feature_fingerprint: str) -> str:
    """The fingerprint an entry is stored and looked up with."""
    return hashlib.sha1(f"{image_fingerprint}:{feature_fingerprint}".encode()).hexdigest()[:20]


def group_key(name: str) -> str:
    """The HDF5 group path of an image name: ``/`` nests groups (as in hloc); odd segments are escaped."""
    parts = []
    for seg in name.split("/"):
        if seg in ("", ".") or set(seg) == {"."}:
            seg = seg.replace(".", "%2E") or "%00"
        parts.append(seg)
    return "/".join(parts)


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
        h5py = _h5py()
        self.path = Path(path)
        self.mode = mode
        existed = self.path.is_file()
        try:
            if mode == "a":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.path, mode)
        except OSError as exc:
            if "lock" in str(exc).lower():
                raise ConfigError(
                    f"the feature cache '{self.path}' is in use by another process (HDF5 file lock); "
                    "wait for it to finish or pass another --cache"
                ) from None
            cls = CacheUnreadableError if existed else ConfigError
            raise cls(f"cannot open the feature cache '{self.path}': {exc}") from None
        self._lru: OrderedDict[str, Features] = OrderedDict()
        self._lru_size = lru

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def fingerprint(self, name: str) -> str | None:
        """The stored fingerprint of ``name``'s entry, or None when there is no entry."""
        key = group_key(name)
        if key not in self._file:
            return None
        return str(self._file[key].attrs.get("fingerprint", "")) or None

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
        g = self._file[key]
        kps = Keypoints(
            xy=g["keypoints"][()].astype(np.float32).reshape(-1, 2),
            size=g["scales"][()].astype(np.float32),
            angle=g["angles"][()].astype(np.float32),
            response=g["responses"][()].astype(np.float32),
            scale=float(g.attrs["det_scale"]),
        )
        desc = g["descriptors"][()].astype(np.float32)
        feats = Features(kps, desc.reshape(len(kps), -1), tuple(int(v) for v in g.attrs["image_shape"]))
        self._lru[name] = feats
        if len(self._lru) > self._lru_size:
            self._lru.popitem(last=False)
        return feats

    def put(
        self, name: str, features: Features, image_fingerprint: str, feature_fingerprint: str, dtype: str = "float16"
    ) -> None:
        """Write (or replace) the entry of ``name``."""
        if self.mode != "a":
            raise ConfigError(f"the feature cache '{self.path}' is open read-only")
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
        g.attrs["name"] = name
        g.attrs["image_shape"] = np.asarray(features.image_shape, np.int64)
        g.attrs["det_scale"] = float(k.scale)
        g.attrs["image_fingerprint"] = image_fingerprint
        g.attrs["feature_fingerprint"] = feature_fingerprint
        g.attrs["fingerprint"] = entry_fingerprint(image_fingerprint, feature_fingerprint)
        self._lru.pop(name, None)

    def flush(self) -> None:
        self._file.flush()

"""The options of a batch run and their fingerprints.

Two fingerprints decide what may be reused: :func:`feature_fingerprint` (detector and
descriptor options: a cached feature entry is valid only under the same one) and
:func:`match_fingerprint` (that plus the matcher and geometry options: a finished result in
RESULTS is skipped only under the same one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from ..descriptors import DESCRIPTORS, PRECISIONS, SIFT_DESCRIPTORS
from ..detect import DetectConfig
from ..errors import ConfigError
from ..geometry import GeometryConfig
from ..match import MatchConfig

#: The descriptor ``featmatch batch`` uses unless told otherwise (no model file needed).
DEFAULT_BATCH_DESCRIPTOR = "sift"
#: Backends that run the work.
BACKENDS = ("local", "ray")
#: How descriptors are stored in the cache.
CACHE_DTYPES = ("float16", "float32")
#: Bumped when the cache layout or the meaning of a stored field changes.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class BatchConfig:
    """What to compute for every image and pair.

    Attributes:
        descriptor: a name of :data:`featmatch.descriptors.DESCRIPTORS`.
        detect, match, geometry: the stage options.
        device: where a CNN descriptor runs (``auto``, ``cpu``, ``cuda``).
        precision: CNN arithmetic (see :class:`featmatch.descriptors.CNNDescriptor`).
        cache_dtype: ``float16`` (half the disk; SIFT's integer values are kept exactly) or ``float32``.
        save_matches: also keep every pair's inlier index pairs in the results.
    """

    descriptor: str = DEFAULT_BATCH_DESCRIPTOR
    detect: DetectConfig = field(default_factory=DetectConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    device: str = "cpu"
    precision: str = "auto"
    cache_dtype: str = "float16"
    save_matches: bool = False

    def __post_init__(self) -> None:
        if self.descriptor not in DESCRIPTORS:
            raise ConfigError(f"unknown descriptor '{self.descriptor}'; choose one of {', '.join(sorted(DESCRIPTORS))}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ConfigError(f"unknown cache dtype '{self.cache_dtype}'; choose one of {', '.join(CACHE_DTYPES)}")

    @property
    def is_cnn(self) -> bool:
        return self.descriptor not in SIFT_DESCRIPTORS


def _digest(obj: object) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_id(name: str) -> str:
    """The recorded sha256 of a CNN's weight file ('missing' when there is none yet)."""
    from ..weights import weight_path

    digest = weight_path(name).with_name(f"{name}.pt.sha256")
    return digest.read_text().strip() if digest.is_file() else "missing"


def feature_fingerprint(config: BatchConfig) -> str:
    """A hash of every option that changes an image's keypoints or descriptors."""
    spec = {
        "format": CACHE_FORMAT,
        "descriptor": config.descriptor,
        "detect": dataclasses.asdict(config.detect),
        "dtype": config.cache_dtype,
    }
    if config.is_cnn:
        spec.update(weights=weights_id(config.descriptor), precision=config.precision, device=config.device)
    return _digest(spec)


def match_fingerprint(config: BatchConfig, features: str | None = None) -> str:
    """A hash of the feature options plus the matcher and geometry options."""
    spec = {
        "features": features or feature_fingerprint(config),
        "match": dataclasses.asdict(config.match),
        "geometry": dataclasses.asdict(config.geometry),
        "save_matches": config.save_matches,
    }
    return _digest(spec)

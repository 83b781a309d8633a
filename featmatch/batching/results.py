"""Per-pair results and the RESULTS file: JSON lines, appended and flushed one pair at a time.

Every line is one finished pair::

    {"image1": "a.jpg", "image2": "b.jpg", "status": "verified", "matches": 312, "inliers": 254,
     "keypoints": [4000, 3890], "homography": [[...], [...], [...]], "reason": null,
     "time_ms": 41.2, "fingerprints": ["<image1>", "<image2>"], "options": "<options>"}

``status`` is ``verified`` (a homography passed every check), ``no_homography`` (``reason``
says why) or ``error`` (an image could not be used). A run that starts on an existing file
reads it first and skips every pair finished under the same image fingerprints and options;
``error`` lines are retried. A line cut short by a crash is dropped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: Pair statuses.
VERIFIED, NO_HOMOGRAPHY, ERROR = "verified", "no_homography", "error"
#: Statuses a resumed run does not recompute.
FINISHED = (VERIFIED, NO_HOMOGRAPHY)


@dataclass(frozen=True)
class PairResult:
    """The outcome for one image pair.

    Attributes:
        image1, image2: image names; ``homography`` maps image1's pixels to image2's.
        status: ``verified``, ``no_homography`` or ``error``.
        homography: ``(3, 3)`` float64, or None.
        num_matches: matches that passed the ratio test.
        num_inliers: matches consistent with the homography (without one: with the best model
            the estimator found, the count the reason states).
        num_keypoints: keypoints of the two images.
        reason: why there is no homography (None when verified).
        time_ms: matching and estimation time of this pair.
        resumed: read back from an earlier run's RESULTS rather than computed now.
        inlier_matches: ``(K, 2)`` keypoint index pairs of the inliers (into the cached
            keypoints), when the batch was asked to save them; else None.
    """

    image1: str
    image2: str
    status: str
    homography: np.ndarray | None
    num_matches: int
    num_inliers: int
    num_keypoints: tuple[int, int]
    reason: str | None
    time_ms: float = 0.0
    resumed: bool = False
    inlier_matches: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.status == VERIFIED

    @property
    def pair(self) -> tuple[str, str]:
        return (self.image1, self.image2)

    def to_json(self) -> dict:
        """The JSON object of this result (without the fingerprints a RESULTS line adds)."""
        out = {
            "image1": self.image1,
            "image2": self.image2,
            "status": self.status,
            "matches": int(self.num_matches),
            "inliers": int(self.num_inliers),
            "keypoints": [int(v) for v in self.num_keypoints],
            "homography": None if self.homography is None else [[float(v) for v in r] for r in self.homography],
            "reason": self.reason,
            "time_ms": round(float(self.time_ms), 2),
        }
        if self.inlier_matches is not None:
            out["inlier_matches"] = np.asarray(self.inlier_matches, np.int64).tolist()
        return out

    @classmethod
    def from_json(cls, obj: dict, resumed: bool = True) -> PairResult:
        """Rebuild a result from a RESULTS line."""
        H = obj.get("homography")
        im = obj.get("inlier_matches")
        return cls(
            image1=obj["image1"],
            image2=obj["image2"],
            status=obj["status"],
            homography=None if H is None else np.asarray(H, np.float64).reshape(3, 3),
            num_matches=int(obj.get("matches", 0)),
            num_inliers=int(obj.get("inliers", 0)),
            num_keypoints=tuple(int(v) for v in obj.get("keypoints", (0, 0))),
            reason=obj.get("reason"),
            time_ms=float(obj.get("time_ms", 0.0)),
            resumed=resumed,
            inlier_matches=None if im is None else np.asarray(im, np.int64).reshape(-1, 2),
        )


def error_result(image1: str, image2: str, reason: str, num_keypoints: tuple[int, int] = (0, 0)) -> PairResult:
    """The result of a pair that could not be attempted."""
    return PairResult(image1, image2, ERROR, None, 0, 0, num_keypoints, reason)


@dataclass(frozen=True)
class BatchSummary:
    """What a run did.

    Attributes:
        images: images in the batch.
        images_failed: images that could not be read or described.
        features_computed: images described in this run.
        features_cached: images whose features came from the cache.
        pairs: pairs in the plan.
        skipped: pairs finished by an earlier run and not recomputed.
        computed: pairs matched in this run.
        verified, no_homography, errors: outcomes of the pairs of this run and the skipped ones.
        seconds: wall time of the run.
        match_seconds: wall time of the matching phase.
        complete: every pair of the plan is finished (False after a ``limit`` stop).
    """

    images: int
    images_failed: int
    features_computed: int
    features_cached: int
    pairs: int
    skipped: int
    computed: int
    verified: int
    no_homography: int
    errors: int
    seconds: float
    match_seconds: float
    complete: bool

    @property
    def pairs_per_second(self) -> float:
        """Pairs matched per second of the matching phase (skipped pairs not counted)."""
        return self.computed / self.match_seconds if self.match_seconds > 0 else 0.0


class ResultsLog:
    """The RESULTS file: reads the finished lines, then appends one flushed line per pair.

    Args:
        path: the JSON-lines file (created with its folder when missing).

    Raises:
        ConfigError: the file cannot be opened, or a complete line is not a result object.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.previous: dict[tuple[str, str], dict] = {}
        self.dropped_partial = False
        if self.path.exists():
            self._read()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write results to '{self.path}': {exc.strerror or exc}") from None

    def _read(self) -> None:
        if self.path.is_dir():
            raise ConfigError(f"results path '{self.path}' is a folder; give a file name such as results.jsonl")
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A crash cut the last line short: drop it (its pair is recomputed).
            logger.warning("%s: dropping an incomplete last line (interrupted run)", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(end)
            self.dropped_partial = True
        for lineno, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key = (obj["image1"], obj["image2"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(
                    f"{self.path}:{lineno} is not a featmatch batch result line; give another output file"
                ) from None
            self.previous[key] = obj  # a later line for the same pair wins

    def finished(self, pair: tuple[str, str], fingerprints: tuple[str, str], options: str) -> dict | None:
        """The earlier line of ``pair`` if it is finished under the same fingerprints and options."""
        obj = self.previous.get(pair)
        if obj is None or obj.get("status") not in FINISHED:
            return None
        if obj.get("options") != options or list(obj.get("fingerprints", ())) != list(fingerprints):
            return None
        return obj

    def write(self, result: PairResult, fingerprints: tuple[str, str], options: str) -> None:
        """Append one result line and flush it to the OS."""
        obj = result.to_json()
        obj["fingerprints"] = list(fingerprints)
        obj["options"] = options
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._f.flush()

    def sync(self) -> None:
        """Flush and fsync (at the end of a run)."""
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()

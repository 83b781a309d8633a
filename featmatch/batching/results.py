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

import contextlib
import errno
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, FileSystemError, os_condition, printable

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


#: The start of every line featmatch writes to RESULTS (``json.dumps`` keeps the key order).
LINE_START = b'{"image1":'
#: How much of an existing file is read to tell whether featmatch wrote it.
SNIFF_BYTES = 1 << 16


class NotResultsError(ConfigError):
    """An existing file at the RESULTS path is not a featmatch results file (it is left untouched)."""


class ResultsInUseError(ConfigError):
    """Another process is writing the same RESULTS file."""


def _not_ours(path: Path, why: str) -> NotResultsError:
    return NotResultsError(
        f"'{printable(path)}' exists and is not a featmatch results file ({why}); it was left untouched: "
        "give another --output (results.jsonl), or pass --force to replace it"
    )


def _result_line(line: bytes) -> str | None:
    """Why ``line`` (complete, without its newline) is not a result line featmatch wrote, or None."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not JSON lines" if b"\x00" not in line else "binary data"
    if not isinstance(obj, dict) or not isinstance(obj.get("image1"), str) or not isinstance(obj.get("image2"), str):
        return "its lines are not pair results"
    return None


def _partial_line(tail: bytes) -> bool:
    """Whether ``tail`` (the bytes after the last newline) is the start of a result line cut short."""
    n = min(len(tail), len(LINE_START))
    return tail[:n] == LINE_START[:n] and b"\n" not in tail


def sniff_results(path: str | Path) -> str | None:
    """Why an existing file is not a featmatch results file, from its first line; None when it may be
    one (or is absent, or empty). Reads at most :data:`SNIFF_BYTES`; never writes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileSystemError(path, exc, "read") from None
    if not head:
        return None
    first, newline, _ = head.partition(b"\n")
    if not newline:
        return None if _partial_line(first) else "not JSON lines"
    return _result_line(first)


def _lock(fd: int, path: Path, exclusive: bool = True) -> None:
    """Hold an advisory lock on the open RESULTS file until it is closed (one writer per file).

    Raises:
        ResultsInUseError: another run holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Windows
        return
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ResultsInUseError(
            f"the results file '{printable(path)}' is in use by another featmatch batch (it is locked); "
            "wait for that run to finish or give another --output"
        ) from None
    except OSError:  # a file system without locks (some network mounts): carry on unlocked
        logger.info("%s: the file system does not support locks", path)


def check_results_unlocked(path: str | Path) -> None:
    """Refuse, before any work, a RESULTS file that another run is writing (nothing is changed).

    Raises:
        ResultsInUseError: another run holds its lock.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # absent (or unreadable: opening it for the run says why)
    try:
        _lock(fd, path)
    finally:
        os.close(fd)  # closing drops the probe's lock


class ResultsLog:
    """The RESULTS file: locked for this run, read, then one line appended per pair.

    The file is opened and locked first (a second run on the same file is refused), then
    checked whole: if any line is not a result featmatch wrote, nothing is changed and
    :class:`NotResultsError` is raised (``force=True`` empties such a file instead). Only then
    is a last line cut short by a crash dropped. On a read-only disk the finished lines are
    still read; the first new line to write raises :class:`~featmatch.errors.FileSystemError`.

    Args:
        path: the JSON-lines file (created with its folder when missing).
        force: replace a file that is not a featmatch results file.

    Raises:
        ConfigError: the path is a folder or not a regular file; NotResultsError,
            ResultsInUseError; FileSystemError: the OS refused (the message says why).
    """

    def __init__(self, path: str | Path, force: bool = False):
        self.path = Path(path)
        self.previous: dict[tuple[str, str], dict] = {}
        self.dropped_partial = False
        self.read_only: FileSystemError | None = None
        if self.path.is_dir():
            raise ConfigError(
                f"results path '{printable(self.path)}' is a folder; give a file name such as results.jsonl"
            )
        self._fd = self._open()
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"results path '{printable(self.path)}' is not a regular file")
            _lock(self._fd, self.path, exclusive=self.read_only is None)
            self._read(force)
        except BaseException:
            os.close(self._fd)
            raise

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o666)
        except OSError as exc:
            if os_condition(exc.errno) and self.path.is_file():  # read-only disk: read what is finished
                self.read_only = FileSystemError(self.path, exc, "write results to")
                try:
                    return os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except OSError as exc2:
                    raise FileSystemError(self.path, exc2, "read") from None
            raise FileSystemError(self.path, exc, "write results to") from None

    def _read_all(self) -> bytes:
        chunks = []
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            while chunk := os.read(self._fd, 1 << 20):
                chunks.append(chunk)
        except OSError as exc:
            raise FileSystemError(self.path, exc, "read") from None
        return b"".join(chunks)

    def _truncate(self, size: int) -> None:
        if self.read_only is not None:
            return  # nothing can be written anyway; the partial line is just ignored
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise FileSystemError(self.path, exc, "write results to") from None

    def _read(self, force: bool) -> None:
        why = sniff_results(self.path)  # a large file of another kind is refused from its start
        data = b"" if why else self._read_all()
        end = data.rfind(b"\n") + 1
        tail = data[end:]
        if why is None and tail and not _partial_line(tail):
            why = "its last line is not a pair result"
        lines = data[:end].split(b"\n")[:-1]
        for lineno, line in enumerate(lines if why is None else (), 1):
            bad = _result_line(line)
            if bad is not None:
                why = f"line {lineno}: {bad}"
                break
            if line.strip():
                obj = json.loads(line)
                self.previous[(obj["image1"], obj["image2"])] = obj  # a later line for the same pair wins
        if why is not None:
            if not force:
                raise _not_ours(self.path, why)
            logger.warning("%s: not a results file (%s); replacing it (--force)", self.path, why)
            self.previous.clear()
            self._truncate(0)
            return
        if tail:
            # A crash cut the last line short: drop it (its pair is recomputed).
            logger.warning("%s: dropping an incomplete last line (interrupted run)", self.path)
            self._truncate(end)
            self.dropped_partial = True

    def finished(self, pair: tuple[str, str], fingerprints: tuple[str, str], options: str) -> dict | None:
        """The earlier line of ``pair`` if it is finished under the same fingerprints and options."""
        obj = self.previous.get(pair)
        if obj is None or obj.get("status") not in FINISHED:
            return None
        if obj.get("options") != options or list(obj.get("fingerprints", ())) != list(fingerprints):
            return None
        return obj

    def write(self, result: PairResult, fingerprints: tuple[str, str], options: str) -> None:
        """Append one result line (one ``write`` call: it reaches the OS at once).

        Raises:
            FileSystemError: the disk is full or read-only (the lines before are kept).
        """
        if self.read_only is not None:
            raise self.read_only
        obj = result.to_json()
        obj["fingerprints"] = list(fingerprints)
        obj["options"] = options
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
        written = 0
        try:
            written = os.write(self._fd, line)
            if written != len(line):  # a full disk took part of it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            if written:  # cut the partial line off again (shrinking needs no space)
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise FileSystemError(
                self.path, exc, "write results to", "the finished pairs are kept: run the same command again"
            ) from None

    def sync(self) -> None:
        """Flush to the disk (at the end of a run)."""
        if self.read_only is not None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise FileSystemError(self.path, exc, "write results to") from None

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                if self.read_only is None:
                    os.fsync(fd)
            except OSError as exc:
                raise FileSystemError(self.path, exc, "write results to") from None
            finally:
                os.close(fd)

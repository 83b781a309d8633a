"""``batch()``: features once per image, then many pairs, resumable, on one core or a cluster.

The run, step by step:

1. list the images and fingerprint their bytes;
2. describe every image whose cache entry is missing or stale (changed image or options) and
   write it to the HDF5 cache (:mod:`.cache`);
3. make the pairs (:mod:`.pairs`; a shortlist reads the cached descriptors);
4. read RESULTS, if it exists, and skip every pair finished there under the same image
   fingerprints and options (:mod:`.results`);
5. match the remaining pairs on the backend (:mod:`.runner`), appending one flushed line per
   pair, so that an interrupted run loses nothing it finished.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..detect import DetectConfig
from ..errors import ConfigError, FeatmatchError, FileSystemError, check_type, os_cause, printable
from ..geometry import GeometryConfig
from ..match import MatchConfig
from .cache import CacheUnreadableError, FeatureCache, NotACacheError, entry_fingerprint
from .config import BACKENDS, DEFAULT_BATCH_DESCRIPTOR, BatchConfig, feature_fingerprint, match_fingerprint
from .inputs import ImageEntry, content_fingerprint, list_images, read_bytes, split_special
from .outputs import check_outputs
from .pairs import PairsSpec, exhaustive_pairs, parse_pairs_spec, read_pairs_file, sequential_pairs, shortlist_pairs
from .raycluster import parse_ray_address
from .results import ERROR, NO_HOMOGRAPHY, VERIFIED, BatchSummary, PairResult, ResultsLog, error_result
from .runner import LocalBackend, RayBackend

logger = logging.getLogger(__name__)


def default_cache_path(output: str | os.PathLike) -> Path:
    """Where the features of a run writing ``output`` are cached: ``results.jsonl`` -> ``results.features.h5``."""
    out = Path(output)
    return out.with_name(out.stem + ".features.h5") if out.suffix else out.with_name(out.name + ".features.h5")


def make_config(descriptor: str = DEFAULT_BATCH_DESCRIPTOR, **options) -> BatchConfig:
    """A :class:`BatchConfig` from flat options.

    Args:
        descriptor: the descriptor's name.
        **options: any field of :class:`DetectConfig`, :class:`MatchConfig` or
            :class:`GeometryConfig`, plus ``device``, ``precision``, ``cache_dtype`` and
            ``save_matches``.

    Raises:
        ConfigError: an unknown option (the message lists the valid ones) or a bad value.
    """
    groups = {"detect": DetectConfig, "match": MatchConfig, "geometry": GeometryConfig}
    top = {"device", "precision", "cache_dtype", "save_matches"}
    per: dict = {g: {} for g in groups}
    rest = {}
    for key, value in options.items():
        owner = [g for g, cls in groups.items() if key in cls.__dataclass_fields__]
        if owner:
            per[owner[0]][key] = value
        elif key in top:
            rest[key] = value
        else:
            valid = sorted(top.union(*(cls.__dataclass_fields__ for cls in groups.values())))
            raise ConfigError(f"unknown option '{key}'; valid options: {', '.join(valid)}")
    return BatchConfig(descriptor=descriptor, **{g: groups[g](**kw) for g, kw in per.items()}, **rest)


def batch(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    pairs: str | os.PathLike | Sequence[tuple[str, str]] = "exhaustive",
    output: str | os.PathLike | None = None,
    *,
    descriptor: str = DEFAULT_BATCH_DESCRIPTOR,
    cache: str | os.PathLike | None = None,
    workers: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    limit: int | None = None,
    progress: bool = False,
    config: BatchConfig | None = None,
    force: bool = False,
    **options,
) -> BatchRun:
    """Match many image pairs, describing each image once.

    Args:
        images: a folder (searched recursively), a list file (one path per line), or paths.
        pairs: ``exhaustive``, ``sequential[:K]``, ``shortlist[:K]``, a pairs file (two names
            per line), or a sequence of ``(name1, name2)``.
        output: the RESULTS file (JSON lines). When it exists, finished pairs are skipped.
            None: nothing is written and nothing resumed.
        descriptor: the descriptor (``sift`` by default).
        cache: the HDF5 feature cache; default ``<output stem>.features.h5`` beside
            ``output``, or a temporary file when there is no ``output``.
        workers: processes (local) or CPUs of a local Ray instance; default ``os.cpu_count()``.
        backend: ``local`` or ``ray``.
        ray_address: a running Ray cluster to use (``--backend ray`` only).
        limit: match at most this many new pairs, then stop (rerun to go on).
        progress: show tqdm progress bars on stderr.
        config: a ready :class:`BatchConfig` (then ``descriptor`` and ``options`` must be left out).
        force: replace a file at ``output`` or ``cache`` that featmatch did not write (without
            it such a file is refused, untouched). An input is never overwritten.
        **options: stage options as in :func:`make_config` (``max_keypoints``, ``ratio``, ...).

    Returns:
        A :class:`BatchRun`: iterate it for :class:`PairResult` objects (the skipped, finished
        ones first, marked ``resumed``, then the new ones as they complete); ``.summary``
        after the end. Nothing runs until it is iterated.

    Raises:
        ConfigError: bad options or argument types, pairs spec (a pairs file is read and checked
            here), image source, output paths (see :func:`.outputs.check_outputs`), or
            ``backend="ray"`` without Ray. Nothing is computed or written before these checks.
    """
    _check_arguments(images, pairs, output, cache, workers, limit, force, progress)
    if config is None:
        config = make_config(descriptor, **options)
    elif options or descriptor != DEFAULT_BATCH_DESCRIPTOR:
        raise ConfigError("pass either config= or descriptor/options, not both")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if ray_address is not None and backend != "ray":
        raise ConfigError("--ray-address needs --backend ray")
    if ray_address is not None:
        parse_ray_address(ray_address)  # a bad address is a usage error, found before any work
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must not be negative, got {limit}")
    entries, special = split_special(list_images(images))
    if not entries:
        raise ConfigError(f"no usable images in {printable(images)}: " + "; ".join(sorted(set(special.values()))))
    read_files: list[tuple[str, Path]] = []
    if isinstance(images, (str, os.PathLike)) and Path(images).is_file():
        read_files.append(("the image list", Path(images)))
    if isinstance(pairs, (str, os.PathLike)):
        spec: PairsSpec | list = parse_pairs_spec(pairs)
        if spec.mode == "file":  # read and checked now: a bad name must not cost the features first
            read_files.append(("the pairs file", spec.path))
            spec = read_pairs_file(spec.path, [e.name for e in entries])
    else:
        spec = list(dict.fromkeys((str(a), str(b)) for a, b in pairs))
        known = {e.name for e in entries}
        for a, b in spec:
            if a not in known or b not in known:
                raise ConfigError(f"pair ({a}, {b}) names an image that is not in the batch")
            if a == b:
                raise ConfigError(f"'{a}' is paired with itself")
    cache_path = Path(cache) if cache is not None else (default_cache_path(output) if output is not None else None)
    check_outputs(
        [*read_files, *((f"the image '{printable(e.name)}'", e.path) for e in entries)],
        None if output is None else Path(output),
        cache_path,
        force,
    )
    workers = workers or os.cpu_count() or 1
    runner = RayBackend(config, workers, ray_address) if backend == "ray" else LocalBackend(config, workers)
    run = BatchRun(entries, spec, config, runner, output, cache, limit, progress, force)
    for name, why in sorted(special.items()):
        run._warn(f"skipped '{printable(name)}': {why}")
    return run


def _check_arguments(images, pairs, output, cache, workers, limit, force, progress) -> None:
    """Wrong types are refused by name before any work (``batch(None)``, ``pairs=5``, ``workers="2"``)."""
    paths = (str, os.PathLike)
    if not isinstance(images, paths) and not (
        isinstance(images, Sequence) and all(isinstance(p, paths) for p in images)
    ):
        raise ConfigError(
            f"images must be a folder, a list file or a sequence of image paths, got {type(images).__name__}"
        )
    if not isinstance(pairs, paths) and not (
        isinstance(pairs, Sequence)
        and all(isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 for p in pairs)
    ):
        raise ConfigError(
            "pairs must be 'exhaustive', 'sequential[:K]', 'shortlist[:K]', a pairs file or a sequence of "
            f"(name1, name2), got {type(pairs).__name__} {printable(repr(pairs))[:60]}"
        )
    for name, value in (("output", output), ("cache", cache)):
        if value is not None and not isinstance(value, paths):
            raise ConfigError(f"{name} must be a file path or None, got {type(value).__name__}")
    for name, value in (("workers", workers), ("limit", limit)):
        if value is not None:
            check_type(name, value, "int")
    check_type("force", force, "bool")
    check_type("progress", progress, "bool")


def _bar(progress: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, **kw)


class BatchRun(Iterator[PairResult]):
    """An iterator over the :class:`PairResult` of a batch; :attr:`summary` is set when it ends.

    Made by :func:`batch`. Closing it (or breaking out of a ``for`` loop and dropping it)
    stops the workers; what was finished stays in RESULTS.

    Attributes:
        failed: image name -> why it could not be used (each unusable image once; its
            pairs are ``error`` results).
        warnings: what the run repaired on the way (e.g. a damaged cache set aside), one line each.
    """

    def __init__(self, entries, spec, config, runner, output, cache, limit, progress, force=False):
        self.entries: list[ImageEntry] = entries
        self.spec = spec
        self.config: BatchConfig = config
        self.runner = runner
        self.output = None if output is None else Path(output)
        self.cache_path = None if cache is None else Path(cache)
        self.limit = limit
        self.progress = progress
        self.force = force
        self.summary: BatchSummary | None = None
        self.failed: dict[str, str] = {}
        self.warnings: list[str] = []
        self._gen = self._run()

    def __next__(self) -> PairResult:
        return next(self._gen)

    def close(self) -> None:
        """Stop the run (workers too); the summary describes what was done."""
        self._gen.close()

    def run(self) -> BatchSummary:
        """Consume the whole run and return its summary."""
        for _ in self:
            pass
        return self.summary

    # -- the steps ---------------------------------------------------------------------------

    def _fingerprints(self) -> dict[str, str]:
        fps = {}
        for e in self.entries:
            try:
                fps[e.name] = content_fingerprint(read_bytes(e))
            except FeatmatchError as exc:
                self.failed[e.name] = str(exc)
        return fps

    def _warn(self, message: str) -> None:
        """A notice for the user (the CLI prints each once, after the run); logged at INFO."""
        logger.info("%s", message)
        self.warnings.append(message)

    @staticmethod
    def _move_aside(path: Path, why: CacheUnreadableError) -> Path:
        """Move a damaged cache out of the way (``<cache>.corrupt``, kept for inspection)."""
        aside = path.with_name(path.name + ".corrupt")
        try:
            path.replace(aside)  # a rename: it needs no free space
        except OSError as exc:
            raise ConfigError(
                f"{why}; it could not be moved aside ({os_cause(exc)}): move or delete it, then run again"
            ) from None
        return aside

    @contextlib.contextmanager
    def _damage_ends_the_run(self, cache_path: Path):
        """An entry that cannot be read while pairs are made or matched: the run stops (exit code
        2), the cache is set aside, and the next run rebuilds it; finished lines stay in RESULTS."""
        try:
            yield
        except CacheUnreadableError as exc:
            self.runner.close()  # the workers hold the file open
            aside = self._move_aside(cache_path, exc)
            raise ConfigError(
                f"{exc}; moved it to '{aside}': run the same command again to rebuild it (finished results are kept)"
            ) from None

    def _features(self, cache_path: Path, fps: dict[str, str], feat_fp: str) -> tuple[int, int]:
        """Describe the images without a valid cache entry; returns (computed, cached).

        A cache that cannot be read or written (a crash or a full disk cut a write short, bytes
        damaged on disk) is set aside and rebuilt: that costs the features, never a finished
        result line.
        """
        for attempt in range(2):
            try:
                return self._describe(cache_path, fps, feat_fp)
            except NotACacheError:
                if not self.force or attempt:
                    raise
                self._warn(f"replaced '{printable(cache_path)}', which was not a feature cache (--force)")
                cache_path.unlink()
            except FileSystemError as exc:
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and cache_path.is_file():
                    return self._describe_read_only(cache_path, fps, feat_fp, exc)  # use it as it is
                raise  # a full disk: no copy, no rebuild; the same command goes on once there is space
            except CacheUnreadableError as exc:
                if attempt:
                    raise
                aside = self._move_aside(cache_path, exc)
                self._warn(f"{exc}; moved it to '{aside}' and rebuilding it (finished results are kept)")
        raise AssertionError("unreachable")  # pragma: no cover

    def _describe_read_only(self, cache_path: Path, fps, feat_fp: str, refused: FileSystemError) -> tuple[int, int]:
        """The cache cannot be opened for writing (read-only disk, no permission): an intact
        cache that holds every image is used as it is; otherwise the run stops, saying why."""
        try:
            cache = FeatureCache(cache_path, "r", lru=0)
        except ConfigError:
            raise refused from None  # not readable either: the first reason is the one to fix
        with cache:
            missing = [
                e.name
                for e in self.entries
                if e.name in fps and not cache.has(e.name, entry_fingerprint(fps[e.name], feat_fp))
            ]
        if missing:
            raise FileSystemError(
                cache_path,
                refused.errno or refused.cause,
                "write the feature cache",
                f"{len(missing)} image(s) need describing; the cache itself is intact",
            ) from None
        self._warn(f"the feature cache '{printable(cache_path)}' is read-only ({refused.cause}); read it as it is")
        return 0, sum(1 for e in self.entries if e.name in fps)

    def _describe(self, cache_path: Path, fps: dict[str, str], feat_fp: str) -> tuple[int, int]:
        with FeatureCache(cache_path, "a") as cache:
            todo = [
                e
                for e in self.entries
                if e.name in fps and not cache.has(e.name, entry_fingerprint(fps[e.name], feat_fp))
            ]
            cached = sum(1 for e in self.entries if e.name in fps) - len(todo)
            logger.info("features: %d images to describe, %d in the cache %s", len(todo), cached, cache_path)
            if not todo:
                return 0, cached
            from .runner import FeatureJob

            jobs = [FeatureJob(e.name, str(e.path)) for e in todo]
            self.runner.start()  # a cluster that cannot be used fails here, before any progress bar
            computed = 0
            with _bar(self.progress, total=len(jobs), desc="features", unit="img") as bar:
                for out in self.runner.features(jobs):
                    if out.error is not None:
                        logger.info("%s", out.error)  # reported once, by the caller (run.failed)
                        self.failed[out.name] = out.error
                    else:
                        if out.fingerprint is not None and out.fingerprint != fps[out.name]:
                            # the file changed after it was fingerprinted: the entry and the results
                            # carry the fingerprint of the bytes that were described, so a later run
                            # on the file as it is now never trusts them wrongly
                            self._warn(f"'{printable(out.name)}' changed while the batch read it; used the new content")
                            fps[out.name] = out.fingerprint
                        cache.put(out.name, out.features, fps[out.name], feat_fp, self.config.cache_dtype)
                        computed += 1
                        if computed % 32 == 0:
                            cache.flush()
                    bar.update(1)
        return computed, cached

    def _pairs(self, cache_path: Path) -> list[tuple[str, str]]:
        names = [e.name for e in self.entries]
        spec = self.spec
        if isinstance(spec, list):
            return spec  # checked by batch()
        if spec.mode == "exhaustive":
            return exhaustive_pairs(names)
        if spec.mode == "sequential":
            return sequential_pairs(names, spec.k)
        if spec.mode == "file":
            return read_pairs_file(spec.path, names)
        ok = [n for n in names if n not in self.failed]
        with FeatureCache(cache_path, "r", lru=0) as cache:
            descriptors = {n: cache.get(n).descriptors for n in ok}
        return shortlist_pairs(names, descriptors, spec.k)

    def _run(self) -> Iterator[PairResult]:
        t_start = time.perf_counter()
        tmpdir = None
        log: ResultsLog | None = None
        counts = {VERIFIED: 0, NO_HOMOGRAPHY: 0, ERROR: 0}
        state = dict(computed=0, skipped=0, pairs=0, f_computed=0, f_cached=0, match_s=0.0, complete=False)
        try:
            cache_path = self.cache_path
            if cache_path is None:
                if self.output is not None:
                    cache_path = default_cache_path(self.output)
                else:
                    tmpdir = tempfile.mkdtemp(prefix="featmatch-batch-")
                    cache_path = Path(tmpdir) / "features.h5"
            feat_fp = feature_fingerprint(self.config)
            opts_fp = match_fingerprint(self.config, feat_fp)
            # RESULTS first: its lock makes a second run on the same file stop before any work
            log = ResultsLog(self.output, force=self.force) if self.output is not None else None
            fps = self._fingerprints()
            pairs = None
            if isinstance(self.spec, list) or self.spec.mode != "shortlist":
                pairs = self._pairs(cache_path)  # known before the features: an interrupted run can say what is left
                state["pairs"] = len(pairs)
            state["f_computed"], state["f_cached"] = self._features(cache_path, fps, feat_fp)
            if pairs is None:  # a shortlist reads the descriptors
                with self._damage_ends_the_run(cache_path):
                    pairs = self._pairs(cache_path)
            state["pairs"] = len(pairs)

            todo: list[tuple[str, str]] = []
            resumed: list[PairResult] = []
            for a, b in pairs:
                prev = log.finished((a, b), (fps.get(a, ""), fps.get(b, "")), opts_fp) if log else None
                if prev is not None:
                    resumed.append(PairResult.from_json(prev, resumed=True))
                else:
                    todo.append((a, b))
            state["skipped"] = len(resumed)
            if log is not None and log.previous:
                logger.info("resuming %s: skipped %d finished pairs", self.output, len(resumed))
            for r in resumed:
                counts[r.status] += 1
                yield r

            if self.limit is not None:
                todo = todo[: self.limit]
            bad = [p for p in todo if p[0] in self.failed or p[1] in self.failed]
            good = [p for p in todo if p[0] not in self.failed and p[1] not in self.failed]

            def record(r: PairResult) -> PairResult:
                if log is not None:
                    log.write(r, (fps.get(r.image1, ""), fps.get(r.image2, "")), opts_fp)
                counts[r.status] += 1
                state["computed"] += 1
                return r

            for a, b in bad:
                why = self.failed.get(a) or self.failed.get(b)
                yield record(error_result(a, b, why))
            if good:
                self.runner.start()  # as above: connect before the bar
            t_match = time.perf_counter()
            with _bar(self.progress, total=len(good), desc="matching", unit="pair", smoothing=0.05) as bar:
                try:
                    if good:
                        with self._damage_ends_the_run(cache_path):
                            for r in self.runner.match(good, str(cache_path)):
                                yield record(r)
                                bar.update(1)
                finally:
                    state["match_s"] = time.perf_counter() - t_match
            state["complete"] = state["skipped"] + state["computed"] == state["pairs"]
        finally:
            self.runner.close()
            if log is not None:
                log.close()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            self.summary = BatchSummary(
                images=len(self.entries),
                images_failed=len(self.failed),
                features_computed=state["f_computed"],
                features_cached=state["f_cached"],
                pairs=state["pairs"],
                skipped=state["skipped"],
                computed=state["computed"],
                verified=counts[VERIFIED],
                no_homography=counts[NO_HOMOGRAPHY],
                errors=counts[ERROR],
                seconds=time.perf_counter() - t_start,
                match_seconds=state["match_s"],
                complete=state["complete"],
            )

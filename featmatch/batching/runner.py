"""Backends that run a batch's work: describe images, then match pairs.

``local`` runs in this process (``workers=1``) or in a pool of spawned processes; each worker
reads the features it needs from the HDF5 cache (read-only) and keeps the recent ones in
memory. ``ray`` runs the same two functions as Ray tasks: image bytes travel with the tasks
and features stay in Ray's object store, so the same code runs on one machine
(``ray.init()``) and on a cluster (``--ray-address``) whose nodes do not share a filesystem.
Only the driver writes the cache and the results.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import cv2

from ..errors import ConfigError, FeatmatchError, ImageReadError
from ..imageio import image_from_bytes, native_stderr_silenced, quiet_opencv
from ..pipeline import Features, Matcher
from .cache import FeatureCache, strip_features
from .config import BatchConfig, weights_id
from .raycluster import RayClusterError, check_cluster, core_log_level, parse_ray_address
from .results import NO_HOMOGRAPHY, VERIFIED, PairResult

logger = logging.getLogger(__name__)

#: What to tell a user whose Python has no Ray.
RAY_INSTALL_HINT = "pip install 'featmatch[ray]' (or: pip install ray)"
#: Tasks kept queued per worker: enough to keep workers busy, few enough to stop fast.
QUEUE_PER_WORKER = 4
#: Seconds without a finished Ray task after which the backend checks that the cluster still has CPUs.
STALL_CHECK_S = 10.0
#: What to do about a cluster without CPUs.
NO_CPU_HINT = "join a node with `ray start --address HEAD:PORT --num-cpus N`"
#: Most pairs per task: a pair often takes about a millisecond, as little as a task's overhead.
MAX_CHUNK = 16


def chunk_pairs(pairs: Sequence[tuple[str, str]], workers: int) -> list[list[tuple[str, str]]]:
    """Consecutive runs of pairs, one task each (consecutive pairs tend to share images).

    Chunks shrink for short lists so that every worker gets several tasks, and never exceed
    :data:`MAX_CHUNK` pairs, which bounds the work an interrupted run loses.
    """
    size = max(1, min(MAX_CHUNK, len(pairs) // (QUEUE_PER_WORKER * 2 * max(workers, 1))))
    return [list(pairs[i : i + size]) for i in range(0, len(pairs), size)]


@dataclass(frozen=True)
class FeatureJob:
    """An image to describe.

    Attributes:
        name: the image's batch name.
        path: its path (used to read it when ``data`` is None, and in error messages).
        data: the file's bytes, when the worker may not see the driver's files (Ray).
    """

    name: str
    path: str
    data: bytes | None = None


@dataclass(frozen=True)
class FeatureOutcome:
    """A described image, or why it could not be described.

    Attributes:
        name: the image's batch name.
        features: what matching needs (no detection image), or None on error.
        error: the one-line reason, or None.
        time_ms: load + detect + describe time.
    """

    name: str
    features: Features | None
    error: str | None = None
    time_ms: float = 0.0


class _NoDescriber:
    """Stands in for the descriptor in matching-only workers (no CNN is loaded to match)."""

    def __init__(self, device: str):
        self.device = device

    def __call__(self, keypoints):
        raise ConfigError("this matcher only matches cached features; it cannot describe images")


#: Per-process state of a worker: built matchers and open caches, reused across tasks.
_STATE: dict = {}


def _matcher(config: BatchConfig, describe: bool) -> Matcher:
    # The key holds the CNN weights' recorded hash: a process that outlives a weight file
    # (an API session, a Ray worker) must not keep describing with the old weights.
    key = ("matcher", config, describe, weights_id(config.descriptor) if describe and config.is_cnn else None)
    if key not in _STATE:
        common = dict(detect=config.detect, match=config.match, geometry=config.geometry)
        if describe:
            m = Matcher(config.descriptor, device=config.device, precision=config.precision, **common)
        else:
            m = Matcher(
                config.descriptor, describer=_NoDescriber("cuda" if config.device == "cuda" else "cpu"), **common
            )
        _STATE[key] = m
        _cap_torch_threads()
    return _STATE[key]


def _cap_torch_threads() -> None:
    """Apply this worker's thread cap to torch once a CNN descriptor has imported it."""
    if "threads" in _STATE and "torch" in sys.modules and "torch_threads_before" not in _STATE:
        import torch

        _STATE["torch_threads_before"] = torch.get_num_threads()
        torch.set_num_threads(_STATE["threads"])


def _decode(data: bytes, path: str):
    """The file's bytes as an :class:`~featmatch.imageio.Image`, decoded as ``match`` decodes files.

    What C decoders print on stderr (libjpeg's ``Corrupt JPEG data`` ...) is swallowed: the
    image's one-line outcome is what the user sees.
    """
    with native_stderr_silenced():
        return image_from_bytes(data, path)


def compute_features(job: FeatureJob, config: BatchConfig) -> FeatureOutcome:
    """Load, detect and describe one image (runs in a worker).

    Both backends decode the file's bytes the same way, so their features are identical.
    An unusable image is an outcome with ``error``; a missing model raises.
    """
    t0 = time.perf_counter()
    try:
        data = job.data
        if data is None:
            try:
                data = Path(job.path).read_bytes()
            except OSError as exc:
                raise ImageReadError(job.path, exc.strerror or str(exc)) from None
        image = _decode(data, job.path)
        del data
        feats = _matcher(config, describe=True).features(image)
        del image
    except ImageReadError as exc:
        return FeatureOutcome(job.name, None, str(exc), (time.perf_counter() - t0) * 1000)
    return FeatureOutcome(job.name, strip_features(feats, config.cache_dtype), None, (time.perf_counter() - t0) * 1000)


def match_pair(pair: tuple[str, str], f1: Features, f2: Features, config: BatchConfig) -> PairResult:
    """Match two described images and estimate the homography (runs in a worker)."""
    t0 = time.perf_counter()
    r = _matcher(config, describe=False).match_features(f1, f2)
    inl = r.matches[r.inliers] if (config.save_matches and r.ok) else None
    return PairResult(
        image1=pair[0],
        image2=pair[1],
        status=VERIFIED if r.ok else NO_HOMOGRAPHY,
        homography=r.homography,
        num_matches=len(r.matches),
        num_inliers=r.num_inliers if r.ok else 0,
        num_keypoints=(len(f1), len(f2)),
        reason=r.reason,
        time_ms=(time.perf_counter() - t0) * 1000,
        inlier_matches=inl,
    )


def _cache(path: str) -> FeatureCache:
    key = ("cache", path)
    if key not in _STATE:
        _STATE[key] = FeatureCache(path, "r", lru=256)
    return _STATE[key]


def match_cached(pairs: list[tuple[str, str]], cache_path: str, config: BatchConfig) -> list[PairResult]:
    """:func:`match_pair` on a chunk of pairs, features read from the cache (local workers)."""
    cache = _cache(cache_path)
    return [match_pair(p, cache.get(p[0]), cache.get(p[1]), config) for p in pairs]


def set_threads(n: int) -> dict:
    """Cap the threads of OpenCV, FAISS (OpenMP) and torch (if loaded); return the old values."""
    old = {"cv2": cv2.getNumThreads()}
    cv2.setNumThreads(n)
    with contextlib.suppress(ImportError):
        import faiss

        old["faiss"] = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(n)
    if "torch" in sys.modules:
        import torch

        old["torch"] = torch.get_num_threads()
        torch.set_num_threads(n)
    from ..engines import onnx_engine  # ONNX Runtime sessions built from now on use n threads

    old["onnx"] = onnx_engine.set_threads(n)
    return old


def _restore_threads(old: dict) -> None:
    cv2.setNumThreads(old["cv2"])
    if "onnx" in old:
        from ..engines import onnx_engine

        onnx_engine.set_threads(old["onnx"])
    if "faiss" in old:
        import faiss

        faiss.omp_set_num_threads(old["faiss"])
    if "torch" in old:
        import torch

        torch.set_num_threads(old["torch"])


def _single_threaded() -> None:
    """Once per Ray worker process: one thread for OpenCV, FAISS and torch (Ray gives each task one CPU)."""
    if "threads" not in _STATE:
        quiet_opencv()
        set_threads(1)
        _STATE["threads"] = 1


def ray_compute_features(job: FeatureJob, config: BatchConfig) -> FeatureOutcome:
    """:func:`compute_features` as a Ray task."""
    _single_threaded()
    return compute_features(job, config)


def ray_match_chunk(pairs: list[tuple[str, str]], config: BatchConfig, *outcomes: FeatureOutcome) -> list[PairResult]:
    """:func:`match_pair` on a chunk of pairs as one Ray task.

    The features of the chunk's images come as separate arguments (Ray resolves object
    references only at the top level of a task's arguments).
    """
    _single_threaded()
    feats = {o.name: o.features for o in outcomes}
    return [match_pair(p, feats[p[0]], feats[p[1]], config) for p in pairs]


def _init_worker(threads: int) -> None:
    """Pool-worker start: die with the driver (Linux), leave Ctrl-C to the driver, use ``threads`` threads.

    Ctrl-C reaches every process of the terminal's group; the driver alone handles it, and
    shuts the pool down in order (a worker that died of it would break the pool mid-task).
    """
    import signal

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_opencv()
    set_threads(threads)
    _STATE["threads"] = threads


class LocalBackend:
    """This process (``workers=1``) or a pool of ``workers`` spawned processes.

    Args:
        config: what to compute.
        workers: processes, one thread each.

    One thread per worker: parallelism comes from the workers. Small per-pair FAISS and OpenCV
    calls gain nothing from threads, and OpenMP threads that wait for each other on a loaded
    machine make ``workers=1`` several times slower than a single thread (measured).
    """

    name = "local"

    def __init__(self, config: BatchConfig, workers: int):
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.config = config
        self.workers = workers
        self.threads = 1
        self._pool: ProcessPoolExecutor | None = None
        self._old_threads: dict | None = None

    def start(self) -> None:
        if self.workers == 1:
            if self._old_threads is None:
                self._old_threads = set_threads(self.threads)
                _STATE["threads"] = self.threads
        elif self._pool is None:
            import multiprocessing

            # spawn, not fork: the driver may already run OpenMP (FAISS) threads, which do not survive a fork.
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.threads,),
            )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._old_threads is not None:
            before = _STATE.pop("torch_threads_before", None)
            if before is not None:  # torch was imported during the run
                import torch

                torch.set_num_threads(before)
            _restore_threads(self._old_threads)  # after: it knows torch's setting if torch was there before
            self._old_threads = None
            _STATE.pop("threads", None)
            for key in [k for k in _STATE if isinstance(k, tuple) and k[0] == "matcher"]:
                del _STATE[key]  # frees a CNN; the next run builds what it needs

    def _stream(self, fn, argsets: Iterable[tuple]) -> Iterator:
        """Run ``fn(*args)`` for each ``args`` in the pool, a bounded queue at a time, in completion order."""
        pending: set[Future] = set()
        it = iter(argsets)
        limit = QUEUE_PER_WORKER * self.workers
        try:
            while True:
                for args in it:
                    pending.add(self._pool.submit(fn, *args))
                    if len(pending) >= limit:
                        break
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def features(self, jobs: Sequence[FeatureJob]) -> Iterator[FeatureOutcome]:
        self.start()
        if self._pool is None:
            for job in jobs:
                yield compute_features(job, self.config)
        else:
            yield from self._stream(compute_features, ((job, self.config) for job in jobs))

    def match(self, pairs: Sequence[tuple[str, str]], cache_path: str) -> Iterator[PairResult]:
        self.start()
        if self._pool is None:
            with FeatureCache(cache_path, "r", lru=256) as cache:
                for a, b in pairs:
                    yield match_pair((a, b), cache.get(a), cache.get(b), self.config)
        else:
            chunks = chunk_pairs(pairs, self.workers)
            for results in self._stream(match_cached, ((c, str(cache_path), self.config) for c in chunks)):
                yield from results


def import_ray():
    """Import Ray, or explain in one line how to install it.

    Raises:
        ConfigError: Ray is not installed (exit code 2).
    """
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--backend ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


class RayBackend:
    """The same work as Ray tasks, on a local Ray instance or a running cluster.

    Args:
        config: what to compute.
        workers: CPUs of the local instance this backend starts (ignored with ``address``).
        address: a running cluster (``host:6379``, ``ray://host:10001`` or ``auto``, see
            :mod:`.raycluster`); None: ``RAY_ADDRESS`` if set, else a local instance, unless Ray
            is already initialized in this process.

    Cluster nodes need featmatch installed in the same environment as the driver. A bad
    address raises :class:`ConfigError` here; an unusable cluster raises
    :class:`~.raycluster.RayClusterError` from :meth:`start`, within seconds.
    """

    name = "ray"

    def __init__(self, config: BatchConfig, workers: int | None = None, address: str | None = None):
        if address is None and os.environ.get("RAY_ADDRESS"):
            address = os.environ["RAY_ADDRESS"]  # what ray.init() itself would connect to
        self._address = None if address is None else parse_ray_address(address)
        self.ray = import_ray()
        self.config = config
        self.workers = workers
        self.address = address
        self._owns = False
        self._refs: dict = {}
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        ray = self.ray
        if not ray.is_initialized():
            verbose = logging.getLogger("featmatch").isEnabledFor(logging.INFO)  # featmatch -v
            # Ray's notices (token authentication on, objects recovered after a node's loss) are
            # not the user's business unless -v: featmatch says in one line what went wrong.
            kwargs = dict(
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING if verbose else logging.ERROR,
            )
            if self._address is None:
                kwargs["num_cpus"] = self.workers or os.cpu_count() or 1
                target = None
            else:
                target = check_cluster(self._address)  # seconds, one line on failure
                if self._address.kind == "client" and not verbose:
                    import warnings  # Ray Client warns when tasks carry megabytes: image bytes do, by design

                    warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.util\.client")
            try:
                # The driver's C++ core logs on stderr too (objects recovered after a node's loss).
                with core_log_level(None if verbose or target is None else "fatal"):
                    ray.init(address=target, **kwargs)
            except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
                cause = exc.__cause__
                why = f"{exc}" + (f" ({type(cause).__name__}: {str(cause).strip().splitlines()[0]})" if cause else "")
                where = (
                    "start a local Ray instance"
                    if target is None
                    else f"connect to the Ray cluster at '{self.address}'"
                )
                raise RayClusterError(f"cannot {where}: {' '.join(why.split())[:400]}") from None
            self._owns = True
        self._features_task = ray.remote(num_cpus=1)(ray_compute_features)
        self._match_task = ray.remote(num_cpus=1)(ray_match_chunk)
        self._config_ref = ray.put(self.config)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            self.close()
            raise RayClusterError(f"the Ray cluster at '{self.address}' has no CPUs: {NO_CPU_HINT}")
        self._cpus = cpus
        self._limit = max(2, QUEUE_PER_WORKER * cpus)
        logger.info("ray: %s, %d CPUs", "local instance" if self.address is None else self.address, cpus)
        self._started = True

    def close(self) -> None:
        self._refs.clear()
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False
        self._started = False

    def _get(self, refs):
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, FeatmatchError):
                raise cause from None
            raise
        except self.ray.exceptions.RayError as exc:  # the cluster failed (a node lost beyond Ray's retries)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise RayClusterError(
                f"the Ray cluster lost work ({type(exc).__name__}: {first}); "
                "run the same command again to continue (finished pairs are kept)"
            ) from None

    def _stream(self, submit, items: Iterable) -> Iterator:
        ray = self.ray
        pending: list = []
        it = iter(items)
        try:
            while True:
                for item in it:
                    pending.append(submit(item))
                    if len(pending) >= self._limit:
                        break
                if not pending:
                    return
                ready, pending = ray.wait(pending, num_returns=1, timeout=STALL_CHECK_S)
                if not ready:  # nothing finished for a while: still anywhere to run?
                    if self.ray.cluster_resources().get("CPU", 0) < 1:
                        raise RayClusterError(
                            f"the Ray cluster has no CPUs left (its nodes were lost): {NO_CPU_HINT}; "
                            "then run the same command again to continue (finished pairs are kept)"
                        )
                    continue
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0) if pending else ([], [])
                yield from self._get(ready + more)
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)

    def features(self, jobs: Sequence[FeatureJob]) -> Iterator[FeatureOutcome]:
        self.start()

        def submit(job: FeatureJob):
            data = job.data if job.data is not None else Path(job.path).read_bytes()
            ref = self._features_task.remote(FeatureJob(job.name, job.path, data), self._config_ref)
            self._refs[job.name] = ref
            return ref

        for outcome in self._stream(submit, jobs):
            if outcome.error is not None:
                self._refs.pop(outcome.name, None)
            yield outcome

    def match(self, pairs: Sequence[tuple[str, str]], cache_path: str) -> Iterator[PairResult]:
        self.start()
        ray = self.ray
        with FeatureCache(cache_path, "r", lru=0) as cache:
            for name in {n for p in pairs for n in p} - set(self._refs):
                self._refs[name] = ray.put(FeatureOutcome(name, cache.get(name)))

        def submit(chunk):
            names = list(dict.fromkeys(n for p in chunk for n in p))
            return self._match_task.remote(chunk, self._config_ref, *(self._refs[n] for n in names))

        for results in self._stream(submit, chunk_pairs(pairs, self._cpus)):
            yield from results

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
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

import cv2

from ..errors import ConfigError, FeatmatchError, ImageReadError
from ..imageio import image_from_bytes, native_stderr_silenced, quiet_opencv, read_image_file
from ..pipeline import Features, Matcher
from .cache import FeatureCache, strip_features
from .config import BatchConfig, weights_id
from .inputs import content_fingerprint
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
        fingerprint: :func:`~featmatch.batching.inputs.content_fingerprint` of the very bytes
            that were described (a file replaced after the driver fingerprinted it must not
            be cached under the old file's fingerprint).
    """

    name: str
    features: Features | None
    error: str | None = None
    time_ms: float = 0.0
    fingerprint: str | None = None


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
        data = job.data if job.data is not None else read_image_file(job.path)
        fingerprint = content_fingerprint(data)
        image = _decode(data, job.path)
        del data
        feats = _matcher(config, describe=True).features(image)
        del image
    except ImageReadError as exc:
        return FeatureOutcome(job.name, None, str(exc), (time.perf_counter() - t0) * 1000)
    ms = (time.perf_counter() - t0) * 1000
    return FeatureOutcome(job.name, strip_features(feats, config.cache_dtype), None, ms, fingerprint)


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
        num_inliers=r.num_inliers,  # without a homography: the rejected model's, as the reason says
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


def _init_worker(threads: int, driver: int | None = None) -> None:
    """Pool-worker start: die with the driver (Linux), leave Ctrl-C to the driver, use ``threads`` threads.

    Ctrl-C reaches every process of the terminal's group; the driver alone handles it, and
    shuts the pool down in order (a worker that died of it would break the pool mid-task).
    A driver killed (``kill -9``) while this worker was still starting is caught here: the
    death signal only covers a parent alive when it is set, so the parent is checked after.
    """
    import signal

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if driver is not None and os.getppid() != driver:  # the driver died before the line above
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_opencv()
    set_threads(threads)
    _STATE["threads"] = threads


def worker_context() -> multiprocessing.context.BaseContext:
    """A multiprocessing context whose spawned workers do not run the caller's ``__main__`` script.

    multiprocessing's ``spawn`` makes every worker import the main script again (as
    ``__mp_main__``), so that functions defined there can be unpickled. A plain script that
    calls :func:`featmatch.batch` at its top level, without an ``if __name__ == "__main__":``
    guard, then re-runs itself in each worker and breaks the pool. The workers only ever run
    featmatch's own functions, so they are started without the main script (the same spawn
    otherwise: a fresh interpreter, the driver's ``sys.path`` and working folder), on Linux and
    macOS alike. Elsewhere (Windows) plain spawn is used, where the guard is needed.
    """
    if os.name != "posix":  # pragma: no cover
        return multiprocessing.get_context("spawn")
    return _MainlessSpawnContext()


_PREP_LOCK = threading.Lock()


def _mainless_popen(process_obj):
    """Start ``process_obj`` as spawn does, with preparation data that names no main module."""
    from multiprocessing import popen_spawn_posix, spawn

    original = spawn.get_preparation_data
    caller = threading.get_ident()

    def without_main(name):
        data = original(name)
        if threading.get_ident() == caller:  # another thread spawning meanwhile gets the usual data
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    # A worker ignores Ctrl-C from its first instruction: Ctrl-C reaches the terminal's whole
    # process group, and the driver alone stops the run in order. Before, a worker still importing
    # featmatch died of it. Inside _launching_workers SIGINT is blocked in this thread, and the
    # worker inherits that mask across exec, which is enough. Only outside it is SIGINT ignored
    # here for the spawn (an ignored signal stays ignored across exec): an ignored Ctrl-C is lost
    # to the driver too, and a Ctrl-C in that window let the run finish with exit 0.
    blocked = hasattr(signal, "pthread_sigmask") and signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    ignore = threading.current_thread() is threading.main_thread() and not blocked  # only there can it change
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore else None
    with _PREP_LOCK:
        spawn.get_preparation_data = without_main
        try:
            return popen_spawn_posix.Popen(process_obj)
        finally:
            spawn.get_preparation_data = original
            if ignore:  # None: a handler installed outside Python, which cannot be put back; Python's default then
                signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


class _MainlessSpawnProcess(multiprocessing.context.SpawnProcess):
    _start_method = "spawn"

    @staticmethod
    def _Popen(process_obj):  # noqa: N802 (multiprocessing's name)
        return _mainless_popen(process_obj)


class _MainlessSpawnContext(multiprocessing.context.SpawnContext):
    Process = _MainlessSpawnProcess


@contextlib.contextmanager
def _launching_workers():
    """Around a call that may start worker processes (the pool's ``submit``).

    * SIGINT is blocked in this thread: a process inherits its parent's blocked signals
      across ``exec``, so a worker starts with Ctrl-C blocked and a Ctrl-C to the terminal's
      process group while it still imports is not a traceback in every worker (its
      initializer then ignores SIGINT for good);
    * a Ctrl-C or SIGTERM that reaches the driver meanwhile (through another thread) is held
      and re-raised afterwards: an interrupt between the start of a worker and the hand-over
      of its start-up data would leave that worker to fail on a half-written pipe;
    * the worker's stderr is the null device: a driver killed (``kill -9``) while a worker
      starts would otherwise leave that worker's ``EOFError`` traceback on the terminal.
      Workers report every outcome through their results, never on stderr.
    """
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    held: list[int] = []
    before = {}
    if main:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in before:
            signal.signal(sig, lambda signum, frame: held.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
    saved = None
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):
            signal.raise_signal(sig)


def _start_resource_tracker_quietly() -> None:
    """Start multiprocessing's helper process (it removes the pool's semaphores once every
    process that used them has ended) with its stderr on the null device.

    After a ``kill -9`` of the driver it has nothing to say but a "leaked semaphore objects"
    warning, which it would print on the user's terminal after the shell prompt came back;
    its clean-up is the same either way.
    """
    if not sys.platform.startswith("linux"):
        return
    from multiprocessing import resource_tracker

    if getattr(resource_tracker._resource_tracker, "_fd", None) is not None:
        return  # already running (an earlier pool of this process)
    with contextlib.suppress(OSError, AttributeError, ValueError), _launching_workers():
        resource_tracker.ensure_running()


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
            # spawn, not fork: the driver may already run OpenMP (FAISS) threads, which do not survive a fork.
            _start_resource_tracker_quietly()
            with _launching_workers():
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=worker_context(),
                    initializer=_init_worker,
                    initargs=(self.threads, os.getpid()),
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
                    with _launching_workers():  # a submit may start a worker process
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


#: A watcher of the driver, in its own small process: when the driver ends, even by ``kill -9``,
#: it kills what remains of the local Ray instance the driver started (Ray's dashboard and
#: runtime-env agents outlive a killed driver by minutes otherwise). It only ever kills Ray's
#: processes that it saw descend from the driver, checked by start time (no reused process id).
_REAPER = r"""
import os, signal, sys, time
driver = int(sys.argv[1])
me = os.getpid()
ended = []
signal.signal(signal.SIGTERM, lambda *a: ended.append(1))
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    import ctypes
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
def started(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
def is_ray(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ray" in f.read()
    except OSError:
        return False
def tree(pids):
    seen, todo = {}, list(pids)
    while todo:
        pid = todo.pop()
        when = started(pid)
        if pid in seen or when is None or pid == me:
            continue
        seen[pid] = when
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return seen
known = {}
while not ended and os.getppid() == driver:
    known = {p: w for p, w in known.items() if started(p) == w}
    known.update((p, w) for p, w in tree([driver, *known]).items() if p != driver and is_ray(p))
    time.sleep(0.5)
for pid, when in known.items():
    if started(pid) == when:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def _start_ray_reaper():
    """Start :data:`_REAPER` for the Ray processes this driver starts (Linux only); its ``Popen`` or None."""
    import subprocess

    if not sys.platform.startswith("linux"):
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the terminal's group is not for it
        )
    except OSError:
        return None


def _signal_handlers() -> dict:
    """This process's SIGINT and SIGTERM handlers (main thread only: elsewhere none can change)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers: dict) -> None:
    """Put back what :func:`_signal_handlers` saw, so that SIGTERM still stops a run like Ctrl-C
    (finished pairs kept, exit code 130, Ray shut down by :meth:`RayBackend.close`)."""
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


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
        self._reaper = None

    def start(self) -> None:
        if self._started:
            return
        ray = self.ray
        # Ray's start-up notices (e.g. its token-authentication warning) are not featmatch's
        # business: shown with -v only (ray.init sets its "ray" logger's level).
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
            if self._address is None:  # started first: a kill during ray.init leaves nothing either
                self._reaper = _start_ray_reaper()
            handlers = _signal_handlers()  # ray.init installs its own SIGTERM handler: exit 15 and a stack dump
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
            finally:
                _restore_signal_handlers(handlers)
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
        if self._reaper is not None:  # Ray is shut down: nothing left for it to watch
            self._reaper.kill()
            self._reaper.wait()
            self._reaper = None

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
            try:
                data = job.data if job.data is not None else read_image_file(job.path)
            except ImageReadError as exc:  # the outcome without a task
                return self.ray.put(FeatureOutcome(job.name, None, str(exc)))
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

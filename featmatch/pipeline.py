"""The pipeline: load -> detect -> describe -> match -> homography, composed from the stages.

:class:`Matcher` holds the built stages (so a CNN is loaded once for many pairs) and keeps no
state between calls. The module-level functions are the short forms of the Python API.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from .descriptors import (
    DEFAULT_DESCRIPTOR,
    SIFT_DESCRIPTORS,
    build_descriptor,
    check_descriptor_name,
    resolve_device,
)
from .detect import DetectConfig, Keypoints, detect
from .engines import have_module
from .errors import ConfigError
from .geometry import GeometryConfig, HomographyEstimate, for_simulated_views
from .geometry import estimate_homography as fit_homography
from .imageio import Image, ImageLike, load_image
from .match import MatchConfig, Matches, match_descriptors


@dataclass(frozen=True)
class Features:
    """Keypoints and descriptors of one image.

    Attributes:
        keypoints: the detected :class:`~featmatch.detect.Keypoints` (full-resolution ``xy``).
        descriptors: ``(N, 128)`` float32.
        image_shape: ``(H, W)`` of the full-resolution image.
    """

    keypoints: Keypoints
    descriptors: np.ndarray
    image_shape: tuple[int, int]

    @property
    def xy(self) -> np.ndarray:
        return self.keypoints.xy

    def __len__(self) -> int:
        return len(self.keypoints)


@dataclass(frozen=True)
class MatchResult:
    """The answer for one image pair.

    Attributes:
        homography: ``(3, 3)`` mapping pixel ``(x, y, 1)`` of image 1 (full resolution, origin
            at the top-left pixel centre) to image 2, or None when none could be trusted.
        keypoints1, keypoints2: ``(N1, 2)`` and ``(N2, 2)`` pixel coordinates.
        matches: ``(M, 2)`` index pairs into keypoints1 / keypoints2.
        inliers: ``(M,)`` bool mask of the matches consistent with the homography.
        descriptor: the descriptor's name.
        timings_ms: per-stage wall time in milliseconds (``load``, ``detect``, ``describe``,
            ``match``, ``geometry``, ``total``).
        reason: why ``homography`` is None (None on success).
        shapes: ``((H1, W1), (H2, W2))``.
        rejected_inliers: without a homography, the inliers of the best model the estimator
            found before a check rejected it (the count the reason states); None otherwise.
        engine: for a CNN descriptor, the engine that described
            (``{"name", "precision", "variant", "device", "why"}``); None for SIFT.
    """

    homography: np.ndarray | None
    keypoints1: np.ndarray
    keypoints2: np.ndarray
    matches: np.ndarray
    inliers: np.ndarray
    descriptor: str
    timings_ms: dict = field(default_factory=dict)
    reason: str | None = None
    shapes: tuple = ((0, 0), (0, 0))
    engine: dict | None = None
    rejected_inliers: int | None = None

    @property
    def ok(self) -> bool:
        return self.homography is not None

    @property
    def num_inliers(self) -> int:
        """Inliers of the homography; without one, those of the best model the checks rejected
        (one count everywhere: the summary, ``--json``, batch's lines and the reason agree)."""
        if self.homography is None and self.rejected_inliers is not None:
            return int(self.rejected_inliers)
        return int(self.inliers.sum())

    def to_json(self) -> dict:
        """The ``featmatch match --json`` object."""
        return {
            "homography": None if self.homography is None else [[float(v) for v in row] for row in self.homography],
            "keypoints": [int(len(self.keypoints1)), int(len(self.keypoints2))],
            "matches": int(len(self.matches)),
            "inliers": self.num_inliers,
            "descriptor": self.descriptor,
            "timings_ms": {k: round(float(v), 2) for k, v in self.timings_ms.items()},
            "reason": self.reason,
            "engine": self.engine,
        }


#: :meth:`Matcher.features_many` detects at most this many images ahead of the one being described.
FEATURES_AHEAD = 2
#: Keypoints of simulated views closer than this (detection pixels) count as one image point.
DISTINCT_RADIUS_PX = 4.0


def _has_views(kps1: Keypoints, kps2: Keypoints) -> bool:
    return kps1.frame is not None or kps2.frame is not None


def match_keypoints(
    kps1: Keypoints, desc1: np.ndarray, kps2: Keypoints, desc2: np.ndarray, config: MatchConfig, device: str = "cpu"
) -> Matches:
    """Stage 4 for two described images; with simulated views the ratio test looks past copies
    of one image point (:func:`featmatch.match.match_descriptors`'s ``xy2``)."""
    views = _has_views(kps1, kps2)
    return match_descriptors(
        desc1,
        desc2,
        config,
        device,
        xy2=kps2.xy if views else None,
        distinct_radius=DISTINCT_RADIUS_PX * kps2.scale,
    )


def fit_matches(
    kps1: Keypoints, kps2: Keypoints, m: Matches, shape1: tuple[int, int], config: GeometryConfig
) -> HomographyEstimate:
    """Stage 5 on matched keypoints; with simulated views the stricter checks of
    :func:`featmatch.geometry.for_simulated_views` apply and each pair of positions counts once."""
    views = _has_views(kps1, kps2)
    return fit_homography(
        kps1.xy[m.pairs[:, 0]],
        kps2.xy[m.pairs[:, 1]],
        shape1,
        for_simulated_views(config) if views else config,
        distinct_px=DISTINCT_RADIUS_PX * max(kps1.scale, kps2.scale) if views else 0.0,
    )


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


class Matcher:
    """A reusable two-image matcher.

    Args:
        descriptor: a name from :data:`featmatch.descriptors.DESCRIPTORS`.
        detect: detector options.
        match: matcher options.
        geometry: homography options.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: CNN precision (see :class:`featmatch.descriptors.CNNDescriptor`).
        describer: a ready descriptor callable (overrides ``descriptor``'s lookup; tests
            use it to plug in a random-weight CNN).
        background: build a CNN descriptor (choose the engine, open the ONNX Runtime session,
            or import torch and fold the weights) in a background thread, so that it overlaps
            with loading and detecting the first images. Errors of the build (missing
            weights, no CUDA) are then raised by the first call that describes.
    """

    def __init__(
        self,
        descriptor: str = DEFAULT_DESCRIPTOR,
        detect: DetectConfig = DetectConfig(),
        match: MatchConfig = MatchConfig(),
        geometry: GeometryConfig = GeometryConfig(),
        device: str = "auto",
        precision: str = "auto",
        describer=None,
        background: bool = False,
    ):
        self.descriptor = descriptor
        self._describer = None
        self._build: Future | None = None
        self._heavy_build = False
        self._device = "cpu"
        sift = descriptor in SIFT_DESCRIPTORS
        # the detection threads also cut the patches of a learned descriptor
        self._cuts_patches = not sift if describer is None else hasattr(describer, "describe_patches")
        if sift and describer is None:
            detect = dataclasses.replace(detect, with_sift=True)  # one scale space for both stages
        self.detect_config = detect
        self.match_config = match
        self.geometry_config = geometry
        if describer is not None:
            self._describer = describer
            self._device = getattr(describer, "device", "cpu")
        elif sift:
            self._describer = build_descriptor(descriptor)
            self._device = "cpu" if device == "auto" else resolve_device(device)
        elif background:
            check_descriptor_name(descriptor)
            # an ONNX Runtime engine on the CPU builds in ~0.1 s; importing torch takes seconds
            self._heavy_build = device == "cuda" or not have_module("onnxruntime")
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featmatch-model")
            self._build = pool.submit(_build_in_background, descriptor, device=device, precision=precision)
            pool.shutdown(wait=False)
        else:
            self._describer = build_descriptor(descriptor, device=device, precision=precision)
            self._device = self._describer.device

    @property
    def describer(self):
        """The descriptor callable (waits for a background build to finish)."""
        if self._describer is None:
            self._describer = self._build.result()  # re-raises the build's error
            self._device = self._describer.device
        return self._describer

    @property
    def engine(self) -> dict | None:
        """The CNN's engine choice (``EngineChoice.to_json()``), None for SIFT or a plain callable."""
        if self._describer is None and self.descriptor in SIFT_DESCRIPTORS:
            return None
        choice = getattr(self.describer, "choice", None)
        return choice.to_json() if choice is not None else None

    @property
    def device(self) -> str:
        """Where descriptors are computed and matched (``cpu`` or ``cuda``)."""
        if self._describer is None:
            self.describer  # noqa: B018 - resolve the background build
        return self._device

    def detect(self, image: ImageLike | Image) -> Keypoints:
        img = image if isinstance(image, Image) else load_image(image)
        return detect(img.gray, self.detect_config)

    def features(self, image: ImageLike | Image, detect_config: DetectConfig | None = None) -> Features:
        """Keypoints and descriptors of one image.

        Args:
            image: a path, an array or a loaded :class:`~featmatch.imageio.Image`.
            detect_config: detect with these options instead of the matcher's own (the
                stitcher's lower registration resolution); ``with_sift`` is kept as the
                descriptor needs it.
        """
        img = image if isinstance(image, Image) else load_image(image)
        kps = detect(img.gray, self._detect_options(detect_config))
        return Features(kps, self.describer(kps), img.shape)

    def features_many(
        self, images: Sequence[Image], detect_configs: Sequence[DetectConfig | None] | None = None
    ) -> Iterator[Features]:
        """:meth:`features` of many loaded images, in order, detection running ahead on two threads.

        OpenCV's DoG and the patch sampling release the GIL but use one core each for the most
        part: two images are detected (and cut) at once while the descriptor network, here,
        describes the one before. At most :data:`FEATURES_AHEAD` images wait, described or not.
        """
        configs = list(detect_configs) if detect_configs is not None else [None] * len(images)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="featmatch-detect") as pool:
            pending: deque = deque()
            for k, img in enumerate(images):
                pending.append((img, pool.submit(self._detect_and_cut, img, configs[k])))
                if len(pending) > FEATURES_AHEAD:
                    yield self._described(*pending.popleft())
            while pending:
                yield self._described(*pending.popleft())

    def _described(self, img: Image, job: Future) -> Features:
        kps, patches = job.result()
        return Features(kps, self._describe(kps, patches), img.shape)

    def _detect_options(self, detect_config: DetectConfig | None) -> DetectConfig:
        if detect_config is None:
            return self.detect_config
        return dataclasses.replace(detect_config, with_sift=self.detect_config.with_sift)

    def match_features(self, f1: Features, f2: Features, timings: dict | None = None) -> MatchResult:
        """Match two already described images and estimate the homography."""
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        m = match_keypoints(f1.keypoints, f1.descriptors, f2.keypoints, f2.descriptors, self.match_config, self.device)
        timings["match"] = _ms(t0)
        t0 = time.perf_counter()
        est = fit_matches(f1.keypoints, f2.keypoints, m, f1.image_shape, self.geometry_config)
        timings["geometry"] = _ms(t0)
        reason = est.reason
        if min(len(f1), len(f2)) == 0:
            which = "both images" if len(f1) == len(f2) == 0 else ("image 1" if len(f1) == 0 else "image 2")
            reason = f"no keypoints found in {which} (textureless or too small?)"
        return MatchResult(
            homography=est.H,
            keypoints1=f1.xy,
            keypoints2=f2.xy,
            matches=m.pairs,
            inliers=est.inliers,
            descriptor=self.descriptor,
            timings_ms=timings,
            reason=reason,
            shapes=(f1.image_shape, f2.image_shape),
            engine=self.engine,
            rejected_inliers=est.num_inliers if est.H is None else None,
        )

    def _detect_and_cut(
        self, img: Image, detect_config: DetectConfig | None = None
    ) -> tuple[Keypoints, np.ndarray | None]:
        """Keypoints of one image and, for the CNN descriptors, their patches (None otherwise)."""
        kps = detect(img.gray, self._detect_options(detect_config))
        if not self._cuts_patches or len(kps) == 0:
            return kps, None
        from .patches import patches_for

        return kps, patches_for(kps)

    def _describe(self, kps: Keypoints, patches: np.ndarray | None) -> np.ndarray:
        if patches is None:
            return self.describer(kps)
        return self.describer.describe_patches(patches)

    def match(self, image1: ImageLike | Image, image2: ImageLike | Image) -> MatchResult:
        """Estimate the homography from ``image1`` to ``image2`` (paths, arrays or Images)."""
        t_start = time.perf_counter()
        timings: dict = {}
        t0 = time.perf_counter()
        img1 = image1 if isinstance(image1, Image) else load_image(image1)
        img2 = image2 if isinstance(image2, Image) else load_image(image2)
        timings["load"] = _ms(t0)
        t0 = time.perf_counter()
        p1 = p2 = None
        if self._describer is None and self._heavy_build:
            # The CNN is still being built in the background (importing torch keeps one core
            # busy, and it is the longer job): detect on the other core, one image after the other.
            cv_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                k1, k2 = (detect(im.gray, self.detect_config) for im in (img1, img2))
            finally:
                cv2.setNumThreads(cv_threads)
        else:
            # OpenCV releases the GIL while detecting and sampling: the two images run on two
            # cores, each thread also cutting its image's patches for a CNN descriptor.
            with ThreadPoolExecutor(max_workers=2) as pool:
                (k1, p1), (k2, p2) = pool.map(self._detect_and_cut, (img1, img2))
        timings["detect"] = _ms(t0)
        if self._describer is None:  # the CNN is still being built in the background
            t0 = time.perf_counter()
            self.describer  # noqa: B018
            timings["model"] = _ms(t0)
        t0 = time.perf_counter()
        f1 = Features(k1, self._describe(k1, p1), img1.shape)
        f2 = Features(k2, self._describe(k2, p2), img2.shape)
        timings["describe"] = _ms(t0)
        result = self.match_features(f1, f2, timings)
        timings["total"] = _ms(t_start)
        return result


def _build_in_background(descriptor: str, **options):
    """:func:`build_descriptor`, then the FAISS import that matching needs next (about 25 ms):
    both overlap with detection."""
    describer = build_descriptor(descriptor, **options)
    try:
        import faiss  # noqa: F401
    except ImportError:  # matching says what is missing
        pass
    return describer


def split_options(options: dict) -> dict:
    """Map flat keyword options onto the stage configs; unknown names are an error."""
    groups = {"detect": DetectConfig, "match": MatchConfig, "geometry": GeometryConfig}
    fields = {name: set(cls.__dataclass_fields__) for name, cls in groups.items()}
    per: dict = {name: {} for name in groups}
    rest = {}
    for key, value in options.items():
        owner = [name for name, f in fields.items() if key in f]
        if owner:
            per[owner[0]][key] = value
        elif key in ("device", "precision", "describer"):
            rest[key] = value
        else:
            valid = sorted(set().union(*fields.values()) | {"device", "precision", "describer"})
            raise ConfigError(f"unknown option '{key}'; valid options: {', '.join(valid)}")
    return {**{name: groups[name](**kw) for name, kw in per.items()}, **rest}


def estimate_homography(
    image1: ImageLike, image2: ImageLike, descriptor: str = DEFAULT_DESCRIPTOR, **options
) -> MatchResult:
    """Estimate the homography mapping ``image1`` to ``image2``.

    Args:
        image1, image2: paths or numpy arrays (grayscale, BGR or BGRA; uint8, uint16 or float).
        descriptor: ``sift``, ``rootsift``, ``hardnet`` or ``exptloss``.
        **options: any field of :class:`DetectConfig` (``max_keypoints``, ``max_side``, ...),
            :class:`MatchConfig` (``ratio``, ``mutual``), :class:`GeometryConfig`
            (``method``, ``threshold``, ``min_inliers``, ...), plus ``device`` and ``precision``.

    Returns:
        A :class:`MatchResult`; ``result.homography`` is None (and ``result.reason`` says why)
        when no trustworthy homography exists.

    Raises:
        ImageReadError: an image cannot be read or used.
        ConfigError, ModelNotFoundError, DeviceError: bad options or a missing model.
    """
    return Matcher(descriptor, background=True, **split_options(options)).match(image1, image2)


def describe(image: ImageLike, descriptor: str = DEFAULT_DESCRIPTOR, **options) -> Features:
    """Keypoints and descriptors of one image (options as in :func:`estimate_homography`)."""
    return Matcher(descriptor, **split_options(options)).features(image)

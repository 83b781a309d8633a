"""Run several descriptors on the same pairs and the same keypoints, and summarize the results.

For every image the keypoints are detected once (:func:`featmatch.detect.detect`); each
descriptor describes those same keypoints, then matching (:func:`featmatch.pipeline.match_keypoints`)
and the robust fit (:func:`featmatch.pipeline.fit_matches`, deterministic) run per
descriptor. So differences between the columns come from the descriptors alone.

The robust fit is deterministic for given matches, but chaotic in them: two match sets that
differ in a handful of matches out of hundreds can give corner errors of 1.6 and 3.2 px. A pair
near a threshold then decides a comparison by one draw of the estimator. With
``EvalConfig.ransac_runs = K`` every pair is also fitted on ``K - 1`` seeded random orders of its
matches (the same matches: only which samples the estimator draws changes), and H accuracy and
AUC are averaged over the K fits, with their spread across fits.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..detect import DetectConfig, Keypoints, detect
from ..errors import ModelNotFoundError
from ..geometry import GeometryConfig
from ..imageio import load_image
from ..match import MatchConfig, Matches
from ..pipeline import fit_matches, match_keypoints
from .datasets import Pair
from .metrics import ACCURACY_THRESHOLDS, AUC_MAX_PX, CURVE_THRESHOLDS, accuracy, auc, corner_error, mma

logger = logging.getLogger(__name__)

#: Descriptors ``featmatch eval`` compares by default.
DEFAULT_EVAL_DESCRIPTORS = ("sift", "rootsift", "hardnet", "exptloss")
#: Keypoints per image of the evaluation (fewer than ``featmatch match``'s 4000, to keep it quick).
DEFAULT_EVAL_KEYPOINTS = 2000

#: A descriptor callable: ``Keypoints`` of N points -> ``(N, D)`` float32.
Describer = Callable[[Keypoints], np.ndarray]


@dataclass(frozen=True)
class EvalConfig:
    """Options of an evaluation run (the same for every descriptor).

    Attributes:
        detect: detector options (``max_keypoints`` defaults to :data:`DEFAULT_EVAL_KEYPOINTS`).
        match: matcher options (ratio test, mutual check).
        geometry: robust estimator options and sanity checks.
        ransac_runs: robust fits per pair: the matches in their order, then ``ransac_runs - 1``
            seeded random orders of them (see the module docstring).
    """

    detect: DetectConfig = DetectConfig(max_keypoints=DEFAULT_EVAL_KEYPOINTS)
    match: MatchConfig = MatchConfig()
    geometry: GeometryConfig = GeometryConfig()
    ransac_runs: int = 1


@dataclass(frozen=True)
class PairResult:
    """One descriptor on one pair.

    Attributes:
        pair, group, real: from the :class:`~featmatch.evaluation.datasets.Pair`.
        descriptor: the descriptor's name.
        keypoints: ``(n1, n2)`` keypoints (the same for every descriptor).
        matches: matches after the ratio test.
        inliers: inliers of the accepted homography (0 when it failed).
        corner_error: mean corner error in pixels (``inf`` when no homography was accepted).
        mma: MMA at :data:`~featmatch.evaluation.metrics.CURVE_THRESHOLDS` px.
        reason: why no homography was accepted (None on success).
        describe_ms: time spent describing image 2 (and image 1 the first time it is seen).
        described: how many images ``describe_ms`` covers (1 or 2).
        run_errors: corner errors of the extra robust fits on reordered matches (empty with one run).
    """

    pair: str
    group: str
    real: bool
    descriptor: str
    keypoints: tuple[int, int]
    matches: int
    inliers: int
    corner_error: float
    mma: tuple[float, ...]
    reason: str | None
    describe_ms: float
    described: int
    run_errors: tuple[float, ...] = ()


@dataclass(frozen=True)
class Summary:
    """One descriptor over a set of pairs.

    Attributes:
        descriptor, scope: the descriptor and the pair set (``all``, ``real``, ``synthetic`` or a group).
        pairs: how many pairs; failures: how many had no accepted homography.
        accuracy: fraction of pairs with corner error ``<= t`` for ``t`` in :data:`ACCURACY_THRESHOLDS`.
        accuracy_curve: the same at :data:`CURVE_THRESHOLDS`.
        auc: area under the corner-error curve up to :data:`AUC_MAX_PX`, normalized to [0, 1].
        mma: mean over pairs of the per-pair MMA at :data:`CURVE_THRESHOLDS`.
        matches, inliers: mean per pair.
        median_error: median corner error (``inf`` when half or more failed).
        describe_ms: mean time to describe one image's keypoints.
        runs: robust fits per pair that accuracy, accuracy_curve and auc are averaged over.
        accuracy_std: standard deviation of ``accuracy`` across those fits (zeros with one run).
    """

    descriptor: str
    scope: str
    pairs: int
    failures: int
    accuracy: tuple[float, ...]
    accuracy_curve: tuple[float, ...]
    auc: float
    mma: tuple[float, ...]
    matches: float
    inliers: float
    median_error: float
    describe_ms: float
    runs: int = 1
    accuracy_std: tuple[float, ...] = ()


@dataclass(frozen=True)
class EvalReport:
    """Everything an evaluation produced.

    Attributes:
        descriptors: evaluated descriptor names, in column order.
        skipped: descriptor name -> why it was not evaluated.
        results: one :class:`PairResult` per (pair, evaluated descriptor).
        summaries: one :class:`Summary` per (scope, evaluated descriptor).
        scopes: scope names in report order, each with its number of pairs.
        settings: the options used (for the JSON).
        seconds: wall time of the run.
    """

    descriptors: tuple[str, ...]
    skipped: dict
    results: tuple[PairResult, ...]
    summaries: tuple[Summary, ...]
    scopes: tuple[tuple[str, int], ...]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self, descriptor: str, scope: str) -> Summary:
        for s in self.summaries:
            if s.descriptor == descriptor and s.scope == scope:
                return s
        raise KeyError((descriptor, scope))

    def to_json(self) -> dict:
        def clean(v):
            if isinstance(v, float):
                return None if not math.isfinite(v) else round(v, 6)
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return clean(
            {
                "descriptors": list(self.descriptors),
                "skipped": dict(self.skipped),
                "thresholds": {
                    "accuracy_px": list(ACCURACY_THRESHOLDS),
                    "curve_px": list(CURVE_THRESHOLDS),
                    "auc_max_px": AUC_MAX_PX,
                },
                "settings": self.settings,
                "seconds": self.seconds,
                "scopes": {name: n for name, n in self.scopes},
                "summary": {
                    d: {s.scope: asdict(s) for s in self.summaries if s.descriptor == d} for d in self.descriptors
                },
                "pairs": [asdict(r) for r in self.results],
            }
        )


def build_describers(
    names: Sequence[str], device: str = "auto", precision: str = "auto", skip_missing: bool = False
) -> tuple[dict[str, Describer], dict[str, str]]:
    """Build the named descriptors; with ``skip_missing`` a missing model is skipped, not an error.

    Returns:
        ``(describers, skipped)``: name -> callable, and name -> reason for the skipped ones.

    Raises:
        ConfigError: an unknown name.
        ModelNotFoundError: missing weights (without ``skip_missing``).
    """
    from ..descriptors import SIFT_DESCRIPTORS, build_descriptor

    describers: dict[str, Describer] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            if name in SIFT_DESCRIPTORS:
                describers[name] = build_descriptor(name)
            else:
                describers[name] = build_descriptor(name, device=device, precision=precision)
        except ModelNotFoundError as exc:
            if not skip_missing:
                raise ModelNotFoundError(f"{exc} (or pass --skip-missing to evaluate the others)") from None
            skipped[name] = str(exc)
            logger.info("skipping descriptor %s: %s", name, exc)
    return describers, skipped


def _scopes(pairs: Sequence[Pair]) -> list[tuple[str, list[int]]]:
    """Scope name -> indices of its pairs: all, real / synthetic (when both exist), each group."""
    idx_all = list(range(len(pairs)))
    scopes: list[tuple[str, list[int]]] = [("all", idx_all)]
    real = [i for i, p in enumerate(pairs) if p.real]
    synth = [i for i, p in enumerate(pairs) if not p.real]
    if real and synth:
        scopes += [("real", real), ("synthetic", synth)]
    for group in dict.fromkeys(p.group for p in pairs):
        members = [i for i, p in enumerate(pairs) if p.group == group]
        if all(members != m for _, m in scopes):
            scopes.append((group, members))
    return scopes


def summarize(descriptor: str, scope: str, results: Sequence[PairResult]) -> Summary:
    """Aggregate per-pair results of one descriptor (see :class:`Summary`)."""
    errors = np.array([r.corner_error for r in results], np.float64)
    mmas = np.array([r.mma for r in results], np.float64).reshape(len(results), len(CURVE_THRESHOLDS))
    n = len(results)
    runs = 1 + min((len(r.run_errors) for r in results), default=0)
    # (runs, n): the fit in match order first, then the reordered ones
    fits = np.array([[r.corner_error, *r.run_errors[: runs - 1]] for r in results], np.float64).reshape(n, runs).T
    acc = np.array([accuracy(e, ACCURACY_THRESHOLDS) for e in fits]).reshape(runs, len(ACCURACY_THRESHOLDS))
    curve = np.array([accuracy(e, CURVE_THRESHOLDS) for e in fits]).reshape(runs, len(CURVE_THRESHOLDS))
    return Summary(
        descriptor=descriptor,
        scope=scope,
        pairs=n,
        failures=int(np.sum(~np.isfinite(errors))),
        accuracy=tuple(float(v) for v in acc.mean(axis=0)),
        accuracy_curve=tuple(float(v) for v in curve.mean(axis=0)),
        auc=float(np.mean([auc(e, AUC_MAX_PX) for e in fits])),
        mma=tuple(float(v) for v in (mmas.mean(axis=0) if n else np.zeros(len(CURVE_THRESHOLDS)))),
        matches=float(np.mean([r.matches for r in results])) if n else 0.0,
        inliers=float(np.mean([r.inliers for r in results])) if n else 0.0,
        median_error=float(np.median(errors)) if n else float("inf"),
        describe_ms=sum(r.describe_ms for r in results) / max(1, sum(r.described for r in results)),
        runs=runs,
        accuracy_std=tuple(float(v) for v in acc.std(axis=0)),
    )


def reordered_fits(
    kps1: Keypoints, kps2: Keypoints, m: Matches, pair: Pair, shape1, config: EvalConfig, pair_index: int
) -> tuple[float, ...]:
    """Corner errors of ``config.ransac_runs - 1`` robust fits on seeded random orders of ``m``."""
    errors = []
    for run in range(1, config.ransac_runs):
        order = np.random.default_rng([run, pair_index]).permutation(len(m))
        est = fit_matches(kps1, kps2, Matches(m.pairs[order], m.distances[order]), shape1, config.geometry)
        errors.append(corner_error(est.H, pair.H, shape1))
    return tuple(errors)


def run_evaluation(
    pairs: Sequence[Pair],
    describers: dict[str, Describer],
    config: EvalConfig = EvalConfig(),
    skipped: dict[str, str] | None = None,
    progress: bool = False,
    device: str = "cpu",
) -> EvalReport:
    """Evaluate every describer on every pair, on the same keypoints.

    Args:
        pairs: the pairs (see :mod:`featmatch.evaluation.datasets`).
        describers: name -> callable mapping :class:`~featmatch.detect.Keypoints` to ``(N, D)``
            descriptors; tests pass their own (e.g. random vectors) here.
        config: detector, matcher and estimator options.
        skipped: descriptors not evaluated, name -> reason (reported, not run).
        progress: show a tqdm progress bar on stderr.
        device: where the nearest-neighbour search runs (``cpu`` or ``cuda``).

    Returns:
        An :class:`EvalReport`.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    names = tuple(describers)
    results: list[PairResult] = []
    cache_key, cache_kps, cache_desc = None, None, {}
    bar = tqdm(total=len(pairs) * max(1, len(names)), file=sys.stderr, disable=not progress, unit="pair", leave=False)
    try:
        for pair_index, pair in enumerate(pairs):
            if cache_key != pair.image1:  # pairs of one sequence share image 1: detect and describe it once
                img1 = load_image(pair.image1)
                cache_key, cache_kps, cache_desc = pair.image1, (detect(img1.gray, config.detect), img1.shape), {}
            kps1, shape1 = cache_kps
            kps2 = detect(load_image(pair.image2).gray, config.detect)
            for name in names:
                bar.set_description(f"{name} {pair.name}", refresh=False)
                t0 = time.perf_counter()
                described = 1 if name in cache_desc else 2
                if name not in cache_desc:
                    cache_desc[name] = describers[name](kps1)
                desc1, desc2 = cache_desc[name], describers[name](kps2)
                describe_ms = (time.perf_counter() - t0) * 1000.0
                m = match_keypoints(kps1, desc1, kps2, desc2, config.match, device)
                pts1, pts2 = kps1.xy[m.pairs[:, 0]], kps2.xy[m.pairs[:, 1]]
                est = fit_matches(kps1, kps2, m, shape1, config.geometry)
                results.append(
                    PairResult(
                        pair=pair.name,
                        group=pair.group,
                        real=pair.real,
                        descriptor=name,
                        keypoints=(len(kps1), len(kps2)),
                        matches=len(m),
                        inliers=int(est.inliers.sum()) if est.H is not None else 0,
                        corner_error=corner_error(est.H, pair.H, shape1),
                        mma=tuple(float(v) for v in mma(pair.H, pts1, pts2, CURVE_THRESHOLDS)),
                        reason=est.reason,
                        describe_ms=describe_ms,
                        described=described,
                        run_errors=reordered_fits(kps1, kps2, m, pair, shape1, config, pair_index),
                    )
                )
                bar.update(1)
    finally:
        bar.close()
    scopes = _scopes(pairs)
    summaries = []
    for scope, members in scopes:
        for j, name in enumerate(names):  # results are pair-major: pair i, descriptor j at i * len(names) + j
            summaries.append(summarize(name, scope, [results[i * len(names) + j] for i in members]))
    return EvalReport(
        descriptors=names,
        skipped=dict(skipped or {}),
        results=tuple(results),
        summaries=tuple(summaries),
        scopes=tuple((s, len(m)) for s, m in scopes),
        settings={
            "pairs": len(pairs),
            "real_pairs": sum(p.real for p in pairs),
            "synthetic_pairs": sum(not p.real for p in pairs),
            "detect": asdict(config.detect),
            "match": asdict(config.match),
            "geometry": asdict(config.geometry),
            "ransac_runs": config.ransac_runs,
        },
        seconds=time.perf_counter() - t_start,
    )

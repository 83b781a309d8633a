"""``stitch()``: features once per image -> verified pair graph -> transforms -> canvas -> blend.

The steps, each in its own module:

1. features of every image, once (:meth:`featmatch.Matcher.features`);
2. candidate pairs: all of them for small sets, a FAISS vote for larger ones (:mod:`.graph`);
3. pairwise matching and verification (:meth:`featmatch.Matcher.match_features` plus Brown &
   Lowe's inlier test); the largest connected component is kept, the rest reported;
4. maximum spanning tree on inlier counts, reference = the tree's centre, transforms chained
   from it (homographies, or rotations and a focal length);
5. bundle adjustment of the camera model over every inlier of every verified pair
   (:mod:`.adjust`), ``auto`` choosing it or the plane by how well it fits; pairs the cameras
   predict to overlap (a loop's wrap-around) matched and added; wave correction
   (:mod:`.camera`); the planar model refined instead for flat scenes (:mod:`.refine`);
6. warping (:mod:`.warp`; a 360 degree loop onto exactly one turn), exposure gains, seams,
   blending (:mod:`.blend`) and the crop (:mod:`.crop`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

from ..detect import DetectConfig
from ..geometry import project
from ..imageio import Image, ImageLike, load_image
from ..pipeline import Matcher
from . import adjust, camera, exposure, graph, refine, seams, warp
from . import blend as blending
from . import crop as cropping
from .config import (
    DEFAULT_STITCH_DESCRIPTOR,
    DEFAULT_STITCH_KEYPOINTS,
    StitchConfig,
    StitchError,
    StitchInputError,
    StitchWarning,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairEdge:
    """One matched pair of the graph.

    Attributes:
        i, j: image indices.
        matches: ratio-test matches.
        inliers: homography inliers (0 when none was found).
        verified: the pair passed every check and is an edge of the graph.
        in_tree: the pair is an edge of the maximum spanning tree.
        reason: why the pair was rejected (None when verified).
    """

    i: int
    j: int
    matches: int
    inliers: int
    verified: bool
    in_tree: bool = False
    reason: str | None = None

    def to_json(self) -> dict:
        return {
            "i": self.i,
            "j": self.j,
            "matches": self.matches,
            "inliers": self.inliers,
            "verified": self.verified,
            "in_tree": self.in_tree,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class StitchResult:
    """A panorama and how it was made.

    Attributes:
        panorama: ``(H, W, 3)`` uint8 BGR.
        valid: ``(H, W)`` bool, True where some image has a pixel.
        names: the input images' names (paths, or ``<array k>``).
        placed: indices of the images in the panorama.
        dropped: indices of the images that connect to nothing and were left out.
        reference: index of the reference image.
        projection: ``planar``, ``cylindrical`` or ``spherical`` (``auto`` resolved).
        homographies: image pixels -> panorama pixels, per placed image (planar only; empty otherwise).
        to_reference: image pixels -> reference image pixels, per placed image (for rotation
            models the homography of the rotation, ``K R_ref R_i^T K^-1``).
        rotations: ``R_i`` (world -> camera) per placed image for cylindrical/spherical, else empty.
        focal: focal length in pixels (None for planar without an estimate).
        edges: every matched pair (verified or not).
        footprints: per placed image, ``(K, 2)`` panorama coordinates of its border.
        seams: ``(H, W)`` int16 index into ``placed`` of the image each pixel comes from (-1 none).
        crop: ``(x, y, w, h)`` of the panorama inside the uncropped canvas.
        refine_rms: ``(before, after)`` RMS reprojection error of the inliers in input pixels (None: not refined).
        cameras: per placed image its :class:`~featmatch.stitching.camera.Camera` (rotation model only).
        closed: the panorama goes all the way round and spans exactly 360 degrees.
        timings_ms: wall time per step.
    """

    panorama: np.ndarray
    valid: np.ndarray
    names: tuple[str, ...]
    placed: tuple[int, ...]
    dropped: tuple[int, ...]
    reference: int
    projection: str
    homographies: dict = field(default_factory=dict)
    to_reference: dict = field(default_factory=dict)
    rotations: dict = field(default_factory=dict)
    focal: float | None = None
    edges: tuple[PairEdge, ...] = ()
    footprints: dict = field(default_factory=dict, repr=False)
    seams: np.ndarray | None = field(default=None, repr=False)
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    refine_rms: tuple[float, float] | None = None
    timings_ms: dict = field(default_factory=dict)
    cameras: dict = field(default_factory=dict)
    closed: bool = False

    def relative_homography(self, i: int, j: int) -> np.ndarray:
        """``(3, 3)`` mapping image ``i`` pixels to image ``j`` pixels through the panorama's model."""
        H = np.linalg.inv(self.to_reference[j]) @ self.to_reference[i]
        return H / H[2, 2]

    def to_json(self) -> dict:
        """The ``featmatch stitch --json`` object."""

        def mat(m: np.ndarray) -> list:
            return [[float(v) for v in row] for row in m]

        return {
            "panorama_size": [int(self.panorama.shape[1]), int(self.panorama.shape[0])],
            "projection": self.projection,
            "reference": self.reference,
            "focal": None if self.focal is None else float(self.focal),
            "images": [
                {
                    "index": k,
                    "name": name,
                    "placed": k in self.placed,
                    "homography": mat(self.homographies[k]) if k in self.homographies else None,
                    "to_reference": mat(self.to_reference[k]) if k in self.to_reference else None,
                    "rotation": mat(self.rotations[k]) if k in self.rotations else None,
                    "camera": self.cameras[k].to_json() if k in self.cameras else None,
                }
                for k, name in enumerate(self.names)
            ],
            "placed": list(self.placed),
            "dropped": list(self.dropped),
            "edges": [e.to_json() for e in self.edges],
            "crop": list(self.crop),
            "refine_rms_px": None if self.refine_rms is None else [round(v, 4) for v in self.refine_rms],
            "rms_px": None if self.refine_rms is None else round(self.refine_rms[1], 4),
            "closed_loop": self.closed,
            "timings_ms": {k: round(float(v), 1) for k, v in self.timings_ms.items()},
        }


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _progress(iterable, total: int, desc: str, enabled: bool | None):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=(None if enabled is None else not enabled), leave=False)


def _normalizer(shape: tuple[int, int], scale: float) -> np.ndarray:
    h, w = shape
    return np.array([[1.0 / scale, 0.0, -(w - 1) / 2.0 / scale], [0.0, 1.0 / scale, -(h - 1) / 2.0 / scale], [0, 0, 1]])


def _subsample(n: int, k: int) -> np.ndarray:
    return np.arange(n) if n <= k else np.linspace(0, n - 1, k).round().astype(np.int64)


def _register_detection(base: DetectConfig, shape: tuple[int, int], megapixels: float | None) -> DetectConfig | None:
    """The detection options that register an image of ``shape`` at ``megapixels`` (None: the matcher's own)."""
    h, w = shape
    if megapixels is None or h * w <= megapixels * 1e6:
        return None
    side = max(64, int(max(h, w) * math.sqrt(megapixels * 1e6 / (h * w))))
    return replace(base, max_side=side) if side < base.max_side else None


def _split_stitch_options(options: dict) -> tuple[dict, dict]:
    names = {f.name for f in fields(StitchConfig)}
    return {k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names}


def stitch(
    images: Sequence[ImageLike | Image],
    descriptor: str = DEFAULT_STITCH_DESCRIPTOR,
    config: StitchConfig | None = None,
    matcher: Matcher | None = None,
    progress: bool | None = False,
    **options,
) -> StitchResult:
    """Stitch overlapping photos into one panorama.

    Args:
        images: paths, numpy arrays (gray/BGR/BGRA) or loaded :class:`~featmatch.imageio.Image`.
        descriptor: ``hardnet`` (the default), ``exptloss``, ``sift`` or ``rootsift``.
        config: stitching options; keyword ``options`` that name a :class:`StitchConfig` field
            override it (``projection="cylindrical"``, ``blend="feather"``, ``crop=True``, ...).
        matcher: a ready :class:`~featmatch.Matcher` (then ``descriptor`` and the matcher
            options are ignored).
        progress: show tqdm progress bars on stderr (None: only when stderr is a terminal).
        **options: :class:`StitchConfig` fields, or the options of
            :func:`featmatch.estimate_homography` (``max_keypoints``, ``ratio``, ``device``, ...).

    Returns:
        A :class:`StitchResult`. Images that overlap nothing are left out, listed in
        ``result.dropped`` and announced by a :class:`StitchWarning`.

    Raises:
        StitchInputError: fewer than two images.
        ImageReadError: an image cannot be read.
        StitchError: no pair of images overlaps, or the panorama would exceed the canvas cap (exit code 3).
        ConfigError, ModelNotFoundError, DeviceError: bad options or a missing model.

    Shape:
        ``n`` images ``(H_i, W_i[, C])`` -> ``panorama (H, W, 3)`` uint8.
    """
    from ..pipeline import split_options as split_matcher_options

    stitch_opts, matcher_opts = _split_stitch_options(options)
    cfg = replace(config if config is not None else StitchConfig(), **stitch_opts)
    if matcher is None:
        matcher_opts.setdefault("max_keypoints", DEFAULT_STITCH_KEYPOINTS)
        matcher = Matcher(descriptor, **split_matcher_options(matcher_opts))
    elif matcher_opts:
        raise StitchInputError(f"options {sorted(matcher_opts)} cannot be combined with a ready matcher")
    if isinstance(images, (str, np.ndarray)) or len(images) < 2:
        count = 1 if isinstance(images, (str, np.ndarray)) else len(images)
        raise StitchInputError(f"stitching needs at least 2 images, got {count}")

    timings: dict = {}
    t_all = t0 = time.perf_counter()
    loaded = []
    for k, im in enumerate(images):
        img = im if isinstance(im, Image) else load_image(im)
        if img.name == "<array>":
            img = Image(img.gray, img.color, f"<array {k}>")
        loaded.append(img)
    names = tuple(im.name for im in loaded)
    shapes = {k: im.shape for k, im in enumerate(loaded)}
    n = len(loaded)
    timings["load"] = _ms(t0)

    t0 = time.perf_counter()
    detect_configs = [_register_detection(matcher.detect_config, shapes[k], cfg.register_megapixels) for k in range(n)]
    feats = list(_progress(matcher.features_many(loaded, detect_configs), n, "features", progress))
    timings["features"] = _ms(t0)

    t0 = time.perf_counter()
    if n <= cfg.exhaustive_max:
        candidates = graph.all_pairs(n)
    else:
        candidates = graph.vote_pairs([f.descriptors for f in feats], cfg.pairs_per_image, cfg.vote_descriptors)
    timings["shortlist"] = _ms(t0)

    t0 = time.perf_counter()
    verified, edges = _verify_pairs(matcher, feats, candidates, shapes, cfg, progress)
    timings["matching"] = _ms(t0)
    logger.info("%d of %d candidate pairs verified", len(verified), len(candidates))
    if cfg.retry_tilt > 1.0:
        t0 = time.perf_counter()
        if _retry_with_views(matcher, loaded, candidates, verified, edges, shapes, cfg, progress):
            timings["retry"] = _ms(t0)

    # From here on only the colour images are needed: the float gray copies (4 bytes a pixel,
    # more than the colour's 3) are freed with the Images this call loaded.
    colors = [im.color for im in loaded]
    del loaded

    if not verified:
        tried = sorted(edges.values(), key=lambda e: -e.inliers)
        best = f"; best pair {names[tried[0].i]} - {names[tried[0].j]}: {tried[0].reason}" if tried else ""
        raise StitchError(f"no pair of the {n} images overlaps reliably ({len(candidates)} pairs tried){best}")

    t0 = time.perf_counter()
    weights = {key: float(pm.num_inliers) for key, pm in verified.items()}
    comps = graph.components(list(range(n)), list(verified))
    main = comps[0]
    dropped = tuple(sorted(v for c in comps[1:] for v in c))
    if dropped:
        msg = "left out of the panorama (no verified overlap with the main group): " + ", ".join(
            names[v] for v in dropped
        )
        logger.info(msg)
        warnings.warn(msg, StitchWarning, stacklevel=2)
    weights = {k: w for k, w in weights.items() if k[0] in main}
    tree = graph.maximum_spanning_tree(main, weights)
    reference = graph.tree_centre(main, tree, weights)
    tree_set = set(tree)
    edges = {
        k: (PairEdge(e.i, e.j, e.matches, e.inliers, e.verified, True) if k in tree_set else e)
        for k, e in edges.items()
    }
    pairs_main = [verified[k] for k in weights]
    scale = float(np.median([max(shapes[v]) for v in main]))
    N = {v: _normalizer(shapes[v], scale) for v in main}
    centred = {(pm.i, pm.j): N[pm.j] @ pm.H @ np.linalg.inv(N[pm.i]) for pm in pairs_main}
    pair_points = [_pair_points(pm, shapes, scale, cfg.max_points_per_pair) for pm in pairs_main]
    focal_n = cfg.focal / scale if cfg.focal is not None else camera.estimate_focal(list(centred.values()))
    timings["graph"] = _ms(t0)

    t0 = time.perf_counter()
    geo = _geometry(
        matcher,
        feats,
        verified,
        edges,
        pair_points,
        centred,
        tree,
        reference,
        main,
        shapes,
        scale,
        focal_n,
        cfg,
        progress,
    )
    projection, cams, to_ref, refine_rms = geo
    timings["refine"] = _ms(t0)

    t0 = time.perf_counter()
    placed = tuple(main)
    colors = {v: colors[v] for v in main}  # the images left out are freed too
    homographies: dict[int, np.ndarray] = {}
    main_shapes = {v: shapes[v] for v in main}
    closed = False
    if projection == "planar":
        _, base = warp.planar_layout(to_ref, main_shapes, None)
        homographies, canvas = warp.planar_layout(to_ref, main_shapes, cfg.max_megapixels, _output_scale(cfg, base))
        footprints = {v: project(homographies[v], warp.planar_footprint(homographies[v], shapes[v])) for v in main}
        warped = [
            warp.warp_planar(v, colors[v], homographies[v], canvas)
            for v in _progress(placed, len(placed), "warping", progress)
        ]
    else:
        cut = warp.loop_cut(projection, cams, main_shapes)
        focal_out = float(np.median([c.focal for c in cams.values()]))
        base = warp.surface_layout(projection, cams, main_shapes, focal_out, None, cut).size
        focal_out *= _output_scale(cfg, base)
        surface = warp.surface_layout(projection, cams, main_shapes, focal_out, cfg.max_megapixels, cut)
        canvas, closed = surface.size, surface.closed
        footprints = {v: warp.surface_footprint(cams[v], shapes[v], surface) for v in main}
        warped = [
            p
            for v in _progress(placed, len(placed), "warping", progress)
            for p in warp.warp_surface(v, colors[v], cams[v], surface)
        ]
    timings["warp"] = _ms(t0)

    t0 = time.perf_counter()
    small, scale = seams.shrink(warped)
    if cfg.exposure and len(warped) > 1:
        comp = exposure.fit(small)
        comp.apply_all(warped)  # in place
        comp.apply_all(small)
    owner = seams.find(small, scale, warped, canvas, cfg.seam) if cfg.blend != "feather" else None
    pano, valid, owner = blending.blend(warped, canvas, cfg.blend, owner)
    owner = np.append(np.array([placed.index(w.index) for w in warped], np.int16), -1)[owner]  # pieces -> placed
    box = (0, 0, canvas[0], canvas[1])
    if cfg.crop:
        box = cropping.crop_box(valid, closed)
        x, y, w, h = box
        pano, valid, owner = pano[y : y + h, x : x + w], valid[y : y + h, x : x + w], owner[y : y + h, x : x + w]
        T = np.array([[1.0, 0.0, -x], [0.0, 1.0, -y], [0.0, 0.0, 1.0]])
        homographies = {v: T @ H for v, H in homographies.items()}
        footprints = {v: fp - [x, y] for v, fp in footprints.items()}
    timings["blend"] = _ms(t0)
    timings["total"] = _ms(t_all)

    return StitchResult(
        panorama=np.ascontiguousarray(pano),
        valid=np.ascontiguousarray(valid),
        names=names,
        placed=placed,
        dropped=dropped,
        reference=reference,
        projection=projection,
        homographies=homographies,
        to_reference=to_ref,
        rotations={v: c.R for v, c in cams.items()},
        focal=_reference_focal(cams, reference, focal_n, scale),
        cameras=cams,
        closed=closed,
        edges=tuple(edges[k] for k in sorted(edges)),
        footprints=footprints,
        seams=np.ascontiguousarray(owner),
        crop=box,
        refine_rms=refine_rms,
        timings_ms=timings,
    )


def _verify_pairs(
    matcher: Matcher,
    feats: list,
    candidates: list[tuple[int, int]],
    shapes: dict[int, tuple[int, int]],
    cfg: StitchConfig,
    progress: bool | None,
) -> tuple[dict[tuple[int, int], graph.PairMatch], dict[tuple[int, int], PairEdge]]:
    """Match every candidate pair and keep those that pass the homography checks and Brown & Lowe's test."""
    verified: dict[tuple[int, int], graph.PairMatch] = {}
    edges: dict[tuple[int, int], PairEdge] = {}
    for i, j in _progress(candidates, len(candidates), "matching", progress):
        r = matcher.match_features(feats[i], feats[j])
        nm, ni = len(r.matches), r.num_inliers
        if not r.ok:
            edges[(i, j)] = PairEdge(i, j, nm, ni, False, reason=r.reason)
            continue
        pts_i = r.keypoints1[r.matches[:, 0]].astype(np.float64)
        pts_j = r.keypoints2[r.matches[:, 1]].astype(np.float64)
        in_overlap = graph.overlap_count(r.homography, pts_i, shapes[j])
        if not graph.brown_lowe_ok(ni, in_overlap, cfg.inlier_alpha, cfg.inlier_beta, cfg.min_inliers):
            why = (
                f"{ni} inliers do not exceed {cfg.inlier_alpha:g} + {cfg.inlier_beta:g} x {in_overlap} matches in the "
                f"overlap (or the minimum of {cfg.min_inliers})"
            )
            edges[(i, j)] = PairEdge(i, j, nm, ni, False, reason=why)
            continue
        verified[(i, j)] = graph.PairMatch(i, j, r.homography, pts_i[r.inliers], pts_j[r.inliers], nm, ni)
        edges[(i, j)] = PairEdge(i, j, nm, ni, True)
    return verified, edges


#: The retry's first, cheap look: images downscaled to this side, ASIFT views with few
#: keypoints and SIFT descriptors from the detection pass (about a tenth of a second an image).
RETRY_PROBE_SIDE = 320
RETRY_PROBE_KEYPOINTS = 500
RETRY_PROBE_VIEW_KEYPOINTS = 200
#: Partners probed per unconnected image (those with the most ratio-test matches first).
RETRY_PARTNERS = 2


def _retry_with_views(
    matcher: Matcher,
    loaded: list[Image],
    candidates: list[tuple[int, int]],
    verified: dict,
    edges: dict,
    shapes: dict[int, tuple[int, int]],
    cfg: StitchConfig,
    progress: bool | None,
) -> bool:
    """Match the images that matched nothing again, with simulated oblique views (ASIFT).

    Only images without any verified pair are retried (a group that matched among itself is
    another scene, not an oblique view), each with the :data:`RETRY_PARTNERS` partners that had
    the most ratio-test matches (one verified pair is enough to join the panorama). The evidence comes cheap first, as in ASIFT's own two-stage
    search: both images at :data:`RETRY_PROBE_SIDE` pixels, few keypoints per view, SIFT
    descriptors. Only the pairs that verify there are described again at full resolution with
    the matcher's descriptor (kept at low resolution when that fails). A stray photo thus costs
    a fraction of a second, not a full ASIFT description of every image it was paired with.

    Updates ``verified`` and ``edges`` in place; returns whether anything was retried.
    """
    n = len(loaded)
    linked = {v for pair in verified for v in pair}
    lonely = set(range(n)) - linked
    ranked = sorted(
        ((i, j) for i, j in candidates if (i in lonely or j in lonely) and (i, j) not in verified),
        key=lambda p: (-edges[p].matches if p in edges else 0, p),
    )
    partners: dict[int, int] = {}
    pairs = []
    for i, j in ranked:
        if any(partners.get(v, 0) < RETRY_PARTNERS for v in (i, j) if v in lonely):
            pairs.append((i, j))
            for v in (i, j):
                partners[v] = partners.get(v, 0) + 1
    if not pairs:
        return False
    pairs.sort()
    logger.info(
        "retrying %d pairs of %d unconnected images with oblique views up to tilt %g",
        len(pairs),
        len(lonely),
        cfg.retry_tilt,
    )
    from ..detect import DetectConfig

    probe = Matcher(
        "rootsift",
        detect=DetectConfig(
            max_keypoints=RETRY_PROBE_KEYPOINTS,
            max_side=RETRY_PROBE_SIDE,
            with_sift=True,
            max_tilt=cfg.retry_tilt,
            view_keypoints=RETRY_PROBE_VIEW_KEYPOINTS,
        ),
        match=matcher.match_config,
        geometry=matcher.geometry_config,
    )
    involved = sorted({v for p in pairs for v in p})
    cheap = {v: probe.features(loaded[v]) for v in _progress(involved, len(involved), "oblique views", progress)}
    found, found_edges = _verify_pairs(probe, [cheap.get(v) for v in range(n)], pairs, shapes, cfg, progress)
    edges.update(found_edges)  # only pairs that had failed were retried
    if not found:
        return True
    views = Matcher(
        matcher.descriptor,
        detect=replace(matcher.detect_config, max_tilt=cfg.retry_tilt, view_keypoints=cfg.retry_keypoints),
        match=matcher.match_config,
        geometry=matcher.geometry_config,
        describer=matcher.describer,
    )
    involved = sorted({v for p in found for v in p})
    feats = {v: views.features(loaded[v]) for v in involved}
    again, again_edges = _verify_pairs(views, [feats.get(v) for v in range(n)], sorted(found), shapes, cfg, progress)
    verified.update(found)
    verified.update(again)
    edges.update(again_edges)
    edges.update({p: found_edges[p] for p in found if p not in again})
    return True


def _unit(H: np.ndarray) -> np.ndarray:
    return H / H[2, 2]


def _pair_points(pm: graph.PairMatch, shapes: dict, scale: float, most: int) -> refine.PairPoints:
    """A verified pair's inliers (evenly subsampled to ``most``) in normalized coordinates."""
    sel = _subsample(len(pm.pts_i), most)
    a = (pm.pts_i[sel] - [(shapes[pm.i][1] - 1) / 2.0, (shapes[pm.i][0] - 1) / 2.0]) / scale
    b = (pm.pts_j[sel] - [(shapes[pm.j][1] - 1) / 2.0, (shapes[pm.j][0] - 1) / 2.0]) / scale
    return refine.PairPoints(pm.i, pm.j, a, b)


#: ``auto`` skips the lens terms when the rotation stage's focal is this many times beyond
#: :data:`.adjust.AUTO_MAX_FOCAL_SIDES` (the lens terms move the focal by a few percent).
LENS_SKIP_FOCAL_MARGIN = 1.2


def _geometry(
    matcher, feats, verified, edges, pair_points, centred, tree, reference, main, shapes, scale, focal_n, cfg, progress
):
    """The projection (``auto`` resolved by evidence), cameras, homographies to the reference and the RMS.

    The rotation model is tried first unless planar is asked for (or no focal length can be
    estimated); ``auto`` keeps it when it explains the inliers about as well as the pairs' free
    homographies do (:func:`.adjust.rotation_explains`), else falls back to the plane. For the
    rotation model, pairs that the cameras predict to overlap but were never matched (the
    wrap-around pairs of a 360 degree loop, beyond the FAISS shortlist) are matched and the
    adjustment is run again over all pairs, lens terms included; then the horizon is levelled.

    Returns:
        ``(projection, cameras, to_ref, (rms_before, rms_after) or None)``.
    """
    huber = matcher.geometry_config.threshold
    projection = cfg.projection
    iters = None if cfg.refine else 0
    if projection != "planar" and (focal_n is not None or projection != "auto"):
        if focal_n is None:
            focal_n = float(np.mean([(shapes[v][0] + shapes[v][1]) / 2.0 for v in main])) / scale
            logger.warning(
                "no focal length could be estimated from the homographies; guessing %.0f px", focal_n * scale
            )
        R0 = camera.chain_rotations(reference, tree, centred, focal_n)
        lens = cfg.lens and cfg.refine
        side = float(np.median([max(shapes[v]) for v in main]))
        # ``auto`` with a focal far beyond a rotation's (a scan, a map) goes to the plane whatever
        # the lens terms do: the rotation stage alone decides it, the lens stage is not fitted.
        first = adjust.adjust_cameras(
            main, reference, R0, focal_n, pair_points, shapes, scale, huber, lens=False, iterations=iters
        )
        clearly_planar = (
            projection == "auto"
            and first.cameras[reference].focal > LENS_SKIP_FOCAL_MARGIN * adjust.AUTO_MAX_FOCAL_SIDES * side
        )
        if lens and not clearly_planar:
            with_lens = adjust.adjust_cameras(
                main, reference, R0, focal_n, pair_points, shapes, scale, huber, lens, first.cameras, iters
            )
            first = replace(with_lens, rms_before=first.rms_before)  # "before": the chained rotations
        if projection == "auto":
            rms_free = adjust.homography_rms(pair_points, [centred[(pp.i, pp.j)] for pp in pair_points], scale)
            f_ref = first.cameras[reference].focal
            ok = adjust.rotation_explains(first.rms_after, rms_free, f_ref, side)
            logger.info(
                "auto projection: rotation model %.2f px, free homographies %.2f px, focal %.1f sides -> %s",
                first.rms_after,
                rms_free,
                f_ref / side,
                "rotation" if ok else "planar",
            )
            projection = adjust.surface_kind(first.cameras, shapes) if ok else "planar"
        if projection != "planar":
            adj = first
            more = _match_predicted(matcher, feats, verified, edges, first.cameras, shapes, scale, cfg, progress)
            if more:
                pair_points.extend(more)
                adj = adjust.adjust_cameras(
                    main, reference, R0, focal_n, pair_points, shapes, scale, huber, lens, first.cameras, iters
                )
            cams = adj.cameras
            if cfg.wave_correct:
                R = camera.wave_correct({v: c.R for v, c in cams.items()}, reference)
                cams = {v: replace(c, R=R[v]) for v, c in cams.items()}
            to_ref = {v: cams[v].homography_to(cams[reference]) for v in main}
            return projection, cams, to_ref, (adj.rms_before, adj.rms_after) if cfg.refine else None
    N = {v: _normalizer(shapes[v], scale) for v in main}
    pair_H = {(pp.i, pp.j): np.linalg.inv(N[pp.j]) @ centred[(pp.i, pp.j)] @ N[pp.i] for pp in pair_points}
    H_ref = graph.chain_to_reference(reference, tree, pair_H)
    M = {v: N[reference] @ H_ref[v] @ np.linalg.inv(N[v]) for v in main}
    refine_rms = None
    if cfg.refine and len(main) > 1:
        model = refine.PlanarModel(main, reference)
        p, rep = refine.refine(model, model.pack(M), pair_points, scale, huber_px=huber)
        M = {v: model.matrix(v, p) for v in main}
        refine_rms = (rep.rms_before, rep.rms_after)
    return "planar", {}, {v: _unit(np.linalg.inv(N[reference]) @ M[v] @ N[v]) for v in main}, refine_rms


def _match_predicted(matcher, feats, verified, edges, cams, shapes, scale, cfg, progress) -> list[refine.PairPoints]:
    """Match the pairs the cameras say overlap that were never tried; add the verified ones in place."""
    todo = adjust.predicted_pairs(cams, shapes, set(edges))
    if not todo:
        return []
    logger.info("matching %d pairs that the cameras predict to overlap (loop closure)", len(todo))
    found, tried = _verify_pairs(matcher, feats, todo, shapes, cfg, progress)
    verified.update(found)
    edges.update(tried)
    return [_pair_points(pm, shapes, scale, cfg.max_points_per_pair) for pm in found.values()]


def _output_scale(cfg: StitchConfig, base: tuple[int, int]) -> float:
    """The output resolution relative to the natural canvas ``base`` (``(W, H)``)."""
    if cfg.scale is not None:
        return cfg.scale
    if cfg.output_megapixels is not None:
        return float(np.sqrt(cfg.output_megapixels * 1e6 / (base[0] * base[1])))
    return 1.0


def _reference_focal(cams: dict, reference: int, focal_n: float | None, scale: float) -> float | None:
    if cams:
        return float(cams[reference].focal)
    return None if focal_n is None else focal_n * scale

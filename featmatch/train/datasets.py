"""Patch datasets for training and evaluating the learned descriptors.

Every patch here is cut by :func:`featmatch.patches.extract_patches` (the extractor used at
matching time) around DoG keypoints from :func:`featmatch.detect.detect`, so that training
sees exactly the patches the matcher will see.

Sources:

- **self-supervised** (:func:`build_warp_dataset`): each TRAIN photo is warped by many random
  homographies (any rotation, scale 0.5-2, perspective) with photometric changes (gamma,
  contrast, noise, blur, JPEG). Keypoints are detected in the photo and in each warp and paired
  where the projection of one lands within ``pixel_tol`` of the other at a consistent scale and
  orientation. Every keypoint of the photo that is found again is one *point id*; its group
  holds its own patch and one patch per warp that found it.
- **HPatches / Oxford** (:func:`hpatches_dataset`, :func:`oxford_dataset`): the same pairing
  with the ground-truth homographies of a sequence (image 1 is the reference).
- **UBC PhotoTour** (:func:`load_phototour`): the Brown et al. layout.
- **test pairs** (:func:`build_test_pairs`): positive and negative (1:1) patch pairs from the
  TEST photos and graf1->graf3, with a fixed seed, for FPR95 / mAP.

Datasets are cached under a cache folder keyed by a hash of their configuration and inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..detect import DetectConfig, Keypoints, detect
from ..errors import ConfigError, DatasetError
from ..evaluation.datasets import hpatches_sequence, oxford_sequence, read_homography
from ..imageio import load_image
from ..patches import MAGNIFICATION, PATCH_SIZE, extract_patches

logger = logging.getLogger(__name__)

#: Repository root (``featmatch/train/datasets.py`` -> two levels up).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Default data folder: ``../shared/data`` relative to the repository root.
DEFAULT_DATA_ROOT = REPO_ROOT / ".." / "shared" / "data"
#: Default cache folder (git-ignored).
DEFAULT_CACHE_DIR = REPO_ROOT / "runs" / "cache"
#: Environment variable naming the data folder (laid out as featmatch's shared data).
DATA_ENV = "FEATMATCH_DATA"


def in_source_checkout() -> bool:
    """True when featmatch runs from its repository (not from an installed package)."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "featmatch").is_dir()


def default_data_root() -> Path:
    """``$FEATMATCH_DATA``, else ``../shared/data`` beside a source checkout.

    Raises:
        ConfigError: neither exists (an installed package has no default data folder).
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    if in_source_checkout() and DEFAULT_DATA_ROOT.is_dir():
        return DEFAULT_DATA_ROOT
    raise ConfigError(
        f"no data folder: pass --data-root DIR or set {DATA_ENV}=DIR (featmatch's shared data: "
        "skimage-photos/, wallpaper-photos/, opencv-samples/; a source checkout finds ../shared/data beside it)"
    )


def default_cache_dir() -> Path:
    """``runs/cache`` in the source checkout, else under the current directory."""
    return DEFAULT_CACHE_DIR if in_source_checkout() else Path("runs") / "cache"


#: The skimage photos of the TRAIN split (the other four are test images).
SKIMAGE_TRAIN = ("brick", "camera", "chelsea", "coins", "grass", "gravel", "moon", "page", "rocket")
#: The skimage photos of the TEST split.
SKIMAGE_TEST = ("astronaut", "coffee", "motorcycle_left", "motorcycle_right")

#: Bump when the builders change in a way that invalidates cached files.
CACHE_VERSION = 2


# --------------------------------------------------------------------------------------------
# containers


@dataclass(frozen=True)
class PatchDataset:
    """Patches grouped by physical point.

    Attributes:
        patches: ``(N, 1, 32, 32)`` uint8 patches.
        ids: ``(N,)`` int64 point id of each patch; patches with the same id show the same point.
    """

    patches: torch.Tensor
    ids: torch.Tensor

    def __post_init__(self) -> None:
        if self.patches.ndim != 4 or self.patches.shape[1:] != (1, PATCH_SIZE, PATCH_SIZE):
            raise DatasetError(f"patches must be (N, 1, {PATCH_SIZE}, {PATCH_SIZE}), got {tuple(self.patches.shape)}")
        if self.ids.shape != (self.patches.shape[0],):
            raise DatasetError(f"ids must be ({self.patches.shape[0]},), got {tuple(self.ids.shape)}")

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    @property
    def num_points(self) -> int:
        return int(torch.unique(self.ids).numel()) if len(self) else 0

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"patches": self.patches, "ids": self.ids}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PatchDataset:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(patches=d["patches"], ids=d["ids"])

    @classmethod
    def concat(cls, parts: Sequence[PatchDataset]) -> PatchDataset:
        """Concatenate datasets, renumbering ids so that different parts never share one."""
        patches, ids, offset = [], [], 0
        for part in parts:
            if len(part) == 0:
                continue
            _, inv = torch.unique(part.ids, return_inverse=True)
            patches.append(part.patches)
            ids.append(inv.to(torch.int64) + offset)
            offset += int(inv.max()) + 1
        if not patches:
            return cls(
                torch.zeros((0, 1, PATCH_SIZE, PATCH_SIZE), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
            )
        return cls(torch.cat(patches), torch.cat(ids))


@dataclass(frozen=True)
class PairSet:
    """Labelled patch pairs for verification metrics.

    Attributes:
        a, b: ``(P, 1, 32, 32)`` uint8 patches.
        label: ``(P,)`` bool, True where ``a[i]`` and ``b[i]`` show the same point.
        source: ``(P,)`` int64 index into ``sources`` (which image pair each pair came from).
        sources: names of the image pairs.
    """

    a: torch.Tensor
    b: torch.Tensor
    label: torch.Tensor
    source: torch.Tensor
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(
            {"a": self.a, "b": self.b, "label": self.label, "source": self.source, "sources": list(self.sources)}, tmp
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PairSet:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(d["a"], d["b"], d["label"], d["source"], tuple(d["sources"]))


# --------------------------------------------------------------------------------------------
# configuration


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a frozen config dataclass, raising :class:`ConfigError` on unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**values)


@dataclass(frozen=True)
class WarpConfig:
    """How self-supervised (and synthetic test) pairs are made.

    Attributes:
        warps_per_image: random homographies per photo.
        max_keypoints: DoG keypoints kept per image (strongest first).
        max_side: photos are downscaled so that their longer side is at most this first.
        max_rotation_deg: rotation drawn uniformly in ``[-max_rotation_deg, max_rotation_deg]``.
        min_scale, max_scale: zoom drawn log-uniformly in this range.
        perspective: strength of the projective part (0 = affine only); at the image border the
            homogeneous scale changes by up to about this fraction.
        max_shear: anisotropy of the affine part (log of the axis ratio, uniform +-).
        pixel_tol: a warped keypoint pairs with a reference keypoint when it lies within this many
            pixels of the reference's projection.
        log_scale_tol: ... and ``|log(size_b / (size_a * local_scale))|`` is below this.
        angle_tol_deg: ... and the orientations agree within this (after the local rotation).
        photometric: apply gamma / contrast / blur / noise / JPEG changes to the warped image.
        seed: base seed; photo ``k`` uses ``(seed, k)``.
    """

    warps_per_image: int = 6
    max_keypoints: int = 2000
    max_side: int = 1024
    max_rotation_deg: float = 180.0
    min_scale: float = 0.5
    max_scale: float = 2.0
    perspective: float = 0.3
    max_shear: float = 0.15
    pixel_tol: float = 1.5
    log_scale_tol: float = 0.25
    angle_tol_deg: float = 20.0
    photometric: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warps_per_image < 1:
            raise ConfigError(f"warps_per_image must be at least 1, got {self.warps_per_image}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ConfigError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")
        if self.pixel_tol <= 0 or self.log_scale_tol <= 0 or self.angle_tol_deg <= 0:
            raise ConfigError("pixel_tol, log_scale_tol and angle_tol_deg must be positive")
        if self.max_side < 64:
            raise ConfigError(f"max_side must be at least 64, got {self.max_side}")


# --------------------------------------------------------------------------------------------
# split


def train_photos(data_root: Path) -> list[Path]:
    """The TRAIN photos: all of ``wallpaper-photos/*.jpg`` and the nine train skimage photos.

    Raises:
        DatasetError: a folder or photo is missing.
    """
    data_root = Path(data_root)
    wall = data_root / "wallpaper-photos"
    sk = data_root / "skimage-photos"
    if not wall.is_dir() or not sk.is_dir():
        raise DatasetError(f"{data_root} has no wallpaper-photos/ and skimage-photos/ folders (use --data-root)")
    photos = sorted(wall.glob("*.jpg"))
    for name in SKIMAGE_TRAIN:
        found = sorted(p for p in sk.glob(name + ".*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not found:
            raise DatasetError(f"train photo {name} missing from {sk}")
        photos.append(found[0])
    return photos


def test_photos(data_root: Path) -> list[Path]:
    """The TEST skimage photos used for synthetic test pairs."""
    sk = Path(data_root) / "skimage-photos"
    out = []
    for name in SKIMAGE_TEST:
        found = sorted(sk.glob(name + ".*"))
        if not found:
            raise DatasetError(f"test photo {name} missing from {sk}")
        out.append(found[0])
    return out


# --------------------------------------------------------------------------------------------
# geometry


def random_homography(
    rng: np.random.Generator, shape_in: tuple[int, int], shape_out: tuple[int, int], cfg: WarpConfig
) -> np.ndarray:
    """A random homography mapping the centre of ``shape_in`` to the centre of ``shape_out``.

    Shape:
        - Output: ``(3, 3)`` float64, mapping input pixel coordinates (x, y, 1) to output ones.
    """
    h, w = shape_in
    ho, wo = shape_out
    side = float(max(h, w))
    ang = math.radians(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
    scale = math.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale)))
    shear = math.exp(rng.uniform(-cfg.max_shear, cfg.max_shear))
    shear_ang = rng.uniform(0, math.pi)
    c, s = math.cos(ang), math.sin(ang)
    rot = np.array([[c, -s], [s, c]])
    cs, ss = math.cos(shear_ang), math.sin(shear_ang)
    rs = np.array([[cs, -ss], [ss, cs]])
    aniso = rs @ np.diag([shear, 1.0 / shear]) @ rs.T
    a = scale * rot @ aniso
    # Perspective around the centre: the homogeneous coordinate becomes 1 + p.x (x centred).
    p = rng.uniform(-1, 1, size=2) * cfg.perspective / (side / 2.0)
    t_in = np.array([[1, 0, -(w - 1) / 2.0], [0, 1, -(h - 1) / 2.0], [0, 0, 1]])
    t_out = np.array([[1, 0, (wo - 1) / 2.0], [0, 1, (ho - 1) / 2.0], [0, 0, 1]])
    shift = rng.uniform(-0.1, 0.1, size=2) * np.array([wo, ho])
    t_out[:2, 2] += shift
    core = np.eye(3)
    core[:2, :2] = a
    core[2, :2] = p
    hm = t_out @ core @ t_in
    return hm / hm[2, 2]


def project(hm: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a homography to points.

    Shape:
        - xy: ``(N, 2)``; output ``(N, 2)`` float64.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    ph = np.concatenate([xy, np.ones((len(xy), 1))], axis=1) @ hm.T
    return ph[:, :2] / ph[:, 2:3]


def local_jacobian(hm: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Jacobian of the homography at each point.

    Shape:
        - xy: ``(N, 2)``; output ``(N, 2, 2)``.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    wv = xy @ hm[2, :2] + hm[2, 2]
    proj = project(hm, xy)
    jac = (hm[None, :2, :2] - proj[:, :, None] * hm[None, 2:3, :2]) / wv[:, None, None]
    return jac


def _angle_direction(angle_deg: np.ndarray) -> np.ndarray:
    """Unit direction vector (x, y image axes) of OpenCV keypoint angles.

    OpenCV's SIFT angle is ``atan2(dy, dx)`` of the dominant gradient measured with y pointing
    down, i.e. the direction vector is (cos a, sin a) in pixel coordinates.
    """
    a = np.radians(angle_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _angle_of(vec: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % 360.0


def _inside(valid: np.ndarray, xy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """True where the disc of ``radius`` around each point lies in the ``valid`` mask (sampled)."""
    h, w = valid.shape
    ok = np.ones(len(xy), dtype=bool)
    for k in range(9):
        if k == 8:
            off = np.zeros((len(xy), 2))
        else:
            t = k * math.pi / 4
            off = np.stack([np.cos(t) * radius, np.sin(t) * radius], axis=1)
        pt = np.rint(xy + off).astype(np.int64)
        inb = (pt[:, 0] >= 0) & (pt[:, 0] < w) & (pt[:, 1] >= 0) & (pt[:, 1] < h)
        ok &= inb
        ok[inb] &= valid[pt[inb, 1], pt[inb, 0]] > 0
    return ok


def patch_radius(size: np.ndarray) -> np.ndarray:
    """Radius of the circle circumscribing a keypoint's patch (half diagonal of ``6 x size``)."""
    return np.asarray(size, dtype=np.float64) * MAGNIFICATION / 2.0 * math.sqrt(2.0)


def match_by_homography(
    kp_a: Keypoints,
    kp_b: Keypoints,
    hm: np.ndarray,
    cfg: WarpConfig,
    valid_a: np.ndarray | None = None,
    valid_b: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair keypoints of image a with keypoints of image b that are the same point under ``hm``.

    A pair needs: the projection of ``a`` within ``cfg.pixel_tol`` pixels of ``b``; sizes that
    agree after the local scale of ``hm`` (``|log ratio| < cfg.log_scale_tol``); orientations
    that agree after the local rotation (``< cfg.angle_tol_deg``); both patches fully inside
    their image (and inside ``valid_*`` masks when given). Pairs are one-to-one (closest wins).

    Args:
        kp_a, kp_b: keypoints at full resolution of images a and b.
        hm: ``(3, 3)`` homography from a's pixels to b's pixels.
        valid_a, valid_b: optional ``(H, W)`` masks of the valid pixels of each image.

    Returns:
        ``(idx_a, idx_b)``: int64 index arrays of equal length.
    """
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(kp_a) == 0 or len(kp_b) == 0:
        return empty
    shape_a = kp_a.det_image.shape if valid_a is None else valid_a.shape
    shape_b = kp_b.det_image.shape if valid_b is None else valid_b.shape
    if valid_a is None:
        valid_a = np.ones((round(shape_a[0] * kp_a.scale), round(shape_a[1] * kp_a.scale)), np.uint8)
    if valid_b is None:
        valid_b = np.ones((round(shape_b[0] * kp_b.scale), round(shape_b[1] * kp_b.scale)), np.uint8)
    xa = kp_a.xy.astype(np.float64)
    xb = kp_b.xy.astype(np.float64)
    ok_a = _inside(valid_a, xa, patch_radius(kp_a.size))
    ok_b = _inside(valid_b, xb, patch_radius(kp_b.size))
    pa = project(hm, xa)
    jac = local_jacobian(hm, xa)
    lscale = np.sqrt(np.abs(np.linalg.det(jac)))
    dir_b_expected = np.einsum("nij,nj->ni", jac, _angle_direction(kp_a.angle))
    ang_expected = _angle_of(dir_b_expected)

    ia = np.flatnonzero(ok_a & np.isfinite(pa).all(1))
    ib = np.flatnonzero(ok_b)
    if len(ia) == 0 or len(ib) == 0:
        return empty
    # Squared pixel distances (|A| x |B|); a few thousand points each, so a dense matrix is fine.
    d2 = ((pa[ia, None, :] - xb[None, ib, :]) ** 2).sum(-1)
    cand = d2 <= cfg.pixel_tol**2
    log_ratio = np.log(kp_b.size[ib][None, :] / (kp_a.size[ia, None] * lscale[ia, None]))
    cand &= np.abs(log_ratio) < cfg.log_scale_tol
    dang = np.abs((kp_b.angle[ib][None, :] - ang_expected[ia, None] + 180.0) % 360.0 - 180.0)
    cand &= dang < cfg.angle_tol_deg
    cost = np.where(cand, d2 / cfg.pixel_tol**2 + (log_ratio / cfg.log_scale_tol) ** 2, np.inf)
    rows, cols = np.nonzero(np.isfinite(cost))
    if len(rows) == 0:
        return empty
    order = np.argsort(cost[rows, cols], kind="stable")
    used_a: set[int] = set()
    used_b: set[int] = set()
    out_a, out_b = [], []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_a or c in used_b:
            continue
        used_a.add(r)
        used_b.add(c)
        out_a.append(ia[r])
        out_b.append(ib[c])
    return np.asarray(out_a, np.int64), np.asarray(out_b, np.int64)


# --------------------------------------------------------------------------------------------
# photometric changes


def photometric(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, contrast/brightness, blur, noise and JPEG re-encoding.

    Shape:
        - gray: ``(H, W)`` float32 in [0, 1]; output the same.
    """
    img = np.clip(gray, 0.0, 1.0) ** rng.uniform(0.6, 1.6)
    img = img * rng.uniform(0.6, 1.3) + rng.uniform(-0.1, 0.15)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 1.3))
    if rng.random() < 0.6:
        img = img + rng.normal(0.0, rng.uniform(0.002, 0.03), img.shape)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.5:
        u8 = (img * 255.0 + 0.5).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 96))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    return img


def downscale(gray: np.ndarray, max_side: int) -> np.ndarray:
    h, w = gray.shape
    if max(h, w) <= max_side:
        return gray
    f = max_side / max(h, w)
    return cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _patches(kp: Keypoints, idx: np.ndarray) -> torch.Tensor:
    """uint8 ``(len(idx), 1, 32, 32)`` patches of the selected keypoints."""
    p = torch.from_numpy(extract_patches(kp.det_image, kp.det_xy[idx], kp.det_size[idx], kp.angle[idx]))
    return (p * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)


def warp_pair(gray: np.ndarray, rng: np.random.Generator, cfg: WarpConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp a photo by a random homography (and photometric changes).

    Returns:
        ``(warped, valid, H)``: the warped ``(H, W)`` float32 image (same size as the input), its
        valid-pixel mask (uint8) and the ``(3, 3)`` homography from input to warped pixels.
    """
    h, w = gray.shape
    hm = random_homography(rng, (h, w), (h, w), cfg)
    warped = cv2.warpPerspective(gray, hm, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    valid = cv2.warpPerspective(
        np.ones((h, w), np.uint8), hm, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
    )
    if cfg.photometric:
        warped = photometric(warped, rng)
    return warped, valid, hm


def photo_groups(path: Path, index: int, cfg: WarpConfig) -> tuple[torch.Tensor, np.ndarray]:
    """Self-supervised patch groups of one photo.

    Returns:
        ``(patches, ids)``: uint8 ``(N, 1, 32, 32)`` patches and ``(N,)`` ids local to this photo
        (index of the reference keypoint). Only keypoints found in at least one warp are kept.
    """
    rng = np.random.default_rng([cfg.seed, index])
    gray = downscale(load_image(path).gray, cfg.max_side)
    dcfg = DetectConfig(max_keypoints=cfg.max_keypoints)
    ref = detect(gray, dcfg)

    def warps():
        for _ in range(cfg.warps_per_image):
            warped, valid, hm = warp_pair(gray, rng, cfg)
            yield detect(warped, dcfg), hm, valid

    return _reference_groups(ref, warps(), cfg)


def _reference_groups(
    ref: Keypoints, views: Iterable[tuple[Keypoints, np.ndarray, np.ndarray | None]], cfg: WarpConfig
) -> tuple[torch.Tensor, np.ndarray]:
    """Patches of the reference keypoints found again in other views, grouped by reference index.

    Args:
        ref: keypoints of the reference image.
        views: ``(keypoints, H from the reference, valid mask or None)`` of each other view.
        cfg: pairing options.

    Returns:
        ``(patches, ids)``: uint8 ``(N, 1, 32, 32)`` patches (the reference's first) and their
        reference keypoint indices; only reference keypoints found in some view are kept.
    """
    chunks: list[torch.Tensor] = []
    ids: list[np.ndarray] = []
    seen = np.zeros(len(ref), dtype=bool)
    for kp, hm, valid in views:
        ia, ib = match_by_homography(ref, kp, hm, cfg, valid_b=valid)
        if len(ia) == 0:
            continue
        chunks.append(_patches(kp, ib))
        ids.append(ia)
        seen[ia] = True
    ref_idx = np.flatnonzero(seen)
    if len(ref_idx):
        chunks.insert(0, _patches(ref, ref_idx))
        ids.insert(0, ref_idx)
    if not chunks:
        return torch.zeros((0, 1, PATCH_SIZE, PATCH_SIZE), dtype=torch.uint8), np.zeros(0, np.int64)
    return torch.cat(chunks), np.concatenate(ids).astype(np.int64)


def _photo_worker(args: tuple[str, int, dict]) -> tuple[torch.Tensor, np.ndarray]:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    path, index, cfg = args
    return photo_groups(Path(path), index, WarpConfig(**cfg))


def _cache_key(kind: str, cfg: Any, files: Sequence[Path], extra: Any = None) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"kind": kind, "version": CACHE_VERSION, "cfg": dataclasses.asdict(cfg) if cfg else None, "extra": extra},
            sort_keys=True,
        ).encode()
    )
    for f in files:
        st = Path(f).stat()
        h.update(f"{Path(f).name}:{st.st_size}".encode())
    return h.hexdigest()[:16]


def build_warp_dataset(
    photos: Sequence[Path],
    cfg: WarpConfig,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    workers: int = 1,
    progress: bool = False,
) -> PatchDataset:
    """Self-supervised patch dataset from random warps of ``photos`` (cached).

    Args:
        photos: the photos (TRAIN split for training).
        cfg: warp and pairing options.
        cache_dir: where the built dataset is cached (``None``: no cache).
        workers: processes used to build (photos are independent; results do not depend on it).
        progress: show a tqdm bar.

    Returns:
        A :class:`PatchDataset`; ids are unique across photos.
    """
    photos = [Path(p) for p in photos]
    if not photos:
        raise DatasetError("no photos to build a dataset from")
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"warp-{_cache_key('warp', cfg, photos)}.pt"
        if cache.is_file():
            logger.info("loading cached patch dataset %s", cache)
            return PatchDataset.load(cache)
    jobs = [(str(p), i, dataclasses.asdict(cfg)) for i, p in enumerate(photos)]
    if workers > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers) as pool:
            it = pool.imap(_photo_worker, jobs)
            results = list(_maybe_tqdm(it, len(jobs), progress, "building patches"))
    else:
        results = [
            photo_groups(Path(p), i, cfg) for p, i, _ in _maybe_tqdm(jobs, len(jobs), progress, "building patches")
        ]
    parts = [PatchDataset(p, torch.from_numpy(i)) for p, i in results]
    ds = PatchDataset.concat(parts)
    logger.info("built %d patches of %d points from %d photos", len(ds), ds.num_points, len(photos))
    if cache is not None:
        ds.save(cache)
    return ds


def _maybe_tqdm(it: Any, total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# HPatches / Oxford sequences


def sequence_groups(
    ref_path: Path, others: Sequence[tuple[Path, np.ndarray]], cfg: WarpConfig, id_offset: int = 0
) -> PatchDataset:
    """Patch groups of a real sequence: reference keypoints paired in each other image by GT H.

    Args:
        ref_path: image 1.
        others: ``(image k, H_1_k)`` pairs (H maps image-1 pixels to image-k pixels).
        cfg: detector and pairing options (only the pairing and ``max_keypoints`` fields are used).
        id_offset: added to the point ids.
    """
    dcfg = DetectConfig(max_keypoints=cfg.max_keypoints)
    ref = detect(load_image(ref_path).gray, dcfg)
    views = ((detect(load_image(path).gray, dcfg), hm, None) for path, hm in others)
    patches, ids = _reference_groups(ref, views, cfg)
    return PatchDataset(patches, torch.from_numpy(ids + id_offset))


def _sequence_dataset(root: Path, cfg: WarpConfig, h_glob: str, read_pairs, layout: str) -> PatchDataset:
    """Patch groups from every sequence folder under ``root`` (or ``root`` itself) holding ``h_glob`` files.

    The folder is read by the evaluation's sequence reader, so training and evaluation agree on
    the layout; a homography file without its image is an error here, not a skipped pair.
    """
    root = Path(root)

    def has_h(folder: Path) -> bool:
        return any(folder.glob(h_glob))

    seqs = [root] if has_h(root) else sorted(d for d in root.iterdir() if d.is_dir() and has_h(d))
    if not seqs:
        raise DatasetError(f"{root} holds no {layout} sequence")
    parts = []
    for seq in seqs:
        pairs = read_pairs(seq)
        n_h = len(list(seq.glob(h_glob)))
        if not pairs or len(pairs) != n_h:
            raise DatasetError(f"{seq}: {n_h} homography files but {len(pairs)} readable image pairs")
        parts.append(sequence_groups(pairs[0].image1, [(p.image2, p.H) for p in pairs], cfg))
    return PatchDataset.concat(parts)


def hpatches_dataset(root: Path, cfg: WarpConfig = WarpConfig()) -> PatchDataset:
    """Patch groups from HPatches-layout sequences: ``<seq>/1.ppm..6.ppm`` and ``<seq>/H_1_k``.

    ``root`` is one sequence folder or a folder of sequence folders.
    """
    return _sequence_dataset(root, cfg, "H_1_*", hpatches_sequence, "HPatches (a folder with 1.ppm and H_1_2)")


def oxford_dataset(root: Path, cfg: WarpConfig = WarpConfig()) -> PatchDataset:
    """Patch groups from an Oxford-affine sequence: ``img1.ppm|png..imgK`` and ``H1tokp``.

    ``root`` is one sequence folder or a folder of sequence folders.
    """
    return _sequence_dataset(root, cfg, "H1to*p", oxford_sequence, "Oxford (a folder with img1.* and H1to2p)")


# --------------------------------------------------------------------------------------------
# UBC / Brown PhotoTour


#: PhotoTour bitmaps hold 16 x 16 patches of 64 x 64 pixels.
PHOTOTOUR_GRID = 16
PHOTOTOUR_SIDE = 64


def load_phototour(root: Path, max_patches: int | None = None) -> PatchDataset:
    """Read a UBC PhotoTour folder (``info.txt``, ``patches*.bmp``), resizing patches to 32x32.

    ``info.txt`` has one line per patch whose first number is the 3D point id; the bitmaps are
    1024 x 1024 grids of 16 x 16 patches of 64 x 64 pixels in row-major order.

    Raises:
        DatasetError: the folder or its files are missing or inconsistent.
    """
    root = Path(root)
    info = root / "info.txt"
    if not info.is_file():
        raise DatasetError(f"{root} is not a PhotoTour folder: info.txt missing")
    ids = np.array([int(line.split()[0]) for line in info.read_text().splitlines() if line.strip()], dtype=np.int64)
    if max_patches is not None:
        ids = ids[:max_patches]
    bmps = sorted(root.glob("patches*.bmp"))
    per = PHOTOTOUR_GRID * PHOTOTOUR_GRID
    need = (len(ids) + per - 1) // per
    if len(bmps) < need:
        raise DatasetError(f"{root}: info.txt lists {len(ids)} patches but only {len(bmps)} bitmaps of {per} exist")
    out = np.zeros((len(ids), 1, PATCH_SIZE, PATCH_SIZE), np.uint8)
    for b in range(need):
        img = cv2.imread(str(bmps[b]), cv2.IMREAD_GRAYSCALE)
        if (
            img is None
            or img.shape[0] < PHOTOTOUR_GRID * PHOTOTOUR_SIDE
            or img.shape[1] < PHOTOTOUR_GRID * PHOTOTOUR_SIDE
        ):
            raise DatasetError(f"{bmps[b]} is not a {PHOTOTOUR_GRID * PHOTOTOUR_SIDE}-pixel patch grid")
        for k in range(per):
            n = b * per + k
            if n >= len(ids):
                break
            r, c = divmod(k, PHOTOTOUR_GRID)
            tile = img[r * PHOTOTOUR_SIDE : (r + 1) * PHOTOTOUR_SIDE, c * PHOTOTOUR_SIDE : (c + 1) * PHOTOTOUR_SIDE]
            out[n, 0] = cv2.resize(tile, (PATCH_SIZE, PATCH_SIZE), interpolation=cv2.INTER_AREA)
    return PatchDataset(torch.from_numpy(out), torch.from_numpy(ids))


def load_phototour_pairs(root: Path, dataset: PatchDataset, match_file: str | None = None) -> PairSet:
    """Labelled pairs from a PhotoTour ``m50_*.txt`` file.

    Each line is ``patch1 point1 _ patch2 point2 _ _``; a pair is positive when the points agree.
    """
    root = Path(root)
    files = [root / match_file] if match_file else sorted(root.glob("m50_*.txt"))
    if not files or not files[0].is_file():
        raise DatasetError(f"{root} has no m50_*.txt match file")
    rows = np.array(
        [[int(v) for v in line.split()[:5]] for line in files[0].read_text().splitlines() if line.strip()],
        dtype=np.int64,
    ).reshape(-1, 5)
    i, j = rows[:, 0], rows[:, 3]
    if len(rows) and max(i.max(), j.max()) >= len(dataset):
        raise DatasetError(f"{files[0]} refers to patch {max(i.max(), j.max())} but only {len(dataset)} were read")
    label = torch.from_numpy(rows[:, 1] == rows[:, 4])
    return PairSet(
        dataset.patches[i], dataset.patches[j], label, torch.zeros(len(rows), dtype=torch.int64), (files[0].name,)
    )


# --------------------------------------------------------------------------------------------
# evaluation pairs


def pairs_from_matches(
    pa: torch.Tensor,
    pb: torch.Tensor,
    rng: np.random.Generator,
    xy_b_proj: np.ndarray,
    xy_b: np.ndarray,
    min_dist: float = 10.0,
    hard: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positive pairs ``(pa[i], pb[i])`` plus as many negatives ``(pa[i], pb[j])``, j != i.

    A negative partner ``j`` is taken among the matched keypoints of b whose position is at
    least ``min_dist`` pixels from the projection of ``a[i]`` (so it shows another point). With
    ``hard`` it is the one whose pixels look most alike (smallest L2 distance between the
    patches normalized to zero mean and unit variance; a descriptor-agnostic hard negative),
    otherwise a random one.

    Shape:
        - pa, pb: ``(M, 1, 32, 32)``; xy_b_proj, xy_b: ``(M, 2)``.
        - Output: a, b ``(2M, 1, 32, 32)``, label ``(2M,)`` bool (first M True).
    """
    m = len(pa)
    far = ((xy_b[None, :, :] - xy_b_proj[:, None, :]) ** 2).sum(-1) >= min_dist**2
    if hard:

        def norm(x: torch.Tensor) -> torch.Tensor:
            f = x.flatten(1).float()
            f = f - f.mean(1, keepdim=True)
            return f / (f.norm(dim=1, keepdim=True) + 1e-6)

        d = torch.cdist(norm(pa), norm(pb)).numpy()
        d[~far] = np.inf
        neg = d.argmin(1)
        neg[~np.isfinite(d.min(1))] = (np.flatnonzero(~np.isfinite(d.min(1))) + 1) % m
    else:
        neg = np.empty(m, np.int64)
        for i in range(m):
            cand = np.flatnonzero(far[i])
            neg[i] = rng.choice(cand) if len(cand) else (i + 1) % m
    a = torch.cat([pa, pa])
    b = torch.cat([pb, pb[torch.from_numpy(neg.astype(np.int64))]])
    label = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)])
    return a, b, label


def image_pair_pairs(
    gray_a: np.ndarray,
    gray_b: np.ndarray,
    hm: np.ndarray,
    cfg: WarpConfig,
    rng: np.random.Generator,
    valid_b: np.ndarray | None = None,
    max_pairs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positive and negative patch pairs (1:1) of one image pair with a known homography a->b."""
    dcfg = DetectConfig(max_keypoints=cfg.max_keypoints)
    ka, kb = detect(gray_a, dcfg), detect(gray_b, dcfg)
    ia, ib = match_by_homography(ka, kb, hm, cfg, valid_b=valid_b)
    if max_pairs is not None and len(ia) > max_pairs:
        keep = np.sort(rng.choice(len(ia), max_pairs, replace=False))
        ia, ib = ia[keep], ib[keep]
    empty = torch.zeros((0, 1, PATCH_SIZE, PATCH_SIZE), dtype=torch.uint8)
    if len(ia) < 2:
        return empty, empty, torch.zeros(0, dtype=torch.bool)
    return pairs_from_matches(
        _patches(ka, ia), _patches(kb, ib), rng, project(hm, ka.xy[ia]), kb.xy[ib].astype(np.float64)
    )


@dataclass(frozen=True)
class TestPairsConfig:
    """The fixed test-split pairs (changes rebuild the cache; keep them fixed for comparability).

    Test pairs are matched with looser scale and orientation tolerances than training pairs,
    and their negatives are hard (most similar pixels, see :func:`pairs_from_matches`).

    Attributes:
        warps_per_photo: synthetic warps of each test photo.
        max_pairs_per_warp: positives kept per image pair (random subset).
        seed: the fixed seed.
        warp: warp / pairing options.
    """

    warps_per_photo: int = 5
    max_pairs_per_warp: int = 600
    seed: int = 12345
    warp: WarpConfig = WarpConfig(max_keypoints=2000, seed=12345, log_scale_tol=0.35, angle_tol_deg=30.0)


def build_pairs(
    photos: Sequence[Path],
    real_pairs: Sequence[tuple[Path, Path, np.ndarray]],
    cfg: TestPairsConfig,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    tag: str = "test",
) -> PairSet:
    """Labelled 1:1 patch pairs: synthetic warps of ``photos`` plus real image pairs with GT H (cached)."""
    photos = [Path(p) for p in photos]
    files = photos + [p for a, b, _ in real_pairs for p in (a, b)]
    cache = None
    if cache_dir is not None:
        extra = {
            "tag": tag,
            "real": [[str(Path(a).name), str(Path(b).name), np.asarray(h).round(8).tolist()] for a, b, h in real_pairs],
            "cfg": dataclasses.asdict(cfg),
        }
        cache = Path(cache_dir) / f"pairs-{tag}-{_cache_key('pairs', None, files, extra)}.pt"
        if cache.is_file():
            logger.info("loading cached pairs %s", cache)
            return PairSet.load(cache)
    a_all, b_all, l_all, s_all, names = [], [], [], [], []
    for k, photo in enumerate(photos):
        rng = np.random.default_rng([cfg.seed, k])
        gray = downscale(load_image(photo).gray, cfg.warp.max_side)
        for w in range(cfg.warps_per_photo):
            warped, valid, hm = warp_pair(gray, rng, cfg.warp)
            a, b, lab = image_pair_pairs(
                gray, warped, hm, cfg.warp, rng, valid_b=valid, max_pairs=cfg.max_pairs_per_warp
            )
            names.append(f"{photo.stem}/warp{w}")
            a_all.append(a), b_all.append(b), l_all.append(lab)
            s_all.append(torch.full((len(lab),), len(names) - 1, dtype=torch.int64))
    for k, (pa, pb, hm) in enumerate(real_pairs):
        rng = np.random.default_rng([cfg.seed, 1000 + k])
        a, b, lab = image_pair_pairs(
            load_image(pa).gray, load_image(pb).gray, np.asarray(hm, np.float64), cfg.warp, rng, max_pairs=None
        )
        names.append(f"{Path(pa).stem}->{Path(pb).stem}")
        a_all.append(a), b_all.append(b), l_all.append(lab)
        s_all.append(torch.full((len(lab),), len(names) - 1, dtype=torch.int64))
    ps = PairSet(torch.cat(a_all), torch.cat(b_all), torch.cat(l_all), torch.cat(s_all), tuple(names))
    logger.info("built %d %s pairs (%d positive)", len(ps), tag, int(ps.label.sum()))
    if cache is not None:
        ps.save(cache)
    return ps


def build_test_pairs(
    data_root: Path = DEFAULT_DATA_ROOT,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    cfg: TestPairsConfig = TestPairsConfig(),
) -> PairSet:
    """The fixed TEST pairs: warps of astronaut, coffee, motorcycle_left/right plus graf1->graf3."""
    data_root = Path(data_root)
    ocv = data_root / "opencv-samples"
    real = [(ocv / "graf1.png", ocv / "graf3.png", read_homography(ocv / "H1to3p.xml"))]
    return build_pairs(test_photos(data_root), real, cfg, cache_dir, tag="test")


def build_val_pairs(data_root: Path = DEFAULT_DATA_ROOT, cache_dir: Path | None = DEFAULT_CACHE_DIR) -> PairSet:
    """Monitoring pairs from fresh warps (another seed) of a few TRAIN photos; never test images.

    These share photos with training, so they only track progress; they are not a held-out score.
    """
    photos = train_photos(data_root)[::6]
    cfg = TestPairsConfig(
        warps_per_photo=2,
        max_pairs_per_warp=300,
        seed=777,
        warp=WarpConfig(seed=777, log_scale_tol=0.35, angle_tol_deg=30.0),
    )
    return build_pairs(photos, [], cfg, cache_dir, tag="val")

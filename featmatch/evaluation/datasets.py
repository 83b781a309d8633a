"""Image pairs with a true homography: HPatches, Oxford and EVD folders, and featmatch's own benchmark.

A :class:`Pair` names two image files and the ``(3, 3)`` homography mapping pixel ``(x, y, 1)``
of image 1 to image 2. :func:`discover` finds pairs in a folder (one sequence or a folder of
sequences, any depth up to three); :func:`default_pairs` is the benchmark ``featmatch eval``
runs with no folder: the real graf1 -> graf3 pair and seeded synthetic pairs made from the
test photographs in ``featmatch/evaldata``, written once to a cache folder and then reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import DatasetError
from ..geometry import corners, degeneracy, project

logger = logging.getLogger(__name__)

#: Folder of the bundled benchmark images (test split only; see evaldata/SOURCE.md).
EVALDATA = Path(__file__).resolve().parent.parent / "evaldata"
#: Environment variable overriding the cache root (default ``~/.cache/featmatch``).
CACHE_ENV = "FEATMATCH_CACHE"
#: Version of the synthetic pairs; bump it whenever the generator changes.
SYNTHETIC_VERSION = "eval-v1"
#: Seed of the synthetic pairs.
SYNTHETIC_SEED = 20261124
#: Test-split photographs the synthetic pairs are made from (never a training image).
SYNTHETIC_PHOTOS = ("astronaut.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png")
#: Pairs per photograph and strength level (4 photos x 3 levels x 2 = 24 pairs).
PAIRS_PER_LEVEL = 2
#: Extensions tried for sequence images, in order.
IMAGE_EXTS = (".ppm", ".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff")



@dataclass(frozen=True, eq=False)
class Pair:
    """Two images and the true homography between them.

    Attributes:
        name: unique label, e.g. ``v_graffiti/1-3`` or ``synthetic/astronaut/hard-1``.
        group: what the pair is reported under, e.g. ``hpatches-v``, ``graf``, ``synthetic-hard``.
        real: a real photograph pair (True) or a synthetic warp (False); reported separately.
        image1, image2: image files.
        H: ``(3, 3)`` float64 mapping image-1 pixels to image-2 pixels (``H[2, 2] = 1``).
    """

    name: str
    group: str
    real: bool
    image1: Path
    image2: Path
    H: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SyntheticLevel:
    """Strength of a random homography and of the photometric change of image 2.

    Attributes:
        name: ``easy``, ``medium`` or ``hard``.
        rotation_deg: rotation drawn from ``[-r, r]``.
        log_scale: scale ``exp(u)``, ``u`` from ``[-s, s]``.
        perspective: each perspective coefficient (in half-image units) from ``[-p, p]``.
        shift: translation as a fraction of the image size, from ``[-t, t]``.
        contrast: gain from ``[1 - c, 1 + c]``.
        brightness: offset (fraction of 255) from ``[-b, b]``.
        gamma: exponent ``exp(u)``, ``u`` from ``[-g, g]``.
        noise: standard deviation of added Gaussian noise (gray levels).
        blur: Gaussian blur sigma (0: none).
    """

    name: str
    rotation_deg: float
    log_scale: float
    perspective: float
    shift: float
    contrast: float
    brightness: float
    gamma: float
    noise: float
    blur: float


#: The three strengths of the synthetic pairs.
LEVELS = (
    SyntheticLevel("easy", 15.0, 0.20, 0.10, 0.03, 0.15, 0.05, 0.15, 2.0, 0.0),
    SyntheticLevel("medium", 45.0, 0.50, 0.25, 0.05, 0.30, 0.10, 0.30, 4.0, 0.6),
    SyntheticLevel("hard", 180.0, 0.90, 0.45, 0.08, 0.45, 0.15, 0.50, 7.0, 1.2),
)


def read_homography(path: Path) -> np.ndarray:
    """Read a ``(3, 3)`` homography: plain text (HPatches, Oxford, EVD) or OpenCV FileStorage XML/YAML.

    Returns:
        float64, scaled so that ``H[2, 2] == 1`` (when it is not 0).

    Raises:
        DatasetError: unreadable, not 3x3, or not finite.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".xml", ".yml", ".yaml"):
            fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
            if not fs.isOpened():
                raise OSError("not an OpenCV FileStorage file")
            root = fs.root()
            # The first matrix node (graf's H1to3p.xml calls it H13).
            H = next((m for m in (root.getNode(k).mat() for k in root.keys()) if m is not None), None)
            fs.release()
        else:
            H = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError, cv2.error) as exc:
        raise DatasetError(f"cannot read homography {path}: {exc}") from None
    if H is None:
        raise DatasetError(f"cannot read homography {path}: no matrix in the file")
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (3, 3) or not np.all(np.isfinite(H)):
        raise DatasetError(f"homography {path} is not a finite 3x3 matrix (shape {H.shape})")
    return H / H[2, 2] if abs(H[2, 2]) > 1e-12 else H


def _find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def _hpatches_group(seq: str) -> str:
    if seq.startswith("v_"):
        return "hpatches-v"
    if seq.startswith("i_"):
        return "hpatches-i"
    return "hpatches"


def hpatches_sequence(folder: Path) -> list[Pair]:
    """Pairs ``1 -> N`` of an HPatches sequence (``1.ppm`` ... ``6.ppm``, ``H_1_2`` ... ``H_1_6``)."""
    folder = Path(folder)
    ref = _find_image(folder, "1")
    if ref is None:
        return []
    pairs = []
    for n in range(2, 100):
        h_file, img = folder / f"H_1_{n}", _find_image(folder, str(n))
        if not h_file.is_file() or img is None:
            continue
        pairs.append(
            Pair(f"{folder.name}/1-{n}", _hpatches_group(folder.name), True, ref, img, read_homography(h_file))
        )
    return pairs


def oxford_sequence(folder: Path) -> list[Pair]:
    """Pairs ``img1 -> imgN`` of an Oxford Affine sequence (``img1.ppm|png``, ``H1to2p`` ...)."""
    folder = Path(folder)
    ref = _find_image(folder, "img1")
    if ref is None:
        return []
    pairs = []
    for n in range(2, 100):
        h_file, img = folder / f"H1to{n}p", _find_image(folder, f"img{n}")
        if not h_file.is_file() or img is None:
            continue
        pairs.append(Pair(f"{folder.name}/1-{n}", f"oxford-{folder.name}", True, ref, img, read_homography(h_file)))
    return pairs


def evd_folder(folder: Path) -> list[Pair]:
    """EVD layout: ``1/NAME.png``, ``2/NAME.png`` and ``h/NAME.txt`` per pair."""
    folder = Path(folder)
    pairs = []
    for h_file in sorted((folder / "h").glob("*.txt")):
        a, b = _find_image(folder / "1", h_file.stem), _find_image(folder / "2", h_file.stem)
        if a is not None and b is not None:
            pairs.append(Pair(f"evd/{h_file.stem}", "evd", True, a, b, read_homography(h_file)))
    return pairs


def _pairs_in(folder: Path) -> list[Pair]:
    if (folder / "H_1_2").is_file() or any(folder.glob("H_1_*")):
        return hpatches_sequence(folder)
    if any(folder.glob("H1to*p")):
        return oxford_sequence(folder)
    if (folder / "h").is_dir() and (folder / "1").is_dir() and (folder / "2").is_dir():
        return evd_folder(folder)
    return []


def discover(data_dir: Path, max_depth: int = 3) -> list[Pair]:
    """All pairs with ground truth in ``data_dir``: itself a sequence, or sequences below it.

    Recognized layouts: HPatches (``H_1_N``), Oxford (``H1toNp``), EVD (``1/``, ``2/``, ``h/``).
    Sequences are visited in sorted order, so the pair order is stable.

    Raises:
        DatasetError: the folder does not exist or holds no recognized sequence.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"evaluation folder {data_dir} does not exist or is not a folder")

    def walk(folder: Path, depth: int) -> list[Pair]:
        found = _pairs_in(folder)
        if found or depth >= max_depth:
            return found
        out: list[Pair] = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out.extend(walk(sub, depth + 1))
        return out

    pairs = walk(data_dir, 0)
    if not pairs:
        raise DatasetError(
            f"no image pairs with a ground-truth homography in {data_dir}: expected HPatches sequences "
            "(1.ppm ... 6.ppm with H_1_2 ... H_1_6), Oxford sequences (img1.ppm|png with H1to2p ...) "
            "or an EVD folder (1/, 2/, h/)"
        )
    return pairs


# ----------------------------------------------------------------------------------------------
# featmatch's own benchmark


def cache_root() -> Path:
    """``$FEATMATCH_CACHE`` or ``~/.cache/featmatch``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "featmatch"


def random_homography(rng: np.random.Generator, shape: tuple[int, int], level: SyntheticLevel) -> np.ndarray:
    """A random homography of the given strength about the image centre (may be implausible).

    ``H = T(centre + shift) @ R(angle) S(scale) @ P(perspective) @ T(-centre)``, with the
    perspective coefficients expressed per half image side.
    """
    h, w = shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    half = max(w, h) / 2.0
    ang = np.deg2rad(rng.uniform(-level.rotation_deg, level.rotation_deg))
    s = float(np.exp(rng.uniform(-level.log_scale, level.log_scale)))
    px, py = rng.uniform(-level.perspective, level.perspective, 2) / half
    tx, ty = rng.uniform(-level.shift, level.shift, 2) * np.array([w, h])
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    persp = np.array([[1, 0, 0], [0, 1, 0], [px, py, 1]], np.float64)
    rot = np.array([[s * np.cos(ang), -s * np.sin(ang), 0], [s * np.sin(ang), s * np.cos(ang), 0], [0, 0, 1]])
    back = np.array([[1, 0, cx + tx], [0, 1, cy + ty], [0, 0, 1]], np.float64)
    H = back @ rot @ persp @ to_centre
    return H / H[2, 2]


def _overlap(H: np.ndarray, shape: tuple[int, int]) -> float:
    """Area shared by the warped image 1 and image 2's frame, over the smaller of the two areas."""
    frame = corners(shape).astype(np.float32)
    quad = project(H, corners(shape)).astype(np.float32)
    area, _ = cv2.intersectConvexConvex(quad, frame)
    smaller = min(abs(cv2.contourArea(quad)), abs(cv2.contourArea(frame)))
    return float(area) / max(float(smaller), 1e-9)


def photometric(image: np.ndarray, rng: np.random.Generator, level: SyntheticLevel) -> np.ndarray:
    """Gain, offset, gamma, optional blur and Gaussian noise on a uint8 image (any channels)."""
    x = image.astype(np.float32) / 255.0
    gain = rng.uniform(1 - level.contrast, 1 + level.contrast)
    offset = rng.uniform(-level.brightness, level.brightness)
    gamma = float(np.exp(rng.uniform(-level.gamma, level.gamma)))
    x = np.clip(x * gain + offset, 0.0, 1.0) ** gamma
    if level.blur > 0:
        x = cv2.GaussianBlur(x, (0, 0), level.blur)
    x = x * 255.0 + rng.normal(0.0, level.noise, x.shape).astype(np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def make_synthetic_pair(
    image: np.ndarray, rng: np.random.Generator, level: SyntheticLevel, min_overlap: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``image`` by a random plausible homography and change its photometry.

    Shape:
        ``image (H, W[, C])`` uint8 -> ``(image2 (H, W[, C]) uint8, H (3, 3) float64)``.

    Raises:
        DatasetError: no plausible homography in 1000 draws (cannot happen with :data:`LEVELS`).
    """
    shape = image.shape[:2]
    for _ in range(1000):
        H = random_homography(rng, shape, level)
        if degeneracy(H, shape, max_scale_change=10.0) is None and _overlap(H, shape) >= min_overlap:
            break
    else:
        raise DatasetError(f"no plausible random homography for level '{level.name}'")
    warped = cv2.warpPerspective(image, H, (shape[1], shape[0]), flags=cv2.INTER_LINEAR, borderValue=0)
    return photometric(warped, rng, level), H


def _write_synthetic(folder: Path, photos: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    entries = []
    for photo in SYNTHETIC_PHOTOS:
        src = photos / photo
        image = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"benchmark image {src} is missing or unreadable; reinstall featmatch")
        stem = Path(photo).stem
        shutil.copyfile(src, folder / f"{stem}.png")
        for level in LEVELS:
            for k in range(PAIRS_PER_LEVEL):
                image2, H = make_synthetic_pair(image, rng, level)
                name = f"{stem}-{level.name}-{k}"
                if not cv2.imwrite(str(folder / f"{name}.png"), image2):
                    raise DatasetError(f"cannot write {folder / name}.png")
                np.savetxt(folder / f"{name}.H", H)
                entries.append(
                    {"name": f"synthetic/{stem}/{level.name}-{k}", "group": f"synthetic-{level.name}",
                     "image1": f"{stem}.png", "image2": f"{name}.png", "H": H.tolist()}
                )  # fmt: skip
    manifest = {"version": SYNTHETIC_VERSION, "seed": seed, "levels": [lv.__dict__ for lv in LEVELS], "pairs": entries}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def synthetic_pairs(cache_dir: Path | None = None, photos: Path = EVALDATA, seed: int = SYNTHETIC_SEED) -> list[Pair]:
    """The seeded synthetic pairs, generated on first use into ``cache_dir`` and reused after.

    Args:
        cache_dir: where the pairs live (default ``cache_root() / SYNTHETIC_VERSION``).
        photos: folder holding :data:`SYNTHETIC_PHOTOS`.
        seed: generator seed (a different seed needs a different ``cache_dir``).

    Returns:
        ``len(SYNTHETIC_PHOTOS) * len(LEVELS) * PAIRS_PER_LEVEL`` pairs, ordered by photo and level.
    """
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / SYNTHETIC_VERSION
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            logger.info("writing the synthetic evaluation pairs to %s", folder)
            _write_synthetic(tmp, photos, seed)
            try:
                tmp.rename(folder)
            except OSError:  # another process won the race (or the folder exists without a manifest)
                if not manifest_path.is_file():
                    raise DatasetError(
                        f"cannot create the evaluation cache {folder}; remove it or set {CACHE_ENV}"
                    ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"the evaluation cache {manifest_path} is unreadable ({exc}); delete {folder}") from None
    if manifest.get("version") != SYNTHETIC_VERSION or manifest.get("seed") != seed:
        raise DatasetError(f"the evaluation cache {folder} was made by another version or seed; delete it")
    pairs = []
    for e in manifest["pairs"]:
        a, b = folder / e["image1"], folder / e["image2"]
        if not (a.is_file() and b.is_file()):
            raise DatasetError(f"the evaluation cache {folder} is incomplete ({a.name} or {b.name}); delete it")
        pairs.append(Pair(e["name"], e["group"], False, a, b, np.asarray(e["H"], np.float64)))
    return pairs


def graf_pair(photos: Path = EVALDATA) -> Pair:
    """The real Oxford graffiti pair graf1 -> graf3 with its true homography."""
    return Pair(
        "graf1-graf3", "graf", True, photos / "graf1.png", photos / "graf3.png", read_homography(photos / "H1to3p.xml")
    )


def default_pairs(cache_dir: Path | None = None) -> list[Pair]:
    """featmatch's own benchmark: graf1 -> graf3 (real) and the synthetic pairs."""
    return [graf_pair()] + synthetic_pairs(cache_dir)

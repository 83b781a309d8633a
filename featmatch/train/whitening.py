"""Learned whitening of a trained descriptor (``featmatch whiten``), fitted on TRAIN patch pairs.

Radenović, Tolias, Chum ("Fine-tuning CNN image retrieval with no human annotation"), learned
whitening: with ``C_S`` the covariance of the differences of MATCHING pairs and ``C_D`` that of
the NON-MATCHING differences after whitening by ``C_S^-1/2``, the map is

    w(f) = L2( E^T C_S^-1/2 (f - mu) ),   E: eigenvectors of C_D (largest variance first),

one fixed ``D x D`` matrix plus a mean shift after the network, then L2 normalization. ``mu`` is
the mean descriptor of the fitting patches. Two places to put it:

- ``space="unit"`` (the paper's form): on the network's L2-normalized output.
- ``space="raw"``: on the output BEFORE the network's L2 normalization (the last BatchNorm's);
  there the map is affine in the last convolution's output, so it folds into that convolution
  (weights ``M W``, bias ``-M mu``-like) for inference.

``shrinkage`` regularizes ``C_S`` towards ``tr(C_S)/D I`` (0: plain whitening). At full
dimension the rotation ``E`` is orthogonal and changes no distance; it orders the components
(for a later dimensionality reduction) and is kept to follow the paper.

Data: patch groups of :func:`featmatch.train.datasets.build_warp_dataset` on a subset of the
TRAIN photos (``photos[1::3]`` by default, disjoint from the monitoring photos ``photos[::6]``
on which ``shrinkage`` can be chosen); never a test image. Saved as ``.npz`` (arrays and a JSON
string, read back with ``allow_pickle=False``), never a pickle.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from ..errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: Where the descriptor is whitened (see the module docstring).
SPACES = ("unit", "raw")
#: File format version of the saved whitening.
FORMAT = 1


@dataclass(frozen=True)
class Whitening:
    """A fitted learned whitening.

    Attributes:
        matrix: ``(D, D)`` float64, ``E^T C_S^-1/2``.
        mean: ``(D,)`` float64, subtracted first.
        space: ``unit`` or ``raw`` (which network output it applies to).
        meta: descriptor name, weights sha256, data and options (JSON-able).
    """

    matrix: np.ndarray
    mean: np.ndarray
    space: str = "unit"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if self.matrix.ndim != 2 or self.matrix.shape != (d, d):
            raise ConfigError(f"whitening matrix must be (D, D) with D = len(mean), got {self.matrix.shape} and {d}")
        if self.space not in SPACES:
            raise ConfigError(f"whitening space must be one of {', '.join(SPACES)}, got '{self.space}'")
        if not (np.all(np.isfinite(self.matrix)) and np.all(np.isfinite(self.mean))):
            raise ConfigError("whitening holds NaN or infinity")

    def apply(self, desc: np.ndarray) -> np.ndarray:
        """Shape: ``(N, D)`` descriptors (in :attr:`space`) -> ``(N, D)`` float32 unit vectors."""
        desc = np.asarray(desc, np.float64)
        if desc.ndim != 2 or desc.shape[1] != self.mean.shape[0]:
            raise ConfigError(f"whitening expects (N, {self.mean.shape[0]}) descriptors, got {desc.shape}")
        out = (desc - self.mean) @ self.matrix.T
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)

    def save(self, path: Path) -> Path:
        """Write ``path`` (.npz: ``matrix``, ``mean``, ``meta`` as a JSON string; no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "space": self.space, "format": FORMAT}
        with open(path, "wb") as f:
            np.savez(
                f,
                matrix=self.matrix.astype(np.float64),
                mean=self.mean.astype(np.float64),
                meta=np.array(json.dumps(meta, sort_keys=True)),
            )
        return path

    @classmethod
    def load(cls, path: Path) -> Whitening:
        """Read a file written by :meth:`save` (``allow_pickle=False``).

        Raises:
            ModelNotFoundError: missing, unreadable or malformed file (one line).
        """
        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(f"no whitening file at {path} (make one with `featmatch whiten NAME --out FILE`)")
        try:
            with np.load(path, allow_pickle=False) as z:
                matrix, mean, meta = z["matrix"], z["mean"], json.loads(str(z["meta"]))
            return cls(np.asarray(matrix, np.float64), np.asarray(mean, np.float64), meta.get("space", "unit"), meta)
        except (ConfigError, ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(f"whitening file {path} cannot be read: {msg}") from None


def fit_whitening(
    pos_a: np.ndarray,
    pos_b: np.ndarray,
    neg_a: np.ndarray,
    neg_b: np.ndarray,
    mean_of: np.ndarray,
    shrinkage: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The learned whitening ``(matrix, mean)`` of matching and non-matching descriptor pairs.

    Args:
        pos_a, pos_b: descriptors of matching pairs, row ``i`` with row ``i``.
        neg_a, neg_b: descriptors of non-matching pairs.
        mean_of: descriptors whose mean is subtracted (e.g. every fitting patch).
        shrinkage: in [0, 1): ``C_S <- (1 - s) C_S + s tr(C_S)/D I``.

    Returns:
        ``(E^T C_S^-1/2, mu)``, shapes ``(D, D)`` and ``(D,)``.

    Shape:
        - pos_a, pos_b: ``(P, D)``; neg_a, neg_b: ``(Q, D)``; mean_of: ``(M, D)``.
    """
    if not 0.0 <= shrinkage < 1.0:
        raise ConfigError(f"shrinkage must be in [0, 1), got {shrinkage}")
    pos = np.asarray(pos_a, np.float64) - np.asarray(pos_b, np.float64)
    neg = np.asarray(neg_a, np.float64) - np.asarray(neg_b, np.float64)
    d = pos.shape[1]
    if pos.shape[0] < d or neg.shape[0] < d:
        raise ConfigError(
            f"need at least {d} matching and {d} non-matching pairs, got {pos.shape[0]} and {neg.shape[0]}"
        )
    cs = pos.T @ pos / pos.shape[0]
    cs = (1.0 - shrinkage) * cs + shrinkage * (np.trace(cs) / d) * np.eye(d)
    val, vec = np.linalg.eigh(cs)
    floor = max(float(val.max()) * 1e-9, 1e-12)  # a rank-deficient C_S without shrinkage stays finite
    inv_sqrt = (vec / np.sqrt(np.maximum(val, floor))) @ vec.T
    white = neg @ inv_sqrt.T
    cd = white.T @ white / white.shape[0]
    val_d, vec_d = np.linalg.eigh(cd)
    rot = vec_d[:, ::-1]  # largest non-matching variance first
    return rot.T @ inv_sqrt, np.asarray(mean_of, np.float64).mean(axis=0)


def group_pairs(
    ids: np.ndarray, rng: np.random.Generator, max_pairs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Matching and non-matching index pairs of a grouped patch set.

    Matching: the first patch of each point with every other patch of it; non-matching: as
    many random pairs of patches of different points. Both capped at ``max_pairs`` (random).

    Shape:
        - ids: ``(N,)`` point id per patch. Output: four int64 index arrays.
    """
    ids = np.asarray(ids)
    order = np.argsort(ids, kind="stable")
    sid = ids[order]
    first = np.r_[True, sid[1:] != sid[:-1]]
    head = order[np.maximum.accumulate(np.where(first, np.arange(len(sid)), 0))]
    pa, pb = head[~first], order[~first]
    if len(pa) > max_pairs:
        keep = np.sort(rng.choice(len(pa), max_pairs, replace=False))
        pa, pb = pa[keep], pb[keep]
    n = len(pa)
    na, nb = rng.integers(0, len(ids), size=2 * n + 16), rng.integers(0, len(ids), size=2 * n + 16)
    diff = ids[na] != ids[nb]
    na, nb = na[diff][:n], nb[diff][:n]
    return pa.astype(np.int64), pb.astype(np.int64), na.astype(np.int64), nb.astype(np.int64)


# --------------------------------------------------------------------------------------------
# descriptors before and after whitening


def raw_descriptors(model: torch.nn.Module, patches: torch.Tensor, batch: int = 1024) -> np.ndarray:
    """The network's output before its L2 normalization (fp32, CPU).

    Shape:
        - patches: ``(N, 1, 32, 32)`` uint8 or float in [0, 1]. Output: ``(N, 128)`` float64.
    """
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, patches.shape[0], batch):
            x = patches[s : s + batch]
            x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
            outs.append(model.features(model.normalize_input(x)).flatten(1).double().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 128))


def in_space(raw: np.ndarray, space: str) -> np.ndarray:
    """Raw network outputs -> the descriptors a whitening of ``space`` applies to."""
    if space == "raw":
        return raw
    return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)


def weights_sha256(name: str) -> str:
    """The sha256 of ``models/<name>.pt``."""
    from ..weights import sha256_of, weight_path

    return sha256_of(weight_path(name))


class WhitenedModel:
    """Model ``name`` (fp32) followed by a whitening: patches -> whitened unit descriptors.

    Raises:
        ConfigError: the whitening was fitted on other weights than ``models/<name>.pt``.
    """

    def __init__(self, name: str, whitening: Whitening, check: bool = True):
        from ..network import load_weights

        fitted = whitening.meta.get("weights_sha256")
        if check and fitted and fitted != weights_sha256(name):
            raise ConfigError(
                f"the whitening was fitted on weights {fitted[:12]}, not on models/{name}.pt; refit it with "
                f"`featmatch whiten {name}`"
            )
        self.name = name
        self.model = load_weights(name)
        self.whitening = whitening
        self.precision = "fp32"  # the whitened column always runs the fp32 network

    def describe_patches(self, patches) -> np.ndarray:
        """Shape: ``(N, 1, 32, 32)`` uint8 or float patches (tensor or array) -> ``(N, 128)`` float32."""
        import torch

        x = torch.as_tensor(patches)
        return self.whitening.apply(in_space(raw_descriptors(self.model, x), self.whitening.space))

    def __call__(self, keypoints) -> np.ndarray:
        """Shape: ``Keypoints`` of N points -> ``(N, 128)`` float32."""
        from ..patches import patches_for

        if len(keypoints) == 0:
            return np.zeros((0, 128), np.float32)
        return self.describe_patches(patches_for(keypoints))


def parse_whiten_specs(specs) -> list[tuple[str, Path]]:  # noqa: ANN001 - click's tuple of strings
    """``NAME=FILE`` values of ``--whiten`` -> ``(name, path)``; raises ConfigError when malformed."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--whiten takes NAME=FILE (a model name and a `featmatch whiten` file), got '{spec}'")
        out.append((name.strip(), Path(path.strip())))
    return out


# --------------------------------------------------------------------------------------------
# fitting on TRAIN data


def fitting_dataset(
    data_root: Path,
    cache_dir: Path | None,
    every: int = 3,
    offset: int = 1,
    warps: int = 6,
    max_keypoints: int = 2000,
    workers: int = 1,
):  # noqa: ANN201 - a PatchDataset
    """Patch groups of the TRAIN photos ``train_photos[offset::every]`` (cached like the training set)."""
    from .datasets import WarpConfig, build_warp_dataset, train_photos

    photos = train_photos(data_root)[offset::every]
    if not photos:
        raise ConfigError(f"no train photos selected by offset {offset} and step {every}")
    cfg = WarpConfig(warps_per_image=warps, max_keypoints=max_keypoints)
    return build_warp_dataset(photos, cfg, cache_dir=cache_dir, workers=workers), [p.name for p in photos]


def fit_for_model(
    name: str,
    dataset,
    space: str = "unit",
    shrinkage: float = 0.0,
    max_pairs: int = 60000,
    seed: int = 0,
    photos: list[str] | None = None,
) -> Whitening:  # noqa: ANN001
    """Fit the whitening of ``models/<name>.pt`` on a :class:`~featmatch.train.datasets.PatchDataset`."""
    from ..network import load_weights

    if space not in SPACES:
        raise ConfigError(f"--space must be one of {', '.join(SPACES)}, got '{space}'")
    rng = np.random.default_rng(seed)
    pa, pb, na, nb = group_pairs(dataset.ids.numpy(), rng, max_pairs)
    used = np.unique(np.concatenate([pa, pb, na, nb]))
    model = load_weights(name)
    desc = np.zeros((len(dataset), 128))
    desc[used] = in_space(raw_descriptors(model, dataset.patches[used]), space)
    matrix, mean = fit_whitening(desc[pa], desc[pb], desc[na], desc[nb], desc[used], shrinkage)
    meta = {
        "descriptor": name,
        "weights_sha256": weights_sha256(name),
        "shrinkage": shrinkage,
        "matching_pairs": int(len(pa)),
        "non_matching_pairs": int(len(na)),
        "patches": int(len(used)),
        "train_photos": photos or [],
        "seed": seed,
        "method": "Radenovic et al. learned whitening: C_S^-1/2 of matching differences, then PCA rotation "
        "of the whitened non-matching differences",
    }
    return Whitening(matrix, mean, space, meta)


def verification(desc_fn, pairs) -> tuple[float, float]:  # noqa: ANN001
    """``(FPR95, mAP)`` of ``desc_fn`` (patches -> ``(N, D)`` array) on a PairSet."""
    from .metrics import fpr95, patch_map

    da, db = np.asarray(desc_fn(pairs.a)), np.asarray(desc_fn(pairs.b))
    dist = np.linalg.norm(da.astype(np.float64) - db, axis=1)
    lab = pairs.label.numpy()
    return fpr95(dist, lab), patch_map(dist, lab)


@click.command(
    "whiten",
    help="""Fit a learned whitening (Radenovic et al.) of model NAME on TRAIN patch pairs and save it.

Whitening by the covariance of matching-pair differences, then rotation by the PCA of the
whitened non-matching differences: one fixed 128x128 map plus a mean shift after the network,
then L2 normalization. Fitted on patch groups of every 3rd TRAIN photo (never a test image);
prints the monitoring-pair FPR95 (other TRAIN photos) without and with it. The file (.npz, no
pickle) is used by `featmatch eval-patches --whiten NAME=FILE` and `featmatch eval --whiten
NAME=FILE`; it is not folded into models/NAME.pt.

\b
Example:
  featmatch whiten hardnet --out runs/whiten/hardnet-unit.npz
""",
)
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .npz file to write.")
@click.option(
    "--space",
    type=click.Choice(SPACES),
    default="unit",
    show_default=True,
    help="unit: on the L2-normalized output (the paper); raw: before it (folds into the last conv).",
)
@click.option(
    "--shrinkage",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="Regularize the matching covariance towards a multiple of the identity.",
)
@click.option(
    "--max-pairs",
    type=click.IntRange(min=256),
    default=60000,
    show_default=True,
    help="Matching (and as many non-matching) pairs used.",
)
@click.option("--warps", type=click.IntRange(min=1), default=6, show_default=True, help="Random warps per photo.")
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Use every k-th TRAIN photo (starting at the second).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The shared data folder [default: ../shared/data next to the repository].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the patch groups are cached [default: runs/cache].",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
def whiten_command(
    name: str,
    out: Path,
    space: str,
    shrinkage: float,
    max_pairs: int,
    warps: int,
    every: int,
    seed: int,
    data_root: Path | None,
    cache_dir: Path | None,
    threads: int | None,
) -> None:
    import torch

    from ..network import load_weights
    from .datasets import DEFAULT_CACHE_DIR, DEFAULT_DATA_ROOT, build_val_pairs

    if threads is not None:
        torch.set_num_threads(threads)
    data_root = data_root or DEFAULT_DATA_ROOT
    cache_dir = cache_dir or DEFAULT_CACHE_DIR
    load_weights(name)  # a missing model fails before any data is built
    t0 = time.time()
    dataset, photos = fitting_dataset(data_root, cache_dir, every=every, warps=warps)
    click.echo(
        f"fitting data: {len(dataset)} patches of {dataset.num_points} points from {len(photos)} TRAIN photos", err=True
    )
    white = fit_for_model(name, dataset, space, shrinkage, max_pairs, seed, photos)
    white.save(out)
    val = build_val_pairs(data_root, cache_dir)
    model = WhitenedModel(name, white)
    before = verification(lambda p: in_space(raw_descriptors(model.model, p), "unit"), val)
    after = verification(model.describe_patches, val)
    click.echo(
        f"{name}: whitening ({space}, shrinkage {shrinkage:g}) from {white.meta['matching_pairs']} matching "
        f"pairs written to {out} ({time.time() - t0:.0f} s)"
    )
    click.echo(
        f"monitoring pairs (TRAIN photos, not held out): FPR95 {before[0]:.4f} -> {after[0]:.4f}, "
        f"mAP {before[1]:.4f} -> {after[1]:.4f}"
    )

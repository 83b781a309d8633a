"""Stage 4: nearest-neighbour matching with Lowe's ratio test and an optional mutual check.

Exact k=2 search by FAISS (``IndexFlatL2``; a GPU index when faiss-gpu and CUDA are there).
On a CUDA device without faiss-gpu the search runs in torch on the GPU, in bounded chunks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, check_type

logger = logging.getLogger(__name__)

#: Default Lowe ratio (on distances, not squared distances).
DEFAULT_RATIO = 0.8
#: Neighbours searched when the ratio test compares against the nearest *distinct* keypoint.
DISTINCT_K = 8


@dataclass(frozen=True)
class MatchConfig:
    """Options of the matcher.

    Attributes:
        ratio: keep a match when ``d1 < ratio * d2`` (nearest vs second nearest distance);
            1.0 disables the test.
        mutual: also require the match to be the nearest neighbour in the other direction.
    """

    ratio: float = DEFAULT_RATIO
    mutual: bool = False

    def __post_init__(self) -> None:
        check_type("ratio", self.ratio, "number")
        check_type("mutual", self.mutual, "bool")
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"ratio must be in (0, 1], got {self.ratio}")


@dataclass(frozen=True)
class Matches:
    """Matches between two descriptor sets.

    Attributes:
        pairs: ``(M, 2)`` int64 indices ``(i in set 1, j in set 2)``, sorted by ``i``.
        distances: ``(M,)`` float32 Euclidean distances of the pairs.
    """

    pairs: np.ndarray
    distances: np.ndarray

    def __len__(self) -> int:
        return int(self.pairs.shape[0])


def _empty() -> Matches:
    return Matches(np.zeros((0, 2), np.int64), np.zeros((0,), np.float32))


def _faiss_knn(query: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    dim = base.shape[1]
    index = faiss.IndexFlatL2(dim)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(base)
    dist, idx = index.search(query, k)
    return dist, idx


def _torch_knn(query: np.ndarray, base: np.ndarray, k: int, device: str, chunk: int = 8192):
    import torch

    b = torch.from_numpy(base).to(device)
    dists, idxs = [], []
    for s in range(0, query.shape[0], chunk):
        q = torch.from_numpy(query[s : s + chunk]).to(device)
        d = torch.cdist(q, b).square_()
        v, i = torch.topk(d, k, dim=1, largest=False)
        dists.append(v.cpu())
        idxs.append(i.cpu())
    return torch.cat(dists).numpy(), torch.cat(idxs).numpy().astype(np.int64)


def knn(query: np.ndarray, base: np.ndarray, k: int, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query row in ``base``.

    Returns:
        ``(sq_dist, idx)``, both ``(Nq, k)``; where ``base`` has fewer than ``k`` rows the
        missing neighbours have ``idx = -1`` and ``sq_dist = inf``.
    """
    nq, nb = query.shape[0], base.shape[0]
    sq = np.full((nq, k), np.inf, np.float32)
    idx = np.full((nq, k), -1, np.int64)
    if nq == 0 or nb == 0:
        return sq, idx
    query = np.ascontiguousarray(query, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    kk = min(k, nb)
    if device == "cuda":
        try:
            import faiss

            use_faiss = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        except ImportError:
            use_faiss = False
        d, i = _faiss_knn(query, base, kk) if use_faiss else _torch_knn(query, base, kk, device)
    else:
        d, i = _faiss_knn(query, base, kk)
    sq[:, :kk] = np.maximum(d, 0.0)
    idx[:, :kk] = i
    return sq, idx


def _second_distinct(sq: np.ndarray, idx: np.ndarray, xy2: np.ndarray, radius: float) -> np.ndarray:
    """Squared distance of the nearest neighbour lying more than ``radius`` from the nearest one.

    When none of the ``k`` found lies that far, the ``k``-th distance stands in (a lower bound of
    the true one, so the ratio test stays on the strict side).
    """
    ok = idx >= 0
    pos = xy2[np.where(ok, idx, 0)]
    far = ok & (np.linalg.norm(pos - pos[:, :1], axis=2) > radius)
    far[:, 0] = False
    first = np.where(far.any(1), far.argmax(1), sq.shape[1] - 1)
    return sq[np.arange(len(sq)), first]


def match_descriptors(
    desc1: np.ndarray,
    desc2: np.ndarray,
    config: MatchConfig = MatchConfig(),
    device: str = "cpu",
    xy2: np.ndarray | None = None,
    distinct_radius: float = 4.0,
) -> Matches:
    """Match ``desc1 (N1, D)`` against ``desc2 (N2, D)``.

    A query whose second neighbour does not exist (``N2 == 1``) passes the ratio test.
    Empty inputs give empty matches.

    With ``xy2`` (``(N2, 2)`` positions of set 2), the ratio test compares the nearest neighbour
    with the nearest one more than ``distinct_radius`` pixels away from it: set 2 then may hold
    several keypoints of one image point (simulated oblique views, or SIFT's extra orientations)
    without those copies failing each other's ratio test.
    """
    if desc1.ndim != 2 or desc2.ndim != 2 or (desc1.shape[1] != desc2.shape[1] and min(len(desc1), len(desc2)) > 0):
        raise ConfigError(f"descriptor arrays must be (N, D) with the same D, got {desc1.shape} and {desc2.shape}")
    if len(desc1) == 0 or len(desc2) == 0:
        return _empty()
    if xy2 is None:
        sq, idx = knn(desc1, desc2, 2, device)
        second = sq[:, 1]
    else:
        sq, idx = knn(desc1, desc2, DISTINCT_K, device)
        second = _second_distinct(sq, idx, np.asarray(xy2, np.float32), distinct_radius)
    keep = sq[:, 0] < (config.ratio**2) * second if config.ratio < 1.0 else np.ones(len(desc1), bool)
    keep |= ~np.isfinite(second)  # no second neighbour to compare against
    if config.mutual:
        _, back = knn(desc2, desc1, 1, device)
        keep &= back[idx[:, 0], 0] == np.arange(len(desc1))
    i = np.nonzero(keep)[0]
    pairs = np.stack([i, idx[i, 0]], axis=1).astype(np.int64)
    return Matches(pairs=pairs, distances=np.sqrt(sq[i, 0]).astype(np.float32))

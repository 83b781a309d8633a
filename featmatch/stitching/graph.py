"""The pair graph: which pairs to match, which matches to trust, the spanning tree and its centre.

Small sets match every pair. Larger ones shortlist candidate pairs by a vote over one FAISS
index of all images' descriptors: each descriptor's nearest neighbours in other images vote
for those images, and every image keeps its ``K`` best-voted partners, so the number of
pairs matched grows linearly with the image count.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..geometry import corners, project

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairMatch:
    """A verified overlap between images ``i`` and ``j``.

    Attributes:
        i, j: image indices (``i < j``).
        H: ``(3, 3)`` homography mapping pixels of image ``i`` to image ``j``.
        pts_i, pts_j: ``(K, 2)`` the inlier correspondences (pixels).
        num_matches: ratio-test matches of the pair.
        num_inliers: ``K``.
    """

    i: int
    j: int
    H: np.ndarray
    pts_i: np.ndarray
    pts_j: np.ndarray
    num_matches: int
    num_inliers: int


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every pair ``(i, j)``, ``i < j``, of ``n`` images."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def vote_pairs(
    descriptors: list[np.ndarray], per_image: int, sample: int = 500, neighbours: int = 4
) -> list[tuple[int, int]]:
    """Candidate overlapping pairs from a FAISS nearest-neighbour vote.

    The ``sample`` first descriptors of every image (the strongest keypoints) go into one
    index; each of them looks up its ``neighbours`` nearest descriptors and votes once for
    every other image among them. Each image keeps its ``per_image`` best-voted partners
    (with at least one vote); a pair is a candidate when either image keeps the other.

    Args:
        descriptors: per image ``(N_i, D)`` float32.
        per_image: partners kept per image.
        sample: descriptors per image taking part.
        neighbours: nearest neighbours per query (its own image's hits are skipped).

    Returns:
        Sorted ``(i, j)`` pairs, ``i < j``.

    Shape:
        cost ``O(n * sample * log(n * sample))`` with an HNSW index: linear in the image count.
    """
    import faiss

    n = len(descriptors)
    parts = [np.ascontiguousarray(d[:sample], np.float32) for d in descriptors]
    owner = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)]) if n else np.zeros(0, np.int64)
    dims = {p.shape[1] for p in parts if len(p)}
    if len(owner) == 0 or len(dims) != 1:
        return []
    base = np.concatenate([p for p in parts if len(p)])
    k = min(neighbours + 8, len(base))
    if len(base) > 20000:
        index = faiss.IndexHNSWFlat(base.shape[1], 32)
        index.hnsw.efSearch = 64
    else:
        index = faiss.IndexFlatL2(base.shape[1])
    index.add(base)
    _, idx = index.search(base, k)
    valid = idx >= 0
    other = np.where(valid, owner[np.maximum(idx, 0)], -1)
    other[other == owner[:, None]] = -1
    other[np.cumsum(other >= 0, axis=1) > neighbours] = -1
    q, col = np.nonzero(other >= 0)
    codes = np.unique(q * n + other[q, col])  # one vote per (query, image)
    votes = np.zeros((n, n), np.int64)
    np.add.at(votes, (owner[codes // n], codes % n), 1)
    votes = votes + votes.T
    keep: set[tuple[int, int]] = set()
    for i in range(n):
        order = [j for j in np.argsort(-votes[i], kind="stable") if j != i and votes[i, j] > 0][:per_image]
        keep.update((min(i, int(j)), max(i, int(j))) for j in order)
    logger.info("FAISS vote: %d candidate pairs of %d possible", len(keep), n * (n - 1) // 2)
    return sorted(keep)


def overlap_count(H: np.ndarray, pts: np.ndarray, shape_other: tuple[int, int]) -> int:
    """How many of ``pts`` (image 1 pixels) land inside the other image under ``H``."""
    if len(pts) == 0:
        return 0
    q = project(H, pts)
    h, w = shape_other
    return int(np.sum((q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)))


def brown_lowe_ok(num_inliers: int, matches_in_overlap: int, alpha: float, beta: float, min_inliers: int) -> bool:
    """Brown & Lowe (IJCV 2007): a pair is real when ``inliers > alpha + beta * matches in the overlap``."""
    return num_inliers >= min_inliers and num_inliers > alpha + beta * matches_in_overlap


def components(nodes: list[int], edges: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of an undirected graph, each sorted, largest first (ties: lowest index)."""
    adj: dict[int, set[int]] = {v: set() for v in nodes}
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    seen: set[int] = set()
    out = []
    for v in nodes:
        if v in seen:
            continue
        comp, queue = [], deque([v])
        seen.add(v)
        while queue:
            u = queue.popleft()
            comp.append(u)
            for w in adj[u]:
                if w not in seen:
                    seen.add(w)
                    queue.append(w)
        out.append(sorted(comp))
    return sorted(out, key=lambda c: (-len(c), c[0]))


def maximum_spanning_tree(nodes: list[int], weights: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """Kruskal's maximum spanning forest over ``weights[(i, j)]`` (ties: lower index pair first)."""
    parent = {v: v for v in nodes}

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    tree = []
    for (a, b), _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0])):
        if a not in parent or b not in parent:
            continue
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            tree.append((a, b))
    return tree


def _hops(start: int, adj: dict[int, list[int]]) -> dict[int, int]:
    dist = {start: 0}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for w in adj[u]:
            if w not in dist:
                dist[w] = dist[u] + 1
                queue.append(w)
    return dist


def tree_centre(nodes: list[int], tree: list[tuple[int, int]], weights: dict[tuple[int, int], float]) -> int:
    """The node that minimizes the largest hop count to every other node of the tree.

    Ties go to the node with the largest summed inlier weight over its edges in ``weights``
    (the whole verified graph), then to the lowest index.
    """
    adj: dict[int, list[int]] = {v: [] for v in nodes}
    for a, b in tree:
        adj[a].append(b)
        adj[b].append(a)
    strength = dict.fromkeys(nodes, 0.0)
    for (a, b), w in weights.items():
        if a in strength and b in strength:
            strength[a] += w
            strength[b] += w
    ecc = {v: max(_hops(v, adj).values()) for v in nodes}
    return min(nodes, key=lambda v: (ecc[v], -strength[v], v))


def chain_to_reference(
    reference: int, tree: list[tuple[int, int]], pair_H: dict[tuple[int, int], np.ndarray]
) -> dict[int, np.ndarray]:
    """Compose tree homographies into ``H_i``: image ``i`` pixels -> reference pixels.

    Args:
        reference: the root.
        tree: undirected tree edges.
        pair_H: ``(i, j) -> H`` mapping image ``i`` to image ``j`` for every tree edge (either order).
    """
    out = {reference: np.eye(3)}
    for u, v in tree_edges_from(reference, tree):
        H_vu = pair_H[(v, u)] if (v, u) in pair_H else np.linalg.inv(pair_H[(u, v)])
        H = out[u] @ H_vu
        out[v] = H / H[2, 2]
    return out


def tree_edges_from(reference: int, tree: list[tuple[int, int]]):
    """Yield the undirected ``tree``'s edges as ``(parent, child)``, breadth first from ``reference``."""
    adj: dict[int, list[int]] = {reference: []}
    for a, b in tree:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    seen = {reference}
    queue = deque([reference])
    while queue:
        u = queue.popleft()
        for v in adj[u]:
            if v not in seen:
                seen.add(v)
                yield u, v
                queue.append(v)


def image_outline(shape: tuple[int, int], per_side: int = 16) -> np.ndarray:
    """``(4 * per_side, 2)`` points along the border of an image of ``shape = (H, W)``, clockwise."""
    c = corners(shape)
    t = np.linspace(0.0, 1.0, per_side, endpoint=False)[:, None]
    return np.concatenate([c[k] + t * (c[(k + 1) % 4] - c[k]) for k in range(4)])

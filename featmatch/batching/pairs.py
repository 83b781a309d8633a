"""Which image pairs to match: a list file, all pairs, a sliding window, or a FAISS shortlist.

A pairs *spec* is ``exhaustive``, ``sequential[:K]``, ``shortlist[:K]`` or the path of a file
with two image names per line. Pairs are ``(name1, name2)`` tuples; the homography of a pair
maps ``name1``'s pixels to ``name2``'s.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, printable
from ..folders import read_list_text

logger = logging.getLogger(__name__)

#: The pair generators by name (a spec that is none of these is a pairs file).
PAIR_MODES = ("exhaustive", "sequential", "shortlist")
#: K of ``sequential`` when not given: each image is paired with the next K.
DEFAULT_SEQUENTIAL_K = 5
#: K of ``shortlist`` when not given: each image is paired with its K best candidates.
DEFAULT_SHORTLIST_K = 5

Pair = tuple[str, str]


@dataclass(frozen=True)
class PairsSpec:
    """A parsed pairs spec.

    Attributes:
        mode: ``exhaustive``, ``sequential``, ``shortlist`` or ``file``.
        k: the window / shortlist size (0 for the other modes).
        path: the pairs file (mode ``file`` only).
    """

    mode: str
    k: int = 0
    path: Path | None = None

    def describe(self) -> str:
        if self.mode == "file":
            return f"pairs from {self.path}"
        return f"{self.mode}:{self.k}" if self.k else self.mode


def parse_pairs_spec(spec: str | os.PathLike) -> PairsSpec:
    """Parse ``exhaustive``, ``sequential[:K]``, ``shortlist[:K]`` or a pairs file path.

    Raises:
        ConfigError: a bad K, or neither a mode nor an existing file.
    """
    text = str(spec)
    mode, _, k = text.partition(":")
    if mode in PAIR_MODES and not Path(text).is_file():
        if mode == "exhaustive":
            if k:
                raise ConfigError("'exhaustive' takes no ':K'")
            return PairsSpec("exhaustive")
        default = DEFAULT_SEQUENTIAL_K if mode == "sequential" else DEFAULT_SHORTLIST_K
        try:
            value = int(k) if k else default
        except ValueError:
            raise ConfigError(f"bad pairs spec '{text}': K must be an integer, as in {mode}:{default}") from None
        if value < 1:
            raise ConfigError(f"bad pairs spec '{text}': K must be at least 1")
        return PairsSpec(mode, value)
    path = Path(text)
    if not path.is_file():
        raise ConfigError(
            f"pairs '{text}' is not one of exhaustive, sequential[:K], shortlist[:K] nor an existing pairs file"
        )
    return PairsSpec("file", 0, path)


def exhaustive_pairs(names: Sequence[str]) -> list[Pair]:
    """Every unordered pair once, ``(names[i], names[j])`` with ``i < j``."""
    return list(itertools.combinations(names, 2))


def sequential_pairs(names: Sequence[str], k: int) -> list[Pair]:
    """Each image with the next ``k`` in list order (videos, ordered captures)."""
    if k < 1:
        raise ConfigError(f"sequential K must be at least 1, got {k}")
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, min(i + 1 + k, len(names)))]


def read_pairs_file(path: str | Path, names: Sequence[str]) -> list[Pair]:
    """Pairs from a file of two image names per line (blank lines and ``#`` comments skipped).

    Exact repeats are dropped; ``a b`` and ``b a`` are different pairs (opposite directions).

    Raises:
        ConfigError: a malformed line, an unknown name, an image paired with itself, or binary data.
    """
    known = set(names)
    pairs: list[Pair] = []
    seen: set[Pair] = set()
    # names that are not UTF-8 come back as the folder listing spells them (os.fsdecode)
    text = read_list_text(path, "pairs file", "file of image pairs")
    for lineno, line in enumerate(text.splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split("\t") if "\t" in text else text.split()
        if len(parts) != 2:
            raise ConfigError(f"{printable(path)}:{lineno}: expected two image names, got {len(parts)} fields")
        a, b = (p.strip() for p in parts)
        for n in (a, b):
            if n not in known:
                raise ConfigError(f"{printable(path)}:{lineno}: '{printable(n)}' is not one of the batch's images")
        if a == b:
            raise ConfigError(f"{printable(path)}:{lineno}: '{printable(a)}' is paired with itself")
        if (a, b) not in seen:
            seen.add((a, b))
            pairs.append((a, b))
    return pairs


def shortlist_scores(
    descriptors: Sequence[np.ndarray],
    neighbours: int = 10,
    ratio: float = 0.8,
    per_image: int = 512,
) -> np.ndarray:
    """Votes between images from a global nearest-neighbour search over all their descriptors.

    All images' descriptors (the first ``per_image`` of each: the strongest, since keypoints
    are sorted by response) go into one exact FAISS index. Each descriptor looks up its
    ``neighbours`` nearest descriptors; the last of them stands for the distance of an
    unrelated descriptor, and every other image holding a neighbour closer than ``ratio``
    times that distance gets one vote (a ratio test that, unlike Lowe's, lets several
    overlapping images share a point).

    Args:
        descriptors: per image, ``(N_i, D)`` float descriptors (possibly empty).
        neighbours: neighbours looked up per descriptor (the last is the reference distance).
        ratio: the distance ratio a neighbour must beat to vote.
        per_image: at most this many descriptors per image enter the index.

    Returns:
        ``(I, I)`` float64 symmetric votes (``votes[a, b]``: votes from a to b plus from b to a),
        zero on the diagonal.
    """
    from ..match import knn

    n = len(descriptors)
    votes = np.zeros((n, n), np.float64)
    kept = [np.asarray(d[:per_image], np.float32) for d in descriptors]
    sizes = [len(d) for d in kept]
    if n < 2 or sum(sizes) == 0:
        return votes
    dims = {d.shape[1] for d in kept if len(d)}
    if len(dims) != 1:
        raise ConfigError(f"descriptors of different widths {sorted(dims)} cannot share one index")
    base = np.concatenate([d for d in kept if len(d)])
    owner = np.repeat(np.arange(n), sizes)
    k = min(neighbours, len(base))
    sq, idx = knn(base, base, k)
    dist = np.sqrt(sq)
    ref = dist[:, -1:]
    nb_owner = np.where(idx >= 0, owner[np.clip(idx, 0, None)], -1)
    good = (dist < ratio * ref) & (nb_owner != owner[:, None]) & (nb_owner >= 0)
    rows, cols = np.nonzero(good)
    t_img = nb_owner[rows, cols]
    # One vote per (descriptor, other image), however many of its neighbours that image holds.
    uniq = np.unique(np.stack([rows, t_img], axis=1), axis=0) if len(rows) else np.zeros((0, 2), np.int64)
    np.add.at(votes, (owner[uniq[:, 0]], uniq[:, 1]), 1.0)
    return votes + votes.T


def shortlist_pairs(
    names: Sequence[str],
    descriptors: Mapping[str, np.ndarray],
    k: int,
    **options,
) -> list[Pair]:
    """Each image with its ``k`` best-voted other images (see :func:`shortlist_scores`).

    Images with no descriptors get no candidates; a candidate needs at least one vote. A pair
    chosen from both sides appears once, as ``(earlier, later)`` in ``names`` order.

    Args:
        names: the images, in batch order.
        descriptors: name -> ``(N, D)`` descriptors (images without an entry are left out).
        k: candidates per image.
        **options: ``neighbours``, ``ratio``, ``per_image`` of :func:`shortlist_scores`.
    """
    if k < 1:
        raise ConfigError(f"shortlist K must be at least 1, got {k}")
    present = [n for n in names if n in descriptors]
    votes = shortlist_scores([descriptors[n] for n in present], **options)
    chosen: set[tuple[int, int]] = set()
    for a in range(len(present)):
        order = np.argsort(-votes[a], kind="stable")
        for b in order[:k]:
            if b != a and votes[a, b] > 0:
                chosen.add((min(a, int(b)), max(a, int(b))))
    pairs = [(present[a], present[b]) for a, b in sorted(chosen)]
    logger.info("shortlist: %d candidate pairs of %d possible", len(pairs), len(present) * (len(present) - 1) // 2)
    return pairs

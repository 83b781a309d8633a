"""Patch-level metrics: FPR95 and mAP, from descriptor distances of labelled pairs.

- **FPR95**: the false positive rate at the distance threshold that accepts 95% of the
  positive pairs (Brown et al.), lower is better. With ``P`` positives the threshold is the
  ``ceil(0.95 P)``-th smallest positive distance; a negative is a false positive when its
  distance is ``<=`` that threshold.
- **patch mAP** (verification AP, as in the HPatches verification task): the average precision
  of ranking all pairs by increasing distance, positives being the relevant items; ties are
  broken pessimistically (negatives first). Higher is better.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def _split(distances: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(bool)
    if d.shape != lab.shape:
        raise ConfigError(f"distances and labels differ in length: {d.shape[0]} vs {lab.shape[0]}")
    if not np.all(np.isfinite(d)):
        raise ConfigError("distances contain NaN or infinity")
    pos, neg = d[lab], d[~lab]
    if len(pos) == 0 or len(neg) == 0:
        raise ConfigError("need at least one positive and one negative pair")
    return pos, neg


def fpr_at_recall(distances: np.ndarray, labels: np.ndarray, recall: float = 0.95) -> float:
    """False positive rate at the smallest threshold reaching ``recall`` of the positives.

    Shape:
        - distances, labels: ``(P,)``; labels True for matching pairs.
    """
    if not 0.0 < recall <= 1.0:
        raise ConfigError(f"recall must be in (0, 1], got {recall}")
    pos, neg = _split(distances, labels)
    k = max(1, math.ceil(recall * len(pos) - 1e-9))
    threshold = np.sort(pos)[k - 1]
    return float(np.mean(neg <= threshold))


def fpr95(distances: np.ndarray, labels: np.ndarray) -> float:
    """FPR at 95% recall (see module docstring). Shape: ``(P,)`` each."""
    return fpr_at_recall(distances, labels, 0.95)


def average_precision(distances: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of ranking pairs by increasing distance (ties: negatives first).

    Shape:
        - distances, labels: ``(P,)``.
    """
    _split(distances, labels)
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(bool)
    # lexsort: last key is primary -> sort by distance, then positives after negatives on ties.
    order = np.lexsort((lab.astype(np.int8), d))
    rel = lab[order]
    hits = np.cumsum(rel)
    precision = hits / np.arange(1, len(rel) + 1)
    return float(precision[rel].sum() / rel.sum())


def patch_map(distances: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Mean of :func:`average_precision` over ``groups`` (e.g. image pairs); one group if None.

    Groups without both a positive and a negative are skipped.

    Shape:
        - distances, labels, groups: ``(P,)``.
    """
    d = np.asarray(distances).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(bool)
    if groups is None:
        return average_precision(d, lab)
    g = np.asarray(groups).reshape(-1)
    aps = []
    for k in np.unique(g):
        m = g == k
        if lab[m].any() and (~lab[m]).any():
            aps.append(average_precision(d[m], lab[m]))
    if not aps:
        raise ConfigError("no group has both positive and negative pairs")
    return float(np.mean(aps))


# --------------------------------------------------------------------------------------------
# descriptors of patches


def describe_patches(model: torch.nn.Module, patches: torch.Tensor, device: torch.device | str = "cpu",
                     batch: int = 1024, bf16: bool = False) -> torch.Tensor:
    """Descriptors of patches by a learned model, in eval mode and without gradients.

    Shape:
        - patches: ``(N, 1, 32, 32)`` uint8 (0..255) or float in [0, 1].
        - Output: ``(N, D)`` float32 on the CPU.
    """
    import torch

    model.eval()
    outs = []
    dev = torch.device(device)
    with torch.no_grad():
        for s in range(0, patches.shape[0], batch):
            x = patches[s:s + batch]
            x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                outs.append(model(x.to(dev)).float().cpu())
    if not outs:
        return torch.zeros((0, 128))
    return torch.cat(outs)


#: SIFT on a 32x32 patch: a keypoint at the patch centre whose size makes the 12-sigma SIFT
#: support equal the patch side, exactly as the patch was cut (side = 6 x KeyPoint.size).
SIFT_PATCH_KEYPOINT_SIZE = 32.0 / 6.0


def sift_patch_descriptors(patches: torch.Tensor) -> torch.Tensor:
    """OpenCV SIFT descriptors of patches, one keypoint at each patch centre.

    The keypoint sits at (15.5, 15.5) with ``size = 32 / 6`` and angle 0: the patch was already
    rotated to the keypoint's orientation and scaled so that its side is 6 x size, so this
    reproduces SIFT's own support region on the very pixels the learned descriptors see.
    Descriptors are L2-normalized.

    Shape:
        - patches: ``(N, 1, 32, 32)`` uint8 or float in [0, 1].
        - Output: ``(N, 128)`` float32.
    """
    import cv2
    import torch

    x = patches
    if x.dtype != torch.uint8:
        x = (x.float() * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
    arr = x[:, 0].numpy()
    sift = cv2.SIFT_create()
    out = np.zeros((len(arr), 128), np.float32)
    for i, img in enumerate(arr):
        kp = [cv2.KeyPoint(15.5, 15.5, SIFT_PATCH_KEYPOINT_SIZE, 0.0)]
        _, d = sift.compute(np.ascontiguousarray(img), kp)
        if d is not None and len(d):
            out[i] = d[0]
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(out)

"""Descriptor losses and their in-batch miners.

A batch holds ``n`` distinct points with two patches each: anchors ``a[i]`` and positives
``p[i]`` (same point), so the ``n x n`` matrix ``D[i, j] = ||a_i - p_j||`` has the positive
distances on its diagonal and the ``n (n - 1)`` non-matching *cross pairs* off it.

- :func:`hardnet_loss`: HardNet (Mishchuk et al. 2017): triplet margin loss with the hardest
  in-batch negative of each anchor (and, with anchor swap, of its positive).
- :func:`exp_tloss`: Exp-TLoss in descriptor form, ``mean([D_ap^beta - D_an^gamma + alpha]+)``
  with hard positive mining (the ``mining_ratio`` fraction of anchors with the largest
  ``D_ap``) and hard negative mining over the cross pairs; with ``form="siamese"`` the
  exponential Siamese form ``D_ap^beta + [alpha - D_an^gamma]+``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: Names accepted by :func:`make_loss`.
LOSSES = ("hardnet", "exptloss")


def distance_matrix(a: torch.Tensor, p: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Euclidean distances between all rows of ``a`` and ``p``.

    Shape:
        - a: ``(n, d)``, p: ``(m, d)``.
        - Output: ``(n, m)``, ``D[i, j] = ||a_i - p_j||_2``.
    """
    a = a.float()
    p = p.float()
    sq = (a * a).sum(1, keepdim=True) + (p * p).sum(1)[None, :] - 2.0 * a @ p.t()
    return torch.sqrt(sq.clamp_min(0.0) + eps)


def _negative_mask(n: int, ids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``(n, n)`` True where ``(a_i, p_j)`` is a non-matching pair."""
    if ids is None:
        return ~torch.eye(n, dtype=torch.bool, device=device)
    ids = ids.to(device)
    return ids[:, None] != ids[None, :]


def hardest_negatives(dist: torch.Tensor, ids: torch.Tensor | None = None, anchor_swap: bool = True) -> torch.Tensor:
    """The hardest (closest) non-matching cross-pair distance of each anchor.

    Args:
        dist: ``(n, n)`` distances anchor i <-> positive j.
        ids: optional ``(n,)`` point ids; entries with equal ids are never negatives. Without it
            only the diagonal is excluded.
        anchor_swap: also consider the column (the positive ``p_i`` against the other anchors)
            and take the closer of the two.

    Shape:
        - Output: ``(n,)``. A point with no negative at all gets ``+inf``.
    """
    n = dist.shape[0]
    neg = _negative_mask(n, ids, dist.device)
    masked = dist.masked_fill(~neg, float("inf"))
    hardest = masked.min(dim=1).values
    if anchor_swap:
        hardest = torch.minimum(hardest, masked.min(dim=0).values)
    return hardest


def hardest_positive_mask(d_ap: torch.Tensor, mining_ratio: float) -> torch.Tensor:
    """Select the ``ceil(mining_ratio * n)`` anchors with the largest positive distance.

    Shape:
        - d_ap: ``(n,)``; output ``(n,)`` bool.
    """
    if not 0.0 < mining_ratio <= 1.0:
        raise ConfigError(f"mining_ratio must be in (0, 1], got {mining_ratio}")
    n = d_ap.shape[0]
    k = max(1, math.ceil(mining_ratio * n - 1e-9))
    mask = torch.zeros(n, dtype=torch.bool, device=d_ap.device)
    if k >= n:
        mask[:] = True
        return mask
    idx = torch.topk(d_ap.detach(), k, largest=True).indices
    mask[idx] = True
    return mask


def _check_pair(a: torch.Tensor, p: torch.Tensor) -> None:
    if a.ndim != 2 or a.shape != p.shape:
        raise ConfigError(f"anchors and positives must both be (n, d), got {tuple(a.shape)} and {tuple(p.shape)}")
    if a.shape[0] < 2:
        raise ConfigError("a batch needs at least 2 points to have negatives")


def hardnet_loss(a: torch.Tensor, p: torch.Tensor, margin: float = 1.0, anchor_swap: bool = True,
                 ids: torch.Tensor | None = None) -> torch.Tensor:
    """HardNet triplet margin loss with the hardest in-batch negative.

    ``L = mean_i [margin + D(a_i, p_i) - min_{j != i} D_neg(i, j)]+``

    Shape:
        - a, p: ``(n, d)`` descriptors of the two patches of ``n`` distinct points.
        - Output: scalar.
    """
    _check_pair(a, p)
    dist = distance_matrix(a, p)
    pos = dist.diagonal()
    neg = hardest_negatives(dist, ids, anchor_swap)
    return torch.clamp(margin + pos - neg, min=0.0).mean()


def exp_tloss(a: torch.Tensor, p: torch.Tensor, beta: float = 2.0, gamma: float = 2.0, alpha: float = 1.0,
              mining_ratio: float = 0.5, anchor_swap: bool = True, form: str = "triplet",
              ids: torch.Tensor | None = None) -> torch.Tensor:
    """Exp-TLoss with hard positive and hard negative mining.

    ``form="triplet"``: ``L = mean_{i in P} [D_ap(i)^beta - D_an(i)^gamma + alpha]+``
    ``form="siamese"``: ``L = mean_{i in P} (D_ap(i)^beta + [alpha - D_an(i)^gamma]+)``

    where ``D_an(i)`` is the hardest non-matching cross pair of anchor ``i`` (see
    :func:`hardest_negatives`) and ``P`` holds the ``mining_ratio`` fraction of anchors with the
    largest ``D_ap`` (hard positive mining; ``1.0`` keeps all). With ``beta = gamma = 1`` and
    ``mining_ratio = 1`` the triplet form is exactly :func:`hardnet_loss` with margin ``alpha``.

    Shape:
        - a, p: ``(n, d)``; output: scalar.
    """
    _check_pair(a, p)
    if beta <= 0 or gamma <= 0:
        raise ConfigError(f"beta and gamma must be positive, got {beta}, {gamma}")
    if form not in ("triplet", "siamese"):
        raise ConfigError(f"unknown Exp-TLoss form '{form}'; use 'triplet' or 'siamese'")
    dist = distance_matrix(a, p)
    pos = dist.diagonal()
    neg = hardest_negatives(dist, ids, anchor_swap)
    keep = hardest_positive_mask(pos, mining_ratio)
    if form == "triplet":
        terms = torch.clamp(pos.pow(beta) - neg.pow(gamma) + alpha, min=0.0)
    else:
        terms = pos.pow(beta) + torch.clamp(alpha - neg.pow(gamma), min=0.0)
    return terms[keep].mean()


@dataclass(frozen=True)
class LossConfig:
    """Which loss and its knobs.

    Attributes:
        name: ``hardnet`` or ``exptloss``.
        margin: HardNet's triplet margin.
        beta, gamma, alpha: Exp-TLoss exponents and margin.
        mining_ratio: fraction of hardest positives kept by Exp-TLoss.
        form: Exp-TLoss form, ``triplet`` or ``siamese``.
        anchor_swap: use the anchor swap in negative mining (both losses).
    """

    name: str = "hardnet"
    margin: float = 1.0
    beta: float = 2.0
    gamma: float = 2.0
    alpha: float = 1.0
    mining_ratio: float = 0.5
    form: str = "triplet"
    anchor_swap: bool = True

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ConfigError(f"unknown loss '{self.name}'; choose one of {', '.join(LOSSES)}")
        if not 0.0 < self.mining_ratio <= 1.0:
            raise ConfigError(f"mining_ratio must be in (0, 1], got {self.mining_ratio}")
        if self.beta <= 0 or self.gamma <= 0:
            raise ConfigError(f"beta and gamma must be positive, got {self.beta}, {self.gamma}")
        if self.form not in ("triplet", "siamese"):
            raise ConfigError(f"unknown Exp-TLoss form '{self.form}'; use 'triplet' or 'siamese'")


def compute_loss(cfg: LossConfig, a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Dispatch to the loss named by ``cfg``.

    Shape:
        - a, p: ``(n, d)``; output: scalar.
    """
    if cfg.name == "hardnet":
        return hardnet_loss(a, p, margin=cfg.margin, anchor_swap=cfg.anchor_swap)
    return exp_tloss(a, p, beta=cfg.beta, gamma=cfg.gamma, alpha=cfg.alpha, mining_ratio=cfg.mining_ratio,
                     anchor_swap=cfg.anchor_swap, form=cfg.form)

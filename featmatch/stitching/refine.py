"""Joint refinement of all image transforms over all inlier matches of all verified pairs.

Each image ``i`` has a ``3 x 3`` matrix ``M_i`` that maps its normalized pixel coordinates
(centred on the image centre, divided by a common scale) into one common frame; a pair
``(i, j)`` is then related by ``M_j^-1 M_i``. Two parametrizations share one solver:

- planar: ``M_i`` is a homography to the reference image with ``M_i[2, 2] = 1`` (8 parameters
  per non-reference image; the reference is the identity);
- rotation: ``M_i = R_i^T K^-1`` for a camera that only rotates (3 parameters per
  non-reference image, a rotation vector, plus one focal length shared by all images).

The solver is Levenberg-Marquardt on the symmetric transfer error in pixels, with Huber
weights, a numerical Jacobian per pair (only the pair's own parameters) and dense normal
equations: small (tens of images) and fast. A pair's forward differences are evaluated in one
batch: the unperturbed parameters and one copy per perturbed parameter are stacked into a
``(m, P)`` array and the model maps all of them at once (``matrices(v, Q)`` or
``pair_residuals(pair, Q)``), which is what keeps the numpy overhead per pair small. A model
may instead stack all pairs into one evaluation with analytic Jacobians (``stacked(pairs)``,
as :class:`~featmatch.stitching.adjust.CameraModel` does): then the cost is one residual
evaluation over all points and each iteration's Jacobians one more pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairPoints:
    """Normalized inlier correspondences of one pair.

    Attributes:
        i, j: image indices.
        a, b: ``(K, 2)`` normalized coordinates in image ``i`` and image ``j``.
    """

    i: int
    j: int
    a: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class RefineReport:
    """What the refinement did.

    Attributes:
        rms_before, rms_after: root mean square symmetric transfer error in pixels.
        iterations: LM iterations run.
    """

    rms_before: float
    rms_after: float
    iterations: int


def _project(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = p @ T[:, :2].T + T[:, 2]
    z = q[:, 2:3]
    z = np.where(np.abs(z) < 1e-12, 1e-12, z)
    return q[:, :2] / z


def rodrigues(rvecs: np.ndarray) -> np.ndarray:
    """``(m, 3)`` rotation vectors -> ``(m, 3, 3)`` rotation matrices (``cv2.Rodrigues``'s formula, batched)."""
    rvecs = np.asarray(rvecs, np.float64)
    theta = np.sqrt(np.sum(rvecs * rvecs, axis=-1))
    small = theta < np.finfo(np.float64).eps
    u = rvecs / np.where(small, 1.0, theta)[:, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    zero = np.zeros_like(x)
    cross = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(-1, 3, 3)
    R = c * np.eye(3) + (1.0 - c) * (u[:, :, None] * u[:, None, :]) + s * cross
    R[small] = np.eye(3)
    return R


def _project_batch(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``(m, 3, 3)`` transforms of ``(K, 2)`` points -> ``(m, K, 2)``."""
    q = p[None, :, 0:1] * T[:, None, :, 0] + p[None, :, 1:2] * T[:, None, :, 1] + T[:, None, :, 2]
    z = q[:, :, 2:3]
    z = np.where(np.abs(z) < 1e-12, 1e-12, z)
    return q[:, :, :2] / z


def pair_residuals(Mi: np.ndarray, Mj: np.ndarray, pp: PairPoints) -> np.ndarray:
    """:func:`_pair_residual` of ``(m, 3, 3)`` stacks of ``M_i`` and ``M_j`` -> ``(m, 4K)``."""
    try:
        Mi_inv, Mj_inv = np.linalg.inv(Mi), np.linalg.inv(Mj)
    except np.linalg.LinAlgError:
        return np.stack([_pair_residual(a, b, pp) for a, b in zip(Mi, Mj, strict=True)])
    r1 = _project_batch(Mj_inv @ Mi, pp.a) - pp.b
    r2 = _project_batch(Mi_inv @ Mj, pp.b) - pp.a
    return np.concatenate([r1, r2], axis=1).reshape(len(Mi), -1)


def _pair_residual(Mi: np.ndarray, Mj: np.ndarray, pp: PairPoints) -> np.ndarray:
    try:
        Mi_inv, Mj_inv = np.linalg.inv(Mi), np.linalg.inv(Mj)
    except np.linalg.LinAlgError:
        return np.full(4 * len(pp.a), 1e3)
    r1 = _project(Mj_inv @ Mi, pp.a) - pp.b
    r2 = _project(Mi_inv @ Mj, pp.b) - pp.a
    return np.concatenate([r1, r2]).ravel()


class StackedPairs:
    """The inliers of all pairs, both directions, as one set of arrays (a model's ``stacked(pairs)``).

    A subclass names, per directed pair ``(s, d)``, the parameters behind its ``SLOTS`` derivative
    columns (:meth:`slot_columns`; -1: none) and computes all points' residuals and per-slot
    derivatives at once (``_forward``); :meth:`jacobians` maps them onto each pair's parameters
    (a parameter in two slots, such as a lens shared by both images, gets their sum).

    Attributes:
        src_x, src_y, dst_x, dst_y: ``(N,)`` every directed pair's points, pair after pair, ``(i, j)`` then ``(j, i)``.
        dp_s, dp_d: per directed pair, the positions in ``nodes`` of its source and destination.
        counts: points per directed pair.
    """

    SLOTS = 0

    def __init__(self, model, pairs: list[PairPoints], nodes: list[int]):
        self.model = model
        self.nodes = nodes
        pos = {v: n for n, v in enumerate(nodes)}
        self.pairs = pairs
        src, dst, directed = [], [], []
        for pp in pairs:
            for a, b, s, d in ((pp.a, pp.b, pp.i, pp.j), (pp.b, pp.a, pp.j, pp.i)):
                src.append(a)
                dst.append(b)
                directed.append((pos[s], pos[d]))
        self.counts = np.array([len(a) for a in src], np.intp)
        src_all = np.concatenate(src) if src else np.zeros((0, 2))
        dst_all = np.concatenate(dst) if dst else np.zeros((0, 2))
        self.src_x, self.src_y = np.ascontiguousarray(src_all.T)
        self.dst_x, self.dst_y = np.ascontiguousarray(dst_all.T)
        dir_arr = np.array(directed, np.intp).reshape(-1, 2)
        self.dp_s, self.dp_d = dir_arr[:, 0], dir_arr[:, 1]
        free = getattr(model, "free", np.ones(model.num_params, bool))
        # Per pair: its parameters and the slot -> column selection of each direction.
        self.idx, self.select, self.rows = [], [], []
        start = 0
        for pp in pairs:
            idx = np.union1d(model.params_of(pp.i), model.params_of(pp.j))
            sels = []
            for s, d in ((pp.i, pp.j), (pp.j, pp.i)):
                S = np.zeros((self.SLOTS, len(idx)))
                for slot, g in enumerate(self.slot_columns(s, d)):
                    if g >= 0 and free[g]:
                        S[slot, np.searchsorted(idx, g)] += 1.0
                sels.append(S)
            self.idx.append(idx)
            self.select.append(sels)
            self.rows.append(start)
            start += 2 * len(pp.a)

    def per_point(self, per_pair: np.ndarray) -> np.ndarray:
        """``(..., n_directed)`` values per directed pair -> ``(..., N)`` per point."""
        return np.repeat(per_pair, self.counts, axis=-1)

    def slot_columns(self, s: int, d: int) -> list[int]:
        """The parameter behind each derivative slot of the directed pair ``s -> d`` (-1: none)."""
        raise NotImplementedError

    def _forward(self, p: np.ndarray, derivatives: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Residuals ``(2N,)`` (x, y per point) and, with ``derivatives``, ``J (SLOTS, 2, N)``."""
        raise NotImplementedError

    def residuals(self, p: np.ndarray) -> np.ndarray:
        """``(sum 4K,)``: every pair's residuals, concatenated in ``pairs`` order."""
        return self._forward(p, False)[0]

    def jacobians(self, p: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per pair: its parameters ``idx``, the Jacobian ``(4K, len(idx))`` and the residuals ``(4K,)``."""
        r, J = self._forward(p, True)
        out = []
        for pp, idx, (S1, S2), start in zip(self.pairs, self.idx, self.select, self.rows, strict=True):
            K = len(pp.a)
            J1 = J[:, :, start : start + K].T.reshape(2 * K, self.SLOTS) @ S1
            J2 = J[:, :, start + K : start + 2 * K].T.reshape(2 * K, self.SLOTS) @ S2
            out.append((idx, np.concatenate([J1, J2]), r[2 * start : 2 * start + 4 * K]))
        return out


class PlanarPairs(StackedPairs):
    """:class:`StackedPairs` of the :class:`PlanarModel`: slots are ``M_s``'s and ``M_d``'s first 8 entries.

    With ``T = M_d^-1 M_s`` and ``q = T [a, 1]``: ``d q / d M_s[r, c] = M_d^-1[:, r] a_c`` and
    ``d q / d M_d[r, c] = -M_d^-1[:, r] q_c``.
    """

    SLOTS = 16

    def __init__(self, model: PlanarModel, pairs: list[PairPoints]):
        super().__init__(model, pairs, [model.reference, *model.slot])

    def slot_columns(self, s: int, d: int) -> list[int]:
        return [*self._cols(s), *self._cols(d)]

    def _cols(self, v: int) -> list[int]:
        return (
            [-1] * 8 if v == self.model.reference else list(range(8 * self.model.slot[v], 8 * self.model.slot[v] + 8))
        )

    def _forward(self, p: np.ndarray, derivatives: bool) -> tuple[np.ndarray, np.ndarray | None]:
        M = np.stack([self.model.matrix(v, p) for v in self.nodes])
        try:
            Minv = np.linalg.inv(M)
        except np.linalg.LinAlgError:
            raise _Singular from None
        T = Minv[self.dp_d] @ M[self.dp_s]
        Tp = self.per_point(T.reshape(-1, 9).T).reshape(3, 3, -1)
        x, y = self.src_x, self.src_y
        q = [x * Tp[r, 0] + y * Tp[r, 1] + Tp[r, 2] for r in range(3)]
        z = np.where(np.abs(q[2]) < 1e-12, 1e-12, q[2])
        X, Y = q[0] / z, q[1] / z
        res = np.empty((len(X), 2))
        res[:, 0] = X - self.dst_x
        res[:, 1] = Y - self.dst_y
        if not derivatives:
            return res.ravel(), None
        N = self.per_point(Minv[self.dp_d].reshape(-1, 9).T).reshape(3, 3, -1)
        inv_z = 1.0 / z
        v = [((N[0, r] - X * N[2, r]) * inv_z, (N[1, r] - Y * N[2, r]) * inv_z) for r in range(3)]
        w = (x, y, None)
        J = np.empty((self.SLOTS, 2, len(X)))
        for e in range(8):
            r, c = divmod(e, 3)
            for o in range(2):
                J[e, o] = v[r][o] if w[c] is None else v[r][o] * w[c]
                J[8 + e, o] = -v[r][o] * q[c]
        return res.ravel(), J


class _Singular(Exception):
    """A stacked model met a singular matrix: refine() falls back to the per-pair path."""


class PlanarModel:
    """Homographies to the reference image: 8 parameters per non-reference image."""

    def __init__(self, nodes: list[int], reference: int):
        self.reference = reference
        self.slot = {v: k for k, v in enumerate(n for n in nodes if n != reference)}
        self.num_params = 8 * len(self.slot)

    def pack(self, matrices: dict[int, np.ndarray]) -> np.ndarray:
        p = np.zeros(self.num_params)
        for v, k in self.slot.items():
            M = matrices[v] / matrices[v][2, 2]
            p[8 * k : 8 * k + 8] = M.ravel()[:8]
        return p

    def params_of(self, v: int) -> np.ndarray:
        if v == self.reference:
            return np.zeros(0, np.int64)
        k = self.slot[v]
        return np.arange(8 * k, 8 * k + 8)

    def matrix(self, v: int, p: np.ndarray) -> np.ndarray:
        if v == self.reference:
            return np.eye(3)
        k = self.slot[v]
        return np.append(p[8 * k : 8 * k + 8], 1.0).reshape(3, 3)

    def matrices(self, v: int, Q: np.ndarray) -> np.ndarray:
        """:meth:`matrix` of every row of ``Q`` ``(m, P)`` -> ``(m, 3, 3)``."""
        if v == self.reference:
            return np.broadcast_to(np.eye(3), (len(Q), 3, 3))
        k = self.slot[v]
        return np.concatenate([Q[:, 8 * k : 8 * k + 8], np.ones((len(Q), 1))], axis=1).reshape(-1, 3, 3)

    def stacked(self, pairs: list[PairPoints]) -> PlanarPairs:
        """All pairs' points in one set of arrays: residuals and analytic Jacobians in one pass."""
        return PlanarPairs(self, pairs)


class RotationModel:
    """Rotating cameras with one shared focal length: ``M_i = R_i^T K^-1``.

    Parameters: a rotation vector per non-reference image, then the focal length (normalized
    units) last. ``R_i`` maps world rays to camera ``i`` rays; the reference has ``R = I``.
    """

    def __init__(self, nodes: list[int], reference: int):
        self.reference = reference
        self.slot = {v: k for k, v in enumerate(n for n in nodes if n != reference)}
        self.num_params = 3 * len(self.slot) + 1

    def pack(self, rotations: dict[int, np.ndarray], focal: float) -> np.ndarray:
        p = np.zeros(self.num_params)
        for v, k in self.slot.items():
            p[3 * k : 3 * k + 3] = cv2.Rodrigues(np.ascontiguousarray(rotations[v], np.float64))[0].ravel()
        p[-1] = focal
        return p

    def params_of(self, v: int) -> np.ndarray:
        f = self.num_params - 1
        if v == self.reference:
            return np.array([f])
        k = self.slot[v]
        return np.array([3 * k, 3 * k + 1, 3 * k + 2, f])

    def rotation(self, v: int, p: np.ndarray) -> np.ndarray:
        if v == self.reference:
            return np.eye(3)
        k = self.slot[v]
        return cv2.Rodrigues(np.ascontiguousarray(p[3 * k : 3 * k + 3]))[0]

    def focal(self, p: np.ndarray) -> float:
        return float(p[-1])

    def matrix(self, v: int, p: np.ndarray) -> np.ndarray:
        f = p[-1]
        return self.rotation(v, p).T @ np.diag([1.0 / f, 1.0 / f, 1.0])

    def matrices(self, v: int, Q: np.ndarray) -> np.ndarray:
        """:meth:`matrix` of every row of ``Q`` ``(m, P)`` -> ``(m, 3, 3)``."""
        if v == self.reference:
            Rt = np.broadcast_to(np.eye(3), (len(Q), 3, 3))
        else:
            k = self.slot[v]
            Rt = rodrigues(Q[:, 3 * k : 3 * k + 3]).transpose(0, 2, 1)
        inv_f = 1.0 / Q[:, -1]
        return Rt * np.stack([inv_f, inv_f, np.ones(len(Q))], axis=1)[:, None, :]


def _weights(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber IRLS weights per 2-D residual, repeated for x and y."""
    norm = np.sqrt(r[0::2] ** 2 + r[1::2] ** 2)
    w = np.where(norm <= delta, 1.0, delta / np.maximum(norm, 1e-12))
    return np.repeat(w, 2)


def _huber_cost(r: np.ndarray, delta: float) -> float:
    norm = np.sqrt(r[0::2] ** 2 + r[1::2] ** 2)
    return float(np.sum(np.where(norm <= delta, 0.5 * norm**2, delta * (norm - 0.5 * delta))))


def forward_jacobian(
    batch, pp: PairPoints, p: np.ndarray, idx: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Forward-difference Jacobian ``(n, len(idx))`` of a pair's residuals and the residuals ``(n,)`` at ``p``.

    ``batch(pp, Q)`` evaluates the rows of ``Q``: ``p`` itself, then ``p`` with ``eps`` added to
    one parameter of ``idx`` per row.
    """
    Q = np.repeat(p[None], len(idx) + 1, axis=0)
    Q[np.arange(1, len(idx) + 1), idx] += eps
    R = batch(pp, Q)
    return ((R[1:] - R[0]) / eps).T, R[0]


def refine(
    model,
    params: np.ndarray,
    pairs: list[PairPoints],
    scale: float,
    huber_px: float = 2.0,
    max_iterations: int = 30,
) -> tuple[np.ndarray, RefineReport]:
    """Levenberg-Marquardt over ``params`` minimizing the robust symmetric transfer error.

    Args:
        model: the parametrization: :class:`PlanarModel`, :class:`RotationModel` or
            :class:`~featmatch.stitching.adjust.CameraModel` (anything with ``num_params``,
            ``params_of(v)`` and one of: ``pair_residuals(pair, Q)`` (batched over the rows of
            ``Q``), ``matrices(v, Q)`` (batched), ``pair_residual(pair, p)`` or ``matrix(v, p)``;
            optionally ``stacked(pairs)``, an object with ``residuals(p)`` (all pairs
            concatenated) and ``jacobians(p)`` (per pair: ``idx``, ``J``, residuals)).
        params: ``(P,)`` the starting values (from the chained pairwise estimates).
        pairs: the normalized inlier correspondences of every verified pair.
        scale: pixels per normalized unit (reports and the Huber threshold are in pixels).
        huber_px: Huber threshold in pixels.
        max_iterations: LM iteration cap.

    Returns:
        The refined parameters and a :class:`RefineReport`.

    Shape:
        params ``(P,)`` -> ``(P,)``; cost per iteration ``O(sum_pairs K * p_pair)``.
    """
    delta = huber_px / scale
    p = params.astype(np.float64).copy()
    n_pts = sum(2 * len(pp.a) for pp in pairs)
    if model.num_params == 0 or n_pts == 0:
        return p, RefineReport(0.0, 0.0, 0)

    # A model may define its own pair residual (the camera model's lens distortion) and a
    # Gaussian prior ``prior_weight * (p - prior_mean)`` on its parameters.
    # ``batch(pp, Q)``: the pair's residuals for every row of ``Q`` at once.
    if hasattr(model, "pair_residuals"):
        batch = model.pair_residuals
    elif hasattr(model, "matrices"):

        def batch(pp: PairPoints, Q: np.ndarray) -> np.ndarray:
            return pair_residuals(model.matrices(pp.i, Q), model.matrices(pp.j, Q), pp)

    else:
        if hasattr(model, "pair_residual"):
            residual = model.pair_residual
        else:

            def residual(pp: PairPoints, q: np.ndarray) -> np.ndarray:
                return _pair_residual(model.matrix(pp.i, q), model.matrix(pp.j, q), pp)

        def batch(pp: PairPoints, Q: np.ndarray) -> np.ndarray:
            return np.stack([residual(pp, q) for q in Q])

    # A model may also stack all pairs into one evaluation with analytic Jacobians.
    stacked = model.stacked(pairs) if hasattr(model, "stacked") else None

    prior_w = getattr(model, "prior_weight", np.zeros(model.num_params))
    prior_mean = getattr(model, "prior_mean", np.zeros(model.num_params))

    def prior(q: np.ndarray) -> float:
        return 0.5 * float(np.sum((prior_w * (q - prior_mean)) ** 2))

    def total(q: np.ndarray) -> tuple[float, float]:
        cost, sq = 0.0, 0.0
        if stacked is not None:
            try:
                r = stacked.residuals(q)
            except _Singular:
                r = np.concatenate([batch(pp, q[None])[0] for pp in pairs])
            return _huber_cost(r, delta) + prior(q), float(np.sqrt(float(r @ r) / n_pts)) * scale
        for pp in pairs:
            r = batch(pp, q[None])[0]
            cost += _huber_cost(r, delta)
            sq += float(r @ r)
        cost += prior(q)
        return cost, float(np.sqrt(sq / n_pts)) * scale

    cost, rms_before = total(p)
    lam, eps, it = 1e-3, 1e-7, 0
    for it in range(1, max_iterations + 1):  # noqa: B007
        JtJ = np.zeros((model.num_params, model.num_params))
        Jtr = np.zeros(model.num_params)
        try:
            blocks = stacked.jacobians(p) if stacked is not None else None
        except _Singular:
            blocks = None
        if blocks is None:
            blocks = []
            for pp in pairs:
                idx = np.union1d(model.params_of(pp.i), model.params_of(pp.j))
                blocks.append((idx, *forward_jacobian(batch, pp, p, idx, eps)) if len(idx) else (idx, None, None))
        for idx, J, r0 in blocks:
            if len(idx) == 0:
                continue
            w = _weights(r0, delta)
            Jw = J * w[:, None]
            JtJ[np.ix_(idx, idx)] += Jw.T @ J
            Jtr[idx] += Jw.T @ r0
        JtJ += np.diag(prior_w**2)
        Jtr += prior_w**2 * (p - prior_mean)
        improved = False
        for _ in range(10):
            A = JtJ + lam * np.diag(np.maximum(np.diag(JtJ), 1e-12))
            try:
                step = np.linalg.solve(A, -Jtr)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            new_cost, _ = total(p + step)
            if np.isfinite(new_cost) and new_cost < cost:
                rel = (cost - new_cost) / max(cost, 1e-30)
                p, cost, lam = p + step, new_cost, max(lam / 10, 1e-9)
                improved = True
                break
            lam *= 10
        if not improved or rel < 1e-7:
            break
    _, rms_after = total(p)
    logger.info("refinement: rms %.3f px -> %.3f px in %d iterations", rms_before, rms_after, it)
    return p, RefineReport(rms_before, rms_after, it)

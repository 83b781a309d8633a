"""The batched residuals and forward differences of the panorama refinement against plain references.

:func:`featmatch.stitching.refine.refine` evaluates a pair's forward differences in one batch
(every perturbed parameter vector at once); these tests check each batched path against a
straightforward one-point-at-a-time residual and a one-parameter-at-a-time Jacobian on a random
small problem, and the whole solver against its unbatched path.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from featmatch.stitching import adjust, camera, refine
from featmatch.stitching.refine import PairPoints

NODES = [0, 1, 2, 3]
GROUPS = {0: 0, 1: 0, 2: 1, 3: 1}


def _rot(rng, size=0.2):
    return cv2.Rodrigues(rng.normal(size=3) * size)[0]


def _pairs(rng, k=40) -> list[PairPoints]:
    return [
        PairPoints(i, j, rng.uniform(-0.5, 0.5, (k, 2)), rng.uniform(-0.5, 0.5, (k, 2)))
        for i, j in ((0, 1), (1, 2), (2, 3), (0, 3), (3, 1))
    ]


def _camera_problem(rng, free_lens=True):
    model = adjust.CameraModel(NODES, 0, GROUPS, free_lens=free_lens)
    lens = {0: (0.01, -0.02, -0.12, 0.03), 1: (-0.015, 0.005, 0.06, -0.02)}
    p = model.pack({v: _rot(rng) for v in NODES}, {v: 1.1 + 0.1 * v for v in NODES}, lens)
    return model, p


def _reference_transfer(model, src, dst, pts, p):
    """One point at a time, cv2.Rodrigues, the undistortion iterated until it stops moving."""
    f, px, py, k1, k2 = model.intrinsics(src, p)
    f2, px2, py2, k12, k22 = model.intrinsics(dst, p)
    Rs, Rd = model.rotation(src, p), model.rotation(dst, p)
    out = []
    for a in pts:
        xd = (a - [px, py]) / f
        x = xd.copy()
        for _ in range(200):
            x = xd / (1.0 + k1 * (x @ x) + k2 * (x @ x) ** 2)
        cam = Rd @ (Rs.T @ np.array([x[0], x[1], 1.0]))
        y = cam[:2] / cam[2]
        r2 = y @ y
        out.append(y * (1.0 + k12 * r2 + k22 * r2 * r2) * f2 + [px2, py2])
    return np.array(out)


def _reference_residual(model, pp, p):
    r1 = _reference_transfer(model, pp.i, pp.j, pp.a, p) - pp.b
    r2 = _reference_transfer(model, pp.j, pp.i, pp.b, p) - pp.a
    return np.concatenate([r1, r2]).ravel()


def test_rodrigues_matches_opencv():
    rng = np.random.default_rng(1)
    rv = np.concatenate([rng.normal(size=(20, 3)) * 1.5, np.zeros((1, 3)), np.full((1, 3), 1e-17), [[np.pi, 0, 0]]])
    R = refine.rodrigues(rv)
    for k in range(len(rv)):
        np.testing.assert_allclose(R[k], cv2.Rodrigues(rv[k])[0], atol=1e-14)


def test_undistort_xy_is_undistort_and_batches_per_row():
    rng = np.random.default_rng(2)
    xd = rng.uniform(-0.6, 0.6, (3, 50, 2))
    k1 = np.array([-0.1, 0.0, 0.08])[:, None, None]
    k2 = np.array([0.02, 0.0, -0.01])[:, None, None]
    x = camera.undistort(xd, k1, k2)
    for m in range(3):
        np.testing.assert_array_equal(x[m], camera.undistort(xd[m], float(k1[m, 0, 0]), float(k2[m, 0, 0])))
    np.testing.assert_array_equal(x[1], xd[1])  # no distortion: exactly the input
    x_, y_ = camera.undistort_xy(xd[..., 0], xd[..., 1], k1[..., 0], k2[..., 0])
    np.testing.assert_array_equal(np.stack([x_, y_], axis=-1), x)
    # the fixed-point iterations converge far below what the refinement resolves
    assert np.abs(camera.distort(x, k1, k2) - xd).max() < 1e-9


@pytest.mark.parametrize("free_lens", [True, False])
def test_camera_model_batched_residuals_match_reference(free_lens):
    rng = np.random.default_rng(3)
    model, p = _camera_problem(rng, free_lens)
    Q = p[None] + rng.normal(size=(6, len(p))) * 1e-2
    Q[1] = p
    for pp in _pairs(rng):
        got = model.pair_residuals(pp, Q)
        for m in range(len(Q)):
            # the reference iterates the undistortion to convergence: the batched path's 8 iterations are within 1e-9
            np.testing.assert_allclose(got[m], _reference_residual(model, pp, Q[m]), rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(got[m], model.pair_residual(pp, Q[m]), rtol=1e-12, atol=1e-13)


def test_forward_jacobian_matches_one_parameter_at_a_time():
    rng = np.random.default_rng(4)
    model, p = _camera_problem(rng)
    eps = 1e-7
    for pp in _pairs(rng):
        idx = np.union1d(model.params_of(pp.i), model.params_of(pp.j))
        J, r0 = refine.forward_jacobian(model.pair_residuals, pp, p, idx, eps)
        ref0 = _reference_residual(model, pp, p)
        np.testing.assert_allclose(r0, ref0, rtol=1e-9, atol=1e-9)
        for c, k in enumerate(idx):
            q = p.copy()
            q[k] += eps
            col = (_reference_residual(model, pp, q) - ref0) / eps
            np.testing.assert_allclose(J[:, c], col, rtol=0, atol=2e-5)


@pytest.mark.parametrize("kind", ["planar", "rotation"])
def test_matrix_models_batched_residuals_match_reference(kind):
    rng = np.random.default_rng(5)
    if kind == "planar":
        model = refine.PlanarModel(NODES, 0)
        p = model.pack({v: np.eye(3) + rng.normal(size=(3, 3)) * 0.05 for v in NODES})
    else:
        model = refine.RotationModel(NODES, 0)
        p = model.pack({v: _rot(rng) for v in NODES}, 1.3)
    Q = p[None] + rng.normal(size=(5, len(p))) * 1e-2
    for pp in _pairs(rng):
        got = refine.pair_residuals(model.matrices(pp.i, Q), model.matrices(pp.j, Q), pp)
        for m in range(len(Q)):
            Mi, Mj = model.matrix(pp.i, Q[m]), model.matrix(pp.j, Q[m])
            ref = []
            for src, dst, T in ((pp.a, pp.b, np.linalg.inv(Mj) @ Mi), (pp.b, pp.a, np.linalg.inv(Mi) @ Mj)):
                for s, d in zip(src, dst, strict=True):
                    q = T @ [s[0], s[1], 1.0]
                    ref.append(q[:2] / q[2] - d)
            np.testing.assert_allclose(got[m], np.ravel(ref), rtol=0, atol=1e-12)


class _Unbatched:
    """A model with only the one-vector residual: refine() then takes its unbatched path."""

    def __init__(self, model):
        self.m = model
        self.num_params = model.num_params
        self.prior_weight = model.prior_weight
        self.prior_mean = model.prior_mean

    def params_of(self, v):
        return self.m.params_of(v)

    def pair_residual(self, pp, p):
        return self.m.pair_residual(pp, p)


def test_refine_batched_equals_unbatched():
    rng = np.random.default_rng(6)
    model, p_true = _camera_problem(rng)
    # Correspondences that p_true explains, plus noise and a few outliers; start from a perturbed guess.
    pairs = []
    for i, j in ((0, 1), (1, 2), (2, 3), (0, 3), (3, 1)):
        a = rng.uniform(-0.3, 0.3, (60, 2))
        b = model._transfer(i, j, a, p_true) + rng.normal(size=(60, 2)) * 1e-3
        b[:3] += 0.05
        pairs.append(PairPoints(i, j, a, b))
    p0 = p_true + rng.normal(size=len(p_true)) * 3e-3
    fast, rep_fast = refine.refine(model, p0, pairs, 1000.0)
    slow, rep_slow = refine.refine(_Unbatched(model), p0, pairs, 1000.0)
    _, at_truth = refine.refine(model, p_true, pairs, 1000.0, max_iterations=0)
    assert rep_fast.rms_after <= at_truth.rms_before * 1.001 < rep_fast.rms_before
    assert rep_fast.iterations == rep_slow.iterations
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-7)
    assert rep_fast.rms_after == pytest.approx(rep_slow.rms_after, rel=1e-9)


@pytest.mark.parametrize("free_lens", [True, False])
def test_stacked_analytic_jacobian_matches_finite_differences(free_lens):
    """CameraPairs: all pairs' residuals at once, and the chain-rule Jacobian against central differences."""
    rng = np.random.default_rng(7)
    model, p = _camera_problem(rng, free_lens)
    pairs = []
    for i, j in ((0, 1), (1, 2), (2, 3), (0, 3), (3, 1)):
        a = rng.uniform(-0.4, 0.4, (30, 2))
        pairs.append(PairPoints(i, j, a, model._transfer(i, j, a, p) + rng.normal(size=(30, 2)) * 0.01))
    st = model.stacked(pairs)
    ref = np.concatenate([_reference_residual(model, pp, p) for pp in pairs])
    np.testing.assert_allclose(st.residuals(p), ref, rtol=1e-9, atol=1e-9)
    h = 1e-6
    for pp, (idx, J, r0) in zip(pairs, st.jacobians(p), strict=True):
        assert np.array_equal(idx, np.union1d(model.params_of(pp.i), model.params_of(pp.j)))
        np.testing.assert_allclose(r0, _reference_residual(model, pp, p), rtol=1e-9, atol=1e-9)
        for c, k in enumerate(idx):
            up, down = p.copy(), p.copy()
            up[k] += h
            down[k] -= h
            col = (_reference_residual(model, pp, up) - _reference_residual(model, pp, down)) / (2 * h)
            np.testing.assert_allclose(J[:, c], col, rtol=0, atol=1e-7 * max(1.0, np.abs(col).max()))


def _plain_planar_residual(model, pp, p):
    Mi, Mj = model.matrix(pp.i, p), model.matrix(pp.j, p)
    out = []
    for src, dst, T in ((pp.a, pp.b, np.linalg.inv(Mj) @ Mi), (pp.b, pp.a, np.linalg.inv(Mi) @ Mj)):
        for s, d in zip(src, dst, strict=True):
            q = T @ [s[0], s[1], 1.0]
            out.append(q[:2] / q[2] - d)
    return np.ravel(out)


def test_planar_stacked_jacobian_matches_finite_differences():
    rng = np.random.default_rng(8)
    model = refine.PlanarModel(NODES, 0)
    p = model.pack({v: np.eye(3) + rng.normal(size=(3, 3)) * 0.05 for v in NODES})
    pairs = _pairs(rng, 25)
    st = model.stacked(pairs)
    ref = np.concatenate([_plain_planar_residual(model, pp, p) for pp in pairs])
    np.testing.assert_allclose(st.residuals(p), ref, rtol=1e-12, atol=1e-12)
    h = 1e-6
    for pp, (idx, J, _) in zip(pairs, st.jacobians(p), strict=True):
        for c, k in enumerate(idx):
            up, down = p.copy(), p.copy()
            up[k] += h
            down[k] -= h
            col = (_plain_planar_residual(model, pp, up) - _plain_planar_residual(model, pp, down)) / (2 * h)
            np.testing.assert_allclose(J[:, c], col, rtol=0, atol=1e-7 * max(1.0, np.abs(col).max()))


class _PlanarUnbatched:
    """Only ``matrix(v, p)``: refine() then takes its one-vector-at-a-time path."""

    def __init__(self, model):
        self.m = model
        self.num_params = model.num_params

    def params_of(self, v):
        return self.m.params_of(v)

    def matrix(self, v, p):
        return self.m.matrix(v, p)


def test_planar_refine_stacked_equals_unbatched_and_survives_a_singular_matrix():
    rng = np.random.default_rng(9)
    model = refine.PlanarModel(NODES, 0)
    truth = {v: np.eye(3) + rng.normal(size=(3, 3)) * 0.05 for v in NODES}
    pairs = []
    for i, j in ((0, 1), (1, 2), (2, 3), (0, 3)):
        a = rng.uniform(-0.4, 0.4, (50, 2))
        q = np.c_[a, np.ones(50)] @ (np.linalg.inv(truth[j]) @ truth[i]).T
        pairs.append(PairPoints(i, j, a, q[:, :2] / q[:, 2:] + rng.normal(size=(50, 2)) * 1e-3))
    p0 = model.pack(truth) + rng.normal(size=model.num_params) * 1e-2
    fast, rep_fast = refine.refine(model, p0, pairs, 1000.0)
    slow, rep_slow = refine.refine(_PlanarUnbatched(model), p0, pairs, 1000.0)
    assert rep_fast.rms_after < 0.1 * rep_fast.rms_before
    assert rep_fast.iterations == rep_slow.iterations
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-7)
    # A singular starting matrix: the stacked path falls back to the per-pair one, as the old code did.
    p_sing = p0.copy()
    p_sing[0:8] = [1, 2, 3, 2, 4, 6, 0.5, 1.0]  # rows 0 and 1 dependent
    a, rep_a = refine.refine(model, p_sing, pairs, 1000.0)
    b, rep_b = refine.refine(_PlanarUnbatched(model), p_sing, pairs, 1000.0)
    assert rep_a.rms_before == pytest.approx(rep_b.rms_before)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

import numpy as np
import pytest

from featmatch.errors import ConfigError
from featmatch.match import MatchConfig, knn, match_descriptors


def _brute_force(d1, d2, ratio, mutual):
    dist = np.linalg.norm(d1[:, None].astype(np.float64) - d2[None].astype(np.float64), axis=2)
    order = np.argsort(dist, axis=1)
    out = []
    for i in range(len(d1)):
        j, j2 = order[i, 0], order[i, 1] if d2.shape[0] > 1 else None
        if j2 is not None and not dist[i, j] < ratio * dist[i, j2]:
            continue
        if mutual and np.argmin(dist[:, j]) != i:
            continue
        out.append((i, j))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


@pytest.mark.parametrize("ratio", [0.6, 0.8, 0.95])
@pytest.mark.parametrize("mutual", [False, True])
def test_ratio_and_mutual_equal_brute_force(ratio, mutual):
    rng = np.random.default_rng(1)
    d2 = rng.normal(size=(300, 32)).astype(np.float32)
    # half of the queries are noisy copies of base rows, half are random
    d1 = np.concatenate([d2[:150] + 0.3 * rng.normal(size=(150, 32)), rng.normal(size=(150, 32))]).astype(np.float32)
    got = match_descriptors(d1, d2, MatchConfig(ratio=ratio, mutual=mutual))
    want = _brute_force(d1, d2, ratio, mutual)
    np.testing.assert_array_equal(got.pairs, want)
    assert len(want) > 20  # the case is not trivial
    np.testing.assert_allclose(got.distances, np.linalg.norm(d1[want[:, 0]] - d2[want[:, 1]], axis=1), rtol=1e-4)


def test_mutual_removes_many_to_one():
    d2 = np.array([[0.0, 0.0], [10.0, 10.0]], np.float32)
    d1 = np.array([[0.1, 0.0], [0.2, 0.0]], np.float32)  # both nearest to d2[0]
    plain = match_descriptors(d1, d2, MatchConfig(ratio=1.0))
    mutual = match_descriptors(d1, d2, MatchConfig(ratio=1.0, mutual=True))
    assert plain.pairs.tolist() == [[0, 0], [1, 0]]
    assert mutual.pairs.tolist() == [[0, 0]]


@pytest.mark.parametrize("n1, n2", [(0, 5), (5, 0), (0, 0)])
def test_empty_inputs_give_empty_matches(n1, n2):
    m = match_descriptors(np.zeros((n1, 8), np.float32), np.zeros((n2, 8), np.float32))
    assert m.pairs.shape == (0, 2) and m.distances.shape == (0,)


def test_single_candidate_passes_ratio_test():
    m = match_descriptors(np.ones((3, 4), np.float32), np.zeros((1, 4), np.float32))
    assert m.pairs[:, 1].tolist() == [0, 0, 0]


def test_knn_pads_missing_neighbours():
    sq, idx = knn(np.zeros((2, 4), np.float32), np.ones((1, 4), np.float32), 2)
    assert idx[:, 1].tolist() == [-1, -1] and np.isinf(sq[:, 1]).all() and np.allclose(sq[:, 0], 4.0)


def test_bad_ratio_is_a_config_error():
    with pytest.raises(ConfigError):
        MatchConfig(ratio=1.5)

"""CUDA paths. They run where a GPU is present and skip (with the reason) where none is."""

import numpy as np
import pytest
import torch

from featmatch.descriptors import CNNDescriptor
from featmatch.match import MatchConfig, _torch_knn, knn, match_descriptors
from featmatch.network import HardNet


def test_torch_knn_equals_faiss_on_cpu():
    # the search used on CUDA machines without faiss-gpu, checked on the CPU against FAISS
    rng = np.random.default_rng(0)
    q, b = rng.normal(size=(500, 64)).astype(np.float32), rng.normal(size=(700, 64)).astype(np.float32)
    d_t, i_t = _torch_knn(q, b, 2, "cpu", chunk=128)
    d_f, i_f = knn(q, b, 2, "cpu")
    np.testing.assert_array_equal(i_t, i_f)
    np.testing.assert_allclose(d_t, d_f, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_cuda_descriptors_match_cpu(cuda_device):
    torch.manual_seed(0)
    net = HardNet().eval()
    patches = torch.rand(3000, 1, 32, 32)
    cpu = CNNDescriptor("t", device="cpu", precision="fp32", model=net).describe_patches(patches)
    gpu = CNNDescriptor("t", device=cuda_device, precision="fp16", model=net).describe_patches(patches)
    assert (cpu * gpu).sum(1).min() > 0.99


@pytest.mark.gpu
def test_cuda_matching_equals_cpu(cuda_device):
    rng = np.random.default_rng(1)
    d2 = rng.normal(size=(2000, 128)).astype(np.float32)
    d1 = (d2[:1000] + 0.3 * rng.normal(size=(1000, 128))).astype(np.float32)
    cfg = MatchConfig(ratio=0.8, mutual=True)
    np.testing.assert_array_equal(
        match_descriptors(d1, d2, cfg, device=cuda_device).pairs, match_descriptors(d1, d2, cfg, device="cpu").pairs
    )

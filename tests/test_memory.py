"""Memory grows linearly: no L x L tensor anywhere on the sparse path."""

import pytest
import torch

import dhsa
from dhsa.bench.measure import peak_extra_memory


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
def test_sparse_attention_peak_memory_is_far_below_one_score_matrix():
    length = 16384
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, length, 64, generator=generator)
    k = torch.randn(1, 1, length, 64, generator=generator)
    v = torch.randn(1, 1, length, 64, generator=generator)
    config = dhsa.DHSAConfig(budget=2048, min_length=0)
    score_matrix = length * length * 4
    used = peak_extra_memory(
        lambda: dhsa.sparse_attention(q, k, v, config, backend="torch"), torch.device("cpu")
    )
    assert 0 < used < score_matrix / 8, f"{used / 2**20:.0f} MiB"

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


def test_cpu_peak_memory_sees_memory_the_allocator_reuses():
    """Dense attention's output alone is ``B * Hq * L * D * 4`` bytes; after a first call has
    freed the same sizes the resident size no longer grows, but the allocation peak must."""
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 2048, 64, generator=generator)
    k = torch.randn(1, 2, 2048, 64, generator=generator)

    def dense():
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, k, is_causal=True, enable_gqa=True
        )

    output_bytes = q.numel() * 4
    for _ in range(3):
        dense()
        used = peak_extra_memory(dense, torch.device("cpu"))
        assert output_bytes <= used < 8 * output_bytes, f"{used / 2**20:.3f} MiB"


def test_peak_memory_names_its_sources():
    from dhsa.bench.measure import PeakMemory

    assert PeakMemory("cpu").kind == "process VmHWM"
    assert PeakMemory("cpu", cpu="allocations").kind == "torch allocations (profiler)"
    with pytest.raises(ValueError, match="unknown CPU memory source 'rss'"):
        PeakMemory("cpu", cpu="rss")

import pytest
import torch

from dhsa import DHSAConfig
from dhsa.chunking import (
    check_boundaries,
    chunk_ids,
    compute_boundaries,
    fixed_boundaries,
    similarity_boundaries,
    split_long,
)


def chunk_lengths(bounds):
    return bounds[1:] - bounds[:-1]


def planted_keys(generator, cuts, length, batch=1, kv_heads=2, dim=32, noise=0.05):
    """Keys constant within segments separated at ``cuts``, plus small noise."""
    edges = [0, *cuts, length]
    k = torch.empty(batch, kv_heads, length, dim)
    for a, b in zip(edges[:-1], edges[1:], strict=False):
        k[:, :, a:b] = torch.randn(batch, kv_heads, 1, dim, generator=generator)
    return k + noise * torch.randn(k.shape, generator=generator)


def test_similarity_finds_planted_content_shifts(rng):
    cuts = [40, 97, 150, 230, 260]
    k = planted_keys(rng, cuts, 300)
    bounds = similarity_boundaries(k, min_chunk=8, max_chunk=128)[0]
    found = set(bounds.tolist())
    for cut in cuts:
        assert cut in found, f"planted cut {cut} not found in {sorted(found)}"
    assert bounds[0] == 0 and bounds[-1] == 300


@pytest.mark.parametrize("length", [1, 7, 9, 100, 1001])
def test_similarity_never_fails_on_flat_input(length):
    k = torch.ones(2, 2, length, 16)
    bounds = similarity_boundaries(k, min_chunk=8, max_chunk=64)
    check_boundaries(bounds, 2, length)
    lengths = chunk_lengths(bounds[0])
    assert int(lengths.max()) <= 64
    assert len(lengths) == max(1, -(-length // 64))


def test_similarity_respects_min_max_and_count_cap(rng):
    k = torch.randn(3, 2, 2000, 32, generator=rng)
    bounds = similarity_boundaries(k, min_chunk=8, max_chunk=100, z=0.0)
    check_boundaries(bounds, 3, 2000)
    for b in range(3):
        lengths = chunk_lengths(bounds[b])
        lengths = lengths[lengths > 0]
        assert int(lengths.max()) <= 100
        detected = lengths[:-1]
        assert int(detected.min()) >= 8 or len(lengths) == 1
    capped = similarity_boundaries(k, min_chunk=8, max_chunk=100, z=0.0, max_chunks=40)
    for b in range(3):
        assert int((chunk_lengths(capped[b]) > 0).sum()) <= 40


def test_split_long_splits_evenly():
    bounds = torch.tensor([0, 10, 300, 310])
    out = split_long(bounds, 100)
    assert out.tolist() == [0, 10, 106, 203, 300, 310]


def test_fixed_and_chunk_ids():
    bounds = fixed_boundaries(2, 10, 4, "cpu")
    assert bounds.tolist() == [[0, 4, 8, 10]] * 2
    assert chunk_ids(bounds, 10)[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_compute_boundaries_dispatches_on_config(rng):
    k = torch.randn(1, 1, 200, 8, generator=rng)
    fixed = compute_boundaries(k, DHSAConfig(chunker="fixed", chunk_size=50))
    assert fixed[0].tolist() == [0, 50, 100, 150, 200]
    sim = compute_boundaries(k, DHSAConfig(max_chunk=32))
    check_boundaries(sim, 1, 200)


def test_check_boundaries_errors():
    with pytest.raises(ValueError, match="start at 0"):
        check_boundaries(torch.tensor([[1, 5]]), 1, 5)
    with pytest.raises(ValueError, match="shape"):
        check_boundaries(torch.tensor([0, 5]), 1, 5)
    with pytest.raises(TypeError, match="integer"):
        check_boundaries(torch.tensor([[0.0, 5.0]]), 1, 5)
